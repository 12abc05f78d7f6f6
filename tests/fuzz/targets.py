"""Fuzz targets of the edge's parsers: each takes the fuzzer's bytes and fails only on a real defect.

A target raises (AssertionError, or any exception the parser should never let out) for a defect;
every refusal the parser is meant to make is caught here. `run.py` drives them with atheris
(coverage-guided), `test_fuzz.py` runs each for a bounded time, from the corpus in `corpus/<target>/`.
The per-input time limit of that run is what turns a super-linear parser into a finding.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

from gateway.protocol.deadlines import CONNECTION_GRANULARITY_S, Deadlines
from gateway.protocol.engineio import Engine, EngineSettings, Transport
from gateway.protocol.http import HttpProtocol, Request, RequestIntake, Response
from gateway.protocol.session import Session
from gateway.protocol.sio import ProtocolFault, decode_data, read_header
from gateway.protocol.websocket import FrameParser, WebSocketError
from gateway.pubsub import PubSubError, RespParser
from shared import codec
from shared.errors import PayloadError

MAX_SIZE: Final = 4096


def chunks(data: bytes) -> list[bytes]:
    """The input split as the network might deliver it: the first byte sets the read size."""
    if not data:
        return []
    size = data[0] % 64 + 1
    rest = data[1:]
    return [rest[i : i + size] for i in range(0, len(rest), size)]


def websocket(data: bytes) -> None:
    parser = FrameParser(MAX_SIZE)
    try:
        for chunk in chunks(data):
            for _opcode, payload in parser.feed(chunk):
                assert len(payload) <= MAX_SIZE
            assert parser.buffered <= MAX_SIZE + 14 + len(chunk)
    except WebSocketError:
        pass


def resp(data: bytes) -> None:
    parser = RespParser()
    try:
        for chunk in chunks(data):
            parser.feed(chunk)
    except (PubSubError, ValueError):
        pass


def socketio(data: bytes) -> None:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return
    with contextlib.suppress(ProtocolFault):
        decode_data(read_header(text), text)


def codecs(data: bytes) -> None:
    for decode in (
        codec.decode_market,
        codec.decode_envelope,
        codec.decode_notification,
        codec.decode_stored_notification,
        codec.decode_stored_execution,
        codec.decode_read_marks,
        codec.decode_revocation,
    ):
        with contextlib.suppress(PayloadError):
            decode(data)


class _Transport(asyncio.Transport):
    """An in-memory transport: records what the server writes, and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


class _Reports:
    def conflated(self) -> None: ...
    def overflowed(self) -> None: ...
    def origin_refused(self, origin: str) -> None: ...
    def handshake_limited(self) -> None: ...
    def protocol_closed(self, reason: str) -> None: ...


class _Handler:
    def opened(self, session: Session) -> None: ...
    def message(self, session: Session, text: str) -> None: ...
    def binary(self, session: Session, data: bytes) -> None: ...
    def closed(self, session: Session, reason: str) -> None: ...


SETTINGS: Final = EngineSettings(
    transports=frozenset(Transport),
    cors_origins=(),
    ping_interval_s=25,
    ping_timeout_s=20,
    max_payload=MAX_SIZE,
    conflate_above=1024,
    max_buffered=8192,
    handshake_rate=1e9,
    handshake_burst=10**9,
)
_loop = asyncio.new_event_loop()
_errors: list[dict[str, Any]] = []
_loop.set_exception_handler(lambda _loop, context: _errors.append(context))


def http(data: bytes) -> None:
    """Raw bytes into the HTTP server protocol; every request is answered well-formed or the connection closed."""

    async def answer(request: Request) -> Response:
        return Response(200, b"ok")

    async def drive() -> _Transport:
        transport = _Transport()
        deadlines: Deadlines[HttpProtocol] = Deadlines(HttpProtocol.close, granularity_s=CONNECTION_GRANULARITY_S)
        protocol = HttpProtocol(answer, MAX_SIZE, set(), RequestIntake(), deadlines, trust_forwarded_for=True)
        protocol.connection_made(transport)
        for chunk in chunks(data):
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        protocol.eof_received()
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        assert not deadlines, "a closed connection's request deadline is left behind"
        return transport

    transport = _loop.run_until_complete(drive())
    assert not _errors, _errors
    assert not transport.written or transport.written.startswith(b"HTTP/1.1 "), bytes(transport.written[:60])


def engineio(data: bytes) -> None:
    """A long-polling POST body into a session: handled or refused, and never more held than the bound."""

    async def drive() -> None:
        engine = Engine(_Handler(), SETTINGS, _Reports())
        session = Session(engine, "sid", Request("POST", "/socket.io/", {}, {}, b"", "127.0.0.1"))
        engine.sessions[session.sid] = session
        session.post(data)
        assert session.queued_bytes <= SETTINGS.max_buffered
        await asyncio.sleep(0)

    _loop.run_until_complete(drive())
    assert not _errors, _errors


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "codec": codecs,
    "engineio": engineio,
    "http": http,
    "resp": resp,
    "socketio": socketio,
    "websocket": websocket,
}
