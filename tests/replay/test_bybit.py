"""Bybit v5 spot: recorded frames through the adapter, checked field by field."""

from __future__ import annotations

import json
from decimal import Decimal

from collectors.book import SyncReason
from collectors.exchanges import Bybit
from collectors.feed.adapter import Op
from shared.events import Book, Candle, Side, Ticker, Trade
from shared.topics import Exchange, Timeframe, Topic
from tests.collector_support import RECV_TS, frames, play, replay_adapter

BOOK50 = "bybit/v5_spot_orderbook50_BTCUSDT_2024-11-08.jsonl"
BOOK200 = "bybit/v5_spot_orderbook200_BTCUSDT_2023-12-24.jsonl"


def model(messages: list[dict], depth: int) -> tuple[list, list]:
    """Independent expectation: apply snapshot then deltas to plain dicts."""
    sides: dict[str, dict[Decimal, tuple[str, str]]] = {"b": {}, "a": {}}
    for msg in messages:
        if msg["type"] == "snapshot":
            sides = {"b": {}, "a": {}}
        for key in ("b", "a"):
            for price, size in msg["data"][key]:
                if Decimal(size) == 0:
                    sides[key].pop(Decimal(price), None)
                else:
                    sides[key][Decimal(price)] = (price, size)
    bids = [sides["b"][k] for k in sorted(sides["b"], reverse=True)][:depth]
    asks = [sides["a"][k] for k in sorted(sides["a"])][:depth]
    return bids, asks


def test_snapshot_then_delta() -> None:
    adapter, recorder, link = replay_adapter(Bybit, ["bybit:book:BTC/USDT"])
    texts = frames(BOOK50)
    play(adapter, link, texts)
    assert recorder.resyncs == []
    first, second = recorder.books
    messages = [json.loads(text) for text in texts]
    bids, asks = model(messages, 20)
    assert second == Book(
        exchange=Exchange.BYBIT, symbol="BTC/USDT", ts=1731035685345, recv_ts=RECV_TS, bids=bids, asks=asks
    )
    assert first.ts == 1731035685326 and first.bids[0] == ("75848.74", "0.067669")
    assert ("75848.62", "0.014895") in second.bids


def test_deeper_view_subscribes_the_deeper_book() -> None:
    adapter, recorder, link = replay_adapter(Bybit, ["bybit:book:BTC/USDT"], book_depth=100)
    assert adapter.stream_for(Topic.parse("bybit:book:BTC/USDT")).channel == "orderbook.200"
    texts = frames(BOOK200)
    play(adapter, link, texts)
    assert recorder.resyncs == []
    assert (recorder.books[-1].bids, recorder.books[-1].asks) == model([json.loads(t) for t in texts[1:]], 100)


def test_a_gap_in_u_resyncs_and_u_1_is_a_fresh_snapshot() -> None:
    adapter, recorder, link = replay_adapter(Bybit, ["bybit:book:BTC/USDT"])
    snapshot, delta = frames(BOOK50)
    play(adapter, link, [snapshot, delta.replace('"u":2876701', '"u":2876702')])
    assert recorder.resyncs == [(adapter.stream_for(Topic.parse("bybit:book:BTC/USDT")), SyncReason.GAP)]
    shown = len(recorder.books)
    play(adapter, link, [delta])  # deltas in flight are dropped until a snapshot
    assert len(recorder.books) == shown
    restart = json.loads(delta)
    restart["data"]["u"] = 1  # after a service restart Bybit's u=1 message replaces the book
    play(adapter, link, [json.dumps(restart)])
    view = recorder.books[-1]
    assert view.resync is True
    assert view.bids == [("75848.62", "0.014895")]


def test_trades_fields() -> None:
    adapter, recorder, link = replay_adapter(Bybit, ["bybit:trades:BTC/USDT"])
    play(adapter, link, frames("bybit/v5_spot_publicTrade_BTCUSDT_2023-12-24.jsonl"))
    assert recorder.trades == [
        Trade(
            exchange=Exchange.BYBIT, symbol="BTC/USDT", ts=1703430744102, recv_ts=RECV_TS,
            trade_id="2290000000090712222", price="43774", size="0.0026", side=Side.SELL,
        ),
        Trade(
            exchange=Exchange.BYBIT, symbol="BTC/USDT", ts=1703430745370, recv_ts=RECV_TS,
            trade_id="2290000000090712223", price="43774.01", size="0.009516", side=Side.BUY,
        ),
    ]  # fmt: skip


def test_ticker_and_kline_fields() -> None:
    topics = ["bybit:ticker:BTC/USDT", "bybit:candles.5m:BTC/USDT", "bybit:candles.1m:BTC/USDT"]
    adapter, recorder, link = replay_adapter(Bybit, topics)
    play(adapter, link, frames("bybit/v5_doc_examples.jsonl") + frames("bybit/v5_kline_real_misc.jsonl")[:1])
    assert recorder.tickers == [
        Ticker(
            exchange=Exchange.BYBIT, symbol="BTC/USDT", ts=1673853746003, recv_ts=RECV_TS,
            last="21109.77", open_24h="20704.93", high_24h="21426.99", low_24h="20575", volume_24h="6780.866843",
        )
    ]  # fmt: skip
    assert recorder.candles == [
        Candle(
            exchange=Exchange.BYBIT, symbol="BTC/USDT", ts=1672324988882, recv_ts=RECV_TS, timeframe=Timeframe.M5,
            open_time=1672324800000, open="16649.5", high="16677", low="16608", close="16677", volume="2.081",
        ),
        Candle(
            exchange=Exchange.BYBIT, symbol="BTC/USDT", ts=1719667601380, recv_ts=RECV_TS, timeframe=Timeframe.M1,
            open_time=1719667560000, open="61030", high="61030", low="61015", close="61029.9", volume="10.798",
        ),
    ]  # fmt: skip


def test_acks_pongs_and_refusals() -> None:
    adapter, recorder, link = replay_adapter(Bybit, ["bybit:trades:BTC/USDT"])
    play(adapter, link, frames("bybit/v5_doc_examples.jsonl")[:5])
    assert (recorder.events, adapter.rejections) == ([], 0)
    play(adapter, link, frames("bybit/v5_kline_real_misc.jsonl")[2:])
    assert adapter.rejections == 1


def test_requests_respect_the_spot_limit_of_ten_args() -> None:
    adapter, _, _ = replay_adapter(Bybit, [])
    symbols = [f"C{i}/USDT" for i in range(12)]
    streams = [adapter.want(Topic.parse(f"bybit:trades:{symbol}")) for symbol in symbols]
    requests = [json.loads(text) for text in adapter.requests(Op.SUBSCRIBE, streams)]
    assert [len(request["args"]) for request in requests] == [10, 2]
    documented = json.loads(frames("bybit/v5_client_requests_doc.jsonl")[0])
    assert requests[0].keys() == documented.keys() and requests[0]["op"] == "subscribe"
    assert json.loads(adapter.ping_message())["op"] == "ping"
