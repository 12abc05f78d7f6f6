"""Subscriptions, snapshots and relay: real Redis, real nodes, real python-socketio clients."""

from __future__ import annotations

import time

import msgspec
import redis.asyncio

from shared import names
from shared.events import ExecutionUpdate, Notification, Ticker, Trade
from shared.publisher import AsyncPublisher
from tests.harness import connected, make_token, running_node, wait_until

BTC = "binance:ticker:BTC/USDT"
TRADES = "binance:trades:BTC/USDT"


def ticker(seq: int, bid: str = "100.5") -> Ticker:
    return Ticker(
        exchange="binance",
        symbol="BTC/USDT",
        ts=1_700_000_000_000,
        recv_ts=time.time() * 1000,
        seq=seq,
        bid=bid,
        ask="100.6",
    )


def trade(seq: int) -> Trade:
    return Trade(
        exchange="binance",
        symbol="BTC/USDT",
        ts=1_700_000_000_000,
        recv_ts=time.time() * 1000,
        seq=seq,
        trade_id=str(seq),
        price="100.55",
        size="0.001",
        side="buy",
    )


def notification(user: str, n: int) -> Notification:
    return Notification(id=f"n{n}", user_id=user, type="info", title=f"t{n}", message="m", created_at=1)


def execution(team: str, n: int) -> ExecutionUpdate:
    return ExecutionUpdate(
        execution_id=f"e{n}", team_id=team, status="running", progress=n, updated_at=1, version=n + 1
    )


async def pubsub_channels(client: redis.asyncio.Redis) -> set[str]:
    return {c.decode() for c in await client.pubsub_channels()}


async def test_subscribe_results_per_topic(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with (
        running_node(redis_url, max_subscriptions=3, allowed_topics=["binance:*"]) as node,
        connected(node.url, make_token()) as client,
    ):
        reply = await client.call("subscribe", [BTC, "binance:ticker:btc-usdt", "okx:ticker:BTC/USDT", 7, BTC])
        assert reply["ok"] is True
        results = reply["results"]
        assert results[0] == {"topic": BTC, "ok": True, "collected": False}  # no collector runs here
        assert results[1]["error"] == "invalid_topic"
        assert results[2]["error"] == "forbidden"
        assert results[3]["error"] == "invalid_topic" and results[3]["topic"] == 7
        assert results[4] == {"topic": BTC, "ok": True, "collected": False}  # idempotent
        reply = await client.call("subscribe", [TRADES, "binance:book:BTC/USDT", "binance:book:ETH/USDT"])
        assert [r["ok"] for r in reply["results"]] == [True, True, False]
        assert reply["results"][2]["error"] == "limit_reached"


async def test_topics_claim_grants_topics(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with (
        running_node(redis_url, allowed_topics=[], topics_claim="markets") as node,
        connected(node.url, make_token(markets=["kraken:*"])) as client,
    ):
        reply = await client.call("subscribe", ["kraken:ticker:BTC/USD", BTC])
        assert [r["ok"] for r in reply["results"]] == [True, False]
        assert reply["results"][1]["error"] == "forbidden"


async def test_malformed_requests_get_error_acks(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with (
        running_node(redis_url, max_topics_per_request=5, max_event_bytes=2048) as node,
        connected(node.url, make_token()) as client,
    ):
        for bad in ("binance:ticker:BTC/USDT", {"topics": []}, None, 3.5):
            reply = await client.call("subscribe", bad)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
        reply = await client.call("unsubscribe", [BTC] * 6)
        assert reply["error"]["code"] == "bad_request"
        reply = await client.call("subscribe", ["x" * 5000])
        assert reply == {
            "ok": False,
            "error": {"code": "payload_too_large", "message": "packets are limited to 2048 bytes"},
        }
        reply = await client.call("refresh", ["not", "an", "object"])
        assert reply["ok"] is False and reply["error"]["code"] == "token_missing"
        assert await client.call("subscribe", [BTC]) == {
            "ok": True,
            "results": [{"topic": BTC, "ok": True, "collected": False}],
        }


async def test_snapshot_on_subscribe_then_live(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = AsyncPublisher(redis_client)
    await publisher.publish_market([ticker(1, bid="99.0")])
    async with running_node(redis_url) as node, connected(node.url, make_token()) as client:
        reply = await client.call("subscribe", [BTC, TRADES])
        assert all(r["ok"] for r in reply["results"])
        topic, data = await client.next("market")
        assert topic == BTC and data["seq"] == 1 and data["bid"] == "99.0" and data["type"] == "ticker"
        await publisher.publish_market([ticker(2), trade(1)])
        got = {(await client.next("market"))[0] for _ in range(2)}
        assert got == {BTC, TRADES}
        # A second subscriber on the same node is served from the node's latest value.
        async with connected(node.url, make_token(sub="bob")) as other:
            await other.call("subscribe", [BTC])
            topic, data = await other.next("market")
            assert (topic, data["seq"]) == (BTC, 2)


async def test_unsubscribe_stops_delivery_and_redis_follows(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = AsyncPublisher(redis_client)
    async with running_node(redis_url) as node:
        relay = node.node.relay
        async with connected(node.url, make_token()) as a, connected(node.url, make_token(sub="bob")) as b:
            await a.call("subscribe", [TRADES])
            await b.call("subscribe", [TRADES])
            assert names.market_channel(TRADES) in await pubsub_channels(redis_client)
            await publisher.publish_market([trade(1)])  # to both: the node keeps the room's audience from here
            assert (await a.next("market"))[0] == TRADES
            assert (await b.next("market"))[0] == TRADES
            await a.call("unsubscribe", [TRADES])
            assert names.market_channel(TRADES) in relay.channels  # b still needs it
            await publisher.publish_market([trade(2)])
            assert (await b.next("market"))[0] == TRADES
            await a.nothing("market")
            await b.call("unsubscribe", [TRADES])
            await wait_until(lambda: names.market_channel(TRADES) not in relay.channels)
            await wait_until_async(redis_client, lambda chans: names.market_channel(TRADES) not in chans)
            await b.call("subscribe", [TRADES])
            await b.sio.disconnect()
        # Every channel (topics, users) is released once the last socket leaves.
        await wait_until(lambda: relay.channels == {names.CONTROL_CHANNEL})
        await wait_until_async(redis_client, lambda chans: not any(c.startswith(("md:", "user:")) for c in chans))


async def wait_until_async(client: redis.asyncio.Redis, check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        channels = await pubsub_channels(client)
        if check(channels):  # type: ignore[operator]
            return
        assert time.monotonic() < deadline, f"redis channels never matched: {channels}"
        await wait_until(lambda: True, timeout=0.05)


async def test_two_nodes_deliver_each_notification_once_per_socket(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    async with running_node(redis_url) as n1, running_node(redis_url) as n2:
        alice_token = make_token(sub="alice", teams=["red"])
        async with (
            connected(n1.url, alice_token) as a1,
            connected(n2.url, alice_token) as a2,
            connected(n1.url, make_token(sub="bob", teams=["blue"])) as bob,
            connected(n2.url, make_token(sub="carol", teams=["red", "blue"])) as carol,
        ):
            for i in range(20):
                await publisher.publish(notification("alice", i))
                await publisher.publish(notification("bob", 100 + i))
                await publisher.publish(execution("red", i))
            for client in (a1, a2):
                ids = []
                while len(ids) < 20:
                    data, position = await client.next("notification")
                    assert data["user_id"] == "alice" and "-" in position
                    ids.append(data["id"])
                assert ids == [f"n{i}" for i in range(20)]
                updates = [(await client.next("execution"))[0]["execution_id"] for _ in range(20)]
                assert updates == [f"e{i}" for i in range(20)]
                await client.nothing("notification")
            bob_ids = [(await bob.next("notification"))[0]["id"] for _ in range(20)]
            assert bob_ids == [f"n{100 + i}" for i in range(20)]
            await bob.nothing("execution")  # bob's team saw no update
            carol_updates = [(await carol.next("execution"))[0]["team_id"] for _ in range(20)]
            assert set(carol_updates) == {"red"}
            await carol.nothing("notification")


async def test_bad_publisher_payloads_are_dropped_and_counted(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    async with running_node(redis_url) as node, connected(node.url, make_token(sub="alice", teams=["red"])) as c:
        await c.call("subscribe", [BTC])
        rejected = node.node.metrics.messages_rejected
        await redis_client.publish("md:" + BTC, b"{not json")
        await redis_client.publish("md:" + BTC, b'{"type":"ticker","exchange":"binance"}')
        kraken = Ticker(exchange="kraken", symbol="BTC/USDT", ts=1, recv_ts=1, seq=1)
        await redis_client.publish("md:" + BTC, msgspec.json.encode(kraken))  # misrouted
        await redis_client.publish("user:{alice}", b'{"pos":"1-0","kind":"notification","data":{"id":"x"}}')
        await redis_client.publish("user:{alice}", b'{"pos":"1-0\\"]","kind":"notification","data":{}}')
        leaked = msgspec.json.encode(notification("bob", 1))  # bob's notification on alice's channel
        await redis_client.publish("user:{alice}", b'{"pos":"1-0","kind":"notification","data":' + leaked + b"}")
        await redis_client.publish("team:{red}", b'{"pos":"1-0","kind":"notification","data":{}}')
        await c.nothing("notification")
        await c.nothing("market", within=0.1)
        total = sum(rejected.labels(kind)._value.get() for kind in ("md", "user", "team"))
        assert total == 7
        await publisher.publish_market([ticker(5)])
        assert (await c.next("market"))[1]["seq"] == 5  # the relay survived
