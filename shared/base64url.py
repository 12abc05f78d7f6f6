"""base64url (RFC 4648 section 5) straight from binascii: every connect encodes two ids and reads a token's segments.

The `base64` module's functions are Python wrappers around the same binascii calls
(argument checks, a translate, a second call): about half their time on a 15-byte id.
These are those calls alone, with the same results (`decode` is `urlsafe_b64decode`:
bytes outside the alphabet are skipped, not refused; padding is the caller's).
"""

from __future__ import annotations

import binascii
from typing import Final

_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")


def encode(data: bytes) -> bytes:
    """`base64.urlsafe_b64encode(data)`, padded as it pads."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE)


def decode(text: bytes) -> bytes:
    """`base64.urlsafe_b64decode(text)`; raises binascii.Error as it does."""
    return binascii.a2b_base64(text.translate(_FROM_URLSAFE))
