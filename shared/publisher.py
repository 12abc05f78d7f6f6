"""Publishing helpers for backend services and collectors.

Both publishers build the same commands (see `_Commands`); the async one is
for asyncio services and the collectors, the sync one for everything else.
A service in another language runs the same Redis commands itself: they are
documented in docs/protocol.md ("Redis contract").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec
import redis
import redis.asyncio

from shared import codec, names
from shared.codec import StreamKind
from shared.errors import PayloadError
from shared.events import AnyMarketEvent, ExecutionUpdate, Notification

# Stores a record in its stream and announces it, atomically, so a record is
# never announced without being stored nor stored without its position being
# announced. Entry ids are the positions clients resume from.
#   KEYS[1] stream   ARGV: channel, kind, json, max entries, max age (ms)
PUBLISH_SCRIPT: Final = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'kind', ARGV[2], 'data', ARGV[3])
local now = tonumber(string.match(id, '^(%d+)'))
redis.call('XTRIM', KEYS[1], 'MINID', '~', tostring(now - tonumber(ARGV[5])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], '{"pos":"' .. id .. '","kind":"' .. ARGV[2] .. '","data":' .. ARGV[3] .. '}')
return id
"""

DEFAULT_MAX_ENTRIES: Final = 1000
DEFAULT_MAX_AGE_MS: Final = 7 * 24 * 3600 * 1000
DEFAULT_LATEST_TTL_S: Final = 3600


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a user's or team's history is kept for recovery."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_age_ms: int = DEFAULT_MAX_AGE_MS


def _validated(record: msgspec.Struct) -> bytes:
    """Round-trip through the decoder so a constructed record obeys the schema too."""
    data = codec.encode(record)
    decode = codec.decode_notification if isinstance(record, Notification) else codec.decode_execution
    try:
        decode(data)
    except PayloadError as exc:
        raise PayloadError(f"refusing to publish: {exc}") from exc
    return data


@dataclass(frozen=True, slots=True)
class _Commands:
    """The Redis commands of each publish, shared by both publishers."""

    retention: Retention
    latest_ttl_s: int

    def stream_args(self, record: Notification | ExecutionUpdate) -> tuple[list[str], list[str]]:
        if isinstance(record, Notification):
            stream = names.notification_stream(record.user_id)
            channel, kind = names.user_channel(record.user_id), StreamKind.NOTIFICATION
        else:
            stream = names.execution_stream(record.team_id)
            channel, kind = names.team_channel(record.team_id), StreamKind.EXECUTION
        args = [
            channel,
            str(kind),
            _validated(record).decode(),
            str(self.retention.max_entries),
            str(self.retention.max_age_ms),
        ]
        return [stream], args


class AsyncPublisher:
    """Publishes market events, notifications and execution updates from asyncio code."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        retention: Retention | None = None,
        latest_ttl_s: int = DEFAULT_LATEST_TTL_S,
    ) -> None:
        self._redis = client
        self._commands = _Commands(retention or Retention(), latest_ttl_s)
        self._script = client.register_script(PUBLISH_SCRIPT)

    async def publish_market(self, events: list[AnyMarketEvent]) -> None:
        """Publish a batch of market events in one pipeline round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            topic = event.topic
            data = codec.encode(event)
            pipe.publish(names.market_channel(topic), data)
            if topic.has_snapshot:
                pipe.set(names.latest_key(topic), data, ex=self._commands.latest_ttl_s)
        await pipe.execute()

    async def publish(self, record: Notification | ExecutionUpdate) -> str:
        """Store and announce one record; returns its position."""
        keys, args = self._commands.stream_args(record)
        position = await self._script(keys=keys, args=args)
        return position.decode() if isinstance(position, bytes) else str(position)


class SyncPublisher:
    """The blocking twin of AsyncPublisher for services without an event loop."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention: Retention | None = None,
        latest_ttl_s: int = DEFAULT_LATEST_TTL_S,
    ) -> None:
        self._redis = client
        self._commands = _Commands(retention or Retention(), latest_ttl_s)
        self._script = client.register_script(PUBLISH_SCRIPT)

    def publish(self, record: Notification | ExecutionUpdate) -> str:
        keys, args = self._commands.stream_args(record)
        position = self._script(keys=keys, args=args)
        return position.decode() if isinstance(position, bytes) else str(position)
