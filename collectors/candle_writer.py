"""Live candles into PostgreSQL without ever holding up a read loop.

The read loop only calls `put`: no await, no I/O. Candles wait in a bounded
map keyed by candle (exchange, symbol, timeframe, open time), so the many
updates of one open candle coalesce into its latest state (a closed state is
never replaced by an open one). One task writes what is pending in batched
upserts every `flush_s`. Overflow policy **drop-oldest**: when `max_pending`
distinct candles wait (PostgreSQL slow or down), the one queued first is
dropped and counted in `dropped`; the history loader's gap fill repairs what
was lost. A failed batch goes back (within the bound) and is retried with
capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import asyncpg

from collectors.feed.backoff import Backoff
from shared.candle_store import CandleStore
from shared.events import AnyMarketEvent, Candle

logger = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S: Final = 30.0
CandleKey = tuple[str, str, str, int]


class CandleWriter:
    """A bounded, coalescing queue of candles and the task that upserts them."""

    def __init__(
        self,
        store: CandleStore,
        *,
        max_pending: int = 10_000,
        batch_size: int = 1000,
        flush_s: float = 0.2,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        if max_pending < 1 or batch_size < 1 or flush_s <= 0:
            raise ValueError("max_pending, batch_size and flush_s must be positive")
        self._store = store
        self._pending: dict[CandleKey, Candle] = {}  # insertion order: the oldest first
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._backoff = Backoff(initial=backoff_initial_s, maximum=backoff_max_s)
        self._wake = asyncio.Event()
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.db_up = True
        self._error_logged = float("-inf")

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, event: AnyMarketEvent) -> None:
        """Queue a candle (other events are not stored); never blocks."""
        if not isinstance(event, Candle):
            return
        key = (event.exchange, event.symbol, event.timeframe, event.open_time)
        pending = self._pending
        held = pending.get(key)
        if held is not None:
            if held.closed and not event.closed:
                return  # a late open update after the close
            pending[key] = event  # keeps its place in the queue
            return
        if len(pending) >= self._max_pending:
            del pending[next(iter(pending))]
            self.dropped += 1
        pending[key] = event
        self._wake.set()

    async def run(self) -> None:
        """Write until cancelled."""
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._flush_s)  # let updates of open candles coalesce
            while self._pending:
                if not await self._write_batch():
                    await asyncio.sleep(self._backoff.next())
                    break

    async def drain(self, timeout_s: float) -> None:
        """Write what is pending, giving up after `timeout_s` (at shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    if not await self._write_batch():
                        return
            except TimeoutError:
                return

    async def _write_batch(self) -> bool:
        keys = list(self._pending)[: self._batch_size]
        batch = [self._pending.pop(key) for key in keys]
        try:
            await self._store.upsert(batch)
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            self.errors += 1
            self._requeue(keys, batch)
            self._down(exc)
            return False
        except BaseException:
            self._requeue(keys, batch)  # cancelled mid-write: keep the batch for `drain`
            raise
        if not self.db_up:
            self.db_up = True
            logger.info("candle store reachable again", extra={"pending": len(self._pending)})
        self._backoff.reset()
        self.written += len(batch)
        return True

    def _requeue(self, keys: list[CandleKey], batch: list[Candle]) -> None:
        """Put a failed batch back in front, unless newer states of its candles came meanwhile."""
        newer = self._pending
        self._pending = {key: candle for key, candle in zip(keys, batch, strict=True) if key not in newer}
        self._pending.update(newer)
        while len(self._pending) > self._max_pending:
            del self._pending[next(iter(self._pending))]
            self.dropped += 1

    def _down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.db_up or now - self._error_logged >= ERROR_LOG_INTERVAL_S:
            self._error_logged = now
            logger.warning(
                "cannot write candles; holding them (oldest dropped when full)",
                extra={"error": repr(exc), "pending": len(self._pending), "dropped": self.dropped},
            )
        self.db_up = False
