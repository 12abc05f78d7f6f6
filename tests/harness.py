"""Test helpers: run real gateway nodes on free ports, mint tokens, drive real clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import socketio
from cryptography.hazmat.primitives import serialization

from gateway.config import GatewayConfig
from gateway.node import GatewayNode
from shared.embedded_redis import free_port

SECRET = "test-secret-that-is-long-enough-for-hs256"


def make_token(
    sub: str | None = "alice",
    *,
    teams: list[str] | None = None,
    exp_in: float = 300,
    secret: str = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = time.time()
    payload: dict[str, Any] = {"iat": int(now), "exp": int(now + exp_in), **claims}
    if sub is not None:
        payload["sub"] = sub
    if teams is not None:
        payload["teams"] = teams
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


@dataclass
class RunningNode:
    node: GatewayNode
    url: str

    stopped: bool = False

    async def stop(self) -> None:
        """Stop the node (once; the context manager's exit does nothing after this)."""
        if not self.stopped:
            self.stopped = True
            await self.node.close()


@asynccontextmanager
async def running_node(redis_url: str, **overrides: Any) -> AsyncIterator[RunningNode]:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "jwt_secret": SECRET,
        "jwt_leeway_s": 0.0,
        # Every test client comes from 127.0.0.1: the per-address handshake
        # limit is tested on its own (tests/hostile), not by every test.
        "handshake_burst_per_ip": 100_000,
        "accept_burst_per_ip": 100_000,
    }
    settings.update(overrides)
    config = GatewayConfig(**settings)
    node = GatewayNode(config, redis_url=redis_url)
    await node.start()
    running = RunningNode(node, f"http://127.0.0.1:{config.port}")
    try:
        await wait_until(lambda: node.relay.ready)
        yield running
    finally:
        await running.stop()


async def wait_until(condition: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Client:
    """A python-socketio AsyncClient that records every event it receives."""

    sio: socketio.AsyncClient
    events: dict[str, asyncio.Queue[tuple[Any, ...]]] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)  # every event's name, in arrival order
    connect_error: Any = None
    disconnects: list[Any] = field(default_factory=list)

    def queue(self, event: str) -> asyncio.Queue[tuple[Any, ...]]:
        return self.events.setdefault(event, asyncio.Queue())

    async def next(self, event: str, timeout: float = 5.0) -> tuple[Any, ...]:
        """The next `event` received; other events stay queued for their own `next`."""
        return await asyncio.wait_for(self.queue(event).get(), timeout)

    async def nothing(self, event: str, within: float = 0.3) -> None:
        """Assert no `event` arrives within `within` seconds."""
        try:
            args = await self.next(event, timeout=within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {event}: {args}")

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.sio.shutdown()


def new_client(reconnection: bool = False) -> Client:
    sio = socketio.AsyncClient(reconnection=reconnection, reconnection_delay=0.1, reconnection_delay_max=0.5)
    client = Client(sio)

    async def catch_all(event: str, *args: Any) -> None:
        client.received.append(event)
        client.queue(event).put_nowait(args)

    async def on_connect_error(data: Any) -> None:
        client.connect_error = data

    async def on_disconnect(reason: Any = None) -> None:
        client.disconnects.append(reason)

    sio.on("*", catch_all)
    sio.on("connect_error", on_connect_error)
    sio.on("disconnect", on_disconnect)
    return client


@asynccontextmanager
async def connected(
    url: str,
    token: str | None,
    *,
    transport: str = "websocket",
    reconnection: bool = False,
    auth: dict[str, Any] | None = None,
) -> AsyncIterator[Client]:
    """A connected client; `auth` replaces the plain `{token}` payload when given."""
    client = new_client(reconnection)
    payload = auth if auth is not None else ({"token": token} if token is not None else None)
    await client.sio.connect(url, auth=payload, transports=[transport], wait_timeout=5)
    try:
        yield client
    finally:
        await client.close()


def free_port_block(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now."""
    for base in range(20000 + (os.getpid() % 1000) * 37, 60000, count + 7):
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no block of free ports")


def ws_frame(payload: str | bytes, *, opcode: int = 0x1, fin: bool = True, masked: bool = True) -> bytes:
    """A client WebSocket frame, masked as RFC 6455 requires (unless told otherwise)."""
    data = payload.encode() if isinstance(payload, str) else payload
    header = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if len(data) < 126:
        header += bytes([mask_bit | len(data)])
    elif len(data) < 65536:
        header += bytes([mask_bit | 126]) + struct.pack("!H", len(data))
    else:
        header += bytes([mask_bit | 127]) + struct.pack("!Q", len(data))
    if not masked:
        return header + data
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@dataclass
class RawWebSocket:
    """A hand-driven WebSocket, for what real clients never send (and for clients that stop reading)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, payload: str | bytes, **frame_options: Any) -> None:
        self.writer.write(ws_frame(payload, **frame_options))
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame (opcode, payload), unmasked if a client sent it; opcode 8 is a close frame."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            data = await self.reader.readexactly(length)
            return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if second & 0x80 else data

    async def receive_text(self, timeout: float = 5.0) -> str:
        opcode, payload = await self.receive(timeout)
        assert opcode == 0x1, (opcode, payload)
        return payload.decode()

    def close(self) -> None:
        self.writer.close()


async def raw_websocket(url: str, query: str = "EIO=4&transport=websocket", rcvbuf: int | None = None) -> RawWebSocket:
    """Open /socket.io/ as a WebSocket; `rcvbuf` shrinks the receive buffer (a client that can stall)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf or 2**16)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /socket.io/?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawWebSocket(reader, writer)


@asynccontextmanager
async def jwks_server(
    keys: dict[str, Any], published: list[str], fetches: list[int] | None = None, gate: asyncio.Event | None = None
) -> AsyncIterator[str]:
    """An identity provider's JWKS endpoint serving the public half of `keys[kid]` for each kid in `published`.

    With a `gate`, each answer waits until it is set (a slow provider).
    """
    from aiohttp import web  # noqa: PLC0415 - only the tests that need an identity provider load it

    async def serve(_request: web.Request) -> web.Response:
        if fetches is not None:
            fetches.append(1)
        if gate is not None:
            await gate.wait()
        entries = []
        for kid in published:
            public = keys[kid].public_key()
            algorithm = jwt.algorithms.ECAlgorithm if hasattr(public, "curve") else jwt.algorithms.RSAAlgorithm
            jwk = json.loads(algorithm.to_jwk(public))
            entries.append({**jwk, "kid": kid, "use": "sig"})
        return web.json_response({"keys": entries})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/jwks.json"
    finally:
        await runner.cleanup()


def private_pem(key: Any) -> str:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
