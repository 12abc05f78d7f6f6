"""Running collectors: each with its Redis sink, status publisher and admin API.

`CollectorService` is one collector and everything around it; `run_all`
runs any number of them in one process until SIGTERM or SIGINT, which is
how a single host runs several exchanges from one config file. Building a
service checks everything that can be checked before connecting (exchange,
topics, URL overrides) and raises ConfigError or SubscriptionError, so bad
input fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Final

from collectors.admin import AdminApi, AdminGuard, start_admin
from collectors.config import URL_SETTINGS, CollectorConfig, ConfigError, parse_exchange
from collectors.demand import DemandWatcher
from collectors.exchanges import ADAPTERS
from collectors.feed.collector import Collector
from collectors.feed.rest import RestBudget
from collectors.metrics import CollectorMetrics
from collectors.sink import Sink, market_publisher, redis_client
from collectors.status import StatusPublisher
from collectors.storage import CandleStorage
from shared.events import AnyMarketEvent
from shared.status import SinkStatus
from shared.topics import Exchange

logger = logging.getLogger(__name__)

# Redis is local infrastructure: retry it quickly, so publishing resumes soon after it is back.
REDIS_RETRY_INITIAL_S: Final = 0.1
REDIS_RETRY_MAX_S: Final = 2.0


class Outlets:
    """Every event to Redis; candles also to PostgreSQL when a store is configured."""

    def __init__(self, sink: Sink, storage: CandleStorage) -> None:
        self._sink = sink
        self._storage = storage

    def put(self, event: AnyMarketEvent) -> None:
        self._sink.put(event)
        self._storage.put(event)

    def status(self) -> SinkStatus:
        return self._sink.status()


class CollectorService:
    """One collector, its sink to Redis, its status publisher and its admin API.

    `budgets` shares one REST weight budget per exchange between the services of a process
    (the exchange counts weight per address, not per collector).
    """

    def __init__(self, config: CollectorConfig, budgets: dict[Exchange, RestBudget] | None = None) -> None:
        exchange = parse_exchange(config.exchange)
        adapter_class = ADAPTERS[exchange]
        for name, endpoint in URL_SETTINGS.items():
            if getattr(config, name) and endpoint not in adapter_class.endpoints:
                raise ConfigError(f"{exchange} has no {endpoint} endpoint: drop --{name.replace('_', '-')}")
        self.config = config
        self.redis = redis_client(config.redis_url)
        publisher, in_flight, self._close_publisher = market_publisher(
            config.redis_url, latest_ttl_s=config.latest_ttl_s
        )
        self.sink = Sink(
            publisher,
            max_in_flight=in_flight,
            max_queue=config.queue_size,
            batch_size=config.batch_size,
            backoff_initial_s=REDIS_RETRY_INITIAL_S,
            backoff_max_s=REDIS_RETRY_MAX_S,
            min_interval_s=config.publish_interval_ms / 1000,
        )
        self.collector = Collector(
            config.name,
            lambda host: adapter_class(
                host=host, urls=config.urls, book_depth=config.book_depth, book_interval_s=config.book_interval_s
            ),
            outlet=self.sink,
            settings=config.feed_settings(),
            rest=budgets.get(exchange) if budgets is not None else None,
        )
        if budgets is not None:
            budgets.setdefault(exchange, self.collector.rest)
        self.storage = CandleStorage(self.collector, config) if config.database_url else None
        if self.storage is not None:
            self.collector.set_outlet(Outlets(self.sink, self.storage))
        self.collector.add(config.topics)  # SubscriptionError for a topic the adapter cannot serve
        self.metrics = CollectorMetrics(self.collector, self.sink, self.storage)
        self.status = StatusPublisher(
            self.redis, self.collector.status, interval_s=config.status_interval_s, ttl_s=config.status_ttl_s
        )
        guard = AdminGuard(
            token=config.admin_token,
            hosts=tuple(host.lower() for host in config.admin_hosts),
            origins=tuple(config.admin_origins),
            max_topics=config.max_topics,
        )
        self.admin = AdminApi(self.collector, self.metrics, guard)
        self.demand = (
            DemandWatcher(
                self.collector,
                self.redis,
                exchange,
                self.metrics.demand_refusals,
                allow=config.on_demand_allow,
                max_topics=config.max_topics,
                linger_s=config.on_demand_linger_s,
            )
            if config.on_demand
            else None
        )
        self.admin_port = 0  # bound port, once running

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until `stop` is set; then close connections, flush the queue and publish a final status."""
        config = self.config
        admin, self.admin_port = await start_admin(self.admin, config.admin_host, config.admin_port)
        logger.info(
            "collector started",
            extra={"collector": config.name, "topics": len(self.collector.topics), "admin_port": self.admin_port},
        )
        try:
            async with asyncio.TaskGroup() as tg:
                sink = tg.create_task(self.sink.run(), name=f"{config.name}-sink")
                status = tg.create_task(self.status.run(), name=f"{config.name}-status")
                collector = tg.create_task(self.collector.run(ready), name=f"{config.name}-collector")
                demand = tg.create_task(self.demand.run(), name=f"{config.name}-demand") if self.demand else None
                storage = tg.create_task(self.storage.run(), name=f"{config.name}-storage") if self.storage else None
                await stop.wait()
                if demand is not None:
                    demand.cancel()
                self.collector.stop()
                await collector
                sink.cancel()
                status.cancel()
                if storage is not None:
                    storage.cancel()
            await self.sink.drain(config.shutdown_timeout_s)
            if self.storage is not None:
                await self.storage.close(config.shutdown_timeout_s)
            await self.status.publish_once()
        finally:
            await admin.cleanup()
            await self.redis.aclose()
            await self._close_publisher()
        logger.info("collector finished", extra={"collector": config.name, "dropped": self.sink.dropped})


async def run_all(services: Sequence[CollectorService], stop: asyncio.Event | None = None) -> None:
    """Run every service until SIGTERM or SIGINT (or `stop`)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            for service in services:
                tg.create_task(service.run(stop), name=f"service-{service.config.name}")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
