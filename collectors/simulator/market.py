"""The simulated market of one symbol: an order book, trades, rolling statistics and candles.

Prices and sizes are integers scaled by the instrument's decimals (``ticks`` and ``lots``),
so every number a protocol renders is exact text. Kraken's and OKX's checksums are computed
over that text, and nothing ever passes through a float on its way to the wire.

The market is protocol-agnostic: a data source (synthetic or replay) feeds it book changes
and trades, and each protocol renders the returned `BookUpdate` / `Trade` in its own format.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collectors.simulator.history import MinuteTape

# Recent trades kept for the snapshots some channels send on subscribe (Coinbase
# market_trades sends up to 50, Kraken's trade snapshot 50).
RECENT_TRADES: Final = 50
WEEK_S: Final = 7 * 86400
# 1970-01-01 was a Thursday; weekly candles start on Monday 00:00 UTC.
_MONDAY_OFFSET_S: Final = 3 * 86400


class Side(StrEnum):
    BID = "bid"
    ASK = "ask"


class TakerSide(StrEnum):
    """The side of the aggressing order, which is what exchanges call a trade's side."""

    BUY = "buy"
    SELL = "sell"


def scaled_text(value: int, decimals: int) -> str:
    """Fixed-point text of ``value / 10**decimals`` with exactly `decimals` fractional digits."""
    if decimals <= 0:
        return str(value)
    sign = "-" if value < 0 else ""
    digits = str(abs(value)).rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def trimmed_text(value: int, decimals: int) -> str:
    """Like `scaled_text` without trailing zeros ("0.1", "43774"), as Bybit and OKX print."""
    text = scaled_text(value, decimals)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_scaled(text: str, decimals: int) -> int:
    """The exact integer ``text * 10**decimals``; ValueError if `text` has more digits."""
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    frac = frac.rstrip("0")
    if len(frac) > decimals or not (whole or frac) or not (whole + frac).isdigit():
        raise ValueError(f"{text!r} does not fit {decimals} decimals")
    value: int = int(whole or "0") * 10**decimals + int(frac.ljust(decimals, "0") or "0")
    return -value if negative else value


def decimals_of(text: str) -> int:
    """Number of fractional digits written in a decimal text."""
    return len(text.partition(".")[2])


@dataclass(frozen=True, slots=True)
class Instrument:
    """A symbol as one exchange names it, and the precision of its prices and sizes."""

    symbol: str
    base: str
    quote: str
    price_decimals: int
    size_decimals: int

    def price(self, ticks: int) -> str:
        return scaled_text(ticks, self.price_decimals)

    def size(self, lots: int) -> str:
        return scaled_text(lots, self.size_decimals)


@dataclass(frozen=True, slots=True)
class Interval:
    """A candle length: whole seconds, or calendar months; `offset_s` shifts the day start."""

    seconds: int = 0
    months: int = 0
    offset_s: int = 0

    def start(self, ts_s: int) -> int:
        """Start (Unix seconds) of the bucket holding `ts_s`."""
        if self.months:
            day = dt.datetime.fromtimestamp(ts_s + self.offset_s, dt.UTC)
            index = (day.year * 12 + day.month - 1) // self.months * self.months
            first = dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)
            return calendar.timegm(first.timetuple()) - self.offset_s
        shift = self.offset_s + (_MONDAY_OFFSET_S if self.seconds % WEEK_S == 0 else 0)
        return (ts_s + shift) // self.seconds * self.seconds - shift

    def end(self, start_s: int) -> int:
        """Start of the next bucket (exclusive end of the bucket starting at `start_s`)."""
        if self.months:
            day = dt.datetime.fromtimestamp(start_s + self.offset_s, dt.UTC)
            index = day.year * 12 + day.month - 1 + self.months
            first = dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)
            return calendar.timegm(first.timetuple()) - self.offset_s
        return start_s + self.seconds


class BookSide:
    """One side of a book: sizes by price plus the prices sorted best first.

    Bids are kept under negated keys so both sides sort ascending with the best level first
    and one bisect finds a level's rank.
    """

    __slots__ = ("_keys", "_sign", "side", "sizes")

    def __init__(self, side: Side) -> None:
        self.side = side
        self._sign = 1 if side is Side.ASK else -1
        self._keys: list[int] = []
        self.sizes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, price: int) -> int:
        return self._sign * price

    def set(self, price: int, size: int) -> int:
        """Set a level (size 0 removes it); returns the previous size."""
        old = self.sizes.get(price, 0)
        if size <= 0:
            if old:
                del self.sizes[price]
                index = bisect.bisect_left(self._keys, self._sign * price)
                del self._keys[index]
            return old
        if not old:
            bisect.insort(self._keys, self._sign * price)
        self.sizes[price] = size
        return old

    def best(self) -> int | None:
        return self._sign * self._keys[0] if self._keys else None

    def worst(self) -> int | None:
        return self._sign * self._keys[-1] if self._keys else None

    def top(self, depth: int | None = None) -> list[tuple[int, int]]:
        """Levels best first as (price, size), at most `depth` of them."""
        keys = self._keys if depth is None else self._keys[:depth]
        sign, sizes = self._sign, self.sizes
        return [(sign * key, sizes[sign * key]) for key in keys]

    def boundary(self, depth: int) -> int | None:
        """Key of the `depth`-th best level, or None when the side has fewer levels."""
        return self._keys[depth - 1] if len(self._keys) >= depth else None

    def prices_in(self, low_key: int | None, high_key: int | None) -> list[int]:
        """Prices whose key lies in (low_key, high_key]; None means unbounded."""
        start = 0 if low_key is None else bisect.bisect_right(self._keys, low_key)
        stop = len(self._keys) if high_key is None else bisect.bisect_right(self._keys, high_key)
        return [self._sign * key for key in self._keys[start:stop]]

    def at(self, rank: int) -> int:
        return self._sign * self._keys[rank]


Change = tuple[Side, int, int]
Level = tuple[int, int]


@dataclass(slots=True)
class BookUpdate:
    """One applied book delta; tells every depth-limited view what it saw change.

    `update_first`/`update_last` are Binance-style update ids (U/u), `seq` the market's
    cross sequence (Bybit ``seq``, OKX ``seqId``).
    """

    market: Market
    changes: dict[Side, dict[int, int]]
    old_sizes: dict[Side, dict[int, int]]
    boundaries: dict[tuple[Side, int], int | None]
    update_first: int
    update_last: int
    seq: int
    ts_ms: int

    def full(self, side: Side) -> list[Level]:
        """Every changed level of `side`, best first (size 0 = removed)."""
        book_side = self.market.book[side]
        return sorted(self.changes[side].items(), key=lambda level: book_side.key(level[0]))

    def view(self, side: Side, depth: int, *, report_pushed_out: bool) -> list[Level]:
        """What changed in the top `depth` levels of `side`, best first.

        Levels that move into the view from below are re-sent (Kraken's "republish"); levels
        pushed out by insertions above them are sent as removals only when
        `report_pushed_out` (Kraken documents that clients truncate instead).
        """
        book_side = self.market.book[side]
        changed = self.changes[side]
        old_sizes = self.old_sizes[side]
        old_b = self.boundaries[(side, depth)]
        new_b = book_side.boundary(depth)
        out: list[Level] = []
        for price, size in changed.items():
            key = book_side.key(price)
            if size and (new_b is None or key <= new_b):
                out.append((price, size))
            elif old_sizes[price] and (old_b is None or key <= old_b) and (size == 0 or report_pushed_out):
                out.append((price, 0))
        if old_b is not None and (new_b is None or new_b > old_b):
            out.extend(
                (price, book_side.sizes[price]) for price in book_side.prices_in(old_b, new_b) if price not in changed
            )
        if report_pushed_out and new_b is not None and (old_b is None or old_b > new_b):
            out.extend((price, 0) for price in book_side.prices_in(new_b, old_b) if price not in changed)
        out.sort(key=lambda level: book_side.key(level[0]))
        return out


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: int
    price: int
    size: int
    taker: TakerSide
    ts_ms: int


@dataclass(slots=True)
class Candle:
    """OHLCV of one bucket; `version` grows with every trade so renderers can skip repeats."""

    interval: Interval
    start_s: int
    end_s: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    quote_volume: int = 0  # scaled by price + size decimals
    trades: int = 0
    first_trade_id: int = -1
    last_trade_id: int = -1
    closed: bool = False
    version: int = 0

    def add(self, trade: Trade) -> None:
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.close = trade.price
        self.volume += trade.size
        self.quote_volume += trade.price * trade.size
        if self.trades == 0:
            self.first_trade_id = trade.trade_id
        self.last_trade_id = trade.trade_id
        self.trades += 1
        self.version += 1


@dataclass(slots=True)
class Stats:
    """Rolling statistics since the market was created (stands in for 24 h windows)."""

    open: int
    high: int
    low: int
    last: int
    last_size: int = 0
    volume: int = 0
    quote_volume: int = 0
    trades: int = 0
    first_trade_id: int = -1
    opened_ms: int = 0
    version: int = 0


class Book:
    """Both sides of an order book."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids = BookSide(Side.BID)
        self.asks = BookSide(Side.ASK)

    def __getitem__(self, side: Side) -> BookSide:
        return self.bids if side is Side.BID else self.asks

    def levels(self) -> list[Change]:
        return [(side, price, size) for side in Side for price, size in self[side].top()]

    def diff_to(self, target: Iterable[Change]) -> list[Change]:
        """Changes that turn this book into `target` (used when a replay loops)."""
        wanted: dict[tuple[Side, int], int] = {(side, price): size for side, price, size in target}
        out: list[Change] = [
            (side, price, 0) for side in Side for price in self[side].sizes if (side, price) not in wanted
        ]
        out.extend((side, price, size) for (side, price), size in wanted.items() if self[side].sizes.get(price) != size)
        return out


class Market:
    """State of one symbol on one simulated exchange."""

    def __init__(
        self,
        instrument: Instrument,
        *,
        first_update_id: int,
        first_trade_id: int,
        first_seq: int,
        now_ms: int,
        reference_price: int,
    ) -> None:
        self.instrument = instrument
        self.book = Book()
        self.update_id = first_update_id
        self.seq = first_seq
        self.next_trade_id = first_trade_id
        self.recent_trades: deque[Trade] = deque(maxlen=RECENT_TRADES)
        self.stats = Stats(
            open=reference_price, high=reference_price, low=reference_price, last=reference_price, opened_ms=now_ms
        )
        self.candles: dict[Interval, Candle] = {}
        # Depths that some book view renders; boundaries are captured for these only.
        self.view_depths: set[int] = set()
        self.last_ts_ms = now_ms
        self.tape: MinuteTape | None = None  # minute candles for REST history, when kept

    @property
    def symbol(self) -> str:
        return self.instrument.symbol

    def apply(self, changes: Sequence[Change], ts_ms: int, *, id_span: int = 0) -> BookUpdate | None:
        """Apply one delta; None when it changed nothing (nothing to send)."""
        effective = [(s, p, max(z, 0)) for s, p, z in changes if self.book[s].sizes.get(p, 0) != z]
        if not effective:
            return None
        boundaries = {(side, depth): self.book[side].boundary(depth) for side in Side for depth in self.view_depths}
        applied: dict[Side, dict[int, int]] = {Side.BID: {}, Side.ASK: {}}
        old_sizes: dict[Side, dict[int, int]] = {Side.BID: {}, Side.ASK: {}}
        for side, price, size in effective:
            old = self.book[side].set(price, size)
            old_sizes[side].setdefault(price, old)
            applied[side][price] = size
        first = self.update_id + 1
        self.update_id += max(id_span, len(effective))
        # A cross sequence is monotonic but not contiguous on Bybit and OKX.
        self.seq += 1 + len(effective) % 7
        self.last_ts_ms = ts_ms
        return BookUpdate(self, applied, old_sizes, boundaries, first, self.update_id, self.seq, ts_ms)

    def record_trade(self, price: int, size: int, taker: TakerSide, ts_ms: int) -> Trade:
        """Record a trade (the caller rolls candles whose bucket ended first: `roll_candles`)."""
        trade = Trade(self.next_trade_id, price, size, taker, ts_ms)
        self.next_trade_id += 1
        self.recent_trades.append(trade)
        stats = self.stats
        if self.tape is not None:
            self.tape.record(trade, stats.last)
        if stats.trades == 0:
            stats.first_trade_id = trade.trade_id
        stats.high = max(stats.high, price)
        stats.low = min(stats.low, price)
        stats.last, stats.last_size = price, size
        stats.volume += size
        stats.quote_volume += price * size
        stats.trades += 1
        stats.version += 1
        for candle in self.candles.values():
            candle.add(trade)
        self.last_ts_ms = ts_ms
        return trade

    def candle(self, interval: Interval, now_s: int) -> Candle:
        """The running candle of `interval`, created on first use at the last price."""
        candle = self.candles.get(interval)
        if candle is None:
            start = interval.start(now_s)
            so_far = self.tape.candles(interval, start, start + 1, now_s) if self.tape is not None else []
            last = self.stats.last
            candle = so_far[0] if so_far else Candle(interval, start, interval.end(start), last, last, last, last)
            self.candles[interval] = candle
        return candle

    def roll_candles(self, now_s: int) -> list[Candle]:
        """Close every candle whose bucket ended; returns the closed ones (now replaced)."""
        closed: list[Candle] = []
        for interval, candle in list(self.candles.items()):
            if now_s >= candle.end_s:
                candle.closed = True
                closed.append(candle)
                start = interval.start(now_s)
                last = candle.close
                self.candles[interval] = Candle(interval, start, interval.end(start), last, last, last, last)
        return closed

    def mid(self) -> int | None:
        bid, ask = self.book.bids.best(), self.book.asks.best()
        if bid is None or ask is None:
            return bid if ask is None else ask
        return (bid + ask) // 2


@dataclass(frozen=True, slots=True)
class BookEvent:
    """A set of level changes that a source wants applied at once (one wire message)."""

    changes: tuple[Change, ...]
    id_span: int = 0


@dataclass(frozen=True, slots=True)
class TradeEvent:
    price: int
    size: int
    taker: TakerSide


MarketEvent = BookEvent | TradeEvent
