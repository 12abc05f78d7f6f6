"""Candle history for charts: the `candles:history` event and `GET /candles`, answered from PostgreSQL.

A page is at most `limit` candles opening before `before` (ms), oldest
first, up to and including the open candle when `before` is left out (its
state from Redis, `md:last:<topic>`, when that is newer than the store's).
A client that subscribes first and then loads a page applies every live
`market` candle whose `open_time` is not older than the page's last bar
(replace the same bar, append a newer one): no gap and no duplicate bar at
the seam, even when a candle closes in between, as long as the collectors'
writes reach the store within a bar (they are batched every fraction of a
second).

Pages are kept in a small LRU cache, bounded in entries: a page that ends
in the past for `CLOSED_PAGE_TTL_S`, the newest page (its open candle
moves) for `LIVE_PAGE_TTL_S`. Errors carry the same codes as `subscribe`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.admission import bearer_token
from gateway.auth import Identity
from gateway.errors import AuthCode, AuthError, RequestError
from gateway.policy import TopicPolicy
from gateway.protocol.http import Request, Response
from gateway.sessions import Session
from shared import codec, names
from shared.candle_store import NO_LIMIT_MS, CandleStore
from shared.errors import PayloadError, TopicError
from shared.events import Candle
from shared.redis_target import REDIS_ERRORS, AsyncClient
from shared.topics import Kind, Topic

logger = logging.getLogger(__name__)

DEFAULT_LIMIT: Final = 500
# A `before` this far ahead of our clock is a client clock skew, not a request for the future.
FUTURE_SKEW_MS: Final = 60_000
CLOSED_PAGE_TTL_S: Final = 60.0
LIVE_PAGE_TTL_S: Final = 0.5
JSON: Final = "application/json"
_STATUS: Final = {"bad_request": 400, "invalid_topic": 400, "forbidden": 403, "unavailable": 503}
_AUTH_STATUS: Final = {AuthCode.UNAVAILABLE: 503}

Page = list[dict[str, Any]]


def bar(candle: Candle) -> dict[str, Any]:
    """One candle as the client sees it in a page."""
    return {
        "open_time": candle.open_time,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "closed": candle.closed,
        "ts": candle.ts,
    }


class HistoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_candle_history_requests_total",
            "Candle history requests, by transport and outcome (ok or an error code).",
            ["transport", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_candle_history_seconds",
            "Time to answer a candle history request that reached the store or the cache.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.cache_hits = Counter("gateway_candle_cache_hits_total", "Pages served from the cache.", registry=registry)
        self.cache_entries = Gauge("gateway_candle_cache_entries", "Pages held in the cache.", registry=registry)


class CandleHistory:
    """Pages of candle history for Socket.IO clients and HTTP callers."""

    def __init__(
        self,
        *,
        database_url: str,
        policy: TopicPolicy,
        verify: Callable[[object], Awaitable[Identity]],
        client: AsyncClient,
        registry: CollectorRegistry,
        max_limit: int,
        cache_entries: int,
        timeout_s: float,
    ) -> None:
        self._url = database_url
        self._policy = policy
        self._verify = verify  # a token's identity, revocations checked (Admission.verify)
        self._redis = client
        self._max_limit = max_limit
        self._cache_entries = cache_entries
        self._timeout_s = timeout_s
        self._store: CandleStore | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._cache: OrderedDict[tuple[str, int, int], tuple[float, Page]] = OrderedDict()
        self.metrics = HistoryMetrics(registry)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- the two front doors ----------------------------------------------------------------

    async def request(self, session: Session, data: object) -> dict[str, object]:
        """The `candles:history` event: ``{topic, before?, limit?}`` -> a page, or a RequestError."""
        if not isinstance(data, dict):
            self.metrics.requests.labels("socketio", "bad_request").inc()
            raise RequestError("bad_request", "send {topic, before?, limit?}")
        try:
            answer = await self._serve(data.get("topic"), data.get("before"), data.get("limit"), session.user_patterns)
        except RequestError as exc:
            self.metrics.requests.labels("socketio", exc.code).inc()
            raise
        self.metrics.requests.labels("socketio", "ok").inc()
        return answer

    async def http(self, request: Request) -> Response:
        """``GET /candles?topic=...&before=...&limit=...`` with ``Authorization: Bearer <jwt>``."""
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed", headers=[("Allow", "GET, HEAD")])
        try:
            identity = await self._verify(bearer_token(request))
        except AuthError as exc:
            self.metrics.requests.labels("http", str(exc.code)).inc()
            body = {"ok": False, "error": {"code": str(exc.code), "message": exc.message}}
            return Response(_AUTH_STATUS.get(exc.code, 401), msgspec.json.encode(body), content_type=JSON)
        query = request.query
        try:
            answer = await self._serve(
                query.get("topic", ""),
                _integer(query.get("before"), "before"),
                _integer(query.get("limit"), "limit"),
                self._policy.user_patterns(identity.claims),
            )
        except RequestError as exc:
            self.metrics.requests.labels("http", exc.code).inc()
            return Response(_STATUS.get(exc.code, 400), msgspec.json.encode(exc.ack()), content_type=JSON)
        self.metrics.requests.labels("http", "ok").inc()
        return Response(200, msgspec.json.encode(answer), content_type=JSON)

    async def _serve(
        self, topic_value: object, before: object, limit: object, patterns: re.Pattern[str] | None
    ) -> dict[str, object]:
        topic, start, count = self._parse(topic_value, before, limit)
        if not self._policy.allows(str(topic), patterns):
            raise RequestError("forbidden", "this token may not read that topic")
        return await self._answer(topic, start, count)

    # -- shared ---------------------------------------------------------------------------

    def _parse(self, topic_value: object, before: object, limit: object) -> tuple[Topic, int | None, int]:
        try:
            topic = Topic.parse(topic_value)
        except TopicError as exc:
            raise RequestError("invalid_topic", str(exc)) from None
        if topic.kind is not Kind.CANDLES:
            raise RequestError("invalid_topic", "history exists for candle topics only (exchange:candles.<tf>:SYMBOL)")
        if limit is None:
            limit = min(DEFAULT_LIMIT, self._max_limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self._max_limit:
            raise RequestError("bad_request", f"limit must be an integer from 1 to {self._max_limit}")
        if before is not None:
            if not isinstance(before, int) or isinstance(before, bool) or before < 0:
                raise RequestError("bad_request", "before must be a time in milliseconds since the epoch")
            if before > time.time() * 1000 + FUTURE_SKEW_MS:
                raise RequestError("bad_request", "before is in the future")
        return topic, before, limit

    async def _answer(self, topic: Topic, before: int | None, limit: int) -> dict[str, object]:
        started = time.perf_counter()
        page = await self._page(topic, before, limit)
        self.metrics.latency.observe(time.perf_counter() - started)
        return {
            "ok": True,
            "topic": str(topic),
            "candles": page,
            # Pass this as `before` for the page before; null once the store has nothing older.
            "next_before": page[0]["open_time"] if len(page) == limit else None,
        }

    async def _page(self, topic: Topic, before: int | None, limit: int) -> Page:
        key = (str(topic), before if before is not None else -1, limit)
        now = time.monotonic()
        held = self._cache.get(key)
        if held is not None and held[0] > now:
            self._cache.move_to_end(key)
            self.metrics.cache_hits.inc()
            return held[1]
        store = await self._connected()
        timeframe = topic.channel.timeframe
        assert timeframe is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                candles = await store.page(
                    topic.exchange,
                    topic.symbol,
                    timeframe,
                    before=NO_LIMIT_MS if before is None else before,
                    limit=limit,
                )
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            logger.warning("candle history unavailable", extra={"topic": str(topic), "error": repr(exc)})
            raise RequestError("unavailable", "candle history is unavailable; retry") from None
        page = [bar(candle) for candle in candles]
        live = before is None or not candles or timeframe.end(candles[-1].open_time) > time.time() * 1000
        if before is None:
            await self._merge_latest(topic, page)
        self._remember(key, page, now + (LIVE_PAGE_TTL_S if live else CLOSED_PAGE_TTL_S))
        return page

    async def _merge_latest(self, topic: Topic, page: Page) -> None:
        """Give the page's last bar the live latest state when Redis has a newer one of that same bar.

        A newer bar is never appended: live events carry it, and a chart can only
        update its last bar or append, so a page must never end past what the
        client's live events will continue from.
        """
        if not page or page[-1]["closed"]:
            return
        try:
            raw = await self._redis.get(names.latest_key(topic))
            latest = codec.decode_market(raw) if isinstance(raw, bytes) else None
        except (*REDIS_ERRORS, PayloadError) as exc:
            logger.warning("latest candle not read", extra={"topic": str(topic), "error": repr(exc)})
            return
        if isinstance(latest, Candle) and latest.topic == topic and latest.open_time == page[-1]["open_time"]:
            page[-1] = bar(latest)

    def _remember(self, key: tuple[str, int, int], page: Page, expires: float) -> None:
        self._cache[key] = (expires, page)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        self.metrics.cache_entries.set(len(self._cache))

    async def _connected(self) -> CandleStore:
        """The store, connected (and migrated) on first use; `unavailable` while it cannot be."""
        if self._store is not None:
            return self._store
        if not self._url:
            raise RequestError("unavailable", "this node has no candle store (DATABASE_URL)")
        async with self._connecting:
            if self._store is None:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        self._store = await CandleStore.connect(self._url, max_size=8, timeout_s=self._timeout_s)
                except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                    logger.warning("candle store unreachable", extra={"error": repr(exc)})
                    raise RequestError("unavailable", "candle history is unavailable; retry") from None
            return self._store


def _integer(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise RequestError("bad_request", f"{name} must be a non-negative integer")
    return int(text)
