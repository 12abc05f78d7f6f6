"""Candle history end to end: collectors backfill PostgreSQL from the simulator's REST candles.

Real parts only: the simulator (its REST candles are folds of the same minutes it streams),
real collectors, a real PostgreSQL and Redis. A hostile REST server stands in for an exchange
gone wrong.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from collectors.candles import aggregate
from collectors.exchanges import ADAPTERS
from collectors.history import HistoryError, HistoryLoader
from collectors.simulator import Simulator, SimulatorConfig
from shared.candle_store import CandleStore
from shared.embedded_redis import free_port
from shared.topics import Exchange, Timeframe, Topic
from tests.collector_support import collector_config, running, wait_until


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(exchanges=list(Exchange), rate=100, seed=7, history_days=1)) as simulator:
        yield simulator


def missing_buckets(open_times: list[int], timeframe: Timeframe) -> list[int]:
    """Buckets between the first and the last that have no candle."""
    present, gaps = set(open_times), []
    at = open_times[0]
    while at < open_times[-1]:
        if at not in present:
            gaps.append(at)
        at = timeframe.end(at)
    return gaps


async def stored_times(store: CandleStore, topic: Topic) -> list[int]:
    assert topic.channel.timeframe is not None
    candles = await store.page(topic.exchange, topic.symbol, topic.channel.timeframe, limit=100_000)
    return [c.open_time for c in candles]


async def test_backfill_at_start_and_after_a_restart_leaves_no_missing_bucket(
    sim: Simulator, store: CandleStore, postgres_url: str, redis_url: str
) -> None:
    topic = Topic.parse("binance:candles.1m:BTC/USDT")
    config = collector_config(
        sim, Exchange.BINANCE, redis_url, symbols=["BTC/USDT"], channels=["candles:1m", "candles:1h"],
        database_url=postgres_url, history_bars=300,
    )  # fmt: skip
    async with running(config) as service:
        await wait_until(lambda: loader_fills(service) >= 2, 20)
        first = await stored_times(store, topic)
        assert len(first) >= 300 and not missing_buckets(first, Timeframe.M1)
    # Down for the last 40 minutes: as if the collector had not run then.
    cutoff = first[-1] - 40 * 60_000
    await store.pool.execute("DELETE FROM candles WHERE timeframe = '1m' AND open_time > $1", cutoff)
    async with running(config) as service:
        assert service.storage is not None
        await wait_until(lambda: loader_fills(service) >= 2, 20)
        after = await stored_times(store, topic)
        assert after[0] == first[0] and after[-1] >= first[-1]
        assert not missing_buckets(after, Timeframe.M1)
        hours = await stored_times(store, Topic.parse("binance:candles.1h:BTC/USDT"))
        assert hours and not missing_buckets(hours, Timeframe.H1)


async def test_an_outage_is_filled_from_rest_after_the_reconnect(
    sim: Simulator, store: CandleStore, postgres_url: str, redis_url: str
) -> None:
    topic = Topic.parse("kraken:candles.1m:BTC/USD")
    config = collector_config(
        sim, Exchange.KRAKEN, redis_url, symbols=["BTC/USD"], channels=["candles:1m"], database_url=postgres_url,
        history_bars=120,
    )  # fmt: skip
    async with running(config) as service:
        await wait_until(lambda: service.storage is not None and service.storage.loader is not None, 15)
        assert service.storage is not None and service.storage.loader is not None
        loader = service.storage.loader
        await wait_until(lambda: loader.fills >= 1, 20)
        before = await stored_times(store, topic)
        # The outage: candles of the last 30 minutes never reached the store, and the socket drops.
        await store.pool.execute("DELETE FROM candles WHERE open_time > $1", before[-1] - 30 * 60_000)
        sim.server(Exchange.KRAKEN).drop_connections()
        await wait_until(lambda: loader.fills >= 2, 20)
        after = await stored_times(store, topic)
        assert after[-1] >= before[-1] and not missing_buckets(after, Timeframe.M1)


@pytest.mark.parametrize(
    ("exchange", "symbol", "coarse"),
    [(Exchange.BINANCE, "BTC/USDT", Timeframe.M5), (Exchange.BYBIT, "ETH/USDT", Timeframe.H1)],
)
async def test_aggregated_candles_equal_the_exchanges_own(
    sim: Simulator, store: CandleStore, exchange: Exchange, symbol: str, coarse: Timeframe
) -> None:
    """Our fold of 1m candles is the exchange's native candle of the coarser timeframe."""
    service_topics = [Topic.parse(f"{exchange}:candles.{tf}:{symbol}") for tf in (Timeframe.M1, coarse)]
    loader = await standalone_loader(sim, exchange, store, service_topics, bars=600)
    async with aiohttp.ClientSession() as session:
        for topic in service_topics:
            await loader.fill(session, topic)
    now = int(time.time() * 1000)
    minutes = await store.page(exchange, symbol, Timeframe.M1, limit=100_000)
    native = {c.open_time: c for c in await store.page(exchange, symbol, coarse, limit=100_000) if c.closed}
    built = {c.open_time: c for c in aggregate(minutes, coarse, now) if c.closed}
    common = sorted(set(native) & set(built))[1:]  # the first built bucket may lack its earliest minutes
    assert len(common) >= 5
    for open_time in common:
        ours, theirs = built[open_time], native[open_time]
        assert (ours.open, ours.high, ours.low, ours.close) == (theirs.open, theirs.high, theirs.low, theirs.close)
        assert float(ours.volume) == pytest.approx(float(theirs.volume), rel=1e-12)


async def test_a_timeframe_the_exchange_lacks_is_built_from_a_native_one(sim: Simulator, store: CandleStore) -> None:
    topic = Topic.parse("okx:candles.8h:BTC/USDT")  # OKX has 4h, not 8h
    loader = await standalone_loader(sim, Exchange.OKX, store, [topic], bars=3)
    assert loader.base_timeframe(Timeframe.H8) is Timeframe.H4
    async with aiohttp.ClientSession() as session:
        await loader.fill(session, topic)
    built = await store.page(Exchange.OKX, "BTC/USDT", Timeframe.H8, limit=10)
    assert built and all(Timeframe.H8.start(c.open_time) == c.open_time for c in built)
    assert all(c.closed for c in built[:-1])
    # The newest bucket is still forming, unless this ran in its very last second (it then closed).
    if Timeframe.H8.end(built[-1].open_time) > time.time() * 1000 + 1000:
        assert built[-1].closed is False


# -- hostile REST ------------------------------------------------------------------------------

GOOD_ROW = [0, "1.0", "2.0", "0.5", "1.5", "10", 59_999, "15", 3, "5", "7.5", "0"]


def kline(open_time: int, **changes: Any) -> list[Any]:
    row = list(GOOD_ROW)
    row[0], row[6] = open_time, open_time + 59_999
    for index, value in changes.items():
        row[int(index.removeprefix("f"))] = value
    return row


def hostile(kind: str) -> bytes:
    """A klines body of the named kind, around the current minute (the loader's window)."""
    now = int(time.time() * 1000) // 60_000 * 60_000
    rows: dict[str, Any] = {
        "wrong_types": [[now, 1.0, 2.0, 0.5, 1.5, 10, now + 59_999, "15", 3, "5", "7.5", "0"]],
        "not_a_decimal": [kline(now - 60_000, f1="NaN")],
        "off_grid": [kline(now - 59_000)],
        "out_of_order": [kline(now - 60_000), kline(now - 120_000)],
        "duplicates": [kline(now - 120_000), kline(now - 120_000)],
        "too_many": [kline(now - i * 60_000) for i in range(5000, 0, -1)],
    }
    if kind == "malformed":
        return b'[[1700000000000,"1.0",'
    if kind == "huge":
        return b"[" + b" " * (6 * 1024 * 1024) + b"]"
    return json.dumps(rows[kind]).encode()


HOSTILE = ["malformed", "wrong_types", "not_a_decimal", "off_grid", "out_of_order", "duplicates", "too_many", "huge"]


@pytest.mark.parametrize("kind", HOSTILE)
async def test_hostile_history_pages_are_refused_with_a_logged_error(
    kind: str, store: CandleStore, caplog: pytest.LogCaptureFixture
) -> None:
    payload = hostile(kind)
    served = 0

    async def klines(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v3/klines", klines)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        topic = Topic.parse("binance:candles.1m:BTC/USDT")
        loader = await standalone_loader(
            None, Exchange.BINANCE, store, [topic], bars=10, rest=f"http://127.0.0.1:{port}"
        )
        caplog.set_level(logging.WARNING)
        loader.reopened([topic])
        async with aiohttp.ClientSession() as session:
            await loader._fill_guarded(session, topic)  # what the loader's loop runs for a due topic
        assert served == 1
        assert loader.refused + loader.failures == 1
        assert await store.pool.fetchval("SELECT count(*) FROM candles") == 0
        records = [r for r in caplog.records if r.name == "collectors.history"]
        assert [r.getMessage() for r in records] in (["history page refused"], ["history fetch failed"])
        assert not any(r.exc_info for r in records)  # a clear line, never a traceback
    finally:
        await runner.cleanup()


async def test_a_refused_page_is_an_error_the_fill_raises(store: CandleStore, sim: Simulator) -> None:
    topic = Topic.parse("binance:candles.1m:BTC/USDT")
    loader = await standalone_loader(sim, Exchange.BINANCE, store, [topic], bars=10)
    with pytest.raises(HistoryError, match="out of order"):
        loader._checked(
            b'[[120000,"1","1","1","1","1",179999,"1",1,"1","1","0"],[60000,"1","1","1","1","1",119999,"1",1,"1","1","0"]]',
            Timeframe.M1,
            0,
            10**13,
            None,
        )


# -- helpers -------------------------------------------------------------------------------------


def loader_fills(service: Any) -> int:
    loader = service.storage.loader if service.storage is not None else None
    return loader.fills if loader is not None else 0


async def standalone_loader(
    sim: Simulator | None, exchange: Exchange, store: CandleStore, topics: list[Topic], *, bars: int, rest: str = ""
) -> HistoryLoader:
    """A loader over a collector that is not connected to any WebSocket (REST only)."""
    from collectors.feed.collector import Collector, FeedSettings  # noqa: PLC0415

    adapter_class = ADAPTERS[exchange]
    url = rest or (sim.rewrite(adapter_class.endpoints["rest"]) if sim is not None else "")

    class Quiet:
        def put(self, event: object) -> None: ...

        def status(self) -> Any: ...

    collector = Collector(
        "history-test",
        lambda host: adapter_class(host=host, urls={"rest": url}),
        outlet=Quiet(),
        settings=FeedSettings(),
    )
    return HistoryLoader(collector, store, bars=bars, retention_days={})


async def test_a_trade_built_bucket_seen_in_part_is_fetched_again_once_closed(
    sim: Simulator, store: CandleStore
) -> None:
    """Coinbase streams 1m only as trades: the bucket open at start is refetched after it closes."""
    topic = Topic.parse("coinbase:candles.1m:BTC/USD")
    loader = await standalone_loader(sim, Exchange.COINBASE, store, [topic], bars=30)
    loader.reopened([topic])
    before = Timeframe.M1.start(int(time.time() * 1000))
    async with aiohttp.ClientSession() as session:
        await loader._fill_guarded(session, topic)
    after = Timeframe.M1.start(int(time.time() * 1000))
    again = loader._due[topic]
    assert again.start in {before, after}  # the bucket open during the fill
    assert again.at == Timeframe.M1.end(again.start) + 10_000
    native = Topic.parse("binance:candles.1m:BTC/USDT")  # a native live timeframe needs no second look
    binance = await standalone_loader(sim, Exchange.BINANCE, store, [native], bars=30)
    binance.reopened([native])
    async with aiohttp.ClientSession() as session:
        await binance._fill_guarded(session, native)
    assert native not in binance._due


async def test_a_chart_over_the_whole_pipeline_gets_history_then_live_without_a_gap(
    sim: Simulator, store: CandleStore, postgres_url: str, redis_url: str
) -> None:
    """Simulator -> collector -> PostgreSQL and Redis -> gateway -> client: 1000 bars, then live ones."""
    from tests.harness import connected, make_token, running_node  # noqa: PLC0415 - gateway helpers

    topic = "binance:candles.1m:BTC/USDT"
    config = collector_config(
        sim, Exchange.BINANCE, redis_url, symbols=["BTC/USDT"], channels=["candles:1m"], database_url=postgres_url,
        history_bars=1100,
    )  # fmt: skip
    async with (
        running(config) as service,
        running_node(redis_url, database_url=postgres_url) as node,
        connected(node.url, make_token()) as client,
    ):
        await wait_until(lambda: loader_fills(service) >= 1, 20)
        assert (await client.call("subscribe", [topic]))["results"][0]["ok"]
        page = await client.call("candles:history", {"topic": topic, "limit": 1000})
        assert page["ok"] and len(page["candles"]) == 1000
        live = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                live.append((await client.next("market", timeout=1))[1])
            except TimeoutError:
                continue
        assert live, "no live candle within 3 s"
        last = page["candles"][-1]["open_time"]
        bars = {bar["open_time"]: bar for bar in page["candles"]}
        last_bar: dict[str, Any] = {}
        for bar in live:
            if bar["open_time"] >= last:
                bars[bar["open_time"]] = last_bar = bar
                last = bar["open_time"]
        times = sorted(bars)
        assert times == list(range(times[0], times[-1] + 60_000, 60_000))  # no gap, no duplicate
        assert last_bar and last_bar["open_time"] == times[-1]  # live continues the history
