"""Quick fan-out benchmark of one gateway process (not a pytest test).

Starts a private Redis and one gateway process, connects N lightweight
clients (a minimal Engine.IO/Socket.IO WebSocket client, so the load client
is cheap), subscribes them all to one topic, publishes market events at a
fixed rate and reports deliveries/s achieved vs offered, the fraction
delivered, publish-to-receive latency and deliveries per gateway CPU-second.
With ``--server both`` the same load also runs against a plain python-socketio
relay (loadtests/baseline_server.py) and the ratio is printed.

    python -m loadtests.relay_bench --clients 200 --rate 500 --seconds 10 --server both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt
import redis.asyncio
import uvloop

from shared.embedded_redis import EmbeddedRedis, free_port
from shared.events import Ticker
from shared.publisher import AsyncPublisher
from shared.topics import Exchange

SECRET = "benchmark-secret-benchmark-secret-0123"
TOPIC = "binance:ticker:BTC/USDT"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Stats:
    received: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def client(
    session: aiohttp.ClientSession, url: str, token: str, stats: Stats, ready: asyncio.Event, subscribed: list[int]
) -> None:
    async with session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0) as ws:
        await ws.receive_str()  # Engine.IO OPEN
        await ws.send_str("40" + json.dumps({"token": token}))
        await ws.receive_str()  # Socket.IO CONNECT
        await ws.send_str('420["subscribe",["' + TOPIC + '"]]')
        async for message in ws:
            data = message.data
            if data == "2":
                await ws.send_str("3")
            elif data.startswith("42["):
                stats.received += 1
                at = data.find('"recv_ts":')
                if at > 0 and stats.received % 10 == 0:
                    end = data.find(",", at)
                    stats.latencies_ms.append(time.time() * 1000 - float(data[at + 10 : end]))
            elif data.startswith("430"):
                subscribed[0] += 1
                if subscribed[0] == subscribed[1]:
                    ready.set()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SERVERS = ("gateway", "baseline")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@asynccontextmanager
async def serving(server_kind: str, redis_url: str, clients: int) -> AsyncIterator[tuple[str, int]]:
    """Start the gateway (or the baseline) on a free port; yields its URL and pid once it is ready."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_TRANSPORTS": "websocket",
        # Every load client connects from 127.0.0.1: lift the per-address limits.
        "GATEWAY_CONNECT_BURST_PER_IP": str(clients * 2),
        "GATEWAY_MAX_CONNECTIONS_PER_USER": str(clients * 2),
    }
    module = (
        ["gateway"]
        if server_kind == "gateway"
        else ["loadtests.baseline_server", "--port", str(port), "--redis-url", redis_url]
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", *module, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        await process.wait()


async def idle(connections: int, server_kind: str = "gateway") -> dict[str, float]:
    """RSS per idle connection and the connect rate of a storm of `connections` clients."""
    with EmbeddedRedis() as server:
        async with (
            serving(server_kind, server.url, connections) as (url, pid),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):
            before = rss_kib(pid)
            expires = int(time.time()) + 3600
            sockets: list[aiohttp.ClientWebSocketResponse] = []

            async def connect(i: int) -> None:
                ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
                await ws.receive_str()
                await ws.send_str(
                    "40" + json.dumps({"token": jwt.encode({"sub": f"idle-{i}", "exp": expires}, SECRET)})
                )
                await ws.receive_str()
                sockets.append(ws)

            started = time.monotonic()
            for batch in range(0, connections, 500):
                await asyncio.gather(*(connect(i) for i in range(batch, min(batch + 500, connections))))
            storm_s = time.monotonic() - started
            await asyncio.sleep(2.0)
            after = rss_kib(pid)
            for ws in sockets:
                await ws.close()
    return {
        "connections": float(connections),
        "connect_storm_s": storm_s,
        "connections_per_s": connections / storm_s,
        "rss_before_kib": float(before),
        "rss_after_kib": float(after),
        "kib_per_connection": (after - before) / connections,
    }


async def run(clients: int, rate: int, seconds: float, server_kind: str = "gateway") -> dict[str, float]:
    """One measured run against the gateway or the plain python-socketio baseline."""
    with EmbeddedRedis() as server:
        stats = Stats()
        async with (
            serving(server_kind, server.url, clients) as (url, pid),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):
            expires = int(time.time()) + 3600
            ready = asyncio.Event()
            subscribed = [0, clients]
            tasks = [
                asyncio.create_task(
                    client(
                        session,
                        url,
                        jwt.encode({"sub": f"bench-{i}", "exp": expires}, SECRET),
                        stats,
                        ready,
                        subscribed,
                    )
                )
                for i in range(clients)
            ]
            await asyncio.wait_for(ready.wait(), 60)
            stats.received = 0
            stats.latencies_ms.clear()
            redis_client = redis.asyncio.Redis.from_url(server.url)
            publisher = AsyncPublisher(redis_client)
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            sent = 0
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(elapsed * rate) - sent
                if due > 0:
                    now = time.time() * 1000
                    await publisher.publish_market(
                        [
                            Ticker(
                                exchange=Exchange.BINANCE,
                                symbol="BTC/USDT",
                                ts=int(now),
                                recv_ts=now,
                                seq=sent + i + 1,
                                bid="37000.10",
                                ask="37000.20",
                                last="37000.15",
                            )
                            for i in range(due)
                        ]
                    )
                    sent += due
                await asyncio.sleep(0.001)
            await asyncio.sleep(1.0)  # let in-flight deliveries land
            cpu = cpu_seconds(pid) - cpu_before
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await redis_client.aclose()
    offered = sent * clients
    return {
        "clients": clients,
        "offered_deliveries_per_s": offered / seconds,
        "delivered_per_s": stats.received / seconds,
        "fraction_delivered": stats.received / offered if offered else 0.0,
        "latency_p50_ms": percentile(stats.latencies_ms, 0.50),
        "latency_p99_ms": percentile(stats.latencies_ms, 0.99),
        "latency_max_ms": max(stats.latencies_ms, default=float("nan")),
        "gateway_cpu_s": cpu,
        "deliveries_per_cpu_s": stats.received / cpu if cpu else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=int, default=100, help="messages published per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=0, help="instead: RSS per idle connection with this many clients")
    parser.add_argument(
        "--server",
        choices=[*SERVERS, "both"],
        default="gateway",
        help="what to measure; both runs the plain python-socketio baseline too and prints the ratio",
    )
    args = parser.parse_args()
    kinds = SERVERS if args.server == "both" else (args.server,)
    if args.idle:
        results = {kind: uvloop.run(idle(args.idle, kind)) for kind in kinds}
    else:
        results = {kind: uvloop.run(run(args.clients, args.rate, args.seconds, kind)) for kind in kinds}
    for kind, result in results.items():
        print(json.dumps({"server": kind, **result}))
    keys = list(next(iter(results.values())))
    print(f"{'':>26}  " + "  ".join(f"{kind:>12}" for kind in results))
    for key in keys:
        print(f"{key:>26}  " + "  ".join(f"{results[kind][key]:>12,.2f}" for kind in results))
    if len(results) == 2 and not args.idle:
        ratio = results["gateway"]["deliveries_per_cpu_s"] / results["baseline"]["deliveries_per_cpu_s"]
        print(f"gateway / baseline deliveries per CPU-second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
