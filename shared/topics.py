"""The topic grammar: which market stream a client subscribes to.

    topic     = exchange ":" channel ":" symbol
    exchange  = "binance" | "coinbase" | "kraken" | "bybit" | "okx"
    channel   = "ticker" | "trades" | "book" | "candles." timeframe
    timeframe = "1m" | "3m" | "5m" | "15m" | "30m" | "1h" | "2h" | "4h" | "6h" | "8h" | "12h"
              | "1d" | "3d" | "1w" | "1M"
    symbol    = BASE "/" QUOTE      (A-Z and 0-9, 1 to 16 characters each)

Examples: ``binance:ticker:BTC/USDT``, ``kraken:candles.1m:ETH/USD``.
Parsing is strict (lower-case exchange and channel, upper-case symbol) so that
one stream has exactly one name, which is also its Redis channel suffix.

Candle buckets are UTC and aligned as the exchanges align theirs: fixed
lengths on multiples since the Unix epoch, weeks from Monday 00:00, months
from the 1st 00:00 (`Timeframe.start`, `Timeframe.end`).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.errors import TopicError


class Exchange(StrEnum):
    BINANCE = "binance"
    COINBASE = "coinbase"
    KRAKEN = "kraken"
    BYBIT = "bybit"
    OKX = "okx"


class Kind(StrEnum):
    TICKER = "ticker"
    TRADES = "trades"
    BOOK = "book"
    CANDLES = "candles"


class Timeframe(StrEnum):
    M1 = "1m"
    M3 = "3m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    H2 = "2h"
    H4 = "4h"
    H6 = "6h"
    H8 = "8h"
    H12 = "12h"
    D1 = "1d"
    D3 = "3d"
    W1 = "1w"
    MO1 = "1M"

    @property
    def seconds(self) -> int:
        """The bucket length; a month's is nominal (30 days): use `start`/`end` for its buckets."""
        return TIMEFRAME_SECONDS[self]

    def start(self, ts_ms: int) -> int:
        """Open time (ms) of the bucket holding `ts_ms`."""
        if self is Timeframe.MO1:
            day = dt.datetime.fromtimestamp(ts_ms // 1000, dt.UTC)
            return calendar.timegm((day.year, day.month, 1, 0, 0, 0)) * 1000
        period = self.seconds * 1000
        shift = _MONDAY_SHIFT_MS if self is Timeframe.W1 else 0
        return (ts_ms - shift) // period * period + shift

    def end(self, open_ms: int) -> int:
        """Open time of the bucket after the one opening at `open_ms` (its exclusive end)."""
        if self is Timeframe.MO1:
            day = dt.datetime.fromtimestamp(open_ms // 1000, dt.UTC)
            year, month = divmod(day.year * 12 + day.month, 12)
            return calendar.timegm((year, month + 1, 1, 0, 0, 0)) * 1000
        return open_ms + self.seconds * 1000

    def divides(self, coarser: Timeframe) -> bool:
        """Whether every bucket of `coarser` is a whole number of this timeframe's buckets."""
        if self is coarser:
            return True
        if self in (Timeframe.W1, Timeframe.MO1):
            return False
        if coarser in (Timeframe.W1, Timeframe.MO1):
            return DAY_S % self.seconds == 0  # weeks and months open at midnight
        return coarser.seconds > self.seconds and coarser.seconds % self.seconds == 0


DAY_S: Final = 86400
TIMEFRAME_SECONDS: Final[dict[Timeframe, int]] = {
    Timeframe.M1: 60,
    Timeframe.M3: 180,
    Timeframe.M5: 300,
    Timeframe.M15: 900,
    Timeframe.M30: 1800,
    Timeframe.H1: 3600,
    Timeframe.H2: 7200,
    Timeframe.H4: 14400,
    Timeframe.H6: 21600,
    Timeframe.H8: 28800,
    Timeframe.H12: 43200,
    Timeframe.D1: DAY_S,
    Timeframe.D3: 3 * DAY_S,
    Timeframe.W1: 7 * DAY_S,
    Timeframe.MO1: 30 * DAY_S,
}
# 1970-01-01 was a Thursday: weeks open four days after the epoch's multiples of seven days.
_MONDAY_SHIFT_MS: Final = 4 * DAY_S * 1000

# Kinds whose latest value is kept in Redis and sent on subscribe.
SNAPSHOT_KINDS: Final[frozenset[Kind]] = frozenset({Kind.TICKER, Kind.BOOK, Kind.CANDLES})

MAX_TOPIC_LENGTH: Final = 64
_SYMBOL_RE: Final = re.compile(r"[A-Z0-9]{1,16}/[A-Z0-9]{1,16}")


def parse_symbol(symbol: str) -> str:
    """Return the unified ``BASE/QUOTE`` symbol or raise TopicError."""
    if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol):
        raise TopicError(f"symbol must look like BASE/QUOTE in upper case, got {symbol!r}")
    return symbol


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel of a topic: a kind plus, for candles, a timeframe."""

    kind: Kind
    timeframe: Timeframe | None = None

    def __post_init__(self) -> None:
        if (self.kind is Kind.CANDLES) != (self.timeframe is not None):
            raise TopicError("a timeframe goes with candles and only with candles")

    @classmethod
    def parse(cls, text: str) -> Channel:
        kind_text, dot, timeframe_text = text.partition(".")
        try:
            kind = Kind(kind_text)
            timeframe = Timeframe(timeframe_text) if dot else None
        except ValueError:
            raise TopicError(f"unknown channel {text!r}") from None
        return cls(kind, timeframe)

    def __str__(self) -> str:
        return f"{self.kind}.{self.timeframe}" if self.timeframe else str(self.kind)


@dataclass(frozen=True, slots=True)
class Topic:
    """One market stream: exchange, channel and unified symbol."""

    exchange: Exchange
    channel: Channel
    symbol: str

    @classmethod
    def parse(cls, text: object) -> Topic:
        if not isinstance(text, str):
            raise TopicError("a topic must be a string")
        if len(text) > MAX_TOPIC_LENGTH:
            raise TopicError(f"a topic is at most {MAX_TOPIC_LENGTH} characters")
        parts = text.split(":")
        if len(parts) != 3:
            raise TopicError(f"a topic is exchange:channel:BASE/QUOTE, got {text!r}")
        exchange_text, channel_text, symbol = parts
        try:
            exchange = Exchange(exchange_text)
        except ValueError:
            raise TopicError(f"unknown exchange {exchange_text!r}") from None
        return cls(exchange, Channel.parse(channel_text), parse_symbol(symbol))

    @classmethod
    def of(
        cls,
        exchange: Exchange | str,
        kind: Kind | str,
        symbol: str,
        timeframe: Timeframe | str | None = None,
    ) -> Topic:
        return cls(
            Exchange(exchange),
            Channel(Kind(kind), Timeframe(timeframe) if timeframe else None),
            parse_symbol(symbol),
        )

    @property
    def kind(self) -> Kind:
        return self.channel.kind

    @property
    def has_snapshot(self) -> bool:
        return self.channel.kind in SNAPSHOT_KINDS

    def __str__(self) -> str:
        return f"{self.exchange}:{self.channel}:{self.symbol}"
