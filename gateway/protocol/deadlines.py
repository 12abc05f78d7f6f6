"""Deadlines for many connections on one timer: each connect sets three, and clears two within milliseconds.

A connection's HTTP request must arrive within `REQUEST_TIMEOUT_S`, its Socket.IO
CONNECT within `connect_timeout_s`, and its token's expiry closes it hours later.
A `call_later` apiece cost uvloop a timer handle, a heap entry and a handle to
close: about 2 us to set and cancel, and 550 bytes for as long as it is held (a
tenth of an idle connection's memory, for the expiry). Here deadlines are kept
in buckets of `granularity_s` by their due time, a heap holds the buckets'
numbers, and one timer wakes for the earliest: setting and clearing are dict
operations (and a heap push for a bucket not there yet); a key costs two dict
entries.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

logger = logging.getLogger(__name__)

Key = TypeVar("Key", bound=Hashable)

# Deadlines fired in one turn of the event loop; more (a thousand tokens expiring in the same second) wait
# for the next turns, so that deliveries already read are not held behind them all.
MAX_FIRED_PER_TURN: Final = 256
# How late a connection's request or CONNECT deadline may fire: those due within it share one wake-up.
CONNECTION_GRANULARITY_S: Final = 0.25
# Bucket numbers left in the heap by buckets that emptied, past which the heap is rebuilt.
MAX_STALE_TIMES: Final = 64


class _Bucket(dict[Key, None]):
    """The keys due in one interval of `granularity_s`, and its number."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number


class Deadlines(Generic[Key]):
    """`on_due(key)` once a key's delay has passed since `set`, unless `clear(key)` came first.

    A deadline fires up to `granularity_s` late (those due close together share one wake-up), never early.
    A key is held until its deadline fires or is cleared: a caller clears it when what it stands for closes.
    """

    def __init__(self, on_due: Callable[[Key], object], *, granularity_s: float) -> None:
        self._on_due = on_due
        self._granularity_s = granularity_s
        self._buckets: dict[int, _Bucket[Key]] = {}  # bucket n: keys due in ((n - 1) g, n g]
        self._bucket_of: dict[Key, _Bucket[Key]] = {}
        self._numbers: list[int] = []  # of the buckets, a heap; one whose bucket emptied stays until popped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._woken_at: int | None = None  # the bucket number the timer is set for
        self._firing = False

    def __len__(self) -> int:
        return len(self._bucket_of)

    def set(self, key: Key, delay_s: float) -> None:
        """Start (or restart) `key`'s deadline, `delay_s` from now."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        number = math.ceil((loop.time() + delay_s) / self._granularity_s)
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._new_bucket(number)
        previous = self._bucket_of.get(key)
        if previous is not None:  # restarted: its old bucket may be left empty, to be dropped when due
            del previous[key]
        bucket[key] = None
        self._bucket_of[key] = bucket

    def clear(self, key: Key) -> None:
        bucket = self._bucket_of.pop(key, None)
        if bucket is not None:
            del bucket[key]
            if not bucket:
                self._drop(bucket)

    def close(self) -> None:
        """Forget every deadline (the server stops)."""
        self._buckets.clear()
        self._bucket_of.clear()
        self._numbers.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._woken_at = None

    def _new_bucket(self, number: int) -> _Bucket[Key]:
        bucket = self._buckets[number] = _Bucket(number)
        heapq.heappush(self._numbers, number)
        if not self._firing and (self._woken_at is None or number < self._woken_at):
            self._wake_at(number)
        return bucket

    def _drop(self, bucket: _Bucket[Key]) -> None:
        """An emptied bucket: out of the dict at once; its number, out of the heap when due or rebuilt."""
        if self._buckets.get(bucket.number) is bucket:
            del self._buckets[bucket.number]
            if not self._firing and len(self._numbers) > len(self._buckets) + MAX_STALE_TIMES:
                self._numbers = list(self._buckets)
                heapq.heapify(self._numbers)

    def _wake_at(self, number: int) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(number * self._granularity_s, self._fire)
        self._woken_at = number

    def _fire(self) -> None:
        """Call back the deadlines due by now, at most `MAX_FIRED_PER_TURN`; wake again for the rest."""
        self._timer = self._woken_at = None
        loop, numbers, buckets = self._loop, self._numbers, self._buckets
        assert loop is not None
        due_by = math.floor(loop.time() / self._granularity_s)
        fired = 0
        self._firing = True  # callbacks may set deadlines: the wake-up is chosen once they are done
        try:
            while numbers and numbers[0] <= due_by and fired < MAX_FIRED_PER_TURN:
                bucket = buckets.get(numbers[0])
                while bucket and fired < MAX_FIRED_PER_TURN:
                    key, _ = bucket.popitem()  # the newest first: O(1), where the oldest first scans past the fired
                    del self._bucket_of[key]
                    fired += 1
                    try:
                        self._on_due(key)
                    except Exception:
                        logger.exception("a deadline's callback failed")
                if not bucket:
                    heapq.heappop(numbers)
                    if bucket is not None:
                        self._drop(bucket)
        finally:
            self._firing = False
        if not numbers:
            return
        if numbers[0] <= due_by:  # more were due than one turn fires
            self._timer, self._woken_at = loop.call_soon(self._fire), numbers[0]
        else:
            self._wake_at(numbers[0])
