"""The audit's attacks on a gateway node, each runnable alone: `python -m loadtests.attacks NAME HOST PORT SECONDS`.

Each attack repeats for the given seconds from its own source address (127.0.254.x, so per-address
limits meet it, not the honest clients) and prints one JSON line: how often it tried, how the node
answered, and whether the node ended every connection the attack opened (`disconnected`). Used by
`attack_bench`, which runs them one by one against a node serving honest clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

import jwt
import redis.asyncio

from shared import names
from shared.events import Notification, NotificationType
from shared.publisher import AsyncPublisher

SECRET: Final = "benchmark-secret-benchmark-secret-0123"  # relay_bench's
SOURCE: Final = "127.0.254.1"
HONEST_TOPIC: Final = "binance:trades:S0/USDT"
DEEP: Final = "[" * 2000 + "]" * 2000
READ_TIMEOUT_S: Final = 5.0
ENDED_WITHIN_S: Final = 10.0


def token(user: str, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600, **claims}, SECRET)


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A client frame (masked with a zero key, which RFC 6455 allows, so the payload goes as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\x00\x00\x00\x00" + payload


class Raw:
    """A raw connection from the attacker's address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, *, rcvbuf: int | None = None) -> Raw:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((SOURCE, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return cls(*await asyncio.open_connection(sock=sock))

    @classmethod
    async def websocket(cls, host: str, port: int, *, rcvbuf: int | None = None) -> Raw:
        raw = await cls.open(host, port, rcvbuf=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        raw.writer.write(
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await raw.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        await raw.frame()  # the Engine.IO OPEN packet
        return raw

    async def frame(self) -> tuple[int, bytes]:
        async with asyncio.timeout(READ_TIMEOUT_S):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

    async def connect(self, auth: dict[str, Any]) -> str:
        """Send a Socket.IO CONNECT; the node's answer (40... or 44...)."""
        self.writer.write(masked(b"40" + json.dumps(auth).encode()))
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8 or payload.startswith((b"40", b"44")):
                return payload.decode(errors="replace")

    async def ended(self) -> bool:
        """Whether the node ends the connection (close frame, EOF or reset) within ENDED_WITHIN_S, reading all."""
        try:
            async with asyncio.timeout(ENDED_WITHIN_S):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


Attack = Callable[[str, int, float, str], Awaitable[dict[str, Any]]]
ATTACKS: dict[str, Attack] = {}


def attack(function: Attack) -> Attack:
    ATTACKS[function.__name__] = function
    return function


async def repeat(seconds: float, once: Callable[[], Awaitable[str]]) -> dict[str, Any]:
    """Run `once` until `seconds` pass; count the outcomes it names (a name with "open" means not ended)."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            outcomes[await once()] += 1
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            # A handshake the node refused (HTTP 429 past the per-address rate) lands here too.
            outcomes[f"{type(exc).__name__}: {str(exc)[:40]}"] += 1
    return {
        "tries": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "disconnected": not any("open" in outcome for outcome in outcomes),
    }


@attack
async def fragment_flood(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """FIN=0, then 40,000 empty continuations (240 KB), no CONNECT."""

    async def once() -> str:
        ws = await Raw.websocket(host, port)
        ws.writer.write(masked(b"4", fin=False) + masked(b"", opcode=0x0, fin=False) * 40_000)
        ended = await ws.ended()
        ws.close()
        return "ended" if ended else "left open"

    return await repeat(seconds, once)


@attack
async def ping_payloads(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """Engine.IO PINGs of 1 MB from a client that does not read."""

    async def once() -> str:
        ws = await Raw.websocket(host, port, rcvbuf=4096)
        for _ in range(100):
            ws.writer.write(masked(b"2" + b"x" * 1_000_000))
            try:
                await asyncio.wait_for(ws.writer.drain(), 2)
            except (TimeoutError, ConnectionError):
                break
        ended = await ws.ended()
        ws.close()
        return "ended" if ended else "left open"

    return await repeat(seconds, once)


@attack
async def websocket_pings(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """WebSocket pings (125 bytes each) by the thousand from a client that never reads its pongs."""

    async def once() -> str:
        ws = await Raw.websocket(host, port, rcvbuf=4096)
        ping = masked(b"p" * 125, opcode=0x9) * 1000
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ws.writer.write(ping)
            try:
                await asyncio.wait_for(ws.writer.drain(), 1)
            except (TimeoutError, ConnectionError):
                break
        ended = await ws.ended()
        ws.close()
        return "ended" if ended else "left open"

    return await repeat(seconds, once)


@attack
async def deep_json_publisher(host: str, port: int, seconds: float, redis_url: str) -> dict[str, Any]:
    """A publisher's JSON nested 2,000 deep on the honest clients' own channel, 100 times a second."""
    client = redis.asyncio.Redis.from_url(redis_url)
    sent = 0
    deadline = time.monotonic() + seconds
    poison = ('{"type":"trade","exchange":"binance","symbol":"S0/USDT","x":' + DEEP + "}").encode()
    while time.monotonic() < deadline:
        await client.publish(names.market_channel(HONEST_TOPIC), poison)
        sent += 1
        await asyncio.sleep(0.01)
    await client.aclose()
    return {"tries": sent, "outcomes": {"published": sent}, "disconnected": None}


@attack
async def mismatched_tokens(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """CONNECTs with an ES256 header against the node's HS256 key, and 50 KB tokens."""

    def code(answer: str) -> str:
        return str(json.loads(answer[2:]).get("data", {}).get("code")) if answer.startswith("44") else answer[:20]

    async def once() -> str:
        ws = await Raw.websocket(host, port)
        alg = await ws.connect({"token": "eyJhbGciOiJFUzI1NiJ9.e30.AAAA"})
        big = await ws.connect({"token": "x" * 50_000})
        ws.close()
        return f"{code(alg)} / {code(big)}"

    return await repeat(seconds, once)


@attack
async def malformed_subscribes(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """An authenticated client subscribing with non-string items, deep JSON and binary events, as fast as it can."""
    ws = await Raw.websocket(host, port)
    await ws.connect({"token": token("mallory")})
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ws.writer.write(
                masked(f'42{sent % 1000}["subscribe",[{{}},"{HONEST_TOPIC}",7]]'.encode())
                + masked(b'451-1["subscribe",{"_placeholder":true,"num":0}]')
                + masked(b"\x00\x01", opcode=0x2)
                + masked(b"43" + str(sent % 1000).encode() + b"[{}]")
            )
            await ws.writer.drain()
            sent += 1
            await asyncio.sleep(0.001)
        ws.writer.write(masked(b'42["subscribe",' + DEEP[:200].encode() + b"]"))
        ended = await ws.ended()
    finally:
        ws.close()
    return {"tries": sent, "outcomes": {"ended after deep JSON" if ended else "left open": 1}, "disconnected": ended}


@attack
async def bad_http(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """`GET http://[::1/healthz`, bad close codes, a CLOSE by POST: requests no parser expects."""

    async def once() -> str:
        raw = await Raw.open(host, port)
        raw.writer.write(b"GET http://[::1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status = (await raw.reader.readline()).split(b" ")[1:2]
        raw.close()
        ws = await Raw.websocket(host, port)
        ws.writer.write(masked(struct.pack("!H", 1005) + b"\xff", opcode=0x8))
        opcode, payload = await ws.frame()
        ws.close()
        close = int.from_bytes(payload[:2], "big") if opcode == 0x8 else f"opcode {opcode}"
        return f"{status[0].decode() if status else 'none'} / close {close}"

    return await repeat(seconds, once)


@attack
async def blank_headers(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """Heads at the size bound with a header line of 7,900 blanks ending in a refused byte (142 ms each for h11)."""
    line = b"X-Pad:" + b" " * 7900 + b"\x01\x00\r\n\r\n"

    async def once() -> str:
        raw = await Raw.open(host, port)
        raw.writer.write(f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n".encode() + line)
        status = (await raw.reader.readline()).split(b" ")[1:2]
        raw.close()
        return status[0].decode() if status else "none"

    return await repeat(seconds, once)


@attack
async def handshake_flood(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """New Engine.IO sessions as fast as one address can open them, never CONNECTing."""

    async def once() -> str:
        raw = await Raw.open(host, port)
        raw.writer.write(f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = (await raw.reader.readline()).split(b" ")[1].decode()
        raw.close()
        return status

    result = await repeat(seconds, once)
    result["disconnected"] = None  # sessions without CONNECT end at the connect timeout
    return result


@attack
async def connect_race(host: str, port: int, seconds: float, _redis: str) -> dict[str, Any]:
    """80 parallel CONNECTs of one user (the cap is 50 by default), again and again."""

    async def once() -> str:
        sockets = await asyncio.gather(*(Raw.websocket(host, port) for _ in range(80)), return_exceptions=True)
        opened = [ws for ws in sockets if isinstance(ws, Raw)]
        user = token("racer")
        answers = await asyncio.gather(*(ws.connect({"token": user}) for ws in opened), return_exceptions=True)
        for ws in opened:
            ws.close()
        admitted = sum(1 for answer in answers if isinstance(answer, str) and answer.startswith("40"))
        return f"admitted {admitted} of {len(opened)}"

    result = await repeat(seconds, once)
    result["disconnected"] = None
    return result


@attack
async def notification_pages(host: str, port: int, seconds: float, redis_url: str) -> dict[str, Any]:
    """`notifications:list` with `limit: 1` and a crafted cursor, over 1,000 unread notifications."""

    client = redis.asyncio.Redis.from_url(redis_url)
    publisher = AsyncPublisher(client)
    last = ""
    for n in range(1000):
        record = Notification(
            id=f"n{n}", user_id="lister", type=NotificationType.INFO, title="t", message="m", created_at=1
        )
        last = await publisher.publish(record) or last
    await client.aclose()
    # One connection at a time, as fast as the node answers; when the node closes it (past its
    # refusals in a row), the attacker reconnects, meeting the per-address limits.
    open_socket: list[Raw] = []
    sent = 0

    async def once() -> str:
        nonlocal sent
        if not open_socket:
            ws = await Raw.websocket(host, port)
            answer = await ws.connect({"token": token("lister")})
            if not answer.startswith("40"):
                ws.close()
                return "connect refused"
            open_socket.append(ws)
        ws = open_socket[0]
        sent += 1
        ws.writer.write(masked(f'42{sent}["notifications:list",{{"limit":1,"cursor":"r:{last}"}}]'.encode()))
        try:
            while True:
                _, payload = await ws.frame()
                if payload.startswith(f"43{sent}[".encode()):
                    return "answered" if b'"ok":false' not in payload else "refused"
        except (ConnectionError, asyncio.IncompleteReadError):
            open_socket.pop().close()
            return "closed by the node"

    result = await repeat(seconds, once)
    for ws in open_socket:
        ws.close()
    result["disconnected"] = None
    return result


async def run(name: str, host: str, port: int, seconds: float, redis_url: str) -> dict[str, Any]:
    started = time.monotonic()
    result = await ATTACKS[name](host, port, seconds, redis_url)
    return {"attack": name, "seconds": round(time.monotonic() - started, 1), **result}


def main() -> None:
    name, host, port, seconds, redis_url = sys.argv[1:6]
    print(json.dumps(asyncio.run(run(name, host, int(port), float(seconds), redis_url))), flush=True)


if __name__ == "__main__":
    main()
