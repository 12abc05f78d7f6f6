"""End to end: exchange frame to client, through collector, Redis and gateway (not a pytest test).

    python -m loadtests.e2e_latency                      # the local stack's default load, then 10x it
    python -m loadtests.e2e_latency --rates 20,200,400 --seconds 20 --clients 200

Runs `fanout-local` with the exchange simulator (every exchange, its default symbols) at each
simulator rate in turn, connects lean clients (loadtests/load_client.py) to its gateway, each
subscribed to one of the trade topics, then (another run) of the book topics, and samples each
event's age when it arrives: the client's clock minus the event's `ts`, which the simulator stamps
when it makes the trade or sends the book update, in whole milliseconds. Books include the
collector's publishing cap (`COLLECTOR_BOOK_RATE`, 10 views a second per symbol by default: a view
can carry an update up to 100 ms old); trades are published as they come. So a figure covers the simulator's send, the
collector's parse and publish, Redis, the gateway's fan-out and the client's read, all on this one
machine (one clock). The goal (issue 13): p99 under 10 ms at the default load.

A second window on the same stack and clients samples the age from the event's `recv_ts`
instead (the collector's clock when the frame arrived: `from_collector_*`), which leaves out
the simulator's send and the collector's read, and for books still includes the cap (a view is
stamped with its newest change's arrival). `COLLECTOR_BOOK_RATE=0` in the environment publishes
every book change at once, which shows the path without the cap.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import uvloop

from loadtests.load_client import EXCHANGE_TS, RECV_TS, ClientPool, ClientSpec, raise_fd_limit
from loadtests.relay_bench import percentile, print_table
from shared.embedded_redis import free_port
from shared.topics import Exchange
from stack.config import DEFAULT_QUOTES
from stack.state import STACK_FILE, mint_token

READY_TIMEOUT_S: Final = 120.0
CHANNELS: Final = ("trades", "book")
BASES: Final = ("BTC", "ETH")
DEFAULT_RATE: Final = 20.0  # the local stack's STACK_SIMULATOR_RATE


async def wait_ready(state_dir: Path, stack: asyncio.subprocess.Process, log: Path) -> None:
    """Until the stack writes its stack.json (once every process serves)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (state_dir / STACK_FILE).exists():
        if stack.returncode is not None:
            raise RuntimeError(f"the stack exited: {log.read_text()[-2000:]}")  # noqa: ASYNC240 - it failed
        if time.monotonic() > deadline:
            raise RuntimeError("the stack never became ready")
        await asyncio.sleep(0.2)


async def window(pool: ClientPool, stamp: bytes, seconds: float) -> tuple[int, list[float]]:
    """Events received in `seconds`, and every one's age from its `stamp` field, sorted."""
    await pool.reset(1, stamp)
    await asyncio.sleep(seconds)
    tally = await pool.tally(with_samples=True)
    return tally.received, sorted(tally.samples)


async def measure(rate: float, channel: str, clients: int, seconds: float, workdir: Path) -> dict[str, Any]:
    base = free_port()
    log = workdir / f"stack-{rate:g}.log"
    argv = [
        sys.executable, "-m", "stack", "--simulate", "always", "--state-dir", str(workdir / "state"),
        "--redis-port", "0", "--port", str(base), "--admin-port", str(free_port()),
        "--simulator-port", str(free_port()), "--simulator-rate", str(rate), "--log-level", "warning",
        "--symbols", ",".join(BASES),
    ]  # fmt: skip
    with log.open("w") as sink:
        stack = await asyncio.create_subprocess_exec(*argv, stdout=sink, stderr=sink)
    try:
        await wait_ready(workdir / "state", stack, log)
        secret = (workdir / "state" / "secret").read_text().strip()
        topics = [f"{exchange}:{channel}:{base}/{DEFAULT_QUOTES[exchange]}" for exchange in Exchange for base in BASES]
        specs = [
            # Each from an address of its own, so the stack's per-address limits meet no crowd.
            ClientSpec(
                token=mint_token(secret, f"latency-{i}", [], 3600),
                topic=topics[i % len(topics)],
                source=f"127.0.{1 + i % 250}.1",
            )
            for i in range(clients)
        ]
        async with ClientPool(2) as pool:
            report = await pool.connect("127.0.0.1", base, specs, 60)
            if report.connected < clients:
                raise RuntimeError(f"{report.connected}/{clients} clients connected: {report.errors}")
            await asyncio.sleep(3)  # books settle, on-demand trades start
            received, ages = await window(pool, EXCHANGE_TS, seconds)
            _, from_collector = await window(pool, RECV_TS, seconds)
        return {
            "simulator_rate": rate,
            "channel": channel,
            "clients": clients,
            "topics": len(topics),
            "deliveries_per_s": received / seconds,
            "latency_p50_ms": percentile(ages, 0.50),
            "latency_p90_ms": percentile(ages, 0.90),
            "latency_p99_ms": percentile(ages, 0.99),
            "latency_max_ms": ages[-1] if ages else float("nan"),
            "samples": len(ages),
            "from_collector_p50_ms": percentile(from_collector, 0.50),
            "from_collector_p99_ms": percentile(from_collector, 0.99),
        }
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(stack.wait(), 60)
        except TimeoutError:
            stack.kill()
            await stack.wait()


async def run(rates: list[float], clients: int, seconds: float) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="e2e-latency-") as workdir:
        for rate in rates:
            for channel in CHANNELS:
                results.append(await measure(rate, channel, clients, seconds, Path(workdir)))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", default=f"{DEFAULT_RATE:g},{DEFAULT_RATE * 10:g}", help="simulator rates (default 20,200)"
    )
    parser.add_argument("--clients", type=int, default=100, help="clients, spread over the topics (default 100)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window (default 15)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    os.environ.setdefault("STACK_LOG_LEVEL", "warning")
    results = uvloop.run(run([float(r) for r in args.rates.split(",")], args.clients, args.seconds))
    for result in results:
        print(json.dumps(result))
    keys = list(results[0])
    print_table(keys, [[result[key] for key in keys] for result in results])


if __name__ == "__main__":
    main()
