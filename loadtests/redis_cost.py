"""Redis's own CPU per market event, per pub/sub copy to a gateway node, and per subscribed channel.

The capacity model (docs/operations.md#capacity-model) sizes Redis from these three costs:
a collector's market event is a PUBLISH plus, for snapshot topics, a SET of the latest value;
Redis then copies each message to every gateway node subscribed to its channel (one copy per
node, never per client); each node holds one subscription per topic, user and team its
clients need; and each node renews every socket's cluster-wide connection claim (a script in the
user's slot) every heartbeat. This measures each on a private redis-server (memory only, Linux: the server's
CPU time and RSS come from /proc), speaking raw RESP over sockets so no client library is
counted; the subscribers are threads that only drain their sockets.

    python -m loadtests.redis_cost
    python -m loadtests.redis_cost --events 500000 --copies-to 40 --channels 500000

Not a pytest test. Each phase prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.presence import CLAIM_SCRIPT
from shared.embedded_redis import EmbeddedRedis

PAYLOAD = b"x" * 200  # about a trade event's size on the wire
BATCH = 1000  # events per pipelined write


def command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


class Subscribers:
    """Connections subscribed to channels, each drained by a thread that counts the messages it gets."""

    def __init__(self, port: int, channels: Sequence[bytes]) -> None:
        self.received = [0] * len(channels)
        self._threads = []
        for index, channel in enumerate(channels):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(command(b"SUBSCRIBE", channel))
            thread = threading.Thread(target=self._drain, args=(sock, index), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _drain(self, sock: socket.socket, index: int) -> None:
        with sock:
            while chunk := sock.recv(1 << 20):
                self.received[index] += chunk.count(b"\r\nmessage\r\n")

    def wait_for(self, total: int, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while sum(self.received) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        return sum(self.received)


def run_pipelined(port: int, batch: bytes, replies_per_batch: int, batches: int) -> None:
    """Send `batch` `batches` times on one connection, each time waiting for all its replies."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(batches):
            sock.sendall(batch)
            seen, tail = 0, b""
            while seen < replies_per_batch:
                chunk = tail + sock.recv(1 << 16)
                lines = chunk.split(b"\r\n")
                tail = lines.pop()
                seen += len(lines)  # every reply here (+OK, :n) is one line


def events_phase(server: EmbeddedRedis, pid: int, events: int) -> dict[str, object]:
    """PUBLISH + SET per event over 100 channels, one subscriber each: the collectors' load."""
    channels = [b"md:t%d" % i for i in range(100)]
    subscribers = Subscribers(server.port, channels)
    time.sleep(0.5)
    batch = b"".join(
        command(b"PUBLISH", channels[i % 100], PAYLOAD)
        + command(b"SET", b"latest:t%d" % (i % 100), PAYLOAD, b"EX", b"60")
        for i in range(BATCH)
    )
    before = cpu_s(pid)
    run_pipelined(server.port, batch, 2 * BATCH, events // BATCH)
    spent = cpu_s(pid) - before
    delivered = subscribers.wait_for(events // BATCH * BATCH)
    return {"phase": "events", "events": events, "delivered": delivered, "redis_cpu_s": spent,
            "us_per_event": spent / events * 1e6}  # fmt: skip


def copies_phase(server: EmbeddedRedis, pid: int, publishes: int, copies_to: int) -> dict[str, object]:
    """PUBLISH on one channel that `copies_to` connections subscribe: what each node's copy costs."""
    subscribers = Subscribers(server.port, [b"md:hot"] * copies_to)
    time.sleep(0.5)
    batch = command(b"PUBLISH", b"md:hot", PAYLOAD) * BATCH
    before = cpu_s(pid)
    run_pipelined(server.port, batch, BATCH, publishes // BATCH)
    copies = subscribers.wait_for(publishes // BATCH * BATCH * copies_to)
    spent = cpu_s(pid) - before
    return {"phase": "copies", "publishes": publishes, "subscribers": copies_to, "copies": copies,
            "redis_cpu_s": spent, "us_per_copy": spent / max(copies, 1) * 1e6}  # fmt: skip


def leases_phase(server: EmbeddedRedis, pid: int, renewals: int) -> dict[str, object]:
    """The gateway's connection claim script (gateway.presence), run per socket every heartbeat."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(command(b"SCRIPT", b"LOAD", CLAIM_SCRIPT.encode()))
        sha = sock.recv(1024).split(b"\r\n")[1]
    # 10,000 users of 2 sockets each, renewed over and over: the steady state of a node.
    batch = b"".join(
        command(b"EVALSHA", sha, b"1", b"connections:{u%d}" % (i % 10_000), b"node-1 sid-%d" % i, b"15000", b"50")
        for i in range(BATCH)
    )
    before = cpu_s(pid)
    run_pipelined(server.port, batch, BATCH, renewals // BATCH)
    spent = cpu_s(pid) - before
    return {"phase": "leases", "renewals": renewals, "redis_cpu_s": spent, "us_per_renewal": spent / renewals * 1e6}


def subscriptions_phase(server: EmbeddedRedis, pid: int, channels: int) -> dict[str, object]:
    """SUBSCRIBE of `channels` user channels over 10 connections: a reconnect storm's resubscriptions."""
    rss_before, before = rss_kib(pid), cpu_s(pid)
    connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    for index, sock in enumerate(connections):
        for start in range(0, channels // 10, BATCH):
            names = [b"user:{u%d-%d}" % (index, n) for n in range(start, min(channels // 10, start + BATCH))]
            sock.sendall(command(b"SUBSCRIBE", *names))
            confirmed = 0
            while confirmed < len(names):
                confirmed += sock.recv(1 << 20).count(b"\r\nsubscribe\r\n")
    spent = cpu_s(pid) - before
    time.sleep(0.5)
    grown = rss_kib(pid) - rss_before
    for sock in connections:
        sock.close()
    return {"phase": "subscriptions", "channels": channels, "redis_cpu_s": spent,
            "us_per_subscribe": spent / channels * 1e6, "bytes_per_channel": grown * 1024 / channels}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="market events (PUBLISH + SET)")
    parser.add_argument("--publishes", type=int, default=200_000, help="publishes on the fanned-out channel")
    parser.add_argument("--copies-to", type=int, default=40, help="subscribers of that channel (gateway nodes)")
    parser.add_argument("--channels", type=int, default=500_000, help="user channels to subscribe")
    parser.add_argument("--renewals", type=int, default=200_000, help="connection claim script runs")
    args = parser.parse_args(argv)
    # Unlimited pub/sub output buffers: the draining threads may lag behind a burst.
    with EmbeddedRedis(extra_args=("--client-output-buffer-limit", "pubsub 0 0 0")) as server:
        pid = server.pid
        assert pid is not None
        for result in (
            events_phase(server, pid, args.events),
            copies_phase(server, pid, args.publishes, args.copies_to),
            leases_phase(server, pid, args.renewals),
            subscriptions_phase(server, pid, args.channels),
        ):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
