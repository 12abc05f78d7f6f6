"""Encoding and decoding of everything that crosses Redis.

Decoding is strict: a payload that is not valid JSON or does not match its
schema raises PayloadError with a message fit for a log line.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import msgspec

from shared.errors import PayloadError
from shared.events import (
    AnyMarketEvent,
    Book,
    Candle,
    ExecutionUpdate,
    Notification,
    Ticker,
    Trade,
)

# Bounds a publisher's payload before any parsing is spent on it.
MAX_PAYLOAD_BYTES: Final = 256 * 1024


class StreamKind(StrEnum):
    """What a user or team channel message carries."""

    NOTIFICATION = "notification"
    EXECUTION = "execution"
    READ = "read"  # a user marked notifications read: not stored, only announced


Position = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")]


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

    user_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")] | None = None
    token_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


_market_decoder: Final = msgspec.json.Decoder(AnyMarketEvent)
_envelope_decoder: Final = msgspec.json.Decoder(Envelope)
_notification_decoder: Final = msgspec.json.Decoder(Notification)
_execution_decoder: Final = msgspec.json.Decoder(ExecutionUpdate)
_read_marks_decoder: Final = msgspec.json.Decoder(ReadMarks)
_revocation_decoder: Final = msgspec.json.Decoder(Revocation)
_encoder: Final = msgspec.json.Encoder()

encode = _encoder.encode


def _check_size(data: bytes | str) -> None:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}")


def decode_market(data: bytes | str) -> Ticker | Trade | Book | Candle:
    _check_size(data)
    try:
        event: Ticker | Trade | Book | Candle = _market_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad market event: {exc}") from exc
    return event


def decode_envelope(data: bytes | str) -> Envelope:
    _check_size(data)
    try:
        return _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad envelope: {exc}") from exc


def decode_notification(data: bytes | str) -> Notification:
    _check_size(data)
    try:
        return _notification_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad notification: {exc}") from exc


def decode_execution(data: bytes | str) -> ExecutionUpdate:
    _check_size(data)
    try:
        return _execution_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad execution update: {exc}") from exc


def decode_read_marks(data: bytes | str) -> ReadMarks:
    _check_size(data)
    try:
        return _read_marks_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad read marks: {exc}") from exc


def decode_revocation(data: bytes | str) -> Revocation:
    _check_size(data)
    try:
        revocation: Revocation = _revocation_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad revocation: {exc}") from exc
    if revocation.user_id is None and revocation.token_id is None:
        raise PayloadError("a revocation names a user_id or a token_id")
    return revocation


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
    "encode",
    "to_builtins",
]
