"""Periodic status of a collector in Redis: a key with a TTL, and an announcement.

The key outlives a few missed periods but not a dead collector, so
"no key" means "not running". Status goes straight to Redis, not through
the market-data sink: it must not be dropped behind a queue of ticks, and a
failure to write it is only logged (the next period tries again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from collectors.sink import honour_cancellation
from shared import names
from shared.redis_target import REDIS_ERRORS, AsyncClient, publish_command
from shared.status import CollectorStatus, encode_status

logger = logging.getLogger(__name__)


class StatusPublisher:
    """Writes `source()` to Redis every `interval_s`, kept for `ttl_s`."""

    def __init__(
        self,
        client: AsyncClient,
        source: Callable[[], CollectorStatus],
        *,
        interval_s: float = 5.0,
        ttl_s: float = 30.0,
    ) -> None:
        if interval_s <= 0 or ttl_s < interval_s:
            raise ValueError(f"status interval {interval_s}s and TTL {ttl_s}s: need 0 < interval <= ttl")
        self._redis = client
        self._source = source
        self._interval = interval_s
        self._ttl_ms = int(ttl_s * 1000)
        self.published = 0
        self.failures = 0
        self._ok = True

    async def run(self) -> None:
        """Publish now and every interval until cancelled."""
        while True:
            try:
                await self.publish_once()
            except Exception:  # a bug building the record: log it, keep the schedule
                logger.exception("status not published")
            await asyncio.sleep(self._interval)

    async def publish_once(self) -> bool:
        status = self._source()
        data = encode_status(status)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(names.collector_status_key(status.id), data, px=self._ttl_ms)
            pipe.execute_command(publish_command(self._redis), names.COLLECTOR_STATUS_CHANNEL, data)
            await pipe.execute()
            honour_cancellation()
        except REDIS_ERRORS as exc:
            self.failures += 1
            if self._ok:  # once per outage, not once per period
                logger.warning("cannot publish status", extra={"collector": status.id, "error": repr(exc)})
            self._ok = False
            return False
        if not self._ok:
            logger.info("status published again", extra={"collector": status.id})
        self._ok = True
        self.published += 1
        return True
