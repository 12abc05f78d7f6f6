"""Candle history benchmark: pages served by one gateway process, and the loader's write rate.

    python -m loadtests.candles_bench [--candles 1000000] [--seconds 20] [--concurrency 16]

1. **Loader**: a `HistoryLoader` fills Binance 1m topics from the simulator's REST klines
   (HTTP, JSON parsing, validation, batched upserts), reported as candles per second
   into PostgreSQL; the store's bare upsert rate is reported beside it.
2. **Serving**: the store is filled to `--candles` candles (1m, spread over `--symbols`
   symbols), one `fanout-gateway` process is started, and `--concurrency` HTTP clients ask
   `GET /candles` for 500-candle pages at random `before` times (so the node's page cache
   rarely helps) for `--seconds`: requests per second and latency percentiles.

PostgreSQL is `DATABASE_URL` when given, else an embedded one; Redis likewise. A JSON line with
every number is printed at the end. Runs only against loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import jwt

from collectors.exchanges import ADAPTERS
from collectors.feed.collector import Collector, FeedSettings
from collectors.history import HistoryLoader
from collectors.simulator import Simulator, SimulatorConfig
from shared.candle_store import CandleStore
from shared.embedded_postgres import postgres_or_embedded
from shared.embedded_redis import free_port, redis_or_embedded
from shared.events import Candle
from shared.topics import Exchange, Timeframe, Topic

MINUTE = 60_000
PAGE = 500
SECRET = "candles-bench-secret-long-enough-for-hs256"


class _Quiet:
    def put(self, event: object) -> None: ...

    def status(self) -> Any: ...


async def bench_loader(store: CandleStore, topics: int, bars: int) -> dict[str, float]:
    """Candles per second from the simulator's REST klines into PostgreSQL, through the real loader."""
    config = SimulatorConfig(exchanges=[Exchange.BINANCE], history_days=bars // 1440 + 1, rate=1)
    async with Simulator(config) as sim, aiohttp.ClientSession() as session:
        rest = sim.rewrite(ADAPTERS[Exchange.BINANCE].endpoints["rest"])
        collector = Collector(
            "bench",
            lambda host: ADAPTERS[Exchange.BINANCE](host=host, urls={"rest": rest}),
            outlet=_Quiet(),
            settings=FeedSettings(rest_weight_per_minute=10**9),  # the simulator's limit is not what is measured
        )
        loader = HistoryLoader(collector, store, bars=bars, retention_days={})
        wanted = [Topic.parse(f"binance:candles.1m:L{i:03d}/USDT") for i in range(topics)]
        started = time.perf_counter()
        for topic in wanted:
            await loader.fill(session, topic)
        elapsed = time.perf_counter() - started
    return {
        "loader_candles": loader.loaded,
        "loader_seconds": round(elapsed, 2),
        "loader_per_s": round(loader.loaded / elapsed),
    }


async def fill_store(store: CandleStore, total: int, symbols: int) -> dict[str, float]:
    """`total` 1m candles over `symbols` symbols, written in batches; the bare upsert rate."""
    per_symbol = total // symbols
    end = int(time.time() * 1000) // MINUTE * MINUTE
    started = time.perf_counter()
    written = 0
    for index in range(symbols):
        batch: list[Candle] = []
        for bar in range(per_symbol):
            open_time = end - (per_symbol - bar) * MINUTE
            price = f"{100 + (bar % 500) / 10:.1f}"
            batch.append(
                Candle(
                    exchange=Exchange.BINANCE,
                    symbol=f"S{index:03d}/USDT",
                    ts=open_time + 59_999,
                    recv_ts=0.0,
                    timeframe=Timeframe.M1,
                    open_time=open_time,
                    open=price,
                    high=price,
                    low=price,
                    close=price,
                    volume="1.00000000",
                    closed=True,
                )
            )
            if len(batch) == 10_000:
                written += await store.upsert(batch)
                batch = []
        if batch:
            written += await store.upsert(batch)
    elapsed = time.perf_counter() - started
    await store.pool.execute("ANALYZE candles")
    return {"stored": written, "upsert_per_s": round(written / elapsed)}


async def bench_serving(url: str, symbols: int, per_symbol: int, seconds: float, concurrency: int) -> dict[str, float]:
    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, SECRET)
    headers = {"Authorization": f"Bearer {token}"}
    end = int(time.time() * 1000) // MINUTE * MINUTE
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    rng = random.Random(1)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            symbol = f"S{rng.randrange(symbols):03d}/USDT"
            before = end - rng.randrange(1, per_symbol - PAGE + 1) * MINUTE  # a full page lies before it
            params = {"topic": f"binance:candles.1m:{symbol}", "before": str(before), "limit": str(PAGE)}
            started = time.perf_counter()
            async with session.get(f"{url}/candles", params=params, headers=headers) as response:
                body = await response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200 or len(json.loads(body)["candles"]) != PAGE:
                errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
    }


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30.0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the gateway did not become ready")


async def run(args: argparse.Namespace, database_url: str, redis_url: str) -> dict[str, Any]:
    admin = await asyncpg.connect(database_url)
    name = f"candles_bench_{os.getpid()}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    bench_url = database_url.rsplit("/", 1)[0] + "/" + name
    results: dict[str, Any] = {"candles": args.candles, "symbols": args.symbols, "concurrency": args.concurrency}
    store = await CandleStore.connect(bench_url, max_size=4)
    try:
        results |= await bench_loader(store, args.loader_topics, args.loader_bars)
        results |= await fill_store(store, args.candles, args.symbols)
        port = free_port()
        env = {**os.environ, "DATABASE_URL": bench_url, "REDIS_URL": redis_url, "GATEWAY_JWT_SECRET": SECRET,
               "GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_LOG_LEVEL": "warning"}  # fmt: skip
        gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env)  # noqa: ASYNC220 - started once
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url)
            await bench_serving(url, args.symbols, args.candles // args.symbols, 2.0, args.concurrency)  # warm-up
            results |= await bench_serving(
                url, args.symbols, args.candles // args.symbols, args.seconds, args.concurrency
            )
        finally:
            gateway.terminate()
            gateway.wait(15)
    finally:
        await store.close()
        admin = await asyncpg.connect(database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--loader-topics", type=int, default=5)
    parser.add_argument("--loader-bars", type=int, default=20_000)
    args = parser.parse_args()
    with (
        postgres_or_embedded(os.environ.get("DATABASE_URL", "")) as database_url,
        redis_or_embedded(os.environ.get("REDIS_URL", "")) as redis_url,
    ):
        results = asyncio.run(run(args, database_url, redis_url))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
