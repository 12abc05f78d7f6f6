"""How late the event loop runs a callback: the delay every delivery waiting behind the current turn sees.

A timer is armed every `interval_s`; how much later than asked it fires is
one sample. Work that holds the loop (a burst of connects, a big parse) shows
here as lag before it shows as client latency, and on a node under attack it
is the first number to read.
"""

from __future__ import annotations

import asyncio
from typing import Final

from prometheus_client import Histogram

INTERVAL_S: Final = 0.01


class LoopLagMonitor:
    """Samples the loop's lateness into a histogram, 100 times a second."""

    def __init__(self, histogram: Histogram, interval_s: float = INTERVAL_S) -> None:
        self._histogram = histogram
        self._interval_s = interval_s
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.max_s = 0.0  # the largest lag seen, for logs and benchmarks

    def start(self) -> None:
        self._arm(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self._interval_s
        self._timer = loop.call_at(self._due, self._fired, loop)

    def _fired(self, loop: asyncio.AbstractEventLoop) -> None:
        lag = max(0.0, loop.time() - self._due)
        self._histogram.observe(lag)
        self.max_s = max(self.max_s, lag)
        self._arm(loop)
