"""Limits that must hold under a concurrent or crafted attack, not only one request at a time."""

from __future__ import annotations

import asyncio
import json
import time

import redis.asyncio

from shared.publisher import AsyncPublisher
from tests.harness import connected, make_token, raw_websocket, running_node, ws_frame
from tests.hostile.edge import next_text
from tests.integration.test_gateway_relay import notification


async def test_the_per_user_cap_holds_for_parallel_connects(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    """Lesser finding: 80 parallel CONNECTs with a cap of 50 admitted 76."""
    connections_before = len(await redis_client.client_list())
    async with running_node(redis_url, max_connections_per_user=50, connect_burst_per_ip=1000) as node:
        sockets = [await raw_websocket(node.url) for _ in range(80)]
        for ws in sockets:
            await ws.receive_text()
        token = make_token(sub="mallory")
        for ws in sockets:  # all CONNECTs on the wire before any is answered
            ws.writer.write(ws_frame("40" + json.dumps({"token": token})))
        replies = await asyncio.gather(*(next_text(ws, "4") for ws in sockets))
        admitted = [r for r in replies if r.startswith("40")]
        refused = [json.loads(r[2:])["data"]["code"] for r in replies if r.startswith("44")]
        assert len(admitted) == 50
        assert refused == ["too_many_connections"] * 30
        for ws in sockets:
            ws.close()
    # The node stopped while its sockets were giving back their claims: none of its Redis
    # connections may outlive it (they did, held by work spawned after the node's tasks ended).
    deadline = time.monotonic() + 5
    while len(await redis_client.client_list()) > connections_before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(await redis_client.client_list()) <= connections_before


async def redis_calls(client: redis.asyncio.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_listing_read_notifications_costs_the_same_whatever_the_page_size(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """Lesser finding: `limit: 1` with a crafted cursor cost 13x a `limit: 100` request at 1,000 unread."""
    publisher = AsyncPublisher(redis_client)
    positions = [await publisher.publish(notification("alice", n)) for n in range(1000)]
    async with running_node(redis_url) as node, connected(node.url, make_token(sub="alice")) as client:
        costs = {}
        for limit in (1, 100):
            before = await redis_calls(redis_client, "xrevrange")
            reply = await client.call("notifications:list", {"limit": limit, "cursor": f"r:{positions[-1]}"})
            costs[limit] = await redis_calls(redis_client, "xrevrange") - before
            assert reply["ok"] is True and reply["items"] == []  # all 1,000 are unread: none is a read one
        assert costs[1] == costs[100] <= 6, costs
