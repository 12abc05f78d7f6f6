"""Cluster-wide connection caps and presence, kept in Redis by every node.

Connections: each user's open sockets on every node are members ("<node> <sid>")
of `connections:{<user>}`, scored by when they expire. A CONNECT claims one
with a script in the user's slot (expired members dropped, the cap checked
and the member added atomically, so parallel CONNECTs on any nodes cannot
overshoot); a disconnect removes it; each node renews its members every
HEARTBEAT_S, so the members of a node that died lapse within TTL_MS.

Presence: per market topic, `presence:topic:<topic>` is a hash of node ->
"<subscribers> <expiry ms>", written every HEARTBEAT_S by each node for the
topics it holds (a script that also drops lapsed nodes' fields); per team,
`presence:{<team>}` is a sorted set of online user ids scored by expiry.
Readers sum the unexpired fields, or count the unexpired members. The cost is
bounded by what a node holds: per period one script per held topic, one per
team with online users, one per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.batching import Command, Query, SharedPipeline
from gateway.errors import RequestError
from gateway.policy import TopicPolicy
from gateway.sessions import Session
from shared import names
from shared.errors import TopicError
from shared.redis_target import REDIS_ERRORS, AsyncClient
from shared.topics import Topic

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 5.0
TTL_MS: Final = 15_000  # three heartbeats: a dead node's connections and presence lapse within this
MAX_USERS_LISTED: Final = 100  # online users of a team a `presence` answer lists (the count is complete)
# Commands (claims renewed, given back) per round trip. Packing a pipeline and reading its replies
# holds the event loop, so a node's claims in one would delay every delivery each HEARTBEAT_S (about
# 13 ms for 1,000 claims, measured with redis-py); between two round trips the loop runs.
HEARTBEAT_BATCH: Final = 100

_NOW_LUA: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
""".strip()

# KEYS[1] connections:{user}; ARGV: member, ttl ms, cap. 1: held (claimed or renewed), 0: the cap is reached.
CLAIM_SCRIPT: Final = f"""
{_NOW_LUA}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""".strip()

# KEYS[1] presence:topic:<topic>; ARGV: node, subscribers (0 removes the node's field), ttl ms.
TOPIC_SCRIPT: Final = f"""
{_NOW_LUA}
if ARGV[2] == '0' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3]))) end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local expiry = string.match(fields[i + 1], '^%d+ (%d+)$')
  if not expiry or tonumber(expiry) <= now then redis.call('HDEL', KEYS[1], fields[i]) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
""".strip()

# KEYS[1] presence:{team}; ARGV: ttl ms, user ids online on this node.
TEAM_SCRIPT: Final = f"""
{_NOW_LUA}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""".strip()


def first_error(replies: list[Any]) -> Exception | None:
    """The first failed command's error among `replies`, if one failed."""
    return next((reply for reply in replies if isinstance(reply, Exception)), None)


def topic_total(fields: Mapping[Any, Any], now_ms: int) -> int:
    """Subscribers of a topic on every node: the unexpired "<count> <expiry>" fields summed; bad ones skipped."""
    total = 0
    for value in fields.values():
        count, _, expiry = (value.decode(errors="replace") if isinstance(value, bytes) else str(value)).partition(" ")
        if count.isdigit() and expiry.isdigit() and int(expiry) > now_ms and len(count) < 10:
            total += int(count)
    return total


class Presence:
    """This node's share of the cluster-wide connection counts and presence."""

    def __init__(
        self,
        client: AsyncClient,
        pipeline: SharedPipeline,
        *,
        node: str,
        topics: Callable[[], dict[str, int]],
        teams: Callable[[], dict[str, set[str]]],
        policy: TopicPolicy,
        max_items: int,
    ) -> None:
        self._redis = client
        self._policy = policy
        self._max_items = max_items
        self._node = node
        self._topics = topics  # market topic -> this node's subscribers
        self._teams = teams  # team -> its users online on this node
        self._pipeline = pipeline  # claims ride it beside other connects' queries
        self._held: dict[str, str] = {}  # sid -> user of every claimed connection
        self._releasing: dict[str, str] = {}  # sid -> user of connections given back, not yet removed
        self._wake = asyncio.Event()
        self._closing = False
        self._written: set[str] = set()  # topics this node wrote a count for last time

    def _member(self, sid: str) -> str:
        return f"{self._node} {sid}"

    def claim_command(self, sid: str, user_id: str, cap: int) -> Command:
        """The command that takes one of the user's `cap` connections across all nodes; `claimed` reads its reply.

        A connect sends it in the same query as its revocation reads (`Admission.claim_query`).
        """
        # EVAL, not EVALSHA: no NOSCRIPT round trip after a failover (Redis caches the script by its hash).
        return ("EVAL", CLAIM_SCRIPT, 1, names.connection_set(user_id), self._member(sid), TTL_MS, cap)

    def claimed(self, sid: str, user_id: str, reply: Any) -> bool | Exception:
        """Whether `claim_command`'s reply took the connection; a Redis error is returned as it is.

        A connection taken is recorded here, not by the caller: it is given back even if the caller went away.
        """
        if reply == 1:
            if self._closing:
                self._releasing[sid] = user_id  # landed after `close` began: given back at once
            else:
                self._held[sid] = user_id
        return reply if isinstance(reply, Exception) else reply == 1

    def release(self, sid: str) -> None:
        """Give back a claimed connection: removed in Redis by the next flush, at once (a failure: it lapses)."""
        user_id = self._held.pop(sid, None)
        if user_id is not None:
            self._releasing[sid] = user_id
            self._wake.set()

    async def run(self) -> None:
        """Flush releases as they come and renew this node's share every HEARTBEAT_S, until `close`."""
        beat = 0.0
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, beat - time.monotonic()))
            self._wake.clear()
            try:
                await self._flush_releases()
                if time.monotonic() >= beat:
                    beat = time.monotonic() + HEARTBEAT_S
                    await self.heartbeat()
            except REDIS_ERRORS as exc:
                logger.warning("presence heartbeat failed; lapsing entries expire", extra={"error": str(exc)})

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop `run` (between two Redis calls, never inside one) and give back every connection still held.

        Claims asked before this call may still land: they are given back too (see `claim`).
        """
        self._closing = True
        self._wake.set()
        self._releasing.update(self._held)
        self._held.clear()
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._pipeline.settle()
                await self._flush_releases()

    async def _flush_releases(self) -> None:
        releasing, self._releasing = self._releasing, {}
        removals: list[Command] = [
            ("ZREM", names.connection_set(user_id), self._member(sid)) for sid, user_id in releasing.items()
        ]
        await self._write(removals)

    async def heartbeat(self) -> None:
        # EVAL (split per node in a cluster): no NOSCRIPT round trips after a failover.
        held = list(self._held.items())
        for start in range(0, len(held), HEARTBEAT_BATCH):
            if self._closing:
                return
            # A claim of a held member renews it; a cap reached since cannot drop an open socket.
            renewals: list[Command] = [
                ("EVAL", CLAIM_SCRIPT, 1, names.connection_set(user_id), self._member(sid), TTL_MS, 2**31)
                for sid, user_id in held[start : start + HEARTBEAT_BATCH]
                if sid in self._held  # not given back since this heartbeat began
            ]
            await self._write(renewals)
        topics = self._topics()
        counts = [*((topic, 0) for topic in self._written - set(topics)), *topics.items()]  # 0 removes the field
        self._written = set(topics)
        scripts: list[Command] = [
            ("EVAL", TOPIC_SCRIPT, 1, names.presence_topic(topic), self._node, count, TTL_MS) for topic, count in counts
        ]
        for team, users in self._teams().items():
            scripts.append(("EVAL", TEAM_SCRIPT, 1, names.presence_team(team), TTL_MS, *sorted(users)))
        await self._write(scripts)

    async def _write(self, commands: list[Command]) -> None:
        """Run `commands` on the shared pipeline, HEARTBEAT_BATCH a round trip; raises the first failed one's error."""
        for start in range(0, len(commands), HEARTBEAT_BATCH):
            await self._pipeline.ask(Query(tuple(commands[start : start + HEARTBEAT_BATCH]), first_error))

    async def request(self, session: Session, data: object) -> dict[str, object]:
        """A client's `presence` request: counts of topics it may subscribe to, online users of its own teams."""
        if not isinstance(data, dict) or not set(data) <= {"topics", "teams"}:
            raise RequestError("bad_request", "send { topics?: [topic, ...], teams?: [team, ...] }")
        topics, teams = data.get("topics", []), data.get("teams", [])
        if not (isinstance(topics, list) and isinstance(teams, list)):
            raise RequestError("bad_request", "topics and teams must be lists")
        if len(topics) + len(teams) > self._max_items:
            raise RequestError("bad_request", f"at most {self._max_items} topics and teams per request")
        topic_results = [self._topic_result(session, item) for item in topics]
        allowed = list(dict.fromkeys(str(r["topic"]) for r in topic_results if r["ok"]))
        own = [t for t in teams if isinstance(t, str) and t in session.identity.teams]
        try:
            counts = dict(zip(allowed, await self.topic_counts(allowed), strict=True))
            online = dict(zip(own, await self.team_users(own), strict=True))
        except REDIS_ERRORS as exc:
            raise RequestError("unavailable", "presence is unavailable; retry") from exc
        for result in topic_results:
            if result["ok"]:
                result["subscribers"] = counts[str(result["topic"])]
        team_results: list[dict[str, object]] = []
        for team in teams:
            if isinstance(team, str) and team in online:
                count, users = online[team]
                team_results.append({"team": team, "ok": True, "online": count, "users": users})
            else:
                team_results.append({"team": team, "ok": False, "error": "forbidden", "message": "not your team"})
        return {"ok": True, "topics": topic_results, "teams": team_results}

    def _topic_result(self, session: Session, item: object) -> dict[str, object]:
        try:
            topic = str(Topic.parse(item))
        except TopicError as exc:
            return {"topic": item, "ok": False, "error": "invalid_topic", "message": str(exc)}
        if not self._policy.allows(topic, session.user_patterns):
            return {"topic": topic, "ok": False, "error": "forbidden", "message": "this token may not see that topic"}
        return {"topic": topic, "ok": True}

    async def topic_counts(self, topics: list[str]) -> list[int]:
        """Subscribers of each topic on every node."""
        pipe = self._redis.pipeline(transaction=False)
        for topic in topics:
            pipe.hgetall(names.presence_topic(topic))
        now_ms = int(time.time() * 1000)
        return [topic_total(fields or {}, now_ms) for fields in await pipe.execute()]

    async def team_users(self, teams: list[str]) -> list[tuple[int, list[str]]]:
        """Online users of each team on every node: their number, and the first MAX_USERS_LISTED of them."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for team in teams:
            pipe.zcount(names.presence_team(team), now_ms, "+inf")
            pipe.zrangebyscore(names.presence_team(team), now_ms, "+inf", start=0, num=MAX_USERS_LISTED)
        replies = await pipe.execute()
        return [
            (int(count), sorted(u.decode(errors="replace") if isinstance(u, bytes) else str(u) for u in users))
            for count, users in zip(replies[::2], replies[1::2], strict=True)
        ]
