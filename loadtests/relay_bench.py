"""Fan-out benchmark of the gateway against plain python-socketio and Node's socket.io (not a pytest test).

Starts a private Redis, the server under test (one process, or N behind a real nginx rendered
from deploy/nginx/nginx.conf.template) and lean load clients (loadtests/load_client.py) in
worker processes, publishes ~200-byte trade events through shared.publisher.RespPublisher (as
the collectors do) and reports offered vs delivered deliveries/s, the fraction delivered,
publish-to-receive latency, the CPU of every server process (from /proc), deliveries per server
CPU-second, and the CPU of clients, publisher, Redis and nginx, so that a run bounded by anything
but the server shows. `--server floor` is a bare relay (loadtests/floor_server.py): what is left
of a server's latency above the floor's is that server's own.

    python -m loadtests.relay_bench --clients 200 --rate 500 --seconds 10 --server both
    python -m loadtests.relay_bench --clients 1000 --topics 10 --rate 200 --server both
    python -m loadtests.relay_bench --clients 200 --rate 500 --server gateway,floor,node --rounds 3
    python -m loadtests.relay_bench --saturate --seconds 3 --server both
    python -m loadtests.relay_bench --idle 5000 --server both
    python -m loadtests.relay_bench --idle 10000 --server gateway,node,floor
    python -m loadtests.relay_bench --idle 10000 --server gateway,node-checked
    python -m loadtests.relay_bench --stalled --server both
    python -m loadtests.relay_bench --gateways 1,2

See loadtests/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
import redis.asyncio
import uvloop

from gateway.presence import CLAIM_SCRIPT
from loadtests.load_client import ClientKind, ClientPool, ClientSpec, raise_fd_limit
from shared import names
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.events import Side, Trade
from shared.publisher import RespPublisher
from shared.redis_target import RedisTarget
from shared.topics import Exchange, Kind, Topic
from stack.balancer import BalancerError, balancer_service, nginx_binary

SECRET: Final = "benchmark-secret-benchmark-secret-0123"
HOST: Final = "127.0.0.1"
SERVERS: Final = ("gateway", "baseline", "node", "node-checked", "floor")
# References for connect storms, in `all` only with --idle: node-checked is Node doing the Redis work
# the contract asks of a connect, like the gateway. (floor, the least a Python server can do per
# connect and per delivery, is a reference for both, asked for by name.)
CONNECT_REFERENCES: Final = ("node-checked",)
# The Node reference relay (socket.io 4.8 + node-redis); `npm ci` runs there when its modules are missing.
NODE_BASELINE: Final = Path(__file__).parent / "node_baseline"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
CORES: Final = os.cpu_count() or 1
DEFAULT_STEPS: Final = "100000,200000,300000,400000,500000"
# Clients bind 127.0.<1..SOURCES>.1: nginx hashes the client address to pick a gateway, so one
# source address would send every client to the same one. The stalled client's own
# address finds its sockets in /proc/net/tcp.
SOURCES: Final = 250
STALLED_SOURCE: Final = "127.0.255.1"
# Latency samples wanted per window; the sampling stride follows from the expected deliveries.
TARGET_SAMPLES: Final = 100_000
# The publisher sends what is due every 2 ms (5 messages at 2,500/s): a shorter tick costs the
# publisher more CPU on the machine under test (redis-py: 0.26 core at 2,500 messages/s with a 1-ms
# tick, 0.18 with 2 ms).
PUBLISH_TICK_S: Final = 0.002
MAX_BATCH: Final = 1000  # messages per pipeline; a publisher that falls further behind shows as offered < target
DRAIN_QUIET_S: Final = 0.3  # after publishing: wait until nothing arrived for this long ...
DRAIN_MAX_S: Final = 5.0  # ... but no longer than this (a backlogged server never drains)
RSS_EVERY_S: Final = 0.5
READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
CONNECT_DEADLINE_S: Final = 120.0
IDLE_SETTLE_S: Final = 2.0
MAX_CLIENTS_PER_PROCESS: Final = 15_000  # under the 20,000-descriptor hard limit
# A process at this fraction of a core (a machine at this fraction of all cores) bounds the run:
# a saturated single-threaded server shows 0.85-0.95 of a core on this shared 2-core machine.
SATURATED: Final = 0.85
OTHER_LOAD: Final = 0.25  # cores used outside the run past which the verdict says so
DELIVERED_OK: Final = 0.99
MISSED_STEPS_TO_STOP: Final = 2
TCP_ESTABLISHED: Final = 1
RATIO_KEYS: Final = (
    "deliveries_per_cpu_s",
    "max_delivered_per_s",
    "kib_per_connection",
    "connections_per_s",
    "connections_per_cpu_s",
)


class BenchError(RuntimeError):
    """A server did not start, or clients could not connect."""


# /proc


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children it reaped (so a restarted worker's time is kept)."""
    fields = _stat(pid)
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants: a server may run several processes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def fd_limit(pid: int) -> int:
    """The soft limit on open files of a process: what caps the connections it can hold."""
    line = next(
        line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max open files")
    )
    return int(line.split()[3])


def machine_busy_seconds() -> float:
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS  # all but idle and iowait


@dataclass(frozen=True, slots=True)
class TcpSocket:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int
    send_queue: int
    recv_queue: int


def tcp_sockets() -> Iterator[TcpSocket]:
    """IPv4 TCP sockets of this network namespace, from /proc/net/tcp (both ends of loopback connections)."""

    def address(text: str) -> tuple[str, int]:
        host, port = text.split(":")
        return socket.inet_ntoa(int(host, 16).to_bytes(4, sys.byteorder)), int(port, 16)

    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        send_queue, recv_queue = fields[4].split(":")
        yield TcpSocket(
            address(fields[1]), address(fields[2]), int(fields[3], 16), int(send_queue, 16), int(recv_queue, 16)
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU time of each role's processes and of the machine at one instant."""

    at: float
    busy_s: float
    cpu: dict[str, dict[int, float]]

    @classmethod
    def now(cls, roles: dict[str, list[int]]) -> Usage:
        cpu: dict[str, dict[int, float]] = {}
        for role, pids in roles.items():
            cpu[role] = {}
            for pid in pids:
                try:
                    cpu[role][pid] = cpu_seconds(pid)
                except (FileNotFoundError, ProcessLookupError):
                    continue
        return cls(time.monotonic(), machine_busy_seconds(), cpu)

    def _spent(self, role: str, before: Usage) -> list[float]:
        return [cpu - before.cpu[role].get(pid, 0.0) for pid, cpu in self.cpu[role].items()]

    def cpu_seconds(self, role: str, before: Usage) -> float:
        return sum(self._spent(role, before))

    def load(self, before: Usage) -> dict[str, Any]:
        """Cores used per role since `before`, the machine's busy fraction and what bounded the run.

        A role bounds the run when one of its processes used SATURATED of a core (one process
        cannot use more), the machine when all cores were that busy; `other_cores` is what
        processes outside the run used (another job on the machine: rerun then).
        """
        elapsed = self.at - before.at
        result: dict[str, Any] = {}
        bound = []
        used = 0.0
        for role in self.cpu:
            spent = self._spent(role, before)
            result[f"{role}_cores"] = sum(spent) / elapsed
            used += sum(spent) / elapsed
            if spent and max(spent) >= SATURATED * elapsed:
                bound.append(role)
        busy = (self.busy_s - before.busy_s) / elapsed
        result["other_cores"] = max(0.0, busy - used)
        result["machine_busy"] = busy / CORES
        if result["machine_busy"] >= SATURATED:
            bound.append("machine")
        if result["other_cores"] >= OTHER_LOAD:
            bound.append("other load")
        result["bound"] = "+".join(bound) or "offered rate"
        return result


# What runs


@dataclass(frozen=True, slots=True)
class Setup:
    """One column of the results: which server, how many processes behind nginx (None: one, direct),
    how many workers each gateway process runs on its port (SO_REUSEPORT), and which of `--rounds`
    (0: the only one)."""

    kind: str
    gateways: int | None
    workers: int = 1
    round: int = 0

    @property
    def label(self) -> str:
        label = self.kind if self.gateways is None else f"{self.kind} x{self.gateways}"
        label = label if self.workers == 1 else f"{label} w{self.workers}"
        return label if not self.round else f"{label} #{self.round}"


@dataclass(frozen=True, kw_only=True)
class Options:
    """The command line."""

    clients: int
    topics: int
    rate: float
    seconds: float
    client_processes: int
    steps: list[int]
    scenario: str  # load, saturate, stalled or idle
    idle: int
    client: ClientKind = ClientKind.RAW


@dataclass(frozen=True, slots=True)
class Deployment:
    """Redis, the server processes and nginx of one setup."""

    port: int  # where clients connect: the server, or nginx
    backend_ports: list[int]
    servers: list[asyncio.subprocess.Process]
    nginx: asyncio.subprocess.Process | None
    redis: redis.asyncio.Redis
    redis_pid: int
    redis_url: str

    def server_pids(self) -> list[int]:
        return [pid for server in self.servers for pid in process_tree(server.pid)]

    def roles(self, clients: list[int]) -> dict[str, list[int]]:
        return {
            "server": self.server_pids(),
            "client": clients,
            "publisher": [os.getpid()],
            "redis": [self.redis_pid],
            "nginx": process_tree(self.nginx.pid) if self.nginx else [],
        }

    def connections_per_server(self) -> str:
        """Established connections on each backend port, e.g. "104/96": how nginx spread the clients."""
        counts = dict.fromkeys(self.backend_ports, 0)
        for sock in tcp_sockets():
            if sock.state == TCP_ESTABLISHED and sock.local[1] in counts:
                counts[sock.local[1]] += 1
        return "/".join(str(count) for count in counts.values())


async def start_server(
    kind: str,
    port: int,
    redis_url: str,
    clients: int,
    *,
    proxied: bool,
    overrides: dict[str, str] | None = None,
    log: int | None = None,
    command: Sequence[str] | None = None,
) -> asyncio.subprocess.Process:
    """One server process; `overrides` changes its environment, `log` (a file descriptor) takes its output.

    `command` runs the gateway instead of `python -m gateway` (`connect_profile --callgrind` runs it under valgrind).
    """
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": HOST,
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_TRANSPORTS": "websocket",
        # Measure fan-out, not admission: every client comes from loopback, many from one address.
        "GATEWAY_CONNECT_BURST_PER_IP": str(clients * 2),
        "GATEWAY_CONNECT_RATE_PER_IP": str(clients * 2),
        "GATEWAY_HANDSHAKE_BURST_PER_IP": str(clients * 2),
        "GATEWAY_HANDSHAKE_RATE_PER_IP": str(clients * 2),
        "GATEWAY_MAX_CONNECTIONS_PER_USER": str(clients * 2),
        # Behind nginx, as in the stack: the client address is the one nginx appended.
        "GATEWAY_TRUST_FORWARDED_FOR": "true" if proxied else "false",
        "GATEWAY_SHUTDOWN_TIMEOUT_S": "2",
        **(overrides or {}),
    }
    if kind in ("node", "node-checked"):
        # node-checked: each connect also does the contract's Redis work, with the gateway's claim script.
        checks = {"CONNECT_CHECKS": "contract", "CLAIM_SCRIPT": CLAIM_SCRIPT} if kind == "node-checked" else {}
        return await asyncio.create_subprocess_exec(
            "node", str(NODE_BASELINE / "server.mjs"), env={**env, "PORT": str(port), **checks}, stdout=log, stderr=log
        )
    modules = {
        "gateway": ["gateway"],
        "baseline": ["loadtests.baseline_server", "--port", str(port), "--redis-url", redis_url],
        "floor": ["loadtests.floor_server", "--port", str(port), "--redis-url", redis_url],
    }
    argv = [*command] if command is not None and kind == "gateway" else [sys.executable, "-m", *modules[kind]]
    return await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)


def install_missing(setups: Sequence[Setup]) -> None:
    """What the setups need and this machine lacks: nginx from Debian's packages, the Node relay's modules."""
    if any(setup.gateways is not None for setup in setups):
        try:
            nginx_binary()
        except BalancerError:
            if not (shutil.which("apt-get") and os.geteuid() == 0):
                raise
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "nginx"],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    if any(setup.kind.startswith("node") for setup in setups) and not (NODE_BASELINE / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_BASELINE, check=True)


async def wait_ready(port: int, process: asyncio.subprocess.Process, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until GET /readyz answers 200 (through nginx, from a backend)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise BenchError(f"pid {process.pid} exited with {process.returncode} before it was ready")
            try:
                async with http.get(f"http://{HOST}:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise BenchError(f"nothing ready on port {port} after {timeout_s} s")


async def wait_workers(client: redis.asyncio.Redis, count: int) -> None:
    """Until `count` gateway processes have written their status record (each does so once it listens)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(await client.keys(names.GATEWAY_STATUS_PREFIX + "*")) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"fewer than {count} gateway workers started in {READY_TIMEOUT_S} s")
        await asyncio.sleep(0.1)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def deploy(
    setup: Setup,
    clients: int,
    *,
    overrides: dict[str, str] | None = None,
    log: int | None = None,
    command: Sequence[str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> AsyncIterator[Deployment]:
    """A private Redis and the setup's servers (behind nginx when `setup.gateways` is set), all stopped on exit.

    `command` and `ready_timeout_s`: see `start_server` (a gateway under valgrind starts slowly).
    """
    with EmbeddedRedis() as embedded, tempfile.TemporaryDirectory(prefix="relay-bench-") as workdir:
        client = redis.asyncio.Redis.from_url(embedded.url)
        processes: list[asyncio.subprocess.Process] = []
        try:
            redis_pid = int((await client.info("server"))["process_id"])
            ports = [free_port() for _ in range(setup.gateways or 1)]
            servers = [
                await start_server(
                    setup.kind,
                    port,
                    embedded.url,
                    clients,
                    proxied=setup.gateways is not None,
                    overrides={**(overrides or {}), "GATEWAY_WORKERS": str(setup.workers)},
                    log=log,
                    command=command,
                )
                for port in ports
            ]
            processes += servers
            await asyncio.gather(
                *(wait_ready(port, server, ready_timeout_s) for port, server in zip(ports, servers, strict=True))
            )
            if setup.workers > 1:  # every worker listening before any client connects
                await wait_workers(client, len(ports) * setup.workers)
            nginx = None
            port = ports[0]
            if setup.gateways is not None:
                port = free_port()
                service = balancer_service(port, [(HOST, backend) for backend in ports], Path(workdir) / "nginx")
                nginx = await asyncio.create_subprocess_exec(*service.argv, env={**os.environ, **service.env})
                processes.append(nginx)
                await wait_ready(port, nginx)
            yield Deployment(port, ports, servers, nginx, client, redis_pid, embedded.url)
        finally:
            await asyncio.gather(*(stop(process) for process in reversed(processes)))
            await client.aclose()


def topic_names(count: int) -> list[str]:
    return [str(Topic.of(Exchange.BINANCE, Kind.TRADES, f"S{index}/USDT")) for index in range(count)]


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET)


def client_specs(count: int, topics: list[str] | None) -> list[ClientSpec]:
    """Client i subscribes to topic i mod len(topics) (None: connect only), from 127.0.(1 + i mod SOURCES).1."""
    return [
        ClientSpec(
            token=token(f"bench-{i}"),
            topic=topics[i % len(topics)] if topics else None,
            source=f"127.0.{1 + i % SOURCES}.1",
        )
        for i in range(count)
    ]


class Feed:
    """Trade events (~200 bytes) round-robin over the topics, paced to a rate, in pipelined batches."""

    def __init__(self, redis_url: str, topics: list[str], subscribers: list[int]) -> None:
        # The collectors' publisher, not redis-py's: redis-py took about 290 us from an event's stamp
        # to Redis's reply (RespPublisher 75), which every latency sample counted as the server's.
        self._publisher = RespPublisher(RedisTarget.parse(redis_url))
        self._symbols = [Topic.parse(topic).symbol for topic in topics]
        self._subscribers = subscribers
        self._sent = 0

    @property
    def deliveries_per_message(self) -> float:
        return sum(self._subscribers) / len(self._subscribers)

    def _event(self, now_ms: float) -> tuple[Trade, int]:
        index = self._sent
        self._sent += 1
        topic = index % len(self._symbols)
        seq = index // len(self._symbols) + 1
        trade = Trade(
            exchange=Exchange.BINANCE,
            symbol=self._symbols[topic],
            ts=int(now_ms),
            recv_ts=now_ms,
            seq=seq,
            trade_id=str(seq),
            price="37000.15",
            size="0.01250000",
            side=Side.BUY,
        )
        return trade, self._subscribers[topic]

    async def run(self, rate: float, seconds: float) -> int:
        """Publish `rate` messages/s for `seconds`; returns the deliveries offered (messages x subscribers)."""
        await self._publisher.connect()
        started = time.monotonic()
        sent = offered = 0
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                due = min(int(elapsed * rate) - sent, MAX_BATCH)
                if due > 0:
                    now_ms = time.time() * 1000
                    events = [self._event(now_ms) for _ in range(due)]
                    await self._publisher.publish_market([trade for trade, _ in events])
                    offered += sum(subscribers for _, subscribers in events)
                    sent += due
                await asyncio.sleep(PUBLISH_TICK_S)
        finally:
            self._publisher.close()
        return offered


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drain(pool: ClientPool) -> bool:
    """Wait for in-flight deliveries; False if they were still arriving after DRAIN_MAX_S."""
    deadline = time.monotonic() + DRAIN_MAX_S
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        received = (await pool.tally()).received
        if received != last:
            last, quiet_since = received, time.monotonic()
        elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
            return True
        await asyncio.sleep(0.1)
    return False


async def sample_rss(pids: list[int], into: list[int]) -> None:
    while True:
        into.append(rss_kib(pids))
        await asyncio.sleep(RSS_EVERY_S)


async def measure(deployment: Deployment, pool: ClientPool, feed: Feed, rate: float, seconds: float) -> dict[str, Any]:
    """One window: publish at `rate` messages/s for `seconds`, drain, and count."""
    target = rate * feed.deliveries_per_message
    await pool.reset(max(1, int(target * seconds) // TARGET_SAMPLES))
    roles = deployment.roles(pool.pids)
    before = Usage.now(roles)
    rss: list[int] = []
    sampler = asyncio.create_task(sample_rss(roles["server"], rss))
    offered = await feed.run(rate, seconds)
    published = Usage.now(roles)
    in_window = (await pool.tally()).received
    drained = await drain(pool)
    tally = await pool.tally(with_samples=True)
    server_cpu_s = Usage.now(roles).cpu_seconds("server", before)
    sampler.cancel()
    rss.append(rss_kib(roles["server"]))
    latencies = sorted(tally.samples)
    return {
        "target_per_s": target,
        "offered_per_s": offered / seconds,
        "delivered_per_s": in_window / seconds,
        "fraction_delivered": tally.received / offered if offered else float("nan"),
        "drained": drained,
        "latency_p50_ms": percentile(latencies, 0.50),
        "latency_p99_ms": percentile(latencies, 0.99),
        "latency_max_ms": latencies[-1] if latencies else float("nan"),
        "latency_samples": len(latencies),
        "server_cpu_s": server_cpu_s,
        "deliveries_per_cpu_s": tally.received / server_cpu_s if server_cpu_s else float("nan"),
        **published.load(before),
        "lost_connections": tally.lost,
        "rss_start_kib": rss[0],
        "rss_end_kib": rss[-1],
        "rss_max_kib": max(rss),
    }


@asynccontextmanager
async def loaded(
    setup: Setup, options: Options, *, overrides: dict[str, str] | None = None, log: int | None = None
) -> AsyncIterator[tuple[Deployment, ClientPool, Feed]]:
    """A deployment with every load client connected and subscribed, and a feed for its topics."""
    topics = topic_names(options.topics)
    specs = client_specs(options.clients, topics)
    async with (
        deploy(setup, options.clients, overrides=overrides, log=log) as deployment,
        ClientPool(options.client_processes, options.client) as pool,
    ):
        report = await pool.connect(HOST, deployment.port, specs, CONNECT_DEADLINE_S)
        if report.connected < len(specs):
            raise BenchError(f"{setup.label}: {report.connected}/{len(specs)} clients connected: {report.errors}")
        subscribers = [sum(1 for spec in specs if spec.topic == topic) for topic in topics]
        yield deployment, pool, Feed(deployment.redis_url, topics, subscribers)


def identity(setup: Setup, scenario: str, label: str = "") -> dict[str, Any]:
    return {
        "scenario": scenario,
        "label": label or setup.label,
        "server": setup.kind,
        "gateways": setup.gateways,
        **({"round": setup.round} if setup.round else {}),
    }


def shape(options: Options) -> dict[str, Any]:
    return {"clients": options.clients, "topics": options.topics, "load_client": str(options.client)}


def spread(deployment: Deployment) -> dict[str, Any]:
    return {"connections_per_server": deployment.connections_per_server()} if deployment.nginx else {}


async def load(setup: Setup, options: Options) -> list[dict[str, Any]]:
    async with loaded(setup, options) as (deployment, pool, feed):
        result = await measure(deployment, pool, feed, options.rate, options.seconds)
        return [{**identity(setup, "load"), **shape(options), **spread(deployment), **result}]


def kept_up(result: dict[str, Any]) -> bool:
    """99% delivered within the window itself: a backlog that drains afterwards is not keeping up."""
    return bool(result["delivered_per_s"] >= DELIVERED_OK * result["offered_per_s"])


async def saturate(setup: Setup, options: Options) -> list[dict[str, Any]]:
    """Ramp the offered deliveries/s; stop after MISSED_STEPS_TO_STOP steps in a row it did not keep up with."""
    results = []
    async with loaded(setup, options) as (deployment, pool, feed):
        missed = 0
        for step in options.steps:
            result = await measure(deployment, pool, feed, step / feed.deliveries_per_message, options.seconds)
            results.append({**identity(setup, "saturate-step"), **shape(options), "step_per_s": step, **result})
            missed = 0 if kept_up(result) else missed + 1
            if missed >= MISSED_STEPS_TO_STOP:
                break
    best = max(results, key=lambda result: result["delivered_per_s"])
    ok = [result["offered_per_s"] for result in results if kept_up(result)]
    summary = {
        **identity(setup, "saturate"),
        **shape(options),
        "max_ok_offered_per_s": max(ok, default=None),
        "max_delivered_per_s": best["delivered_per_s"],
        "deliveries_per_cpu_s": best["deliveries_per_cpu_s"],
        "latency_p99_ms": best["latency_p99_ms"],
        "bound": best["bound"],
    }
    return [*results, summary]


def stalled_state(port: int) -> dict[str, Any]:
    """Whether the server (or nginx, on `port`) still holds the stalled client, and where its backlog sits."""
    state: dict[str, Any] = {"stalled_open": False, "stalled_recv_queue_kib": 0.0, "stalled_server_send_queue_kib": 0.0}
    for sock in tcp_sockets():
        if sock.local[0] == STALLED_SOURCE and sock.remote[1] == port:
            state["stalled_open"] = sock.state == TCP_ESTABLISHED
            state["stalled_recv_queue_kib"] = sock.recv_queue / 1024
        elif sock.remote[0] == STALLED_SOURCE and sock.local[1] == port:
            state["stalled_server_send_queue_kib"] = sock.send_queue / 1024
    return state


async def stalled(setup: Setup, options: Options) -> list[dict[str, Any]]:
    """The same load without, then with one subscriber that never reads."""
    async with loaded(setup, options) as (deployment, pool, feed):
        without = await measure(deployment, pool, feed, options.rate, options.seconds)
        spec = ClientSpec(token=token("stalled"), topic=topic_names(1)[0], source=STALLED_SOURCE, stalled=True)
        report = await pool.connect(HOST, deployment.port, [spec], CONNECT_DEADLINE_S)
        if not report.connected:
            raise BenchError(f"{setup.label}: the stalled client could not subscribe: {report.errors}")
        with_stalled = await measure(deployment, pool, feed, options.rate, options.seconds)
        return [
            {**identity(setup, "stalled"), **shape(options), "stalled_client": False, **without},
            {
                **identity(setup, "stalled", f"{setup.label} +stalled"),
                **shape(options),
                "stalled_client": True,
                **with_stalled,
                **stalled_state(deployment.port),
            },
        ]


async def idle(setup: Setup, options: Options) -> list[dict[str, Any]]:
    """RSS per idle connection, and how fast a storm of `options.idle` clients gets connected."""
    count = options.idle
    processes = max(options.client_processes, -(-count // MAX_CLIENTS_PER_PROCESS))
    async with deploy(setup, count) as deployment, ClientPool(processes, options.client) as pool:
        roles = deployment.roles(pool.pids)
        rss_before = rss_kib(roles["server"])
        specs = client_specs(count, None)  # signing the tokens is not part of the storm
        before = Usage.now(roles)
        report = await pool.connect(HOST, deployment.port, specs, CONNECT_DEADLINE_S)
        connected = Usage.now(roles)
        storm_s = connected.at - before.at
        server_cpu_s = connected.cpu_seconds("server", before)
        await asyncio.sleep(IDLE_SETTLE_S)
        rss_after = rss_kib(deployment.server_pids())
        result = {
            **identity(setup, "idle"),
            "connections": count,
            "connected": report.connected,
            "errors": ", ".join(f"{error}: {n}" for error, n in report.errors.items()) or "-",
            "servers_alive": all(server.returncode is None for server in deployment.servers),
            "server_fd_limit": fd_limit(deployment.servers[0].pid),
            **spread(deployment),
            "connect_storm_s": storm_s,
            "connections_per_s": report.connected / storm_s,
            "server_cpu_s": server_cpu_s,
            "connections_per_cpu_s": report.connected / server_cpu_s if server_cpu_s else float("nan"),
            **connected.load(before),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "kib_per_connection": (rss_after - rss_before) / report.connected if report.connected else float("nan"),
        }
        return [result]


SCENARIOS: Final = {"load": load, "saturate": saturate, "stalled": stalled, "idle": idle}


# Reporting


def fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def print_table(columns: list[str], rows: list[list[object]]) -> None:
    """The first column left-aligned (names), the others right-aligned."""
    cells = [columns, *[[fmt(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """NaN (no samples, no CPU) as null: strict JSON readers reject NaN."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in result.items()}


def report(results: list[dict[str, Any]]) -> None:
    """JSON lines, then a table per saturation ramp, then metrics x setups, then gateway/baseline ratios."""
    for result in results:
        print(json.dumps(jsonable(result)))
    steps = [result for result in results if result["scenario"] == "saturate-step"]
    step_keys = ["step_per_s", "offered_per_s", "delivered_per_s", "fraction_delivered", "latency_p50_ms",
                 "latency_p99_ms", "latency_max_ms", "server_cpu_s", "deliveries_per_cpu_s", "server_cores",
                 "client_cores", "nginx_cores", "machine_busy", "bound"]  # fmt: skip
    for label in dict.fromkeys(result["label"] for result in steps):
        print(f"\n{label}: saturation ramp")
        print_table(step_keys, [[result[key] for key in step_keys] for result in steps if result["label"] == label])
    columns = [result for result in results if result["scenario"] != "saturate-step"]
    keys = [key for key in dict.fromkeys(k for result in columns for k in result) if key not in ("scenario", "label")]
    print()
    print_table(
        ["", *(result["label"] for result in columns)], [[key, *(r.get(key, "") for r in columns)] for key in keys]
    )
    by_label = {result["label"]: result for result in columns}
    rounds: dict[str, list[float]] = {}  # "gateway / node deliveries_per_cpu_s": the ratio of each round
    for result in columns:
        for other in SERVERS[1:]:
            twin = by_label.get(result["label"].replace("gateway", other, 1), result)
            for key in RATIO_KEYS:
                if result["server"] == "gateway" and twin is not result and result.get(key) and twin.get(key):
                    ratio = result[key] / twin[key]
                    print(f"{result['label']} / {twin['label']} {key}: {ratio:.2f}x")
                    pair = f"{result['label']} / {twin['label']}".replace(f" #{result.get('round')}", "")
                    rounds.setdefault(f"{pair} {key}", []).append(ratio)
    for name, ratios in rounds.items():
        if len(ratios) > 1:
            listed = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
            print(f"{name} over {len(ratios)} rounds: {listed}; median {statistics.median(ratios):.2f}x")


def parse_args(argv: Sequence[str] | None) -> tuple[Options, list[Setup], str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="load clients (default 200)")
    parser.add_argument("--topics", type=int, default=1, help="topics the clients are spread over (default 1)")
    parser.add_argument(
        "--rate", type=float, default=500, help="messages published per second, all topics (default 500)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured window (default 10)")
    parser.add_argument("--client-processes", type=int, default=2, help="worker processes of the load clients")
    parser.add_argument(
        "--client",
        type=ClientKind,
        choices=list(ClientKind),
        default=ClientKind.RAW,
        help="make of load client: raw (load_client.py, the default) or picows (picows_client.py)",
    )
    scenario = parser.add_mutually_exclusive_group()
    scenario.add_argument("--saturate", action="store_true", help="ramp the offered deliveries/s over --steps")
    scenario.add_argument("--stalled", action="store_true", help="add a subscriber that never reads")
    scenario.add_argument("--idle", type=int, default=0, help="RSS per idle connection with this many connections")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"deliveries/s offered by --saturate ({DEFAULT_STEPS})")
    parser.add_argument(
        "--gateways", help="comma-separated process counts (e.g. 1,2) to run behind nginx; default: one process, direct"
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="comma-separated worker counts of each gateway process (e.g. 1,2: SO_REUSEPORT, the gateway's --workers)",
    )
    parser.add_argument(
        "--server",
        default="gateway",
        help=f"comma-separated servers to measure, of {', '.join(SERVERS)}; `both` is gateway,baseline; `all` all",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times, taking turns (gateway, node, gateway, node, ...), and "
        "report each round's ratio and their median: a host whose speed drifts between two windows moves one "
        "ratio, not the median (default 1)",
    )
    parser.add_argument("--json", help="also write every result to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.topics <= args.clients:
        parser.error("--topics must be between 1 and --clients")
    every = [kind for kind in SERVERS if kind not in CONNECT_REFERENCES or args.idle]
    kinds = {"both": ["gateway", "baseline"], "all": every}.get(args.server, args.server.split(","))
    if unknown := set(kinds) - set(SERVERS):
        parser.error(f"unknown --server {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    counts: list[int | None] = [int(count) for count in args.gateways.split(",")] if args.gateways else [None]
    options = Options(
        clients=args.clients,
        topics=args.topics,
        rate=args.rate,
        seconds=args.seconds,
        client_processes=args.client_processes,
        client=args.client,
        steps=[int(step) for step in args.steps.split(",")],
        scenario="saturate" if args.saturate else "stalled" if args.stalled else "idle" if args.idle else "load",
        idle=args.idle,
    )
    workers = [int(count) for count in args.workers.split(",")]
    if any(count > 1 for count in workers) and kinds != ["gateway"]:
        parser.error("--workers counts other than 1 are for --server gateway")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    setups = [
        Setup(kind, count, worker, round_ if args.rounds > 1 else 0)
        for round_ in range(1, args.rounds + 1)
        for count in counts
        for kind in kinds
        for worker in workers
    ]
    return options, setups, args.json


def main(argv: Sequence[str] | None = None) -> None:
    options, setups, json_path = parse_args(argv)
    raise_fd_limit()  # the servers inherit it
    install_missing(setups)
    results = [result for setup in setups for result in uvloop.run(SCENARIOS[options.scenario](setup, options))]
    report(results)
    if json_path:
        Path(json_path).write_text(json.dumps([jsonable(result) for result in results], indent=1) + "\n")


if __name__ == "__main__":
    main()
