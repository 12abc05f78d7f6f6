"""The one place that reaches into python-socketio / python-engineio internals.

`GuardedServer` closes transports that never complete the Socket.IO CONNECT
within a deadline or that send a packet this gateway does not accept (plain
python-socketio logs such packets and keeps the connection open).
`deliver` queues one pre-built packet to many Engine.IO sockets without a
task or an await per recipient.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from gateway.limits import TokenBucket

logger = logging.getLogger(__name__)

NAMESPACE: Final = "/"
# An EVENT packet's header: type 2, no namespace (or "/,"), then the ack id.
_EVENT_HEADER: Final = re.compile(r"2(?:/,)?(?P<id>[0-9]{1,9})?\[")


class ProtocolFault(ValueError):
    """A packet that is well-formed Engine.IO but not an acceptable Socket.IO packet."""


class GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's AsyncServer with a CONNECT deadline and strict packet checks."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        max_event_bytes: int,
        event_rate: float,
        event_burst: int,
        on_protocol_close: Callable[[str], None],
        on_refused: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._connect_timeout_s = connect_timeout_s
        self._max_event_bytes = max_event_bytes
        self._event_rate = event_rate
        self._event_burst = event_burst
        self._event_buckets: dict[str, TokenBucket] = {}
        self._on_refused = on_refused
        self._on_protocol_close = on_protocol_close
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def engineio_socket(self, eio_sid: str) -> Any:
        return self.eio.sockets.get(eio_sid)

    def eio_sid(self, sid: str) -> str | None:
        eio_sid: str | None = self.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid

    def close_transport(self, eio_sid: str, reason: str) -> None:
        """Drop a transport without an Engine.IO CLOSE packet.

        Clients treat a CLOSE packet as a deliberate server disconnect and do
        not reconnect (python-engineio), whereas a closed transport makes both
        socket.io-client and python-socketio reconnect, through the load
        balancer, to a node that is still serving.
        """
        socket = self.engineio_socket(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return
        self._on_protocol_close(reason)
        task = asyncio.get_running_loop().create_task(self._abort(socket))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def closed(self) -> None:
        """Wait for the transports being closed by `close_transport`."""
        await asyncio.gather(*self._closing, return_exceptions=True)

    @staticmethod
    async def _abort(socket: Any) -> None:
        # The disconnect handler wakes the socket's writer, which then closes
        # the WebSocket (or ends the pending long-poll).
        await socket.close(wait=False, abort=True)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        loop = asyncio.get_running_loop()
        self._deadlines[eio_sid] = loop.call_later(self._connect_timeout_s, self._connect_deadline, eio_sid)

    def _connect_deadline(self, eio_sid: str) -> None:
        self._deadlines.pop(eio_sid, None)
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is None or not self.manager.is_connected(sid, NAMESPACE):
            self.close_transport(eio_sid, "connect_timeout")

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._event_buckets.pop(eio_sid, None)
        deadline = self._deadlines.pop(eio_sid, None)
        if deadline is not None:
            deadline.cancel()
        socket = self.engineio_socket(eio_sid)
        if socket is not None:
            # python-engineio leaves a pending long-poll hanging until the next
            # ping after a client's CLOSE; ending it now frees the client at once.
            socket.queue.put_nowait(None)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Decode strictly; anything unexpected closes the transport."""
        if isinstance(data, str) and len(data) > self._max_event_bytes:
            await self._refuse(
                eio_sid, data, "payload_too_large", f"events are limited to {self._max_event_bytes} bytes"
            )
            return
        bucket = self._event_buckets.get(eio_sid)
        if bucket is None:
            bucket = self._event_buckets[eio_sid] = TokenBucket(self._event_rate, self._event_burst)
        if isinstance(data, str) and data[:1] == "2" and not bucket.take():  # EVENT packets only
            await self._refuse(eio_sid, data, "rate_limited", "too many events; slow down")
            return
        try:
            pkt = self._decode(eio_sid, data)
        except (ProtocolFault, ValueError, TypeError, KeyError, IndexError) as exc:
            logger.info("closing transport after an invalid packet", extra={"eio_sid": eio_sid, "error": str(exc)})
            self.close_transport(eio_sid, "invalid_packet")
            return
        if pkt.packet_type == sio_packet.CONNECT:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
            sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
            if sid is not None and self.manager.is_connected(sid, NAMESPACE):
                deadline = self._deadlines.pop(eio_sid, None)
                if deadline is not None:
                    deadline.cancel()
        elif pkt.packet_type == sio_packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        elif pkt.packet_type == sio_packet.EVENT:
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        else:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    async def _refuse(self, eio_sid: str, data: object, code: str, message: str) -> None:
        """Answer a refused event with an error ack, read from its header only (no JSON parsing)."""
        self._on_refused(code)
        match = _EVENT_HEADER.match(data) if isinstance(data, str) else None
        if match is None or match.group("id") is None:
            return
        error = {"ok": False, "error": {"code": code, "message": message}}
        ack = self.packet_class(sio_packet.ACK, namespace=NAMESPACE, id=int(match.group("id")), data=[error])
        await self._send_packet(eio_sid, ack)

    def _decode(self, eio_sid: str, data: Any) -> Any:
        if not isinstance(data, str):
            raise ProtocolFault("binary packets are not accepted")
        pkt = self.packet_class(encoded_packet=data)
        if pkt.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
            raise ProtocolFault("binary packets are not accepted")
        if pkt.packet_type not in (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK):
            raise ProtocolFault(f"packet type {pkt.packet_type} is not accepted from a client")
        if (pkt.namespace or NAMESPACE) != NAMESPACE:
            raise ProtocolFault(f"unknown namespace {pkt.namespace!r}")
        if pkt.packet_type == sio_packet.CONNECT:
            if pkt.data is not None and not isinstance(pkt.data, dict):
                raise ProtocolFault("the CONNECT payload must be an object")
            return pkt
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is None or not self.manager.is_connected(sid, NAMESPACE):
            raise ProtocolFault("packet before CONNECT")
        if pkt.packet_type == sio_packet.EVENT and not (
            isinstance(pkt.data, list) and pkt.data and isinstance(pkt.data[0], str)
        ):
            raise ProtocolFault("an EVENT must be a list starting with the event name")
        return pkt


def message_packet(text: str) -> eio_packet.Packet:
    """An Engine.IO MESSAGE packet carrying one encoded Socket.IO packet."""
    return eio_packet.Packet(eio_packet.MESSAGE, data=text)


class Outbox:
    """Bounded per-socket send queues, with conflation for market data.

    A socket whose queue holds `conflate_above` packets is lagging: its market
    packets then wait in a per-topic slot where the newest replaces an unsent
    older one, and `flush()` moves them on once the queue has drained. Other
    packets (notifications, execution updates, acks) are never dropped: past
    `max_queued` the socket is disconnected instead, and recovers by position
    on reconnect. One stalled socket costs at most `max_queued` references to
    shared packets plus one per topic, and never delays another socket.
    """

    def __init__(
        self,
        server: GuardedServer,
        *,
        conflate_above: int,
        max_queued: int,
        on_conflated: Callable[[], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self._server = server
        self._conflate_above = conflate_above
        self._max_queued = max_queued
        self._on_conflated = on_conflated
        self._on_overflow = on_overflow
        self._lagging: dict[str, dict[str, object]] = {}

    @property
    def lagging(self) -> int:
        return len(self._lagging)

    def send(self, eio_sids: Iterable[str], pkt: object, conflate_key: str | None = None) -> int:
        """Queue `pkt` to each open socket; returns how many it was queued (or conflated) to."""
        sockets = self._server.eio.sockets
        lagging = self._lagging
        sent = 0
        for eio_sid in eio_sids:
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing:
                continue
            queue = socket.queue
            if conflate_key is not None and (eio_sid in lagging or queue.qsize() >= self._conflate_above):
                slots = lagging.setdefault(eio_sid, {})
                if conflate_key in slots:
                    self._on_conflated()
                slots[conflate_key] = pkt
            elif queue.qsize() < self._max_queued:
                queue.put_nowait(pkt)
            else:
                self._on_overflow()
                self._server.close_transport(eio_sid, "slow_consumer")
                continue
            sent += 1
        return sent

    def flush(self) -> None:
        """Move conflated packets of sockets whose queue has drained (called periodically)."""
        sockets = self._server.eio.sockets
        for eio_sid in list(self._lagging):
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing:
                del self._lagging[eio_sid]
            elif socket.queue.qsize() < self._conflate_above // 2:
                for pkt in self._lagging.pop(eio_sid).values():
                    socket.queue.put_nowait(pkt)


def room_members(server: GuardedServer, room: str) -> Iterable[str]:
    """Engine.IO session ids of the sockets in `room`."""
    members: dict[str, str] | None = server.manager.rooms.get(NAMESPACE, {}).get(room)
    return members.values() if members else ()


def join_room(server: GuardedServer, sid: str, room: str) -> None:
    """Join synchronously: no await, so no message can slip in between a snapshot and the join."""
    server.manager.basic_enter_room(sid, NAMESPACE, room)


def leave_room(server: GuardedServer, sid: str, room: str) -> None:
    server.manager.basic_leave_room(sid, NAMESPACE, room)
