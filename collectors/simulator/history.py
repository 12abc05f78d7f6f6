"""A simulated market's one-minute candles: its REST candle history, consistent with what it streams.

Before the simulator served a market, its minutes are generated: a random
walk that starts at the market's reference price at 00:00 UTC
`history_days` before the day the market was created. The walk is drawn
hour by hour, then minute by minute within an hour: creating a market draws
one step per hour (a hundred for two days, where drawing every minute took
tens of milliseconds per market and stalled the simulator's loop when a
subscribe request named many new symbols), and an hour's minutes are drawn
the first time a REST request asks for them, as a bridge from the hour's
open to its close. Both draws are seeded by the simulator's seed, the
exchange, the symbol and the day (and the hour), so the same seed on the same
day gives the same history up to the hour the market was created. The live
market then starts at the walk's last close. From then on every trade the
market streams is folded into its minute, which opens at the price before
its first trade, as the streamed candles do. Any candle of any interval,
history or live, is a fold of these minutes, so REST history and streamed
candles agree. Minutes without trades have no candle.
"""

from __future__ import annotations

import itertools
import math
import random
import zlib
from array import array
from collections import OrderedDict
from typing import Final, TypeAlias

from collectors.simulator.market import Candle, Interval, Trade

MINUTE: Final = Interval(60)
# Per-minute volatility of the generated walk, and the share of the range beyond open/close.
WALK_VOLATILITY: Final = 8e-4
WICK: Final = 3e-4
DAY_S: Final = 86400
HOUR_MINUTES: Final = 60

# One hour of generated minutes: open, high, low, close and volume columns.
Columns: TypeAlias = "tuple[array[int], array[int], array[int], array[int], array[int]]"


class MinuteTape:
    """One market's minute candles: generated before `live_from_s`, recorded from trades after."""

    def __init__(
        self,
        *,
        seed: int,
        exchange: str,
        symbol: str,
        reference: int,
        lot_scale: int,
        now_s: int,
        history_days: int,
        max_live_minutes: int,
    ) -> None:
        self.live_from_s = now_s - now_s % 60
        self.first_s = (now_s - now_s % DAY_S) - history_days * DAY_S
        self._count = (self.live_from_s - self.first_s) // 60
        self._seed = seed * 1_000_003 + zlib.crc32(f"{exchange}:{symbol}:{self.first_s}".encode())
        self._lot_scale = lot_scale
        # The walk's log price at each hour's start, and at its end after the last (maybe partial) hour.
        rng = random.Random(self._seed)  # noqa: S311
        self._hour_marks = array("d", [math.log(reference)])
        for start in range(0, self._count, HOUR_MINUTES):
            steps = min(HOUR_MINUTES, self._count - start)
            self._hour_marks.append(max(0.0, self._hour_marks[-1] + rng.gauss(0.0, WALK_VOLATILITY * math.sqrt(steps))))
        self._hours: dict[int, Columns] = {}  # drawn on first use; at most one per hour of history
        self.last_close = round(math.exp(self._hour_marks[-1])) if self._count else reference
        self._live: OrderedDict[int, Candle] = OrderedDict()
        self._max_live = max_live_minutes

    def _hour(self, index: int) -> Columns:
        """The minutes of hour `index`, drawn the first time asked: a bridge from its open to its close."""
        columns = self._hours.get(index)
        if columns is not None:
            return columns
        rng = random.Random(f"{self._seed}:{index}")  # noqa: S311
        steps = min(HOUR_MINUTES, self._count - index * HOUR_MINUTES)
        opening, closing = self._hour_marks[index], self._hour_marks[index + 1]
        walk = list(itertools.accumulate(rng.gauss(0.0, WALK_VOLATILITY) for _ in range(steps)))
        correction = (closing - opening - walk[-1]) / steps  # so that the last minute closes at `closing`
        columns = (array("q"), array("q"), array("q"), array("q"), array("q"))
        price = math.exp(opening)
        for minute, drawn in enumerate(walk, 1):
            opened = price
            price = max(1.0, math.exp(opening + drawn + correction * minute))
            high = max(opened, price) * (1 + abs(rng.gauss(0.0, WICK)))
            low = max(1.0, min(opened, price) * (1 - abs(rng.gauss(0.0, WICK))))
            volume = rng.uniform(0.1, 5.0) * self._lot_scale
            for column, value in zip(columns, (opened, high, low, price, volume), strict=True):
                column.append(round(value))
        self._hours[index] = columns
        return columns

    def record(self, trade: Trade, previous_price: int) -> None:
        """Fold a streamed trade into its minute (opened at `previous_price`, the price before it)."""
        start = trade.ts_ms // 1000 - trade.ts_ms // 1000 % 60
        minute = self._live.get(start)
        if minute is None:
            minute = Candle(MINUTE, start, start + 60, previous_price, previous_price, previous_price, previous_price)
            self._live[start] = minute
            while len(self._live) > self._max_live:
                self._live.popitem(last=False)
        minute.add(trade)

    def minutes(self, start_s: int, end_s: int) -> list[Candle]:
        """The minute candles opening in [start_s, end_s), oldest first."""
        out: list[Candle] = []
        first = self.first_s
        lo = max(0, (start_s - first + 59) // 60)
        hi = min(self._count, max(0, (min(end_s, self.live_from_s) - first + 59) // 60))
        for index in range(lo, hi):
            hour, offset = divmod(index, HOUR_MINUTES)
            opened, high, low, close, volume = (column[offset] for column in self._hour(hour))
            at = first + index * 60
            out.append(Candle(MINUTE, at, at + 60, opened, high, low, close, volume, volume * close, 1))
        out.extend(minute for at, minute in self._live.items() if start_s <= at < end_s)
        return out

    def candles(self, interval: Interval, start_s: int, end_s: int, now_s: int) -> list[Candle]:
        """Candles of `interval` opening in [start_s, end_s) (bucket starts), each the fold of its minutes."""
        out: list[Candle] = []
        if end_s <= start_s:
            return out
        lo = interval.start(max(start_s, self.first_s))
        hi = interval.end(interval.start(end_s - 1))
        for minute in self.minutes(lo, hi):
            bucket = interval.start(minute.start_s)
            if not start_s <= bucket < end_s:
                continue
            if not out or out[-1].start_s != bucket:
                out.append(fold_start(interval, bucket, minute))
            else:
                fold(out[-1], minute)
        for candle in out:
            candle.closed = candle.end_s <= now_s
        return out


def fold_start(interval: Interval, start_s: int, minute: Candle) -> Candle:
    candle = Candle(
        interval, start_s, interval.end(start_s), minute.open, minute.high, minute.low, minute.close,
        minute.volume, minute.quote_volume, minute.trades, minute.first_trade_id, minute.last_trade_id,
    )  # fmt: skip
    return candle


def fold(candle: Candle, minute: Candle) -> None:
    """Extend `candle` by the next minute of its bucket."""
    candle.high = max(candle.high, minute.high)
    candle.low = min(candle.low, minute.low)
    candle.close = minute.close
    candle.volume += minute.volume
    candle.quote_volume += minute.quote_volume
    candle.trades += minute.trades
    if candle.first_trade_id < 0:
        candle.first_trade_id = minute.first_trade_id
    if minute.last_trade_id >= 0:
        candle.last_trade_id = minute.last_trade_id
