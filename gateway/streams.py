"""Brings a socket's notifications and execution updates up to date, then live.

For each of the user's and teams' streams the node is already subscribed
to the live channel (the connect handler acquired it), so every record
published from then on is either read from the stream here or seen live by
the node. History is read until it reaches the newest position the node has
relayed on that channel; then, with no await in between, the socket joins
the room. That seam has no gap and no duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.fanout import Fanout
from gateway.history import ORIGIN, POSITION_RE, Entry, History, newer
from gateway.protocol.sio import SocketIOServer
from gateway.sessions import Session
from shared import names
from shared.errors import PayloadError

logger = logging.getLogger(__name__)

READ_BATCH: Final = 200


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a reconnecting client stands: its last position per stream (absent: a fresh start)."""

    notifications: str | None
    executions: Mapping[str, str]

    @classmethod
    def from_auth(cls, auth: object) -> tuple[Resume, bool]:
        """Parse `auth.positions`; the flag is false when some of it was unusable (and ignored)."""
        positions = auth.get("positions") if isinstance(auth, dict) else None
        if positions is None:
            return cls(None, {}), True
        if not isinstance(positions, dict):
            return cls(None, {}), False
        valid = True
        notifications = positions.get("notifications")
        if notifications is not None and not (isinstance(notifications, str) and POSITION_RE.fullmatch(notifications)):
            notifications, valid = None, False
        executions: dict[str, str] = {}
        raw = positions.get("executions", {})
        if isinstance(raw, dict):
            for team, position in raw.items():
                if isinstance(team, str) and isinstance(position, str) and POSITION_RE.fullmatch(position):
                    executions[team] = position
                else:
                    valid = False
        else:
            valid = False
        return cls(notifications, executions), valid


class StreamSync:
    """Per-connection catch-up of the user's and teams' streams."""

    def __init__(
        self,
        server: SocketIOServer,
        fanout: Fanout,
        history: History,
        *,
        max_recovery: int,
    ) -> None:
        self._server = server
        self._fanout = fanout
        self._history = history
        self._max_recovery = max_recovery

    async def start_position(self, session: Session, resume: Resume) -> str | None:
        """Where a fresh client's notifications start: read at connect time, so nothing after is missed."""
        if resume.notifications is not None:
            return None
        return await self._history.last_position(names.notification_stream(session.identity.user_id))

    async def sync(self, session: Session, resume: Resume, fresh_start: str | None) -> dict[str, object]:
        """Catch the socket up on every stream and join their rooms; returns what the client is told.

        `fresh_start` is `start_position()`'s answer for a client without a notifications position.
        """
        user_id = session.identity.user_id
        now_ms = int(time.time() * 1000)
        stream, channel = names.notification_stream(user_id), names.user_channel(user_id)
        if fresh_start is not None:
            notifications = await self._stream(session, stream, channel, fresh_start, now_ms, fresh=True)
        else:
            notifications = await self._stream(session, stream, channel, resume.notifications, now_ms)
        executions = {}
        for team in session.identity.teams:
            stream, channel = names.execution_stream(team), names.team_channel(team)
            since = resume.executions.get(team)
            if since is None:
                since = await self._send_states(session, team, channel, now_ms)
                executions[team] = await self._stream(session, stream, channel, since, now_ms, fresh=True)
            else:
                executions[team] = await self._stream(session, stream, channel, since, now_ms)
        complete = all(bool(part["complete"]) for part in (notifications, *executions.values()))
        return {"notifications": notifications, "executions": executions, "complete": complete}

    async def _send_states(self, session: Session, team: str, channel: str, now_ms: int) -> str:
        """Send the current state of each execution; returns the position they bring the client to."""
        position = ORIGIN
        for entry in await self._history.execution_states(team, now_ms):
            self._send(session, channel, entry)
            position = entry.position
        return position

    async def _stream(
        self,
        session: Session,
        stream: str,
        channel: str,
        since: str | None,
        now_ms: int,
        *,
        fresh: bool = False,
    ) -> dict[str, object]:
        if since is None:  # the connect-time read failed: start at the live end
            since, fresh = await self._history.last_position(stream), False
        complete = fresh or await self._history.retained_since(stream, since, now_ms)
        position, recovered = since, 0
        # A fresh start was read after the channel's subscription was confirmed:
        # unless something newer was relayed since, there is nothing to read.
        caught_up = fresh and not newer(self._fanout.live_position(channel), since)
        while not session.closed and not caught_up:
            entries = await self._history.after(stream, position, READ_BATCH)
            if recovered + len(entries) > self._max_recovery:
                # Too much to replay: skip to the end, the client resyncs by listing.
                complete, position = False, await self._history.last_position(stream)
                continue
            for entry in entries:
                self._send(session, channel, entry)
            if entries:
                position, recovered = entries[-1].position, recovered + len(entries)
            if len(entries) < READ_BATCH and not newer(self._fanout.live_position(channel), position):
                break
        # No await between the last check above and the join: the seam is exact.
        if not session.closed:
            self._server.join(session.sid, channel)
            self._fanout.joined_at(channel, position)
        return {"position": position, "recovered": recovered, "complete": complete}

    async def catch_up(self, channel: str) -> None:
        """After a Redis outage: send a room what it missed, then the live records held meanwhile."""
        start = self._fanout.live_position(channel)
        if start is not None:
            kind, owner = channel.split(":", 1)
            stream = (
                names.notification_stream(owner) if kind + ":" == names.USER_PREFIX else names.execution_stream(owner)
            )
            position = start
            while True:
                entries = await self._history.after(stream, position, READ_BATCH)
                for entry in entries:
                    self._fanout.deliver_recovered(channel, entry.position, entry.data)
                if len(entries) < READ_BATCH:
                    break
                position = entries[-1].position
        self._fanout.release_held(channel)

    def _send(self, session: Session, channel: str, entry: Entry) -> None:
        try:
            pkt = self._fanout.stream_packet(channel, entry.position, entry.data)
        except PayloadError as exc:
            logger.warning("skipped an invalid stored record", extra={"channel": channel, "error": str(exc)})
            return
        self._server.send(session.sid, pkt)
