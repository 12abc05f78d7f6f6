"""What a closed connection leaves to the garbage collector, and the collector's schedule (gateway/garbage.py).

The schedule freezes what lives out of the collector's reach; that is safe
only because a closed connection is freed by reference counting alone: a
cycle left among its objects would be frozen with it and found only at the
next full collection.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import socketio
from prometheus_client import Counter, Histogram

from gateway import garbage
from gateway.garbage import Census, GarbageSchedule
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


@contextmanager
def collector_paused() -> Iterator[None]:
    """Automatic collections off: nothing reaches the oldest generation but what a test freezes there."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


class Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def schedule_metrics() -> tuple[Histogram, Counter, Counter]:
    return (
        Histogram("pauses", "test", ["generation"], registry=None),
        Counter("collected", "test", ["generation"], registry=None),
        Counter("censuses", "test", ["outcome"], registry=None),
    )


async def census_report() -> dict[str, Any] | None:
    """What a census forked now reports."""
    reported: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
    Census.start(asyncio.get_running_loop(), reported.set_result)
    return await asyncio.wait_for(reported, 30)


async def test_a_census_counts_the_cyclic_garbage_of_the_process_without_touching_it() -> None:
    with collector_paused():
        gc.collect()
        assert await census_report() == {"objects": 0, "types": {}}
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        report = await census_report()
        assert report == {"objects": 1, "types": {"list": 1}}
        assert gc.collect() == 1  # the census collected its copy; the process still holds its own


async def test_a_census_that_does_not_report_in_time_is_killed_reaped_and_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(garbage, "CENSUS_TIMEOUT_S", 0.0)  # due before the census can collect anything
    reported: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
    census = Census.start(asyncio.get_running_loop(), reported.set_result)
    assert await asyncio.wait_for(reported, 30) is None
    await wait_until(lambda: not Path(f"/proc/{census.pid}").exists(), timeout=10)  # no zombie left


async def test_the_schedule_collects_in_the_process_only_when_a_census_finds_garbage() -> None:
    pauses, collected, censuses = schedule_metrics()
    schedule = GarbageSchedule(pauses, collected, censuses, full_every_s=0.5)
    with collector_paused():
        try:
            schedule.start()  # a full collection, then everything frozen
            assert gc.get_freeze_count() > 0
            full_pauses = pauses.labels(generation="2")._sum.get()
            assert full_pauses > 0
            # The first tick (after a second) is due for a census, which finds nothing to collect.
            await wait_until(lambda: censuses.labels(outcome="clean")._value.get() == 1, timeout=10)
            assert pauses.labels(generation="2")._sum.get() == full_pauses  # no full collection
            cycle = Cycle()
            freed = weakref.ref(cycle)
            gc.freeze()  # as if a tick froze it while it lived
            del cycle
            # The next census finds it; only the full collection that follows can free a frozen cycle.
            await wait_until(lambda: censuses.labels(outcome="garbage")._value.get() == 1, timeout=10)
            assert freed() is None
            assert collected.labels(generation="2")._value.get() >= 1
            assert pauses.labels(generation="2")._sum.get() > full_pauses
        finally:
            schedule.stop()


async def test_the_schedule_leaves_full_collections_to_itself() -> None:
    """While it runs, CPython starts no full collection of its own, however many objects survive."""
    pauses, collected, censuses = schedule_metrics()
    schedule = GarbageSchedule(pauses, collected, censuses, full_every_s=3600)
    thresholds = gc.get_threshold()
    full: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    schedule.start()
    gc.callbacks.append(seen)
    try:
        # A storm's worth of survivors: with CPython's thresholds, three full collections on the way.
        kept = [[index] for index in range(300_000)]
        assert full == []
        assert len(kept) == 300_000
    finally:
        gc.callbacks.remove(seen)
        schedule.stop()
        gc.unfreeze()
    assert gc.get_threshold() == thresholds
