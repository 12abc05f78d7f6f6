"""The admin HTTP API and the status record, on a running collector."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import redis.asyncio

from collectors.simulator import Simulator, SimulatorConfig
from shared import names
from shared.events import Ticker, Trade
from shared.status import ConnectionState, decode_status
from shared.topics import Exchange
from tests.collector_support import Tap, collector_config, restored, running, wait_until

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_status_subscriptions_metrics_and_health(redis_url: str, redis_client: redis.asyncio.Redis) -> None:
    exchange = Exchange.BINANCE
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        config = collector_config(sim, exchange, redis_url, channels=["ticker", "book"], admin_token=TOKEN)
        async with (
            running(config) as service,
            aiohttp.ClientSession(f"http://127.0.0.1:{service.admin_port}", headers=AUTH) as http,
        ):
            await wait_until(lambda: restored(sim, exchange, service))

            async with http.get("/status") as response:
                assert response.status == 200
                status = decode_status(await response.read())
            assert status.id == "binance" and status.exchange is exchange
            assert status.state is ConnectionState.CONNECTED
            assert [c.state for c in status.connections] == [ConnectionState.CONNECTED]
            assert len(status.streams) == 4 and all(s.connection == "ws-1" for s in status.streams)

            body = {"topics": ["binance:trades:SOL/USDT"], "symbols": ["XRP/USDT"], "channels": ["candles:1m"]}
            async with http.post("/subscriptions", json=body) as response:
                assert response.status == 200
                result = await response.json()
            assert sorted(result["added"]) == ["binance:candles.1m:XRP/USDT", "binance:trades:SOL/USDT"]
            assert len(result["topics"]) == 6
            await wait_until(lambda: restored(sim, exchange, service, fresh=False) and tap.of(Trade, "SOL/USDT"))
            subscribed = sim.server(exchange).stats()["connections"][0]["subscriptions"]
            assert {"solusdt@trade", "xrpusdt@kline_1m"} <= set(subscribed)

            async with http.delete("/subscriptions", json={"topics": ["binance:trades:SOL/USDT"]}) as response:
                assert (await response.json())["removed"] == ["binance:trades:SOL/USDT"]
            await wait_until(
                lambda: "solusdt@trade" not in sim.server(exchange).stats()["connections"][0]["subscriptions"]
            )
            count = len(tap.of(Trade, "SOL/USDT"))
            await asyncio.sleep(0.3)
            assert len(tap.of(Trade, "SOL/USDT")) == count  # nothing published after the unsubscribe

            for bad, reason in [
                ({"topics": ["kraken:trades:BTC/USD"]}, "serves binance"),
                ({"symbols": ["BTCUSDT"], "channels": ["ticker"]}, "BASE/QUOTE"),
                ({"symbols": ["BTC/USDT"], "channels": ["candles:2m"]}, "unsupported timeframe"),
                ({"topics": ["binance:nope:BTC/USDT"]}, "unknown channel"),
                ({"topic": ["binance:ticker:BTC/USDT"]}, "bad request body"),
                ({}, "name some topics"),
            ]:
                async with http.post(
                    "/subscriptions", data=msgspec.json.encode(bad), headers={"Content-Type": "application/json"}
                ) as response:
                    assert response.status == 400, bad
                    assert reason in (await response.json())["error"]

            async with http.get("/metrics") as response:
                text = await response.text()
            assert 'collector_frames_received_total{connection="ws-1"}' in text
            assert 'collector_events_total{kind="book"}' in text
            assert "collector_redis_up 1.0" in text and "collector_topics 5.0" in text
            assert "python_gc_objects_collected_total" not in text  # its own registry, not the global one

            async with http.get("/healthz") as response:
                assert response.status == 200 and (await response.json())["state"] == "connected"

        stored = await redis_client.get(names.collector_status_key("binance"))
        assert decode_status(stored).state is ConnectionState.TERMINATED  # the final record on shutdown
        assert 0 < await redis_client.pttl(names.collector_status_key("binance")) <= 5000


async def test_status_is_announced_on_its_channel(redis_url: str) -> None:
    exchange = Exchange.KRAKEN
    client = redis.asyncio.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(names.COLLECTOR_STATUS_CHANNEL)
    try:
        async with (
            Simulator(SimulatorConfig(exchanges=[exchange])) as sim,
            running(collector_config(sim, exchange, redis_url, collector_id="kraken-a")),
        ):
            message = None
            while message is None or message["type"] != "message":
                message = await pubsub.get_message(timeout=2.0)
            assert decode_status(message["data"]).id == "kraken-a"
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_a_silent_stream_is_flagged_and_resubscribed(redis_url: str) -> None:
    exchange = Exchange.BINANCE
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        # The simulated ticker comes once a second: with a 0.3 s expectation it looks stale.
        config = collector_config(sim, exchange, redis_url, channels=["ticker", "book"], stale_after_s=0.3)
        async with running(config) as service:
            await wait_until(lambda: any(s.resubscribes for s in service.collector.status().streams), timeout=5)
            streams = {s.stream: s for s in service.collector.status().streams}
            assert streams["ticker:BTCUSDT"].resubscribes >= 1
            assert streams["depth@100ms:BTCUSDT"].resubscribes == 0  # ten a second: never silent that long
            await wait_until(lambda: any(s.stale for s in service.collector.status().streams), timeout=5)
            await wait_until(lambda: len(tap.of(Ticker, "BTC/USDT")) >= 2)  # and the resubscribed stream flows
