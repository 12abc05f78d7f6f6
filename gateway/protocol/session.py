"""One Engine.IO session and its transports: long-polling, a WebSocket, the upgrade between them.

The session owns its transport work (python-engineio's socket/server split):
what a long-poll GET answers, what a POST carries in, the probe that moves a
polling client to a WebSocket, and how an outgoing packet reaches the client.
The `Engine` owns the handshake, CORS, the heartbeat and the set of sessions.

Built for fan-out: an outgoing message is a `Packet` encoded once (text for
long-polling, WebSocket frame bytes for everyone else) and sending it to a
WebSocket client is one write of those bytes (a loop turn's fan-out goes out
together at the turn's end: see `batch`). A connected WebSocket client costs
no queue, task or timer of its own.

While the transport holds nothing unsent for a client, a fan-out writes
straight to its socket (`os.write` on `Session.straight_fd`, or a whole
room's sockets in one io_uring call: `batch`, `send_ring`): the
transport's own write costs as much again in bookkeeping (a buffer list
appended to and cleared per write). `os.write` lets go of the GIL for the
system call; the node runs no other Python thread to take it meanwhile (a
thread added one day would get a turn at every write). Whatever the socket
does not take goes to the transport, and from then on, until the transport
has written it all, every write goes through the transport, behind it: its
write-buffer limit is 0, so it calls `pause_writing` as soon as it holds a
byte and `resume_writing` once it holds none (`WebSocketConnection.backlogged`).

A client whose backlog passes `conflate_above` bytes is `lagging` until it
has taken everything: packets sent with a conflation key (market data) then
wait in one slot per key, the newest replacing an unsent older one; other
packets are still written, up to `max_buffered` bytes, past which the client
is dropped (it reconnects and recovers by position). Every byte the server
holds for a client counts against that bound, control packets included.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import TYPE_CHECKING, Final, cast

from gateway.limits import TokenBucket
from gateway.protocol import websocket
from gateway.protocol.http import Request
from gateway.protocol.websocket import CloseCode, Opcode, WebSocketError

if TYPE_CHECKING:
    from gateway.protocol.batch import Send
    from gateway.protocol.engineio import Engine

logger = logging.getLogger(__name__)

OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
BINARY_PREFIX: Final = "b"  # a base64 binary message in a long-polling payload
SEPARATOR: Final = "\x1e"
PROBE: Final = "probe"
INVALID_PACKET: Final = "invalid_packet"  # the close reason of a client that broke the protocol
# WebSocket pings a client may send (each costs a pong); beyond, the connection is closed with 1008.
PINGS_PER_S: Final = 5.0
PINGS_BURST: Final = 20
# Packets one long-polling POST may carry: the official client batches what it buffered, a few at a
# time; a megabyte of tiny packets would cost the loop one handler call each, in one go.
MAX_PACKETS_PER_POST: Final = 1000
_PING_FRAME: Final = websocket.text_frame(PING.encode())
_PONG_PROBE_FRAME: Final = websocket.text_frame((PONG + PROBE).encode())


class Packet:
    """One outgoing Engine.IO MESSAGE, encoded once for every recipient."""

    __slots__ = ("frame", "text")

    def __init__(self, message: str) -> None:
        self.text = MESSAGE + message
        self.frame = websocket.text_frame(self.text.encode())


class Session:
    """One Engine.IO session, on long-polling or on a WebSocket."""

    __slots__ = (
        "chunks",
        "chunks_bytes",
        "close_reason",
        "closed",
        "engine",
        "handshake",
        "owner",
        "pinged",
        "queue",
        "queued_bytes",
        "sid",
        "slots",
        "straight_fd",
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
        # The WebSocket's socket descriptor while writing straight to it is safe (open, not closing,
        # nothing unsent in the transport), else None: what a fan-out reads per recipient (`WriteBatch`).
        self.straight_fd: int | None = None
        self.upgrading: WebSocketConnection | None = None
        self.queue: list[str] = []  # long-polling only
        self.queued_bytes = 0
        self.waiter: asyncio.Future[None] | None = None
        self.slots: dict[str, Packet] | None = None
        self.chunks: list[bytes] | None = None
        self.chunks_bytes = 0
        self.pinged = 0  # the heartbeat whose PING is unanswered, 0 when none is
        self.closed = False
        self.close_reason = ""

    # Sending

    @property
    def lagging(self) -> bool:
        ws = self.ws
        if ws is not None:
            return ws.lagging
        return self.queued_bytes > self.engine.settings.conflate_above

    def send(self, packet: Packet, conflate_key: str | None = None) -> bool:
        """Send (or conflate) `packet`; False if the session is closed or was just dropped for lagging.

        While this loop turn's fan-out is pending (`Engine.broadcast`), it queues behind it.
        """
        batch = self.engine.batch
        if batch is None:
            return self.deliver(packet, conflate_key)
        if self.closed:
            return False
        batch.add((self,), packet, conflate_key)
        return True

    def deliver(self, packet: Packet, conflate_key: str | None = None) -> bool:
        """Write (or conflate, or queue for long-polling) `packet` now; False if closed or just dropped."""
        if self.closed:
            return False
        ws = self.ws
        if ws is None:
            return self._queue(packet, conflate_key)
        if ws.backlogged:
            unsent = ws.unsent
            if unsent > self.engine.settings.conflate_above:
                ws.lag()
            if ws.lagging and conflate_key is not None:
                self._conflate(packet, conflate_key)
                return True
            if unsent + len(packet.frame) > self.engine.settings.max_buffered:
                self.engine.overflow(self)
                return False
        ws.transport.write(packet.frame)
        return True

    def write(self, data: bytes) -> None:
        """Write WebSocket frames: straight to the socket while nothing is pending, the rest through the transport."""
        fd = self.straight_fd
        written = 0
        if fd is not None:
            try:
                written = os.write(fd, data)
            except OSError:  # full (EAGAIN) or broken: the transport takes it all, and finds out which
                written = 0
            if written == len(data):
                return
        self.write_rest(data, written)

    def write_rest(self, data: bytes, written: int) -> None:
        """What a straight write left of `data` goes to the transport (which pauses us: `backlogged`)."""
        if self.ws is not None:
            self.ws.transport.write(data[written:] if written else data)

    def deliver_all(self, sends: list[Send], start: int) -> None:
        """A batch's packets from `start` on, one by one (this session does not keep up, or is not a WebSocket)."""
        for _, packet, conflate_key in sends[start:]:
            self.deliver(packet, conflate_key)

    def collect(self, packet: Packet, conflate_key: str | None) -> bool:
        """Add `packet` to this session's write at the end of the batch; True if that write was not pending yet."""
        if self.straight_fd is None:  # closed, backlogged or long-polling
            self.deliver(packet, conflate_key)
            return False
        chunks = self.chunks
        if chunks is None:
            self.chunks = [packet.frame]
            self.chunks_bytes = len(packet.frame)
            return True
        chunks.append(packet.frame)
        self.chunks_bytes += len(packet.frame)
        if self.chunks_bytes > self.engine.settings.conflate_above:
            # A big batch goes out early, so that a slow client is seen
            # backlogged before the batch ends, not a batch later.
            self.write(b"".join(chunks))
            self.chunks = []
            self.chunks_bytes = 0
        return False

    def _conflate(self, packet: Packet, key: str) -> None:
        slots = self.slots
        if slots is None:
            self.slots = {key: packet}
            return
        if key in slots:
            self.engine.observer.conflated()
        slots[key] = packet

    def _queue(self, packet: Packet, conflate_key: str | None) -> bool:
        """Long-polling: keep the packet for the next GET."""
        if self.queued_bytes > self.engine.settings.conflate_above and conflate_key is not None:
            self._conflate(packet, conflate_key)
            return True
        return self.push(packet.text)

    def push(self, text: str) -> bool:
        """Queue an Engine.IO packet for long-polling (or for the WebSocket an upgrade will bring)."""
        if self.queued_bytes + len(text) > self.engine.settings.max_buffered:
            self.engine.overflow(self)
            return False
        self.queue.append(text)
        self.queued_bytes += len(text)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        return True

    def ping(self, beat: int) -> None:
        """The heartbeat's PING: counted against the bound like any other byte held for the client."""
        if self.closed:
            return
        if not self.pinged:
            self.pinged = beat
        ws = self.ws
        if ws is None:
            self.push(PING)
        elif ws.unsent + len(_PING_FRAME) > self.engine.settings.max_buffered:
            self.engine.overflow(self)
        else:
            ws.transport.write(_PING_FRAME)

    def flush_slots(self) -> None:
        """A lagging session caught up: send what was conflated for it."""
        slots, self.slots = self.slots, None
        if slots:
            for key, packet in slots.items():
                self.send(packet, key)  # lagging again midway: the rest wait in their slots

    def flush_collected(self) -> None:
        """Write what `collect` gathered for this session in a batch."""
        chunks, self.chunks = self.chunks, None
        if chunks and self.ws is not None and not self.closed:
            self.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    # Receiving

    def receive(self, text: str) -> None:
        """One Engine.IO packet from the client, over either transport."""
        kind = text[:1]
        if kind == MESSAGE:
            self.engine.handler.message(self, text[1:])
        elif kind == PONG:
            self.pinged = 0
        elif kind == CLOSE:
            self.close("client_close", abort=self.ws is None)
        elif kind == PING:
            # Engine.IO v4 heartbeats go from server to client; a client PING
            # (outside the upgrade probe) would make the server echo its
            # payload, which is how a client could make it buffer without bound.
            self.fault("a client may not send PING (heartbeats go from server to client)")
        elif kind != NOOP:
            self.fault(f"invalid Engine.IO packet type {kind!r}")

    def receive_binary(self, data: bytes) -> None:
        self.engine.handler.binary(self, data)

    def fault(self, error: str) -> None:
        """The client broke the protocol: a WebSocket gets close code 1002 and the reason, long-polling is dropped."""
        logger.info("closing a session after an invalid packet", extra={"sid": self.sid, "error": error})
        self.engine.observer.protocol_closed(INVALID_PACKET)
        self.close(INVALID_PACKET, abort=self.ws is None, code=CloseCode.PROTOCOL_ERROR, detail=error)

    # Long-polling

    async def poll(self) -> str | None:
        """A long-poll GET: what is queued, waiting for something if nothing is; None once dropped."""
        if not self.queue and not self.slots and not self.closed:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.closed and not self.queue:
            # Ended by the client's own CLOSE (the reference server answers NOOP), or dropped.
            return NOOP if self.close_reason == "client_close" else None
        if self.slots:
            for packet in self.slots.values():
                self.queue.append(packet.text)
            self.slots = None
        packets, self.queue, self.queued_bytes = self.queue, [], 0
        if self.closed:
            packets.append(CLOSE)
        return SEPARATOR.join(packets)

    def post(self, body: bytes) -> str | None:
        """A POST's packets, each handled in order; returns why it was refused, or None."""
        try:
            packets = body.decode().split(SEPARATOR, MAX_PACKETS_PER_POST)
        except UnicodeDecodeError:
            self.fault("a polling payload must be UTF-8")
            return "payloads must be UTF-8"
        if len(packets) > MAX_PACKETS_PER_POST:
            self.fault(f"more than {MAX_PACKETS_PER_POST} packets in one POST")
            return f"at most {MAX_PACKETS_PER_POST} packets per POST"
        for text in packets:
            if self.closed:
                break
            if text[:1] == BINARY_PREFIX:
                try:
                    data = base64.b64decode(text[1:], validate=True)
                except ValueError:  # binascii.Error, or a character outside ASCII (found by the fuzzer)
                    self.fault("a binary packet must be base64")
                    return "binary packets must be base64"
                self.receive_binary(data)
            else:
                self.receive(text)
        return "an invalid packet" if self.close_reason == INVALID_PACKET else None

    # WebSocket upgrade

    def probe(self, ws: WebSocketConnection, text: str) -> None:
        """The upgrade dance on the new WebSocket: 2probe -> 3probe (and a NOOP to end the pending poll), then 5."""
        if text == PING + PROBE:
            ws.transport.write(_PONG_PROBE_FRAME)
            self.push(NOOP)
        elif text == UPGRADE:
            self.upgrading = None
            pending, self.queue, self.queued_bytes = self.queue, [], 0
            self.ws = ws
            self.straight_fd = None if ws.backlogged else ws.fd
            ws.transport.write(b"".join(websocket.text_frame(p.encode()) for p in pending if p != NOOP))
            self.flush_slots()
        else:
            ws.close(CloseCode.PROTOCOL_ERROR, "expected the upgrade probe")

    # Closing

    def close(
        self, reason: str, *, abort: bool = False, code: CloseCode = CloseCode.GOING_AWAY, detail: str = ""
    ) -> None:
        """End the session. `abort` drops it at once; otherwise what was sent is delivered first.

        A WebSocket closed without `abort` gets a close frame with `code` and `detail`.
        """
        if self.closed:
            return
        if not abort and self.engine.batch is not None:
            self.engine.flush()  # what this loop turn sent it (a reason, a DISCONNECT) goes out first
        self.closed = True
        self.straight_fd = None
        self.close_reason = reason
        self.slots = None
        self.chunks = None
        for ws in (self.ws, self.upgrading):
            if ws is None:
                continue
            if abort:
                ws.transport.abort()
            else:
                ws.close(code, detail)
        if abort:
            self.queue, self.queued_bytes = [], 0
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)  # ends a pending long-poll (see `poll`)
        self.engine.forget(self)


def straight_fd(transport: asyncio.BaseTransport) -> int | None:
    """The transport's socket descriptor; None where bytes must pass through the transport (TLS, no socket)."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        return None
    return int(sock.fileno())


class WebSocketConnection(asyncio.Protocol):
    """The protocol of an upgraded connection: Engine.IO packets in WebSocket messages."""

    __slots__ = ("backlogged", "engine", "fd", "lagging", "parser", "pings", "session", "transport")

    def __init__(self, engine: Engine, session: Session) -> None:
        self.engine = engine
        self.session = session
        self.parser = websocket.FrameParser(engine.settings.max_payload)
        self.fd: int | None = None  # the session's `straight_fd` whenever nothing is unsent
        self.backlogged = False  # the transport holds bytes the socket has not taken yet
        self.lagging = False  # ... more than `conflate_above` of them, since it last held none
        self.pings: TokenBucket | None = None  # made on the first ping: most clients never send one

    @property
    def unsent(self) -> int:
        """Bytes written and not yet taken by the client's socket."""
        return self.transport.get_write_buffer_size()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.fd = straight_fd(transport)
        # Paused at the first unsent byte, resumed at none (see the module). The transport may hold
        # bytes of the HTTP side already (and have paused that protocol, not this one, for them).
        transport.set_write_buffer_limits(high=0)
        self.backlogged = transport.get_write_buffer_size() > 0
        if self.session.ws is self:  # a direct WebSocket: its open packet went with the 101 (the engine's Upgrade)
            if not self.backlogged:
                self.session.straight_fd = self.fd
            self.engine.handler.opened(self.session)

    def data_received(self, data: bytes) -> None:
        try:
            for opcode, payload in self.parser.feed(data):
                if self.transport.is_closing():
                    return
                self._message(opcode, payload)
        except UnicodeDecodeError:
            self._violation(CloseCode.INVALID_DATA, "text frames must be UTF-8")
        except WebSocketError as exc:
            self._violation(exc.code, str(exc))

    def _violation(self, code: CloseCode, reason: str) -> None:
        self.engine.observer.protocol_closed(f"websocket_{int(code)}")
        self.close(code, reason)

    def _message(self, opcode: Opcode, payload: bytes) -> None:
        session = self.session
        if opcode == Opcode.TEXT:
            if session.closed:
                return
            if self is session.upgrading:
                session.probe(self, payload.decode())
            else:
                session.receive(payload.decode())
        elif opcode == Opcode.BINARY:
            if self is session.ws and not session.closed:
                session.receive_binary(payload)
        elif opcode == Opcode.PING:
            if self.pings is None:
                self.pings = TokenBucket(PINGS_PER_S, PINGS_BURST)
            if not self.pings.take():
                self._violation(CloseCode.POLICY_VIOLATION, f"at most {PINGS_PER_S:g} pings per second")
                return
            pong = websocket.frame(Opcode.PONG, payload)
            if self.unsent + len(pong) > self.engine.settings.max_buffered:
                self.engine.overflow(session)  # pings from a client that does not read its pongs
            else:
                self.transport.write(pong)
        elif opcode == Opcode.CLOSE:
            self.close(CloseCode.NORMAL)

    def pause_writing(self) -> None:
        # The transport holds unsent bytes: until it has written them all, so does everything after them.
        self.backlogged = True
        if self.session.ws is self:
            self.session.straight_fd = None  # its packets go through `deliver` (conflated when lagging, bounded)

    def resume_writing(self) -> None:
        # The transport has written everything: straight writes again, and what was conflated meanwhile.
        self.backlogged = False
        if self.lagging:
            self.lagging = False
            self.transport.resume_reading()
        session = self.session
        if session.ws is self and not session.closed and not self.transport.is_closing():
            session.straight_fd = self.fd
            session.flush_slots()

    def lag(self) -> None:
        """The backlog passed `conflate_above`: lagging until the client has taken all of it.

        A client that does not read does not get its input handled either: whatever it sends
        (pings, events) would only make the node write more for it.
        """
        if not self.lagging:
            self.lagging = True
            self.transport.pause_reading()

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Send a close frame, then close once written (a client that stopped reading is aborted instead)."""
        if self.transport.is_closing():
            return
        if self.session.ws is self:
            self.session.straight_fd = None  # nothing may reach the socket after the close frame
        if self.lagging:
            self.transport.abort()
            return
        self.transport.write(websocket.close_frame(code, reason))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if self is session.ws:
            session.straight_fd = None  # the transport closes the descriptor next: nothing may write to its number
        if self is session.upgrading:
            session.upgrading = None  # a failed upgrade: the session stays on long-polling
        elif self is session.ws:
            session.close("transport_close", abort=True)
            session.ws = session.straight_fd = None  # no cycle left for the garbage collector (see Engine.forget)
