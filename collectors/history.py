"""Candle history from the exchange's REST API into PostgreSQL: backfill at start, gap fill after outages.

For each candle topic of the collector the loader fills the store from the
newest closed candle it holds (or `bars` back, on a first start) up to the
open candle: on start-up, whenever the topic's stream is subscribed on a
fresh connection (a reconnect after an outage), and for a timeframe built
live from trades once more after the first bucket it saw only in part has
closed, so neither a restart nor an outage leaves a hole.

A timeframe the exchange serves is fetched as is; another is folded from
the coarsest native one that divides it (`collectors.candles.aggregate`).
Pages are fetched in order within the collector's `RestBudget` (shared
with book snapshots) and every page is checked before anything is written:
a body that is not the documented shape, a value that is not a decimal, a
candle off the timeframe's grid, out of order or twice, refuses the page
with one logged error; the fill is retried with capped, jittered backoff,
then left until the next trigger. Nothing of it runs on a read loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import asyncpg
import msgspec

from collectors.book import DataError
from collectors.candles import aggregate
from collectors.feed.adapter import Adapter, Bar, SubscriptionError
from collectors.feed.backoff import Backoff
from collectors.feed.collector import Collector
from collectors.feed.rest import RestError
from shared.candle_store import CandleStore
from shared.events import Candle, bad_decimal
from shared.topics import Kind, Timeframe, Topic

logger = logging.getLogger(__name__)

# Most native candles one fill holds in memory (a built month from days: 31 per bucket).
MAX_FILL_BARS: Final = 50_000
# A page may hold one candle past its window (an exchange's inclusive end); far more is hostile.
PAGE_SLACK: Final = 2
# After the first partly seen bucket of a trade-built timeframe closes, refetch it this much later.
SETTLE_MS: Final = 10_000
ATTEMPTS: Final = 4
RETRY_LATER_MS: Final = 60_000
TRIM_INTERVAL_S: Final = 3600.0
POLL_S: Final = 0.5
WRITE_CHUNK: Final = 1000


class HistoryError(DataError):
    """A history page the loader refuses (shape, values, order, alignment)."""


@dataclass(slots=True)
class _Due:
    at: float  # wall clock, ms
    start: int | None = None  # refetch from here even if stored (a partly seen bucket)
    attempts: int = 0


class HistoryLoader:
    """Keeps one collector's candle topics filled in the store, from its exchange's REST candles."""

    def __init__(
        self,
        collector: Collector,
        store: CandleStore,
        *,
        bars: int,
        retention_days: Mapping[Timeframe, float],
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._collector = collector
        self._adapter: Adapter[Any] = collector.adapter
        self._store = store
        self._bars = bars
        self._retention = dict(retention_days)
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._due: dict[Topic, _Due] = {}
        self._known: set[Topic] = set()
        self._wake = asyncio.Event()
        self.loaded = 0  # candles written
        self.requests = 0
        self.refused = 0  # pages refused as malformed
        self.failures = 0  # requests that failed (network, status, throttling)
        self.fills = 0
        self.trimmed = 0

    # -- triggers -----------------------------------------------------------------------------

    def reopened(self, topics: Iterable[Topic]) -> None:
        """Streams were subscribed on a fresh connection: fill from what is stored up to now."""
        now = time.time() * 1000
        for topic in topics:
            if topic.kind is Kind.CANDLES:
                held = self._due.get(topic)
                self._due[topic] = _Due(now, held.start if held else None)
        self._wake.set()

    def base_timeframe(self, timeframe: Timeframe) -> Timeframe | None:
        """The native REST timeframe `timeframe` is built from (itself when native), if any."""
        native = self._adapter.history_intervals
        if timeframe in native:
            return timeframe
        fitting = [tf for tf in native if tf.divides(timeframe)]
        return max(fitting, key=lambda tf: tf.seconds, default=None)

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fill due topics until cancelled; trim old candles every hour."""
        last_trim = time.monotonic()
        while True:
            for topic in self._collector.topics:
                if topic.kind is Kind.CANDLES and topic not in self._known:
                    self._known.add(topic)
                    self._due.setdefault(topic, _Due(0.0))
            session = self._collector.session
            now = time.time() * 1000
            due = [topic for topic, when in self._due.items() if when.at <= now]
            if session is not None:
                for topic in due:
                    if topic in self._collector.topics:
                        await self._fill_guarded(session, topic)
                    else:
                        self._due.pop(topic, None)
                        self._known.discard(topic)
            if time.monotonic() - last_trim >= TRIM_INTERVAL_S:
                last_trim = time.monotonic()
                await self.trim()
            self._wake.clear()
            try:
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _fill_guarded(self, session: aiohttp.ClientSession, topic: Topic) -> None:
        """`_fill_due`, and a bug in it is logged and retried later instead of ending the collector."""
        try:
            await self._fill_due(session, topic)
        except Exception:
            logger.exception("history fill failed unexpectedly", extra={"topic": str(topic)})
            self._due.setdefault(topic, _Due(time.time() * 1000 + RETRY_LATER_MS))

    async def _fill_due(self, session: aiohttp.ClientSession, topic: Topic) -> None:
        due = self._due.pop(topic)
        backoff = Backoff(initial=self._backoff[0], maximum=self._backoff[1])
        for _ in range(due.attempts):
            backoff.next()
        try:
            opened_at = await self.fill(session, topic, start=due.start)
        except (DataError, RestError, aiohttp.ClientError, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            due.attempts += 1
            if isinstance(exc, DataError):
                self.refused += 1
                logger.error("history page refused", extra={"topic": str(topic), "error": str(exc)[:500]})  # noqa: TRY400 - the reason is the message
            else:
                self.failures += 1
                logger.warning("history fetch failed", extra={"topic": str(topic), "error": repr(exc)[:500]})
            delay = backoff.next() * 1000 if due.attempts < ATTEMPTS else RETRY_LATER_MS
            due.attempts = due.attempts if due.attempts < ATTEMPTS else 0
            self._due.setdefault(topic, _Due(time.time() * 1000 + delay, due.start, due.attempts))
            return
        timeframe = topic.channel.timeframe
        assert timeframe is not None
        if self._built_live(topic) and due.start is None:
            # The bucket open now was seen only in part by the trade aggregator: fetch it once closed.
            self._due.setdefault(topic, _Due(timeframe.end(opened_at) + SETTLE_MS, opened_at))

    def _built_live(self, topic: Topic) -> bool:
        try:
            return self._adapter.stream_for(topic).kind is Kind.TRADES
        except SubscriptionError:
            return False

    async def fill(self, session: aiohttp.ClientSession, topic: Topic, *, start: int | None = None) -> int:
        """Fetch and store `topic`'s candles from the stored ones (or `start`) to now; returns the open bucket."""
        timeframe = topic.channel.timeframe
        assert timeframe is not None
        base = self.base_timeframe(timeframe)
        now = int(time.time() * 1000)
        current = timeframe.start(now)
        if base is None:
            return current
        first = max(0, _back(timeframe, current, self._bars))
        if self._adapter.history_max_bars is not None:  # older candles are not served: don't ask
            first = max(first, _back(base, base.start(now), self._adapter.history_max_bars - 1))
        last = await self._store.last_closed(topic.exchange, topic.symbol, timeframe)
        begin = max(first, timeframe.end(last)) if last is not None else first
        if start is not None:
            begin = min(begin, start)
        bars = await self._fetch(session, topic, base, begin, timeframe.end(current))
        candles = [self._candle(topic, base, bar, now) for bar in bars]
        if base is not timeframe:
            candles = aggregate(candles, timeframe, now)
        for index in range(0, len(candles), WRITE_CHUNK):
            await self._store.upsert(candles[index : index + WRITE_CHUNK])
        self.loaded += len(candles)
        self.fills += 1
        logger.info(
            "history filled",
            extra={"topic": str(topic), "from": begin, "candles": len(candles), "built_from": str(base)},
        )
        return current

    async def _fetch(
        self, session: aiohttp.ClientSession, topic: Topic, base: Timeframe, start: int, end: int
    ) -> list[Bar]:
        """Native candles opening in [start, end), page by page, each page checked."""
        adapter = self._adapter
        market = adapter.market(topic.symbol)
        out: list[Bar] = []
        cursor = start
        while cursor < end and len(out) < MAX_FILL_BARS:
            window_end = min(end, _forward(base, cursor, adapter.history_page))
            url, params = adapter.history_request(market, base, cursor, window_end)
            self.requests += 1
            body = await self._collector.rest.get(session, url, params, weight=adapter.history_weight)
            out.extend(self._checked(body, base, cursor, window_end, out[-1][0] if out else None))
            cursor = window_end
        return out

    def _checked(self, body: bytes, base: Timeframe, start: int, end: int, previous: int | None) -> list[Bar]:
        try:
            bars = self._adapter.parse_history(body)
        except (msgspec.DecodeError, msgspec.ValidationError, DataError, ValueError) as exc:
            raise HistoryError(f"malformed page: {exc}") from None
        if len(bars) > self._adapter.history_page + PAGE_SLACK:
            raise HistoryError(f"{len(bars)} candles in a page of at most {self._adapter.history_page}")
        kept: list[Bar] = []
        for bar in bars:
            open_time = bar[0]
            if base.start(open_time) != open_time:
                raise HistoryError(f"candle at {open_time} is off the {base} grid")
            if previous is not None and open_time <= previous:
                raise HistoryError(f"candle at {open_time} is out of order or repeated (after {previous})")
            previous = open_time
            if start <= open_time < end:
                kept.append(bar)
        return kept

    def _candle(self, topic: Topic, timeframe: Timeframe, bar: Bar, now: int) -> Candle:
        open_time, open_, high, low, close, volume = bar
        closed = timeframe.end(open_time) <= now
        ts = min(now, timeframe.end(open_time) - 1)
        fields = {
            "type": "candle", "exchange": topic.exchange, "symbol": topic.symbol, "ts": ts,
            "recv_ts": float(now), "timeframe": timeframe, "open_time": open_time, "open": open_, "high": high,
            "low": low, "close": close, "volume": volume, "closed": closed,
        }  # fmt: skip
        try:
            candle = msgspec.convert(fields, Candle)  # the event schema checks every time and name ...
        except msgspec.ValidationError as exc:
            raise HistoryError(f"candle at {open_time}: {exc}") from None
        bad = bad_decimal(candle)  # ... and this every price and volume
        if bad is not None:
            raise HistoryError(f"candle at {open_time}: {bad[:64]!r} is not a decimal string")
        return candle

    async def trim(self) -> None:
        """Drop candles older than their timeframe's retention."""
        now = time.time() * 1000
        for topic in self._collector.topics:
            days = self._retention.get(topic.channel.timeframe) if topic.channel.timeframe else None
            if days:
                assert topic.channel.timeframe is not None
                try:
                    self.trimmed += await self._store.trim(
                        topic.exchange, topic.symbol, topic.channel.timeframe, int(now - days * 86_400_000)
                    )
                except (asyncpg.PostgresError, OSError) as exc:
                    logger.warning("trim failed", extra={"topic": str(topic), "error": repr(exc)})


def _back(timeframe: Timeframe, open_time: int, bars: int) -> int:
    """Open time `bars` buckets before `open_time`."""
    if timeframe is not Timeframe.MO1:
        return open_time - bars * timeframe.seconds * 1000
    for _ in range(bars):
        open_time = timeframe.start(open_time - 1)
    return open_time


def _forward(timeframe: Timeframe, open_time: int, bars: int) -> int:
    """Open time `bars` buckets after `open_time`."""
    if timeframe is not Timeframe.MO1:
        return open_time + bars * timeframe.seconds * 1000
    for _ in range(bars):
        open_time = timeframe.end(open_time)
    return open_time
