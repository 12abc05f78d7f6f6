"""A simulated market's one-minute candles: its REST candle history, consistent with what it streams.

Before the simulator served a market, its minutes are generated: a random
walk that starts at the market's reference price at 00:00 UTC
`history_days` before the day the market was created, drawn from a
generator seeded by the simulator's seed, the exchange, the symbol and that
day, so the same seed on the same day gives the same history. The live
market then starts at the walk's last close. From then on every trade the
market streams is folded into its minute, which opens at the price before
its first trade, as the streamed candles do. Any candle of any interval,
history or live, is a fold of these minutes, so REST history and streamed
candles agree. Minutes without trades have no candle.
"""

from __future__ import annotations

import math
import random
import zlib
from array import array
from collections import OrderedDict
from typing import Final

from collectors.simulator.market import Candle, Interval, Trade

MINUTE: Final = Interval(60)
# Per-minute volatility of the generated walk, and the share of the range beyond open/close.
WALK_VOLATILITY: Final = 8e-4
WICK: Final = 3e-4
DAY_S: Final = 86400


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
        count = (self.live_from_s - self.first_s) // 60
        rng = random.Random(seed * 1_000_003 + zlib.crc32(f"{exchange}:{symbol}:{self.first_s}".encode()))  # noqa: S311
        columns = [array("q") for _ in range(5)]  # open, high, low, close, volume
        price = float(reference)
        for _ in range(count):
            opened = price
            price = max(1.0, price * math.exp(rng.gauss(0.0, WALK_VOLATILITY)))
            high = max(opened, price) * (1 + abs(rng.gauss(0.0, WICK)))
            low = max(1.0, min(opened, price) * (1 - abs(rng.gauss(0.0, WICK))))
            values = (round(opened), round(high), round(low), round(price), round(rng.uniform(0.1, 5.0) * lot_scale))
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        self._past = columns
        self.last_close = columns[3][-1] if count else reference
        self._live: OrderedDict[int, Candle] = OrderedDict()
        self._max_live = max_live_minutes

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
        first, past = self.first_s, self._past
        lo = max(0, (start_s - first + 59) // 60)
        hi = min(len(past[0]), max(0, (min(end_s, self.live_from_s) - first + 59) // 60))
        for index in range(lo, hi):
            opened, high, low, close, volume = (column[index] for column in past)
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
