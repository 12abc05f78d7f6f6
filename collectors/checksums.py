"""CRC32 book checksums of Kraken and OKX, computed from the exchanges' own number text.

Both hash decimal strings, so they verify only when built from the text the
exchange sent: a trip through float turns Kraken v2's ``0.031340`` into
``0.03134`` and breaks the checksum. For Kraken v2, whose levels are bare JSON
numbers, decode them as strings (``json.loads(..., parse_float=str)`` or a
msgspec ``float_hook=str``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Final

from collectors.book import Level, OrderBook, SyncError, SyncReason
from collectors.memo import BoundedMemo

KRAKEN_DEPTH: Final = 10  # levels per side in Kraken's checksum, whatever the book depth
OKX_DEPTH: Final = 25  # levels per side in OKX's checksum
_SIGN_BIT: Final = 1 << 31


def _kraken_token(text: str) -> str:
    # Kraken's rule: drop the decimal point, then the leading zeros ("0.00100000" -> "100000").
    return text.replace(".", "").lstrip("0")


def kraken_checksum(bids: Sequence[Level], asks: Sequence[Level]) -> int:
    """Unsigned CRC32 of the best 10 asks then the best 10 bids, each price then size.

    WebSocket v1 (string field ``c``) and v2 (number field ``checksum``) build
    the same string; only where the text comes from differs.
    """
    return zlib.crc32(_side_text(asks) + _side_text(bids))


def kraken_level_text(price: str, size: str) -> bytes:
    """A level's text in Kraken's checksum, price then size, for `OrderBook(level_text=...)`.

    UTF-8, not ASCII: a level whose digits are not ASCII (Decimal reads them) fails the
    checksum, so the book resyncs instead of raising on every message.
    """
    return (_kraken_token(price) + _kraken_token(size)).encode()


def _level_token(level: Level) -> bytes:
    """A level's checksum text, remembered: the simulator prints the same levels again and again."""
    return kraken_level_text(*level)


_LEVEL_TOKENS_MAX: Final = 65_536  # the top 10 of both sides of a few thousand books; cleared whole beyond
_LEVEL_TOKENS: Final = BoundedMemo(_level_token, _LEVEL_TOKENS_MAX)


def _side_text(levels: Sequence[Level]) -> bytes:
    return b"".join(map(_LEVEL_TOKENS.__getitem__, levels[:KRAKEN_DEPTH]))


def at_precision(levels: Sequence[Level], price_decimals: int, size_decimals: int) -> list[Level]:
    """Levels re-written with exactly the instrument's decimals ("0.001" -> "0.00100000"), as Kraken prints them."""
    out = []
    for price, size in levels:
        try:
            out.append((f"{Decimal(price):.{price_decimals}f}", f"{Decimal(size):.{size_decimals}f}"))
        except InvalidOperation:
            out.append((price, size))  # not a number: the checksum will say so
    return out


def okx_checksum(bids: Sequence[Level], asks: Sequence[Level]) -> int:
    """Signed CRC32 of ``bid1px:bid1sz:ask1px:ask1sz:bid2px:...`` over the best 25 per side.

    When one side runs out, the other continues alone, as OKX documents.
    """
    bids, asks = bids[:OKX_DEPTH], asks[:OKX_DEPTH]
    parts: list[str] = []
    for index in range(max(len(bids), len(asks))):
        if index < len(bids):
            parts.extend(bids[index])
        if index < len(asks):
            parts.extend(asks[index])
    value = zlib.crc32(":".join(parts).encode("ascii"))
    return value - (1 << 32) if value & _SIGN_BIT else value


def verify_kraken(
    book: OrderBook, expected: int, precision: Callable[[Sequence[Level]], tuple[int, int]] | None = None
) -> None:
    """Raise `SyncError` unless the book's top 10 give Kraken's checksum.

    The book keeps each level's text (``OrderBook(level_text=kraken_level_text)``).
    Apply every level of the message and truncate to the subscribed depth first.
    The checksum is over the text Kraken sent; when that text was lost (a feed
    re-serialized through floats drops trailing zeros), `precision` (given the
    checked levels, the price and size decimals of the instrument) re-formats
    the levels as Kraken prints them. It is asked only when the text fails.
    """
    bids_text, asks_text = book.text(KRAKEN_DEPTH)
    computed = zlib.crc32(asks_text + bids_text)
    if computed == expected:
        return
    if precision is not None:
        bids, asks = book.top(KRAKEN_DEPTH)
        price_decimals, size_decimals = precision([*bids, *asks])
        formatted = kraken_checksum(
            at_precision(bids, price_decimals, size_decimals), at_precision(asks, price_decimals, size_decimals)
        )
        if formatted == expected:
            return
    raise SyncError(SyncReason.CHECKSUM, f"expected {expected}, computed {computed}")


def verify_okx(book: OrderBook, expected: int) -> None:
    """Raise `SyncError` unless the book's top 25 give OKX's checksum.

    OKX deprecated the field: it is 0 from 2026-06-23 on, and then only the
    seqId chain (`OkxSequencer`) detects loss, so 0 is not checked.
    """
    if expected == 0:
        return
    bids, asks = book.top(OKX_DEPTH)
    computed = okx_checksum(bids, asks)
    if computed != expected:
        raise SyncError(SyncReason.CHECKSUM, f"expected {expected}, computed {computed}")
