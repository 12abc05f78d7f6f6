"""The command: several collectors from one file in one process, and a real process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio

from collectors.config import load_configs
from collectors.runner import CollectorService, run_all
from collectors.simulator import Simulator, SimulatorConfig
from shared import names
from shared.events import Book
from shared.status import ConnectionState, decode_status
from shared.topics import Exchange
from tests.collector_support import FAST, Tap, simulated_urls, wait_until

ROOT = Path(__file__).resolve().parents[2]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


async def test_one_file_runs_several_collectors_in_one_process(tmp_path: Path, redis_url: str) -> None:
    exchanges = [Exchange.KRAKEN, Exchange.BYBIT]
    async with Simulator(SimulatorConfig(exchanges=exchanges)) as sim, Tap(redis_url) as tap:
        lines = [
            f"redis_url = {toml_value(redis_url)}",
            *(f"{key} = {toml_value(value)}" for key, value in FAST.items()),
        ]
        symbols = {Exchange.KRAKEN: "BTC/USD", Exchange.BYBIT: "BTC/USDT"}
        for exchange in exchanges:
            lines += [
                "[[collectors]]",
                f'exchange = "{exchange}"',
                f'symbols = ["{symbols[exchange]}"]',
                'channels = ["book"]',
            ]
            lines += [f"{key} = {toml_value(url)}" for key, url in simulated_urls(sim, exchange).items()]
        path = tmp_path / "collectors.toml"
        path.write_text("\n".join(lines))
        services = [CollectorService(config) for config in load_configs(["--config", str(path)], {})]
        stop = asyncio.Event()
        task = asyncio.create_task(run_all(services, stop))
        try:
            await wait_until(lambda: {book.exchange for book in tap.of(Book)} == set(exchanges))
            assert len({service.admin_port for service in services}) == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        assert all(service.collector.state is ConnectionState.TERMINATED for service in services)


async def test_a_collector_process_starts_publishes_and_stops_on_sigterm(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    exchange = Exchange.BINANCE
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim:
        urls = simulated_urls(sim, exchange)
        argv = ["binance", "--symbols", "BTC/USDT", "--channels", "trades,book", "--redis-url", redis_url]
        argv += ["--admin-port", "0", "--status-interval-s", "0.2", "--id", "binance-proc"]
        argv += [item for name, url in urls.items() for item in (f"--{name.replace('_', '-')}", url)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLLECTOR_LOG_LEVEL": "warning"}
        # A plain Popen, polled: the child stays out of the session's event loop entirely.
        process = subprocess.Popen([sys.executable, "-m", "collectors", *argv], env=env, cwd=ROOT)
        try:
            key = names.collector_status_key("binance-proc")
            deadline = time.monotonic() + 15
            while True:
                data = await redis_client.get(key)
                if data is not None and decode_status(data).sink.published > 0:
                    break
                assert time.monotonic() < deadline and process.poll() is None, "the collector never published"
                await asyncio.sleep(0.1)
            assert await redis_client.get(names.latest_key("binance:book:BTC/USDT")) is not None
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert process.returncode == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert decode_status(await redis_client.get(key)).state is ConnectionState.TERMINATED
