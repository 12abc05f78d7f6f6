"""Event records: the normalized shapes that cross Redis and the Socket.IO wire.

Prices and sizes are decimal strings, exactly as the exchange sent them, so
no value is ever rounded through a float on its way to a client. Timestamps
are milliseconds since the Unix epoch. Every record is a ``msgspec.Struct``
tagged by ``type``; decoding validates the shape and the constraints below.
"""

from __future__ import annotations

import re
from enum import StrEnum
from itertools import chain
from typing import Annotated, Any, ClassVar, Final

import msgspec

from shared.nesting import MAX_JSON_DEPTH, deeper_than
from shared.topics import Exchange, Kind, Timeframe, Topic

# Every contract pattern ends with END, not a bare `$`: Python's `$` also matches before a final
# newline (msgspec searches with it, so "alice\n" passed as an id), a browser's (the same pattern, in
# the web client's validator) does not. With the lookahead both read a pattern alike.
END: Final = r"$(?!\n)"
# Ids end up inside Redis key and channel names, so their alphabet is narrow.
IDENT_PATTERN: Final = r"^[A-Za-z0-9_.:@-]{1,128}" + END
Ident = Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN)]
_DECIMAL: Final = r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?"
DECIMAL_PATTERN: Final = f"^{_DECIMAL}{END}"
# The pattern is the contract (the JSON schema, hence the web client's validator), but msgspec does
# not run it: once per field, a 20-level book's 80 prices and sizes cost 39 of its 43 us of decoding.
# `bad_decimal` checks an event's all at once; whatever decodes or converts market events from
# outside data calls it (`codec.decode_market`, `collectors.history`).
Decimal = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": DECIMAL_PATTERN})]
# An event's decimals joined by newlines (which no decimal holds): one match for all of them, with
# possessive quantifiers (nothing to backtrack into: the next character decides each step).
_ONE_DECIMAL: Final = re.compile(r"-?+[0-9]{1,30}+(?:\.[0-9]{1,30}+)?+(?:[eE][-+]?+[0-9]{1,3}+)?+")
_DECIMAL_LINES: Final = re.compile(f"{_ONE_DECIMAL.pattern}(?:\n{_ONE_DECIMAL.pattern})*+")
# The largest integer a JavaScript client (and a Lua script) holds exactly: Number.MAX_SAFE_INTEGER.
MAX_SAFE_INTEGER: Final = 2**53 - 1
Millis = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
Symbol = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}" + END)]
Level = tuple[Decimal, Decimal]

MAX_BOOK_DEPTH: Final = 1000


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


# gc=False: a collector makes tens of thousands of these a second and each waits a few milliseconds
# in its sink, which set off the garbage collector often. They hold only strings, numbers and lists of
# string pairs, so they can never be part of a reference cycle.
class MarketEvent(msgspec.Struct, kw_only=True, tag_field="type", frozen=True, gc=False):
    """Fields common to every market event.

    ``seq`` counts messages of one topic from one collector run, starting at 1;
    a jump means messages were lost, a decrease means the stream restarted.
    """

    exchange: Exchange
    symbol: Symbol
    ts: Millis
    recv_ts: float
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0

    KIND: ClassVar[Kind]

    @property
    def topic(self) -> Topic:
        return Topic.of(self.exchange, self.KIND, self.symbol)

    @property
    def topic_text(self) -> str:
        """``str(self.topic)`` of a decoded event, without building (and checking again) the Topic.

        Decoding validated every field it is made of; an event built in Python is not checked.
        """
        return f"{self.exchange}:{self.KIND}:{self.symbol}"

    def decimals(self) -> list[str]:
        """Every price and size the event carries (for `bad_decimal`)."""
        return []


class Ticker(MarketEvent, tag="ticker", frozen=True):
    KIND: ClassVar[Kind] = Kind.TICKER

    bid: Decimal | None = None
    bid_size: Decimal | None = None
    ask: Decimal | None = None
    ask_size: Decimal | None = None
    last: Decimal | None = None
    open_24h: Decimal | None = None
    high_24h: Decimal | None = None
    low_24h: Decimal | None = None
    volume_24h: Decimal | None = None

    def decimals(self) -> list[str]:
        values = (self.bid, self.bid_size, self.ask, self.ask_size, self.last)
        more = (self.open_24h, self.high_24h, self.low_24h, self.volume_24h)
        return [value for value in chain(values, more) if value is not None]


class Trade(MarketEvent, tag="trade", frozen=True):
    KIND: ClassVar[Kind] = Kind.TRADES

    trade_id: Annotated[str, msgspec.Meta(max_length=64)]
    price: Decimal
    size: Decimal
    side: Side

    def decimals(self) -> list[str]:
        return [self.price, self.size]


class Book(MarketEvent, tag="book", frozen=True):
    """A top-N view of an order book: bids best (highest) first, asks best (lowest) first.

    Every book message is a complete view, so a consumer that missed one just
    takes the next; ``resync`` is true on the first view after the collector
    rebuilt the book (after a gap or a checksum mismatch).
    """

    KIND: ClassVar[Kind] = Kind.BOOK

    bids: Annotated[list[Level], msgspec.Meta(max_length=MAX_BOOK_DEPTH)]
    asks: Annotated[list[Level], msgspec.Meta(max_length=MAX_BOOK_DEPTH)]
    resync: bool = False

    def decimals(self) -> list[str]:
        return list(chain.from_iterable(chain(self.bids, self.asks)))


class Candle(MarketEvent, tag="candle", frozen=True):
    """OHLCV of one timeframe bucket; ``closed`` once the bucket is final."""

    KIND: ClassVar[Kind] = Kind.CANDLES

    timeframe: Timeframe
    open_time: Millis
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    closed: bool = False

    def decimals(self) -> list[str]:
        return [self.open, self.high, self.low, self.close, self.volume]

    @property
    def topic(self) -> Topic:
        return Topic.of(self.exchange, Kind.CANDLES, self.symbol, self.timeframe)

    @property
    def topic_text(self) -> str:
        return f"{self.exchange}:{Kind.CANDLES}.{self.timeframe}:{self.symbol}"


AnyMarketEvent = Ticker | Trade | Book | Candle


def bad_decimal(event: MarketEvent) -> str | None:
    """The first of the event's prices and sizes that does not match `DECIMAL_PATTERN`, or None if all do.

    One match over all of them joined by newlines; a value holding a newline itself would pass as
    two there, which the count of newlines rules out. Linear in their length (bounded repeats).
    """
    values = event.decimals()
    if not values:
        return None
    text = "\n".join(values)
    if text.count("\n") == len(values) - 1 and _DECIMAL_LINES.fullmatch(text) is not None:
        return None
    return next(value for value in values if _ONE_DECIMAL.fullmatch(value) is None)


class NotificationType(StrEnum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"


class Action(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A button on a notification: a label and where it leads."""

    label: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class Notification(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    id: Ident
    user_id: Ident
    type: NotificationType
    title: Annotated[str, msgspec.Meta(max_length=200)]
    message: Annotated[str, msgspec.Meta(max_length=4000)]
    read: bool = False
    created_at: Millis
    action: Action | None = None


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


FINAL_STATUSES: Final = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED})


class ExecutionUpdate(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One state of an execution.

    ``version`` grows with every update of one execution (a counter, or
    ``updated_at``); the store refuses an update whose version is not newer
    than the one it holds, so no client ever shows an older state over a
    newer one.
    """

    execution_id: Ident
    team_id: Ident
    status: ExecutionStatus
    progress: Annotated[float, msgspec.Meta(ge=0, le=100)]
    current_step: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    result: Any = None
    error: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    updated_at: Millis
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_SAFE_INTEGER)]

    def __post_init__(self) -> None:
        # `result` is free-form: bounded here, where every reader and the publisher decode it.
        if deeper_than(self.result, MAX_JSON_DEPTH):
            raise ValueError(f"result nests deeper than {MAX_JSON_DEPTH} levels")
