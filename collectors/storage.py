"""A collector's PostgreSQL side: live candles written, history loaded, both only once the store answers.

The store is connected (and its schema migrated) in the background with
capped, jittered backoff, so a collector starts and publishes to Redis even
while PostgreSQL is away; candles of that time are then loaded by the gap
fill that every (re)start of the history loader runs.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from collectors.candle_writer import CandleWriter
from collectors.config import CollectorConfig
from collectors.feed.backoff import Backoff
from collectors.feed.collector import Collector
from collectors.history import HistoryLoader
from shared.candle_store import CandleStore
from shared.events import AnyMarketEvent
from shared.topics import Kind

logger = logging.getLogger(__name__)


class CandleStorage:
    """The store, the live candle writer and the history loader of one collector."""

    def __init__(self, collector: Collector, config: CollectorConfig) -> None:
        self._collector = collector
        self._config = config
        self.store: CandleStore | None = None
        self.writer: CandleWriter | None = None
        self.loader: HistoryLoader | None = None
        self.skipped = 0  # candles seen before the store was connected (the gap fill loads them)

    def put(self, event: AnyMarketEvent) -> None:
        if self.writer is not None:
            self.writer.put(event)
        elif event.KIND is Kind.CANDLES:
            self.skipped += 1

    async def run(self) -> None:
        """Connect, then write and load until cancelled."""
        backoff = Backoff(initial=0.5, maximum=30.0)
        while self.store is None:
            try:
                self.store = await CandleStore.connect(self._config.database_url)
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                logger.warning("candle store unreachable; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff.next())
        self.writer = CandleWriter(self.store, max_pending=self._config.candle_queue_size)
        self.loader = HistoryLoader(
            self._collector, self.store, bars=self._config.history_bars, retention_days=self._config.retention
        )
        self._collector.reopened = self.loader
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.writer.run(), name=f"{self._config.name}-candle-writer")
            tg.create_task(self.loader.run(), name=f"{self._config.name}-history")

    async def close(self, timeout_s: float) -> None:
        """Write what is pending (within `timeout_s`) and release the pool."""
        if self.writer is not None:
            await self.writer.drain(timeout_s)
        if self.store is not None:
            await self.store.close()
