"""Fan-out across hosts: deliveries/s and latency with Redis, the gateways, nginx, the publisher and the
load clients each on a network namespace of its own (tests/netns.py), so every message crosses veths
and a bridge. Needs root. Not a pytest test.

    python -m loadtests.multi_host_bench --clients 1000 --topics 10 --rate 200 --seconds 10 --gateways 2

On one machine the namespaces share its cores: the numbers show what the interfaces and nginx add
to relay_bench's loopback run, not what separate machines would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

from loadtests.load_client import ClientPool, ClientSpec, raise_fd_limit
from loadtests.relay_bench import (
    CONNECT_DEADLINE_S,
    SECRET,
    TARGET_SAMPLES,
    Feed,
    drain,
    percentile,
    token,
    topic_names,
)
from shared.embedded_redis import find_server_binary
from stack.balancer import nginx_binary, render
from tests.netns import Host, network, unavailable

GATEWAY_PORT: Final = 8000
NGINX_PORT: Final = 8080
SOURCES: Final = 40  # client addresses: nginx hashes each to a node, and per-address limits stay far
READY_TIMEOUT_S: Final = 30.0


def status_of(url: str) -> int:
    """A blocking GET's status (0 when nothing answers); run on a host's thread."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def until_serving(probe: Host, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while await probe.call(status_of, url) != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer 200 within {READY_TIMEOUT_S}s")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def started(argv: list[str], env: dict[str, str] | None = None) -> AsyncIterator[None]:
    """A process, stopped with SIGTERM (then killed) on exit."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def publish(redis_url: str, topics: list[str], subscribers: list[int], rate: float, seconds: float) -> int:
    """Run relay_bench's feed in a loop of this (the publisher host's) thread; returns deliveries offered."""

    return asyncio.run(Feed(redis_url, topics, subscribers).run(rate, seconds))


async def bench(options: argparse.Namespace) -> dict[str, Any]:
    with network() as net, tempfile.TemporaryDirectory(prefix="multi-host-bench-") as workdir:
        redis_host = net.host("redis")
        gateway_hosts = [net.host(f"gw-{n}") for n in range(options.gateways)]
        balancer, publisher, clients = net.host("nginx"), net.host("publisher"), net.host("clients", SOURCES)
        redis_url = f"redis://{redis_host.address}:6379/0"
        prefix = Path(workdir)
        conf = prefix / "nginx.conf"
        backends = [(host.address, GATEWAY_PORT) for host in gateway_hosts]
        conf.write_text(render(NGINX_PORT, backends, prefix, listen_host=balancer.address))
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                started(
                    redis_host.argv(
                        *(find_server_binary(), "--bind", redis_host.address, "--port", "6379"),
                        *("--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", workdir),
                    )
                )
            )
            for host in gateway_hosts:
                env = {
                    **os.environ,
                    "REDIS_URL": redis_url,
                    "GATEWAY_JWT_SECRET": SECRET,
                    "GATEWAY_HOST": host.address,
                    "GATEWAY_PORT": str(GATEWAY_PORT),
                    "GATEWAY_TRANSPORTS": "websocket",
                    "GATEWAY_TRUST_FORWARDED_FOR": "true",
                    "GATEWAY_LOG_LEVEL": "warning",
                }
                await stack.enter_async_context(started(host.argv(sys.executable, "-m", "gateway"), env))
            for host in gateway_hosts:
                await until_serving(clients, f"http://{host.address}:{GATEWAY_PORT}/readyz")
            await stack.enter_async_context(
                started(balancer.argv(nginx_binary(), "-p", workdir, "-c", str(conf), "-g", "daemon off;"))
            )
            await until_serving(clients, f"http://{balancer.address}:{NGINX_PORT}/healthz")

            # Workers are spawned from the client host's thread, so they and their sockets live there.
            pool = await clients.call(ClientPool, options.client_processes)
            stack.push_async_callback(pool.close)
            topics = topic_names(options.topics)
            specs = [
                ClientSpec(
                    token=token(f"bench-{i}"),
                    topic=topics[i % len(topics)],
                    source=clients.addresses[i % SOURCES],
                )
                for i in range(options.clients)
            ]
            report = await pool.connect(balancer.address, NGINX_PORT, specs, CONNECT_DEADLINE_S)
            if report.connected < len(specs):
                raise SystemExit(f"{report.connected}/{len(specs)} clients connected: {report.errors}")
            subscribers = [sum(1 for spec in specs if spec.topic == topic) for topic in topics]
            target = options.rate * sum(subscribers) / len(subscribers)
            await pool.reset(max(1, int(target * options.seconds) // TARGET_SAMPLES))
            offered = await publisher.call(publish, redis_url, topics, subscribers, options.rate, options.seconds)
            in_window = (await pool.tally()).received
            drained = await drain(pool)
            tally = await pool.tally(with_samples=True)
            latencies = sorted(tally.samples)
            return {
                "gateways": options.gateways,
                "clients": options.clients,
                "topics": options.topics,
                "target_per_s": target,
                "offered_per_s": offered / options.seconds,
                "delivered_per_s": in_window / options.seconds,
                "fraction_delivered": tally.received / offered if offered else float("nan"),
                "drained": drained,
                "latency_p50_ms": percentile(latencies, 0.50),
                "latency_p99_ms": percentile(latencies, 0.99),
                "latency_samples": len(latencies),
                "lost_connections": tally.lost,
            }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.multi_host_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second over all topics")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    options = parser.parse_args(argv)
    reason = unavailable()
    if reason is not None:
        print(f"multi_host_bench: {reason}", file=sys.stderr)
        return 2
    raise_fd_limit()
    print(json.dumps(asyncio.run(bench(options))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
