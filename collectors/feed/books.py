"""One symbol's order book on its way out: sync state, and a rate-bounded top-N view.

The exchange may send a hundred book messages a second for a busy symbol;
consumers need a current picture, not every step. So a view is published at
once when the last one is older than the interval, and otherwise the latest
state is published when the interval ends: never more than ``1 / interval``
views a second, never one older than an interval, and the latest always wins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from collectors.book import Action, BookSide, Level, LevelText, OrderBook
from shared.events import Book
from shared.topics import Exchange


class Resettable(Protocol):
    def reset(self) -> None: ...


S = TypeVar("S", bound=Resettable)


class BookFeed(Generic[S]):
    """The book of one symbol, its exchange-specific sequencer `sync`, and its publishing pace."""

    __slots__ = (
        "_exchange",
        "_handle",
        "_interval",
        "_last_publish",
        "_publish",
        "_recv_ts",
        "_resync_next",
        "_shown",
        "_ts",
        "book",
        "depth",
        "ready",
        "symbol",
        "sync",
    )

    def __init__(
        self,
        *,
        exchange: Exchange,
        symbol: str,
        sync: S,
        depth: int,
        interval_s: float,
        publish: Callable[[Book], None],
        level_text: LevelText | None = None,
    ) -> None:
        self._exchange = exchange
        self.symbol = symbol
        self.sync = sync
        self.depth = depth
        self.book = OrderBook(level_text=level_text)
        self.ready = False  # a snapshot has been applied since the last reset
        self._interval = interval_s
        self._publish = publish
        self._resync_next = False  # the next view is the first after a rebuild
        # The sides of the last view published: `OrderBook.top` hands out the same lists until a
        # change reaches into them, so a change below the published depth shows nothing new.
        self._shown: tuple[list[Level], list[Level]] | None = None
        self._last_publish = float("-inf")
        self._handle: asyncio.TimerHandle | None = None
        self._ts = 0
        self._recv_ts = 0.0

    def apply(self, action: Action, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        """Apply one message's ``(price, size)`` levels as the sequencer decided.

        A SyncError (a malformed level) may leave the book half updated: the caller resets it.
        """
        if action is Action.REPLACE:
            self.book.apply_snapshot(_pairs(bids), _pairs(asks))
            self.ready = True
        elif action is Action.APPLY:
            book = self.book
            for price, size in bids:
                book.apply_update(BookSide.BID, price, size)
            for price, size in asks:
                book.apply_update(BookSide.ASK, price, size)

    def changed(self, ts: int, recv_ts: float) -> None:
        """The book moved (exchange time `ts`): publish now, or at the end of the current interval."""
        self._ts, self._recv_ts = ts, recv_ts
        if not self.ready or self._handle is not None:
            return  # nothing to show yet, or a publish is already due: it will carry this state
        if self._interval <= 0:
            self._flush()
            return
        now = time.monotonic()
        due = self._last_publish + self._interval
        if now >= due:
            self._flush()
        else:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(due - now, self._flush)

    def reset(self) -> None:
        """Forget the book until a new snapshot; the first view after it says ``resync``."""
        self.cancel()
        self.book.clear()
        self.sync.reset()
        if self.ready:
            self._resync_next = True
        self.ready = False

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def view(self) -> Book:
        bids, asks = self._shown = self.book.top(self.depth)
        return Book(
            exchange=self._exchange,
            symbol=self.symbol,
            ts=self._ts,
            recv_ts=self._recv_ts,
            bids=bids,
            asks=asks,
            resync=self._resync_next,
        )

    def _flush(self) -> None:
        self._handle = None
        if not self.ready:
            return
        shown = self._shown
        if shown is not None and not self._resync_next:
            bids, asks = self.book.top(self.depth)
            if bids is shown[0] and asks is shown[1]:
                return  # the published levels did not change (deeper ones did)
        self._last_publish = time.monotonic()
        view = self.view()
        self._resync_next = False
        self._publish(view)


def _pairs(levels: Iterable[Sequence[str]]) -> Iterator[Level]:
    # Snapshots only: exchanges send levels as lists, the book keeps (price, size) tuples.
    return ((price, size) for price, size in levels)
