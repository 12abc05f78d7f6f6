"""The status records collectors and gateway nodes write about themselves to Redis.

A collector SETs its record under ``names.collector_status_key(id)`` with a
TTL (so a dead collector's record expires) and PUBLISHes the same bytes on
``names.COLLECTOR_STATUS_CHANNEL`` every few seconds; a gateway node SETs
its own under ``names.gateway_status_key(id)``. Times are milliseconds since
the Unix epoch; a time of 0 means "never".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Final, TypeVar

import msgspec

from shared.errors import PayloadError
from shared.events import Ident
from shared.redis_target import AsyncClient, get_many
from shared.topics import Exchange

logger = logging.getLogger(__name__)
T = TypeVar("T")

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


class GatewayStatus(msgspec.Struct, kw_only=True, frozen=True, tag="gateway_status"):
    """One gateway node, as the status page and backend services see it; counters count since its start."""

    id: Annotated[str, msgspec.Meta(max_length=200)]
    ts: Millis
    started_at: Millis
    connections: Count
    topics: Count
    messages_in: Count
    messages_out: Count
    redis: bool


_decoder: Final = msgspec.json.Decoder(CollectorStatus)
_gateway_decoder: Final = msgspec.json.Decoder(GatewayStatus)
_encoder: Final = msgspec.json.Encoder()


def encode_status(status: CollectorStatus) -> bytes:
    return _encoder.encode(status)


def decode_status(data: bytes | str) -> CollectorStatus:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad collector status: {exc}") from exc


def encode_gateway_status(status: GatewayStatus) -> bytes:
    return _encoder.encode(status)


def decode_gateway_status(data: bytes | str) -> GatewayStatus:
    try:
        return _gateway_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"bad gateway status: {exc}") from exc


async def read_records(client: AsyncClient, prefix: str, decode: Callable[[bytes | str], T], *, limit: int) -> list[T]:
    """The valid status records under `prefix` (at most `limit` keys read); a bad one is skipped and logged."""
    keys = []
    async for key in client.scan_iter(match=prefix + "*", count=100):
        keys.append(key)
        if len(keys) >= limit:
            break
    records = []
    for key, value in zip(keys, await get_many(client, keys), strict=True):
        if value is None:
            continue  # expired between the scan and the read
        try:
            records.append(decode(value))
        except PayloadError as exc:
            logger.warning("skipped an invalid status record", extra={"key": repr(key)[:100], "error": str(exc)})
    return records
