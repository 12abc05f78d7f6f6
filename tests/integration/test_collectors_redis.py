"""Redis goes away and comes back: the collector keeps memory bounded and resumes publishing."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from collectors.simulator import Simulator, SimulatorConfig
from shared import names
from shared.embedded_redis import EmbeddedRedis
from shared.events import Book
from shared.status import decode_status
from shared.topics import Exchange
from tests.collector_support import Tap, collector_config, running, wait_until

QUEUE = 30


async def test_redis_restarted_mid_run() -> None:
    exchange = Exchange.BINANCE
    server = EmbeddedRedis().start()
    try:
        async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim:
            config = collector_config(sim, exchange, server.url, queue_size=QUEUE, batch_size=10)
            async with running(config) as service:
                sink = service.sink
                async with Tap(server.url) as before:
                    await wait_until(lambda: sink.published > 20 and before.of(Book))
                    server.stop()
                    seq_before = max(book.seq for book in before.of(Book))
                await wait_until(lambda: not sink.redis_up and sink.dropped > 0)
                # While Redis is away the queue stays within its bound, dropping the oldest.
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    assert len(sink) <= QUEUE
                    await asyncio.sleep(0.02)
                dropped_while_down = sink.dropped

                server = EmbeddedRedis(port=server.port).start()  # same port: the pooled client reconnects
                async with Tap(server.url) as tap:
                    await wait_until(lambda: sink.redis_up and len(tap.of(Book)) >= 2)
                    assert sink.errors > 0 and sink.dropped >= dropped_while_down
                    # Numbering went on through the outage: consumers see the lost views as a gap in seq.
                    assert min(book.seq for book in tap.of(Book)) > seq_before + 1
                    # Every numbered event was published, dropped (counted) or is queued; one batch may be in flight.
                    numbered = sum(service.collector.events.values())
                    accounted = sink.published + sink.dropped + len(sink)
                    assert numbered - config.batch_size <= accounted <= numbered

                client = redis.asyncio.Redis.from_url(server.url)
                try:
                    assert await client.get(names.latest_key(f"binance:book:{config.symbols[0]}")) is not None
                    deadline = time.monotonic() + 5
                    while True:  # a status written after the sink got through again says so
                        data = await client.get(names.collector_status_key(config.name))
                        if data is not None and decode_status(data).sink.redis_up:
                            break
                        assert time.monotonic() < deadline, "no fresh status after the restart"
                        await asyncio.sleep(0.05)
                finally:
                    await client.aclose()
    finally:
        server.stop()
