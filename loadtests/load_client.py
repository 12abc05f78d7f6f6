"""A Socket.IO load client cheap enough not to be the bottleneck of a fan-out benchmark.

Each connection is a bare ``asyncio.Protocol`` on uvloop that speaks just what the benchmark
needs of Engine.IO v4 / Socket.IO v5 over WebSocket: it writes the HTTP upgrade itself, sends
masked client frames, answers the server's ping ``2`` with ``3``, and walks the server's frames
in place (7-, 16- and 64-bit lengths, any number of frames per read, frames split across
reads). A ``market`` event costs a header walk and one prefix check: no message object, no
decoding, no JSON, no task switch. Only every Nth one (N chosen by the caller so a run yields
enough samples for a p99) has its ``recv_ts`` parsed for the publish-to-receive latency. On a
2-core machine whatever the client spends is taken from the server under test.

The clients run in K worker processes (`ClientPool`, K=2 by default), each with its own uvloop
loop, driven over a pipe (connect, reset, tally) and summed by the parent. Why: measured on this
machine against a minimal relay, a message costs the client about 4.7 us when each read carries
one (100k/s; half of it in the kernel, whatever K) and 1.1-1.4 us when reads carry several
(500k/s: 0.55-0.7 core in all). One process keeps up with 500k/s, but its single loop queues
reads behind each other, which shows up as latency: p99 7-13 ms with one worker, 2-3.5 ms with
two, for the same deliveries. Two workers let the kernel run the client on whichever core the
server leaves free; more only add scheduling on two cores. Large idle runs use more workers,
each under the 20,000-descriptor limit.

`ClientPool(kind=ClientKind.PICOWS)` runs `picows_client.PicowsClient` in the same workers
instead: a client of another make under the same counters, so that no figure rests on one client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import resource
import signal
import socket
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import uvloop

if TYPE_CHECKING:
    from loadtests.picows_client import PicowsClient

MARKET: Final = b'42["market",'
RECV_TS: Final = b'"recv_ts":'
# The exchange's time of an event (the simulator stamps its send time there): for end-to-end latency.
EXCHANGE_TS: Final = b',"ts":'
WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES: Final = 16384
# Kept per worker: at 8 bytes a sample, a bound on memory whatever the caller asks.
MAX_SAMPLES: Final = 1_000_000
# Connection attempts in flight, over all workers: a storm well past aiohttp's accept backlog
# (128) would measure SYN retransmission timers instead of the server.
CONNECTS_IN_FLIGHT: Final = 100
# What a stalled client asks the kernel for (it grants at least about 2 KiB): the server's
# writes back up into its own buffers within a few messages.
STALLED_RCVBUF: Final = 4096


class ClientKind(StrEnum):
    """Which make of client the workers run: this module's raw protocol, or picows (`picows_client`)."""

    RAW = "raw"
    PICOWS = "picows"


class ClientError(Exception):
    """A connection failed before it was ready; the message is the category counted."""


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One load client: its token, the topic it subscribes to (None: connect only) and its source address."""

    token: str
    topic: str | None
    source: str = "127.0.0.1"
    stalled: bool = False  # subscribes, then never reads again


@dataclass(slots=True)
class Tally:
    """What the clients counted since the last reset (summed over workers)."""

    received: int = 0
    lost: int = 0  # connections the server closed after they were ready
    samples: array[float] = field(default_factory=lambda: array("d"))

    def add(self, other: Tally) -> None:
        self.received += other.received
        self.lost += other.lost
        self.samples.extend(other.samples)


@dataclass(frozen=True, slots=True)
class ConnectReport:
    """How many clients became ready, and why the others did not."""

    connected: int
    errors: dict[str, int]


class Stats:
    """Counters shared by all connections of one worker; `countdown` spreads samples over connections."""

    __slots__ = ("countdown", "every", "lost", "received", "samples", "stamp")

    def __init__(self) -> None:
        self.reset(1)

    def reset(self, every: int, stamp: bytes = RECV_TS) -> None:
        """Zero the counters; sample every `every`-th event's age from its `stamp` field (ms since the epoch)."""
        self.stamp = stamp
        self.received = 0
        self.lost = 0
        self.every = every
        self.countdown = random.randint(1, every)  # a random phase: workers sample different messages
        self.samples: array[float] = array("d")

    def sample(self, buf: bytes, start: int, stop: int) -> None:
        at = buf.find(self.stamp, start, stop)
        if at < 0 or len(self.samples) >= MAX_SAMPLES:
            return
        at += len(self.stamp)
        end = buf.find(b",", at, stop)
        self.samples.append(time.time() * 1000 - float(buf[at : end if end > 0 else buf.find(b"}", at, stop)]))


def frame(payload: bytes, head: int = 0x81) -> bytes:
    """A masked client frame, text unless `head` says otherwise (RFC 6455 requires clients to mask)."""
    size = len(payload)
    if size < 126:
        header = bytes((head, 0x80 | size))
    elif size < 65536:
        header = bytes((head, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((head, 0x80 | 127)) + size.to_bytes(8, "big")
    key = os.urandom(4)
    mask = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    return header + key + masked


class SocketIOConversation:
    """What both makes of client say, past the WebSocket: OPEN -> CONNECT -> subscribe, pings, refusals.

    A client sets `_spec`, `_stats`, `_closing` and `ready` and supplies `_send` (one text message),
    `_stall` and `close`.
    """

    _spec: ClientSpec
    _stats: Stats
    _closing: bool
    ready: asyncio.Future[None]

    def _send(self, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _fail(self, reason: str) -> None:
        """Fail the connection attempt, or count a ready connection as lost."""
        if not self.ready.done():
            self.ready.set_exception(ClientError(reason))
        elif not self._closing:
            self._stats.lost += 1
        self.close()

    def _stall(self) -> None:
        """Stop reading for good (a stalled client, once subscribed)."""
        raise NotImplementedError

    def _packet(self, payload: bytes) -> None:
        """One Engine.IO packet other than a market event."""
        if payload == b"2":
            self._send("3")
        elif payload.startswith(b"0"):  # Engine.IO OPEN
            self._send("40" + json.dumps({"token": self._spec.token}))
        elif payload.startswith(b"40"):  # Socket.IO CONNECT accepted
            if self._spec.topic is None:
                self.ready.set_result(None)
            else:
                self._send('420["subscribe",' + json.dumps([self._spec.topic]) + "]")
        elif payload.startswith(b"44"):  # CONNECT refused: the gateway's message is the error code
            self._fail(f"connect refused: {json.loads(payload[2:]).get('message')}")
        elif payload.startswith(b"430") and not self.ready.done():
            answer = json.loads(payload[3:])[0]
            if not (answer.get("ok") and all(result.get("ok") for result in answer.get("results", []))):
                self._fail("subscribe refused")
                return
            self.ready.set_result(None)
            if self._spec.stalled:
                self._stall()


_Client = TypeVar("_Client", bound=SocketIOConversation)


class SocketIOClient(SocketIOConversation, asyncio.Protocol):
    """One WebSocket connection: upgrade, CONNECT with the token, subscribe, then count market events."""

    def __init__(self, spec: ClientSpec, host: str, stats: Stats) -> None:
        self._spec = spec
        self._host = host
        self._stats = stats
        self._key = base64.b64encode(os.urandom(16))
        self._transport: asyncio.Transport | None = None
        self._upgraded = False
        self._rest = b""
        self._closing = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self._host.encode(), self._key)
        )

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._fail("closed before ready")

    def _send(self, text: str) -> None:
        assert self._transport is not None
        self._transport.write(frame(text.encode()))

    def _stall(self) -> None:
        assert self._transport is not None
        self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        """Walk every complete frame in place; the hot path is a market event's header and prefix."""
        buf = self._rest + data if self._rest else data
        pos = 0
        if not self._upgraded:
            pos = self._upgrade(buf)
            if pos < 0:
                self._rest = buf
                return
        end = len(buf)
        stats = self._stats
        countdown = stats.countdown
        received = 0
        startswith = buf.startswith
        while end - pos >= 2:
            size = buf[pos + 1]
            if size == 126:  # 126-65535 bytes: every market event of the benchmark
                start = pos + 4
                if start > end:
                    break
                size = buf[pos + 2] << 8 | buf[pos + 3]
            elif size < 126:
                start = pos + 2
            elif size == 127:
                start = pos + 10
                if start > end:
                    break
                size = int.from_bytes(buf[pos + 2 : start], "big")
            else:
                self._fail("masked server frame")
                return
            stop = start + size
            if stop > end:
                break
            if buf[pos] == 0x81 and startswith(MARKET, start):
                received += 1
                countdown -= 1
                if not countdown:
                    countdown = stats.every
                    stats.sample(buf, start, stop)
            else:
                self._control(buf[pos], buf[start:stop])
            pos = stop
        stats.received += received
        stats.countdown = countdown
        self._rest = buf[pos:]

    def _upgrade(self, buf: bytes) -> int:
        """Check the 101 response; returns where frames start, or -1 until the headers are complete."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self._fail("oversized upgrade response")
            return -1
        status, *headers = buf[:end].decode("latin-1").split("\r\n")
        if status.split(" ", 2)[1:2] != ["101"]:
            self._fail(f"http {status.split(' ', 2)[1:2]}")
            return -1
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest()).decode()
        if not any(
            name.strip().lower() == "sec-websocket-accept" and value.strip() == accept
            for name, _, value in (header.partition(":") for header in headers)
        ):
            self._fail("bad Sec-WebSocket-Accept")
            return -1
        self._upgraded = True
        return end + 4

    def _control(self, head: int, payload: bytes) -> None:
        """Every frame but a market event: the Engine.IO/Socket.IO handshake, pings, acks, close."""
        if head == 0x81:
            self._packet(payload)
        elif head == 0x89:  # WebSocket ping: pong with the same payload
            assert self._transport is not None
            self._transport.write(frame(payload, 0x8A))
        elif head == 0x88:
            self._fail("closed by server")
        elif head != 0x8A:
            self._fail(f"unsupported frame 0x{head:02x}")  # binary or fragmented: the servers send neither


async def client_socket(spec: ClientSpec, host: str, port: int) -> socket.socket:
    """A socket bound to `spec.source` (a stalled one with a tiny receive buffer), connected to the server."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if spec.stalled:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        sock.bind((spec.source, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def until_ready(client: _Client) -> _Client:
    """`client` once subscribed (or connected, without a topic); closed if that fails."""
    try:
        await client.ready
    except BaseException:
        client.close()
        raise
    return client


async def open_client(spec: ClientSpec, host: str, port: int, stats: Stats) -> SocketIOClient:
    """Connect from `spec.source` and return once subscribed (or connected, without a topic)."""
    loop = asyncio.get_running_loop()

    def protocol() -> SocketIOClient:
        return SocketIOClient(spec, f"{host}:{port}", stats)

    if spec.stalled:  # its small receive buffer must be set before the SYN announces the window
        _, client = await loop.create_connection(protocol, sock=await client_socket(spec, host, port))
    else:  # one call: libuv binds and connects, no readiness round through Python
        _, client = await loop.create_connection(protocol, host, port, local_addr=(spec.source, 0))
    return await until_ready(client)


class _Worker:
    """The clients of one worker process."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.clients: list[SocketIOClient | PicowsClient] = []

    async def connect(
        self, host: str, port: int, specs: list[ClientSpec], deadline_s: float, in_flight: int, kind: ClientKind
    ) -> ConnectReport:
        """Open `specs` with at most `in_flight` attempts at a time.

        A window of attempts, each started from the completion callback of one before it: no task
        per client waiting on a semaphore from the start, nor a wrapper coroutine per attempt.
        """
        if not specs:
            return ConnectReport(0, {})
        opener: Callable[[ClientSpec, str, int, Stats], Awaitable[SocketIOClient | PicowsClient]] = open_client
        if kind is ClientKind.PICOWS:
            from loadtests import picows_client  # noqa: PLC0415 - picows_client imports this module

            opener = picows_client.open_client
        loop = asyncio.get_running_loop()
        errors: Counter[str] = Counter()
        pending = iter(specs)
        attempts: set[asyncio.Future[SocketIOClient | PicowsClient]] = set()
        finished = loop.create_future()

        def start() -> None:
            spec = next(pending, None)
            if spec is None:
                if not attempts and not finished.done():
                    finished.set_result(None)
                return
            attempt = asyncio.ensure_future(opener(spec, host, port, self.stats))
            attempts.add(attempt)
            attempt.add_done_callback(done)

        def done(attempt: asyncio.Future[SocketIOClient | PicowsClient]) -> None:
            attempts.discard(attempt)
            if attempt.cancelled():
                return
            exc = attempt.exception()
            if exc is None:
                self.clients.append(attempt.result())
            elif isinstance(exc, ClientError | OSError):
                errors[str(exc) if isinstance(exc, ClientError) else type(exc).__name__] += 1
            else:
                errors[type(exc).__name__] += 1
            start()

        for _ in range(in_flight):
            start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(finished), deadline_s)
        left = sum(1 for _ in pending) + len(attempts)
        for attempt in list(attempts):
            attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        errors["timeout"] += left
        return ConnectReport(len(specs) - sum(errors.values()), dict(+errors))

    def tally(self, with_samples: bool) -> Tally:
        stats = self.stats
        return Tally(stats.received, stats.lost, stats.samples if with_samples else array("d"))

    def close(self) -> None:
        for client in self.clients:
            client.close()


async def _serve(pipe: Connection) -> None:
    worker = _Worker()
    while True:
        command, args = await asyncio.to_thread(pipe.recv)
        reply: object = None
        if command == "connect":
            reply = await worker.connect(*args)
        elif command == "reset":
            worker.stats.reset(*args)
        elif command == "tally":
            reply = worker.tally(*args)
        else:
            worker.close()
            await asyncio.sleep(0)  # let the aborts run
            pipe.send(None)
            return
        pipe.send(reply)


def raise_fd_limit() -> None:
    """Lift the soft descriptor limit to the hard one (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker_main(pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers itself
    raise_fd_limit()
    uvloop.run(_serve(pipe))


class ClientPool:
    """Load clients spread over `processes` worker processes, driven from the parent's event loop."""

    def __init__(self, processes: int, kind: ClientKind = ClientKind.RAW) -> None:
        self._kind = kind
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs an event loop
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    async def _ask(self, commands: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        for pipe, command in zip(self._pipes, commands, strict=True):
            pipe.send(command)
        return list(await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self._pipes)))

    async def connect(self, host: str, port: int, specs: list[ClientSpec], deadline_s: float) -> ConnectReport:
        """Open `specs`, spread round-robin over the workers, at most `deadline_s` in all."""
        count = len(self._pipes)
        in_flight = max(1, CONNECTS_IN_FLIGHT // count)
        reports = await self._ask(
            [("connect", (host, port, specs[i::count], deadline_s, in_flight, self._kind)) for i in range(count)]
        )
        errors: Counter[str] = Counter()
        for report in reports:
            errors.update(report.errors)
        return ConnectReport(sum(report.connected for report in reports), dict(errors))

    async def reset(self, sample_every: int, stamp: bytes = RECV_TS) -> None:
        """Zero the counters; from now on every `sample_every`-th market event is a latency sample."""
        await self._ask([("reset", (sample_every, stamp))] * len(self._pipes))

    async def tally(self, *, with_samples: bool = False) -> Tally:
        total = Tally()
        for tally in await self._ask([("tally", (with_samples,))] * len(self._pipes)):
            total.add(tally)
        return total

    async def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            await asyncio.wait_for(self._ask([("stop", ())] * len(self._pipes)), 10)
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self._pipes:
            pipe.close()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
