"""On-demand collection: topics gateways ask for (gateway/demand.py) are collected while they are wanted.

Gateways lease topics in `collector:demand:<exchange>` ("<topic> <node>" ->
lease expiry in ms; a topic is wanted while any node's lease holds). This
polls the set, adds a leased topic this collector does not collect yet,
within the allow-list (globs over the topic text) and the collector's topic
cap, and removes a topic it added once no lease has held it for `linger_s`
(a client that reloads its page finds it still there). Topics from the
configuration are never removed. A refused topic is logged once and
counted; a topic the exchange rejects stays subscribed and shows in the
status as a silent stream.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from typing import Final

from prometheus_client import Counter

from collectors.feed.adapter import SubscriptionError
from collectors.feed.collector import Collector
from shared import names
from shared.errors import TopicError
from shared.redis_target import REDIS_ERRORS, AsyncClient
from shared.topics import Exchange, Topic

logger = logging.getLogger(__name__)

POLL_S: Final = 1.0
# Leased topics read per poll: a malicious or broken writer cannot make one poll unbounded.
MAX_LEASES_READ: Final = 2000
# Refusals remembered so each is logged once; past this, counted only.
MAX_REMEMBERED: Final = 10_000


class DemandWatcher:
    """Keeps a collector's on-demand topics equal to what gateways lease, within its limits."""

    def __init__(
        self,
        collector: Collector,
        client: AsyncClient,
        exchange: Exchange,
        refusals: Counter,
        *,
        allow: list[str],
        max_topics: int,
        linger_s: float,
    ) -> None:
        self._collector = collector
        self._redis = client
        self._exchange = exchange
        self._key = names.collector_demand_key(str(exchange))
        self._refusals = refusals
        self._allow = re.compile("|".join(fnmatch.translate(p) for p in allow)) if allow else None
        self._max_topics = max_topics
        self._linger_s = linger_s
        self._added: dict[Topic, float | None] = {}  # on-demand topics -> since when unwanted (None: wanted)
        self._refused: set[str] = set()

    @property
    def topics(self) -> list[Topic]:
        """The topics collected because gateways asked for them."""
        return list(self._added)

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except REDIS_ERRORS as exc:
                logger.warning("reading the demand failed", extra={"exchange": str(self._exchange), "error": str(exc)})
            await asyncio.sleep(POLL_S)

    async def poll(self) -> None:
        now = time.time()
        leased = await self._redis.zrangebyscore(self._key, int(now * 1000), "+inf", start=0, num=MAX_LEASES_READ)
        wanted: set[Topic] = set()
        for raw in leased:
            member = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            topic = self._accepted(member.split(" ", 1)[0])
            if topic is not None:
                wanted.add(topic)
        current = set(self._collector.topics)
        for topic in wanted:
            if topic in self._added:
                self._added[topic] = None
            elif topic not in current:
                self._add(topic)
        for topic, unwanted_since in list(self._added.items()):
            if topic in wanted:
                continue
            if unwanted_since is None:
                self._added[topic] = now
            elif now - unwanted_since >= self._linger_s:
                self._collector.remove([topic])
                del self._added[topic]
                logger.info("stopped collecting an on-demand topic", extra={"topic": str(topic)})

    def _accepted(self, text: str) -> Topic | None:
        """The leased topic if this collector may collect it; None (logged once, counted) otherwise."""
        try:
            topic = Topic.parse(text)
        except TopicError:
            self._refuse(text, "invalid_topic")
            return None
        if topic.exchange is not self._exchange:
            self._refuse(text, "other_exchange")
            return None
        if self._allow is None or not self._allow.fullmatch(text):
            self._refuse(text, "not_allowed")
            return None
        return topic

    def _add(self, topic: Topic) -> None:
        if len(self._collector.topics) >= self._max_topics:
            self._refuse(str(topic), "limit_reached")
            return
        try:
            self._collector.add([topic])
        except SubscriptionError as exc:
            self._refuse(str(topic), "unsupported", str(exc))
            return
        self._added[topic] = None
        logger.info("collecting an on-demand topic", extra={"topic": str(topic)})

    def _refuse(self, topic: str, reason: str, detail: str = "") -> None:
        """Count and log a refusal once per topic (a lease is read again every poll)."""
        if topic in self._refused:
            return
        self._refusals.labels(reason).inc()
        if len(self._refused) < MAX_REMEMBERED:
            self._refused.add(topic)
            logger.info(
                "not collecting a requested topic", extra={"topic": topic[:100], "reason": reason, "error": detail}
            )
