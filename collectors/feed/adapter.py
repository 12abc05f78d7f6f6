"""The base of the exchange adapters: everything the five of them share.

An adapter is only its exchange's protocol, mostly as class-level data: its
URLs, channel names, symbol format, subscribe messages, frame parsers,
heartbeat and book rules. This base turns what the parsers read into
`shared.events` records, keeps the books and the trade-built candles, and
tells its host (the collector) what to publish and which book needs a
resync. It does no I/O, except the REST snapshot hook that the host runs in
a task of its own.
"""

from __future__ import annotations

import functools
import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Protocol, TypedDict, Unpack

import aiohttp
import msgspec

from collectors.book import CollectorError, LevelText, SyncError, SyncReason
from collectors.candles import CandleAggregator
from collectors.feed.books import BookFeed, S
from collectors.feed.rest import RestBudget
from shared.events import AnyMarketEvent, Candle, Side, Ticker, Trade
from shared.topics import Exchange, Kind, Timeframe, Topic

logger = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
# A candle is closed by time this long after its bucket ended when no later
# update has closed it: the exchange's own close (or a late trade) wins if on time.
CANDLE_CLOSE_GRACE_MS: Final = 5_000

# (kind, unified symbol, timeframe): the identity of a topic inside one collector.
Key = tuple[Kind, str, Timeframe | None]
# One candle of a REST history page: open time (ms), open, high, low, close, volume (exchange text).
Bar = tuple[int, str, str, str, str, str]


class SubscriptionError(CollectorError, ValueError):
    """A topic this collector cannot serve: another exchange's, or a symbol it cannot map."""


class Op(StrEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


class ResyncMode(StrEnum):
    """How a book gets a fresh snapshot after a gap."""

    RESUBSCRIBE = "resubscribe"  # unsubscribe and subscribe again: the exchange resends a snapshot
    SNAPSHOT = "snapshot"  # fetch one over REST while the stream's diffs are buffered (Binance)


@dataclass(frozen=True, slots=True)
class Stream:
    """One exchange subscription. Several topics may share it: trades also feed trade-built candles."""

    kind: Kind
    symbol: str  # unified, BASE/QUOTE
    market: str  # the exchange's own symbol, e.g. BTCUSDT, BTC-USD
    channel: str  # the exchange's channel name, e.g. trade, kline_1m, candle1Dutc
    endpoint: str = "ws"  # which of the adapter's URLs carries it
    timeframe: Timeframe | None = None

    @property
    def key(self) -> Key:
        return (self.kind, self.symbol, self.timeframe)

    def __str__(self) -> str:
        return f"{self.channel}:{self.market}"


class Link(Protocol):
    """The connection a frame arrived on, as an adapter sees it."""

    @property
    def id(self) -> str: ...

    @property
    def streams(self) -> Set[Stream]: ...

    def retire(self) -> None:
        """Reconnect now, as planned (the exchange announced it will close this connection)."""


class Host(Protocol):
    """What an adapter asks of the collector that runs it."""

    def publish(self, event: AnyMarketEvent) -> None: ...

    def resync(self, stream: Stream, reason: SyncReason | None) -> None:
        """Get `stream`'s book a fresh snapshot; `reason` is None for the first one."""


class TickerFields(TypedDict, total=False):
    bid: str | None
    bid_size: str | None
    ask: str | None
    ask_size: str | None
    last: str | None
    open_24h: str | None
    high_24h: str | None
    low_24h: str | None
    volume_24h: str | None


def to_json(value: object) -> str:
    """A request's text: compact JSON."""
    return msgspec.json.encode(value).decode()


def iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time; nanoseconds are cut, never rounded up."""
    # Exchanges stamp every message "2023-10-06T17:35:55.440295Z": parse each second once, cut the fraction here.
    fraction = text[20:-1]
    if text[19:20] == "." and text[10:11] == "T" and text[-1:] == "Z" and fraction.isascii() and fraction.isdigit():
        return _second_ms(text[:19]) + int(fraction[:3].ljust(3, "0"))
    return (datetime.fromisoformat(text) - _EPOCH) // _MILLISECOND


@functools.lru_cache(maxsize=256)
def _second_ms(text: str) -> int:
    """Milliseconds since the epoch of a UTC ``YYYY-MM-DDTHH:MM:SS``."""
    return (datetime.fromisoformat(text).replace(tzinfo=UTC) - _EPOCH) // _MILLISECOND


class _Syncing:
    """`Adapter.syncing`: a class rather than a generator-based context, one per book message."""

    __slots__ = ("_adapter", "_symbol")

    def __init__(self, adapter: Adapter[Any], symbol: str) -> None:
        self._adapter = adapter
        self._symbol = symbol

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(error, SyncError):
            self._adapter.resync(self._symbol, error)
            return True  # handled: the symbol resyncs, the frame's other symbols go on
        return False


class Adapter(ABC, Generic[S]):
    """One exchange's protocol. Subclasses fill in the class data and the abstract methods."""

    exchange: ClassVar[Exchange]
    # Name -> default URL. "ws" is the main WebSocket; others are exchange specific.
    endpoints: ClassVar[Mapping[str, str]]
    # Exchange channel names of ticker, trades and book.
    channels: ClassVar[Mapping[Kind, str]]
    # Native candle channels; a timeframe missing here is built from trades.
    candle_channels: ClassVar[Mapping[Timeframe, str]]
    # Kinds served by another endpoint than "ws" (OKX candles: "business").
    kind_endpoints: ClassVar[Mapping[Kind, str]] = {}
    # Depths the exchange offers for its book channel; empty when it has one fixed depth.
    book_depths: ClassVar[tuple[int, ...]] = ()
    resync_mode: ClassVar[ResyncMode] = ResyncMode.RESUBSCRIBE
    max_streams_per_connection: ClassVar[int]
    max_streams_per_request: ClassVar[int]
    requests_per_second: ClassVar[float]
    # Planned reconnect before the exchange ends the connection; None: no limit.
    max_connection_age_s: ClassVar[float | None] = None
    # Ping on schedule even while data flows (an exchange that drops clients that never ping).
    ping_always: ClassVar[bool] = False
    decoder: ClassVar[msgspec.json.Decoder[Any]] = msgspec.json.Decoder()
    # REST: the weight budget a minute (a share of the exchange's per-address limit), and candle
    # history: each native timeframe's interval name there, candles per request and its weight.
    rest_weight_per_minute: ClassVar[float] = 300.0
    history_intervals: ClassVar[Mapping[Timeframe, str]] = {}
    history_page: ClassVar[int] = 100
    history_weight: ClassVar[float] = 1.0
    history_max_bars: ClassVar[int | None] = None  # how far back the exchange serves, in native candles

    def __init__(
        self,
        *,
        host: Host,
        urls: Mapping[str, str] | None = None,
        book_depth: int = 20,
        book_interval_s: float = 0.1,
    ) -> None:
        if book_depth < 1:
            raise ValueError(f"book depth must be at least 1, got {book_depth}")
        self.host = host
        self.urls = {**self.endpoints, **{name: url for name, url in (urls or {}).items() if url}}
        self.book_depth = book_depth
        self.book_interval_s = book_interval_s
        self.markets: dict[str, str] = {}  # exchange symbol -> unified symbol
        self.books: dict[str, BookFeed[S]] = {}
        self.last_seen: dict[Key, float] = {}  # receive time (ms) of each stream's latest message
        self.rejections = 0  # subscribe requests the exchange refused
        self._wanted: set[Key] = set()
        self._book_streams: dict[str, Stream] = {}
        self._aggregators: dict[str, dict[Timeframe, CandleAggregator]] = {}
        self._native: dict[tuple[str, Timeframe], Candle] = {}
        self._request_ids = itertools.count(1)

    # -- protocol: what each adapter provides ---------------------------------------------

    @abstractmethod
    def market(self, symbol: str) -> str:
        """The exchange's name of a unified symbol."""

    @abstractmethod
    def new_sync(self) -> S:
        """A fresh book sequencer for one symbol."""

    @abstractmethod
    def render(self, op: Op, group: Hashable, streams: list[Stream]) -> str:
        """One (un)subscribe request for streams of one `group`."""

    @abstractmethod
    def on_message(self, link: Link, data: str | bytes, recv_ts: float) -> None:
        """Parse one frame (received at `recv_ts`, ms) and hand what it carries to the base."""

    def level_text(self) -> LevelText | None:
        """Each book level's text in the exchange's checksum, for books to keep (one that checks every message)."""
        return None

    def request_id(self) -> int:
        """A fresh id for a request, so replies can be told apart in a capture."""
        return next(self._request_ids)

    def group(self, stream: Stream) -> Hashable:
        """Streams of one group may share a request; most exchanges mix any."""
        return None

    def channel(self, kind: Kind) -> str:
        return self.channels[kind]

    def open_messages(self) -> list[str]:
        """Requests sent first on every new connection."""
        return []

    def ping_message(self) -> str | None:
        """The application-level ping; None when the exchange only needs WebSocket pings."""
        return None

    def connection_opened(self, link: Link) -> None:
        """A connection (re)opened; its streams are about to be subscribed."""

    async def fetch_snapshot(self, session: aiohttp.ClientSession, budget: RestBudget, stream: Stream) -> bytes:
        """Fetch `stream`'s book over REST within the collector's weight budget (ResyncMode.SNAPSHOT only)."""
        raise NotImplementedError(f"{self.exchange} books resync by resubscribing")

    def on_snapshot(self, stream: Stream, body: bytes, recv_ts: float) -> bool:
        """Apply a fetched snapshot; True once the book is in sync (ResyncMode.SNAPSHOT only)."""
        raise NotImplementedError(f"{self.exchange} books resync by resubscribing")

    def history_request(self, market: str, timeframe: Timeframe, start: int, end: int) -> tuple[str, dict[str, str]]:
        """URL and query of one page of native candles opening in [start, end) (ms), at most `history_page`."""
        raise NotImplementedError(f"{self.exchange} serves no candle history")

    def parse_history(self, body: bytes) -> list[Bar]:
        """The candles of a history page, oldest first, as the exchange sent them.

        Raises `DataError` (or a decoding error) for a body of the wrong shape; the
        loader checks values, order and alignment.
        """
        raise NotImplementedError(f"{self.exchange} serves no candle history")

    # -- topics -----------------------------------------------------------------------------

    @functools.cached_property
    def subscribe_depth(self) -> int:
        """The book depth to subscribe to: the smallest offered that covers the published view."""
        fitting = [depth for depth in self.book_depths if depth >= self.book_depth]
        return min(fitting) if fitting else max(self.book_depths, default=self.book_depth)

    def stream_for(self, topic: Topic) -> Stream:
        """The exchange subscription that serves `topic`; raises SubscriptionError."""
        if topic.exchange is not self.exchange:
            raise SubscriptionError(f"{topic} is not a {self.exchange} topic")
        kind, timeframe = topic.kind, topic.channel.timeframe
        if kind is Kind.CANDLES and timeframe not in self.candle_channels:
            kind, timeframe = Kind.TRADES, None  # built from trades by a CandleAggregator
        channel = self.candle_channels[timeframe] if timeframe is not None else self.channel(kind)
        market = self.market(topic.symbol)
        return Stream(kind, topic.symbol, market, channel, self.kind_endpoints.get(kind, "ws"), timeframe)

    def want(self, topic: Topic) -> Stream:
        """Start publishing `topic`; returns the stream to subscribe."""
        stream = self.stream_for(topic)
        symbol, timeframe = topic.symbol, topic.channel.timeframe
        self.markets[stream.market] = symbol
        self._wanted.add((topic.kind, symbol, timeframe))
        if topic.kind is Kind.BOOK and symbol not in self.books:
            self._book_streams[symbol] = stream
            self.books[symbol] = BookFeed(
                exchange=self.exchange,
                symbol=symbol,
                sync=self.new_sync(),
                depth=self.book_depth,
                interval_s=self.book_interval_s,
                publish=self.host.publish,
                level_text=self.level_text(),
            )
        if timeframe is not None and stream.kind is Kind.TRADES:
            aggregators = self._aggregators.setdefault(symbol, {})
            aggregators[timeframe] = CandleAggregator(exchange=self.exchange, symbol=symbol, timeframe=timeframe)
        return stream

    def unwant(self, topic: Topic) -> None:
        symbol, timeframe = topic.symbol, topic.channel.timeframe
        self._wanted.discard((topic.kind, symbol, timeframe))
        if topic.kind is Kind.BOOK and (feed := self.books.pop(symbol, None)) is not None:
            feed.cancel()
            del self._book_streams[symbol]
        if timeframe is not None:
            self._aggregators.get(symbol, {}).pop(timeframe, None)
            self._native.pop((symbol, timeframe), None)

    def requests(self, op: Op, streams: Collection[Stream]) -> list[str]:
        """The (un)subscribe requests for `streams`, grouped and split to the exchange's limits."""
        groups: dict[Hashable, list[Stream]] = {}
        for stream in sorted(streams, key=str):
            groups.setdefault(self.group(stream), []).append(stream)
        size = self.max_streams_per_request
        return [
            self.render(op, group, members[start : start + size])
            for group, members in groups.items()
            for start in range(0, len(members), size)
        ]

    # -- what parsers call ------------------------------------------------------------------

    def emit(self, event: AnyMarketEvent) -> None:
        """Publish `event` if its topic is wanted (frames still in flight after an unsubscribe are not)."""
        timeframe = event.timeframe if isinstance(event, Candle) else None
        if (event.KIND, event.symbol, timeframe) in self._wanted:
            self.host.publish(event)

    def ticker(self, market: str, ts: int, recv_ts: float, **fields: Unpack[TickerFields]) -> None:
        """A ticker of the exchange symbol `market` (ignored if not subscribed)."""
        symbol = self.markets.get(market)
        if symbol is None:
            return
        self.last_seen[(Kind.TICKER, symbol, None)] = recv_ts
        self.emit(Ticker(exchange=self.exchange, symbol=symbol, ts=ts, recv_ts=recv_ts, **fields))

    def trade(self, market: str, *, trade_id: str, price: str, size: str, side: Side, ts: int, recv_ts: float) -> None:
        """One trade: published as such if wanted, and folded into the symbol's trade-built candles."""
        symbol = self.markets.get(market)
        if symbol is None:
            return
        self.last_seen[(Kind.TRADES, symbol, None)] = recv_ts
        self.emit(
            Trade(
                exchange=self.exchange,
                symbol=symbol,
                ts=ts,
                recv_ts=recv_ts,
                trade_id=trade_id,
                price=price,
                size=size,
                side=side,
            )
        )
        for aggregator in self._aggregators.get(symbol, {}).values():
            for candle in aggregator.add(price, size, ts, recv_ts):
                self.emit(candle)

    def candle(
        self,
        market: str,
        timeframe: Timeframe,
        *,
        open_time: int,
        ohlcv: tuple[str, str, str, str, str],
        ts: int,
        recv_ts: float,
        closed: bool = False,
    ) -> None:
        """One native candle update. The previous bucket, if the exchange never said it closed, closes now."""
        symbol = self.markets.get(market)
        if symbol is None:
            return
        self.last_seen[(Kind.CANDLES, symbol, timeframe)] = recv_ts
        key = (symbol, timeframe)
        previous = self._native.get(key)
        if previous is not None:
            if open_time < previous.open_time:
                return  # a late update of a bucket already closed
            if open_time > previous.open_time and not previous.closed:
                self.emit(msgspec.structs.replace(previous, closed=True))
        open_, high, low, close, volume = ohlcv
        event = Candle(
            exchange=self.exchange,
            symbol=symbol,
            ts=ts,
            recv_ts=recv_ts,
            timeframe=timeframe,
            open_time=open_time,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=volume,
            closed=closed,
        )
        self._native[key] = event
        self.emit(event)

    def book_feed(self, market: str, recv_ts: float) -> BookFeed[S] | None:
        """The book of the exchange symbol `market` (None if not subscribed), noting that its stream is alive."""
        symbol = self.markets.get(market)
        feed = self.books.get(symbol) if symbol is not None else None
        if feed is not None:
            self.last_seen[(Kind.BOOK, feed.symbol, None)] = recv_ts
        return feed

    def syncing(self, feed: BookFeed[S]) -> _Syncing:
        """A context that resyncs this one symbol if its block finds the book out of sync."""
        return _Syncing(self, feed.symbol)

    def resync(self, symbol: str, error: SyncError) -> None:
        """Drop `symbol`'s book and get it a fresh snapshot; no other symbol is touched."""
        feed = self.books.get(symbol)
        if feed is None:
            return
        logger.warning(
            "book out of sync; resyncing this symbol",
            extra={"exchange": str(self.exchange), "symbol": symbol, "reason": str(error.reason), "detail": str(error)},
        )
        feed.reset()
        self.host.resync(self._book_streams[symbol], error.reason)

    def rejected(self, link: Link, detail: object) -> None:
        """The exchange refused a request; its stream will be found stale and retried."""
        self.rejections += 1
        logger.warning("request refused", extra={"connection": link.id, "detail": str(detail)[:500]})

    # -- what the host calls ----------------------------------------------------------------

    def connection_lost(self, link: Link) -> None:
        """Books of a lost connection are rebuilt from the snapshot that follows the resubscribe."""
        for stream in link.streams:
            if stream.kind is Kind.BOOK and (feed := self.books.get(stream.symbol)) is not None:
                feed.reset()

    def tick(self, now_ms: int, recv_ts: float) -> None:
        """Close candles whose bucket ended a grace period ago without a later update closing them."""
        cutoff = now_ms - CANDLE_CLOSE_GRACE_MS
        for aggregators in self._aggregators.values():
            for aggregator in aggregators.values():
                if (closed := aggregator.close_due(cutoff, recv_ts)) is not None:
                    self.emit(closed)
        for key, candle in self._native.items():
            if not candle.closed and cutoff >= candle.timeframe.end(candle.open_time):
                self._native[key] = final = msgspec.structs.replace(candle, closed=True)
                self.emit(final)
