"""Turns Redis messages into Socket.IO packets and hands them on: decode, packet, room.

Each message is decoded (validated) once and encoded once per node: the
packet text embeds the publisher's JSON verbatim, and the same packet (one
WebSocket frame) goes to every recipient; what a loop turn sends reaches
each client as one write (`protocol.batch`). Market events go straight to
their topic's room; notifications and execution updates go through
`Recovery`, which knows what each room has already been sent. A message that
fails validation is dropped, logged and counted; it never reaches a client,
and never costs the others of its batch anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from gateway.metrics import GatewayMetrics
from gateway.protocol.session import Packet
from gateway.protocol.sio import SocketIOServer, event_packet
from gateway.pubsub import Message
from gateway.recovery import Recovery, kind_of, record_packet
from shared import codec, names
from shared.codec import Revocation, StreamKind
from shared.errors import PayloadError
from shared.events import AnyMarketEvent
from shared.topics import SNAPSHOT_KINDS

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
        recovery: Recovery,
        metrics: GatewayMetrics,
        *,
        on_revocation: Callable[[Revocation], None],
    ) -> None:
        self._server = server
        self._recovery = recovery
        self._on_revocation = on_revocation
        self._metrics = metrics
        # Latest packet of every market topic this node is subscribed to: a new
        # subscriber gets it at once, with no Redis round trip and no gap.
        self._latest: dict[str, Packet] = {}
        # Looked up once: a labelled child costs a lookup per call, and every market message counts.
        self._market_in = metrics.messages_in.labels("market")
        self._market_out = metrics.messages_out.labels("market")

    def on_messages(self, messages: list[Message]) -> None:
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
            self._rejected(channel, str(exc))
        except Exception:
            # A message no check foresaw must still cost only itself, never the rest of the batch.
            logger.exception("failed to relay a message", extra={"channel": channel[:200].decode(errors="replace")})
            self._rejected(channel, "unexpected error")

    def _rejected(self, channel: bytes, error: str) -> None:
        kind = channel.split(b":", 1)[0].decode(errors="replace")
        self._metrics.messages_rejected.labels(kind if kind in ("md", "user", "team", "gateway") else "other").inc()
        logger.warning(
            "dropped an invalid message", extra={"channel": channel[:200].decode(errors="replace"), "error": error}
        )

    def latest(self, channel: str) -> Packet | None:
        return self._latest.get(channel)

    def remember(self, channel: str, payload: bytes) -> None:
        """Keep a value read from Redis unless live traffic already brought a newer one."""
        if channel in self._latest:
            return
        try:
            self._latest[channel], _ = self._market_packet(channel, payload)
        except (PayloadError, UnicodeDecodeError) as exc:
            self._metrics.messages_rejected.labels("latest").inc()
            logger.warning("ignored an invalid latest value", extra={"channel": channel, "error": str(exc)})

    def forget(self, channel: str) -> None:
        """Drop what is kept for a channel this node no longer subscribes to."""
        self._latest.pop(channel, None)
        self._recovery.forget(channel)

    def _market_packet(self, channel: str, payload: bytes) -> tuple[Packet, AnyMarketEvent]:
        event = codec.decode_market(payload)
        topic = event.topic_text
        if names.market_channel(topic) != channel:
            raise PayloadError(f"a {topic} event was published on {channel}")
        return event_packet("market", f'"{topic}"', payload.decode()), event

    def _market(self, channel: str, payload: bytes) -> None:
        packet, event = self._market_packet(channel, payload)
        self._market_in.inc()
        self._metrics.relay_latency.observe(max(0.0, time.time() - event.recv_ts / 1000))
        if event.KIND in SNAPSHOT_KINDS:
            self._latest[channel] = packet
        sent = self._server.send_to_room(channel, packet, conflate_key=channel)
        self._market_out.inc(sent)

    def _stream(self, channel: str, payload: bytes) -> None:
        envelope = codec.decode_envelope(payload)
        self._metrics.messages_in.labels(str(envelope.kind)).inc()
        if envelope.kind is StreamKind.READ and channel.startswith(names.USER_PREFIX):
            marks = bytes(envelope.data)
            codec.decode_read_marks(marks)
            sent = self._server.send_to_room(channel, event_packet("notifications_read", marks.decode()))
            self._metrics.messages_out.labels(str(envelope.kind)).inc(sent)
        elif envelope.kind is kind_of(channel):
            self._recovery.relay(channel, envelope.pos, record_packet(channel, envelope.pos, bytes(envelope.data)))
        else:
            raise PayloadError(f"a {envelope.kind} was published on {channel}")
