"""A publisher's bad record costs only itself: deep JSON and malformed stored values from Redis."""

from __future__ import annotations

import json

import msgspec
import redis.asyncio

from shared import names
from shared.publisher import AsyncPublisher
from tests.harness import connected, make_token, running_node, wait_until
from tests.integration.test_gateway_relay import BTC, execution, ticker

DEEP = "[" * 1000 + "]" * 1000  # msgspec's and json's recursion give out near here


def deep_market_event() -> bytes:
    event = json.loads(msgspec.json.encode(ticker(4)))
    return json.dumps(event)[:-1].encode() + b',"extra":' + DEEP.encode() + b"}"


async def test_a_deep_message_in_a_batch_costs_only_itself(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    """Audit finding 3, live: published 1,2,3,poison,5,6,7 in one read, the client got 1,2,3 and the relay died."""
    async with running_node(redis_url) as node, connected(node.url, make_token(sub="alice")) as client:
        await client.call("subscribe", [BTC])
        pipe = redis_client.pipeline(transaction=False)
        for seq in (1, 2, 3):
            pipe.publish(names.market_channel(BTC), msgspec.json.encode(ticker(seq)))
        pipe.publish(names.market_channel(BTC), deep_market_event())
        pipe.publish(names.user_channel("alice"), b'{"pos":"1-1","kind":"notification","data":' + DEEP.encode() + b"}")
        for seq in (5, 6, 7):
            pipe.publish(names.market_channel(BTC), msgspec.json.encode(ticker(seq)))
        await pipe.execute()
        assert [(await client.next("market"))[1]["seq"] for _ in range(6)] == [1, 2, 3, 5, 6, 7]
        assert node.node.relay.ready
        assert sum(node.node.metrics.messages_rejected.labels(k)._value.get() for k in ("md", "user")) == 2


async def test_a_deep_execution_state_does_not_stop_the_teams_catch_up(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """Audit finding 3, stored: every member's catch-up failed, no `sync`, and live updates were lost."""
    publisher = AsyncPublisher(redis_client)
    await publisher.publish(execution("red", 1))
    poison = json.loads(msgspec.json.encode(execution("red", 2)))
    poison["result"] = "@"
    text = json.dumps(poison).replace('"@"', DEEP)
    await redis_client.hset(names.execution_states("red"), "e2", f"3 1700000000000-9 {text}")
    await redis_client.hset(names.execution_states("red"), "e3", "not a state at all")
    async with running_node(redis_url) as node, connected(node.url, make_token(sub="alice", teams=["red"])) as client:
        states = [(await client.next("execution"))[0]["execution_id"]]
        status = (await client.next("sync"))[0]
        assert states == ["e1"] and status["complete"] is True
        await publisher.publish(execution("red", 5))
        assert (await client.next("execution"))[0]["execution_id"] == "e5"  # live updates reach the team
        assert node.node.metrics.messages_rejected.labels("stored")._value.get() == 1


async def test_a_deep_latest_value_does_not_leave_the_topic_half_subscribed(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """Audit finding 3, latest value: internal_error, the topic pending forever and its channel kept."""
    await redis_client.set(names.latest_key(BTC), deep_market_event())
    async with running_node(redis_url) as node:
        async with connected(node.url, make_token(sub="alice")) as client:
            reply = await client.call("subscribe", [BTC])
            assert reply == {"ok": True, "results": [{"topic": BTC, "ok": True, "collected": False}]}
            await client.nothing("market", within=0.2)  # the bad value is not sent
            assert node.node.metrics.messages_rejected.labels("latest")._value.get() == 1
            channel = names.market_channel(BTC).encode()
            assert channel in await redis_client.pubsub_channels()
        await wait_until(lambda: not node.node.relay.wants(names.market_channel(BTC)))
        await wait_until(lambda: len(node.node.relay.channels) == 1)  # the control channel alone
