"""OKX v5: recorded frames through the adapter, checked field by field."""

from __future__ import annotations

import json
from decimal import Decimal

from collectors.book import SyncReason
from collectors.exchanges import Okx
from collectors.feed.adapter import Op
from shared.events import Book, Candle, Side, Ticker, Trade
from shared.topics import Exchange, Timeframe, Topic
from tests.collector_support import RECV_TS, frames, play, replay_adapter

TRIMMED = "okx/v5_real_frames_trimmed_2026-09.jsonl"


def model(messages: list[dict], depth: int) -> tuple[list, list]:
    sides: dict[str, dict[Decimal, tuple[str, str]]] = {"bids": {}, "asks": {}}
    for msg in messages:
        data = msg["data"][0]
        if msg["action"] == "snapshot":
            sides = {"bids": {}, "asks": {}}
        for key in sides:
            for price, size, *_ in data[key]:
                if Decimal(size) == 0:
                    sides[key].pop(Decimal(price), None)
                else:
                    sides[key][Decimal(price)] = (price, size)
    bids = [sides["bids"][k] for k in sorted(sides["bids"], reverse=True)][:depth]
    asks = [sides["asks"][k] for k in sorted(sides["asks"])][:depth]
    return bids, asks


def test_2022_books_verify_every_checksum() -> None:
    adapter, recorder, link = replay_adapter(Okx, ["okx:book:BTC/USDT"])
    texts = frames("okx/v5_books_BTC-USDT_2022-05-13.jsonl")
    play(adapter, link, texts)
    assert recorder.resyncs == []  # a snapshot and 97 updates, each checksum verified on the maintained book
    messages = [json.loads(text) for text in texts[1:]]  # after the subscribe ack
    assert len(recorder.books) == len(messages)
    last = messages[-1]
    assert (recorder.books[-1].bids, recorder.books[-1].asks) == model(messages, 20)
    assert recorder.books[-1].ts == int(last["data"][0]["ts"])


def test_seqid_chain_with_deprecated_zero_checksum() -> None:
    adapter, recorder, link = replay_adapter(Okx, ["okx:book:SOL/USDT"])
    play(adapter, link, frames(TRIMMED)[7:9])
    assert recorder.resyncs == []
    assert recorder.books[-1] == Book(
        exchange=Exchange.OKX, symbol="SOL/USDT", ts=1790394877300, recv_ts=RECV_TS,
        bids=[("120.65", "46.716665")], asks=[("120.67", "60.475897"), ("120.68", "83.806786")],
    )  # fmt: skip


def test_a_broken_seqid_chain_or_checksum_resyncs() -> None:
    adapter, recorder, link = replay_adapter(Okx, ["okx:book:SOL/USDT", "okx:book:BTC/USDT"])
    stream = adapter.stream_for(Topic.parse("okx:book:SOL/USDT"))
    snapshot, update = frames(TRIMMED)[7:9]
    play(adapter, link, [snapshot, update.replace('"prevSeqId":32032594283', '"prevSeqId":32032594282')])
    assert recorder.resyncs == [(stream, SyncReason.GAP)]
    play(adapter, link, [snapshot, update.replace('"checksum":0', '"checksum":12345')])
    assert recorder.resyncs[-1] == (stream, SyncReason.CHECKSUM)
    play(adapter, link, [snapshot])
    assert recorder.books[-1].resync is True


def test_ticker_trade_and_candle_fields() -> None:
    topics = ["okx:ticker:BTC/USDT", "okx:trades:BTC/USDT", "okx:candles.1d:BTC/USDT"]
    adapter, recorder, link = replay_adapter(Okx, topics)
    # The documented push is for candle1D (Hong Kong days); we subscribe candle1Dutc, same format.
    candle = frames("okx/v5_doc_examples.jsonl")[2].replace('"candle1D"', '"candle1Dutc"')
    play(adapter, link, [*frames(TRIMMED), candle])
    assert recorder.tickers == [
        Ticker(
            exchange=Exchange.OKX, symbol="BTC/USDT", ts=1790358564077, recv_ts=RECV_TS,
            bid="83774.1", bid_size="0.65302934", ask="83774.2", ask_size="0.25697131", last="83766.8",
            open_24h="84180.1", high_24h="85258.8", low_24h="83174.7", volume_24h="5449.95415651",
        )
    ]  # fmt: skip
    assert recorder.trades == [
        Trade(
            exchange=Exchange.OKX, symbol="BTC/USDT", ts=1790358565298, recv_ts=RECV_TS,
            trade_id="1062992715", price="83772.6", size="0.0000178", side=Side.BUY,
        )
    ]  # fmt: skip
    assert recorder.candles == [
        Candle(
            exchange=Exchange.OKX, symbol="BTC/USDT", ts=int(RECV_TS), recv_ts=RECV_TS, timeframe=Timeframe.D1,
            open_time=1597026383085, open="8533.02", high="8553.74", low="8527.17", close="8548.26",
            volume="45247", closed=False,
        )
    ]  # fmt: skip
    assert adapter.rejections == 1  # 60018: candles asked of /public


def test_pong_and_notice() -> None:
    adapter, recorder, link = replay_adapter(Okx, ["okx:trades:BTC/USDT"])
    play(adapter, link, (frames("okx/heartbeat_text_frames.txt")[1],))
    assert recorder.events == [] and not link.retired
    notice = '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade."}'
    play(adapter, link, [notice])
    assert link.retired


def test_candles_go_to_the_business_endpoint() -> None:
    adapter, _, _ = replay_adapter(Okx, [])
    candle = adapter.want(Topic.parse("okx:candles.1m:BTC/USDT"))
    book = adapter.want(Topic.parse("okx:book:BTC/USDT"))
    assert (candle.endpoint, candle.channel, book.endpoint) == ("business", "candle1m", "ws")
    [request] = [json.loads(text) for text in adapter.requests(Op.SUBSCRIBE, [candle])]
    documented = json.loads(frames("okx/v5_client_requests_doc.jsonl")[3])
    assert request.keys() == documented.keys()
    assert request["args"] == [{"channel": "candle1m", "instId": "BTC-USDT"}]
    assert adapter.ping_message() == "ping"
