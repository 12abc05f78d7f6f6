"""Engine.IO v4 server: handshake, WebSocket and long-polling transports, upgrade, heartbeat.

Built for fan-out: an outgoing message is a `Packet` encoded once (text for
long-polling, WebSocket frame bytes for everyone else) and sending it to a
WebSocket client is one `transport.write` (or one list append while a batch
is corked). A connected WebSocket client costs no queue, task or timer of
its own: one heartbeat timer pings every socket, and the transport's own
pause/resume-writing signal says when a client is not keeping up.

A client that falls behind is `lagging`: packets sent with a conflation key
(market data) then wait in one slot per key, the newest replacing an unsent
older one, until the client drains; other packets are still written, up to
`max_buffered` bytes, past which the client is dropped (it reconnects and
recovers by position). Knows nothing of Socket.IO: text messages go to the
layer above through `EngineHandler`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

import msgspec

from gateway.protocol import websocket
from gateway.protocol.http import Request, Response, Upgrade, websocket_handshake_error
from gateway.protocol.websocket import CloseCode, Opcode, WebSocketError

logger = logging.getLogger(__name__)

OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
SEPARATOR: Final = "\x1e"
PROBE: Final = "probe"
WEBSOCKET: Final = "websocket"
POLLING: Final = "polling"
_PING_FRAME: Final = websocket.text_frame(PING.encode())
_PONG_PROBE_FRAME: Final = websocket.text_frame((PONG + PROBE).encode())


class Packet:
    """One outgoing Engine.IO MESSAGE, encoded once for every recipient."""

    __slots__ = ("frame", "text")

    def __init__(self, message: str) -> None:
        self.text = MESSAGE + message
        self.frame = websocket.text_frame(self.text.encode())


class EngineHandler(Protocol):
    """What the layer above is told; `closed` comes on a later loop turn, never from inside a send."""

    def opened(self, socket: EngineSocket) -> None: ...

    def message(self, socket: EngineSocket, text: str) -> None: ...

    def closed(self, socket: EngineSocket, reason: str) -> None: ...


class EngineSocket:
    """One Engine.IO session, on long-polling or on a WebSocket."""

    __slots__ = (
        "chunks",
        "chunks_bytes",
        "closed",
        "engine",
        "handshake",
        "owner",
        "pinged",
        "queue",
        "queued_bytes",
        "sid",
        "slots",
        "upgrading",
        "waiter",
        "ws",
    )

    def __init__(self, engine: Engine, sid: str, handshake: Request) -> None:
        self.engine = engine
        self.sid = sid
        # The HTTP request that opened the session, for the layer above to
        # authenticate; it drops it once the client is admitted.
        self.handshake: Request | None = handshake
        self.owner: object = None
        self.ws: WebSocketConnection | None = None
        self.upgrading: WebSocketConnection | None = None
        self.queue: list[str] = []  # long-polling only
        self.queued_bytes = 0
        self.waiter: asyncio.Future[None] | None = None
        self.slots: dict[str, Packet] | None = None
        self.chunks: list[bytes] | None = None
        self.chunks_bytes = 0
        self.pinged = False
        self.closed = False

    @property
    def lagging(self) -> bool:
        ws = self.ws
        if ws is not None:
            return ws.paused
        return self.queued_bytes > self.engine.conflate_above

    def send(self, packet: Packet, conflate_key: str | None = None) -> bool:
        """Send (or conflate) `packet`; False if the socket is closed or was just dropped for lagging."""
        if self.closed:
            return False
        ws = self.ws
        if ws is None:
            return self._queue(packet, conflate_key)
        if ws.paused:
            if conflate_key is not None:
                self._conflate(packet, conflate_key)
                return True
            if ws.transport.get_write_buffer_size() + len(packet.frame) > self.engine.max_buffered:
                self.engine.overflow(self)
                return False
        chunks = self.chunks
        if chunks is not None:
            chunks.append(packet.frame)
            self.chunks_bytes += len(packet.frame)
            if self.chunks_bytes > self.engine.conflate_above:
                # A big batch goes out early, so that a slow client is seen
                # lagging (paused) before the batch ends, not a batch later.
                ws.transport.write(b"".join(chunks))
                self.chunks = []
                self.chunks_bytes = 0
        elif self.engine.corked:
            self.chunks = [packet.frame]
            self.chunks_bytes = len(packet.frame)
            self.engine.dirty.append(self)
        else:
            ws.transport.write(packet.frame)
        return True

    def _conflate(self, packet: Packet, key: str) -> None:
        slots = self.slots
        if slots is None:
            self.slots = {key: packet}
            return
        if key in slots:
            self.engine.on_conflated()
        slots[key] = packet

    def _queue(self, packet: Packet, conflate_key: str | None) -> bool:
        """Long-polling: keep the packet for the next GET."""
        if self.queued_bytes > self.engine.conflate_above:
            if conflate_key is not None:
                self._conflate(packet, conflate_key)
                return True
            if self.queued_bytes + len(packet.text) > self.engine.max_buffered:
                self.engine.overflow(self)
                return False
        self.push(packet.text)
        return True

    def push(self, text: str) -> None:
        """Queue an Engine.IO packet for long-polling (or for the WebSocket once an upgrade completes)."""
        self.queue.append(text)
        self.queued_bytes += len(text)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def send_control(self, text: str) -> None:
        """A PING, PONG or NOOP packet: never conflated, never counted against the limits."""
        if self.closed:
            return
        if self.ws is not None:
            self.ws.transport.write(_PING_FRAME if text == PING else websocket.text_frame(text.encode()))
        else:
            self.push(text)

    def flush_slots(self) -> None:
        """A lagging socket caught up: send what was conflated for it."""
        slots, self.slots = self.slots, None
        if slots:
            for key, packet in slots.items():
                self.send(packet, key)  # lagging again midway: the rest wait in their slots


class WebSocketConnection(asyncio.Protocol):
    """The protocol of an upgraded connection: Engine.IO packets in text frames."""

    __slots__ = ("engine", "parser", "paused", "socket", "transport")

    def __init__(self, engine: Engine, socket: EngineSocket) -> None:
        self.engine = engine
        self.socket = socket
        self.parser = websocket.FrameParser(engine.max_payload)
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.engine.conflate_above, low=self.engine.conflate_above // 4)
        if self.socket.ws is self:  # a direct WebSocket: its handshake goes over it
            transport.write(websocket.text_frame(self.engine.open_packet(self.socket, upgrades=False).encode()))
            self.engine.handler.opened(self.socket)

    def data_received(self, data: bytes) -> None:
        try:
            for opcode, payload in self.parser.feed(data):
                if opcode == Opcode.TEXT:
                    self.engine.received(self, payload.decode())
                elif opcode == Opcode.PING:
                    self.transport.write(websocket.frame(Opcode.PONG, payload))
                elif opcode == Opcode.CLOSE:
                    self.close(CloseCode.NORMAL)
                    return
                elif opcode == Opcode.BINARY:
                    self.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")
                    return
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_DATA, "text frames must be UTF-8")
        except WebSocketError as exc:
            self.close(exc.code, str(exc))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.socket.ws is self:
            self.socket.flush_slots()

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Send a close frame, then close once written (a client that stopped reading is aborted instead)."""
        if self.transport.is_closing():
            return
        if self.paused:
            self.transport.abort()
            return
        self.transport.write(websocket.close_frame(code, reason))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.websocket_lost(self)


class Engine:
    """All Engine.IO sessions of a node."""

    def __init__(
        self,
        handler: EngineHandler,
        *,
        transports: list[str],
        cors_origins: list[str],
        ping_interval_s: float,
        ping_timeout_s: float,
        max_payload: int,
        conflate_above: int,
        max_buffered: int,
        coalesce_s: float,
        on_conflated: Callable[[], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self.handler = handler
        self.transports = transports
        self.cors_origins = cors_origins
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.max_payload = max_payload
        self.conflate_above = conflate_above
        self.max_buffered = max_buffered
        self.coalesce_s = coalesce_s
        self._flush_timer: asyncio.TimerHandle | None = None
        self.on_conflated = on_conflated
        self._on_overflow = on_overflow
        self.sockets: dict[str, EngineSocket] = {}
        # Long-polling sessions closed with packets still queued (a server
        # disconnect): their next GET delivers them, then a CLOSE.
        self._closing: dict[str, EngineSocket] = {}
        self.corked = False
        self.dirty: list[EngineSocket] = []
        self._heartbeat: asyncio.Task[None] | None = None

    # Lifecycle

    def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._ping_all())

    async def stop(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)

    async def _ping_all(self) -> None:
        """One timer for every socket: ping, then drop those that did not answer within the timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ping_interval_s)
            for socket in list(self.sockets.values()):
                socket.pinged = True
                socket.send_control(PING)
            loop.call_later(self.ping_timeout_s, self._reap)

    def _reap(self) -> None:
        for socket in list(self.sockets.values()):
            if socket.pinged:
                self.close(socket, "ping_timeout", abort=True)

    @property
    def lagging(self) -> int:
        return sum(1 for socket in self.sockets.values() if socket.lagging)

    @contextmanager
    def corked_writes(self) -> Iterator[None]:
        """Collect the frames sent to each WebSocket in this block into one write per socket.

        With `coalesce_s`, the writes wait that long for later batches to
        join them: fewer send() calls per delivery, for a little latency.
        Anything sent to a socket meanwhile queues behind, so order holds.
        """
        self.corked = True
        try:
            yield
        finally:
            self.corked = False
            if not self.coalesce_s:
                self.flush()
            elif self._flush_timer is None and self.dirty:
                self._flush_timer = asyncio.get_running_loop().call_later(self.coalesce_s, self.flush)

    def flush(self) -> None:
        """Write what corked batches collected for each socket."""
        self._flush_timer = None
        dirty, self.dirty = self.dirty, []
        for socket in dirty:
            chunks, socket.chunks = socket.chunks, None
            if chunks and socket.ws is not None and not socket.closed:
                socket.ws.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def overflow(self, socket: EngineSocket) -> None:
        self._on_overflow()
        self.close(socket, "slow_consumer", abort=True)

    def close(self, socket: EngineSocket, reason: str, *, abort: bool = False) -> None:
        """End a session. `abort` drops it at once; otherwise what was sent is delivered first."""
        if socket.closed:
            return
        socket.closed = True
        self.sockets.pop(socket.sid, None)
        socket.slots = None
        chunks, socket.chunks = socket.chunks, None
        if chunks and not abort and socket.ws is not None:
            socket.ws.transport.write(b"".join(chunks))  # sent in a corked batch: still delivered
        for ws in (socket.ws, socket.upgrading):
            if ws is None:
                continue
            if abort:
                ws.transport.abort()
            else:
                ws.close(CloseCode.GOING_AWAY)
        if socket.waiter is not None and not socket.waiter.done():
            socket.waiter.set_result(None)  # ends a pending long-poll (see `_poll`)
        loop = asyncio.get_running_loop()
        if abort:
            socket.queue.clear()
        elif socket.ws is None and socket.queue and socket.waiter is None:
            self._closing[socket.sid] = socket
            loop.call_later(self.ping_timeout_s, self._closing.pop, socket.sid, None)
        loop.call_soon(self.handler.closed, socket, reason)

    # HTTP

    async def handle(self, request: Request) -> Response | Upgrade:
        """Every request under the Engine.IO path."""
        cors = self._cors(request)
        if cors is None:
            return _error(403, 4, "Forbidden: origin not allowed")
        if request.method == "OPTIONS":
            return self._preflight(request, cors)
        if request.query.get("EIO") != "4":
            return _error(400, 5, "Unsupported protocol version", cors)
        transport = request.query.get("transport")
        if transport not in self.transports:
            return _error(400, 0, "Transport unknown", cors)
        sid = request.query.get("sid")
        if transport == WEBSOCKET:
            return self._websocket(request, sid, cors)
        return await self._polling(request, sid, cors)

    async def _polling(self, request: Request, sid: str | None, cors: list[tuple[str, str]]) -> Response:
        if request.wants_websocket:
            return _error(400, 3, "Bad request: an upgrade must use transport=websocket", cors)
        if request.method not in ("GET", "POST") or (sid is None and request.method != "GET"):
            return _error(400, 2, "Bad request method", cors)
        if sid is None:
            fresh = self._new_socket(request)
            self.handler.opened(fresh)
            return Response(200, self.open_packet(fresh, upgrades=WEBSOCKET in self.transports).encode(), headers=cors)
        socket = self.sockets.get(sid) or self._closing.get(sid)
        if socket is None or socket.ws is not None:
            return _error(400, 1, "Session ID unknown", cors)
        if request.method == "GET":
            return await self._poll(socket, cors)
        return self._post(socket, request.body, cors)

    def _new_socket(self, request: Request) -> EngineSocket:
        sid = secrets.token_urlsafe(15)
        socket = EngineSocket(self, sid, request)
        self.sockets[sid] = socket
        return socket

    def open_packet(self, socket: EngineSocket, *, upgrades: bool) -> str:
        return (
            OPEN
            + msgspec.json.encode(
                {
                    "sid": socket.sid,
                    "upgrades": [WEBSOCKET] if upgrades else [],
                    "pingInterval": int(self.ping_interval_s * 1000),
                    "pingTimeout": int(self.ping_timeout_s * 1000),
                    "maxPayload": self.max_payload,
                }
            ).decode()
        )

    def _websocket(self, request: Request, sid: str | None, cors: list[tuple[str, str]]) -> Response | Upgrade:
        error = websocket_handshake_error(request)
        if error is not None:
            return _error(400, 3, f"Bad request: {error}", cors)
        if sid is None:
            fresh = self._new_socket(request)
            fresh.ws = WebSocketConnection(self, fresh)
            return Upgrade(fresh.ws)
        socket: EngineSocket | None = self.sockets.get(sid)
        if socket is None or socket.ws is not None or socket.upgrading is not None:
            return _error(400, 1, "Session ID unknown", cors)
        socket.upgrading = WebSocketConnection(self, socket)
        return Upgrade(socket.upgrading)

    async def _poll(self, socket: EngineSocket, cors: list[tuple[str, str]]) -> Response:
        """A long-poll: answer with what is queued, waiting for something if nothing is."""
        if socket.waiter is not None:
            self.close(socket, "duplicate_poll", abort=True)
            return _error(400, 3, "Bad request: overlapping polls", cors)
        if not socket.queue and not socket.slots and not socket.closed:
            socket.waiter = asyncio.get_running_loop().create_future()
            try:
                await socket.waiter
            finally:
                socket.waiter = None
        if socket.closed and not socket.queue:
            return _error(400, 1, "Session ID unknown", cors)
        if socket.slots:
            for packet in socket.slots.values():
                socket.queue.append(packet.text)
            socket.slots = None
        packets, socket.queue, socket.queued_bytes = socket.queue, [], 0
        if socket.closed:
            packets.append(CLOSE)
            self._closing.pop(socket.sid, None)
        return Response(200, SEPARATOR.join(packets).encode(), headers=cors)

    def _post(self, socket: EngineSocket, body: bytes, cors: list[tuple[str, str]]) -> Response:
        try:
            packets = body.decode().split(SEPARATOR)
        except UnicodeDecodeError:
            self.close(socket, "invalid_packet", abort=True)
            return _error(400, 3, "Bad request: payloads must be UTF-8", cors)
        for text in packets:
            if socket.closed:
                break
            self._received(socket, text, None)
        return Response(200, b"ok", content_type="text/html", headers=cors)

    # WebSocket

    def received(self, ws: WebSocketConnection, text: str) -> None:
        socket = ws.socket
        if socket.closed:
            return
        if ws is socket.upgrading:
            self._probe(socket, ws, text)
        else:
            self._received(socket, text, ws)

    def _probe(self, socket: EngineSocket, ws: WebSocketConnection, text: str) -> None:
        """The upgrade dance: 2probe -> 3probe (and a NOOP to end the pending poll), then 5."""
        if text == PING + PROBE:
            ws.transport.write(_PONG_PROBE_FRAME)
            socket.push(NOOP)
        elif text == UPGRADE:
            socket.upgrading = None
            pending, socket.queue, socket.queued_bytes = socket.queue, [], 0
            socket.ws = ws
            ws.transport.write(b"".join(websocket.text_frame(p.encode()) for p in pending if p != NOOP))
            socket.flush_slots()
        else:
            ws.close(CloseCode.PROTOCOL_ERROR, "expected the upgrade probe")

    def _received(self, socket: EngineSocket, text: str, ws: WebSocketConnection | None) -> None:
        kind = text[:1]
        if kind == MESSAGE:
            self.handler.message(socket, text[1:])
        elif kind == PONG:
            socket.pinged = False
        elif kind == PING:
            socket.send_control(PONG + text[1:])
        elif kind == CLOSE:
            self.close(socket, "client_close")
        elif kind != NOOP:
            logger.info("closing a session after an invalid Engine.IO packet", extra={"packet_type": kind})
            self.close(socket, "invalid_packet", abort=ws is None)

    def websocket_lost(self, ws: WebSocketConnection) -> None:
        socket = ws.socket
        if ws is socket.upgrading:
            socket.upgrading = None  # a failed upgrade: the session stays on long-polling
        elif ws is socket.ws:
            self.close(socket, "transport_close", abort=True)

    # CORS

    def _cors(self, request: Request) -> list[tuple[str, str]] | None:
        """CORS headers for an allowed origin, [] without an Origin (not a browser), None if refused."""
        origin = request.headers.get("origin")
        if origin is None:
            return []
        allowed = self.cors_origins
        if (
            "*" in allowed
            or origin in allowed
            or (not allowed and urlsplit(origin).netloc == request.headers.get("host"))
        ):
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        return None

    @staticmethod
    def _preflight(request: Request, cors: list[tuple[str, str]]) -> Response:
        headers = [*cors, ("Access-Control-Allow-Methods", "OPTIONS, GET, POST"), ("Access-Control-Max-Age", "86400")]
        requested = request.headers.get("access-control-request-headers")
        if requested:
            headers.append(("Access-Control-Allow-Headers", requested))
        return Response(204, headers=headers)


def _error(status: int, code: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Engine.IO's error body: {"code": n, "message": "..."}."""
    body = msgspec.json.encode({"code": code, "message": message})
    return Response(status, body, content_type="application/json", headers=headers or [])
