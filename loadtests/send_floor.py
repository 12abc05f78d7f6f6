"""The machine's floor for fan-out: what one write of a WebSocket frame to a loopback client costs.

A relay that writes each message to each client cannot cost less per delivery than this, so it
calibrates `relay_bench.py`'s deliveries per CPU-second on a given machine (and day: the kernel's
cost per send varies between machines and with their load). One uvloop process writes one
200-byte frame to each of `--clients` loopback connections per tick, `--rate` ticks a second, first
with `os.write` on each socket (the bare system call), then with uvloop's `transport.write` (what
an asyncio server pays), then all of a tick's frames in one io_uring call (`gateway.protocol.send_ring`,
what the gateway's fan-out does where the kernel allows; skipped where it does not); a child
process reads them all with epoll, as a client would. Each line reports the sender's user and
system CPU per write.

    python -m loadtests.send_floor --clients 200 --rate 500 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import selectors
import signal
import socket
import time

import uvloop

from gateway.protocol.send_ring import SendRing

FRAME = b"\x81\x7e\x00\xc8" + b"x" * 200  # a server text frame with a 200-byte payload


def read_all(port: int, clients: int, seconds: float) -> None:
    """The child: connect every client, then read whatever arrives until the run ends."""
    selector = selectors.EpollSelector()
    for _ in range(clients):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            with contextlib.suppress(BlockingIOError):
                key.fileobj.recv(65536)  # type: ignore[union-attr]


async def measure(args: argparse.Namespace) -> int:
    """Print the cost of each way of writing; returns the reader's pid."""
    transports: list[asyncio.Transport] = []
    all_accepted = asyncio.Event()

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]
            if len(transports) == args.clients:
                all_accepted.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Accepted, "127.0.0.1", 0, backlog=args.clients)
    port = server.sockets[0].getsockname()[1]
    child = os.fork()
    if child == 0:
        read_all(port, args.clients, 3 * args.seconds + 5)
        os._exit(0)
    await all_accepted.wait()
    descriptors = [transport.get_extra_info("socket").fileno() for transport in transports]
    ways = ["os.write", "transport.write"]
    try:
        ring: SendRing | None = SendRing.open()
        ways.append("io_uring")
    except OSError as exc:
        ring = None
        print(f"{'io_uring':>15}: not available here ({exc})")
    for via in ways:
        before, started, sent = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), 0
        tick = started
        while tick - started < args.seconds:
            if via == "os.write":
                for descriptor in descriptors:
                    os.write(descriptor, FRAME)
            elif ring is not None and via == "io_uring":
                if ring.send(descriptors, FRAME) is not None:
                    raise RuntimeError("a socket did not take a whole frame: the reader fell behind")
            else:
                for transport in transports:
                    transport.write(FRAME)
            sent += args.clients
            tick += 1 / args.rate
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        cpu = user + system
        print(
            f"{via:>15}: {sent / args.seconds:,.0f} writes/s, {sent / cpu:,.0f} per CPU-second, "
            f"{cpu / sent * 1e6:.2f} us each (user {user / sent * 1e6:.2f}, system {system / sent * 1e6:.2f})"
        )
    server.close()
    if ring is not None:
        ring.close()
    return child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=int, default=500, help="frames per client per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="per way of writing")
    child = uvloop.run(measure(parser.parse_args()))
    os.kill(child, signal.SIGTERM)
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
