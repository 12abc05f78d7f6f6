"""Socket.IO v5 on the default namespace, over `engineio`: CONNECT, events with acks, rooms.

Strict where python-socketio is lenient: a transport that does not complete
CONNECT within a deadline, or that sends a packet this gateway cannot read
(malformed JSON, JSON nested deeper than `MAX_JSON_DEPTH`, an event before
CONNECT, a packet for a namespace it never joined), is closed. A CONNECT to
another namespace is refused with CONNECT_ERROR, as the protocol says.
Binary events are read (attachments and all, within the event limit) and
answered with a `binary_not_supported` error ack: no event here takes binary.
Oversized and rate-limited packets are refused from their header alone,
without parsing their JSON; every packet a client sends counts against its
rate, acks included.

Each socket's events run one at a time, in order, in a task that exists only
while the socket has events to handle; an idle socket costs no task.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, Final, Protocol

import msgspec

from gateway.limits import TokenBucket
from gateway.protocol.deadlines import CONNECTION_GRANULARITY_S, Deadlines
from gateway.protocol.engineio import Engine, EngineSettings, Observer
from gateway.protocol.http import Outcome, Request
from gateway.protocol.session import Packet, Session
from gateway.protocol.sids import new_sid
from shared import stdjson
from shared.nesting import MAX_JSON_DEPTH, deeper_than

logger = logging.getLogger(__name__)

CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = "0123456"
DEFAULT_NAMESPACE: Final = "/"
# A packet's header: type, attachments (binary packets), namespace, ack id. Read without the JSON.
_HEADER: Final = re.compile(r"(?P<type>[0-6])(?:(?P<att>[0-9]{1,3})-)?(?:(?P<nsp>/[^,]*),)?(?P<id>[0-9]{1,9})?")
# Events a socket may have waiting while one runs; past that they are refused.
MAX_PENDING_EVENTS: Final = 32
# Packets refused in a row (too large, too fast) before the connection is closed.
MAX_REFUSED_IN_A_ROW: Final = 200
# Binary attachments one packet may announce.
MAX_ATTACHMENTS: Final = 10

EventHandler = Callable[[str, Any], Awaitable[Any]]
ConnectHandler = Callable[[str, Request, object], Awaitable[bool]]
ConnectedHandler = Callable[[str], None]
DisconnectHandler = Callable[[str, str], None]


class ProtocolFault(ValueError):
    """A packet that is well-formed Engine.IO but not an acceptable Socket.IO packet."""


class ConnectionRefused(Exception):
    """Raised by the connect handler: the client gets a CONNECT_ERROR with this message and data."""

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class SocketObserver(Observer, Protocol):
    """What the Socket.IO layer reports for metrics, besides the engine's reports."""

    def event_refused(self, code: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketSettings:
    engine: EngineSettings
    connect_timeout_s: float  # a session must CONNECT within this
    max_event_bytes: int  # largest packet (and its attachments) a connected client may send
    event_rate: float  # packets per second per socket
    event_burst: int


class State(Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(slots=True)
class _Header:
    kind: str
    attachments: int | None
    namespace: str | None
    ack_id: str | None
    data_start: int


@dataclass(slots=True)
class _Reassembly:
    """A binary packet waiting for its attachments."""

    header: _Header
    missing: int
    size: int


class Socket:
    """One Socket.IO client (the default namespace) on one Engine.IO session."""

    __slots__ = ("bucket", "inbox", "reassembly", "refused", "rooms", "session", "sid", "state", "worker")

    def __init__(self, session: Session, bucket: TokenBucket) -> None:
        self.sid = new_sid()
        self.session = session
        self.bucket = bucket
        self.state = State.NEW
        self.rooms: set[str] = set()
        self.inbox: deque[tuple[str | None, Any]] | None = None  # events waiting: (ack id, arguments)
        self.worker: asyncio.Task[None] | None = None
        self.reassembly: _Reassembly | None = None
        self.refused = 0  # packets refused in a row


def encode(value: object) -> str:
    return msgspec.json.encode(value).decode()


def event_packet(name: str, *arguments: str) -> Packet:
    """An EVENT packet whose arguments are JSON texts already, embedded as they are (encoded once for all)."""
    return Packet(f'{EVENT}["{name}",{",".join(arguments)}]')


def error_ack(code: str, message: str) -> dict[str, object]:
    """The ack of a refused request (client contract)."""
    return {"ok": False, "error": {"code": code, "message": message}}


def read_header(text: str) -> _Header:
    match = _HEADER.match(text)
    if match is None:
        raise ProtocolFault("not a Socket.IO packet")
    kind, attachments, namespace, ack_id = match.group("type", "att", "nsp", "id")
    if (attachments is not None) != (kind in (BINARY_EVENT, BINARY_ACK)):
        raise ProtocolFault("only binary packets announce attachments")
    return _Header(kind, None if attachments is None else int(attachments), namespace, ack_id, match.end())


def decode_data(header: _Header, text: str) -> Any:
    """The packet's JSON payload, checked for its packet type; raises ProtocolFault."""
    raw = text[header.data_start :]
    try:
        # The standard library's reading, like python-socketio's: its client
        # sends Infinity and NaN for such floats (the handlers refuse them).
        data = stdjson.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:
        raise ProtocolFault(f"invalid JSON: {str(exc)[:100]}") from None
    if deeper_than(data, MAX_JSON_DEPTH):
        raise ProtocolFault(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    kind = header.kind
    if kind == CONNECT and not (data is None or isinstance(data, dict)):
        raise ProtocolFault("the CONNECT payload must be an object")
    if kind in (EVENT, BINARY_EVENT) and not (isinstance(data, list) and data and isinstance(data[0], str)):
        raise ProtocolFault("an EVENT must be a list starting with the event name")
    if kind in (ACK, BINARY_ACK) and not isinstance(data, list):
        raise ProtocolFault("an ACK must be a list of arguments")
    if kind == CONNECT_ERROR:
        raise ProtocolFault("packet type 4 is not accepted from a client")
    return data


class SocketIOServer:
    """The node's Socket.IO server: handlers, rooms and delivery."""

    def __init__(self, settings: SocketSettings, observer: SocketObserver) -> None:
        self.engine = Engine(self, settings.engine, observer)
        self.settings = settings
        self.observer = observer
        self.sockets: dict[str, Socket] = {}
        self._rooms: dict[str, set[Session]] = {}
        # Each room's members as the tuple a broadcast takes, made on the room's first send and
        # dropped when its members change: a message to a room of thousands copies nothing.
        self._audiences: dict[str, tuple[Session, ...]] = {}
        self._handlers: dict[str, EventHandler] = {}
        self._on_connect: ConnectHandler | None = None
        self._on_connected: ConnectedHandler | None = None
        self._on_disconnect: DisconnectHandler | None = None
        self._workers: set[asyncio.Task[None]] = set()
        self._connects: set[asyncio.Future[bool]] = set()  # connect handlers' answers still awaited
        # A socket must CONNECT within `connect_timeout_s` of its transport opening.
        self._connect_deadlines: Deadlines[Socket] = Deadlines(self._deadline, granularity_s=CONNECTION_GRANULARITY_S)

    def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        """Stop the heartbeat and the handlers still running (after `close_all`, at shutdown)."""
        self.engine.stop()
        self._connect_deadlines.close()
        pending: list[asyncio.Future[Any]] = [*self._workers, *self._connects]
        for awaited in pending:
            awaited.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def on_connect(self, handler: ConnectHandler) -> None:
        self._on_connect = handler

    def on_connected(self, handler: ConnectedHandler) -> None:
        """Called once the CONNECT answer is queued; what it sends at once follows it, in the same write."""
        self._on_connected = handler

    def on_disconnect(self, handler: DisconnectHandler) -> None:
        self._on_disconnect = handler

    def on(self, event: str, handler: EventHandler) -> None:
        self._handlers[event] = handler

    def handle(self, request: Request) -> Outcome | Awaitable[Outcome]:
        return self.engine.handle(request)

    # Sending

    def emit(self, sid: str, event: str, data: object) -> None:
        self.send(sid, event_packet(event, encode(data)))

    def send(self, sid: str, packet: Packet, conflate_key: str | None = None) -> bool:
        socket = self.sockets.get(sid)
        return socket is not None and socket.session.send(packet, conflate_key)

    def send_to_room(
        self, room: str, packet: Packet, conflate_key: str | None = None, *, skip: Collection[str] = ()
    ) -> int:
        """Send one packet to every socket in `room` but those (sids) in `skip`; returns how many it went to."""
        members = self._rooms.get(room)
        if not members:
            return 0
        recipients: tuple[Session, ...] | None
        if skip:
            skipped = {socket.session for socket in map(self.sockets.get, skip) if socket is not None}
            recipients = tuple(session for session in members if session not in skipped)
        else:
            recipients = self._audiences.get(room)  # one tuple per room until its members change
            if recipients is None:
                recipients = self._audiences[room] = tuple(members)
        if recipients:
            self.engine.broadcast(recipients, packet, conflate_key)
        return len(recipients)

    # Rooms (synchronous: no await, so nothing slips in between a snapshot and a join)

    def join(self, sid: str, room: str) -> None:
        socket = self.sockets.get(sid)
        if socket is not None and socket.state is not State.CLOSED:
            socket.rooms.add(room)
            self._rooms.setdefault(room, set()).add(socket.session)
            self._audiences.pop(room, None)

    def room_sizes(self, prefix: str) -> dict[str, int]:
        """Sockets in each room whose name starts with `prefix` (for the status page)."""
        return {
            room.removeprefix(prefix): len(members) for room, members in self._rooms.items() if room.startswith(prefix)
        }

    def leave(self, sid: str, room: str) -> None:
        socket = self.sockets.get(sid)
        if socket is not None:
            self._leave(socket, room)

    def _leave(self, socket: Socket, room: str) -> None:
        socket.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(socket.session)
            self._audiences.pop(room, None)
            if not members:
                del self._rooms[room]

    # Closing

    def is_open(self, sid: str) -> bool:
        socket = self.sockets.get(sid)
        return socket is not None and not socket.session.closed

    def disconnect(self, sid: str) -> None:
        """A server disconnect: the client is told (and does not reconnect by itself)."""
        socket = self.sockets.get(sid)
        if socket is None:
            return
        socket.session.send(Packet(DISCONNECT))
        self._disconnected(socket, "server_disconnect")
        socket.session.close("server_disconnect")

    def close_all(self, reason: str) -> None:
        """Drop every transport without a DISCONNECT: clients reconnect (through the load balancer)."""
        for session in list(self.engine.sessions.values()):
            session.close(reason)

    # Engine.IO events

    def opened(self, session: Session) -> None:
        socket = Socket(session, TokenBucket(self.settings.event_rate, self.settings.event_burst))
        session.owner = socket
        self.sockets[socket.sid] = socket
        self._connect_deadlines.set(socket, self.settings.connect_timeout_s)

    def _deadline(self, socket: Socket) -> None:
        if socket.state is not State.CONNECTED and not socket.session.closed:
            self.observer.protocol_closed("connect_timeout")
            socket.session.close("connect_timeout", abort=True)

    def closed(self, session: Session, reason: str) -> None:
        socket = session.owner
        if not isinstance(socket, Socket):
            return
        self.sockets.pop(socket.sid, None)
        self._connect_deadlines.clear(socket)
        socket.reassembly = None
        session.owner = None  # no cycle left for the garbage collector (see Engine.forget)
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

    def message(self, session: Session, text: str) -> None:
        socket = session.owner
        if not isinstance(socket, Socket) or socket.state is State.CLOSED:
            return
        try:
            self._packet(socket, text)
        except ProtocolFault as exc:
            socket.session.fault(str(exc))

    def binary(self, session: Session, data: bytes) -> None:
        """A binary attachment of the packet being reassembled."""
        socket = session.owner
        if not isinstance(socket, Socket) or socket.state is State.CLOSED:
            return
        reassembly = socket.reassembly
        if reassembly is None:
            session.fault("a binary attachment without a binary packet")
            return
        reassembly.missing -= 1
        reassembly.size += len(data)  # counted, never kept: no event here takes binary
        if not reassembly.missing:
            socket.reassembly = None
            try:
                self._binary_done(socket, reassembly.header, reassembly.size)
            except ProtocolFault as exc:
                session.fault(str(exc))

    def _packet(self, socket: Socket, text: str) -> None:
        if socket.reassembly is not None:
            raise ProtocolFault("a text packet while binary attachments were expected")
        header = read_header(text)
        if header.namespace not in (None, DEFAULT_NAMESPACE):
            self._other_namespace(socket, header)
            return
        if header.kind == DISCONNECT:
            if socket.state is not State.CONNECTED:
                raise ProtocolFault("DISCONNECT before CONNECT")
            self._disconnected(socket, "client_disconnect")
            socket.session.close("client_disconnect")
            return
        limit = self.settings.max_event_bytes
        if len(text) > limit:
            self._refuse(socket, header, "payload_too_large", f"packets are limited to {limit} bytes")
            return
        if not socket.bucket.take():
            self._refuse(socket, header, "rate_limited", "too many packets; slow down")
            return
        socket.refused = 0
        _check_order(socket, header.kind)
        data = decode_data(header, text)
        if header.attachments is not None:
            self._expect_attachments(socket, header, len(text))
        elif header.kind == CONNECT:
            socket.state = State.CONNECTING
            self._start_connect(socket, data)
        elif header.kind == EVENT:
            self._enqueue(socket, header, data)
        # ACKs: this server never asks a client for one, so there is nothing to match.

    def _other_namespace(self, socket: Socket, header: _Header) -> None:
        """The protocol's answer to a CONNECT to a namespace this server does not have (the client stops there)."""
        namespace = header.namespace or ""
        if header.kind != CONNECT:
            raise ProtocolFault(f"a packet for namespace {namespace[:64]!r}, which was never joined")
        socket.session.send(Packet(f'{CONNECT_ERROR}{namespace},{{"message":"Invalid namespace"}}'))

    def _expect_attachments(self, socket: Socket, header: _Header, size: int) -> None:
        count = header.attachments or 0
        if count > MAX_ATTACHMENTS:
            raise ProtocolFault(f"a packet may carry at most {MAX_ATTACHMENTS} binary attachments")
        if count:
            socket.reassembly = _Reassembly(header, count, size)
        else:
            self._binary_done(socket, header, size)

    def _binary_done(self, socket: Socket, header: _Header, size: int) -> None:
        """A binary packet with all its attachments: an event is refused, an ack is ignored (none was asked)."""
        limit = self.settings.max_event_bytes
        if size > limit:
            self._refuse(socket, header, "payload_too_large", f"packets and attachments are limited to {limit} bytes")
        elif header.kind == BINARY_EVENT:
            self._refuse(socket, header, "binary_not_supported", "events here take JSON arguments, not binary")

    def _enqueue(self, socket: Socket, header: _Header, data: Any) -> None:
        inbox = socket.inbox
        if inbox is None:
            inbox = socket.inbox = deque()
        elif len(inbox) >= MAX_PENDING_EVENTS:
            self._refuse(socket, header, "rate_limited", "too many events waiting; slow down")
            return
        inbox.append((header.ack_id, data))
        if socket.worker is None:
            socket.worker = worker = asyncio.get_running_loop().create_task(self._work(socket))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    def _refuse(self, socket: Socket, header: _Header, code: str, message: str) -> None:
        """Answer a refused packet: an error ack for an event with an ack id, CONNECT_ERROR for a CONNECT.

        A client that keeps sending past its refusals is closed: each refusal costs the node a write.
        """
        self.observer.event_refused(code)
        socket.refused += 1
        if socket.refused > MAX_REFUSED_IN_A_ROW:
            raise ProtocolFault(f"more than {MAX_REFUSED_IN_A_ROW} packets refused in a row")
        if header.kind == CONNECT:
            socket.session.send(
                Packet(CONNECT_ERROR + encode({"message": code, "data": {"code": code, "message": message}}))
            )
        elif header.kind in (EVENT, BINARY_EVENT) and header.ack_id is not None:
            socket.session.send(Packet(ACK + header.ack_id + encode([error_ack(code, message)])))

    async def _work(self, socket: Socket) -> None:
        """Handle a socket's events one at a time, in order."""
        try:
            while socket.inbox and socket.state is not State.CLOSED:
                ack_id, data = socket.inbox.popleft()
                await self._event(socket, ack_id, data)
        finally:
            socket.worker = None
            socket.inbox = None

    def _start_connect(self, socket: Socket, auth: object) -> None:
        """Ask the connect handler; the answer goes once its awaitable is done (a future: no task per CONNECT).

        Nothing else of the socket's is read meanwhile: any packet but CONNECT waits for the answer.
        """
        handshake = socket.session.handshake
        assert self._on_connect is not None and handshake is not None
        answer = asyncio.ensure_future(self._on_connect(socket.sid, handshake, auth))
        self._connects.add(answer)
        answer.add_done_callback(partial(self._connect_done, socket))

    def _connect_done(self, socket: Socket, answer: asyncio.Future[bool]) -> None:
        self._connects.discard(answer)
        if answer.cancelled():  # the server is stopping
            return
        refusal: dict[str, object] = {}
        error = answer.exception()
        if error is None:
            accepted = answer.result()
        elif isinstance(error, ConnectionRefused):
            refusal = {"message": error.message, "data": error.data}
            accepted = False
        else:
            logger.error("connect handler failed", exc_info=error, extra={"sid": socket.sid})
            refusal = {"message": "internal_error", "data": {"code": "internal_error", "message": "retry later"}}
            accepted = False
        session = socket.session
        if socket.state is State.CLOSED:  # the transport closed while the handler ran
            if accepted and self._on_disconnect is not None:
                self._on_disconnect(socket.sid, "transport_close")
            return
        if not accepted:
            socket.state = State.NEW  # the client may try again on this transport
            if refusal:
                session.send(Packet(CONNECT_ERROR + encode(refusal)))
            return
        socket.state = State.CONNECTED
        session.handshake = None
        self._connect_deadlines.clear(socket)
        # Through this turn's write batch: what `on_connected` sends now (a `sync`) goes in the same write.
        # The sid is URL-safe base64 (`new_sid`): nothing in it needs JSON escaping.
        self.engine.broadcast((session,), Packet(f'{CONNECT}{{"sid":"{socket.sid}"}}'))
        if self._on_connected is not None:
            self._on_connected(socket.sid)

    async def _event(self, socket: Socket, ack_id: str | None, data: list[Any]) -> None:
        name, args = data[0], data[1:]
        handler = self._handlers.get(name)
        if handler is None:
            self.observer.event_refused("unknown_event")
            result: object = error_ack("unknown_event", f"no event {name[:64]!r}")
        elif len(args) > 1:
            self.observer.event_refused("bad_request")
            result = error_ack("bad_request", f"{name[:64]} takes one argument, got {len(args)}")
        else:
            try:
                result = await handler(socket.sid, args[0] if args else None)
            except Exception:
                logger.exception("event handler failed", extra={"sid": socket.sid, "event": name})
                result = error_ack("internal_error", "the request failed")
        if ack_id is not None and socket.state is State.CONNECTED:
            socket.session.send(Packet(ACK + ack_id + encode([result])))


def _check_order(socket: Socket, kind: str) -> None:
    """CONNECT once, first; anything else only once connected."""
    if kind == CONNECT:
        if socket.state is not State.NEW:
            raise ProtocolFault("CONNECT on a connected socket")
    elif socket.state is not State.CONNECTED:
        raise ProtocolFault("packet before CONNECT")
