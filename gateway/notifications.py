"""Client requests about stored notifications: list, mark read, unread count."""

from __future__ import annotations

from typing import Final

import msgspec

from gateway.errors import RequestError
from gateway.history import ORIGIN, POSITION_RE, Entry, History
from gateway.metrics import GatewayMetrics
from gateway.sessions import Session
from shared import codec, names
from shared.codec import ReadMarks, StreamKind
from shared.errors import PayloadError
from shared.redis_target import REDIS_ERRORS, AsyncClient, publish_command

MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 20
MAX_MARKS: Final = 1000


def _positions(value: object, limit: int) -> list[str]:
    if not isinstance(value, list) or len(value) > limit:
        raise RequestError("bad_request", f"positions must be a list of at most {limit} positions")
    if not all(isinstance(p, str) and POSITION_RE.fullmatch(p) for p in value):
        raise RequestError("bad_request", "a position looks like 1700000000000-0")
    return list(dict.fromkeys(value))


class NotificationRequests:
    """The `notifications:*` events; every answer is an ack object."""

    def __init__(self, history: History, client: AsyncClient, metrics: GatewayMetrics) -> None:
        self._history = history
        self._redis = client
        self._metrics = metrics

    async def page(self, session: Session, data: object) -> dict[str, object]:
        """Unread first (newest first), then read ones; `cursor` pages through both."""
        request = data if isinstance(data, dict) else {}
        if data is not None and not isinstance(data, dict):
            raise RequestError("bad_request", "send an object: { limit?, cursor? }")
        limit = request.get("limit", DEFAULT_PAGE)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise RequestError("bad_request", f"limit must be an integer from 1 to {MAX_PAGE}")
        phase, offset, before = self._cursor(request.get("cursor"))
        user_id = session.identity.user_id
        items: list[dict[str, object]] = []
        try:
            if phase == "u":
                unread = await self._history.unread_page(user_id, offset, limit)
                items += self._items(unread, read=False)
                if len(unread) == limit:
                    return {"ok": True, "items": items, "cursor": f"u:{offset + limit}"}
                phase, before = "r", None
            read, next_position = await self._history.read_page(user_id, before, limit - len(items))
            items += self._items(read, read=True)
            unread_count = await self._history.unread_count(user_id)
        except REDIS_ERRORS as exc:
            raise RequestError("unavailable", "notifications are unavailable; retry") from exc
        cursor = f"r:{next_position}" if next_position else None
        return {"ok": True, "items": items, "cursor": cursor, "unread": unread_count}

    async def mark_read(self, session: Session, data: object) -> dict[str, object]:
        """Mark some positions, or all, read; every socket of the user hears of it."""
        if not isinstance(data, dict):
            raise RequestError("bad_request", "send { positions: [...] } or { all: true }")
        if data.get("all") is True:
            marks = ReadMarks(all=True)
        else:
            marks = ReadMarks(positions=_positions(data.get("positions"), MAX_MARKS))
        user_id = session.identity.user_id
        try:
            unread = await self._history.mark_read(user_id, None if marks.all else marks.positions)
            announcement = codec.encode_envelope(ORIGIN, StreamKind.READ, codec.encode(marks))
            await self._redis.execute_command(publish_command(self._redis), names.user_channel(user_id), announcement)
        except REDIS_ERRORS as exc:
            raise RequestError("unavailable", "notifications are unavailable; retry") from exc
        return {"ok": True, "unread": unread}

    async def unread(self, session: Session, _data: object = None) -> dict[str, object]:
        try:
            return {"ok": True, "unread": await self._history.unread_count(session.identity.user_id)}
        except REDIS_ERRORS as exc:
            raise RequestError("unavailable", "notifications are unavailable; retry") from exc

    @staticmethod
    def _cursor(value: object) -> tuple[str, int, str | None]:
        if value is None:
            return "u", 0, None
        if isinstance(value, str):
            phase, _, rest = value.partition(":")
            if phase == "u" and rest.isdigit() and len(rest) < 7:
                return "u", int(rest), None
            if phase == "r" and POSITION_RE.fullmatch(rest):
                return "r", 0, rest
        raise RequestError("bad_request", "cursor must be one returned by a previous list")

    def _items(self, entries: list[Entry], *, read: bool) -> list[dict[str, object]]:
        items: list[dict[str, object]] = []
        for entry in entries:
            try:
                notification = codec.decode_stored_notification(entry.data)
            except PayloadError:
                self._metrics.messages_rejected.labels("stored").inc()
                continue
            record = msgspec.structs.replace(notification, read=read)
            items.append({"notification": codec.to_builtins(record), "position": entry.position})
        return items
