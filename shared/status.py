"""The collector status record: what each collector publishes about itself to Redis.

A collector SETs it under ``names.collector_status_key(id)`` with a TTL (so a
dead collector's record expires) and PUBLISHes the same bytes on
``names.COLLECTOR_STATUS_CHANNEL`` every few seconds. Times are milliseconds
since the Unix epoch; a time of 0 means "never".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import msgspec

from shared.errors import PayloadError
from shared.events import Ident
from shared.topics import Exchange

Millis = Annotated[int, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class ConnectionState(StrEnum):
    """Where one exchange connection is in its life."""

    DISCONNECTED = "disconnected"  # not started yet
    CONNECTING = "connecting"  # first attempt in progress
    CONNECTED = "connected"  # open; subscriptions sent
    RECONNECTING = "reconnecting"  # lost or retired; waiting or retrying
    ERROR = "error"  # the last attempt failed; backing off
    TERMINATED = "terminated"  # stopped for good


class ConnectionStatus(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    url: str
    state: ConnectionState
    streams: Count
    connected_since: Millis = 0
    last_message: Millis = 0
    messages: Count = 0
    reconnects: Count = 0
    last_error: str = ""


class StreamStatus(msgspec.Struct, kw_only=True, frozen=True):
    """One exchange subscription; ``stale`` once it has been silent past its expected interval."""

    stream: str
    connection: str
    last_message: Millis = 0
    stale: bool = False
    resubscribes: Count = 0


class SinkStatus(msgspec.Struct, kw_only=True, frozen=True):
    redis_up: bool
    queued: Count
    published: Count
    dropped: Count
    errors: Count


class CollectorStatus(msgspec.Struct, kw_only=True, frozen=True, tag="collector_status"):
    id: Ident
    exchange: Exchange
    host: str
    pid: int
    started_at: Millis
    ts: Millis
    state: ConnectionState
    topics: list[str]
    connections: list[ConnectionStatus]
    streams: list[StreamStatus]
    reconnects: Count
    resyncs: Count
    sink: SinkStatus


_decoder: Final = msgspec.json.Decoder(CollectorStatus)
_encoder: Final = msgspec.json.Encoder()


def encode_status(status: CollectorStatus) -> bytes:
    return _encoder.encode(status)


def decode_status(data: bytes | str) -> CollectorStatus:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad collector status: {exc}") from exc
