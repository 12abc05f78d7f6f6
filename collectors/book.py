"""L2 order books and the per-exchange rules that keep them in sync.

Everything here is pure and synchronous. For each book message an adapter asks
the symbol's sequencer what to do (`Action`), applies the levels to the
symbol's `OrderBook`, and verifies the exchange's checksum where there is one
(`collectors.checksums`). Any inconsistency raises `SyncError`; the connection
layer catches it and resyncs that one symbol (reset its book and sequencer,
then fetch or resubscribe for a fresh snapshot), never the whole connection.

Prices and sizes stay the exchange's own text. `Decimal` values only order the
levels, so published books and checksums (which hash the text) are exact.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Final, Generic, TypeVar

DiffT = TypeVar("DiffT")

# (price, size) exactly as the exchange wrote them, e.g. ("0.031340", "12.96065840").
Level = tuple[str, str]
# A level's text in the exchange's checksum, made once per change by a book that keeps it: a
# checksum over the best levels is then a join, not a lookup per level on every message.
LevelText = Callable[[str, str], bytes]

# 1000 diffs of the 100 ms stream cover 100 s; a REST snapshot arrives within
# seconds, so older diffs can be dropped first (a too-old snapshot is then detected).
DEFAULT_MAX_BUFFERED: Final = 1000
_ALL: Final = 1 << 62  # the depth of a whole side, for `_Ladder`'s cached views


# The package's root error lives here until collectors has an errors module of its own.
class CollectorError(Exception):
    """Root of the errors raised by the collectors package."""


class DataError(CollectorError, ValueError):
    """A value in an exchange message is not what the protocol promises (e.g. a trade size)."""


class SyncReason(StrEnum):
    """Why a book had to be resynced; a metric label as well as a message prefix."""

    GAP = "gap"
    CHECKSUM = "checksum"
    STALE_SNAPSHOT = "stale_snapshot"
    BAD_LEVEL = "bad_level"


class SyncError(CollectorError, RuntimeError):
    """The local book no longer mirrors the exchange's: resync this symbol only.

    A RuntimeError rather than a ValueError on purpose: a parser's
    ``except ValueError`` (skip a bad frame) must not swallow it and carry on
    with a corrupt book.
    """

    def __init__(self, reason: SyncReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class BookSide(StrEnum):
    """Side of a book level (not a trade's aggressor side, which is `shared.events.Side`)."""

    BID = "bid"
    ASK = "ask"


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError) as exc:
        raise SyncError(SyncReason.BAD_LEVEL, f"{what} {text!r} is not a decimal") from exc
    if not value.is_finite():
        raise SyncError(SyncReason.BAD_LEVEL, f"{what} {text!r} is not a finite decimal")
    return value


class _Ladder:
    """One side of a book, best level first.

    Parallel lists kept sorted with `bisect`: the price keys, the levels and,
    for an exchange that hashes its levels' text (`LevelText`), each level's
    text. Updates cluster near the top, and moving a few thousand list slots
    in C is cheaper than any tree written in Python; a top-N view is then a
    slice, not N lookups. Bid keys are negated so that both sides sort
    ascending, best first.
    """

    __slots__ = ("_joined", "_keys", "_level_text", "_levels", "_negate", "_reach", "_texts", "_tops")

    def __init__(self, *, negate: bool, level_text: LevelText | None) -> None:
        self._negate = negate
        self._level_text = level_text
        self._keys: list[Decimal] = []
        self._levels: list[Level] = []  # the level of each key, in the same order
        self._texts: list[bytes] = []  # and its text (empty unless the book keeps it)
        # The views `top` and `text` built, by depth, until a change reaches into the deepest of
        # them: a delta below the published depth (most of a deep book's) costs no new view.
        self._tops: dict[int | None, list[Level]] = {}
        self._joined: dict[int, bytes] = {}
        self._reach = 0  # the deepest cached view's depth (a huge number for the whole side)

    def __len__(self) -> int:
        return len(self._keys)

    def set(self, price: str, size: str) -> None:
        key = _decimal(price, "price")
        if self._negate:
            key = key.copy_negate()  # exact, unlike unary minus which rounds to context
        amount = _decimal(size, "size")
        keys = self._keys
        index = bisect.bisect_left(keys, key)
        present = index < len(keys) and keys[index] == key
        if amount.is_zero():
            # Removing an unknown level is normal (Binance documents it): ignore it.
            if present:
                self._touch(index)
                del keys[index], self._levels[index], self._texts[index]
            return
        if amount.is_signed():
            raise SyncError(SyncReason.BAD_LEVEL, f"size {size!r} at price {price!r} is negative")
        self._touch(index)
        # Keep the latest text: "136.2" and "136.20" are the same level.
        text = self._level_text(price, size) if self._level_text is not None else b""
        if present:
            self._levels[index], self._texts[index] = (price, size), text
        else:
            keys.insert(index, key)
            self._levels.insert(index, (price, size))
            self._texts.insert(index, text)

    def _touch(self, index: int) -> None:
        """Forget the cached views if a change at `index` shows in them; call before the change."""
        if index < self._reach or len(self._keys) < self._reach:
            self._tops.clear()
            self._joined.clear()
            self._reach = 0

    def clear(self) -> None:
        self._keys.clear()
        self._levels.clear()
        self._texts.clear()
        self._touch(0)

    def truncate(self, depth: int) -> None:
        if depth < len(self._keys):
            self._touch(depth)
            del self._keys[depth:], self._levels[depth:], self._texts[depth:]

    def top(self, n: int | None) -> list[Level]:
        """The best `n` levels (all if None); the list is shared with later calls: do not change it."""
        view = self._tops.get(n)
        if view is None:
            view = self._tops[n] = self._levels[:n]
            self._reach = max(self._reach, _ALL if n is None else n)
        return view

    def text(self, n: int) -> bytes:
        """The texts of the best `n` levels, joined."""
        if self._level_text is None:
            raise ValueError("this book keeps no level text: give OrderBook a level_text")
        joined = self._joined.get(n)
        if joined is None:
            joined = self._joined[n] = b"".join(self._texts[:n])
            self._reach = max(self._reach, n)
        return joined

    def best(self) -> Level | None:
        return self._levels[0] if self._levels else None


class OrderBook:
    """The L2 book of one symbol, keyed by price value, keeping the exchange's text.

    A `SyncError` from an update (a malformed level) can leave earlier levels
    of the same message applied: treat it like any other SyncError and resync.
    """

    __slots__ = ("_asks", "_bids", "_sides")

    def __init__(self, *, level_text: LevelText | None = None) -> None:
        self._bids = _Ladder(negate=True, level_text=level_text)
        self._asks = _Ladder(negate=False, level_text=level_text)
        self._sides = {BookSide.BID: self._bids, BookSide.ASK: self._asks}

    def __len__(self) -> int:
        """Number of levels on both sides."""
        return len(self._bids) + len(self._asks)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def apply_snapshot(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book; levels may come in any order, zero sizes are skipped."""
        self.clear()
        for price, size in bids:
            self._bids.set(price, size)
        for price, size in asks:
            self._asks.set(price, size)

    def apply_update(self, side: BookSide, price: str, size: str) -> None:
        """Set the size of one level; a zero size (``"0"``, ``"0.00000000"``) removes it."""
        self._sides[side].set(price, size)

    def truncate(self, depth: int) -> None:
        """Keep the best `depth` levels per side, as Kraken's fixed-depth book does.

        Kraken sends no delete for a level pushed out below the subscribed
        depth, so its checksum only matches after this is applied.
        """
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._bids.truncate(depth)
        self._asks.truncate(depth)

    def top(self, n: int | None = None) -> tuple[list[Level], list[Level]]:
        """The best `n` levels per side (all if None): bids descending, asks ascending."""
        return self._bids.top(n), self._asks.top(n)

    def text(self, n: int) -> tuple[bytes, bytes]:
        """The joined texts (`LevelText`) of the best `n` levels per side, bids then asks; cached like `top`.

        Raises ValueError for a book made without `level_text`.
        """
        return self._bids.text(n), self._asks.text(n)

    @property
    def best_bid(self) -> Level | None:
        return self._bids.best()

    @property
    def best_ask(self) -> Level | None:
        return self._asks.best()


class Action(StrEnum):
    """What to do with a book message once its sequence has been checked."""

    REPLACE = "replace"  # a full book: `OrderBook.apply_snapshot`
    APPLY = "apply"  # deltas on the current book: `OrderBook.apply_update` per level
    SKIP = "skip"  # waiting for a snapshot after a resync: drop the message


class _Gate:
    """Per-symbol state shared by the sequencers: in sync, or waiting for a snapshot."""

    __slots__ = ("skipped", "synced")

    def __init__(self) -> None:
        self.synced = False
        self.skipped = 0  # messages dropped while waiting for a snapshot

    def reset(self) -> None:
        """Drop deltas until the next snapshot; call it whenever this symbol resyncs."""
        self.synced = False

    def _skip(self) -> Action:
        self.skipped += 1
        return Action.SKIP


class SnapshotGate(_Gate):
    """Feeds without sequence numbers (Kraken, Coinbase level2): deltas only after a snapshot.

    Without it, the deltas still in flight after a checksum mismatch would be
    applied to the discarded book and fail their checksums again, one
    resubscribe each.
    """

    __slots__ = ()

    def check(self, *, snapshot: bool) -> Action:
        if snapshot:
            self.synced = True
            return Action.REPLACE
        return Action.APPLY if self.synced else self._skip()


class BybitSequencer(_Gate):
    """Bybit v5 ``orderbook.N``: each delta's ``u`` is the previous ``u`` + 1.

    A snapshot replaces the book, and so does any message with ``u == 1``,
    which Bybit sends after a service restart. ``seq`` is a cross-topic order,
    not contiguous, and is not checked. A delta, trimmed:
    {"topic":"orderbook.50.BTCUSDT","ts":1731035685345,"type":"delta","data":{"s":"BTCUSDT",
     "b":[["75848.62","0.014895"],["75837.13","0"]],"a":[["75852.65","0"]],
     "u":2876701,"seq":47474967823},"cts":1731035685342}
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        super().__init__()
        self._last = 0

    def check(self, update_id: int, *, snapshot: bool) -> Action:
        if snapshot or update_id == 1:
            self.synced, self._last = True, update_id
            return Action.REPLACE
        if not self.synced:
            return self._skip()
        if update_id != self._last + 1:
            self.synced = False
            raise SyncError(SyncReason.GAP, f"expected u={self._last + 1}, got u={update_id}")
        self._last = update_id
        return Action.APPLY


class OkxSequencer(_Gate):
    """OKX v5 ``books``: each update's ``prevSeqId`` is the previous message's ``seqId``.

    ``seqId`` is not contiguous. The documented exceptions follow the same
    rule: an idle keep-alive has ``prevSeqId == seqId`` (the last one) and no
    levels, and after maintenance ``seqId`` may restart below ``prevSeqId``.
    The snapshot has ``prevSeqId == -1``. An update, trimmed:
    {"arg":{"channel":"books","instId":"SOL-USDT"},"action":"update","data":[{
     "asks":[["120.67","60.475897","0","5"]],"bids":[["120.66","0","0","0"]],
     "ts":"1790394877300","checksum":0,"seqId":32032594315,"prevSeqId":32032594283}]}
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        super().__init__()
        self._last = -1

    def check(self, seq_id: int, prev_seq_id: int, *, snapshot: bool) -> Action:
        if snapshot:
            self.synced, self._last = True, seq_id
            return Action.REPLACE
        if not self.synced:
            return self._skip()
        if prev_seq_id != self._last:
            self.synced = False
            raise SyncError(SyncReason.GAP, f"expected prevSeqId={self._last}, got prevSeqId={prev_seq_id}")
        self._last = seq_id
        return Action.APPLY


class ConnectionSequencer:
    """Coinbase Advanced Trade: ``sequence_num`` counts every message of one connection.

    It spans all channels and products, so a gap cannot be pinned to a symbol:
    reset every level2 product of that connection and resubscribe them. After
    a gap, counting continues from the number received. A message, trimmed:
    {"channel":"heartbeats","timestamp":"2026-09-07T23:37:22.675755362Z","sequence_num":3,
     "events":[{"current_time":"...","heartbeat_counter":139651}]}
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def reset(self) -> None:
        """Forget the count; call it for each new connection."""
        self._last = None

    def check(self, sequence_num: int) -> None:
        last, self._last = self._last, sequence_num
        if last is not None and sequence_num != last + 1:
            raise SyncError(SyncReason.GAP, f"expected sequence_num={last + 1}, got {sequence_num}")


class BinanceDepthSync(Generic[DiffT]):
    """Binance spot diff depth: buffer diffs, align them to a REST snapshot, then chain them.

    The documented procedure: buffer the stream's diffs while the REST depth
    snapshot is fetched (in its own task, never in the read loop); drop the
    diffs with ``u <= lastUpdateId``; the first one kept must straddle it
    (``U <= lastUpdateId + 1 <= u``), and each later one must start where the
    previous ended (``U == previous u + 1``). `DiffT` is whatever the adapter
    parsed a diff into; it is handed back, in order, once it can be applied.
    A diff, from the combined stream:
    {"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":1633998512568,
     "s":"NKNUSDT","U":499869753,"u":499869754,"b":[["0.35170000","4265.00000000"]],
     "a":[["0.35290000","10968.00000000"]]}}
    """

    __slots__ = ("_buffer", "_first", "_last", "dropped")

    def __init__(self, *, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be >= 1, got {max_buffered}")
        self._buffer: deque[tuple[int, int, DiffT]] = deque(maxlen=max_buffered)
        self._last: int | None = None  # final update id applied; None while buffering
        self._first = False  # the next diff is the first after the snapshot: it may straddle
        self.dropped = 0  # oldest buffered diffs dropped because the buffer was full

    @property
    def synced(self) -> bool:
        return self._last is not None

    def reset(self) -> None:
        """Go back to buffering; fetch a new snapshot and pass it to `on_snapshot`."""
        self._last = None

    def on_diff(self, first_id: int, final_id: int, diff: DiffT) -> list[DiffT]:
        """Take diff ``U``..``u``; return the diffs now ready to apply (none while buffering).

        Raises `SyncError` on a gap; the diff is then kept as the start of the
        new buffer, so only a new snapshot is needed.
        """
        last = self._last
        if last is None:
            self._buffer_diff(first_id, final_id, diff)
            return []
        if final_id <= last:
            return []  # already in the snapshot
        if first_id > last + 1 or (first_id != last + 1 and not self._first):
            self._last = None
            self._buffer_diff(first_id, final_id, diff)
            raise SyncError(SyncReason.GAP, f"expected U={last + 1}, got U={first_id} u={final_id}")
        self._last, self._first = final_id, False
        return [diff]

    def on_snapshot(self, last_update_id: int) -> list[DiffT]:
        """Align the buffer to the snapshot's ``lastUpdateId``; return the diffs to apply on it.

        Call it before applying the snapshot to the book. Raises `SyncError`
        (and keeps buffering) when the snapshot is older than every buffered
        diff or the buffer has a gap: fetch another snapshot.
        """
        buffer = self._buffer
        while buffer and buffer[0][1] <= last_update_id:
            buffer.popleft()
        if buffer and buffer[0][0] > last_update_id + 1:
            self._last = None
            raise SyncError(
                SyncReason.STALE_SNAPSHOT,
                f"lastUpdateId={last_update_id} is older than the first buffered diff U={buffer[0][0]}",
            )
        ready: list[DiffT] = []
        last = last_update_id
        for index, (first_id, final_id, diff) in enumerate(buffer):
            if index and first_id != last + 1:
                for _ in range(index):  # the diffs before the gap are of no use any more
                    buffer.popleft()
                self._last = None
                raise SyncError(SyncReason.GAP, f"buffered diffs: expected U={last + 1}, got U={first_id}")
            ready.append(diff)
            last = final_id
        buffer.clear()
        self._last, self._first = last, not ready
        return ready

    def _buffer_diff(self, first_id: int, final_id: int, diff: DiffT) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1  # the deque drops the oldest; a too-old snapshot is detected later
        self._buffer.append((first_id, final_id, diff))
