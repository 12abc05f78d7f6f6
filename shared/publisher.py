"""Publishing helpers for backend services and collectors.

Both publishers build the same commands (see `_Commands`); the async one is
for asyncio services and the collectors, the sync one for everything else.
A service in another language runs the same Redis commands itself: they are
documented in docs/protocol.md ("Redis contract").
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import msgspec
import redis
import redis.asyncio
import redis.asyncio.client
import redis.client
import redis.exceptions
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.cluster import ClusterPipeline

from shared import codec, names, resp
from shared.codec import Revocation
from shared.errors import PayloadError
from shared.events import FINAL_STATUSES, AnyMarketEvent, Candle, ExecutionUpdate, Notification
from shared.record_checks import PRELUDE, record_check
from shared.redis_target import AsyncClient, RedisTarget, SyncClient, publish_command
from shared.topics import Exchange, Kind, Timeframe, Topic

# The next entry id of a stream: "<ms>-<n>", where n counts the stream's
# entries (it never repeats while the stream lives) and ms is Redis's clock,
# never going back. A reader compares a client's n with the first stored n
# to know whether anything after the client's position was trimmed.
NEXT_ID_LUA: Final = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local clock = redis.call('TIME')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local n = 1
if last[1] then
  local last_ms, last_n = string.match(last[1][1], '^(%d+)-(%d+)$')
  n = tonumber(last_n) + 1
  if tonumber(last_ms) > ms then ms = tonumber(last_ms) end
end
local next_id = string.format('%d-%d', ms, n)
"""


# The announcing command: PUBLISH on a single Redis, SPUBLISH (sharded: only the channel's slot
# owner delivers it) in a cluster. An optional last argument, so callers of the older form still work.
PUBLISH_LUA: Final = """
local publish = 'PUBLISH'
if ARGV[{arg}] == 'SPUBLISH' then publish = 'SPUBLISH'
elseif ARGV[{arg}] and ARGV[{arg}] ~= 'PUBLISH' then return invalid('the last argument must be PUBLISH or SPUBLISH') end
""".strip()


def _lua_name(name: Callable[[str], str], owner: str) -> str:
    """A Redis name of `shared.names` as a Lua expression of the record's owner field."""
    prefix, suffix = name("\x00").split("\x00")
    return f"'{prefix}' .. {owner} .. '{suffix}'"


# Stores a notification in its user's stream (and, unless already read, in
# the unread set) and announces it, atomically: a record is never announced
# without being stored, and never stored unless the gateway will deliver it.
# Entry ids are the positions clients resume from.
NOTIFICATION_SCRIPT: Final = "\n".join(
    [
        PRELUDE.strip(),
        record_check(Notification, "notification"),
        f"if KEYS[1] ~= {_lua_name(names.notification_stream, 'record.user_id')}"
        f" or KEYS[2] ~= {_lua_name(names.unread_notifications, 'record.user_id')}"
        f" or (KEYS[3] and KEYS[3] ~= {_lua_name(names.notification_ids, 'record.user_id')})"
        f" or ARGV[1] ~= {_lua_name(names.user_channel, 'record.user_id')} then",
        "  return invalid('the keys and the channel must be those of user_id')",
        "end",
        PUBLISH_LUA.format(arg=6),
        NEXT_ID_LUA.strip(),
        """
if KEYS[3] and redis.call('ZSCORE', KEYS[3], record.id) then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], next_id, 'data', ARGV[2])
local now = ms
local oldest = now - tonumber(ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
if ARGV[5] == '1' then redis.call('ZADD', KEYS[2], now, id) end
for i = 2, #KEYS do
  if i == 3 then redis.call('ZADD', KEYS[3], now, record.id) end
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. oldest)
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -tonumber(ARGV[3]) - 1)
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
redis.call(publish, ARGV[1], '{"pos":"' .. id .. '","kind":"notification","data":' .. ARGV[2] .. '}')
return id
""".strip(),
    ]
)

# Stores an execution update unless the team already holds a newer (or the
# same) version of that execution, keeps it as the execution's latest state
# (finished ones expire after ARGV[7] ms), and announces it, atomically.
EXECUTION_SCRIPT: Final = "\n".join(
    [
        PRELUDE.strip(),
        record_check(ExecutionUpdate, "execution update"),
        f"if KEYS[1] ~= {_lua_name(names.execution_stream, 'record.team_id')}"
        f" or KEYS[2] ~= {_lua_name(names.execution_states, 'record.team_id')}"
        f" or KEYS[3] ~= {_lua_name(names.finished_executions, 'record.team_id')}"
        f" or ARGV[1] ~= {_lua_name(names.team_channel, 'record.team_id')} then",
        "  return invalid('the keys and the channel must be those of team_id')",
        "end",
        "if ARGV[5] ~= record.execution_id or tonumber(ARGV[6]) ~= record.version then",
        "  return invalid('the execution id and version arguments must be the record\\'s')",
        "end",
        PUBLISH_LUA.format(arg=8),
        NEXT_ID_LUA.strip(),
        """
local held = redis.call('HGET', KEYS[2], ARGV[5])
if held and tonumber(string.match(held, '^(%d+)')) >= tonumber(ARGV[6]) then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], next_id, 'data', ARGV[2])
local now = ms
redis.call('XTRIM', KEYS[1], 'MINID', '~', now - tonumber(ARGV[4]))
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6] .. ' ' .. id .. ' ' .. ARGV[2])
if ARGV[7] ~= '0' then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[5])
else
  redis.call('ZREM', KEYS[3], ARGV[5])
end
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('HDEL', KEYS[2], expired)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
redis.call(publish, ARGV[1], '{"pos":"' .. id .. '","kind":"execution","data":' .. ARGV[2] .. '}')
return id
""".strip(),
    ]
)

DEFAULT_MAX_ENTRIES: Final = 1000
DEFAULT_MAX_AGE_MS: Final = 7 * 24 * 3600 * 1000
DEFAULT_LATEST_TTL_S: Final = 3600
DEFAULT_FINISHED_TTL_MS: Final = 24 * 3600 * 1000
# How long a user revocation refuses tokens issued before it: make it at
# least the longest lifetime of the tokens you issue.
DEFAULT_REVOCATION_TTL_S: Final = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a user's or team's history is kept for recovery."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_age_ms: int = DEFAULT_MAX_AGE_MS
    finished_ttl_ms: int = DEFAULT_FINISHED_TTL_MS  # how long a finished execution's state is kept


def _validated(record: msgspec.Struct) -> bytes:
    """Round-trip through the decoder so a constructed record obeys the schema too."""
    data = codec.encode(record)
    decode = codec.decode_notification if isinstance(record, Notification) else codec.decode_execution
    try:
        decode(data)
    except PayloadError as exc:
        raise PayloadError(f"refusing to publish: {exc}") from exc
    return data


AnyPipeline = redis.client.Pipeline | redis.asyncio.client.Pipeline | ClusterPipeline | AsyncClusterPipeline


# A market topic as the publishers look it up: exchange, kind, symbol, candle timeframe.
TopicKey = tuple[Exchange, Kind, str, Timeframe | None]


def _market_key(event: AnyMarketEvent) -> TopicKey:
    return event.exchange, event.KIND, event.symbol, event.timeframe if isinstance(event, Candle) else None


# Built once per topic rather than per event: a collector publishes tens of thousands of events
# a second over a few hundred topics. Bounded, for a service that publishes to ever new ones.
@functools.lru_cache(maxsize=4096)
def _topic_names(exchange: Exchange, kind: Kind, symbol: str, timeframe: Timeframe | None) -> tuple[str, str | None]:
    """The channel of a topic and, for snapshot topics, its latest-value key."""
    topic = Topic.of(exchange, kind, symbol, timeframe)
    return names.market_channel(topic), names.latest_key(topic) if topic.has_snapshot else None


def _staged(events: list[AnyMarketEvent]) -> Iterator[tuple[TopicKey, bool, bytes]]:
    """(topic, whether to SET its latest value, payload) of each event of a batch.

    A latest-value key is SET once per batch, with the newest event of its topic, right
    after that event's announcement: the SETs of older events would be overwritten within
    the same pipeline. A busy book publishes hundreds of views a second, so this halves the
    commands of a batch.
    """
    staged = [(_market_key(event), codec.encode(event)) for event in events]
    newest = {topic: index for index, (topic, _) in enumerate(staged)}
    for index, (topic, data) in enumerate(staged):
        yield topic, newest[topic] == index, data


@functools.lru_cache(maxsize=4096)
def _resp_heads(publish: str, topic: TopicKey) -> tuple[bytes, bytes | None]:
    """A topic's RESP command heads, up to the payload: PUBLISH (or SPUBLISH) and, for snapshot topics, SET."""
    channel, key = _topic_names(*topic)
    publish_head = b"*3\r\n" + resp.bulk(publish) + resp.bulk(channel)
    return publish_head, b"*5\r\n" + resp.bulk("SET") + resp.bulk(key) if key is not None else None


@dataclass(frozen=True, slots=True)
class _Commands:
    """The Redis commands of each publish, shared by both publishers: (script, keys, args).

    `publish` is PUBLISH on a single Redis and SPUBLISH in a cluster (`shared.redis_target`).
    """

    retention: Retention
    latest_ttl_s: int
    publish: str

    def market(self, pipe: AnyPipeline, events: list[AnyMarketEvent]) -> None:
        """Queue each event's announcement (and latest-value SET for snapshot topics) on `pipe`."""
        publish = self.publish
        for topic, latest, data in _staged(events):
            channel, key = _topic_names(*topic)
            pipe.execute_command(publish, channel, data)
            if latest and key is not None:
                pipe.execute_command("SET", key, data, "EX", self.latest_ttl_s)  # set()'s argument checks cost more

    def market_resp(self, events: list[AnyMarketEvent]) -> tuple[bytes, int]:
        """The same commands as `market` as one RESP payload, and how many commands it holds."""
        parts: list[bytes] = []
        ttl = b"\r\n" + resp.bulk("EX") + resp.bulk(str(self.latest_ttl_s))
        commands = 0
        for topic, latest, data in _staged(events):
            publish_head, set_head = _resp_heads(self.publish, topic)
            length = b"$%d\r\n" % len(data)
            parts += (publish_head, length, data, b"\r\n")
            commands += 1
            if latest and set_head is not None:
                parts += (set_head, length, data, ttl)
                commands += 1
        return b"".join(parts), commands

    def revocation(self, pipe: AnyPipeline, revocation: Revocation, ttl_s: int) -> tuple[str, bytes]:
        """Queue the revocation's keys on `pipe`; returns the announcement, to send once they are stored.

        Stored first, announced after (not in one MULTI: in a cluster the keys and the control channel
        live in different slots), so a socket closed by the announcement cannot reconnect past the keys.
        """
        if revocation.user_id is not None:
            pipe.set(names.revoked_user(revocation.user_id), int(time.time() * 1000), ex=ttl_s)
        if revocation.token_id is not None:
            pipe.set(names.revoked_token(revocation.token_id), 1, ex=ttl_s)
        return names.CONTROL_CHANNEL, codec.encode(revocation)

    def record(self, record: Notification | ExecutionUpdate) -> tuple[str, list[str], list[str]]:
        data = _validated(record).decode()
        limits = [str(self.retention.max_entries), str(self.retention.max_age_ms)]
        if isinstance(record, Notification):
            user = record.user_id
            keys = [names.notification_stream(user), names.unread_notifications(user), names.notification_ids(user)]
            args = [names.user_channel(user), data, *limits, "0" if record.read else "1", self.publish]
            return NOTIFICATION_SCRIPT, keys, args
        keys = [
            names.execution_stream(record.team_id),
            names.execution_states(record.team_id),
            names.finished_executions(record.team_id),
        ]
        keep_ms = self.retention.finished_ttl_ms if record.status in FINAL_STATUSES else 0
        args = [
            names.team_channel(record.team_id),
            data,
            *limits,
            record.execution_id,
            str(record.version),
            str(keep_ms),
            self.publish,
        ]
        return EXECUTION_SCRIPT, keys, args


@contextmanager
def _refusals() -> Iterator[None]:
    """A script's refusal of a record (its error reply) as the PayloadError the library raises for it."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith("invalid "):
            raise PayloadError(f"refused by the publish script: {exc}") from exc
        raise


def _position(reply: object) -> str | None:
    if reply is None:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class AsyncPublisher:
    """Publishes market events, notifications and execution updates from asyncio code.

    `client` is a Redis or a RedisCluster (`shared.redis_target.RedisTarget.async_client`). A publish
    that raised (a failover, a dropped connection) may be retried: a notification id already stored
    is not stored or announced again (`publish` returns None), nor is an execution version.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        retention: Retention | None = None,
        latest_ttl_s: int = DEFAULT_LATEST_TTL_S,
    ) -> None:
        self._redis = client
        self._commands = _Commands(retention or Retention(), latest_ttl_s, publish_command(client))
        self._scripts = {text: client.register_script(text) for text in (NOTIFICATION_SCRIPT, EXECUTION_SCRIPT)}

    async def publish_market(self, events: list[AnyMarketEvent]) -> None:
        """Publish a batch of market events in one pipeline round trip."""
        pipe = self._redis.pipeline(transaction=False)
        self._commands.market(pipe, events)
        await pipe.execute()

    async def publish(self, record: Notification | ExecutionUpdate) -> str | None:
        """Store and announce one record; returns its position, or None when it was already stored.

        None: an execution update whose version (or a newer one) the team holds, or a notification
        whose id its user's stream holds (a retried publish).
        """
        script, keys, args = self._commands.record(record)
        with _refusals():
            return _position(await self._scripts[script](keys=keys, args=args))

    async def revoke(
        self,
        *,
        user_id: str | None = None,
        token_id: str | None = None,
        ttl_s: int = DEFAULT_REVOCATION_TTL_S,
    ) -> None:
        """Disconnect a user's sockets (or one token's) on every node, and refuse them from now on."""
        revocation = codec.decode_revocation(codec.encode(Revocation(user_id=user_id, token_id=token_id)))
        pipe = self._redis.pipeline(transaction=False)
        channel, announcement = self._commands.revocation(pipe, revocation, ttl_s)
        await pipe.execute()
        await self._redis.execute_command(self._commands.publish, channel, announcement)


class RespPublisher:
    """Publishes market events on a lean connection of its own (`shared.resp`): a single Redis only.

    The same commands as `AsyncPublisher.publish_market`, with each pipeline built as bytes at
    once; a collector's sink publishes through it, with `send_market`, keeping a few pipelines
    in flight. A lost connection is opened again by `connect`. A batch that failed may be sent
    again whole: its subscribers may then see some events twice, and tell by their ``seq``.
    """

    def __init__(
        self, target: RedisTarget, *, latest_ttl_s: int = DEFAULT_LATEST_TTL_S, timeout_s: float = 5.0
    ) -> None:
        if target.cluster:
            raise ValueError("RespPublisher publishes to a single Redis; use AsyncPublisher for a cluster")
        self._target = target
        self._timeout = timeout_s
        self._commands = _Commands(Retention(), latest_ttl_s, "PUBLISH")
        self._conn: resp.RespConnection | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    async def connect(self) -> None:
        """Open the connection unless it is open; raises ConnectionError (AuthenticationError) within the timeout."""
        if not self.connected:
            self._conn = await resp.RespConnection.open(self._target, timeout_s=self._timeout)

    def send_market(self, events: list[AnyMarketEvent]) -> asyncio.Future[list[object]]:
        """Write a batch's pipeline now; the future gets its replies (a `ResponseError` among them: refused).

        It fails with ConnectionError when the connection is lost or Redis does not answer
        within the timeout. Raises ConnectionError at once unless connected.
        """
        if self._conn is None:
            raise redis.exceptions.ConnectionError("not connected: connect() first")
        payload, count = self._commands.market_resp(events)
        return self._conn.send(payload, count)

    async def publish_market(self, events: list[AnyMarketEvent]) -> None:
        """Publish a batch and wait for its replies; raises ResponseError if Redis refused any of its commands."""
        await self.connect()
        for reply in await self.send_market(events):
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SyncPublisher:
    """The blocking twin of AsyncPublisher for services without an event loop."""

    def __init__(
        self,
        client: SyncClient,
        *,
        retention: Retention | None = None,
        latest_ttl_s: int = DEFAULT_LATEST_TTL_S,
    ) -> None:
        self._redis = client
        self._commands = _Commands(retention or Retention(), latest_ttl_s, publish_command(client))
        self._scripts = {text: client.register_script(text) for text in (NOTIFICATION_SCRIPT, EXECUTION_SCRIPT)}

    def publish_market(self, events: list[AnyMarketEvent]) -> None:
        """Publish a batch of market events in one pipeline round trip."""
        pipe = self._redis.pipeline(transaction=False)
        self._commands.market(pipe, events)
        pipe.execute()

    def publish(self, record: Notification | ExecutionUpdate) -> str | None:
        """Store and announce one record; returns its position, or None when it was already stored.

        None: an execution update whose version (or a newer one) the team holds, or a notification
        whose id its user's stream holds (a retried publish).
        """
        script, keys, args = self._commands.record(record)
        with _refusals():
            return _position(self._scripts[script](keys=keys, args=args))

    def revoke(
        self,
        *,
        user_id: str | None = None,
        token_id: str | None = None,
        ttl_s: int = DEFAULT_REVOCATION_TTL_S,
    ) -> None:
        """Disconnect a user's sockets (or one token's) on every node, and refuse them from now on."""
        revocation = codec.decode_revocation(codec.encode(Revocation(user_id=user_id, token_id=token_id)))
        pipe = self._redis.pipeline(transaction=False)
        channel, announcement = self._commands.revocation(pipe, revocation, ttl_s)
        pipe.execute()
        self._redis.execute_command(self._commands.publish, channel, announcement)  # type: ignore[no-untyped-call]
