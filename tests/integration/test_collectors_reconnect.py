"""Reconnection stress against the simulator: drops, stalls, refusals and planned retirements.

After each fault the collector must come back on its own, with every stream
subscribed again exactly once, and with its backoff honoured while the
exchange refuses it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from collectors.simulator import DropMode, Simulator, SimulatorConfig
from shared.events import Book, Trade
from shared.status import ConnectionState
from shared.topics import Exchange
from tests.collector_support import Tap, collector_config, restored, running, wait_until

DROPS = 6


def collector_tasks() -> int:
    """Running tasks of the collector's own (the simulator's are not counted)."""
    owners = ("Connection.", "Collector.", "Sink.", "StatusPublisher.", "CollectorService.")
    return sum(1 for task in asyncio.all_tasks() if task.get_coro().__qualname__.startswith(owners))


def server_frames(sim: Simulator, exchange: Exchange) -> int:
    """Frames the simulator received on its open connections (requests and pings)."""
    return sum(c["messages_in"] for c in sim.server(exchange).stats()["connections"])


@pytest.mark.parametrize("exchange", list(Exchange))
async def test_dropped_many_times_comes_back_with_every_subscription_once(exchange: Exchange, redis_url: str) -> None:
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        server = sim.server(exchange)
        async with running(collector_config(sim, exchange, redis_url)) as service:
            await wait_until(lambda: restored(sim, exchange, service) and len({b.symbol for b in tap.of(Book)}) == 2)
            tasks = collector_tasks()
            for drop in range(DROPS):
                accepted = server.stats()["connections_accepted"]
                server.drop_connections(DropMode.ABORT if drop % 2 else DropMode.CLOSE)
                await wait_until(lambda before=accepted: server.stats()["connections_accepted"] > before)
                await wait_until(lambda: restored(sim, exchange, service))
            seen = len(tap.events)
            await wait_until(lambda: len(tap.of(Book)) and len(tap.events) > seen + 5)  # data flows again
            status = service.collector.status()
            assert status.reconnects >= DROPS
            assert status.state is ConnectionState.CONNECTED
            # Books were rebuilt after each loss, and said so.
            await wait_until(lambda: any(book.resync for book in tap.of(Book)))
            # Nothing piles up across reconnects: each socket's reader, writer and watchdog are gone with it
            # (a book snapshot fetch may still be finishing, hence the wait).
            await wait_until(lambda: collector_tasks() <= tasks)


@pytest.mark.parametrize("exchange", [Exchange.BINANCE, Exchange.KRAKEN, Exchange.OKX])
async def test_a_stalled_connection_is_declared_dead_and_replaced(exchange: Exchange, redis_url: str) -> None:
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        server = sim.server(exchange)
        async with running(collector_config(sim, exchange, redis_url)) as service:
            await wait_until(lambda: restored(sim, exchange, service))
            accepted = server.stats()["connections_accepted"]
            stalled_at = time.monotonic()
            server.stall(seconds=30)  # open, silent, deaf to pings
            await wait_until(lambda: server.stats()["connections_accepted"] > accepted, timeout=5)
            # Noticed after ping interval + pong timeout (0.8 s here), not after the 30 s stall.
            assert time.monotonic() - stalled_at < 3.0
            await wait_until(lambda: restored(sim, exchange, service))
            after = time.time() * 1000
            await wait_until(lambda: any(trade.recv_ts > after for trade in tap.of(Trade)))
            assert any(
                "no message" in conn.status().last_error or conn.reconnects for conn in service.collector.connections
            )


async def test_refused_connections_are_retried_with_capped_backoff(redis_url: str) -> None:
    exchange = Exchange.BYBIT
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim:
        server = sim.server(exchange)
        config = collector_config(sim, exchange, redis_url, backoff_initial_s=0.05, backoff_max_s=0.2)
        async with running(config) as service:
            await wait_until(lambda: restored(sim, exchange, service))
            refusing_for = 1.5
            server.refuse(seconds=refusing_for)
            server.drop_connections()
            await wait_until(lambda: service.collector.state is ConnectionState.ERROR, timeout=3)
            assert "503" in service.collector.connections[0].last_error
            await wait_until(lambda: restored(sim, exchange, service), timeout=6)
            refused = server.stats()["connections_refused"]
            # Delays are drawn from [base/2, base] with base 0.05, 0.1, 0.2, 0.2...: in 1.5 s that
            # is at most ~14 attempts, and a client without backoff would make hundreds.
            assert 3 <= refused <= 16


async def test_planned_retirement_reconnects_without_backoff_or_error(redis_url: str) -> None:
    exchange = Exchange.BINANCE
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        config = collector_config(
            sim, exchange, redis_url, max_connection_age_s=0.6, backoff_initial_s=5.0, backoff_max_s=5.0
        )
        async with running(config) as service:
            await wait_until(lambda: service.collector.status().reconnects >= 3, timeout=5)  # no 5 s backoff
            await wait_until(lambda: restored(sim, exchange, service))
            assert all(conn.last_error == "" for conn in service.collector.connections)
            assert tap.of(Book)


@pytest.mark.parametrize(
    ("exchange", "channels", "interval"),
    [
        (Exchange.BINANCE, ["ticker"], 0.3),  # quiet between once-a-second tickers: LIST_SUBSCRIPTIONS pings
        (Exchange.COINBASE, ["ticker"], 0.05),  # no application ping: WebSocket ping frames in the gaps
        (Exchange.BYBIT, ["book"], 0.3),  # busy, but Bybit wants its pings anyway
    ],
)
async def test_pings_keep_a_healthy_connection(
    exchange: Exchange, channels: list[str], interval: float, redis_url: str
) -> None:
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim:
        config = collector_config(
            sim, exchange, redis_url, channels=channels, ping_interval_s=interval, pong_timeout_s=2.0
        )
        async with running(config) as service:
            await wait_until(lambda: restored(sim, exchange, service))
            subscribed = server_frames(sim, exchange)
            await wait_until(lambda: server_frames(sim, exchange) >= subscribed + 3, timeout=5)
            await asyncio.sleep(0.5)
            assert service.collector.status().reconnects == 0  # pinged, answered, never declared dead
