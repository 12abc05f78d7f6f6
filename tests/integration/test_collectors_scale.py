"""Many subscriptions: 100 topics on one collector, and a split over several connections."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from collectors.config import URL_SETTINGS
from collectors.exchanges import Binance
from collectors.feed.adapter import Host
from collectors.feed.collector import Collector, FeedSettings
from collectors.feed.connection import LinkSettings
from collectors.simulator import Simulator, SimulatorConfig
from shared.events import AnyMarketEvent, Book
from shared.status import ConnectionState, SinkStatus
from shared.topics import Exchange, Topic
from tests.collector_support import Tap, collector_config, restored, running, wait_until

SYMBOLS = [f"C{i:02d}/USDT" for i in range(25)]
CHANNELS = ["ticker", "trades", "book", "candles:1m"]


@pytest.mark.parametrize("exchange", [Exchange.BYBIT, Exchange.BINANCE])
async def test_one_hundred_subscriptions_on_one_collector(exchange: Exchange, redis_url: str) -> None:
    async with Simulator(SimulatorConfig(exchanges=[exchange], rate=4.0)) as sim, Tap(redis_url) as tap:
        config = collector_config(sim, exchange, redis_url, symbols=SYMBOLS, channels=CHANNELS)
        assert len(config.topics) == 100
        async with running(config) as service:
            await wait_until(lambda: restored(sim, exchange, service), timeout=10)
            # Bybit takes 10 topics a request: 10 requests, paced, on one connection.
            await wait_until(lambda: {b.symbol for b in tap.of(Book)} == set(SYMBOLS), timeout=10)
            status = service.collector.status()
            assert len(status.topics) == 100 and len(status.streams) == 100
            assert status.state is ConnectionState.CONNECTED


class Outlet:
    """Keeps events in memory, for a collector run without Redis."""

    def __init__(self) -> None:
        self.events: list[AnyMarketEvent] = []

    def put(self, event: AnyMarketEvent) -> None:
        self.events.append(event)

    def status(self) -> SinkStatus:
        return SinkStatus(redis_up=True, queued=0, published=len(self.events), dropped=0, errors=0)


class SmallBinance(Binance):
    """Binance with room for 40 streams a connection, so 100 need three connections."""

    max_streams_per_connection: ClassVar[int] = 40


async def test_streams_are_split_over_connections_at_the_exchange_limit() -> None:
    async with Simulator(SimulatorConfig(exchanges=[Exchange.BINANCE], rate=4.0)) as sim:
        urls: Mapping[str, str] = {
            endpoint: sim.rewrite(url)
            for endpoint, url in Binance.endpoints.items()
            if endpoint in URL_SETTINGS.values()
        }

        def make(host: Host) -> Any:
            return SmallBinance(host=host, urls=urls, book_interval_s=0.0)

        outlet = Outlet()
        settings = FeedSettings(link=LinkSettings(backoff_initial_s=0.05, backoff_max_s=0.2))
        collector = Collector("split", make, outlet=outlet, settings=settings)
        collector.add(
            Topic.parse(f"binance:{channel.replace(':', '.')}:{symbol}") for symbol in SYMBOLS for channel in CHANNELS
        )
        task = asyncio.create_task(collector.run())
        try:
            await wait_until(lambda: len(sim.server(Exchange.BINANCE).stats()["connections"]) == 3, timeout=10)
            assert sorted(len(conn.streams) for conn in collector.connections) == [20, 40, 40]
            await wait_until(
                lambda: sum(len(c["subscriptions"]) for c in sim.server(Exchange.BINANCE).stats()["connections"]) == 100
            )
            subscriptions = [c["subscriptions"] for c in sim.server(Exchange.BINANCE).stats()["connections"]]
            flat = [name for names in subscriptions for name in names]
            assert len(flat) == len(set(flat))  # no stream on two connections
            await wait_until(
                lambda: {e.symbol for e in outlet.events if isinstance(e, Book)} == set(SYMBOLS), timeout=10
            )
            # Removing every topic of the last connection closes it.
            last = collector.connections[-1]
            collector.remove(
                [topic for topic in collector.topics if collector.adapter.stream_for(topic) in last.streams]
            )
            assert last not in collector.connections and len(collector.topics) == 100 - 20
        finally:
            collector.stop()
            await task
        assert collector.state is ConnectionState.TERMINATED
