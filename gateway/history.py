"""Reads of what Redis keeps for recovery: notification and execution streams, states, read marks.

Positions are stream entry ids (``<ms>-<n>``). They only grow within one
stream, which is what makes "everything after position P" well defined.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Final

from gateway.batching import Query, SharedPipeline
from shared import names
from shared.redis_target import AsyncClient

logger = logging.getLogger(__name__)

POSITION_RE: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# Listing read notifications scans the stream this many entries at a time,
# and at most MAX_SCANNED per request, whatever the page size asked for.
SCAN_BATCH: Final = 200
MAX_SCANNED: Final = 2000
ORIGIN: Final = "0-0"


def position_key(position: str) -> tuple[int, int]:
    """Order of positions: numeric on both parts."""
    ms, _, seq = position.partition("-")
    return int(ms), int(seq)


def newer(a: str | None, b: str) -> bool:
    """Whether position `a` is after `b` (None is before everything)."""
    return a is not None and position_key(a) > position_key(b)


@dataclass(frozen=True, slots=True)
class Entry:
    position: str
    data: bytes


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry_id: Any, fields: Any) -> Entry:
    data = fields.get(b"data", b"") if isinstance(fields, dict) else b""
    return Entry(_text(entry_id), data if isinstance(data, bytes) else str(data).encode())


def _state_entry(value: Any) -> Entry | None:
    """An execution state as the script stores it, "<version> <position> <json>"; None if it is not one."""
    parts = bytes(value).split(b" ", 2)
    if len(parts) != 3 or not POSITION_RE.fullmatch(parts[1].decode(errors="replace")):
        return None
    return Entry(parts[1].decode(), parts[2])


def _newest(replies: list[Any]) -> str | Exception:
    (rows,) = replies
    return rows if isinstance(rows, Exception) else _text(rows[0][0]) if rows else ORIGIN


def last_position_query(stream: str) -> Query[str]:
    """The position of the stream's newest entry (ORIGIN if it has none), as a query to ask beside others."""
    return Query((("XREVRANGE", stream, "+", "-", "COUNT", 1),), _newest)


class History:
    """Stream reads for one node; each method is one or two round trips (`last_position`: one for many callers)."""

    def __init__(self, client: AsyncClient, pipeline: SharedPipeline, *, max_age_ms: int) -> None:
        self._redis = client
        self._pipeline = pipeline  # last positions ride it beside other connects' queries
        self._max_age_ms = max_age_ms

    async def after(self, stream: str, position: str, count: int) -> list[Entry]:
        """Up to `count` entries after `position`, oldest first."""
        rows = await self._redis.xrange(stream, min="(" + position, max="+", count=count)
        return [_entry(entry_id, fields) for entry_id, fields in rows or ()]

    async def last_position(self, stream: str) -> str:
        """The position of the stream's newest entry (ORIGIN if it has none)."""
        return await self._pipeline.ask(last_position_query(stream))

    async def retained_since(self, stream: str, position: str, now_ms: int) -> bool:
        """Whether every entry after `position` is still stored (none trimmed or expired).

        Positions are ``<ms>-<n>`` with n counting the stream's entries, so the
        first stored entry tells whether any after the client's were trimmed.
        """
        rows = await self._redis.xrange(stream, min="-", max="+", count=1)
        since_ms, since_n = position_key(position)
        if since_ms == 0:
            # The position of a stream that was empty when the client read it ("0-0"): it has
            # no time, so only a trimmed start (the first stored entry is not the first one) is a loss.
            return not rows or position_key(_text(rows[0][0]))[1] <= since_n + 1
        if not rows:
            # No stream: nothing published within the retention age, or all of it expired.
            return now_ms - since_ms < self._max_age_ms
        first_ms, first_n = position_key(_text(rows[0][0]))
        return first_n <= since_n + 1 and first_ms - since_ms < self._max_age_ms

    async def execution_states(self, team_id: str, now_ms: int) -> list[Entry]:
        """The latest state of each of the team's executions still kept, oldest position first."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(names.execution_states(team_id))
        pipe.zrangebyscore(names.finished_executions(team_id), "-inf", now_ms)
        states, expired = await pipe.execute()
        gone = {_text(e) for e in expired}
        entries = []
        for execution_id, value in states.items():
            if _text(execution_id) in gone:
                continue
            entry = _state_entry(value)
            if entry is None:
                logger.warning("skipped a malformed execution state", extra={"team": team_id})
            else:
                entries.append(entry)
        entries.sort(key=lambda e: position_key(e.position))
        return entries

    async def unread_count(self, user_id: str) -> int:
        return int(await self._redis.zcard(names.unread_notifications(user_id)))

    async def mark_read(self, user_id: str, positions: list[str] | None) -> int:
        """Mark positions (None: all) read; returns the unread count afterwards."""
        key = names.unread_notifications(user_id)
        pipe = self._redis.pipeline(transaction=True)
        if positions is None:
            pipe.delete(key)
        elif positions:
            pipe.zrem(key, *positions)
        pipe.zcard(key)
        results = await pipe.execute()
        return int(results[-1])

    async def unread_page(self, user_id: str, offset: int, limit: int) -> list[Entry]:
        """Unread notifications, newest first."""
        positions = [
            _text(p)
            for p in await self._redis.zrevrange(names.unread_notifications(user_id), offset, offset + limit - 1)
        ]
        return await self._entries(names.notification_stream(user_id), positions)

    async def read_page(self, user_id: str, before: str | None, limit: int) -> tuple[list[Entry], str | None]:
        """Read notifications, newest first, older than `before`; and the cursor of the next page.

        The stream is scanned in batches of a fixed size, whatever `limit` is, and a request scans at
        most `MAX_SCANNED` entries (then returns what it found, with a cursor to go on): a small limit
        costs no more round trips than a large one.
        """
        stream, unread = names.notification_stream(user_id), names.unread_notifications(user_id)
        collected: list[Entry] = []
        cursor = before
        scanned = 0
        while scanned < MAX_SCANNED:
            rows = await self._redis.xrevrange(stream, max="(" + cursor if cursor else "+", min="-", count=SCAN_BATCH)
            if not rows:
                return collected, None
            batch = [_entry(i, f) for i, f in rows]
            scanned += len(batch)
            scores = await self._redis.zmscore(unread, [e.position for e in batch])
            for entry, score in zip(batch, scores, strict=True):
                cursor = entry.position
                if score is None:
                    collected.append(entry)
                    if len(collected) == limit:
                        return collected, entry.position
            if len(rows) < SCAN_BATCH:
                return collected, None
        return collected, cursor

    async def _entries(self, stream: str, positions: list[str]) -> list[Entry]:
        pipe = self._redis.pipeline(transaction=False)
        for position in positions:
            pipe.xrange(stream, min=position, max=position, count=1)
        return [_entry(*rows[0]) for rows in await pipe.execute() if rows]
