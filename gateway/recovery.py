"""Positions and recovery of notifications and execution updates: the one owner of their guarantees.

What docs/protocol.md promises ("Positions, recovery and sync") holds here:
every record of a user's or team's stream reaches each of its sockets once,
in order, whether read from the stream (a client reconnecting, or every room
after a Redis outage) or relayed live, with no gap and no duplicate at the
seam between the two.

How: for each user and team channel the node keeps the newest position it
has relayed (`_live`). A connecting socket reads its stream until it has
caught up with that position, then joins the room with no await in between.
Its read may have gone further than `_live`: records whose live message is
still on its way. Those still go to the room's other sockets when they
arrive, and not to this one, which is `_ahead` until the room catches up.
While Redis is unreachable live records may be missed, so once it is back
each channel's live records are held until the stream read has caught up
(`_held`), then released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.batching import Query
from gateway.history import ORIGIN, POSITION_RE, Entry, History, last_position_query, newer
from gateway.metrics import GatewayMetrics
from gateway.protocol.session import Packet
from gateway.protocol.sio import SocketIOServer, event_packet
from gateway.relay import Relay
from gateway.sessions import Session
from shared import codec, names
from shared.codec import StreamKind
from shared.errors import PayloadError
from shared.redis_target import REDIS_ERRORS

logger = logging.getLogger(__name__)

READ_BATCH: Final = 200
MAX_HELD: Final = 10_000  # live records held per channel while it is caught up
CATCH_UP_BACKOFF_S: Final = 0.1
CATCH_UP_BACKOFF_MAX_S: Final = 5.0


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


def kind_of(channel: str) -> StreamKind:
    return StreamKind.NOTIFICATION if channel.startswith(names.USER_PREFIX) else StreamKind.EXECUTION


def stream_of(channel: str) -> str:
    """The stream that stores what `channel` announces."""
    owner = names.channel_owner(channel)
    if kind_of(channel) is StreamKind.NOTIFICATION:
        return names.notification_stream(owner)
    return names.execution_stream(owner)


def record_packet(channel: str, position: str, data: bytes) -> Packet:
    """The packet of a notification or execution update on `channel`; raises PayloadError.

    The record must belong to the channel's owner: a publisher's mistake never reaches another user.
    """
    owner = names.channel_owner(channel)
    kind = kind_of(channel)
    if kind is StreamKind.NOTIFICATION:
        if codec.decode_stored_notification(data).user_id != owner:
            raise PayloadError(f"a notification for another user was published on {channel}")
    elif codec.decode_stored_execution(data).team_id != owner:
        raise PayloadError(f"an execution update of another team was published on {channel}")
    return event_packet(kind, data.decode(), f'"{position}"')


class Recovery:
    """Per-channel positions, connect-time catch-up, and catch-up after a Redis outage."""

    def __init__(
        self,
        server: SocketIOServer,
        history: History,
        relay: Relay,
        metrics: GatewayMetrics,
        *,
        max_recovery: int,
    ) -> None:
        self._server = server
        self._history = history
        self._relay = relay
        self._metrics = metrics
        self._max_recovery = max_recovery
        # Newest position relayed per user and team channel.
        self._live: dict[str, str] = {}
        # Sockets that read their stream past `_live` when they joined: sid to the position they have.
        self._ahead: dict[str, dict[str, str]] = {}
        # Channels being caught up after a Redis outage: live records wait here.
        # Bounded: the oldest held records are also in the stream the catch-up reads from `_live` on,
        # so dropping them past the bound loses nothing; only the newest (read after the stream) matter.
        self._held: dict[str, deque[tuple[str, Packet]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Live records

    def relay(self, channel: str, position: str, packet: Packet) -> None:
        """A record relayed live: to the room, unless held (outage) or already sent (read from the stream)."""
        held = self._held.get(channel)
        if held is not None:
            held.append((position, packet))
        elif newer(position, self._live.get(channel, ORIGIN)):
            self._send(channel, position, packet)

    def forget(self, channel: str) -> None:
        """The node no longer subscribes to `channel`."""
        self._live.pop(channel, None)
        self._held.pop(channel, None)
        self._ahead.pop(channel, None)

    def _send(self, channel: str, position: str, packet: Packet) -> None:
        self._live[channel] = position
        ahead = self._ahead.get(channel)
        if ahead is None:
            sent = self._server.send_to_room(channel, packet)
        else:
            has_it = {sid for sid, reached in ahead.items() if not newer(position, reached)}
            for sid in [sid for sid, reached in ahead.items() if not newer(reached, position)]:
                del ahead[sid]  # the room has caught up with it
            if not ahead:
                del self._ahead[channel]
            sent = self._server.send_to_room(channel, packet, skip=has_it)
        self._metrics.messages_out.labels(str(kind_of(channel))).inc(sent)

    # A Redis outage

    def lost(self, channels: list[str]) -> None:
        """Channels' subscriptions were lost (connection down, slot moved): hold their live records until caught up."""
        for channel in channels:
            if channel.startswith((names.USER_PREFIX, names.TEAM_PREFIX)):
                self._held.setdefault(channel, deque(maxlen=MAX_HELD))

    def restored(self, channel: str) -> None:
        """A channel is subscribed again after it was lost: send its room what was published meanwhile."""
        if channel.startswith((names.USER_PREFIX, names.TEAM_PREFIX)):
            task = asyncio.get_running_loop().create_task(self._catch_up(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, channel: str) -> None:
        delay = CATCH_UP_BACKOFF_S
        while self._relay.wants(channel):
            try:
                await self._read_missed(channel)
            except REDIS_ERRORS as exc:
                logger.warning("catch-up failed; retrying", extra={"channel": channel, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, CATCH_UP_BACKOFF_MAX_S)
            except Exception:
                logger.exception("catch-up failed", extra={"channel": channel})
                self._release_held(channel)
                return
            else:
                return

    async def _read_missed(self, channel: str) -> None:
        position = self._live.get(channel)
        if position is not None:
            stream = stream_of(channel)
            while True:
                entries = await self._history.after(stream, position, READ_BATCH)
                for entry in entries:
                    if newer(entry.position, self._live.get(channel, ORIGIN)):
                        packet = self._stored_packet(channel, entry)
                        if packet is not None:
                            self._send(channel, entry.position, packet)
                if len(entries) < READ_BATCH:
                    break
                position = entries[-1].position
        self._release_held(channel)

    def _release_held(self, channel: str) -> None:
        """End a catch-up: send the held live records the stream read did not already cover."""
        for position, packet in self._held.pop(channel, ()):
            if newer(position, self._live.get(channel, ORIGIN)):
                self._send(channel, position, packet)

    # A socket connecting

    @staticmethod
    def start_query(session: Session, resume: Resume) -> Query[str] | None:
        """Where a fresh client's notifications start; None for a client that brings its position.

        Read at connect time, once the user's channel is subscribed: nothing published after is missed.
        """
        if resume.notifications is not None:
            return None
        return last_position_query(names.notification_stream(session.identity.user_id))

    async def sync(self, session: Session, resume: Resume, fresh_start: str | None) -> dict[str, Any]:
        """Catch the socket up on every stream and join their rooms; returns what the client is told.

        `fresh_start` is `start_query()`'s answer for a client without a notifications position.
        """
        user_id = session.identity.user_id
        now_ms = int(time.time() * 1000)
        channel = names.user_channel(user_id)
        if fresh_start is not None:
            notifications = await self._catch_up_socket(session, channel, fresh_start, now_ms, fresh=True)
        else:
            notifications = await self._catch_up_socket(session, channel, resume.notifications, now_ms)
        executions = {}
        for team in session.identity.teams:
            channel = names.team_channel(team)
            since = resume.executions.get(team)
            if since is None:
                since = await self._send_states(session, team, channel, now_ms)
                executions[team] = await self._catch_up_socket(session, channel, since, now_ms, fresh=True)
            else:
                executions[team] = await self._catch_up_socket(session, channel, since, now_ms)
        complete = all(bool(part["complete"]) for part in (notifications, *executions.values()))
        return {"notifications": notifications, "executions": executions, "complete": complete}

    def sync_at_once(self, session: Session, fresh_start: str | None) -> dict[str, Any] | None:
        """`sync`'s answer when it needs no read, else None: a fresh client of no team, nothing relayed since.

        The common connect (no positions, no teams): its notifications start where `start_query`
        read the stream's end, after the channel's subscription was confirmed; unless a newer record
        was relayed since, there is nothing to read and the socket joins its room at once.
        """
        if fresh_start is None or session.identity.teams:
            return None
        channel = names.user_channel(session.identity.user_id)
        if newer(self._live.get(channel), fresh_start):
            return None
        self._join(session, channel, fresh_start)
        notifications = {"position": fresh_start, "recovered": 0, "complete": True}
        return {"notifications": notifications, "executions": {}, "complete": True}

    def reached(self, session: Session, status: dict[str, Any]) -> None:
        """Raise `sync`'s positions to the newest record already sent to the socket; call just before `sync` goes.

        A socket gets its rooms' live records from the moment it joins each, while its
        other streams (and its topics) are still being caught up: its position at the
        join may be behind a record it already has, and a client that stored that
        position would get the record again on its next reconnect. Every record a
        room was sent after the join went to the socket too, and `_live` is the
        newest of them.
        """
        notifications = status.get("notifications")
        if isinstance(notifications, dict):
            self._raise_to_live(names.user_channel(session.identity.user_id), notifications)
        executions = status.get("executions")
        if isinstance(executions, dict):
            for team, part in executions.items():
                self._raise_to_live(names.team_channel(team), part)

    def _raise_to_live(self, channel: str, part: dict[str, Any]) -> None:
        live = self._live.get(channel)
        if live is not None and newer(live, part["position"]):
            part["position"] = live

    async def _send_states(self, session: Session, team: str, channel: str, now_ms: int) -> str:
        """Send the current state of each execution; returns the position they bring the client to."""
        position = ORIGIN
        for entry in await self._history.execution_states(team, now_ms):
            packet = self._stored_packet(channel, entry)
            if packet is not None:
                self._server.send(session.sid, packet)
            position = entry.position
        return position

    async def _catch_up_socket(
        self,
        session: Session,
        channel: str,
        since: str | None,
        now_ms: int,
        *,
        fresh: bool = False,
    ) -> dict[str, object]:
        stream = stream_of(channel)
        if since is None:  # the connect-time read failed: start at the live end
            since, fresh = await self._history.last_position(stream), False
        complete = fresh or await self._history.retained_since(stream, since, now_ms)
        position, recovered = since, 0
        # A fresh start was read after the channel's subscription was confirmed:
        # unless something newer was relayed since, there is nothing to read.
        caught_up = fresh and not newer(self._live.get(channel), since)
        while not session.closed and not caught_up:
            entries = await self._history.after(stream, position, READ_BATCH)
            if recovered + len(entries) > self._max_recovery:
                # Too much to replay: skip to the end, the client resyncs by listing.
                complete, position = False, await self._history.last_position(stream)
                continue
            for entry in entries:
                packet = self._stored_packet(channel, entry)
                if packet is not None:
                    self._server.send(session.sid, packet)
            if entries:
                position, recovered = entries[-1].position, recovered + len(entries)
            if len(entries) < READ_BATCH and not newer(self._live.get(channel), position):
                break
        # No await between the last check above and the join: the seam is exact.
        self._join(session, channel, position)
        return {"position": position, "recovered": recovered, "complete": complete}

    def _join(self, session: Session, channel: str, position: str) -> None:
        """The socket joins the channel's room, standing at `position` (call with no await since it was read)."""
        if not session.closed:
            self._server.join(session.sid, channel)
            if newer(position, self._live.get(channel, ORIGIN)):
                self._ahead.setdefault(channel, {})[session.sid] = position

    def _stored_packet(self, channel: str, entry: Entry) -> Packet | None:
        try:
            return record_packet(channel, entry.position, entry.data)
        except PayloadError as exc:
            self._metrics.messages_rejected.labels("stored").inc()
            logger.warning("skipped an invalid stored record", extra={"channel": channel, "error": str(exc)})
            return None
