"""The floor: what Node's reference does per connect and per delivery, written as bare Python on uvloop.

`relay_bench --server floor` runs it beside the others, for a connect storm (`--idle`) and for
fan-out, as `send_floor` prices a bare write. Per connect it does exactly what
`node_baseline/server.mjs` does and nothing the contract adds (no rate buckets, revocations,
per-user cap, presence, personal channels, recovery position or `sync`): read the upgrade
request's head, answer 101 with the Engine.IO open packet, read the client's masked CONNECT frame,
check its HS256 token's signature and `exp` as Node does, and answer the CONNECT (the accept key,
framing and unmasking are the gateway's own functions, `gateway.protocol.websocket`). A
`subscribe` event adds the socket to its topics' audiences and is acknowledged.

Per delivery it does what Node's relay does and nothing more (no topic validation, demand,
sequence numbers, recovery, conflation or per-client bounds): one pattern subscription `md:*`,
read with hiredis; each message framed once as a `market` event (the topic and the payload as
published, as Node emits them); a read's frames of one topic written together to every socket of
the topic (as the gateway batches what one read brings), in one io_uring call where the kernel
allows (`gateway.protocol.send_ring`), else one `os.write` each. A socket that took less is handed
the rest through its transport, and written through it until its backlog is gone. Its latency
under a load is what the machine, Redis and the load clients cost with next to no server between
them: what is left of a server's p99 above it is that server's own.

    python -m loadtests.floor_server --port 8300 --redis-url redis://127.0.0.1:6379
    # GATEWAY_JWT_SECRET in the environment
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Final, cast

import hiredis
import uvloop

from gateway.protocol.send_ring import UNKNOWN, SendRing
from gateway.protocol.websocket import accept_key, text_frame, unmask
from shared.names import MARKET_PREFIX
from shared.redis_target import RedisTarget

MAX_HEAD_BYTES: Final = 8192
MAX_FRAME_BYTES: Final = 65535
OPEN: Final = b'0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
READY: Final = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{"ready":true}'
SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
)
KEY_HEADER: Final = b"\r\nsec-websocket-key:"
PATTERN: Final = MARKET_PREFIX.encode() + b"*"


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


class Audiences:
    """Each topic's sockets, and the one write of a message to all of them."""

    def __init__(self, ring: SendRing | None) -> None:
        self._ring = ring
        self._topics: dict[bytes, dict[FloorConnection, int]] = {}  # topic -> {connection: its descriptor}
        self._fds: dict[bytes, list[int]] = {}  # topic -> the descriptors that take a write straight away

    def join(self, connection: FloorConnection, topic: bytes, fd: int) -> None:
        self._topics.setdefault(topic, {})[connection] = fd
        self._fds.pop(topic, None)

    def leave(self, connection: FloorConnection) -> None:
        for topic in connection.topics:
            self._topics.get(topic, {}).pop(connection, None)
            self._fds.pop(topic, None)

    def relay(self, topic: bytes, data: bytes) -> None:
        """Write `data` (whole frames) to every socket of the topic."""
        audience = self._topics.get(topic)
        if not audience:
            return
        fds = self._fds.get(topic)
        if fds is None:  # a socket joined, left or fell behind: the list again, kept while none is behind
            fds = [fd for connection, fd in audience.items() if not connection.backlogged]
            backlogged = [connection for connection in audience if connection.backlogged]
            for connection in backlogged:
                connection.write_rest(data, 0)
            if not backlogged:
                self._fds[topic] = fds
        if self._ring is not None and not self._ring.closed:
            written = self._ring.send(fds, data)
        else:
            written = [_write(fd, data) for fd in fds]
            if all(count == len(data) for count in written):
                written = None
        if written is None:
            return
        by_fd = {fd: connection for connection, fd in audience.items()}
        for fd, count in zip(fds, written, strict=True):
            if count != len(data):
                by_fd[fd].write_rest(data, count)
        self._fds.pop(topic, None)  # those that took less write through their transports until caught up


def _write(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except OSError:  # full or broken: the transport takes it all and finds out which
        return 0


class FloorConnection(asyncio.Protocol):
    """One client: the upgrade, then Engine.IO/Socket.IO text frames (CONNECT and subscribe answered)."""

    def __init__(self, secret: bytes, audiences: Audiences) -> None:
        self._secret = secret
        self._audiences = audiences
        self._buffer = b""
        self._upgraded = False
        self._sid = b""
        self._transport: asyncio.Transport | None = None
        self.topics: list[bytes] = []

    @property
    def backlogged(self) -> bool:
        """Writes go through the transport while it holds bytes, so that none overtakes them."""
        return self._transport is None or self._transport.get_write_buffer_size() > 0

    def write_rest(self, data: bytes, written: int) -> None:
        if written == UNKNOWN:
            self._close()
        elif self._transport is not None:
            self._transport.write(data[written:])

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
        """A Socket.IO CONNECT (`40{auth}`) is answered, and a `subscribe` event; pongs need nothing here."""
        assert self._transport is not None
        if text.startswith(b"40"):
            self._connect(text[2:])
        elif text.startswith(b"42"):
            self._event(text[2:])

    def _connect(self, payload: bytes) -> None:
        assert self._transport is not None
        try:
            auth = json.loads(payload) if payload else {}
        except ValueError:
            auth = None
        token = auth.get("token") if isinstance(auth, dict) else None
        if valid_token(self._secret, token):
            self._transport.write(text_frame(b'40{"sid":"%s"}' % self._sid))
        else:
            self._transport.write(text_frame(b'44{"message":"token_invalid"}'))

    def _event(self, payload: bytes) -> None:
        """`<ack id>["subscribe",[topics]]`: join each topic, acknowledged as Node does."""
        assert self._transport is not None
        ack, _, body = payload.partition(b"[")
        try:
            event = json.loads(b"[" + body)
        except ValueError:
            return
        if not (isinstance(event, list) and len(event) == 2 and event[0] == "subscribe" and isinstance(event[1], list)):
            return
        topics = [topic for topic in event[1] if isinstance(topic, str)]
        fd = self._transport.get_extra_info("socket").fileno()
        for topic in topics:
            self.topics.append(topic.encode())
            self._audiences.join(self, topic.encode(), fd)
        if ack.isdigit():
            answer = {"ok": True, "results": [{"topic": topic, "ok": True} for topic in topics]}
            self._transport.write(text_frame(b"43" + ack + json.dumps([answer]).encode()))

    def _close(self) -> None:
        self._buffer = b""
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._audiences.leave(self)
        self.topics = []
        self._transport = None


class MarketFeed(asyncio.Protocol):
    """The pattern subscription `md:*`: every message read by hiredis and relayed to its topic."""

    def __init__(self, audiences: Audiences) -> None:
        self._audiences = audiences
        self._reader = hiredis.Reader()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._prefix = len(MARKET_PREFIX)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(PATTERN), PATTERN))

    def data_received(self, data: bytes) -> None:
        """Every message of a read framed, then one write per socket of each topic: as the gateway batches."""
        self._reader.feed(data)
        prefix = self._prefix
        frames: dict[bytes, list[bytes]] = {}
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
                topic = reply[2][prefix:]
                frames.setdefault(topic, []).append(text_frame(b'42["market","%s",%s]' % (topic, reply[3])))
        for topic, framed in frames.items():
            self._audiences.relay(topic, b"".join(framed))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def serve(host: str, port: int, secret: bytes, redis_url: str) -> None:
    loop = asyncio.get_running_loop()
    ring: SendRing | None = None
    with contextlib.suppress(OSError):  # refused here: one os.write a socket
        ring = SendRing.open()
    audiences = Audiences(ring)
    endpoint = RedisTarget.parse(redis_url).seeds[0]
    _, feed = await loop.create_connection(lambda: MarketFeed(audiences), endpoint.host, endpoint.port)
    server = await loop.create_server(
        lambda: FloorConnection(secret, audiences), host, port, reuse_address=True, backlog=4096
    )
    async with server:
        await feed.lost  # Redis gone: the floor stops rather than relay nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="a single Redis, no credentials")
    args = parser.parse_args()
    secret = os.environ.get("GATEWAY_JWT_SECRET")
    if not secret:
        parser.error("GATEWAY_JWT_SECRET must be set (the secret the load client's tokens are signed with)")
    uvloop.run(serve(args.host, args.port, secret.encode(), args.redis_url))


if __name__ == "__main__":
    main()
