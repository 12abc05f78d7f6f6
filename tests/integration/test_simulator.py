"""The exchange simulator against real WebSocket and HTTP clients on loopback.

Frames are compared field by field (names, order, JSON types) with recorded real frames
from tests/fixtures/exchanges, books are rebuilt client-side and checked against the
exchange's own consistency rules (update-id chains, checksums recomputed here
independently), and every fault is observed from the client side.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from collectors.simulator import Mode, Simulator, SimulatorConfig
from collectors.simulator.faults import DropMode
from collectors.simulator.market import Market, Side, TradeEvent
from collectors.simulator.protocols import base as protocols_base
from collectors.simulator.synthetic import SyntheticSource, make_instrument
from shared.config import load
from shared.topics import Exchange

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "exchanges"


def real(path: str, line: int) -> Any:
    """Line `line` (1-based) of a recorded fixture file, parsed."""
    return json.loads((FIXTURES / path).read_text().splitlines()[line - 1])


def shape(value: Any) -> Any:
    """Field names in order and JSON types, recursively; lists by their first element."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return ["list", shape(value[0])] if value else ["list"]
    return type(value).__name__


def _fits(ours: Any, theirs: Any) -> bool:
    if ours == ["list"] or theirs == ["list"]:  # an empty list fits any list
        return (
            isinstance(ours, list)
            and isinstance(theirs, list)
            and (not ours or ours[0] == "list")
            and (not theirs or theirs[0] == "list")
        )
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return all(_fits(a, b) for a, b in zip(ours, theirs, strict=True))
    if isinstance(ours, tuple) and isinstance(theirs, tuple):
        return ours[0] == theirs[0] and _fits(ours[1], theirs[1])
    return bool(ours == theirs)


def same_shape(ours: Any, theirs: Any) -> None:
    """Same field names in the same order with the same JSON types as a real frame."""
    assert _fits(shape(ours), shape(theirs)), f"\nours:   {shape(ours)}\ntheirs: {shape(theirs)}"


def raw_tokens(text: str) -> Any:
    """Parse keeping every number's text exactly (Kraken's checksum needs it)."""
    return json.loads(text, parse_float=str, parse_int=str)


def kraken_crc(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    def token(text: str) -> str:
        return text.replace(".", "").lstrip("0")

    return zlib.crc32("".join(token(p) + token(q) for p, q in asks[:10] + bids[:10]).encode())


def okx_crc(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    parts: list[str] = []
    for i in range(25):
        parts += list(bids[i]) if i < len(bids) else []
        parts += list(asks[i]) if i < len(asks) else []
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class LocalBook:
    """A client-side book of exact text levels."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[str, str]] = {"bid": {}, "ask": {}}

    def set(self, side: str, price: str, size: str) -> None:
        if float(size) == 0:
            self.sides[side].pop(price, None)
        else:
            self.sides[side][price] = size

    def top(self, side: str, depth: int | None = None) -> list[tuple[str, str]]:
        levels = sorted(self.sides[side].items(), key=lambda lv: float(lv[0]), reverse=side == "bid")
        return levels[:depth]

    def truncate(self, depth: int) -> None:
        for side in self.sides:
            self.sides[side] = dict(self.top(side, depth))


async def recv(ws: ClientConnection, timeout: float = 2.0) -> Any:
    text = await asyncio.wait_for(ws.recv(), timeout)
    return text if text in ("pong",) else json.loads(text)


async def recv_until(ws: ClientConnection, predicate: Callable[[Any], bool], timeout: float = 3.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if predicate(message):
                return message


async def collect(ws: ClientConnection, seconds: float) -> list[str]:
    frames: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(str(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return frames


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait for server-side bookkeeping that finishes just after the client saw the effect."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def config(**overrides: Any) -> SimulatorConfig:
    base: dict[str, Any] = {"rate": 100.0, "seed": 7}
    return SimulatorConfig(**(base | overrides))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(config()) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- Binance ------------------------------------------------------------------------------


async def test_binance_subscribe_ack_data_and_requests(sim: Simulator) -> None:
    async with websockets.connect(sim.url("binance")) as ws:
        streams = [
            "btcusdt@trade",
            "btcusdt@depth@100ms",
            "btcusdt@bookTicker",
            "btcusdt@aggTrade",
            "btcusdt@kline_1m",
            "btcusdt@ticker",
        ]
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
        assert await recv(ws) == {"result": None, "id": 1}
        trade = await recv_until(ws, lambda m: m.get("e") == "trade")
        same_shape(trade, real("binance/trade_ticker_frames_real_misc.jsonl", 3)["data"])
        assert trade["s"] == "BTCUSDT" and len(trade["p"].split(".")[1]) == 8
        depth = await recv_until(ws, lambda m: m.get("e") == "depthUpdate")
        same_shape(depth, real("binance/depth_diff_NKNUSDT_2021-10-12.jsonl", 2)["data"])
        book_ticker = await recv_until(ws, lambda m: "u" in m and "e" not in m)
        same_shape(book_ticker, real("binance/trade_ticker_frames_real_misc.jsonl", 6)["data"])
        agg = await recv_until(ws, lambda m: m.get("e") == "aggTrade")
        same_shape(agg, real("binance/doc_examples_server_frames.jsonl", 9))
        kline = await recv_until(ws, lambda m: m.get("e") == "kline")
        same_shape(kline, real("binance/doc_examples_server_frames.jsonl", 12))
        ticker = await recv_until(ws, lambda m: m.get("e") == "24hrTicker")
        same_shape(ticker, real("binance/trade_ticker_frames_real_misc.jsonl", 7)["data"])

        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": "list1"}))
        assert await recv_until(ws, lambda m: m.get("id") == "list1") == {"result": streams, "id": "list1"}
        await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": streams[1:], "id": 2}))
        assert await recv_until(ws, lambda m: m.get("id") == 2) == {"result": None, "id": 2}
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["BTCUSDT@trade"], "id": 3}))
        assert await recv_until(ws, lambda m: m.get("id") == 3) == {
            "error": {"code": 2, "msg": "Invalid request: invalid stream"},
            "id": 3,
        }
        await asyncio.sleep(1.0)  # stay under 5 incoming messages a second
        await ws.send("{not json")
        error = await recv_until(ws, lambda m: "error" in m)
        assert error["error"]["code"] == 3
        pong = await ws.ping(b"p1")
        await asyncio.wait_for(pong, 2)


async def test_binance_rest_snapshot_chains_with_diff_stream(sim: Simulator, http: aiohttp.ClientSession) -> None:
    rest = sim.url("binance", "rest")
    async with websockets.connect(sim.url("binance") + "/ethusdt@depth@100ms") as ws:
        buffered = [json.loads(f) for f in await collect(ws, 0.3)]
        async with http.get(f"{rest}/api/v3/depth", params={"symbol": "ETHUSDT", "limit": "1000"}) as r:
            snapshot = await r.json()
        book = LocalBook()
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for price, size in snapshot[key]:
                book.set(side, price, size)
        last = snapshot["lastUpdateId"]
        pending = [d for d in buffered if d["u"] > last]
        while not pending:
            message = await recv(ws)
            if message["u"] > last:
                pending.append(message)
        first = pending[0]
        assert first["U"] <= last + 1 <= first["u"]
        async with http.get(f"{rest}/api/v3/depth", params={"symbol": "ETHUSDT", "limit": "1000"}) as r:
            later = await r.json()
        prev = last
        while prev < later["lastUpdateId"]:
            diff = pending.pop(0) if pending else await recv(ws)
            assert diff["U"] == prev + 1, "diff stream must chain without gaps"
            for price, size in diff["b"]:
                book.set("bid", price, size)
            for price, size in diff["a"]:
                book.set("ask", price, size)
            prev = diff["u"]
        assert prev == later["lastUpdateId"]
        assert book.top("bid") == [tuple(level) for level in later["bids"]]
        assert book.top("ask") == [tuple(level) for level in later["asks"]]


async def test_binance_combined_url_streams_and_property(sim: Simulator) -> None:
    url = sim.url("binance", "stream") + "?streams=solusdt@trade/solusdt@depth5@100ms"
    async with websockets.connect(url) as ws:
        message = await recv(ws)
        assert set(message) == {"stream", "data"}
        assert message["stream"] in ("solusdt@trade", "solusdt@depth5@100ms")
        await ws.send(json.dumps({"method": "GET_PROPERTY", "params": ["combined"], "id": 9}))
        assert await recv_until(ws, lambda m: m.get("id") == 9) == {"result": True, "id": 9}
        await ws.send(json.dumps({"method": "SET_PROPERTY", "params": ["combined", False], "id": 10}))
        await recv_until(ws, lambda m: m.get("id") == 10)
        partial = await recv_until(ws, lambda m: "lastUpdateId" in m)
        same_shape(partial, real("binance/doc_examples_server_frames.jsonl", 19))
        assert len(partial["bids"]) == 5


async def test_binance_server_pings_and_disconnects_without_pong(http: aiohttp.ClientSession) -> None:
    async with Simulator(config(exchanges=[Exchange.BINANCE], ping_interval=0.2, pong_timeout=0.6)) as simulator:
        url = simulator.url("binance")
        async with http.ws_connect(url, autoping=False) as ws:
            ping = await ws.receive(timeout=3)
            assert ping.type is aiohttp.WSMsgType.PING
            await ws.pong(ping.data)  # answered: the connection stays
            await asyncio.sleep(0.5)
            assert not ws.closed
            while True:  # now stop answering
                msg = await ws.receive(timeout=4)
                if msg.type is not aiohttp.WSMsgType.PING:
                    break
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1008
        server = simulator.server("binance")
        await eventually(lambda: server.stats()["closed"] == {"no pong": 1})


async def test_binance_limits_incoming_rate_and_streams() -> None:
    cfg = config(exchanges=[Exchange.BINANCE], binance_max_streams=3)
    async with Simulator(cfg) as sim, websockets.connect(sim.url("binance")) as ws:
        streams = [f"s{i}usdt@trade" for i in range(4)]
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
        assert (await recv(ws))["error"]["msg"] == "Invalid request: too many streams"
        for i in range(6):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


# -- Coinbase -----------------------------------------------------------------------------


async def test_coinbase_channels_and_connection_sequence(sim: Simulator) -> None:
    async with websockets.connect(sim.url("coinbase")) as ws:
        for channel in ("level2", "market_trades", "ticker", "candles"):
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": channel}))
        await ws.send(json.dumps({"type": "subscribe", "channel": "heartbeats"}))
        seen: dict[str, Any] = {}
        sequence: list[int] = []
        book = LocalBook()
        required = {
            "l2_data:snapshot",
            "l2_data:update",
            "subscriptions:",
            "heartbeats:",
            "market_trades:update",
            "ticker:snapshot",
            "candles:update",
        }
        async with asyncio.timeout(4):
            while not required <= set(seen):
                message = await recv(ws)
                sequence.append(message["sequence_num"])
                events = message["events"]
                seen.setdefault(f"{message['channel']}:{events[0].get('type', '')}", message)
                if message["channel"] == "l2_data":
                    for update in events[0]["updates"]:
                        book.set(update["side"].replace("offer", "ask"), update["price_level"], update["new_quantity"])
        assert sequence == list(range(len(sequence))), "sequence_num counts every message"
        same_shape(seen["l2_data:snapshot"], real("coinbase/advanced_trade_real_frames_2026-09.jsonl", 4))
        same_shape(seen["subscriptions:"], real("coinbase/advanced_trade_real_frames_2026-09.jsonl", 1))
        same_shape(seen["heartbeats:"], real("coinbase/advanced_trade_real_frames_2026-09.jsonl", 3))
        same_shape(seen["l2_data:update"], real("coinbase/advanced_trade_synthetic_schema_examples.jsonl", 2))
        same_shape(seen["market_trades:update"], real("coinbase/advanced_trade_synthetic_schema_examples.jsonl", 4))
        same_shape(seen["ticker:snapshot"], real("coinbase/advanced_trade_synthetic_schema_examples.jsonl", 5))
        same_shape(
            seen["candles:update"]["events"][0]["candles"][0],
            real("coinbase/advanced_trade_synthetic_schema_examples.jsonl", 3)["events"][0]["candles"][0],
        )
        bid, ask = book.top("bid", 1)[0], book.top("ask", 1)[0]
        assert float(bid[0]) < float(ask[0]), "the book built from l2_data is never crossed"
        assert seen["subscriptions:"]["events"][0]["subscriptions"]["level2"] == ["BTC-USD"]

        await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2"]}))
        error = await recv_until(ws, lambda m: m.get("type") == "error")
        assert "one channel per message" in error["message"]


async def test_coinbase_disconnects_without_subscribe() -> None:
    async with Simulator(config(exchanges=[Exchange.COINBASE], coinbase_subscribe_timeout=0.3)) as simulator:
        started = time.monotonic()
        async with websockets.connect(simulator.url("coinbase")) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 4)
        assert time.monotonic() - started < 3


# -- Kraken -------------------------------------------------------------------------------


async def test_kraken_book_checksums_acks_and_ping(sim: Simulator) -> None:
    async with websockets.connect(sim.url("kraken")) as ws:
        status = await recv(ws)
        same_shape(status, real("kraken/v2_book10_ETHBTC_2026-08-26.jsonl", 1))
        await ws.send(
            json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}})
        )
        ack = await recv(ws)
        same_shape(ack, real("kraken/v2_book10_ETHBTC_2026-08-26.jsonl", 2))
        assert ack["result"] == {"channel": "book", "depth": 10, "snapshot": True, "symbol": "BTC/USD"}
        book = LocalBook()
        checked = 0
        while checked < 40:
            text = await asyncio.wait_for(ws.recv(), 2)
            message = raw_tokens(str(text))
            if message.get("channel") != "book":
                continue
            data = message["data"][0]
            if message["type"] == "snapshot":
                same_shape(json.loads(str(text)), real("kraken/v2_book10_ETHBTC_2026-08-26.jsonl", 3))
            elif checked == 1:
                same_shape(json.loads(str(text)), real("kraken/v2_book10_ETHBTC_2026-08-26.jsonl", 4))
            for level in data["bids"]:
                book.set("bid", level["price"], level["qty"])
            for level in data["asks"]:
                book.set("ask", level["price"], level["qty"])
            book.truncate(10)
            assert all(len(level[1].split(".")[1]) == 8 for level in book.top("ask"))
            assert kraken_crc(book.top("bid"), book.top("ask")) == int(data["checksum"])
            checked += 1
        await ws.send(json.dumps({"method": "ping", "req_id": 101}))
        pong = await recv_until(ws, lambda m: m.get("method") == "pong")
        same_shape(pong, real("kraken/v2_doc_examples.jsonl", 3))
        await ws.send(
            json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 27}})
        )
        refused = await recv_until(ws, lambda m: m.get("success") is False)
        same_shape(refused, real("kraken/v2_doc_examples.jsonl", 5))
        assert refused["error"] == "Subscription depth not supported"
        heartbeat = await recv_until(ws, lambda m: m.get("channel") == "heartbeat", timeout=3)
        assert heartbeat == {"channel": "heartbeat"}


async def test_kraken_texts_stay_exact_while_remembered_texts_are_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Number and level texts are remembered per protocol and market; with bounds of a few entries
    (cleared all the time) two books still carry their own exact prices, sizes and checksums."""
    monkeypatch.setattr(protocols_base, "NUM_TEXTS_MAX", 7)
    monkeypatch.setattr(protocols_base, "LEVEL_TEXTS_MAX", 5)
    symbols = ("BTC/USD", "ETH/USD")
    async with (
        Simulator(config(exchanges=[Exchange.KRAKEN], rate=400.0)) as simulator,
        websockets.connect(simulator.url("kraken")) as ws,
    ):
        await ws.send(
            json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": list(symbols), "depth": 10}})
        )
        books = {symbol: LocalBook() for symbol in symbols}
        mids: dict[str, float] = {}
        checked = 0
        while checked < 300:
            message = raw_tokens(str(await asyncio.wait_for(ws.recv(), 2)))
            if message.get("channel") != "book":
                continue
            data = message["data"][0]
            book = books[data["symbol"]]
            for side, levels in (("bid", data["bids"]), ("ask", data["asks"])):
                for level in levels:
                    assert len(level["qty"].split(".")[1]) == 8
                    book.set(side, level["price"], level["qty"])
            book.truncate(10)
            assert kraken_crc(book.top("bid"), book.top("ask")) == int(data["checksum"])
            best_bid, best_ask = float(book.top("bid")[0][0]), float(book.top("ask")[0][0])
            mid = mids.setdefault(data["symbol"], (best_bid + best_ask) / 2)
            assert best_bid < best_ask
            assert all(abs(float(price) / mid - 1) < 0.05 for side in ("bid", "ask") for price, _ in book.top(side))
            checked += 1
        assert mids["BTC/USD"] > 10 * mids["ETH/USD"]  # each book kept its own levels


async def test_kraken_ticker_trade_and_ohlc(sim: Simulator) -> None:
    async with websockets.connect(sim.url("kraken")) as ws:
        await recv(ws)
        for req_id, params in enumerate(
            [
                {"channel": "ticker", "symbol": ["ETH/USD"]},
                {"channel": "trade", "symbol": ["ETH/USD"]},
                {"channel": "ohlc", "symbol": ["ETH/USD"], "interval": 1},
            ]
        ):
            await ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": req_id}))
        seen: dict[str, Any] = {}
        async with asyncio.timeout(4):
            while len(seen) < 3:
                message = await recv(ws)
                if message.get("type") == "update":
                    seen.setdefault(message["channel"], message)
        examples = {
            line["channel"]: line
            for line in map(
                json.loads, (FIXTURES / "kraken/v2_synthetic_schema_examples.jsonl").read_text().splitlines()
            )
        }
        same_shape(seen["ticker"]["data"][0], examples["ticker"]["data"][0])
        same_shape(seen["trade"], examples["trade"] | {"data": examples["trade"]["data"][:1]})
        assert set(examples["ohlc"]["data"][0]) <= set(seen["ohlc"]["data"][0])


# -- Bybit --------------------------------------------------------------------------------


async def test_bybit_orderbook_sequence_and_requests(sim: Simulator) -> None:
    async with websockets.connect(sim.url("bybit")) as ws:
        await ws.send(
            json.dumps(
                {
                    "req_id": "test",
                    "op": "subscribe",
                    "args": ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT", "tickers.BTCUSDT", "kline.1.BTCUSDT"],
                }
            )
        )
        ack = await recv(ws)
        same_shape(ack, real("bybit/v5_doc_examples.jsonl", 1))
        assert ack["success"] is True and ack["req_id"] == "test"
        snapshot = await recv(ws)
        same_shape(snapshot, real("bybit/v5_spot_orderbook50_BTCUSDT_2024-11-08.jsonl", 1))
        book = LocalBook()
        for price, size in snapshot["data"]["b"]:
            book.set("bid", price, size)
        for price, size in snapshot["data"]["a"]:
            book.set("ask", price, size)
        last_u = snapshot["data"]["u"]
        seen: dict[str, Any] = {}
        async with asyncio.timeout(4):
            while len(seen) < 4:
                message = await recv(ws)
                topic = message["topic"].split(".")[0]
                seen.setdefault(topic + ":" + message["type"], message)
                if topic == "orderbook":
                    assert message["data"]["u"] == last_u + 1, "u grows by one per message"
                    last_u = message["data"]["u"]
                    for price, size in message["data"]["b"]:
                        book.set("bid", price, size)
                    for price, size in message["data"]["a"]:
                        book.set("ask", price, size)
                    assert len(book.top("bid")) <= 50 and len(book.top("ask")) <= 50
        same_shape(seen["orderbook:delta"], real("bybit/v5_spot_orderbook50_BTCUSDT_2024-11-08.jsonl", 2))
        same_shape(seen["kline:snapshot"], real("bybit/v5_kline_real_misc.jsonl", 1))
        linear = real("bybit/v5_linear_orderbook50_trade_BTCUSDT_2026-03.jsonl", 4)["data"][0]
        assert list(seen["publicTrade:snapshot"]["data"][0]) == [k for k in linear if k != "L"]
        same_shape(seen["tickers:snapshot"]["data"], real("bybit/v5_doc_examples.jsonl", 7)["data"])

        # A second client's snapshot at the same u equals the book rebuilt from deltas.
        async with websockets.connect(sim.url("bybit")) as other:
            await other.send(json.dumps({"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}))
            await recv(other)
            fresh = await recv(other)
        while last_u < fresh["data"]["u"]:
            message = await recv_until(ws, lambda m: m["topic"].startswith("orderbook"))
            last_u = message["data"]["u"]
            for price, size in message["data"]["b"]:
                book.set("bid", price, size)
            for price, size in message["data"]["a"]:
                book.set("ask", price, size)
        assert book.top("bid") == [tuple(level) for level in fresh["data"]["b"]]
        assert book.top("ask") == [tuple(level) for level in fresh["data"]["a"]]

        await ws.send(json.dumps({"req_id": "100001", "op": "ping"}))
        pong = await recv_until(ws, lambda m: m.get("op") == "ping")
        same_shape(pong, real("bybit/v5_doc_examples.jsonl", 4))
        await ws.send(json.dumps({"op": "subscribe", "args": [f"publicTrade.X{i}USDT" for i in range(11)]}))
        error = await recv_until(ws, lambda m: m.get("op") == "subscribe")
        assert error["success"] is False and "args size" in error["ret_msg"]
        await ws.send(json.dumps({"op": "subscribe", "args": ["liquidations.BTCUSDT"]}))
        error = await recv_until(ws, lambda m: m.get("op") == "subscribe")
        assert list(error) == [k for k in real("bybit/v5_kline_real_misc.jsonl", 3) if k != "req_id"]
        assert error["ret_msg"] == "error:handler not found,topic:liquidations.BTCUSDT"
        await ws.send(json.dumps({"op": "subscribe", "args": ["tickers.BTCUSDT"]}))
        error = await recv_until(ws, lambda m: m.get("op") == "subscribe")
        assert error["ret_msg"] == "error:already subscribed,topic:tickers.BTCUSDT"


async def test_bybit_and_okx_idle_connections_are_closed() -> None:
    async with Simulator(
        config(exchanges=[Exchange.BYBIT, Exchange.OKX], bybit_idle_timeout=0.5, okx_idle_timeout=0.5)
    ) as simulator:
        async with (
            websockets.connect(simulator.url("bybit")) as idle,
            websockets.connect(simulator.url("bybit")) as alive,
            websockets.connect(simulator.url("okx")) as okx,
        ):

            async def keep_pinging() -> None:
                for _ in range(8):
                    await alive.send(json.dumps({"op": "ping"}))
                    await recv(alive)
                    await asyncio.sleep(0.2)

            await keep_pinging()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(idle.recv(), 1)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(okx.recv(), 1)
            assert alive.state is websockets.protocol.State.OPEN
        okx_server = simulator.server("okx")
        await eventually(lambda: okx_server.stats()["closed"] == {"no subscription in time": 1})


# -- OKX ----------------------------------------------------------------------------------


async def test_okx_books_chain_checksums_and_channels() -> None:
    async with Simulator(config(exchanges=[Exchange.OKX], okx_real_checksum=True)) as simulator:
        async with websockets.connect(simulator.url("okx")) as ws:
            args = [{"channel": c, "instId": "BTC-USDT"} for c in ("books", "trades", "tickers", "books5", "bbo-tbt")]
            await ws.send(json.dumps({"op": "subscribe", "args": args}))
            ack = await recv(ws)
            same_shape(ack, real("okx/v5_real_frames_trimmed_2026-09.jsonl", 1))
            book = LocalBook()
            seen: dict[str, Any] = {}
            last_seq = None
            updates = 0
            async with asyncio.timeout(5):
                while updates < 30 or len(seen) < 6:
                    message = await recv(ws)
                    if "event" in message:
                        continue
                    channel = message["arg"]["channel"]
                    seen.setdefault(f"{channel}:{message.get('action', '')}", message)
                    if channel != "books":
                        continue
                    data = message["data"][0]
                    if message["action"] == "snapshot":
                        assert data["prevSeqId"] == -1
                    else:
                        assert data["prevSeqId"] == last_seq, "prevSeqId chains to the last seqId"
                        updates += 1
                    last_seq = data["seqId"]
                    for price, size, _, _ in data["bids"]:
                        book.set("bid", price, size)
                    for price, size, _, _ in data["asks"]:
                        book.set("ask", price, size)
                    assert okx_crc(book.top("bid"), book.top("ask")) == data["checksum"]
            frames = "okx/v5_real_frames_trimmed_2026-09.jsonl"
            same_shape(seen["books:snapshot"], real(frames, 8))
            same_shape(seen["books:update"], real(frames, 9))
            same_shape(seen["tickers:"], real(frames, 3))
            same_shape(seen["trades:"], real(frames, 4))
            same_shape(seen["books5:"], real(frames, 5))
            assert len(seen["bbo-tbt:"]["data"][0]["asks"]) == 1
            await ws.send("ping")
            assert await recv_until(ws, lambda m: m == "pong") == "pong"
            await ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}]}))
            error = await recv_until(ws, lambda m: m.get("event") == "error")
            expected = real(frames, 2)
            assert error | {"connId": "x"} == expected | {"connId": "x"}
        async with websockets.connect(simulator.url("okx", "business")) as business:
            await business.send(
                json.dumps({"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}]})
            )
            assert (await recv(business))["event"] == "subscribe"
            candle = await recv(business, timeout=3)
            same_shape(candle, real("okx/v5_doc_examples.jsonl", 3))


async def test_okx_deprecated_checksum_is_zero(sim: Simulator) -> None:
    async with websockets.connect(sim.url("okx")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "ETH-USDT"}]}))
        await recv(ws)
        for _ in range(5):
            assert (await recv(ws))["data"][0]["checksum"] == 0


# -- faults -------------------------------------------------------------------------------


async def test_fault_drop_then_reconnect_without_duplicate_subscriptions(sim: Simulator) -> None:
    server = sim.server("binance")
    request = json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
    async with websockets.connect(sim.url("binance")) as ws:
        await ws.send(request)
        await recv(ws)
        server.drop_connections()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
        assert closed.value.rcvd is None, "an abort sends no close frame"
    async with websockets.connect(sim.url("binance")) as ws:
        await ws.send(request)
        await recv(ws)
        await eventually(lambda: server.stats()["closed"] == {"dropped by fault injection": 1})
        stats = server.stats()
        assert stats["connections_accepted"] == 2
        [open_conn] = stats["connections"]
        assert open_conn["subscriptions"] == ["btcusdt@trade"]
        assert open_conn["subscribe_messages"] == 1
        server.drop_connections(DropMode.CLOSE)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_fault_stall_silences_data_and_pings_until_cleared(sim: Simulator) -> None:
    async with websockets.connect(sim.url("kraken")) as ws:
        await recv(ws)
        await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}}))
        await recv_until(ws, lambda m: m.get("type") == "update")
        sim.server("kraken").stall()
        await collect(ws, 0.1)  # frames already in flight
        await ws.send(json.dumps({"method": "ping", "req_id": 5}))
        waiter = asyncio.ensure_future(await ws.ping())
        assert await collect(ws, 0.6) == [], "a stalled server sends nothing"
        assert not waiter.done(), "and answers no ping"
        assert ws.state is websockets.protocol.State.OPEN
        sim.server("kraken").clear_faults()
        await recv_until(ws, lambda m: m.get("type") == "update")


async def test_fault_refuse_new_connections(sim: Simulator, http: aiohttp.ClientSession) -> None:
    control = sim.urls()["okx"]["control"]
    async with http.post(f"{control}/faults", json={"fault": "refuse", "seconds": 0.5}) as r:
        assert r.status == 200
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(sim.url("okx")):
            pass
    assert refused.value.response.status_code == 503
    await asyncio.sleep(0.6)
    async with websockets.connect(sim.url("okx")) as ws:
        await ws.send("ping")
        assert await recv(ws) == "pong"


async def test_fault_gap_breaks_each_sequence(sim: Simulator) -> None:
    async with (
        websockets.connect(sim.url("binance") + "/adausdt@depth@100ms") as binance,
        websockets.connect(sim.url("bybit")) as bybit,
        websockets.connect(sim.url("okx")) as okx,
        websockets.connect(sim.url("coinbase")) as coinbase,
    ):
        await bybit.send(json.dumps({"op": "subscribe", "args": ["orderbook.50.ADAUSDT"]}))
        await okx.send(json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "ADA-USDT"}]}))
        await coinbase.send(json.dumps({"type": "subscribe", "product_ids": ["ADA-USD"], "channel": "level2"}))
        first = [
            await recv(binance),
            (await recv(bybit), await recv(bybit))[1],
            (await recv(okx), await recv(okx))[1],
            await recv(coinbase),
        ]
        for name, symbol in (
            ("binance", "ADAUSDT"),
            ("bybit", "ADAUSDT"),
            ("okx", "ADA-USDT"),
            ("coinbase", "ADA-USD"),
        ):
            sim.server(name).gap(symbol)
        gaps = 0
        prev = first[0]["u"]
        async with asyncio.timeout(3):
            while gaps == 0:
                diff = await recv(binance)
                gaps += diff["U"] != prev + 1
                prev = diff["u"]
            prev = first[1]["data"]["u"]
            while gaps == 1:
                delta = await recv(bybit)
                gaps += delta["data"]["u"] != prev + 1
                prev = delta["data"]["u"]
            prev = first[2]["data"][0]["seqId"]
            while gaps == 2:
                update = await recv(okx)
                gaps += update["data"][0]["prevSeqId"] != prev
                prev = update["data"][0]["seqId"]
            prev = first[3]["sequence_num"]
            while gaps == 3:
                message = await recv(coinbase)
                gaps += message["sequence_num"] != prev + 1
                prev = message["sequence_num"]
        assert sim.server("okx").stats()["faults_injected"] == {"gap": 1}


async def test_fault_corrupt_checksum_and_malformed_frame(sim: Simulator) -> None:
    async with websockets.connect(sim.url("kraken")) as ws:
        await recv(ws)
        await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": ["XRP/USD"]}}))
        book = LocalBook()
        results: list[bool] = []
        corrupted = False
        async with asyncio.timeout(3):
            while len(results) < 12:
                message = raw_tokens(str(await ws.recv()))
                if message.get("channel") != "book":
                    continue
                data = message["data"][0]
                for level in data["bids"]:
                    book.set("bid", level["price"], level["qty"])
                for level in data["asks"]:
                    book.set("ask", level["price"], level["qty"])
                book.truncate(10)
                results.append(kraken_crc(book.top("bid"), book.top("ask")) == int(data["checksum"]))
                if len(results) == 4 and not corrupted:
                    sim.server("kraken").corrupt_checksum("XRP/USD")
                    corrupted = True
        assert results.count(False) == 1 and results[:4] == [True] * 4, results
        sim.server("kraken").send_malformed()
        async with asyncio.timeout(2):
            while True:
                text = str(await ws.recv())
                try:
                    json.loads(text)
                except json.JSONDecodeError:
                    break


async def test_control_api_stats_and_bad_faults(sim: Simulator, http: aiohttp.ClientSession) -> None:
    control = sim.urls()["binance"]["control"]
    async with http.post(f"{control}/faults", json={"fault": "corrupt_checksum", "symbol": "BTCUSDT"}) as r:
        assert r.status == 400 and "no checksum" in (await r.json())["error"]
    async with http.post(f"{control}/faults", json={"fault": "explode"}) as r:
        assert r.status == 400
    async with http.post(f"{control}/faults", json={"fault": "stall", "connection": "nope"}) as r:
        assert r.status == 400
    async with websockets.connect(sim.url("binance")) as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"], "id": 1}))
        await recv(ws)
        async with http.get(f"{control}/stats") as r:
            stats = await r.json()
        assert stats["connections_open"] == 1
        assert stats["connections"][0]["subscriptions"] == ["btcusdt@trade", "ethusdt@trade"]
        assert stats["markets"]["BTCUSDT"]["active"] is True
        async with http.post(
            f"{control}/faults", json={"fault": "stall", "seconds": 0.2, "connection": stats["connections"][0]["id"]}
        ) as r:
            assert (await r.json()) == {"ok": True, "fault": "stall", "connections": 1}
        async with http.delete(f"{control}/faults") as r:
            assert r.status == 200


# -- modes, rate, CLI ---------------------------------------------------------------------


async def test_synthetic_rate_is_roughly_honoured() -> None:
    async with Simulator(config(exchanges=[Exchange.BINANCE], rate=300)) as simulator:
        url = simulator.url("binance") + "/btcusdt@depth@100ms/ethusdt@depth@100ms"
        async with websockets.connect(url) as ws:
            await collect(ws, 0.2)
            frames = await collect(ws, 1.0)
        per_symbol = len(frames) / 2
        assert 150 <= per_symbol <= 600, per_symbol


async def test_replay_serves_recorded_book_and_loops_consistently(http: aiohttp.ClientSession) -> None:
    async with Simulator(config(mode=Mode.REPLAY, speed=25.0)) as simulator:
        rest = simulator.url("binance", "rest")
        async with http.get(f"{rest}/api/v3/depth", params={"symbol": "NKNUSDT", "limit": "5000"}) as r:
            snapshot = await r.json()
        recorded = json.loads((FIXTURES / "binance/rest_depth_snapshot_NKNUSDT_2021-10-12.json").read_text())
        assert snapshot["bids"] == recorded["bids"] and snapshot["asks"] == recorded["asks"]
        diffs = [
            json.loads(line)["data"]
            for line in (FIXTURES / "binance/depth_diff_NKNUSDT_2021-10-12.jsonl").read_text().splitlines()
        ]
        async with websockets.connect(simulator.url("binance") + "/nknusdt@depth@100ms") as ws:
            first = await recv(ws)
            assert first["b"] == diffs[1]["b"] and first["a"] == diffs[1]["a"], "recorded values"
            prev = first["u"]
            source = simulator.server("binance").source(simulator.server("binance").markets["NKNUSDT"])
            async with asyncio.timeout(4):
                while getattr(source, "loops", 0) < 1 or prev < snapshot["lastUpdateId"] + 200:
                    diff = await recv(ws)
                    assert diff["U"] == prev + 1, "ids stay contiguous across the loop"
                    prev = diff["u"]
        # Kraken's recording keeps verifying checksums through its loop.
        async with websockets.connect(simulator.url("kraken")) as ws:
            await recv(ws)
            await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}}))
            assert (await recv(ws))["success"] is True
            book = LocalBook()
            kraken = simulator.server("kraken")
            async with asyncio.timeout(4):
                while getattr(kraken.source(kraken.markets["BTC/USD"]), "loops", 0) < 1:
                    message = raw_tokens(str(await ws.recv()))
                    if message.get("channel") != "book":
                        continue
                    data = message["data"][0]
                    for level in data["bids"]:
                        book.set("bid", level["price"], level["qty"])
                    for level in data["asks"]:
                        book.set("ask", level["price"], level["qty"])
                    book.truncate(10)
                    assert kraken_crc(book.top("bid"), book.top("ask")) == int(data["checksum"])
        # Symbols without a recording are synthetic.
        async with websockets.connect(simulator.url("okx")) as ws:
            await ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "trades", "instId": "DOGE-USDT"}]}))
            await recv(ws)
            assert (await recv(ws, timeout=3))["arg"]["instId"] == "DOGE-USDT"


async def test_cli_prints_urls_and_stops_on_sigterm() -> None:
    env = {**os.environ, "SIM_RATE": "50"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collectors.simulator",
        "--exchange",
        "binance,okx",
        "--port",
        "0",
        "--mode",
        "synthetic",
        "--speed",
        "1.0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        urls = json.loads(line)["simulator"]
        assert set(urls) == {"binance", "okx"}
        async with websockets.connect(urls["okx"]["ws"]) as ws:
            await ws.send("ping")
            assert await recv(ws) == "pong"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        logs = [json.loads(line) for line in (await process.stderr.read()).decode().splitlines()]
        listening = [e for e in logs if e["msg"] == "exchange simulator listening"]
        assert {e["exchange"]: e["url"] for e in listening} == {
            "binance": urls["binance"]["ws"],
            "okx": urls["okx"]["ws"],
        }
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_rejects_bad_settings() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collectors.simulator",
        "--rate",
        "-1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 2 and b"rate must be positive" in err


def test_settings_from_env_and_flags() -> None:
    cfg = load(
        SimulatorConfig,
        ["--exchange", "kraken,okx", "--mode", "replay"],
        env={"SIM_RATE": "250", "SIM_OKX_REAL_CHECKSUM": "true"},
    )
    assert cfg.exchanges == [Exchange.KRAKEN, Exchange.OKX]
    assert cfg.mode is Mode.REPLAY and cfg.rate == 250.0 and cfg.okx_real_checksum is True
    assert cfg.host == "127.0.0.1"


async def test_rewrite_maps_live_urls(sim: Simulator) -> None:
    port = sim.server("binance").port
    assert (
        sim.rewrite("wss://stream.binance.com:9443/stream?streams=btcusdt@trade")
        == f"ws://127.0.0.1:{port}/stream?streams=btcusdt@trade"
    )
    assert sim.rewrite_all(
        {"ws": "wss://ws.okx.com:8443/ws/v5/public", "business": "wss://ws.okx.com:8443/ws/v5/business"}
    ) == {"ws": sim.url("okx"), "business": sim.url("okx", "business")}
    assert sim.rewrite("https://api.binance.com") == sim.url("binance", "rest")
    assert sim.rewrite("wss://advanced-trade-ws.coinbase.com") == sim.url("coinbase")
    with pytest.raises(ValueError, match="no simulated exchange"):
        sim.rewrite("wss://example.com/ws")


def test_checksum_helpers_here_match_published_vectors() -> None:
    vectors = {v["id"]: v for v in json.loads((FIXTURES / "checksums.json").read_text())["vectors"]}
    kraken = vectors["kraken_v2_doc_example"]
    bids = [tuple(level[:2]) for level in kraken["input"]["bids"]]
    asks = [tuple(level[:2]) for level in kraken["input"]["asks"]]
    assert kraken_crc(bids, asks) == int(kraken["expected"])
    okx = vectors["okx_doc_string_3366.1"]
    assert okx_crc([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == int(okx["computed_signed"])


@pytest.mark.parametrize("seed", [1, 2])
def test_depth_views_rebuild_the_servers_top_levels(seed: int) -> None:
    """Applying what a depth-N feed sends always gives the server's top N: with Kraken's
    client-side truncation and with Bybit/OKX's explicit removals alike."""
    instrument, price = make_instrument("BTC/USD", "BTC", "USD")
    market = Market(
        instrument, first_update_id=1, first_trade_id=1, first_seq=1, now_ms=0, reference_price=round(price * 10)
    )
    source = SyntheticSource(market, random.Random(seed), start_price=price, levels=30, rate=1000)
    market.apply(source.initial_book(), 0)
    market.view_depths.update({1, 5, 10, 25})
    clients = {
        (depth, explicit): {side: dict(market.book[side].top(depth)) for side in Side}
        for depth in market.view_depths
        for explicit in (True, False)
    }
    source.resume(0.0)
    updates = 0
    for step in range(1, 400):
        for event in source.step(step * 0.01):
            if isinstance(event, TradeEvent):
                market.record_trade(event.price, event.size, event.taker, 0)
                continue
            update = market.apply(event.changes, 0)
            if update is None:
                continue
            updates += 1
            best_bid, best_ask = market.book.bids.best(), market.book.asks.best()
            assert best_bid is not None and best_ask is not None and best_bid < best_ask
            for (depth, explicit), client in clients.items():
                for side in Side:
                    for level_price, size in update.view(side, depth, report_pushed_out=explicit):
                        if size:
                            client[side][level_price] = size
                        else:
                            client[side].pop(level_price, None)
                    top = sorted(client[side].items(), key=lambda lv: market.book[side].key(lv[0]))
                    if explicit:
                        assert len(top) <= depth
                    else:
                        client[side] = dict(top[:depth])
                    assert top[:depth] == market.book[side].top(depth)
    assert updates > 3000


async def test_binance_exchange_info(sim: Simulator, http: aiohttp.ClientSession) -> None:
    rest = sim.url("binance", "rest")
    async with http.get(f"{rest}/api/v3/exchangeInfo", params={"symbol": "ETHBTC"}) as r:
        info = await r.json()
    [symbol] = info["symbols"]
    assert (symbol["baseAsset"], symbol["quoteAsset"]) == ("ETH", "BTC")
    async with http.get(f"{rest}/api/v3/depth", params={"symbol": "btcusdt"}) as r:
        assert r.status == 400 and (await r.json())["code"] == -1121
