"""Which market topics are being collected, and on-demand collection of those that are not.

Collectors write a status record (`collector:status:<id>`, with the topics
they serve) every few seconds; this reads them all on the same period, so a
subscribe can tell its client whether the topic is collected. With
on-demand collection on, the node also holds a lease for every market topic
its clients subscribe to, in one sorted set per exchange
(`collector:demand:<exchange>`: "<topic> <node>" -> lease expiry in ms),
renewed while any of its clients wants the topic and removed soon after the
last one lets go. A collector of that exchange with
on-demand collection on starts collecting a leased topic within its
allow-list and limits, and stops some time after the last lease lapses
(collectors/demand.py). Leases lapse by themselves, so a node that dies
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from shared import names
from shared.redis_target import REDIS_ERRORS, AsyncClient
from shared.status import decode_status, read_records
from shared.topics import Topic

logger = logging.getLogger(__name__)

REFRESH_S: Final = 5.0
LEASE_MS: Final = 30_000  # renewed every REFRESH_S: a dead node's leases lapse within this
MAX_STATUS_RECORDS: Final = 1000  # collectors read per refresh; far more than any deployment runs


class Demand:
    """The collected topics as collectors report them, and this node's leases on the others."""

    def __init__(self, client: AsyncClient, wanted: Callable[[], Iterable[str]], *, node: str, on_demand: bool) -> None:
        self._redis = client
        self._wanted = wanted  # the market topics this node's clients hold now
        self._node = node
        self._on_demand = on_demand
        self._collected: frozenset[str] = frozenset()
        self._released: set[str] = set()  # topics no client of this node wants any more, to unlease
        self.known = False  # whether a refresh has read the collectors' records yet

    def collected(self, topic: str) -> bool | None:
        """Whether a collector serves `topic`; None before the collectors' records were first read."""
        return topic in self._collected if self.known else None

    async def run(self) -> None:
        """Refresh every REFRESH_S until cancelled; a failed refresh is logged and tried again the next time."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except REDIS_ERRORS as exc:
                logger.warning("collector status and demand refresh failed", extra={"error": str(exc)})

    async def refresh(self) -> None:
        await self._read_status()
        if self._on_demand:
            wanted = list(self._wanted())
            released, self._released = self._released - set(wanted), set()
            if released:
                pipe = self._redis.pipeline(transaction=False)
                for topic in released:
                    pipe.zrem(names.collector_demand_key(str(Topic.parse(topic).exchange)), self._member(topic))
                await pipe.execute()
            await self.lease(wanted)

    def release(self, topic: str) -> None:
        """No client of this node wants `topic` any more: its lease goes at the next refresh."""
        if self._on_demand:
            self._released.add(topic)

    def _member(self, topic: str) -> str:
        return f"{topic} {self._node}"

    async def lease(self, topics: Iterable[str]) -> None:
        """Lease (or renew) `topics` for collection, one sorted set per exchange, in one round trip."""
        expiry = int(time.time() * 1000) + LEASE_MS
        by_exchange: dict[str, dict[str, int]] = {}
        for topic in topics:
            by_exchange.setdefault(str(Topic.parse(topic).exchange), {})[self._member(topic)] = expiry
        if not by_exchange or not self._on_demand:
            return
        pipe = self._redis.pipeline(transaction=False)
        for exchange, leases in by_exchange.items():
            pipe.zadd(names.collector_demand_key(exchange), leases)
            pipe.pexpire(names.collector_demand_key(exchange), LEASE_MS * 2)
        await pipe.execute()

    async def _read_status(self) -> None:
        records = await read_records(
            self._redis, names.COLLECTOR_STATUS_PREFIX, decode_status, limit=MAX_STATUS_RECORDS
        )
        self._collected = frozenset(topic for record in records for topic in record.topics)
        self.known = True
