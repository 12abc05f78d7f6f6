"""The cyclic garbage collector's schedule: full collections stay short however many clients a node holds.

A full collection walks every object the collector tracks, and every delivery
waits behind it. A connected client keeps about 27 of them (its sessions,
transport, parser, rooms, timers: counted), and a full collection took 240 ms
with 10,000 clients (one process, this 2-core VM); while connections grow,
CPython runs one at every 25% of growth, the storm's worst moment.

Connections leave no cyclic garbage when they close (the session layers
unlink from each other: tests/integration/test_gateway_garbage.py), so what
has lived through a young collection is frozen once a second: out of the
collector's reach, and still freed by reference counting when it dies.
CPython's own full collections are turned off (`NEVER`): the oldest
generation holds only what arrived since the last freeze, yet CPython still
walked it twice, 21 ms each time, in a 10,000-client connect storm: two
stalls of every socket for nothing the census below would not find. Once
every `full_every_s` everything is unfrozen and collected, so that a cycle
leaked by anything else is reclaimed. That pause grows with clients, so it
is taken only when there is something to reclaim: first a forked copy of the
process (a `Census`) collects everything and reports how much was cyclic
garbage, while the process serves on (a fork pauses it for a few
milliseconds). A census that finds none ends there; one that finds some, or
fails, is followed by the full collection in the process itself, measured
(`gateway_gc_pause_seconds`, generation 2) and counted
(`gateway_gc_collected_objects_total`), and the census logs the garbage's
most common types, so a leak of cycles shows and is reclaimed.

The process that serves owns this policy (`gateway.__main__`), not the node:
a node embedded in another program (a test) leaves that program's collector
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import signal
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any, Final, NoReturn

from prometheus_client import Counter, Histogram

logger = logging.getLogger(__name__)

FREEZE_EVERY_S: Final = 1.0
CENSUS_TIMEOUT_S: Final = 60.0  # a census still running then is killed, and the process collects itself
CENSUS_TYPES: Final = 5  # the garbage's most common types a census reports
CENSUS_REPORT_BYTES: Final = 4096  # at most one pipe buffer: the child's one write is atomic
REAP_EVERY_S: Final = 0.05
NEVER: Final = 2**31 - 1  # a collection threshold no count reaches


class GarbageSchedule:
    """Freezes what survived each second; collects everything every `full_every_s` (CPython never does it itself)."""

    def __init__(self, pauses: Histogram, collected: Counter, censuses: Counter, *, full_every_s: float) -> None:
        self._pauses = {generation: pauses.labels(generation=str(generation)) for generation in range(3)}
        self._collected = {generation: collected.labels(generation=str(generation)) for generation in range(3)}
        self._censuses = censuses
        self._full_every_s = full_every_s
        self._full_due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._census: Census | None = None
        self._started_at = 0.0
        self._thresholds: tuple[int, int, int] | None = None

    def start(self) -> None:
        """Freeze what start-up built (most of a node's objects: modules, settings, pools) and begin."""
        gc.callbacks.append(self._timed)
        gc.collect()
        gc.freeze()
        self._thresholds = young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)  # full collections only as scheduled here
        loop = asyncio.get_running_loop()
        self._full_due = loop.time() + self._full_every_s
        self._timer = loop.call_later(FREEZE_EVERY_S, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._census is not None:
            self._census.abandon()
            self._census = None
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        gc.collect(1)  # young cycles die here, not frozen
        gc.freeze()  # O(1): the generations' lists are spliced onto the permanent one
        if loop.time() >= self._full_due and self._census is None:
            self._full_due = loop.time() + self._full_every_s
            try:
                self._census = Census.start(loop, self._counted)
            except OSError as exc:  # no fork here (a sandbox, a process limit): collect in the process
                logger.warning("cannot fork a garbage census; collecting in the process", extra={"error": str(exc)})
                self._counted(None)
        self._timer = loop.call_later(FREEZE_EVERY_S, self._tick, loop)

    def _counted(self, report: dict[str, Any] | None) -> None:
        """A census ended: `report` is what it found, None if it failed. Collect here unless it found nothing."""
        self._census = None
        garbage = report.get("objects") if report is not None else None
        if garbage == 0:
            self._censuses.labels(outcome="clean").inc()
            return
        if report is None or not isinstance(garbage, int):
            self._censuses.labels(outcome="failed").inc()
        else:
            self._censuses.labels(outcome="garbage").inc()
            found = {"objects": garbage, "types": report.get("types")}
            logger.warning("cyclic garbage found; collecting it", extra=found)
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
        else:
            generation = info["generation"]
            self._pauses[generation].observe(time.perf_counter() - self._started_at)
            if info["collected"]:
                self._collected[generation].inc(info["collected"])


class Census:
    """A forked copy of the process that collects all its garbage and reports how much was cyclic.

    The copy closes every file it inherited before it collects (a finalizer the collection runs
    there reaches no client, Redis or log), keeps what it collects instead of freeing it
    (`gc.DEBUG_SAVEALL`), writes one JSON report to a pipe and exits. The copy-on-write pages it
    touches cost the host up to one more copy of the process's heap while it runs.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pid: int, report_fd: int, done: Callable[[dict[str, Any] | None], None]
    ) -> None:
        self._loop = loop
        self._pid = pid
        self._fd = report_fd
        self._done = done
        self._received = bytearray()
        loop.add_reader(report_fd, self._readable)
        self._deadline = loop.call_later(CENSUS_TIMEOUT_S, self._timed_out)

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop, done: Callable[[dict[str, Any] | None], None]) -> Census:
        """Fork the census; `done` gets its report (None: it failed or timed out). Raises OSError if fork fails."""
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            _count_garbage(write_fd)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return cls(loop, pid, read_fd, done)

    @property
    def pid(self) -> int:
        return self._pid

    def abandon(self) -> None:
        """Stop waiting: the census is killed, its report never read."""
        self._finish(None, kill=True, report_to=False)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, CENSUS_REPORT_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk and len(self._received) + len(chunk) <= CENSUS_REPORT_BYTES:
            self._received += chunk
            return
        report: dict[str, Any] | None = None
        if not chunk:  # the census closed its end: its report is whole
            with contextlib.suppress(ValueError):
                parsed = json.loads(self._received)
                report = parsed if isinstance(parsed, dict) else None
        self._finish(report, kill=bool(chunk))

    def _timed_out(self) -> None:
        logger.warning("the garbage census took too long; killed", extra={"timeout_s": CENSUS_TIMEOUT_S})
        self._finish(None, kill=True)

    def _finish(self, report: dict[str, Any] | None, *, kill: bool, report_to: bool = True) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._deadline.cancel()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        self._reap()
        if report_to:
            self._done(report)

    def _reap(self) -> None:
        """Wait for the census's exit without blocking the loop (it exits right after its report)."""
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
            if pid == 0:
                self._loop.call_later(REAP_EVERY_S, self._reap)


def _count_garbage(report_fd: int) -> NoReturn:
    """In the forked census: collect everything, keep the garbage, report its count and commonest types, exit."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for standard in (0, 1, 2):
            os.dup2(null, standard)
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, limit if limit != resource.RLIM_INFINITY else 1 << 20)
        gc.callbacks.clear()
        gc.unfreeze()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        types = Tally(type(o).__qualname__[:80] for o in gc.garbage).most_common(CENSUS_TYPES)
        report = json.dumps({"objects": len(gc.garbage), "types": dict(types)}).encode()
        os.write(report_fd, report[:CENSUS_REPORT_BYTES])
        code = 0
    finally:
        os._exit(code)
