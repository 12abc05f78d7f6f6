"""The cyclic garbage collector's schedule: full collections stay short however many clients a node holds.

A full collection walks every object the collector tracks, and every delivery
waits behind it. A connected client keeps about 27 of them (its sessions,
transport, parser, rooms, timers: counted), and a full collection took 240 ms
with 10,000 clients (one process, this 2-core VM); while connections grow,
CPython runs one at every 25% of growth, the storm's worst moment.

Connections leave no cyclic garbage when they close (the session layers
unlink from each other: tests/integration/test_gateway_garbage.py), so what
has lived through a young collection is frozen once a second: out of the
collector's reach, and still freed by reference counting when it dies. Once
every `full_every_s` everything is unfrozen and collected, so that a cycle
leaked by anything else is reclaimed: that one pause still grows with
clients, and it is scheduled and measured (`gateway_gc_pause_seconds`); what
it reclaims is counted (`gateway_gc_collected_objects_total`, generation 2),
so a leak of cycles shows.

The process that serves owns this policy (`gateway.__main__`), not the node:
a node embedded in another program (a test) leaves that program's collector
alone.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Final

from prometheus_client import Counter, Histogram

FREEZE_EVERY_S: Final = 1.0


class GarbageSchedule:
    """Freezes what survived each second; collects everything every `full_every_s`; times every collection."""

    def __init__(self, pauses: Histogram, collected: Counter, *, full_every_s: float) -> None:
        self._pauses = {generation: pauses.labels(generation=str(generation)) for generation in range(3)}
        self._collected = {generation: collected.labels(generation=str(generation)) for generation in range(3)}
        self._full_every_s = full_every_s
        self._full_due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0

    def start(self) -> None:
        """Freeze what start-up built (most of a node's objects: modules, settings, pools) and begin."""
        gc.callbacks.append(self._timed)
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        self._full_due = loop.time() + self._full_every_s
        self._timer = loop.call_later(FREEZE_EVERY_S, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.time() >= self._full_due:
            self._full_due = loop.time() + self._full_every_s
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)  # young cycles die here, not frozen
        gc.freeze()  # O(1): the generations' lists are spliced onto the permanent one
        self._timer = loop.call_later(FREEZE_EVERY_S, self._tick, loop)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
        else:
            generation = info["generation"]
            self._pauses[generation].observe(time.perf_counter() - self._started_at)
            if info["collected"]:
                self._collected[generation].inc(info["collected"])
