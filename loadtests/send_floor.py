"""The machine's floor for fan-out: what one bare `socket.send` of a WebSocket frame costs on loopback.

A relay that writes each message to each client cannot cost less per delivery than this, so it
calibrates `relay_bench.py`'s deliveries per CPU-second on a given machine (and day: the kernel's
cost per send varies between machines and with their load). One process sends one 200-byte frame
to each of `--clients` loopback sockets per tick, `--rate` ticks a second; a child process reads
them all with epoll, as a client would.

    python -m loadtests.send_floor --clients 200 --rate 500 --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import time

FRAME = b"\x81\x7e\x00\xc8" + b"x" * 200  # a server text frame with a 200-byte payload


def read_all(port: int, clients: int, seconds: float) -> None:
    """The child: connect every client, then read whatever arrives until the run ends."""
    selector = selectors.EpollSelector()
    for _ in range(clients):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds + 2
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            with contextlib.suppress(BlockingIOError):
                key.fileobj.recv(65536)  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=int, default=500, help="frames per client per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0), backlog=args.clients)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        read_all(port, args.clients, args.seconds)
        os._exit(0)
    connections = [listener.accept()[0] for _ in range(args.clients)]
    for connection in connections:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cpu_before, started, sent = time.process_time(), time.monotonic(), 0
    while time.monotonic() - started < args.seconds:
        tick = time.monotonic()
        for connection in connections:
            connection.send(FRAME)
        sent += len(connections)
        time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - tick)))
    cpu = time.process_time() - cpu_before
    os.waitpid(child, 0)
    print(
        f"{sent / args.seconds:,.0f} sends/s: {sent / cpu:,.0f} sends per CPU-second, "
        f"{cpu / sent * 1e6:.2f} us of CPU per send"
    )


if __name__ == "__main__":
    main()
