"""What a closed connection leaves to the garbage collector, and the collector's schedule (gateway/garbage.py).

The schedule freezes what lives out of the collector's reach; that is safe
only because a closed connection is freed by reference counting alone: a
cycle left among its objects would be frozen with it and found only at the
next full collection.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import socketio
from prometheus_client import Counter, Histogram

from gateway.garbage import GarbageSchedule
from tests.harness import connected, make_token, new_client, raw_websocket, running_node, wait_until

TOPIC = "binance:ticker:BTC/USDT"


@contextmanager
def cycles_of_gateway_objects() -> Iterator[list[str]]:
    """The types, defined in gateway/, of the objects only the cyclic collector could free, once the block ends."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found += [type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("gateway.")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_closed_connections_leave_no_cycles(redis_url: str) -> None:
    """Found by counting: every closed WebSocket left 11 objects in cycles (sessions, transport, parser, rooms)."""
    async with running_node(redis_url) as node:
        server = node.node.server
        with cycles_of_gateway_objects() as cycles:
            for transport in ("websocket", "polling"):  # the client leaves
                async with connected(node.url, make_token(f"leaver-{transport}"), transport=transport) as client:
                    assert (await client.call("subscribe", [TOPIC]))["results"][0]["ok"]
            refused = new_client()  # the node refuses the CONNECT and ends the session
            with pytest.raises(socketio.exceptions.ConnectionError):
                await refused.sio.connect(node.url, auth={"token": "not-a-token"}, transports=["websocket"])
            await refused.close()
            silent = await raw_websocket(node.url)  # leaves before its CONNECT
            silent.close()
            await wait_until(lambda: not server.sockets and not server.engine.sessions)
            await asyncio.sleep(0.1)  # the closes' callbacks run
        assert cycles == []


async def test_the_schedule_freezes_what_lives_and_collects_everything_when_due() -> None:
    pauses = Histogram("pauses", "test", ["generation"], registry=None)
    collected = Counter("collected", "test", ["generation"], registry=None)
    schedule = GarbageSchedule(pauses, collected, full_every_s=0.5)
    try:
        schedule.start()  # a full collection, then everything frozen
        assert gc.get_freeze_count() > 0
        full_at_start = pauses.labels(generation="2")._sum.get()
        freed_at_start = collected.labels(generation="2")._value.get()
        assert full_at_start > 0
        cycle: list[object] = []
        cycle.append(cycle)
        gc.freeze()  # as if a tick froze it while it lived
        del cycle
        before_full = gc.get_freeze_count()
        # The first tick (after a second) is due for the full collection: only it can free a frozen cycle.
        await wait_until(lambda: collected.labels(generation="2")._value.get() > freed_at_start, timeout=10)
        assert pauses.labels(generation="2")._sum.get() > full_at_start
        assert gc.get_freeze_count() < before_full
    finally:
        schedule.stop()
        gc.unfreeze()
