"""The standard library's reading of JSON, at msgspec's speed for the documents both read alike.

Two readers must stay the standard library's: a token's claims (PyJWT reads them with
`json.loads`, and the gateway's own HMAC check accepts only what PyJWT accepts, as PyJWT
reads it) and a client's Socket.IO packets (python-socketio's client sends NaN and Infinity).
msgspec reads a small document in a fifth of the time, and refuses whatever it would not read
exactly as `json.loads` does: NaN and Infinity, numbers beyond a double's range, lone
surrogates, bytes that are not UTF-8 (`json.loads` also reads UTF-16 and UTF-32). Those go to
`json.loads`, so every input gives the value, or the exception, `json.loads` gives
(tests/unit/test_encodings.py compares the two on generated documents).
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

_decode: Final = msgspec.json.Decoder().decode


def loads(data: str | bytes) -> Any:
    """`json.loads(data)`: its value, or its exception."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, RecursionError):  # ValidationError (out of range) is a DecodeError
        return json.loads(data)
