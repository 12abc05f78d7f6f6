"""The collector's WebSocket receiver against a hand-driven server: fragments, hostile frames, closes, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import picows
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collectors.exchanges.binance import Binance
from collectors.feed.connection import Connection, LinkSettings
from collectors.feed.receiver import MAX_MESSAGE_BYTES, ConnectionLost, Receiver
from gateway.protocol.websocket import accept_key
from shared.topics import Topic
from tests.collector_support import Recorder, wait_until
from tests.harness import RawWebSocket, ws_frame

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class Peer(RawWebSocket):
    """The server's side of one connection: unmasked frames out, the client's frames in."""

    def send_frame(self, payload: str | bytes, *, opcode: int = TEXT, fin: bool = True) -> None:
        self.writer.write(ws_frame(payload, opcode=opcode, fin=fin, masked=False))

    async def close_code(self) -> int:
        while True:
            opcode, payload = await self.receive()
            if opcode == CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])


Script = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def ws_server(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A WebSocket server that accepts the upgrade, then runs `script` on each connection."""

    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            if tls is not None:  # here rather than in start_server, so a failed handshake's socket is closed too
                await writer.start_tls(tls)
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
            )
            await script(Peer(reader, writer))
            await writer.drain()
            await reader.read()  # until the client goes
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'wss' if tls else 'ws'}://{'localhost' if tls else '127.0.0.1'}:{port}/stream"
    finally:
        server.close()
        for writer in writers:  # a connection still open (its handler waits for the client): close it too
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        await server.wait_closed()


class Messages:
    """The receiver's sink: every message, and how often the peer showed it was alive."""

    def __init__(self) -> None:
        self.data: list[str | bytes] = []
        self.alive_calls = 0

    def received(self, data: str | bytes) -> None:
        self.data.append(data)

    def alive(self) -> None:
        self.alive_calls += 1


async def receive(script: Script) -> tuple[Messages, BaseException | None, picows.WSTransport]:
    """Connect a Receiver to a server running `script`; wait for the socket to end (or a short while)."""
    messages = Messages()
    async with ws_server(script) as url:
        receiver = Receiver(messages)
        transport, _ = await picows.ws_connect(lambda: receiver, url, max_frame_size=MAX_MESSAGE_BYTES)
        await asyncio.wait({receiver.ended}, timeout=2)
        error = receiver.ended.exception() if receiver.ended.done() else None
        await receiver.close(transport, 1.0)
    return messages, error, transport


async def test_fragments_are_joined_and_pings_between_them_answered() -> None:
    pongs: list[bytes] = []

    async def script(peer: Peer) -> None:
        peer.send_frame('{"a":', fin=False)
        peer.send_frame(b"hi", opcode=PING)
        peer.send_frame("1", opcode=CONTINUATION, fin=False)
        peer.send_frame("}", opcode=CONTINUATION)
        peer.send_frame(b"\x00\x01", opcode=BINARY)
        peer.send_frame("é")
        peer.send_frame(b"", opcode=PONG)
        opcode, payload = await peer.receive()
        if opcode == PONG:
            pongs.append(payload)

    messages, error, _ = await receive(script)
    assert messages.data == ['{"a":1}', b"\x00\x01", "é"]
    assert messages.alive_calls == 1 and pongs == [b"hi"] and error is None


@pytest.mark.parametrize(
    ("frames", "code", "fault"),
    [
        ([(b"\xff\xfe", TEXT, True)], 1007, "not UTF-8"),
        ([(b"x", CONTINUATION, True)], 1002, "no message to continue"),
        ([(b"x", TEXT, False), (b"y", TEXT, True)], 1002, "inside a fragmented one"),
        (
            [(b"x" * (MAX_MESSAGE_BYTES // 2), opcode, False) for opcode in (TEXT, CONTINUATION, CONTINUATION)],
            1009,
            f"over {MAX_MESSAGE_BYTES} bytes",
        ),
    ],
    ids=["bad-utf8", "stray-continuation", "interleaved", "too-big-in-fragments"],
)
async def test_a_hostile_message_closes_with_its_code_and_says_why(
    frames: list[tuple[bytes, int, bool]], code: int, fault: str
) -> None:
    codes: list[int] = []

    async def script(peer: Peer) -> None:
        for payload, opcode, fin in frames:
            peer.send_frame(payload, opcode=opcode, fin=fin)
        codes.append(await peer.close_code())

    messages, error, _ = await receive(script)
    assert isinstance(error, ConnectionLost) and fault in str(error)
    assert codes == [code] and messages.data == []


async def test_a_frame_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    async def script(peer: Peer) -> None:
        peer.writer.write(bytes([0x81, 127]) + struct.pack("!Q", MAX_MESSAGE_BYTES + 1))

    messages, error, _ = await receive(script)
    assert isinstance(error, ConnectionLost) and messages.data == []


async def test_the_exchange_closing_ends_the_socket_with_its_code() -> None:
    async def script(peer: Peer) -> None:
        peer.send_frame('{"x":1}')
        peer.send_frame(struct.pack("!H", 1001) + b"restart", opcode=CLOSE)

    messages, error, _ = await receive(script)
    assert messages.data == ['{"x":1}']
    assert isinstance(error, ConnectionLost) and "code 1001" in str(error)


# -- TLS, through the whole connection --------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1788481292965,"s":"BTCUSDT","t":6653570805,'
    '"p":"81207.45000000","q":"0.00016000","T":1788481292964,"m":true,"M":true}}'
)


async def run_binance(url: str, timeout_s: float = 5.0) -> tuple[Recorder, Connection]:
    """A Binance connection to `url` subscribed to BTC/USDT trades, run until a trade arrives (or `timeout_s`)."""
    host = Recorder()
    adapter = Binance(host=host, urls={"ws": url})
    # One attempt in the window: a refused connection then waits out its backoff when the test ends it.
    conn = Connection("ws-1", "ws", adapter=adapter, settings=LinkSettings(backoff_initial_s=10, backoff_max_s=10))
    conn.add({adapter.want(Topic.parse("binance:trades:BTC/USDT"))})
    task = asyncio.create_task(conn.run())
    try:
        with contextlib.suppress(AssertionError):  # none came: the caller says whether that is right
            await wait_until(lambda: bool(host.trades), timeout=timeout_s)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return host, conn


async def serve_a_trade(peer: Peer) -> None:
    _, request = await peer.receive()  # the SUBSCRIBE
    assert b"btcusdt@trade" in request
    peer.send_frame(TRADE)


async def test_wss_to_a_server_whose_certificate_is_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system store, as the collector's context loads it
    async with ws_server(serve_a_trade, tls) as url:
        host, conn = await run_binance(url)
    assert [trade.trade_id for trade in host.trades] == ["6653570805"]
    assert conn.last_error == ""


async def test_wss_refuses_a_certificate_it_does_not_trust(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with ws_server(serve_a_trade, tls) as url:
        host, conn = await run_binance(url, timeout_s=1.0)
    assert host.trades == []
    assert "CERTIFICATE_VERIFY_FAILED" in conn.last_error and conn.reconnects >= 1
