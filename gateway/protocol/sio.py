"""Socket.IO v5 on the default namespace, over `engineio`: CONNECT, events with acks, rooms.

Strict where python-socketio is lenient: a transport that does not complete
CONNECT within a deadline, or that sends a packet this gateway does not
accept (binary, another namespace, an event before CONNECT, a malformed
event), is closed. Oversized and rate-limited events get an error ack read
from the packet header alone, without parsing their JSON.

Each socket's events run one at a time, in order, in a task that exists only
while the socket has events to handle; an idle socket costs no task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from enum import Enum
from typing import Any, Final

import msgspec

from gateway.limits import TokenBucket
from gateway.protocol.engineio import Engine, EngineSocket, Packet
from gateway.protocol.http import Request, Response, Upgrade

logger = logging.getLogger(__name__)

CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = "0123456"
# An EVENT packet's header: type 2, no namespace (or "/,"), then the ack id.
_EVENT_HEADER: Final = re.compile(r"2(?:/,)?(?P<id>[0-9]{1,9})?\[")
_PACKET: Final = re.compile(r"(?P<type>[0-6])(?:(?P<nsp>/[^,]*),)?(?P<id>[0-9]{1,9})?(?P<data>.*)", re.DOTALL)
# Events a socket may have waiting while one runs; past that they are refused.
MAX_PENDING_EVENTS: Final = 32

EventHandler = Callable[[str, Any], Awaitable[Any]]
ConnectHandler = Callable[[str, Request, object], Awaitable[bool]]
DisconnectHandler = Callable[[str, str], None]


class ProtocolFault(ValueError):
    """A packet that is well-formed Engine.IO but not an acceptable Socket.IO packet."""


class ConnectionRefused(Exception):
    """Raised by the connect handler: the client gets a CONNECT_ERROR with this message and data."""

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class State(Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class Socket:
    """One Socket.IO client (the default namespace) on one Engine.IO session."""

    __slots__ = ("bucket", "deadline", "engine_socket", "inbox", "rooms", "sid", "state", "worker")

    def __init__(self, engine_socket: EngineSocket, bucket: TokenBucket) -> None:
        self.sid = secrets.token_urlsafe(15)
        self.engine_socket = engine_socket
        self.bucket = bucket
        self.state = State.NEW
        self.rooms: set[str] = set()
        self.inbox: deque[tuple[str, str | None, Any]] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None


def encode(value: object) -> str:
    return msgspec.json.encode(value).decode()


def decode_packet(text: str) -> tuple[str, str | None, Any]:
    """(type, ack id, data) of a client packet; raises ProtocolFault."""
    match = _PACKET.fullmatch(text)
    if match is None:
        raise ProtocolFault("not a Socket.IO packet")
    kind, namespace, ack_id, raw = match.group("type", "nsp", "id", "data")
    if kind in (BINARY_EVENT, BINARY_ACK):
        raise ProtocolFault("binary packets are not accepted")
    if kind == CONNECT_ERROR:
        raise ProtocolFault("packet type 4 is not accepted from a client")
    if namespace not in (None, "/"):
        raise ProtocolFault(f"unknown namespace {namespace!r}")
    try:
        # The standard library's parser, like python-socketio's: its client
        # sends Infinity and NaN for such floats (the handlers refuse them).
        data = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:
        raise ProtocolFault(f"invalid JSON: {exc}") from None
    if kind == CONNECT and not (data is None or isinstance(data, dict)):
        raise ProtocolFault("the CONNECT payload must be an object")
    if kind == EVENT and not (isinstance(data, list) and data and isinstance(data[0], str)):
        raise ProtocolFault("an EVENT must be a list starting with the event name")
    return kind, ack_id, data


def _check_order(socket: Socket, kind: str) -> None:
    """CONNECT once, first; anything else only once connected."""
    if kind == CONNECT:
        if socket.state is not State.NEW:
            raise ProtocolFault("CONNECT on a connected socket")
    elif socket.state is not State.CONNECTED:
        raise ProtocolFault("packet before CONNECT")


class SocketIOServer:
    """The node's Socket.IO server: handlers, rooms and delivery."""

    def __init__(
        self,
        *,
        transports: list[str],
        cors_origins: list[str],
        ping_interval_s: float,
        ping_timeout_s: float,
        max_packet_bytes: int,
        conflate_above: int,
        max_buffered: int,
        coalesce_s: float,
        connect_timeout_s: float,
        max_event_bytes: int,
        event_rate: float,
        event_burst: int,
        on_protocol_close: Callable[[str], None],
        on_refused: Callable[[str], None],
        on_conflated: Callable[[], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self.engine = Engine(
            self,
            transports=transports,
            cors_origins=cors_origins,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            max_payload=max_packet_bytes,
            conflate_above=conflate_above,
            max_buffered=max_buffered,
            coalesce_s=coalesce_s,
            on_conflated=on_conflated,
            on_overflow=on_overflow,
        )
        self._connect_timeout_s = connect_timeout_s
        self._max_event_bytes = max_event_bytes
        self._event_rate = event_rate
        self._event_burst = event_burst
        self._on_protocol_close = on_protocol_close
        self._on_refused = on_refused
        self.sockets: dict[str, Socket] = {}
        self._rooms: dict[str, set[EngineSocket]] = {}
        self._handlers: dict[str, EventHandler] = {}
        self._on_connect: ConnectHandler | None = None
        self._on_disconnect: DisconnectHandler | None = None

    def on_connect(self, handler: ConnectHandler) -> None:
        self._on_connect = handler

    def on_disconnect(self, handler: DisconnectHandler) -> None:
        self._on_disconnect = handler

    def on(self, event: str, handler: EventHandler) -> None:
        self._handlers[event] = handler

    async def handle(self, request: Request) -> Response | Upgrade:
        return await self.engine.handle(request)

    # Sending

    def emit(self, sid: str, event: str, data: object) -> None:
        self.send(sid, Packet(EVENT + encode([event, data])))

    def send(self, sid: str, packet: Packet, conflate_key: str | None = None) -> bool:
        socket = self.sockets.get(sid)
        return socket is not None and socket.engine_socket.send(packet, conflate_key)

    def send_to_room(self, room: str, packet: Packet, conflate_key: str | None = None) -> int:
        """Send one packet to every socket in `room`; returns how many took it."""
        members = self._rooms.get(room)
        if not members:
            return 0
        sent = 0
        for socket in members:
            if socket.send(packet, conflate_key):
                sent += 1
        return sent

    def batch(self) -> AbstractContextManager[None]:
        """Sends in this block reach each WebSocket client as one write."""
        return self.engine.corked_writes()

    # Rooms (synchronous: no await, so nothing slips in between a snapshot and a join)

    def join(self, sid: str, room: str) -> None:
        socket = self.sockets.get(sid)
        if socket is not None and socket.state is not State.CLOSED:
            socket.rooms.add(room)
            self._rooms.setdefault(room, set()).add(socket.engine_socket)

    def leave(self, sid: str, room: str) -> None:
        socket = self.sockets.get(sid)
        if socket is not None:
            self._leave(socket, room)

    def _leave(self, socket: Socket, room: str) -> None:
        socket.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(socket.engine_socket)
            if not members:
                del self._rooms[room]

    # Closing

    def is_open(self, sid: str) -> bool:
        socket = self.sockets.get(sid)
        return socket is not None and not socket.engine_socket.closed

    def disconnect(self, sid: str) -> None:
        """A server disconnect: the client is told (and does not reconnect by itself)."""
        socket = self.sockets.get(sid)
        if socket is None:
            return
        socket.engine_socket.send(Packet(DISCONNECT))
        self._disconnected(socket, "server_disconnect")
        self.engine.close(socket.engine_socket, "server_disconnect")

    def close_all(self, reason: str) -> None:
        """Drop every transport without a DISCONNECT: clients reconnect (through the load balancer)."""
        for engine_socket in list(self.engine.sockets.values()):
            self._close(engine_socket, reason)

    def _close(self, engine_socket: EngineSocket, reason: str) -> None:
        if not engine_socket.closed:
            self._on_protocol_close(reason)
            self.engine.close(engine_socket, reason)

    # Engine.IO events

    def opened(self, engine_socket: EngineSocket) -> None:
        socket = Socket(engine_socket, TokenBucket(self._event_rate, self._event_burst))
        engine_socket.owner = socket
        self.sockets[socket.sid] = socket
        socket.deadline = asyncio.get_running_loop().call_later(self._connect_timeout_s, self._deadline, socket)

    def _deadline(self, socket: Socket) -> None:
        socket.deadline = None
        if socket.state is not State.CONNECTED:
            self._close(socket.engine_socket, "connect_timeout")

    def closed(self, engine_socket: EngineSocket, reason: str) -> None:
        socket = engine_socket.owner
        if not isinstance(socket, Socket):
            return
        self.sockets.pop(socket.sid, None)
        if socket.deadline is not None:
            socket.deadline.cancel()
        # A running handler is left to finish (it sees the socket closed):
        # cancelling it midway could leave its Redis subscriptions counted.
        self._disconnected(socket, reason)

    def _disconnected(self, socket: Socket, reason: str) -> None:
        """Leave every room and tell the handler, once, if the socket had connected."""
        was_connected = socket.state is State.CONNECTED
        socket.state = State.CLOSED
        for room in list(socket.rooms):
            self._leave(socket, room)
        if was_connected and self._on_disconnect is not None:
            self._on_disconnect(socket.sid, reason)

    def message(self, engine_socket: EngineSocket, text: str) -> None:
        socket = engine_socket.owner
        if not isinstance(socket, Socket) or socket.state is State.CLOSED:
            return
        if len(text) > self._max_event_bytes:
            self._refuse(socket, text, "payload_too_large", f"events are limited to {self._max_event_bytes} bytes")
            return
        if text[:1] == EVENT and not socket.bucket.take():
            self._refuse(socket, text, "rate_limited", "too many events; slow down")
            return
        try:
            kind, ack_id, data = decode_packet(text)
            _check_order(socket, kind)
        except ProtocolFault as exc:
            logger.info("closing transport after an invalid packet", extra={"sid": socket.sid, "error": str(exc)})
            self._close(engine_socket, "invalid_packet")
            return
        if kind == CONNECT:
            socket.state = State.CONNECTING
        if kind == DISCONNECT:
            self._disconnected(socket, "client_disconnect")
            self.engine.close(engine_socket, "client_disconnect")
        elif kind in (CONNECT, EVENT):
            inbox = socket.inbox
            if inbox is None:
                inbox = socket.inbox = deque()
            elif len(inbox) >= MAX_PENDING_EVENTS:
                self._refuse(socket, text, "rate_limited", "too many events waiting; slow down")
                return
            inbox.append((kind, ack_id, data))
            if socket.worker is None:
                socket.worker = asyncio.get_running_loop().create_task(self._work(socket))
        # ACKs: this server never asks a client for one, so there is nothing to match.

    def _refuse(self, socket: Socket, text: str, code: str, message: str) -> None:
        """Answer a refused event with an error ack, read from its header only (no JSON parsing)."""
        self._on_refused(code)
        match = _EVENT_HEADER.match(text)
        if match is not None and match.group("id") is not None:
            error = {"ok": False, "error": {"code": code, "message": message}}
            socket.engine_socket.send(Packet(ACK + match.group("id") + encode([error])))

    async def _work(self, socket: Socket) -> None:
        """Handle a socket's packets one at a time, in order."""
        try:
            while socket.inbox and socket.state is not State.CLOSED:
                kind, ack_id, data = socket.inbox.popleft()
                if kind == CONNECT:
                    await self._connect(socket, data)
                else:
                    await self._event(socket, ack_id, data)
        finally:
            socket.worker = None
            socket.inbox = None

    async def _connect(self, socket: Socket, auth: object) -> None:
        engine_socket = socket.engine_socket
        handshake = engine_socket.handshake
        assert self._on_connect is not None and handshake is not None
        try:
            accepted = await self._on_connect(socket.sid, handshake, auth)
        except ConnectionRefused as exc:
            refusal: dict[str, object] = {"message": exc.message, "data": exc.data}
            accepted = False
        except Exception:
            logger.exception("connect handler failed", extra={"sid": socket.sid})
            refusal = {"message": "internal_error", "data": {"code": "internal_error", "message": "retry later"}}
            accepted = False
        else:
            refusal = {}
        if socket.state is State.CLOSED:  # the transport closed while the handler ran
            if accepted and self._on_disconnect is not None:
                self._on_disconnect(socket.sid, "transport_close")
            return
        if not accepted:
            socket.state = State.NEW  # the client may try again on this transport
            if refusal:
                engine_socket.send(Packet(CONNECT_ERROR + encode(refusal)))
            return
        socket.state = State.CONNECTED
        engine_socket.handshake = None
        if socket.deadline is not None:
            socket.deadline.cancel()
            socket.deadline = None
        engine_socket.send(Packet(CONNECT + encode({"sid": socket.sid})))

    async def _event(self, socket: Socket, ack_id: str | None, data: list[Any]) -> None:
        name, args = data[0], data[1:]
        handler = self._handlers.get(name)
        if handler is None:
            result: object = {"ok": False, "error": {"code": "unknown_event", "message": f"no event {name!r}"}}
        else:
            try:
                result = await handler(socket.sid, args[0] if args else None)
            except Exception:
                logger.exception("event handler failed", extra={"sid": socket.sid, "event": name})
                result = {"ok": False, "error": {"code": "internal_error", "message": "the request failed"}}
        if ack_id is not None and socket.state is State.CONNECTED:
            socket.engine_socket.send(Packet(ACK + ack_id + encode([result])))
