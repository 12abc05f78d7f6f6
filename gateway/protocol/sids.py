"""Session ids: 20 URL-safe characters, 120 bits from the operating system's CSPRNG.

What `secrets.token_urlsafe(15)` returns, but the random bytes are read from
the kernel 256 ids at a time: one system call per id was 4% of the node's CPU
in a connect storm (two ids a connect, Engine.IO's and Socket.IO's). The
bytes are the same `os.urandom` bytes, each used once; a forked child starts
with an empty block, so no two processes hand out the same ids.
"""

from __future__ import annotations

import os
from typing import Final

from shared import base64url

ID_BYTES: Final = 15
_BLOCK_IDS: Final = 256


class _Block:
    __slots__ = ("data", "offset")

    def __init__(self) -> None:
        self.data = b""
        self.offset = 0

    def clear(self) -> None:
        self.data, self.offset = b"", 0


_block: Final = _Block()
os.register_at_fork(after_in_child=_block.clear)


def new_sid() -> str:
    """A fresh id, unguessable and URL-safe (nothing in it needs escaping in JSON or a query string)."""
    block = _block
    if block.offset >= len(block.data):
        block.data, block.offset = os.urandom(ID_BYTES * _BLOCK_IDS), 0
    start = block.offset
    block.offset = start + ID_BYTES
    return base64url.encode(block.data[start : start + ID_BYTES]).decode()
