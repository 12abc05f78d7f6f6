"""Collector throughput benchmark, one exchange at a time (not a pytest test).

For each exchange it starts a private Redis, the exchange simulator in a process of its own
(so generating frames does not share an event loop with parsing them) and ONE collector
process pointed at it, lets the collector warm up, then samples the collector's admin
``/metrics`` and its CPU time at the start and end of a measured window. It reports frames/s
received and parsed, events/s published to Redis, parse errors, drops, collector CPU-seconds
and frames per collector CPU-second, one JSON line per exchange and a table at the end, and
names what bounded the run: the collector (a full core), the machine (every core busy), the
simulator (a full core), or only the offered rate.

With a Python that has cryptofeed 3.0.1 (``--cryptofeed-python``; found on its own when a
python3.13 with cryptofeed importable is on PATH or under pyenv, else that column is skipped
with a message), cryptofeed runs as a reference on the same simulator load, one window after
this project's (`loadtests/cryptofeed_driver.py`), and the table gains this project /
cryptofeed ratios of frames per CPU-second.

    python -m loadtests.collector_bench
    python -m loadtests.collector_bench --exchanges okx,kraken --rate 3000 --symbols 8 --seconds 10
    python -m loadtests.collector_bench --exchanges binance,kraken --frames 2000,5000,15000,25000 \
        --book-rate 0,10 --cryptofeed-python /path/to/py313-venv/bin/python --cryptofeed-book delta,full
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import redis.asyncio
import redis.exceptions
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from collectors.config import URL_SETTINGS
from collectors.exchanges import ADAPTERS
from collectors.simulator.config import PORT_ORDER
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.topics import Exchange

EXCHANGES: Final = tuple(exchange.value for exchange in PORT_ORDER)
# Synthetic markets exist for any BASE/QUOTE; these are just familiar names.
BASES: Final = (
    *("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "LTC", "DOT"),
    *("LINK", "AVAX", "TRX", "UNI", "ATOM", "XLM", "BNB", "NEAR"),
)
QUOTES: Final = {"binance": "USDT", "coinbase": "USD", "kraken": "USD", "bybit": "USDT", "okx": "USDT"}
CHANNELS: Final = "ticker,trades,book"
# What cryptofeed can collect like this project: its Binance "ticker" is bookTicker, another stream.
CRYPTOFEED_CHANNELS: Final = {"binance": "trades,book", "kraken": "ticker,trades,book"}
# Frames the synthetic simulator sends per book update of one symbol (the update itself, about one
# trade frame in five, Kraken's ticker with each trade), measured: turns --frames into --rate.
FRAMES_PER_UPDATE: Final = {"binance": 1.21, "coinbase": 1.2, "kraken": 1.35, "bybit": 1.2, "okx": 1.2}
DRIVER: Final = Path(__file__).with_name("cryptofeed_driver.py")
PROJECT: Final = "project"
HOST: Final = "127.0.0.1"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
# A process at this fraction of one core (or a machine at this fraction of all cores) is the limit.
SATURATED: Final = 0.9
# CPU used by processes that are not part of the run, above which the verdict says the machine was shared.
OTHER_LOAD: Final = 0.25
# The simulator's send queue wobbles by a few frames; only growth by more than this says "behind".
BACKLOG_MIN_FRAMES: Final = 1000
BACKLOG_MIN_S: Final = 0.1  # ... or by more than this many seconds of the offered rate
# Without a large queue the simulator drops a collector that falls 20000 frames behind (as
# exchanges do), which would turn "the collector is the bottleneck" into reconnect noise.
SIM_MAX_QUEUE: Final = 2_000_000
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
COLLECTOR_SHUTDOWN_S: Final = 1.0
LOG_TAIL_CHARS: Final = 2000


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One benchmark run, from the command line."""

    exchanges: tuple[str, ...]
    symbols: int
    rates: tuple[float, ...]  # simulated book updates/s per symbol; empty: from `frames`
    frames: tuple[float, ...]  # frames/s offered in all, per step
    book_rates: tuple[float, ...]
    publish_intervals_ms: tuple[float | None, ...]  # None: the collector's default
    warmup_s: float
    seconds: float
    sim_max_queue: int
    cryptofeed_python: str | None
    cryptofeed_books: tuple[str, ...]

    def steps(self, exchange: str) -> list[float]:
        """The simulator --rate of each step for `exchange`."""
        if self.rates:
            return list(self.rates)
        return [round(frames / self.symbols / FRAMES_PER_UPDATE[exchange], 1) for frames in self.frames]


@dataclass(frozen=True, slots=True)
class Setup:
    """Which collector one window measures: this project at a --book-rate, or cryptofeed in a book mode."""

    collector: str  # PROJECT or "cryptofeed"
    book_rate: float = 0.0
    publish_interval_ms: float | None = None  # None: the collector's default
    book: str = ""  # cryptofeed: "delta" or "full"

    @property
    def label(self) -> str:
        if self.collector == PROJECT:
            interval = "" if self.publish_interval_ms is None else f" pi={self.publish_interval_ms:g}"
            return f"project br={self.book_rate:g}{interval}"
        return f"cryptofeed {self.book}"

    def flags(self) -> list[str]:
        """This project's collector flags of the setup."""
        flags = ["--book-rate", str(self.book_rate)]
        if self.publish_interval_ms is not None:
            flags += ["--publish-interval-ms", str(self.publish_interval_ms)]
        return flags


@dataclass(frozen=True, slots=True)
class Sample:
    """Counters of the collector, simulator and machine at one instant."""

    at: float
    metrics: dict[str, float]
    events_by_kind: dict[str, float]
    collector_cpu_s: float
    simulator_cpu_s: float
    redis_cpu_s: float
    bench_cpu_s: float
    machine_busy_s: float
    sim_sent: int
    sim_queued: int
    sim_slow_closes: int


class BenchError(RuntimeError):
    """A child process did not start or answer; the message carries its log tail."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent not idle since boot: tells a starved collector from a slow one."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS  # guest time is already counted in user


def port_block(size: int) -> int:
    """A base port whose next `size` ports are free now, for the simulator's fixed port layout."""
    for _ in range(50):
        base = free_port()
        if base + size > 65535:
            continue
        try:
            for offset in range(1, size):
                with socket.socket() as sock:
                    sock.bind((HOST, base + offset))
        except OSError:
            continue
        return base
    raise BenchError(f"no block of {size} free ports found")


def symbols_for(exchange: str, count: int) -> list[str]:
    return [f"{base}/{QUOTES[exchange]}" for base in BASES[:count]]


def endpoint_flags(exchange: str, port: int) -> list[str]:
    """The collector's URL flags: its live endpoints rewritten to the simulator, paths kept."""
    endpoints = ADAPTERS[Exchange(exchange)].endpoints
    flags: list[str] = []
    for name, endpoint in URL_SETTINGS.items():
        live = endpoints.get(endpoint)
        if live is None:
            continue
        parts = urlsplit(live)
        scheme = {"wss": "ws", "https": "http"}.get(parts.scheme, parts.scheme)
        flags += [f"--{name.replace('_', '-')}", urlunsplit((scheme, f"{HOST}:{port}", parts.path, parts.query, ""))]
    return flags


def parse_flags(flags: Sequence[str]) -> list[tuple[str, str]]:
    """``["--ws-url", "ws://..", ...]`` as (flag, value) pairs."""
    return list(zip(flags[::2], flags[1::2], strict=True))


def log_tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    return ""


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (each child shuts down cleanly on it), then SIGKILL if it overstays."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def spawn(
    stack: contextlib.AsyncExitStack, args: Sequence[str], log: Path, *, read_stdout: bool = False
) -> asyncio.subprocess.Process:
    """A child whose stderr goes to `log` and which `stack` stops, whatever happens."""
    stdout = asyncio.subprocess.PIPE if read_stdout else asyncio.subprocess.DEVNULL
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    stack.push_async_callback(stop_process, process)
    return process


def summed(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """Prometheus text as totals per metric family, plus collector_events by kind."""
    totals: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in (family.name, f"{family.name}_total"):
                continue  # _created and the like
            totals[family.name] = totals.get(family.name, 0.0) + sample.value
            if family.name == "collector_events":
                by_kind[sample.labels["kind"]] = sample.value
    return totals, by_kind


class Run:
    """The three processes of one exchange's measurement and how to read them."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        redis_client: redis.asyncio.Redis,
        exchange: str,
        settings: Settings,
        logs: Path,
        *,
        setup: Setup,
        rate: float,
    ) -> None:
        self.session = session
        self.redis = redis_client
        self.exchange = exchange
        self.settings = settings
        self.setup = setup
        self.rate = rate
        self.stats_url = ""
        self.collector: asyncio.subprocess.Process | None = None
        self.simulator: asyncio.subprocess.Process | None = None
        self.admin_url = ""
        self.control_url = ""
        self.sim_log = logs / f"simulator-{exchange}.log"
        self.collector_log = logs / f"collector-{exchange}.log"

    async def start(self, stack: contextlib.AsyncExitStack, redis_url: str) -> None:
        exchange, settings = self.exchange, self.settings
        base = port_block(len(PORT_ORDER))
        port = base + EXCHANGES.index(exchange)
        self.simulator = await spawn(
            stack,
            [
                *(sys.executable, "-m", "collectors.simulator", "--exchange", exchange, "--host", HOST),
                *("--port", str(base), "--mode", "synthetic", "--rate", str(self.rate)),
                *("--max-queue", str(settings.sim_max_queue), "--log-level", "warning"),
            ],
            self.sim_log,
            read_stdout=True,  # its URLs, one JSON line once it listens
        )
        assert self.simulator.stdout is not None
        try:
            line = await asyncio.wait_for(self.simulator.stdout.readline(), START_TIMEOUT_S)
            urls = json.loads(line)["simulator"][exchange]
            self.control_url = urls["control"]
        except (TimeoutError, ValueError, KeyError) as exc:
            raise BenchError(f"{exchange} simulator did not start:\n{log_tail(self.sim_log)}") from exc
        if self.setup.collector != PROJECT:
            await self._start_cryptofeed(stack, redis_url, port)
            return

        admin_port = free_port()
        self.admin_url = f"http://{HOST}:{admin_port}"
        self.collector = await spawn(
            stack,
            [
                *(sys.executable, "-m", "collectors", exchange),
                *("--symbols", ",".join(symbols_for(exchange, settings.symbols)), "--channels", self.channels),
                *endpoint_flags(exchange, port),
                *("--redis-url", redis_url, "--admin-host", HOST, "--admin-port", str(admin_port)),
                *self.setup.flags(),
                *("--log-level", "warning"),
                # Nothing is measured after the window: don't wait to flush to a Redis that may be gone (Ctrl-C).
                *("--shutdown-timeout-s", str(COLLECTOR_SHUTDOWN_S)),
            ],
            self.collector_log,
        )
        # Measure only once every book is being published (Binance's wait for REST snapshots included).
        await self._publishing(lambda _, by_kind: by_kind.get("book", 0) >= settings.symbols)

    async def _publishing(self, ready: Callable[[dict[str, float], dict[str, float]], bool]) -> None:
        """Wait until the collector's metrics say `ready`; a collector that dies or takes too long ends the run."""
        assert self.collector is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.collector.returncode is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"{self.exchange} {self.setup.label} did not start publishing:\n{log_tail(self.collector_log)}"
                )
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                if ready(*await self._metrics()):
                    return
            await asyncio.sleep(0.2)

    @property
    def channels(self) -> str:
        if self.settings.cryptofeed_python and self.exchange in CRYPTOFEED_CHANNELS:
            return CRYPTOFEED_CHANNELS[self.exchange]  # the same load for both collectors
        return CHANNELS

    async def _start_cryptofeed(self, stack: contextlib.AsyncExitStack, redis_url: str, port: int) -> None:
        exchange, settings = self.exchange, self.settings
        assert settings.cryptofeed_python is not None
        ws = dict(parse_flags(endpoint_flags(exchange, port)))
        stats_port = free_port()
        self.collector = await spawn(
            stack,
            [
                *(settings.cryptofeed_python, str(DRIVER), "--exchange", exchange),
                *("--ws-url", ws["--ws-url"], "--rest-url", ws.get("--rest-url", "")),
                *("--symbols", ",".join(symbols_for(exchange, settings.symbols)), "--channels", self.channels),
                *("--redis-url", redis_url, "--book", self.setup.book, "--stats-port", str(stats_port)),
            ],
            self.collector_log,
            read_stdout=True,
        )
        assert self.collector.stdout is not None
        try:
            line = await asyncio.wait_for(self.collector.stdout.readline(), START_TIMEOUT_S)
            self.stats_url = json.loads(line)["stats"]
        except (TimeoutError, ValueError, KeyError) as exc:
            raise BenchError(f"{exchange} cryptofeed did not start:\n{log_tail(self.collector_log)}") from exc
        await self._publishing(lambda metrics, _: metrics.get("collector_sink_published", 0) >= settings.symbols)

    async def _metrics(self) -> tuple[dict[str, float], dict[str, float]]:
        if self.stats_url:
            return await self._cryptofeed_metrics()
        async with self.session.get(f"{self.admin_url}/metrics") as response:
            response.raise_for_status()
            return summed(await response.text())

    async def _cryptofeed_metrics(self) -> tuple[dict[str, float], dict[str, float]]:
        """The driver's counters under the names of this project's metrics, so one report reads both."""
        async with self.session.get(self.stats_url) as response:
            response.raise_for_status()
            stats = await response.json()
        logged = stats["logged"]
        return {
            "collector_frames_received": stats["frames"],
            "collector_events": stats["written"] + stats["dropped"] + stats["queued"],
            "collector_sink_published": stats["written"],
            "collector_sink_dropped": stats["dropped"],
            "collector_sink_queue_depth": stats["queued"],
            # cryptofeed logs a warning or error for each book reset, checksum failure and reconnect.
            "collector_book_resyncs": logged.get("warning", 0) + logged.get("error", 0),
        }, {}

    async def _sim_stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.control_url}/stats") as response:
            response.raise_for_status()
            stats: dict[str, Any] = await response.json()
            return stats

    async def _redis_cpu(self) -> float:
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def sample(self) -> Sample:
        """Everything at one instant; a child that died mid-run ends the benchmark with its log."""
        try:
            return await self._sample()
        except (aiohttp.ClientError, redis.exceptions.RedisError, OSError, KeyError) as exc:
            raise BenchError(
                f"{self.exchange}: a child process stopped answering ({exc!r})\n"
                f"collector log:\n{log_tail(self.collector_log)}\nsimulator log:\n{log_tail(self.sim_log)}"
            ) from exc

    async def _sample(self) -> Sample:
        assert self.collector is not None and self.simulator is not None
        # Read CPU counters and the clock between the two scrapes, so all describe about the same instant.
        metrics, by_kind = await self._metrics()
        at = time.monotonic()
        collector_cpu, simulator_cpu = cpu_seconds(self.collector.pid), cpu_seconds(self.simulator.pid)
        bench_cpu, machine = cpu_seconds(os.getpid()), machine_busy_seconds()
        redis_cpu = await self._redis_cpu()
        stats = await self._sim_stats()
        connections = stats["connections"]
        return Sample(
            at=at,
            metrics=metrics,
            events_by_kind=by_kind,
            collector_cpu_s=collector_cpu,
            simulator_cpu_s=simulator_cpu,
            redis_cpu_s=redis_cpu,
            bench_cpu_s=bench_cpu,
            machine_busy_s=machine,
            sim_sent=sum(conn["messages_out"] for conn in connections),
            sim_queued=sum(conn["queued"] for conn in connections),
            sim_slow_closes=int(stats["closed"].get("slow consumer", 0)),
        )


@dataclass(frozen=True, slots=True)
class Cores:
    """Cores each party used during the window; `other` is what nobody here accounts for."""

    collector: float
    simulator: float
    redis: float
    machine: float
    other: float


def bottleneck(cores: Cores, *, dropped: int, backlog_growth: int, offered_per_s: float) -> str:
    """What bounded the measured rate, most specific first."""
    if cores.collector >= SATURATED:
        verdict = "collector: a full core"
        if cores.simulator >= SATURATED:
            verdict += "; the simulator is at a full core too"
    elif cores.machine >= SATURATED * (os.cpu_count() or 1):
        verdict = "machine: all cores busy, collector starved"
    elif cores.simulator >= SATURATED:
        verdict = "simulator: a full core, collector not saturated"
    elif dropped or backlog_growth > max(BACKLOG_MIN_FRAMES, offered_per_s * BACKLOG_MIN_S):
        verdict = "collector: falling behind below a full core"
    else:
        verdict = "offered rate: collector not saturated, raise --rate/--symbols"
    if cores.other >= OTHER_LOAD:
        verdict += f" (other load on this machine: {cores.other:.2f} cores)"
    return verdict


def report(exchange: str, setup: Setup, rate: float, settings: Settings, first: Sample, last: Sample) -> dict[str, Any]:
    window = last.at - first.at

    def delta(name: str) -> float:
        return last.metrics.get(name, 0.0) - first.metrics.get(name, 0.0)

    def per_s(value: float) -> float:
        return round(value / window, 1)

    frames, parse_errors = delta("collector_frames_received"), delta("collector_parse_errors")
    events, published, dropped = (
        delta("collector_events"),
        delta("collector_sink_published"),
        delta("collector_sink_dropped"),
    )
    collector_cpu = last.collector_cpu_s - first.collector_cpu_s
    simulator_cpu = last.simulator_cpu_s - first.simulator_cpu_s
    redis_cpu = last.redis_cpu_s - first.redis_cpu_s
    machine = last.machine_busy_s - first.machine_busy_s
    other = machine - collector_cpu - simulator_cpu - redis_cpu - (last.bench_cpu_s - first.bench_cpu_s)
    cores = Cores(
        collector=collector_cpu / window,
        simulator=simulator_cpu / window,
        redis=redis_cpu / window,
        machine=machine / window,
        other=max(0.0, other / window),
    )
    backlog_growth = last.sim_queued - first.sim_queued
    # What the simulator produced for the collector: written to the socket, or still queued for it.
    offered = last.sim_sent - first.sim_sent + backlog_growth
    kinds = sorted(set(first.events_by_kind) | set(last.events_by_kind))
    return {
        "exchange": exchange,
        "setup": setup.label,
        "collector": setup.collector,
        "symbols": settings.symbols,
        "sim_rate_per_symbol": rate,
        "book_rate": setup.book_rate if setup.collector == PROJECT else None,
        "cryptofeed_book": setup.book or None,
        "window_s": round(window, 3),
        "offered_frames_per_s": per_s(offered),
        "frames_per_s": per_s(frames),
        "parsed_per_s": per_s(frames - parse_errors),
        "events_per_s": per_s(events),
        "events_per_s_by_kind": {
            kind: per_s(last.events_by_kind.get(kind, 0.0) - first.events_by_kind.get(kind, 0.0)) for kind in kinds
        },
        "published_per_s": per_s(published),
        "parse_errors": int(parse_errors),
        "dropped": int(dropped),
        "lost_pct": round(100 * dropped / events, 1) if events else 0.0,
        "reconnects": int(delta("collector_reconnects")),
        "book_resyncs": int(delta("collector_book_resyncs")),
        "sink_queue_end": int(last.metrics.get("collector_sink_queue_depth", 0.0)),
        "sim_backlog_end": last.sim_queued,
        "sim_slow_consumer_closes": last.sim_slow_closes - first.sim_slow_closes,
        "collector_cpu_s": round(collector_cpu, 2),
        "collector_cores": round(cores.collector, 2),
        "frames_per_cpu_s": round(frames / collector_cpu, 1) if collector_cpu else None,
        "published_per_cpu_s": round(published / collector_cpu, 1) if collector_cpu else None,
        "simulator_cores": round(cores.simulator, 2),
        "redis_cores": round(cores.redis, 2),
        "machine_busy_cores": round(cores.machine, 2),
        "other_load_cores": round(cores.other, 2),
        "bottleneck": bottleneck(
            cores, dropped=int(dropped), backlog_growth=backlog_growth, offered_per_s=offered / window
        ),
    }


async def bench(exchange: str, setup: Setup, rate: float, settings: Settings, logs: Path) -> dict[str, Any]:
    """One window: start everything, measure, stop everything (also when cancelled)."""
    async with contextlib.AsyncExitStack() as stack:
        server = stack.enter_context(EmbeddedRedis())
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)))
        client = redis.asyncio.Redis.from_url(server.url)
        stack.push_async_callback(client.aclose)
        run = Run(session, client, exchange, settings, logs, setup=setup, rate=rate)
        await run.start(stack, server.url)
        await asyncio.sleep(settings.warmup_s)
        first = await run.sample()
        await asyncio.sleep(settings.seconds)
        last = await run.sample()
        return report(exchange, setup, rate, settings, first, last)


# (heading, result key, format); the bottleneck goes on a line of its own.
TABLE: Final = (
    ("exchange", "exchange", "{}"),
    ("setup", "setup", "{}"),
    ("offered f/s", "offered_frames_per_s", "{:,.0f}"),
    ("frames/s", "frames_per_s", "{:,.0f}"),
    ("parsed/s", "parsed_per_s", "{:,.0f}"),
    ("events/s", "events_per_s", "{:,.0f}"),
    ("published/s", "published_per_s", "{:,.0f}"),
    ("parse err", "parse_errors", "{:,}"),
    ("dropped", "dropped", "{:,}"),
    ("lost %", "lost_pct", "{:.1f}"),
    ("coll CPU-s", "collector_cpu_s", "{:.2f}"),
    ("coll cores", "collector_cores", "{:.2f}"),
    ("frames/CPU-s", "frames_per_cpu_s", "{:,.0f}"),
    ("sim cores", "simulator_cores", "{:.2f}"),
    ("redis cores", "redis_cores", "{:.2f}"),
    ("busy cores", "machine_busy_cores", "{:.2f}"),
)


def table(results: Sequence[Mapping[str, Any]]) -> str:
    rows = [[heading for heading, _, _ in TABLE]]
    rows += [["-" if row[key] is None else fmt.format(row[key]) for _, key, fmt in TABLE] for row in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.append("")
    lines += [
        f"{row['exchange']:<{widths[0]}}  {row['setup']:<{widths[1]}}  bottleneck: {row['bottleneck']}"
        for row in results
    ]
    return "\n".join(lines)


def ratios(results: Sequence[Mapping[str, Any]]) -> str:
    """This project / cryptofeed frames per CPU-second, per exchange and step, each pair from one run."""
    lines = []
    for row in results:
        if row["collector"] != PROJECT or not row["frames_per_cpu_s"]:
            continue
        for other in results:
            step = other["exchange"], other["sim_rate_per_symbol"]
            same_step = step == (row["exchange"], row["sim_rate_per_symbol"])
            if other["collector"] == PROJECT or not same_step or not other["frames_per_cpu_s"]:
                continue
            lines.append(
                f"{row['exchange']:<9} {row['offered_frames_per_s']:>8,.0f} f/s  {row['setup']:<14} / "
                f"{other['setup']:<17} {row['frames_per_cpu_s'] / other['frames_per_cpu_s']:5.2f}x  "
                f"(lost {row['lost_pct']:.1f}% vs {other['lost_pct']:.1f}%)"
            )
    return "\n".join(lines)


def setups(exchange: str, settings: Settings) -> list[Setup]:
    """This project at each --book-rate, then cryptofeed in each book mode (where it runs this exchange)."""
    ours = [
        Setup(PROJECT, book_rate=book_rate, publish_interval_ms=interval)
        for book_rate in settings.book_rates
        for interval in settings.publish_intervals_ms
    ]
    if settings.cryptofeed_python is None or exchange not in CRYPTOFEED_CHANNELS:
        return ours
    return ours + [Setup("cryptofeed", book=book) for book in settings.cryptofeed_books]


def find_cryptofeed(choice: str | None) -> tuple[str | None, str]:
    """A Python that imports cryptofeed: the one given, else $CRYPTOFEED_PYTHON, python3.13 on PATH, pyenv's 3.13."""
    if choice == "none":
        return None, "cryptofeed reference off (--cryptofeed-python none)"
    candidates = [choice] if choice else []
    if not choice:
        candidates += [os.environ.get("CRYPTOFEED_PYTHON", ""), shutil.which("python3.13") or ""]
        candidates += sorted(str(path) for path in Path.home().glob(".pyenv/versions/3.13*/bin/python"))
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run(  # the operator's interpreter, or one found on PATH
                [candidate, "-c", "import cryptofeed, redis"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate, f"cryptofeed reference: {candidate}"
    tried = ", ".join(filter(None, candidates)) or "nothing found"
    return None, (
        f"cryptofeed reference skipped: no Python with cryptofeed and redis importable ({tried}); it needs "
        "Python 3.13: `python3.13 -m venv VENV && VENV/bin/pip install cryptofeed==3.0.1 redis`, then "
        "--cryptofeed-python VENV/bin/python"
    )


async def run_all(settings: Settings) -> list[dict[str, Any]]:
    # Ctrl-C and SIGTERM cancel the run, so every child is stopped on the way out. Installed here
    # rather than left to the runner because a shell starts background jobs with SIGINT ignored.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="collector-bench-") as logs:
            for exchange in settings.exchanges:
                for rate in settings.steps(exchange):
                    for setup in setups(exchange, settings):
                        result = await bench(exchange, setup, rate, settings, Path(logs))
                        print(json.dumps(result), flush=True)
                        results.append(result)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return results


def conditions(settings: Settings, reference: str) -> str:
    """What the numbers depend on, printed under the table."""
    step = (
        f"{', '.join(f'{rate:g}' for rate in settings.rates)} book updates/s per symbol"
        if settings.rates
        else f"about {', '.join(f'{frames:g}' for frames in settings.frames)} frames/s in all"
    )
    return (
        f"{settings.symbols} symbols per exchange ({CHANNELS}; with cryptofeed, Binance trades,book); simulator: "
        f"synthetic, {step} (about 1 in 5 book updates with a trade frame too); this project at --book-rate "
        f"{', '.join(f'{rate:g}' for rate in settings.book_rates)} (0: every book change published as a top-20 view "
        f"plus its latest-value SET); {settings.seconds:g} s window after {settings.warmup_s:g} s warm-up, one setup "
        f"at a time; {os.cpu_count()} cores shared by simulator, collector and Redis.\n{reference}\n"
        "frames/s: frames the collector read and parsed; published/s: events that reached Redis; dropped/lost: "
        "events its bounded sink discarded (oldest first) because publishing fell behind parsing."
    )


def floats(parser: argparse.ArgumentParser, name: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        parser.error(f"{name}: comma-separated numbers, got {text!r}")
    if any(value < 0 for value in values):
        parser.error(f"{name} must not be negative")
    return values


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, str]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchanges", default=",".join(EXCHANGES), help="comma separated (default: all five)")
    parser.add_argument("--symbols", type=int, default=8, help=f"symbols per exchange, at most {len(BASES)}")
    parser.add_argument("--rate", default="", help="simulated book updates/s per symbol, comma separated steps")
    parser.add_argument("--frames", default="", help="instead of --rate: frames/s offered in all, comma separated")
    parser.add_argument(
        "--book-rate", default="0", help="collector --book-rate, comma separated; 0 publishes every change"
    )
    parser.add_argument(
        "--publish-interval-ms", default="", help="collector --publish-interval-ms, comma separated; default: its own"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first book events")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--sim-max-queue", type=int, default=SIM_MAX_QUEUE, help="simulator frames queued per client")
    parser.add_argument(
        "--cryptofeed-python",
        default=None,
        help="a Python (3.13) with cryptofeed 3.0.1 and redis, for the reference; 'none' to skip it; "
        "default: $CRYPTOFEED_PYTHON, python3.13 on PATH or pyenv's, if cryptofeed imports there",
    )
    parser.add_argument(
        "--cryptofeed-book", default="delta", help="cryptofeed's book output: delta (its default), full, or both"
    )
    args = parser.parse_args(argv)
    exchanges = tuple(name.strip().lower() for name in args.exchanges.split(",") if name.strip())
    unknown = sorted(set(exchanges) - set(EXCHANGES))
    if unknown or not exchanges:
        parser.error(f"unknown exchange(s) {', '.join(unknown) or '(none)'}; use {', '.join(EXCHANGES)}")
    if not 1 <= args.symbols <= len(BASES):
        parser.error(f"--symbols must be 1..{len(BASES)}")
    rates, frames = floats(parser, "--rate", args.rate), floats(parser, "--frames", args.frames)
    if rates and frames:
        parser.error("--rate and --frames exclude each other")
    if not rates and not frames:
        rates = (2000.0,)
    book_rates = floats(parser, "--book-rate", args.book_rate) or (0.0,)
    if 0 in rates or 0 in frames or args.seconds <= 0 or args.warmup < 0 or args.sim_max_queue < 1:
        parser.error("--rate, --frames, --seconds and --sim-max-queue must be positive; --warmup not negative")
    books = ("delta", "full") if args.cryptofeed_book == "both" else tuple(args.cryptofeed_book.split(","))
    if not set(books) <= {"delta", "full"}:
        parser.error("--cryptofeed-book: delta, full or both")
    python, reference = find_cryptofeed(args.cryptofeed_python)
    print(reference, file=sys.stderr)
    return Settings(
        exchanges=exchanges,
        symbols=args.symbols,
        rates=rates,
        frames=frames,
        book_rates=book_rates,
        publish_intervals_ms=floats(parser, "--publish-interval-ms", args.publish_interval_ms) or (None,),
        warmup_s=args.warmup,
        seconds=args.seconds,
        sim_max_queue=args.sim_max_queue,
        cryptofeed_python=python,
        cryptofeed_books=books,
    ), reference


def main(argv: Sequence[str] | None = None) -> int:
    settings, reference = parse_args(argv)
    try:
        results = uvloop.run(run_all(settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every child process stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"collector_bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(results))
    if compared := ratios(results):
        print()
        print("frames per CPU-second, this project / cryptofeed (same simulator load, one run):")
        print(compared)
    print()
    print(conditions(settings, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
