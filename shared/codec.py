"""Encoding and decoding of everything that crosses Redis.

Decoding is strict: a payload that is not valid JSON or does not match its
schema raises PayloadError with a message fit for a log line.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final, Generic, TypeVar

import msgspec

from shared.errors import PayloadError
from shared.events import (
    DECIMAL_PATTERN,
    END,
    IDENT_PATTERN,
    AnyMarketEvent,
    ExecutionUpdate,
    Notification,
    bad_decimal,
)

# Bounds a publisher's payload before any parsing is spent on it.
MAX_PAYLOAD_BYTES: Final = 256 * 1024


class StreamKind(StrEnum):
    """What a user or team channel message carries."""

    NOTIFICATION = "notification"
    EXECUTION = "execution"
    READ = "read"  # a user marked notifications read: not stored, only announced


Position = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}-[0-9]{1,20}" + END)]


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A user or team channel message: the record plus its stream position."""

    pos: Position
    kind: StreamKind
    data: msgspec.Raw


class ReadMarks(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which notifications a user marked read: some positions, or all."""

    positions: Annotated[list[Position], msgspec.Meta(max_length=1000)] = []
    all: bool = False


class Revocation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A control message: disconnect a user's sockets, or those of one token."""

    user_id: Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN)] | None = None
    token_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


_encoder: Final = msgspec.json.Encoder()

encode = _encoder.encode

T = TypeVar("T")


class _Decoder(Generic[T]):
    """A strict JSON decoder whose every failure is a PayloadError naming what was expected."""

    def __init__(self, kind: Any, what: str, *, strict: bool = True) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind, strict=strict)
        self._what = what

    def __call__(self, data: bytes | str) -> T:
        if len(data) > MAX_PAYLOAD_BYTES:
            raise PayloadError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise PayloadError(f"bad {self._what}: {exc}") from exc
        except RecursionError:
            # msgspec gives up on nesting near 1,000 levels, even inside a Raw it only skips.
            raise PayloadError(f"bad {self._what}: JSON nested too deep") from None


class _MarketDecoder(_Decoder[AnyMarketEvent]):
    """Market events, with their prices and sizes checked all at once (see `events.bad_decimal`)."""

    def __call__(self, data: bytes | str) -> AnyMarketEvent:
        event = super().__call__(data)
        bad = bad_decimal(event)
        if bad is not None:
            raise PayloadError(f"bad market event: {bad[:64]!r} is not a decimal string ({DECIMAL_PATTERN})")
        return event


decode_market: Final = _MarketDecoder(AnyMarketEvent, "market event")
decode_envelope: Final = _Decoder[Envelope](Envelope, "envelope")
decode_notification: Final = _Decoder[Notification](Notification, "notification")
decode_execution: Final = _Decoder[ExecutionUpdate](ExecutionUpdate, "execution update")
decode_read_marks: Final = _Decoder[ReadMarks](ReadMarks, "read marks")
# What the gateway delivers: every record the publish scripts store. They see
# JSON numbers as Lua numbers (1.0 is 1), as browsers see them as doubles, so
# these read a number whatever its form; every other rule is the same.
decode_stored_notification: Final = _Decoder[Notification](Notification, "notification", strict=False)
decode_stored_execution: Final = _Decoder[ExecutionUpdate](ExecutionUpdate, "execution update", strict=False)
_decode_revocation: Final = _Decoder[Revocation](Revocation, "revocation")


def decode_revocation(data: bytes | str) -> Revocation:
    revocation = _decode_revocation(data)
    if revocation.user_id is None and revocation.token_id is None:
        raise PayloadError("a revocation names a user_id or a token_id")
    return revocation


def encode_envelope(position: str, kind: StreamKind, data: bytes) -> bytes:
    """A user or team channel message; the publish scripts build the same text in Lua."""
    return b'{"pos":"%s","kind":"%s","data":%s}' % (position.encode(), str(kind).encode(), data)


def to_builtins(record: msgspec.Struct) -> dict[str, object]:
    """The plain-JSON form of a record, as a client receives it."""
    result = msgspec.to_builtins(record)
    assert isinstance(result, dict)
    return result


__all__ = [
    "AnyMarketEvent",
    "Envelope",
    "ReadMarks",
    "Revocation",
    "StreamKind",
    "decode_envelope",
    "decode_execution",
    "decode_market",
    "decode_notification",
    "decode_read_marks",
    "decode_revocation",
    "decode_stored_execution",
    "decode_stored_notification",
    "encode",
    "encode_envelope",
    "to_builtins",
]
