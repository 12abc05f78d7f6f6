"""A function's results remembered by argument, a bounded number of them.

The simulator prints and hashes the same book levels again and again (a Kraken
checksum covers the best ten of both sides on every message); remembering each
level's text makes that a dict lookup. (A collector's book keeps each level's
checksum text beside the level instead: `OrderBook(level_text=...)`.) Full, the memo is
emptied whole: cheaper per hit than an LRU's bookkeeping, and the levels that
matter come back at once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class BoundedMemo(dict[Key, Value]):
    """`memo[key]` is `make(key)`, made once while at most `limit` results are held."""

    __slots__ = ("_limit", "_make")

    def __init__(self, make: Callable[[Key], Value], limit: int) -> None:
        super().__init__()
        self._make = make
        self._limit = limit

    def __missing__(self, key: Key) -> Value:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._make(key)
        return value
