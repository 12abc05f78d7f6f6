"""A generated market for any symbol: a random-walk fair price, a book kept around it, trades.

Every event the generator emits keeps the book consistent (never crossed, a bounded number
of levels per side), so checksums and sequence numbers computed from it are meaningful. A
trade is emitted as a `TradeEvent` followed by the `BookEvent` that removes the liquidity
it took, as exchanges publish a trade and the matching depth update separately.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator
from typing import Final

from collectors.simulator.market import (
    BookEvent,
    Change,
    Instrument,
    Market,
    MarketEvent,
    Side,
    TakerSide,
    TradeEvent,
)

# Rough USD prices so that well-known symbols look familiar; others get a stable pseudo-price.
_USD_PRICES: Final[dict[str, float]] = {
    "BTC": 65000.0,
    "XBT": 65000.0,
    "ETH": 3200.0,
    "SOL": 150.0,
    "BNB": 580.0,
    "XRP": 0.55,
    "ADA": 0.45,
    "DOGE": 0.15,
    "LTC": 80.0,
    "DOT": 7.0,
    "LINK": 15.0,
    "AVAX": 35.0,
    "POL": 0.5,
    "MATIC": 0.7,
    "TRX": 0.12,
    "UNI": 8.0,
    "ATOM": 9.0,
    "XLM": 0.11,
    "NKN": 0.1,
    "SKL": 0.05,
    "EUR": 1.08,
    "GBP": 1.27,
}
_USD_LIKE: Final = frozenset({"USD", "USDT", "USDC", "FDUSD", "BUSD", "DAI", "TUSD", "USDE", "PYUSD"})
# Probabilities of the three kinds of event.
P_TRADE: Final = 0.2
P_ADD: Final = 0.5
SIZE_DECIMALS: Final = 8
# Fraction of the price the book spans on each side, spread over `levels` grid steps.
BOOK_SPAN: Final = 0.01
# A stalled event loop does not turn into a burst bigger than this many seconds of events.
MAX_CATCH_UP_S: Final = 0.25
# Standard deviation of the fair price's log change per event.
FAIR_VOLATILITY: Final = 2e-5


def usd_price(asset: str) -> float:
    """A plausible USD price for `asset`; unknown assets hash to 0.05..500, stable across runs."""
    if asset in _USD_LIKE:
        return 1.0
    known = _USD_PRICES.get(asset)
    if known is not None:
        return known
    fraction = zlib.crc32(asset.encode()) / 0xFFFFFFFF
    return 0.05 * 10 ** (4 * fraction)


def make_instrument(symbol: str, base: str, quote: str) -> tuple[Instrument, float]:
    """The instrument of a synthetic symbol and its starting price.

    The tick is about 1e-5 of the price (BTC/USD gets 0.1, as on Kraken); sizes have 8
    decimals as on most venues.
    """
    price = usd_price(base) / usd_price(quote)
    decimals = min(8, max(0, math.ceil(-math.log10(price * 1e-5))))
    return Instrument(symbol, base, quote, decimals, SIZE_DECIMALS), price


def market_rng(seed: int, exchange: str, symbol: str) -> random.Random:
    """A generator per market that is reproducible for a given seed (Python's hash is not)."""
    return random.Random(seed * 1_000_003 + zlib.crc32(f"{exchange}:{symbol}".encode()))  # noqa: S311


class SyntheticSource:
    """Produces book changes and trades for one market at a chosen rate."""

    def __init__(self, market: Market, rng: random.Random, *, start_price: float, levels: int, rate: float) -> None:
        self.market = market
        self.rate = rate
        self._rng = rng
        self._levels = levels
        scale = 10**market.instrument.price_decimals
        self._fair = start_price * scale  # in ticks, as a float: only a target, never rendered
        # Levels sit on a grid so the book spans BOOK_SPAN of the price on each side.
        self._step = max(1, round(start_price * scale * BOOK_SPAN / levels))
        self._carry = 0.0
        self._last = 0.0
        self._size_scale: int = 10**market.instrument.size_decimals
        # A typical resting level is worth about 5000 USD, in base lots.
        self._typical_lots = max(1.0, 5000.0 / usd_price(market.instrument.base) * self._size_scale)

    def initial_book(self) -> list[Change]:
        mid = round(self._fair / self._step) * self._step
        changes: list[Change] = []
        for i in range(self._levels):
            changes.append((Side.BID, max(1, mid - (i + 1) * self._step), self._size()))
            changes.append((Side.ASK, mid + (i + 1) * self._step, self._size()))
        return changes

    def resume(self, now: float) -> None:
        """Start counting from `now`, so idle time is not produced as a burst."""
        self._last = now
        self._carry = 0.0

    def step(self, now: float) -> Iterator[MarketEvent]:
        """Events due by `now`; the caller applies each before asking for the next, so every
        event is generated against the current book."""
        elapsed = min(max(0.0, now - self._last), MAX_CATCH_UP_S)
        self._last = now
        self._carry += self.rate * elapsed
        count = int(self._carry)
        self._carry -= count
        for _ in range(count):
            self._fair *= math.exp(self._rng.gauss(0.0, FAIR_VOLATILITY))
            roll = self._rng.random()
            if roll < P_TRADE:
                yield from self._trade()
            elif roll < P_TRADE + P_ADD:
                yield self._add()
            else:
                yield self._cancel()

    def _size(self) -> int:
        lots: float = self._typical_lots * self._rng.lognormvariate(0.0, 0.8)
        # Four significant digits, like real resting orders rather than random noise.
        unit: int = 10 ** max(0, int(math.log10(max(lots, 1.0))) - 3)
        return max(1, round(lots / unit) * unit)

    def _trade(self) -> list[MarketEvent]:
        book = self.market.book
        mid = self.market.mid()
        bias = 0.0 if mid is None else max(-0.3, min(0.3, (self._fair - mid) / (4 * self._step)))
        taker = TakerSide.BUY if self._rng.random() < 0.5 + bias else TakerSide.SELL
        side = book.asks if taker is TakerSide.BUY else book.bids
        price = side.best()
        if price is None:
            return [self._add()]
        resting = side.sizes[price]
        if self._rng.random() < 0.3 or resting <= 1:
            size = resting
        else:
            size = max(1, int(resting * self._rng.uniform(0.05, 0.9)))
        changes: list[Change] = [(side.side, price, resting - size)]
        self._keep_bounds(side.side, changes)
        return [TradeEvent(price, size, taker), BookEvent(tuple(changes))]

    def _add(self) -> BookEvent:
        book = self.market.book
        side = Side.BID if self._rng.random() < 0.5 else Side.ASK
        distance = min(int(self._rng.expovariate(0.35)), self._levels - 1)
        step = self._step
        fair_grid = round(self._fair / step) * step
        best_bid, best_ask = book.bids.best(), book.asks.best()
        if side is Side.BID:
            price = fair_grid - (distance + 1) * step
            if best_ask is not None:
                price = min(price, best_ask - 1)
            price = max(price, 1)
        else:
            price = fair_grid + (distance + 1) * step
            if best_bid is not None:
                price = max(price, best_bid + 1)
        changes: list[Change] = [(side, price, self._size())]
        self._keep_bounds(side, changes)
        return BookEvent(tuple(changes))

    def _cancel(self) -> BookEvent:
        book = self.market.book
        side = Side.BID if self._rng.random() < 0.5 else Side.ASK
        book_side = book[side]
        if len(book_side) == 0:
            return self._add()
        rank = min(int(self._rng.expovariate(0.15)), len(book_side) - 1)
        price = book_side.at(rank)
        if len(book_side) > self._levels // 2 and self._rng.random() < 0.6:
            size = 0
        else:
            size = max(1, int(book_side.sizes[price] * self._rng.uniform(0.2, 1.8)))
        changes: list[Change] = [(side, price, size)]
        self._keep_bounds(side, changes)
        return BookEvent(tuple(changes))

    def _keep_bounds(self, side: Side, changes: list[Change]) -> None:
        """Trim the far end of a side that grows too long; refill one that runs thin."""
        book_side = self.market.book[side]
        added = sum(1 for s, p, z in changes if s is side and z and p not in book_side.sizes)
        removed = sum(1 for s, p, z in changes if s is side and not z and p in book_side.sizes)
        count = len(book_side) + added - removed
        worst = book_side.worst()
        if count > self._levels * 1.2 and worst is not None:
            if all(p != worst for _, p, _ in changes):
                changes.append((side, worst, 0))
        elif count < self._levels * 0.8 and worst is not None:
            direction = -1 if side is Side.BID else 1
            far = worst + direction * self._step
            if far > 0:
                changes.append((side, far, self._size()))
