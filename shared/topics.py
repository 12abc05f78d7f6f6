"""The topic grammar: which market stream a client subscribes to.

    topic     = exchange ":" channel ":" symbol
    exchange  = "binance" | "coinbase" | "kraken" | "bybit" | "okx"
    channel   = "ticker" | "trades" | "book" | "candles." timeframe
    timeframe = "1m" | "5m" | "15m" | "1h" | "4h" | "1d"
    symbol    = BASE "/" QUOTE      (A-Z and 0-9, 1 to 16 characters each)

Examples: ``binance:ticker:BTC/USDT``, ``kraken:candles.1m:ETH/USD``.
Parsing is strict (lower-case exchange and channel, upper-case symbol) so that
one stream has exactly one name, which is also its Redis channel suffix.
"""

from __future__ import annotations

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
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"

    @property
    def seconds(self) -> int:
        return TIMEFRAME_SECONDS[self]


TIMEFRAME_SECONDS: Final[dict[Timeframe, int]] = {
    Timeframe.M1: 60,
    Timeframe.M5: 300,
    Timeframe.M15: 900,
    Timeframe.H1: 3600,
    Timeframe.H4: 14400,
    Timeframe.D1: 86400,
}

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
