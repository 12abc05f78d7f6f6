"""What every exchange protocol shares: feeds, subscription bookkeeping and fan-out.

A `Feed` is one stream as the exchange names it (``btcusdt@depth@100ms``,
``orderbook.50.BTCUSDT``, Kraken ``book`` BTC/USD depth 10 ...). A market event is rendered
once per feed and the same text goes to every subscriber; only a per-connection envelope
(Binance's combined wrapper, Coinbase's sequence_num) is added per connection, in `wrap`.
Sequence numbers live on the feed (Bybit ``u``, OKX ``prevSeqId``) or on the connection
(Coinbase), so a skipped delta (the gap fault) still advances them and shows as a gap.

A subclass holds only its protocol: URL paths, request parsing, and renderers that each
carry one sample real frame in a comment.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec
from aiohttp import web

from collectors.memo import BoundedMemo
from collectors.simulator.connection import Connection
from collectors.simulator.market import (
    BookUpdate,
    Candle,
    Interval,
    Level,
    Market,
    Side,
    Trade,
    scaled_text,
    trimmed_text,
)
from shared.topics import Exchange

if TYPE_CHECKING:
    from collectors.simulator.server import ExchangeServer

logger = logging.getLogger(__name__)

_encoder: Final = msgspec.json.Encoder()
# Incoming request frames larger than this are answered as invalid, never parsed.
MAX_REQUEST_BYTES: Final = 64 * 1024
# Number texts a protocol remembers: a book's frames repeat its prices and sizes, and formatting them
# was the largest part of rendering a Kraken frame. Cleared whole when full (a few thousand books' worth).
NUM_TEXTS_MAX: Final = 1 << 16
# Levels (price, size) whose text one market remembers; cleared whole when full.
LEVEL_TEXTS_MAX: Final = 1 << 13


def dumps(value: object) -> str:
    """Compact JSON with keys in insertion order, as the exchanges send it."""
    return _encoder.encode(value).decode()


def loads(text: str) -> Any:
    """Parse a client frame; raises msgspec.DecodeError on invalid JSON."""
    return msgspec.json.decode(text)


def query_int(text: str | None) -> int | None:
    """A non-negative integer query parameter, or None when absent or not one."""
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) <= 15 else None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_time(ns: int, digits: int = 6) -> str:
    """RFC 3339 UTC with `digits` fractional digits: 2026-09-07T23:37:22.278662Z."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = _second_text(seconds)
    if digits == 0:
        return stamp + "Z"
    return f"{stamp}.{rest:09d}"[: len(stamp) + 1 + digits] + "Z"


@functools.lru_cache(maxsize=4)
def _second_text(seconds: int) -> str:
    """``2026-09-07T23:37:22``: every frame of a second shares it (strftime per frame was a visible cost)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class FeedKind(StrEnum):
    BOOK = "book"  # a snapshot on subscribe, then deltas
    TOP = "top"  # a self-contained top-N snapshot on each change
    BBO = "bbo"  # best bid and offer on each change
    TRADES = "trades"
    TICKER = "ticker"
    CANDLES = "candles"
    HEARTBEAT = "heartbeat"


BOOKISH: Final = frozenset({FeedKind.BOOK, FeedKind.TOP, FeedKind.BBO})


class NumberStyle(StrEnum):
    """How an exchange prints decimals."""

    FIXED = "fixed"  # instrument precision: "0.00100000" (Kraken, Coinbase sizes)
    FIXED8 = "fixed8"  # always 8 decimals: "93028.00000000" (Binance)
    TRIMMED = "trimmed"  # no trailing zeros: "75845.4", "83802" (Bybit spot, OKX)


@dataclass(eq=False, slots=True)
class Feed:
    """One subscribable stream, rendered once per event for all its subscribers."""

    key: str
    kind: FeedKind
    market: Market | None
    depth: int | None = None
    interval: Interval | None = None
    variant: str = ""
    subscribers: dict[Connection, None] = field(default_factory=dict)
    # Protocol sequence of this feed: Bybit's u, OKX's last seqId sent.
    seq: int = 0
    # Last state pushed (a BBO tuple, a ticker or candle version), to push only on change.
    last: object = None
    last_push: float = 0.0


class Protocol:
    """Base of one exchange's protocol; one instance per running exchange server."""

    exchange: ClassVar[Exchange]
    # Named endpoints, path first; "ws"-style names are WebSocket paths, "rest" is HTTP.
    endpoints: ClassVar[dict[str, str]]
    number_style: ClassVar[NumberStyle]
    has_checksum: ClassVar[bool] = False
    # A frame cut short, sent by the malformed fault.
    malformed: ClassVar[str]

    def __init__(self, server: ExchangeServer) -> None:
        self.server = server
        self.config = server.config
        self.feeds: dict[str, Feed] = {}
        self.by_market: dict[Market, dict[str, Feed]] = {}
        self._num_texts = BoundedMemo(self._num_text, NUM_TEXTS_MAX)
        # Each market's levels as the exchange prints them: a book's top levels go out again and
        # again (every Kraken frame's checksum covers the best ten of both sides). At most max_markets.
        self._level_texts: dict[Market, BoundedMemo[Level, tuple[str, str]]] = {}

    # -- symbols and numbers ------------------------------------------------------------

    def split_symbol(self, symbol: str) -> tuple[str, str] | None:
        """Base and quote of a native symbol, or None when it is not a valid symbol."""
        raise NotImplementedError

    def market(self, symbol: str) -> Market | None:
        """The market of a native symbol, created on first use; None if invalid or full."""
        parts = self.split_symbol(symbol)
        if parts is None:
            return None
        return self.server.market(symbol, *parts)

    def num(self, value: int, decimals: int) -> str:
        """`value` scaled by `decimals`, printed in the exchange's number style (remembered: see NUM_TEXTS_MAX)."""
        return self._num_texts[value, decimals]

    def _num_text(self, key: tuple[int, int]) -> str:
        value, decimals = key
        style = self.number_style
        if style is NumberStyle.TRIMMED:
            return trimmed_text(value, decimals)
        if style is NumberStyle.FIXED8 and decimals <= 8:
            return scaled_text(value * 10 ** (8 - decimals), 8)
        return scaled_text(value, decimals)

    def px(self, market: Market, ticks: int) -> str:
        return self.num(ticks, market.instrument.price_decimals)

    def sz(self, market: Market, lots: int) -> str:
        return self.num(lots, market.instrument.size_decimals)

    def level_texts(self, market: Market) -> BoundedMemo[Level, tuple[str, str]]:
        """`market`'s levels as (price text, size text), each printed once while it lasts."""
        texts = self._level_texts.get(market)
        if texts is None:

            def text(level: Level) -> tuple[str, str]:
                return self.px(market, level[0]), self.sz(market, level[1])

            texts = self._level_texts[market] = BoundedMemo(text, LEVEL_TEXTS_MAX)
        return texts

    def quote_volume(self, market: Market, scaled: int) -> str:
        instrument = market.instrument
        return self.num(scaled, instrument.price_decimals + instrument.size_decimals)

    def history(
        self, market: Market, interval: Interval, start_s: int | None, end_s: int | None, limit: int
    ) -> list[Candle]:
        """REST candles of `interval` opening in [start_s, end_s), oldest first, at most `limit`.

        With a start the first `limit` from there, otherwise the last `limit` (the open one included).
        """
        now_s = int(time.time())
        tape = market.tape
        if tape is None:
            return []
        end = min(end_s if end_s is not None else now_s + 1, now_s + 1)
        if start_s is not None:
            if interval.seconds:  # no need to fold past the last bucket that can be returned
                end = min(end, start_s + (limit + 1) * interval.seconds)
            return tape.candles(interval, start_s, end, now_s)[:limit]
        return tape.candles(interval, max(tape.first_s, 0), end, now_s)[-limit:]

    def history_ms(
        self, market: Market, interval: Interval, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        """`history` for bounds in milliseconds, the end inclusive (Binance's endTime, Bybit's end)."""
        start = None if start_ms is None else -(-start_ms // 1000)
        return self.history(market, interval, start, None if end_ms is None else end_ms // 1000 + 1, limit)

    def text_levels(self, market: Market, levels: list[Level]) -> list[list[str]]:
        texts = self.level_texts(market)
        return [list(texts[level]) for level in levels]

    # -- connection lifecycle -----------------------------------------------------------

    def accept(self, request: web.Request) -> web.StreamResponse | None:
        """Refuse a handshake (an unknown path, a bad stream name in the URL); None accepts."""
        ws_paths = {path for name, path in self.endpoints.items() if name != "rest"}
        if request.path not in ws_paths:
            return web.Response(status=404, text="not found")
        return None

    def routes(self) -> list[web.RouteDef]:
        """Extra HTTP routes of the exchange (Binance's REST depth snapshot)."""
        return []

    def on_open(self, conn: Connection, request: web.Request) -> None:
        """Called once the WebSocket is open (Kraken greets with a status message)."""

    def on_text(self, conn: Connection, text: str) -> None:
        raise NotImplementedError

    def on_frame(self, conn: Connection, now: float) -> bool:
        """Every incoming frame, control frames included; False disconnects (rate limits)."""
        return True

    def on_pong(self, conn: Connection, data: bytes) -> None:
        """A control-frame pong from the client."""

    def on_close(self, conn: Connection) -> None:
        for feed in list(conn.feeds.values()):
            self.detach(conn, feed)

    def check(self, conn: Connection, now: float) -> None:
        """Once a second per open connection: enforce the exchange's keep-alive rules."""

    def on_second(self, now: float) -> None:
        """Once a second: tickers and running candles (and heartbeats where the exchange has
        them)."""
        for feed in list(self.feeds.values()):
            if feed.market is None or not feed.subscribers:
                continue
            if feed.kind is FeedKind.TICKER:
                payload = self.render_ticker(feed, now)
            elif feed.kind is FeedKind.CANDLES and feed.interval is not None:
                candle = feed.market.candle(feed.interval, int(time.time()))
                payload = self.render_candle(feed, candle, now)
            else:
                continue
            if payload is not None:
                feed.last_push = now
                self.broadcast(feed, payload)

    # -- subscriptions ------------------------------------------------------------------

    def feed(
        self,
        key: str,
        kind: FeedKind,
        market: Market | None,
        *,
        depth: int | None = None,
        interval: Interval | None = None,
        variant: str = "",
        seq: int = 0,
    ) -> Feed:
        """The feed named `key`, created on first use (`seq` starts its sequence)."""
        existing = self.feeds.get(key)
        if existing is not None:
            return existing
        feed = Feed(key, kind, market, depth, interval, variant, seq=seq)
        self.feeds[key] = feed
        if market is not None:
            self.by_market.setdefault(market, {})[key] = feed
            if depth is not None and kind in BOOKISH:
                market.view_depths.add(depth)
            if interval is not None:
                market.candle(interval, int(time.time()))
        return feed

    def attach(self, conn: Connection, feed: Feed) -> bool:
        """Subscribe `conn`; False when it already was."""
        if conn in feed.subscribers:
            return False
        feed.subscribers[conn] = None
        conn.feeds[feed.key] = feed
        conn.ever_subscribed = True
        if feed.market is not None:
            self.server.activate(feed.market)
        return True

    def detach(self, conn: Connection, feed: Feed) -> None:
        feed.subscribers.pop(conn, None)
        conn.feeds.pop(feed.key, None)
        if not feed.subscribers:
            self.feeds.pop(feed.key, None)
            if feed.market is not None:
                market_feeds = self.by_market.get(feed.market)
                if market_feeds is not None:
                    market_feeds.pop(feed.key, None)
                    if not market_feeds:
                        del self.by_market[feed.market]

    def is_active(self, market: Market) -> bool:
        return market in self.by_market

    # -- fan-out ------------------------------------------------------------------------

    def wrap(self, conn: Connection, feed: Feed | None, payload: str) -> str:
        """The frame one connection receives for `payload` (per-connection envelope)."""
        return payload

    def send(self, conn: Connection, payload: str, feed: Feed | None = None) -> None:
        conn.send(self.wrap(conn, feed, payload))

    def broadcast(self, feed: Feed, payload: str) -> None:
        for conn in list(feed.subscribers):
            conn.send(self.wrap(conn, feed, payload))

    def swallow(self, feed: Feed, payload: str) -> None:
        """Account a message as sent without sending it: the gap fault."""
        for conn in feed.subscribers:
            self.wrap(conn, feed, payload)

    def on_book(self, update: BookUpdate) -> None:
        feeds = self.by_market.get(update.market)
        if not feeds:
            return
        symbol = update.market.symbol
        gap = symbol in self.server.faults.gaps
        for feed in list(feeds.values()):
            if feed.kind not in BOOKISH:
                continue
            payload = self.render_book(feed, update)
            if payload is None:
                continue
            if gap and feed.kind is FeedKind.BOOK:
                self.swallow(feed, payload)
                self.server.faults.gaps.discard(symbol)
                logger.info("book delta skipped (gap fault)", extra={"exchange": self.exchange.value, "feed": feed.key})
            else:
                self.broadcast(feed, payload)

    def on_trade(self, market: Market, trade: Trade) -> None:
        feeds = self.by_market.get(market)
        if not feeds:
            return
        for feed in list(feeds.values()):
            if feed.kind in BOOKISH:
                continue
            payload = self.render_trade(feed, trade)
            if payload is not None:
                self.broadcast(feed, payload)

    def on_candle_closed(self, market: Market, candle: Candle) -> None:
        feeds = self.by_market.get(market)
        if not feeds:
            return
        for feed in list(feeds.values()):
            if feed.kind is FeedKind.CANDLES and feed.interval == candle.interval:
                payload = self.render_candle(feed, candle, time.monotonic())
                if payload is not None:
                    self.broadcast(feed, payload)

    def take_corrupt(self, market: Market) -> bool:
        return self.server.faults.take_corrupt(market.symbol)

    # -- renderers (None: nothing to send) ----------------------------------------------

    def render_book(self, feed: Feed, update: BookUpdate) -> str | None:
        return None

    def render_trade(self, feed: Feed, trade: Trade) -> str | None:
        return None

    def render_ticker(self, feed: Feed, now: float) -> str | None:
        return None

    def render_candle(self, feed: Feed, candle: Candle, now: float) -> str | None:
        return None

    # -- helpers for renderers ----------------------------------------------------------

    @staticmethod
    def book_view(feed: Feed, update: BookUpdate, side: Side, *, report_pushed_out: bool = True) -> list[Level]:
        if feed.depth is None:
            return update.full(side)
        return update.view(side, feed.depth, report_pushed_out=report_pushed_out)

    @staticmethod
    def bbo(market: Market) -> tuple[Level, Level] | None:
        """Best bid and ask as (price, size) pairs, None while a side is empty."""
        bids, asks = market.book.bids.top(1), market.book.asks.top(1)
        if not bids or not asks:
            return None
        return bids[0], asks[0]
