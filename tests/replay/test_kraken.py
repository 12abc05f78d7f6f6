"""Kraken v2: recorded frames through the adapter, checked field by field."""

from __future__ import annotations

import json

from collectors.book import SyncReason
from collectors.exchanges import Kraken
from collectors.feed.adapter import Op, iso_ms
from shared.events import Book, Candle, Side, Ticker, Trade
from shared.topics import Exchange, Timeframe, Topic
from tests.collector_support import RECV_TS, frames, play, replay_adapter

ETHBTC = "kraken/v2_book10_ETHBTC_2026-08-26.jsonl"


def test_book_keeps_the_exact_number_text_and_verifies_each_checksum() -> None:
    adapter, recorder, link = replay_adapter(Kraken, ["kraken:book:ETH/BTC"], book_depth=10)
    play(adapter, link, frames(ETHBTC))
    assert recorder.resyncs == []
    snapshot, update = recorder.books
    assert snapshot.bids[4] == ("0.031340", "12.96065840")  # a float would have made it 0.03134
    assert snapshot.asks[0] == ("0.031357", "0.03740000")
    assert (snapshot.ts, snapshot.resync) == (iso_ms("2026-08-26T15:16:16.637831Z"), False)
    # The update removes 0.031347 and adds 0.031329, the new tenth level; the checksum agrees.
    assert update == Book(
        exchange=Exchange.KRAKEN, symbol="ETH/BTC", ts=iso_ms("2026-08-26T15:16:16.730423Z"), recv_ts=RECV_TS,
        bids=[level for level in snapshot.bids if level[0] != "0.031347"] + [("0.031329", "19.07893401")],
        asks=snapshot.asks,
    )  # fmt: skip


def test_a_book_message_with_its_keys_in_another_order_reads_the_same() -> None:
    """Book messages that start as Kraken's do take a typed fast path; any other key order the general one."""
    texts = frames(ETHBTC)
    books = []
    for reorder in (False, True):
        adapter, recorder, link = replay_adapter(Kraken, ["kraken:book:ETH/BTC"], book_depth=10)
        if reorder:  # the same JSON with "type" and "data" before "channel", numbers kept as sent
            start = '{"channel":"book",'
            texts = [
                f'{{{text[len(start) : -1]},"channel":"book"}}' if text.startswith(start) else text for text in texts
            ]
            assert sum(text.endswith(',"channel":"book"}') for text in texts) == 2
        play(adapter, link, texts)
        assert recorder.resyncs == []
        books.append(recorder.books)
    assert books[0] == books[1] and len(books[0]) == 2


def test_a_feed_that_lost_its_trailing_zeros_verifies_at_the_instruments_precision() -> None:
    """Re-serialized through floats ("0.001" for "0.00100000"): the raw text fails, the precision fallback holds."""
    adapter, recorder, link = replay_adapter(Kraken, ["kraken:book:BTC/USD"], book_depth=10)
    texts = frames("kraken/v2_book10_BTCUSD_2023-07-30_reserialized.jsonl")
    play(adapter, link, texts)
    assert recorder.resyncs == []  # before the fallback, every update here resynced
    assert len(recorder.books) == len(texts) == 510
    wrong = texts[1].replace('"checksum":', '"checksum":1', 1)  # a real mismatch still resyncs
    play(adapter, link, [wrong])
    assert [reason for _, reason in recorder.resyncs] == [SyncReason.CHECKSUM]


def test_documented_snapshot_checksum() -> None:
    adapter, recorder, link = replay_adapter(Kraken, ["kraken:book:BTC/USD"])
    play(adapter, link, frames("kraken/v2_doc_examples.jsonl"))
    assert recorder.resyncs == []
    [book] = recorder.books
    assert book.bids[0] == ("45283.5", "0.10000000") and book.asks[0] == ("45285.2", "0.00100000")
    assert len(book.bids) == len(book.asks) == 10
    assert adapter.rejections == 1  # the refused depth-27 subscribe in the same file


def test_a_checksum_mismatch_resyncs_that_symbol_only() -> None:
    adapter, recorder, link = replay_adapter(Kraken, ["kraken:book:ETH/BTC", "kraken:book:BTC/USD"], book_depth=10)
    play(adapter, link, frames("kraken/v2_doc_examples.jsonl")[:1])  # BTC/USD in sync
    snapshot, update = frames(ETHBTC)[2:4]
    play(adapter, link, [snapshot, update.replace("2505869009", "2505869008")])
    eth = adapter.stream_for(Topic.parse("kraken:book:ETH/BTC"))
    assert recorder.resyncs == [(eth, SyncReason.CHECKSUM)]
    assert adapter.books["BTC/USD"].ready and not adapter.books["ETH/BTC"].ready
    shown = len(recorder.books)
    play(adapter, link, [update])  # still in flight after the mismatch: dropped until a snapshot
    assert len(recorder.books) == shown
    play(adapter, link, [snapshot])  # the snapshot of the resubscription
    assert recorder.books[-1].symbol == "ETH/BTC" and recorder.books[-1].resync is True


def test_ticker_trade_and_ohlc_fields() -> None:
    topics = ["kraken:ticker:BTC/USD", "kraken:trades:BTC/USD", "kraken:candles.1m:BTC/USD"]
    adapter, recorder, link = replay_adapter(Kraken, topics)
    play(adapter, link, frames("kraken/v2_synthetic_schema_examples.jsonl"))
    assert recorder.tickers == [
        Ticker(
            exchange=Exchange.KRAKEN, symbol="BTC/USD", ts=iso_ms("2022-12-25T09:30:59.123456Z"), recv_ts=RECV_TS,
            bid="105944.20", bid_size="2.5", ask="105944.30", ask_size="3.2", last="105899.40",
            high_24h="106613.10", low_24h="104711.00", volume_24h="163.28908096",
        )
    ]  # fmt: skip
    assert recorder.trades == [
        Trade(
            exchange=Exchange.KRAKEN, symbol="BTC/USD", ts=iso_ms("2023-10-06T17:35:55.440295Z"), recv_ts=RECV_TS,
            trade_id="10218208", price="105944.20", size="0.00027625", side=Side.BUY,
        ),
        Trade(
            exchange=Exchange.KRAKEN, symbol="BTC/USD", ts=iso_ms("2023-10-06T17:35:56.123456Z"), recv_ts=RECV_TS,
            trade_id="10218209", price="105910.50", size="0.00012460", side=Side.SELL,
        ),
    ]  # fmt: skip
    assert recorder.candles == [
        Candle(
            exchange=Exchange.KRAKEN, symbol="BTC/USD", ts=int(RECV_TS), recv_ts=RECV_TS, timeframe=Timeframe.M1,
            open_time=iso_ms("2023-10-04T16:25:00.000000000Z"), open="106038.2", high="106044.3", low="106038.1",
            close="106040.1", volume="30927.68066226", closed=False,
        )
    ]  # fmt: skip


def test_heartbeats_and_status_carry_nothing() -> None:
    adapter, recorder, link = replay_adapter(Kraken, ["kraken:book:ETH/BTC"])
    play(adapter, link, [frames(ETHBTC)[0], frames(ETHBTC)[1], frames(ETHBTC)[4]])
    assert recorder.events == [] and adapter.rejections == 0


def test_requests_follow_the_documented_shape() -> None:
    adapter, _, _ = replay_adapter(Kraken, [])
    documented = [json.loads(line) for line in frames("kraken/v2_client_requests_doc.jsonl")]
    book = adapter.want(Topic.parse("kraken:book:BTC/USD"))
    ohlc = adapter.want(Topic.parse("kraken:candles.1m:BTC/USD"))
    trades = adapter.want(Topic.parse("kraken:trades:BTC/USD"))
    requests = [json.loads(text) for text in adapter.requests(Op.SUBSCRIBE, [book, ohlc, trades])]
    by_channel = {request["params"]["channel"]: request for request in requests}
    assert by_channel["book"]["params"] == {"channel": "book", "symbol": ["BTC/USD"], "depth": 25, "snapshot": True}
    assert by_channel["ohlc"]["params"] == {"channel": "ohlc", "symbol": ["BTC/USD"], "interval": 1, "snapshot": False}
    assert by_channel["trade"]["params"]["snapshot"] is False
    for request in requests:
        assert request.keys() == documented[0].keys()
    [unsubscribe] = [json.loads(text) for text in adapter.requests(Op.UNSUBSCRIBE, [book])]
    assert unsubscribe["params"] == documented[5]["params"] | {"depth": 25}
    assert json.loads(adapter.ping_message()).keys() == documented[4].keys()
