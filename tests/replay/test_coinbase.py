"""Coinbase Advanced Trade: recorded frames through the adapter, checked field by field."""

from __future__ import annotations

import json

from collectors.book import SyncReason
from collectors.exchanges import Coinbase
from collectors.feed.adapter import Op, iso_ms
from shared.events import Book, Candle, Side, Ticker, Trade
from shared.topics import Exchange, Timeframe, Topic
from tests.collector_support import RECV_TS, frames, play, replay_adapter

SCHEMA = "coinbase/advanced_trade_synthetic_schema_examples.jsonl"
REAL = "coinbase/advanced_trade_real_frames_2026-09.jsonl"


def test_level2_snapshot_then_update() -> None:
    adapter, recorder, link = replay_adapter(Coinbase, ["coinbase:book:BTC/USD"])
    play(adapter, link, frames(SCHEMA)[:2])
    assert recorder.resyncs == []
    snapshot, update = recorder.books
    assert snapshot.bids == [("68900.00", "1.50000000"), ("68899.50", "0.75000000"), ("68899.00", "2.30000000")]
    assert update == Book(
        exchange=Exchange.COINBASE, symbol="BTC/USD", ts=iso_ms("2026-04-07T14:30:01.456789Z"), recv_ts=RECV_TS,
        bids=[("68900.00", "2.00000000"), ("68899.50", "0.75000000"), ("68899.00", "2.30000000")],
        asks=[("68901.50", "1.20000000"), ("68902.00", "0.80000000")],
    )  # fmt: skip


def test_real_session_frames_need_nothing_and_an_error_is_counted() -> None:
    adapter, recorder, link = replay_adapter(Coinbase, ["coinbase:book:BTC/USD"])
    play(adapter, link, frames(REAL)[:3])  # subscriptions (1, 2) and a heartbeat (3)
    assert (recorder.events, recorder.resyncs, adapter.rejections) == ([], [], 0)
    play(adapter, link, frames(REAL)[4:])
    assert adapter.rejections == 1


def test_a_sequence_gap_resyncs_every_book_of_that_connection() -> None:
    topics = ["coinbase:book:BTC/USD", "coinbase:book:ETH/USD", "coinbase:trades:BTC/USD"]
    adapter, recorder, link = replay_adapter(Coinbase, topics)
    play(adapter, link, frames(REAL)[:3])
    play(adapter, link, [frames(REAL)[2].replace('"sequence_num":3', '"sequence_num":5')])
    books = {adapter.stream_for(Topic.parse(topic)) for topic in topics[:2]}
    assert {stream for stream, _ in recorder.resyncs} == books
    assert {reason for _, reason in recorder.resyncs} == {SyncReason.GAP}


def test_trades_are_reported_on_the_taker_side_and_history_is_skipped() -> None:
    adapter, recorder, link = replay_adapter(Coinbase, ["coinbase:trades:BTC/USD"])
    trades = frames(SCHEMA)[3]
    play(adapter, link, [trades])
    assert recorder.trades == [
        Trade(
            exchange=Exchange.COINBASE, symbol="BTC/USD", ts=iso_ms("2026-04-07T14:30:02.789012Z"), recv_ts=RECV_TS,
            trade_id="995098700", price="68900.50", size="0.00150000", side=Side.SELL,
        ),
        Trade(
            exchange=Exchange.COINBASE, symbol="BTC/USD", ts=iso_ms("2026-04-07T14:30:02.800000Z"), recv_ts=RECV_TS,
            trade_id="995098701", price="68900.00", size="0.05000000", side=Side.BUY,
        ),
    ]  # fmt: skip
    play(adapter, link, [trades.replace('"type":"update"', '"type":"snapshot"')])
    assert len(recorder.trades) == 2


def test_ticker_and_candle_fields() -> None:
    topics = ["coinbase:ticker:BTC/USD", "coinbase:candles.5m:BTC/USD"]
    adapter, recorder, link = replay_adapter(Coinbase, topics)
    play(adapter, link, frames(SCHEMA))
    assert recorder.tickers == [
        Ticker(
            exchange=Exchange.COINBASE, symbol="BTC/USD", ts=iso_ms("2026-04-07T14:30:03.000000Z"), recv_ts=RECV_TS,
            bid="68900.00", bid_size="1.50000000", ask="68901.00", ask_size="0.50000000", last="68900.50",
            high_24h="69200.00", low_24h="67500.00", volume_24h="15328.12345678",
        )
    ]  # fmt: skip
    assert recorder.candles == [
        Candle(
            exchange=Exchange.COINBASE, symbol="BTC/USD", ts=iso_ms("2026-04-07T14:30:05.000000Z"), recv_ts=RECV_TS,
            timeframe=Timeframe.M5, open_time=1775521800000, open="68900.00", high="68950.00", low="68850.00",
            close="68920.50", volume="42.15000000",
        )
    ]  # fmt: skip


def test_one_channel_per_request_and_heartbeats_first() -> None:
    adapter, _, _ = replay_adapter(Coinbase, [])
    documented = [json.loads(line) for line in frames("coinbase/advanced_trade_client_requests_doc.jsonl")]
    streams = [adapter.want(Topic.parse(f"coinbase:{channel}:{symbol}"))
               for channel in ("book", "trades") for symbol in ("BTC/USD", "ETH/USD")]  # fmt: skip
    requests = [json.loads(text) for text in adapter.requests(Op.SUBSCRIBE, streams)]
    assert {request["channel"]: request["product_ids"] for request in requests} == {
        "level2": ["BTC-USD", "ETH-USD"],
        "market_trades": ["BTC-USD", "ETH-USD"],
    }
    assert requests[0].keys() == documented[0].keys()
    assert [json.loads(text) for text in adapter.open_messages()] == [documented[1]]
    # 1m candles are built from trades: the trades stream serves them.
    assert adapter.stream_for(Topic.parse("coinbase:candles.1m:BTC/USD")) == streams[2]


def test_usdc_products_answered_under_usd_ids_reach_their_usdc_topics() -> None:
    """Coinbase serves BTC-USDC's book and trades under BTC-USD: both subscribed symbols get them."""
    topics = ["coinbase:book:BTC/USDC", "coinbase:trades:BTC/USDC", "coinbase:trades:BTC/USD"]
    adapter, recorder, link = replay_adapter(Coinbase, topics)
    assert adapter.stream_for(Topic.parse(topics[0])).market == "BTC-USDC"  # subscribed under its own id
    play(adapter, link, frames(SCHEMA)[:2])  # l2 snapshot and update of BTC-USD
    assert recorder.resyncs == []
    assert {book.symbol for book in recorder.books} == {"BTC/USDC"}
    play(adapter, link, [frames(SCHEMA)[3]])  # trades of BTC-USD (its sequence number skips: a book resync)
    assert recorder.books[-1].bids[0] == ("68900.00", "2.00000000")
    by_symbol = {
        symbol: [t.trade_id for t in recorder.trades if t.symbol == symbol] for symbol in ("BTC/USD", "BTC/USDC")
    }
    assert by_symbol["BTC/USD"] == by_symbol["BTC/USDC"] and by_symbol["BTC/USD"]
