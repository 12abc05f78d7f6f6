"""The collector contract, run over all five adapters against the simulator and a real Redis.

Whatever the exchange, a collector must deliver every kind of topic as
shared.events records, numbered 1, 2, 3... per topic, with bounded book
views, latest values for the gateway's snapshot-on-subscribe, and a status
record; and it must subscribe each stream exactly once per connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from collectors.feed.adapter import Op
from collectors.simulator import Simulator, SimulatorConfig
from shared import codec, names
from shared.events import Book, Candle, Ticker, Trade
from shared.status import ConnectionState, decode_status
from shared.topics import Exchange
from tests.collector_support import SYMBOLS, Tap, collector_config, running, wait_until

CHANNELS = ["ticker", "trades", "book", "candles:1m", "candles:5m"]
EXPECTED = {"Ticker", "Trade", "Book", "Candle1m", "Candle5m"}


@pytest.mark.parametrize("exchange", list(Exchange))
async def test_every_kind_of_every_symbol_reaches_redis_in_order(
    exchange: Exchange, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    symbols = SYMBOLS[exchange]
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        config = collector_config(sim, exchange, redis_url, channels=CHANNELS, book_rate=10.0)
        async with running(config) as service:
            wanted = {(kind, symbol) for kind in EXPECTED for symbol in symbols}
            await wait_until(lambda: wanted <= tap.kinds(), timeout=10)
            collector, adapter = service.collector, service.collector.adapter
            # Each stream subscribed once, in as few requests as the exchange allows.
            by_path = {c["path"]: c for c in sim.server(exchange).stats()["connections"]}
            assert len(by_path) == len(collector.connections)
            extra = len(adapter.open_messages())  # Coinbase: heartbeats
            for conn in collector.connections:
                seen = by_path[urlsplit(conn.url).path or "/"]
                assert len(seen["subscriptions"]) == len(set(seen["subscriptions"])) == len(conn.streams) + extra
                assert seen["subscribe_messages"] == len(adapter.requests(Op.SUBSCRIBE, conn.streams)) + extra
            # The record is written every status interval: the one read first may predate the connection.
            deadline = time.monotonic() + 5
            while True:
                status = decode_status(await redis_client.get(names.collector_status_key(config.name)))
                if status.state is ConnectionState.CONNECTED or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert status.state is ConnectionState.CONNECTED
            assert status.topics == sorted(str(topic) for topic in config.topics)

    by_topic: dict[str, list[int]] = defaultdict(list)
    for event in tap.events:
        assert event.exchange is exchange
        by_topic[str(event.topic)].append(event.seq)
    for topic, seqs in by_topic.items():
        assert seqs == list(range(1, len(seqs) + 1)), topic  # no loss, no reordering, from 1
    for book in tap.of(Book):
        assert 0 < len(book.bids) <= 20 and 0 < len(book.asks) <= 20
        bids, asks = [float(p) for p, _ in book.bids], [float(p) for p, _ in book.asks]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
        assert book.resync is False
    for symbol in symbols:
        times = [book.recv_ts for book in tap.of(Book, symbol)]
        for start in range(len(times)):  # at most 10 views in any second, give or take timer slack
            assert sum(1 for t in times[start:] if t - times[start] < 1000) <= 11
        trade = tap.of(Trade, symbol)[0]
        assert trade.trade_id and float(trade.price) > 0 and trade.ts > 0
        ticker = tap.of(Ticker, symbol)[-1]
        assert ticker.last is not None and ticker.recv_ts >= ticker.ts - 5_000
        for candle in tap.of(Candle, symbol):
            assert candle.timeframe.start(candle.open_time) == candle.open_time
            assert float(candle.low) <= float(candle.open) <= float(candle.high)
        for kind in ("ticker", "book", "candles.1m"):
            latest = await redis_client.get(names.latest_key(f"{exchange}:{kind}:{symbol}"))
            assert latest is not None and codec.decode_market(latest).symbol == symbol
