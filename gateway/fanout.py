"""Turns Redis messages into Socket.IO packets and hands them to the rooms.

Each message is decoded (validated) once and encoded once per node: the
packet text embeds the publisher's JSON verbatim, and the same packet (one
WebSocket frame) goes to every recipient; a batch of Redis messages reaches
each client as one write. A message that fails
validation is dropped, logged and counted; it never reaches a client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from gateway.history import ORIGIN, newer
from gateway.metrics import GatewayMetrics
from gateway.protocol.session import Packet
from gateway.protocol.sio import SocketIOServer, event_packet
from gateway.pubsub import Message
from shared import codec, names
from shared.codec import Revocation, StreamKind
from shared.errors import PayloadError
from shared.events import AnyMarketEvent

logger = logging.getLogger(__name__)

_MARKET: Final = names.MARKET_PREFIX.encode()
_USER: Final = names.USER_PREFIX.encode()
_TEAM: Final = names.TEAM_PREFIX.encode()
_CONTROL: Final = names.CONTROL_CHANNEL.encode()


class Fanout:
    """Routes each Redis message to the room of the same name."""

    def __init__(
        self,
        server: SocketIOServer,
        metrics: GatewayMetrics,
        *,
        on_revocation: Callable[[Revocation], None],
    ) -> None:
        self._server = server
        self._on_revocation = on_revocation
        self._metrics = metrics
        # Latest packet of every market topic this node is subscribed to: a new
        # subscriber gets it at once, with no Redis round trip and no gap.
        self._latest: dict[str, Packet] = {}
        # Newest position relayed per user and team channel: recovery reads
        # history until it has caught up with this, then joins the room.
        self._live: dict[str, str] = {}
        # Channels being caught up from their stream after a Redis outage:
        # live records wait here so that order holds and none is sent twice.
        self._held: dict[str, list[tuple[str, Packet]]] = {}

    def on_messages(self, messages: list[Message]) -> None:
        with self._server.batch():
            for channel, payload in messages:
                self._on_message(channel, payload)

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        try:
            if channel.startswith(_MARKET):
                self._market(channel.decode(), payload)
            elif channel.startswith((_USER, _TEAM)):
                self._stream(channel.decode(), payload)
            elif channel == _CONTROL:
                self._on_revocation(codec.decode_revocation(payload))
        except (PayloadError, UnicodeDecodeError) as exc:
            kind = channel.split(b":", 1)[0].decode(errors="replace")
            self._metrics.messages_rejected.labels(kind).inc()
            logger.warning(
                "dropped an invalid message", extra={"channel": channel.decode(errors="replace"), "error": str(exc)}
            )

    def latest(self, channel: str) -> Packet | None:
        return self._latest.get(channel)

    def live_position(self, channel: str) -> str | None:
        """The newest position this node has relayed on a user or team channel."""
        return self._live.get(channel)

    def remember(self, channel: str, payload: bytes) -> None:
        """Keep a value read from Redis unless live traffic already brought a newer one."""
        if channel in self._latest:
            return
        try:
            self._latest[channel], _ = self._market_packet(channel, payload)
        except PayloadError as exc:
            self._metrics.messages_rejected.labels("latest").inc()
            logger.warning("ignored an invalid latest value", extra={"channel": channel, "error": str(exc)})

    def forget(self, channel: str) -> None:
        """Drop what is kept for a channel this node no longer subscribes to."""
        self._latest.pop(channel, None)
        self._live.pop(channel, None)
        self._held.pop(channel, None)

    def joined_at(self, channel: str, position: str) -> None:
        """A socket joined `channel` caught up to `position`: the room is at least there."""
        if not newer(self._live.get(channel), position):
            self._live[channel] = position

    def hold(self, channels: Iterable[str]) -> None:
        """Hold live records of these user and team channels until `release_held` (Redis outage)."""
        for channel in channels:
            if channel.startswith((names.USER_PREFIX, names.TEAM_PREFIX)):
                self._held.setdefault(channel, [])

    def deliver_recovered(self, channel: str, position: str, data: bytes) -> None:
        """Send a record read from the stream to the room, unless the room already has it."""
        if not newer(position, self._live.get(channel, ORIGIN)):
            return
        try:
            pkt = self.stream_packet(channel, position, data)
        except PayloadError as exc:
            self._metrics.messages_rejected.labels("stored").inc()
            logger.warning("skipped an invalid stored record", extra={"channel": channel, "error": str(exc)})
            return
        self._live[channel] = position
        self._send_stream(channel, pkt, "recovered")

    def release_held(self, channel: str) -> None:
        """End a catch-up: send the held live records the stream read did not already cover."""
        for position, pkt in self._held.pop(channel, []):
            if newer(position, self._live.get(channel, ORIGIN)):
                self._live[channel] = position
                self._send_stream(
                    channel, pkt, "notification" if channel.startswith(names.USER_PREFIX) else "execution"
                )

    def stream_packet(self, channel: str, position: str, data: bytes) -> Packet:
        """The packet of a stored notification or execution update; raises PayloadError."""
        owner = channel.split(":", 1)[1]
        if channel.startswith(names.USER_PREFIX):
            if codec.decode_notification(data).user_id != owner:
                raise PayloadError(f"a notification for another user was published on {channel}")
            kind = StreamKind.NOTIFICATION
        else:
            if codec.decode_execution(data).team_id != owner:
                raise PayloadError(f"an execution update of another team was published on {channel}")
            kind = StreamKind.EXECUTION
        return event_packet(kind, data.decode(), f'"{position}"')

    def _market_packet(self, channel: str, payload: bytes) -> tuple[Packet, AnyMarketEvent]:
        event = codec.decode_market(payload)
        topic = event.topic
        if names.market_channel(topic) != channel:
            raise PayloadError(f"a {topic} event was published on {channel}")
        return event_packet("market", f'"{topic}"', payload.decode()), event

    def _market(self, channel: str, payload: bytes) -> None:
        pkt, event = self._market_packet(channel, payload)
        self._metrics.messages_in.labels("market").inc()
        self._metrics.relay_latency.observe(max(0.0, time.time() - event.recv_ts / 1000))
        if event.topic.has_snapshot:
            self._latest[channel] = pkt
        sent = self._server.send_to_room(channel, pkt, conflate_key=channel)
        self._metrics.messages_out.labels("market").inc(sent)

    def _stream(self, channel: str, payload: bytes) -> None:
        envelope = codec.decode_envelope(payload)
        expected = StreamKind.NOTIFICATION if channel.startswith(names.USER_PREFIX) else StreamKind.EXECUTION
        if envelope.kind is StreamKind.READ and expected is StreamKind.NOTIFICATION:
            marks = bytes(envelope.data)
            codec.decode_read_marks(marks)
            pkt = event_packet("notifications_read", marks.decode())
            self._metrics.messages_in.labels(str(envelope.kind)).inc()
        elif envelope.kind is expected:
            pkt = self.stream_packet(channel, envelope.pos, bytes(envelope.data))
            self._metrics.messages_in.labels(str(envelope.kind)).inc()
            held = self._held.get(channel)
            if held is not None:
                held.append((envelope.pos, pkt))
                return
            if not newer(envelope.pos, self._live.get(channel, ORIGIN)):
                return  # already sent (read from the stream after an outage)
            self._live[channel] = envelope.pos
        else:
            raise PayloadError(f"a {envelope.kind} was published on {channel}")
        self._send_stream(channel, pkt, str(envelope.kind))

    def _send_stream(self, channel: str, pkt: Packet, kind: str) -> None:
        sent = self._server.send_to_room(channel, pkt)
        self._metrics.messages_out.labels(kind).inc(sent)
