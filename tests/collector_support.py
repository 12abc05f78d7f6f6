"""Helpers for the collector tests: recorded frames, and a host and link that record what adapters do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio

from collectors.book import SyncReason
from collectors.config import URL_SETTINGS, CollectorConfig
from collectors.exchanges import ADAPTERS
from collectors.feed.adapter import Adapter, Op, Stream
from collectors.runner import CollectorService
from collectors.simulator import Simulator
from shared import codec
from shared.events import AnyMarketEvent, Book, Candle, Ticker, Trade
from shared.status import ConnectionState
from shared.topics import Exchange, Topic

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exchanges"
RECV_TS = 1_700_000_000_000.0  # a fixed receive time, so expected events are exact


def frames(relative: str) -> list[str]:
    """The raw frames of a fixture file, one per line, exactly as recorded."""
    return [line for line in (FIXTURES / relative).read_text().splitlines() if line.strip()]


class Recorder:
    """A Host that keeps every event an adapter publishes and every resync it asks for."""

    def __init__(self) -> None:
        self.events: list[AnyMarketEvent] = []
        self.resyncs: list[tuple[Stream, SyncReason | None]] = []

    def publish(self, event: AnyMarketEvent) -> None:
        self.events.append(event)

    def resync(self, stream: Stream, reason: SyncReason | None) -> None:
        self.resyncs.append((stream, reason))

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def books(self) -> list[Book]:
        return self.of(Book)

    @property
    def trades(self) -> list[Trade]:
        return self.of(Trade)

    @property
    def tickers(self) -> list[Ticker]:
        return self.of(Ticker)

    @property
    def candles(self) -> list[Candle]:
        return self.of(Candle)


class FakeLink:
    """The connection a replayed frame 'arrived' on."""

    def __init__(self, streams: Iterable[Stream] = ()) -> None:
        self.id = "replay-1"
        self.streams = set(streams)
        self.retired = False

    def retire(self) -> None:
        self.retired = True


def replay_adapter(
    adapter_class: type[Adapter[Any]], topics: Iterable[str], **kwargs: Any
) -> tuple[Adapter[Any], Recorder, FakeLink]:
    """An adapter wanting `topics`, on a recorder host, with books published on every change."""
    recorder = Recorder()
    adapter = adapter_class(host=recorder, book_interval_s=0.0, **kwargs)
    streams = [adapter.want(Topic.parse(topic)) for topic in topics]
    link = FakeLink(streams)
    adapter.connection_opened(link)
    return adapter, recorder, link


def play(adapter: Adapter[Any], link: FakeLink, texts: Iterable[str]) -> None:
    for text in texts:
        adapter.on_message(link, text, RECV_TS)


# -- integration: collectors against the simulator and a real Redis ------------------------

SYMBOLS = {
    Exchange.BINANCE: ["BTC/USDT", "ETH/USDT"],
    Exchange.COINBASE: ["BTC/USD", "ETH/USD"],
    Exchange.KRAKEN: ["BTC/USD", "ETH/USD"],
    Exchange.BYBIT: ["BTC/USDT", "ETH/USDT"],
    Exchange.OKX: ["BTC/USDT", "ETH/USDT"],
}
# Short timings so that faults are noticed and healed within a test's few seconds.
FAST: Final[dict[str, Any]] = {
    "admin_port": 0,
    "ping_interval_s": 0.4,
    "pong_timeout_s": 0.4,
    "connect_timeout_s": 2.0,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.4,
    "stable_after_s": 1.0,
    "status_interval_s": 0.2,
    "status_ttl_s": 5.0,
    "shutdown_timeout_s": 2.0,
}


def simulated_urls(sim: Simulator, exchange: Exchange) -> dict[str, str]:
    """URL settings pointing each of the adapter's endpoints at the simulator (same paths)."""
    endpoints = ADAPTERS[exchange].endpoints
    return {name: sim.rewrite(endpoints[endpoint]) for name, endpoint in URL_SETTINGS.items() if endpoint in endpoints}


def collector_config(sim: Simulator, exchange: Exchange, redis_url: str, **overrides: Any) -> CollectorConfig:
    settings: dict[str, Any] = {
        "exchange": str(exchange),
        "symbols": SYMBOLS[exchange],
        "channels": ["ticker", "trades", "book", "candles:1m"],
        "redis_url": redis_url,
        **FAST,
        **simulated_urls(sim, exchange),
    }
    settings.update(overrides)
    return CollectorConfig(**settings)


@asynccontextmanager
async def running(config: CollectorConfig) -> AsyncIterator[CollectorService]:
    """A collector service running in the background; stopped (gracefully) on exit."""
    service = CollectorService(config)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def wait_until(condition: Callable[[], object], timeout: float = 8.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Tap:
    """Every market event published on Redis while the tap is open, decoded."""

    def __init__(self, redis_url: str, pattern: str = "md:*") -> None:
        self._client = redis.asyncio.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub()
        self._pattern = pattern
        self._task: asyncio.Task[None] | None = None
        self.events: list[AnyMarketEvent] = []

    async def __aenter__(self) -> Tap:
        await self._pubsub.psubscribe(self._pattern)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._pubsub.aclose()
        await self._client.aclose()

    async def _read(self) -> None:
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                self.events.append(codec.decode_market(message["data"]))

    def of(self, kind: type[Any], symbol: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (symbol is None or e.symbol == symbol)]

    def kinds(self) -> set[tuple[str, str]]:
        """(type tag, symbol) of everything seen; candles tagged with their timeframe."""
        return {(type(e).__name__ + getattr(e, "timeframe", ""), e.symbol) for e in self.events}


def restored(sim: Simulator, exchange: Exchange, service: CollectorService, *, fresh: bool = True) -> bool:
    """True when the simulator sees exactly our connections, each with every stream subscribed once.

    `fresh`: the connections were (re)opened with all their streams at once, so the number
    of subscribe requests must be the minimum too (not so after subscribing at run time).
    """
    collector, adapter = service.collector, service.collector.adapter
    open_connections = [c for c in sim.server(exchange).stats()["connections"] if not c["closed"]]
    if len(open_connections) != len(collector.connections):
        return False
    by_path = {c["path"]: c for c in open_connections}
    extra = len(adapter.open_messages())
    for conn in collector.connections:
        seen = by_path.get(urlsplit(conn.url).path or "/")
        if seen is None or conn.state is not ConnectionState.CONNECTED:
            return False
        if len(seen["subscriptions"]) != len(conn.streams) + extra:
            return False
        if fresh and seen["subscribe_messages"] != len(adapter.requests(Op.SUBSCRIBE, conn.streams)) + extra:
            return False  # a stream subscribed twice, or one request too many
    return True
