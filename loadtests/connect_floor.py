"""The floor for a connect storm: what Node's reference does per connect, written as bare Python on uvloop.

`relay_bench --idle N --server gateway,node,floor` runs it beside the others, as `send_floor` is
the floor for fan-out. Per connect it does exactly what `node_baseline/server.mjs` does and
nothing the contract adds (no rate buckets, revocations, per-user cap, presence, personal
channels, recovery position or `sync`): read the upgrade request's head, answer 101 with the
Engine.IO open packet, read the client's masked CONNECT frame, check its HS256 token's signature
and `exp` as Node does, and answer the CONNECT (the accept key, framing and unmasking are the
gateway's own functions, `gateway.protocol.websocket`). It keeps no state per connection beyond its
protocol object, and answers `GET /readyz` so the bench sees it ready. A Python server that does
more per connect than this cannot take more connects per CPU-second than it, on this machine.

    python -m loadtests.connect_floor --port 8300    # GATEWAY_JWT_SECRET in the environment
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Final, cast

import uvloop

from gateway.protocol.websocket import accept_key, text_frame, unmask

MAX_HEAD_BYTES: Final = 8192
MAX_FRAME_BYTES: Final = 65535
OPEN: Final = b'0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
READY: Final = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{"ready":true}'
SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
)
KEY_HEADER: Final = b"\r\nsec-websocket-key:"


def b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def valid_token(secret: bytes, token: object) -> bool:
    """Node's `validToken`: an HS256 signature over the first two segments, and `exp` in the future."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        return False
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(b64url(parts[2]), expected):
            return False
        claims = json.loads(b64url(parts[1]))
    except (binascii.Error, ValueError):
        return False
    expires = claims.get("exp") if isinstance(claims, dict) else None
    return isinstance(expires, int | float) and expires > time.time()


class FloorConnection(asyncio.Protocol):
    """One client: the upgrade, then Engine.IO/Socket.IO text frames (CONNECT answered, the rest ignored)."""

    __slots__ = ("_buffer", "_secret", "_sid", "_transport", "_upgraded")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._buffer = b""
        self._upgraded = False
        self._sid = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        position = 0 if self._upgraded else self._upgrade(buffer)
        if position < 0:
            return
        end = len(buffer)
        while end - position >= 6:  # a masked client frame: 2-byte head, 4-byte key at least
            size = buffer[position + 1] & 0x7F
            start = position + 6
            if size == 126:
                size = int.from_bytes(buffer[position + 2 : position + 4], "big")
                start = position + 8
            elif size == 127:
                self._close()
                return
            if start + size > end:
                break
            if buffer[position] == 0x81:
                self._message(unmask(buffer[start : start + size], buffer[start - 4 : start]))
            elif buffer[position] == 0x88:
                self._close()
                return
            position = start + size
        self._buffer = buffer[position:]
        if len(self._buffer) > MAX_FRAME_BYTES + 8:
            self._close()

    def _upgrade(self, buffer: bytes) -> int:
        """Answer the head once it is whole; where the frames start, or -1 while it is not."""
        assert self._transport is not None
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = buffer
            if len(buffer) > MAX_HEAD_BYTES:
                self._close()
            return -1
        head = buffer[:end]
        if head.startswith(b"GET /readyz "):
            self._transport.write(READY)
            self._close()
            return -1
        found = head.lower().find(KEY_HEADER)
        if found < 0:
            self._close()
            return -1
        start = found + len(KEY_HEADER)
        line_end = head.find(b"\r\n", start)
        key = head[start : line_end if line_end >= 0 else end].strip().decode("latin-1")
        accept = accept_key(key).encode()
        self._sid = secrets.token_urlsafe(15).encode()
        self._transport.write(SWITCHING + accept + b"\r\n\r\n" + text_frame(OPEN % self._sid))
        self._upgraded = True
        return end + 4

    def _message(self, text: bytes) -> None:
        """A Socket.IO CONNECT (`40{auth}`) is answered; pongs and anything else need nothing here."""
        assert self._transport is not None
        if not text.startswith(b"40"):
            return
        try:
            auth = json.loads(text[2:]) if len(text) > 2 else {}
        except ValueError:
            auth = None
        token = auth.get("token") if isinstance(auth, dict) else None
        if valid_token(self._secret, token):
            self._transport.write(text_frame(b'40{"sid":"%s"}' % self._sid))
        else:
            self._transport.write(text_frame(b'44{"message":"token_invalid"}'))

    def _close(self) -> None:
        self._buffer = b""
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, secret: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorConnection(secret), host, port, reuse_address=True, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    secret = os.environ.get("GATEWAY_JWT_SECRET")
    if not secret:
        parser.error("GATEWAY_JWT_SECRET must be set (the secret the load client's tokens are signed with)")
    uvloop.run(serve(args.host, args.port, secret.encode()))


if __name__ == "__main__":
    main()
