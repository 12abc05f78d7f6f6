"""A small, strict HTTP/1.1 server (h11) that can hand a connection over to a WebSocket protocol.

Why not aiohttp's server: a WebSocket there keeps a request handler, a task
and its buffers alive for the whole connection (about 14 KiB per idle
connection measured here); after the upgrade this server keeps nothing but
the protocol object the handler returns.

One request at a time per connection: reading pauses while a handler runs.
Heads are limited in size, bodies by Content-Length (no chunked uploads),
and a connection that sends no complete request in time is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, cast
from urllib.parse import parse_qsl, urlsplit

import h11
import h11._readers

from gateway.limits import KeyedBuckets, address_key
from gateway.protocol import request_head, websocket
from gateway.protocol.deadlines import CONNECTION_GRANULARITY_S, Deadlines

# h11 reads header lines with a pattern that costs quadratic time on a crafted line (see
# `request_head.HEADER_FIELD`); the linear one matches the same lines with the same groups.
h11._readers.header_field_re = request_head.HEADER_FIELD

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 10.0
# Requests whose parsing starts in one turn of the event loop; see RequestIntake.
REQUESTS_PER_TURN: Final = 8
SERVER_HEADER: Final = (b"server", b"fanout-gateway")
# A WebSocket handshake's answer up to its Sec-WebSocket-Accept value (RFC 6455 4.2.2).
SWITCHING_PROTOCOLS: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
)
# SO_LINGER on, with a zero timeout: closing the socket resets the connection (RST) instead of a FIN.
RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)

# Request targets whose parse is remembered: every client of a deployment sends one of a few
# ("/socket.io/?EIO=4&transport=websocket"), and parsing one cost more than the rest of a plain head.
# Only short ones (a polling request's random `t` makes each target new): at most about 100 KB.
TARGETS_CACHED: Final = 128
CACHED_TARGET_BYTES: Final = 256


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes
    remote: str  # the client's address (from X-Forwarded-For behind a trusted proxy)

    @property
    def wants_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=UTF-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Upgrade:
    """Accept a WebSocket handshake and give the connection to `protocol`.

    `greeting` (frames the protocol sends first) goes in the same write as the 101: one send, not two.
    """

    protocol: asyncio.Protocol
    greeting: bytes = b""


Outcome = Response | Upgrade
# A handler answers at once, or with an awaitable when it must wait (a long-poll, a Redis read). A
# WebSocket handshake is answered at once: no task, no coroutine, on every connect.
Handler = Callable[[Request], Outcome | Awaitable[Outcome]]


class RequestIntake:
    """At most `per_turn` connections start reading a request per turn of the event loop; the rest wait, in order.

    Why: a burst of connections (a node's worth of clients reconnecting, or one
    address opening 80 sockets at once) would otherwise all be parsed and
    answered in one turn, and every delivery already read waits for that turn
    to end. A waiting connection is not read (its socket holds the bytes), so
    the queue holds at most one entry per open connection.
    """

    def __init__(self, per_turn: int = REQUESTS_PER_TURN) -> None:
        self._per_turn = per_turn
        self._taken = 0
        self._waiting: deque[Callable[[], None]] = deque()
        self._turn_scheduled = False

    def take(self) -> bool:
        """One start in this turn, if the turn has one left and nobody waits for it."""
        if self._waiting or self._taken >= self._per_turn:
            return False
        self._taken += 1
        self._schedule_turn()
        return True

    def wait(self, start: Callable[[], None]) -> None:
        """Call `start` in a later turn, after every start that waited before it."""
        self._waiting.append(start)
        self._schedule_turn()

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._taken = 0
        waiting = self._waiting
        while waiting and self._taken < self._per_turn:
            self._taken += 1
            waiting.popleft()()
        if self._taken:
            self._schedule_turn()


@dataclass(slots=True)
class AcceptLimit:
    """TCP connections per address (an IPv6 /64), checked when a connection is accepted.

    Why here and not only per Engine.IO handshake: a flood of connections
    from one address costs a parse, a response and a task each before the
    handshake limit can refuse it. Refused here, a connection is reset at
    once, unread and unanswered: an address past this rate is already far
    past the handshake rate, which answers 429 to clients that behave, and
    a reset costs the node about 60% of a 429 written and lingered.
    """

    buckets: KeyedBuckets
    on_refused: Callable[[], None]

    def admits(self, address: str) -> bool:
        if self.buckets.take(address_key(address)):
            return True
        self.on_refused()
        return False


def reset(transport: asyncio.BaseTransport) -> None:
    """Close a connection at once with a TCP reset: nothing of it is read, answered or kept."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    cast(asyncio.Transport, transport).abort()


class HttpProtocol(asyncio.Protocol):
    """One client connection, until it closes or becomes a WebSocket."""

    def __init__(
        self,
        handler: Handler,
        max_body_bytes: int,
        connections: set[HttpProtocol],
        intake: RequestIntake,
        deadlines: Deadlines[HttpProtocol],
        *,
        trust_forwarded_for: bool,
        accept_limit: AcceptLimit | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._handler = handler
        self._deadlines = deadlines  # each request's, from the connection (or the last answer) to its whole head
        self._request_timeout_s = request_timeout_s
        self._accept_limit = accept_limit
        self._max_body = max_body_bytes
        self._connections = connections
        self._intake = intake
        self._waiting = False  # for a turn of the intake
        self._trust_forwarded_for = trust_forwarded_for
        self._h11: h11.Connection | None = None  # made on first use (`_conn`)
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._task: asyncio.Task[None] | None = None
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._end_unread = False  # the current request's EndOfMessage is still in h11's buffer
        self._fresh = True  # nothing read yet
        self._first: bytes | None = None  # the first bytes read, while they may be a plain upgrade head
        self._plain: bytes | None = None  # the head of the request being answered, read without h11

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        if self._accept_limit is not None and not self._accept_limit.admits(self._remote):
            self._transport = None
            reset(transport)
            return
        self._connections.add(self)
        self._deadlines.set(self, self._request_timeout_s)

    @property
    def _conn(self) -> h11.Connection:
        """h11's state of the connection, made on first use: a plain upgrade head (`request_head`) never needs it."""
        if self._h11 is None:
            self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        return self._h11

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        self._deadlines.clear(self)
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._fresh:  # kept whole: it may be a plain upgrade head (`request_head`), read without h11
            self._fresh = False
            self._first = data
        else:
            self._to_h11()
            self._conn.receive_data(data)
        if self._task is None and not self._waiting:
            self._read_or_wait()

    def eof_received(self) -> bool | None:
        self._fresh = False
        self._to_h11()
        self._conn.receive_data(b"")
        if self._task is None and not self._waiting:
            self._read_or_wait()
        return None

    def _read_or_wait(self) -> None:
        if self._intake.take():
            self._next_request()
            return
        assert self._transport is not None
        self._waiting = True
        self._transport.pause_reading()
        self._intake.wait(self._read_in_turn)

    def _read_in_turn(self) -> None:
        self._waiting = False
        if self._transport is None:  # closed while it waited
            return
        self._transport.resume_reading()
        if self._task is None:
            self._next_request()

    def close(self) -> None:
        """Close an idle keep-alive connection or one whose request is still running (shutdown)."""
        if self._transport is not None:
            self._transport.close()

    def _next_request(self) -> None:
        """Answer the next complete request in h11's buffer, or start its handler's task."""
        request = self._complete_request()
        if request is None:
            return
        assert self._transport is not None
        self._transport.pause_reading()
        try:
            outcome = self._handler(request)
        except Exception:  # noqa: BLE001 - logged, with its traceback, by _failed
            outcome = _failed(request)
        if isinstance(outcome, Outcome):
            if self._answer(request, outcome):
                self._read_or_wait()  # a keep-alive connection's next request waits its turn like any other
        else:
            self._task = asyncio.get_running_loop().create_task(self._respond(request, outcome))

    def _to_h11(self) -> None:
        """Give h11 the first bytes read if no request was read from them yet."""
        if self._first is not None:
            self._conn.receive_data(self._first)
            self._first = None

    def _plain_request(self) -> Request | None:
        """The request in the first bytes read, if they are one plain upgrade head (h11 has not seen them)."""
        data, self._first = self._first, None
        assert data is not None
        head = request_head.plain_upgrade(data, MAX_HEAD_BYTES)
        if head is not None:
            target, headers = head
            with contextlib.suppress(ValueError):  # a target no URL parser reads: h11's path answers it
                request = self._request(b"GET", target, headers, b"")
                self._plain = data
                return request
        self._conn.receive_data(data)
        return None

    def _complete_request(self) -> Request | None:
        """The next complete request from h11's buffer; None while incomplete, or after answering a broken one."""
        if self._first is not None and (request := self._plain_request()) is not None:
            self._deadlines.clear(self)
            return request
        try:
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return None
                if isinstance(event, h11.ConnectionClosed):
                    self.close()
                    return None
                if isinstance(event, h11.Request):
                    self._head = event
                    self._body = bytearray()
                    if not self._check_head(event):
                        # No body: the request is whole. h11's EndOfMessage (a quarter of its work on a
                        # handshake) is read only if the answer goes through h11, never for an upgrade.
                        self._end_unread = True
                        break
                elif isinstance(event, h11.Data):
                    self._body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, str(exc))
            return None
        self._deadlines.clear(self)
        assert self._head is not None
        try:
            head = self._head
            request = self._request(head.method, head.target, head.headers, bytes(self._body))
        except ValueError as exc:  # a target h11 accepts but no URL parser can read, e.g. "http://[::1/x"
            self._fail(400, f"bad request target: {exc}")
            return None
        self._head, self._body = None, bytearray()
        return request

    def _check_head(self, head: h11.Request) -> int:
        """The length of the request's body, after refusing heads and bodies this server does not take."""
        # h11 bounds only a head still arriving; one read can bring a whole big head.
        if sum(len(name) + len(value) + 4 for name, value in head.headers) + len(head.target) > MAX_HEAD_BYTES:
            raise h11.RemoteProtocolError(f"request heads are limited to {MAX_HEAD_BYTES} bytes", 431)
        headers = dict(head.headers)
        if b"transfer-encoding" in headers:
            raise h11.RemoteProtocolError("chunked request bodies are not accepted", error_status_hint=411)
        length = int(headers.get(b"content-length", b"0"))
        if length > self._max_body:
            raise h11.RemoteProtocolError(f"bodies are limited to {self._max_body} bytes", error_status_hint=413)
        return length

    def _request(
        self, method: bytes, target: bytes, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Request:
        """The request as handlers see it; raises ValueError for a target that is not a URL."""
        path, query = (_read_target if len(target) <= CACHED_TARGET_BYTES else _parse_target)(target)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers}
        return Request(
            method=method.decode("ascii"),
            path=path,
            query=dict(query),
            headers=headers,
            body=body,
            remote=self._client_address(headers),
        )

    def _client_address(self, headers: dict[str, str]) -> str:
        """The peer's address; behind a trusted proxy, the one the proxy appended last to X-Forwarded-For."""
        if self._trust_forwarded_for:
            forwarded = headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
            if forwarded:
                return forwarded
        return self._remote

    async def _respond(self, request: Request, pending: Awaitable[Outcome]) -> None:
        try:
            outcome = await pending
        except Exception:  # noqa: BLE001 - logged, with its traceback, by _failed
            outcome = _failed(request)
        finally:
            self._task = None
        if self._answer(request, outcome):
            self._next_request()

    def _answer(self, request: Request, outcome: Outcome) -> bool:
        """Send the outcome; True if the connection stays HTTP, ready for its next request."""
        transport = self._transport
        if transport is None:
            return False
        if isinstance(outcome, Upgrade):
            self._upgrade(request, outcome)
            return False
        try:
            self._read_end()
            self._send(outcome, body=request.method != "HEAD")
            if self._conn.our_state is h11.MUST_CLOSE or self._conn.their_state is h11.MUST_CLOSE:
                transport.close()
                return False
            self._conn.start_next_cycle()
        except h11.LocalProtocolError:
            logger.exception("could not answer a request", extra={"path": request.path})
            transport.close()
            return False
        transport.resume_reading()
        self._deadlines.set(self, self._request_timeout_s)
        return True

    def _read_end(self) -> None:
        """Take from h11 the end of a request without body, left unread by `_complete_request`.

        A plain upgrade head answered without the upgrade (a refusal) goes through h11 first, so
        that h11 answers it as it answers any request.
        """
        if self._plain is not None:
            data, self._plain = self._plain, None
            self._conn.receive_data(data)
            if not isinstance(self._conn.next_event(), h11.Request):
                raise h11.LocalProtocolError("h11 did not read a head the plain reader read")
            self._end_unread = True
        if self._end_unread:
            self._end_unread = False
            if not isinstance(self._conn.next_event(), h11.EndOfMessage):
                raise h11.LocalProtocolError("a request without a body did not end at its head")

    def _send(self, response: Response, *, body: bool = True) -> None:
        """The response; `body=False` answers a HEAD (same headers, no body)."""
        assert self._transport is not None
        headers = [
            SERVER_HEADER,
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *((name.encode(), value.encode()) for name, value in response.headers),
        ]
        reason = HTTPStatus(response.status).phrase.encode()
        data = self._conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if body and response.body:
            data += self._conn.send(h11.Data(data=response.body))
        self._transport.write(data + self._conn.send(h11.EndOfMessage()))

    def _upgrade(self, request: Request, upgrade: Upgrade) -> None:
        """Answer 101 and hand the transport (and any bytes already read) to `upgrade.protocol`."""
        transport = self._transport
        assert transport is not None
        accept = websocket.accept_key(request.headers["sec-websocket-key"]).encode()
        # Written as bytes, not through h11: the connection leaves HTTP here, and this is every connect's cost.
        transport.write(SWITCHING_PROTOCOLS + accept + b"\r\n\r\n" + upgrade.greeting)
        leftover = b"" if self._h11 is None else self._h11.trailing_data[0]  # a plain head: h11 read nothing
        self._plain = None
        self._connections.discard(self)
        self._transport = None
        protocol = upgrade.protocol
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if leftover:
            protocol.data_received(bytes(leftover))
        transport.resume_reading()

    def _fail(self, status: int, message: str) -> None:
        """Answer a broken request with its status, then close."""
        transport = self._transport
        if transport is None:
            return
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                self._send(Response(status, message.encode()))
        transport.close()


def _parse_target(target: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A request target's path and query pairs; raises ValueError for a target that is not a URL."""
    url = urlsplit(target.decode("latin-1"))
    return url.path, tuple(parse_qsl(url.query, keep_blank_values=True))


_read_target = functools.lru_cache(maxsize=TARGETS_CACHED)(_parse_target)  # a ValueError is not remembered


def _failed(request: Request) -> Response:
    """The answer of a handler that raised (logged with its traceback)."""
    logger.exception("request handler failed", extra={"path": request.path})
    return Response(500, b"internal error")


def websocket_handshake_error(request: Request) -> str | None:
    """Why a request is not an acceptable WebSocket handshake, or None."""
    if request.method != "GET":
        return "a WebSocket handshake must be a GET"
    if "upgrade" not in request.headers.get("connection", "").lower():
        return "the Connection header must include Upgrade"
    if request.headers.get("sec-websocket-version") != "13":
        return "only WebSocket version 13 is supported"
    if not websocket.valid_key(request.headers.get("sec-websocket-key", "")):
        return "a valid Sec-WebSocket-Key is required"
    return None


class HttpServer:
    """Listens on one address; `close` stops listening and closes idle connections."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        trust_forwarded_for: bool = False,
        accept_limit: AcceptLimit | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._handler = handler
        self._max_body = max_body_bytes
        self._trust_forwarded_for = trust_forwarded_for
        self._accept_limit = accept_limit
        self._connections: set[HttpProtocol] = set()
        self._intake = RequestIntake()
        self._request_timeout_s = request_timeout_s
        self._deadlines: Deadlines[HttpProtocol] = Deadlines(HttpProtocol.close, granularity_s=CONNECTION_GRANULARITY_S)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen; with `reuse_port`, beside other processes on the same port (the kernel spreads connections)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(
                self._handler,
                self._max_body,
                self._connections,
                self._intake,
                self._deadlines,
                trust_forwarded_for=self._trust_forwarded_for,
                accept_limit=self._accept_limit,
                request_timeout_s=self._request_timeout_s,
            ),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=4096,
        )

    @property
    def port(self) -> int:
        """The port listened on (the one the kernel chose, when started with port 0)."""
        assert self._server is not None, "not listening"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def close_connections(self) -> None:
        for connection in list(self._connections):
            connection.close()
        self._deadlines.close()
