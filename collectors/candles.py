"""OHLCV candles built from trades: one aggregator per exchange, symbol and timeframe.

Buckets are those of `Timeframe.start` (UTC; epoch multiples, Monday weeks,
calendar months), as the exchanges' own candles are, so ours line up with theirs. Prices keep the
exchange's text; the volume is summed as `Decimal`, so ``0.1 + 0.2`` gives
``0.3`` and never ``0.30000000000000004``. A bucket without trades produces no
candle: consumers see the gap in ``open_time``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Final

import msgspec

from collectors.book import DataError
from shared.events import Candle
from shared.topics import Exchange, Timeframe, parse_symbol

# Additions are exact while the sum fits the precision; the default 28 digits
# could round a large volume with 8 decimals, 64 cannot in practice.
_EXACT: Final = Context(prec=64)


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError) as exc:
        raise DataError(f"trade {what} {text!r} is not a decimal") from exc
    if not value.is_finite() or value.is_signed():
        raise DataError(f"trade {what} {text!r} is not a finite non-negative decimal")
    return value


class _Bucket:
    """The running OHLCV of one bucket; open and close follow trade time, not arrival."""

    __slots__ = (
        "close",
        "close_ts",
        "high",
        "high_value",
        "low",
        "low_value",
        "open",
        "open_time",
        "open_ts",
        "volume",
    )

    def __init__(self, open_time: int, price: str, value: Decimal, size: Decimal, ts: int) -> None:
        self.open_time = open_time
        self.open = self.high = self.low = self.close = price
        self.high_value = self.low_value = value
        self.open_ts = self.close_ts = ts
        self.volume = size

    def add(self, price: str, value: Decimal, size: Decimal, ts: int) -> None:
        if ts < self.open_ts:
            self.open, self.open_ts = price, ts
        if ts >= self.close_ts:  # on equal times the later arrival closes
            self.close, self.close_ts = price, ts
        if value > self.high_value:
            self.high, self.high_value = price, value
        if value < self.low_value:
            self.low, self.low_value = price, value
        self.volume = _EXACT.add(self.volume, size)


class CandleAggregator:
    """Folds trades into candles of one timeframe.

    Each accepted trade yields the updated current candle, preceded by the
    closed previous one when the trade opens a new bucket. A trade older than
    the current bucket cannot change a candle already closed: it is dropped
    and counted in `ignored`. Records leave with ``seq`` 0; the publisher
    side numbers them.
    """

    __slots__ = ("_bucket", "_exchange", "_floor", "_symbol", "_timeframe", "ignored")

    def __init__(self, *, exchange: Exchange, symbol: str, timeframe: Timeframe) -> None:
        self._exchange = Exchange(exchange)
        self._symbol = parse_symbol(symbol)
        self._timeframe = Timeframe(timeframe)
        self._bucket: _Bucket | None = None
        self._floor = 0  # open_time of the oldest bucket still accepting trades
        self.ignored = 0  # trades dropped because their bucket was already closed

    def add(self, price: str, size: str, ts: int, recv_ts: float) -> list[Candle]:
        """Fold one trade (exchange time `ts` in ms); return the candles to publish, oldest first.

        Raises `DataError` for a price or size that is not a non-negative decimal.
        """
        value, amount = _decimal(price, "price"), _decimal(size, "size")
        open_time = self._timeframe.start(ts)
        if open_time < self._floor:
            self.ignored += 1
            return []
        out: list[Candle] = []
        bucket = self._bucket
        if bucket is not None and open_time > bucket.open_time:
            out.append(self._close(bucket, ts, recv_ts))
            bucket = None
        if bucket is None:
            bucket = self._bucket = _Bucket(open_time, price, value, amount, ts)
            self._floor = open_time
        else:
            bucket.add(price, value, amount, ts)
        out.append(self._candle(bucket, ts, recv_ts, closed=False))
        return out

    def close_due(self, now_ms: int, recv_ts: float) -> Candle | None:
        """Close the current candle if its bucket has ended by `now_ms`, without a new trade.

        For quiet symbols whose next trade may come much later. Pass the
        exchange's clock minus a grace for late trades: any trade of the
        bucket arriving after this is ignored.
        """
        bucket = self._bucket
        if bucket is None or now_ms < self._timeframe.end(bucket.open_time):
            return None
        return self._close(bucket, now_ms, recv_ts)

    def _close(self, bucket: _Bucket, ts: int, recv_ts: float) -> Candle:
        self._bucket = None
        self._floor = self._timeframe.end(bucket.open_time)
        return self._candle(bucket, ts, recv_ts, closed=True)

    def _candle(self, bucket: _Bucket, ts: int, recv_ts: float, *, closed: bool) -> Candle:
        return Candle(
            exchange=self._exchange,
            symbol=self._symbol,
            ts=ts,
            recv_ts=recv_ts,
            timeframe=self._timeframe,
            open_time=bucket.open_time,
            open=bucket.open,
            high=bucket.high,
            low=bucket.low,
            close=bucket.close,
            volume=format(bucket.volume, "f"),  # never exponent form, e.g. "0E-8" -> "0.00000000"
            closed=closed,
        )


def aggregate(candles: Sequence[Candle], timeframe: Timeframe, now_ms: int) -> list[Candle]:
    """Fold finer candles (oldest first, each inside one bucket) into `timeframe`'s buckets.

    Open is the first candle's, close the last one's, high and low the extremes
    (compared as decimals, kept as the exchange's text), volume the exact sum.
    A bucket is closed once its end has passed `now_ms`.
    """
    out: list[Candle] = []
    group: list[Candle] = []
    for candle in candles:
        if group and timeframe.start(candle.open_time) != timeframe.start(group[0].open_time):
            out.append(_fold(group, timeframe, now_ms))
            group = []
        group.append(candle)
    if group:
        out.append(_fold(group, timeframe, now_ms))
    return out


def _fold(group: Sequence[Candle], timeframe: Timeframe, now_ms: int) -> Candle:
    first, last = group[0], group[-1]
    high = max(group, key=lambda c: _decimal(c.high, "high"))
    low = min(group, key=lambda c: _decimal(c.low, "low"))
    volume = Decimal(0)
    for candle in group:
        volume = _EXACT.add(volume, _decimal(candle.volume, "volume"))
    open_time = timeframe.start(first.open_time)
    return msgspec.structs.replace(
        last,
        timeframe=timeframe,
        open_time=open_time,
        open=first.open,
        high=high.high,
        low=low.low,
        volume=format(volume, "f"),
        closed=timeframe.end(open_time) <= now_ms,
    )
