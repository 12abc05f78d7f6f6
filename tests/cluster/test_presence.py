"""Cluster-wide limits and presence: counted across gateway nodes through the cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from shared import names
from tests.cluster.conftest import Cluster
from tests.harness import connected, make_token, running_node, wait_until
from tests.integration.test_gateway_limits import refusal

TOPIC = "binance:ticker:BTC/USDT"


async def test_the_connection_cap_counts_every_node(cluster: Cluster) -> None:
    async with (
        running_node(cluster.url, max_connections_per_user=2) as first,
        running_node(cluster.url, max_connections_per_user=2) as second,
    ):
        token = make_token(sub="nia")
        async with connected(first.url, token), connected(second.url, token) as other:
            assert await refusal(first.url, token) == "too_many_connections"
            assert await refusal(second.url, token) == "too_many_connections"
            await other.sio.disconnect()
            key = names.connection_set("nia")
            await wait_until(lambda: not second.node.sessions)
            await wait_until_async(lambda: cluster.client.zcard(key), 1)
            async with connected(second.url, token) as again:
                assert again.sio.connected
        await wait_until_async(lambda: cluster.client.zcard(names.connection_set("nia")), 0)


async def wait_until_async(read: Callable[[], Awaitable[object]], expected: object, timeout: float = 5.0) -> None:
    """Wait until the awaited `read()` equals `expected`."""
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"{value} != {expected}"
        await asyncio.sleep(0.05)


async def test_presence_counts_topics_and_teams_across_nodes(cluster: Cluster) -> None:
    async with (
        running_node(cluster.url, allowed_topics=["binance:*"]) as first,
        running_node(cluster.url, allowed_topics=["binance:*"]) as second,
        connected(first.url, make_token(sub="alice", teams=["red"])) as alice,
        connected(second.url, make_token(sub="bob", teams=["red"])) as bob,
        connected(second.url, make_token(sub="carol", teams=["blue"])) as carol,
    ):
        for client in (alice, bob, carol):
            assert (await client.call("subscribe", [TOPIC]))["ok"]
        await first.node.presence.heartbeat()
        await second.node.presence.heartbeat()
        reply = await alice.call(
            "presence", {"topics": [TOPIC, "okx:ticker:BTC/USDT", "nonsense"], "teams": ["red", "blue"]}
        )
        assert reply["ok"] is True
        assert reply["topics"][0] == {"topic": TOPIC, "ok": True, "subscribers": 3}
        assert [r["error"] for r in reply["topics"][1:]] == ["forbidden", "invalid_topic"]
        assert reply["teams"][0] == {"team": "red", "ok": True, "online": 2, "users": ["alice", "bob"]}
        assert reply["teams"][1]["error"] == "forbidden"  # not alice's team
        assert (await alice.call("presence", ["not", "an", "object"]))["error"]["code"] == "bad_request"
        # A topic every client left on a node drops out of that node's share at its next heartbeat.
        assert (await carol.call("unsubscribe", [TOPIC]))["ok"]
        assert (await bob.call("unsubscribe", [TOPIC]))["ok"]
        await second.node.presence.heartbeat()
        reply = await bob.call("presence", {"topics": [TOPIC]})
        assert reply["topics"][0]["subscribers"] == 1


async def test_a_node_stopping_gives_back_its_connections(cluster: Cluster) -> None:
    key = names.connection_set("olga")
    async with running_node(cluster.url) as node, connected(node.url, make_token(sub="olga")):
        assert await cluster.client.zcard(key) == 1
        await node.stop()  # with the client still connected
        assert await cluster.client.zcard(key) == 0
