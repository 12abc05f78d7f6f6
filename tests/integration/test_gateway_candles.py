"""Candle history from a real gateway node: pages from PostgreSQL, the seam with live candles, error codes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio

from shared.candle_store import CandleStore
from shared.events import Candle
from shared.publisher import AsyncPublisher
from shared.topics import Exchange, Timeframe
from tests.harness import connected, make_token, running_node

MINUTE = 60_000
TOPIC = "binance:candles.1m:BTC/USDT"
NOW = int(time.time() * 1000)
OPEN = NOW - NOW % MINUTE  # the bucket open now
STORED = 1_100  # closed candles before the open one


def candle(open_time: int, *, closed: bool, close: str = "100.0") -> Candle:
    return Candle(
        exchange=Exchange.BINANCE, symbol="BTC/USDT", ts=open_time + 1_000, recv_ts=time.time() * 1000,
        timeframe=Timeframe.M1, open_time=open_time, open="100.0", high="101.0", low="99.0", close=close,
        volume="2.50000000", closed=closed,
    )  # fmt: skip


@pytest.fixture
async def stored(store: CandleStore) -> AsyncIterator[CandleStore]:
    await store.upsert([candle(OPEN - (STORED - i) * MINUTE, closed=True) for i in range(STORED)])
    await store.upsert([candle(OPEN, closed=False, close="100.5")])
    yield store


def merge(history: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a chart does: setData(history), then update() with each live candle by open_time."""
    bars = {item["open_time"]: item for item in history}
    last = history[-1]["open_time"]
    for item in live:
        if item["open_time"] >= last:  # update() refuses bars older than the last one
            bars[item["open_time"]] = item
            last = item["open_time"]
    return [bars[key] for key in sorted(bars)]


async def test_a_chart_loads_1000_candles_then_continues_live_across_a_close(
    stored: CandleStore, postgres_url: str, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    publisher = AsyncPublisher(redis_client)
    await publisher.publish_market([candle(OPEN, closed=False, close="100.5")])
    async with running_node(redis_url, database_url=postgres_url) as node, connected(node.url, make_token()) as c:
        ack = await c.call("subscribe", [TOPIC])
        assert ack["results"][0]["ok"]
        _, first = await c.next("market")
        assert first["open_time"] == OPEN
        # The candle closes and the next opens before the store has caught up with either.
        await publisher.publish_market([candle(OPEN, closed=True, close="100.7"), candle(OPEN + MINUTE, closed=False)])
        page = await c.call("candles:history", {"topic": TOPIC, "limit": 1000})
        assert page["ok"] and len(page["candles"]) == 1000
        live = [first]
        while len(live) < 3:
            live.append((await c.next("market"))[1])
        bars = merge(page["candles"], live)
        times = [item["open_time"] for item in bars]
        assert times == list(range(times[0], OPEN + 2 * MINUTE, MINUTE))  # no gap, no duplicate
        assert bars[-2]["closed"] and bars[-2]["close"] == "100.7"  # the final state of the bar that closed
        older = await c.call("candles:history", {"topic": TOPIC, "before": page["next_before"], "limit": 1000})
        assert [item["open_time"] for item in older["candles"]][-1] == page["candles"][0]["open_time"] - MINUTE
        assert older["next_before"] is None  # the store has nothing older
        assert len(older["candles"]) + len(page["candles"]) == STORED + 1  # every stored bar, once


@pytest.mark.parametrize(
    ("request_data", "code"),
    [
        ({"topic": "binance:candles.2m:BTC/USDT"}, "invalid_topic"),
        ({"topic": "binance:ticker:BTC/USDT"}, "invalid_topic"),
        ({"topic": TOPIC, "limit": 0}, "bad_request"),
        ({"topic": TOPIC, "limit": 1001}, "bad_request"),
        ({"topic": TOPIC, "limit": "10"}, "bad_request"),
        ({"topic": TOPIC, "before": NOW + 3_600_000}, "bad_request"),
        ({"topic": "okx:candles.1m:BTC/USDT"}, "forbidden"),
        (["not", "an", "object"], "bad_request"),
    ],
)
async def test_bad_requests_get_error_codes(
    stored: CandleStore, postgres_url: str, redis_url: str, request_data: object, code: str
) -> None:
    async with (
        running_node(redis_url, database_url=postgres_url, allowed_topics=["binance:*"]) as node,
        connected(node.url, make_token()) as client,
    ):
        answer = await client.call("candles:history", request_data)
        assert answer == {"ok": False, "error": {"code": code, "message": answer["error"]["message"]}}


async def test_without_a_store_history_is_unavailable(redis_url: str) -> None:
    async with running_node(redis_url) as node, connected(node.url, make_token()) as client:
        answer = await client.call("candles:history", {"topic": TOPIC})
        assert answer["error"]["code"] == "unavailable"


async def test_http_endpoint_needs_a_token_and_applies_the_topic_policy(
    stored: CandleStore, postgres_url: str, redis_url: str
) -> None:
    async with (
        running_node(redis_url, database_url=postgres_url, allowed_topics=["binance:*"]) as node,
        aiohttp.ClientSession() as http,
    ):
        url = f"{node.url}/candles"
        bearer = {"Authorization": f"Bearer {make_token()}"}
        async with http.get(url, params={"topic": TOPIC, "limit": "3"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "token_missing"
        async with http.get(url, params={"topic": TOPIC, "limit": "3"}, headers=bearer) as response:
            assert response.status == 200
            body = msgspec.json.decode(await response.read())
            assert [item["open_time"] for item in body["candles"]] == [OPEN - 2 * MINUTE, OPEN - MINUTE, OPEN]
        async with http.get(url, params={"topic": TOPIC, "limit": "-1"}, headers=bearer) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "bad_request"
        async with http.get(url, params={"topic": "okx:candles.1m:BTC/USDT"}, headers=bearer) as response:
            assert response.status == 403
        async with http.get(url, params={"topic": "nope"}, headers=bearer) as response:
            assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_topic")
        # A revoked user's token is refused here as on a connect.
        revoked = make_token(sub="mallory")
        client = redis.asyncio.Redis.from_url(redis_url)
        await AsyncPublisher(client).revoke(user_id="mallory")
        await client.aclose()
        headers = {"Authorization": f"Bearer {revoked}"}
        async with http.get(url, params={"topic": TOPIC}, headers=headers) as response:
            assert (await response.json())["error"]["code"] == "token_revoked"
