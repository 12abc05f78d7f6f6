"""Binance: recorded frames through the adapter, checked field by field."""

from __future__ import annotations

import json
from decimal import Decimal

from collectors.book import SyncReason
from collectors.exchanges import Binance
from collectors.feed.adapter import Op
from shared.events import Book, Candle, Side, Ticker, Trade
from shared.topics import Exchange, Timeframe, Topic
from tests.collector_support import FIXTURES, RECV_TS, frames, play, replay_adapter

DEPTH = "binance/depth_diff_NKNUSDT_2021-10-12.jsonl"
SNAPSHOT = "binance/rest_depth_snapshot_NKNUSDT_2021-10-12.json"


def expected_book(snapshot: dict, diffs: list[dict], depth: int) -> tuple[list, list]:
    """An independent model of the documented procedure: a dict per side, sorted at the end."""
    sides = {
        "b": {Decimal(p): (p, q) for p, q in snapshot["bids"]},
        "a": {Decimal(p): (p, q) for p, q in snapshot["asks"]},
    }
    for diff in diffs:
        if diff["u"] <= snapshot["lastUpdateId"]:
            continue
        for key in ("b", "a"):
            for price, size in diff[key]:
                if Decimal(size) == 0:
                    sides[key].pop(Decimal(price), None)
                else:
                    sides[key][Decimal(price)] = (price, size)
    bids = [sides["b"][k] for k in sorted(sides["b"], reverse=True)][:depth]
    asks = [sides["a"][k] for k in sorted(sides["a"])][:depth]
    return bids, asks


def test_trades_map_maker_flag_to_taker_side() -> None:
    adapter, recorder, link = replay_adapter(Binance, ["binance:trades:BTC/USDT", "binance:trades:BNB/BTC"])
    play(adapter, link, frames("binance/trade_ticker_frames_real_misc.jsonl")[:5])
    first, *_, last = recorder.trades
    assert len(recorder.trades) == 5
    assert first == Trade(
        exchange=Exchange.BINANCE, symbol="BTC/USDT", ts=1732636519372, recv_ts=RECV_TS,
        trade_id="4156456888", price="93028.00000000", size="0.00023000", side=Side.SELL,
    )  # fmt: skip
    # "m":false: the buyer took liquidity
    assert recorder.trades[3].side is Side.BUY
    assert (last.symbol, last.trade_id, last.price, last.size, last.ts) == (
        "BNB/BTC", "60276726", "0.00219650", "6.48000000", 1567296001034,
    )  # fmt: skip


def test_24h_ticker_fields() -> None:
    adapter, recorder, link = replay_adapter(Binance, ["binance:ticker:DOGE/BNB"])
    play(adapter, link, frames("binance/trade_ticker_frames_real_misc.jsonl"))
    assert recorder.events == [
        Ticker(
            exchange=Exchange.BINANCE, symbol="DOGE/BNB", ts=1569805259092, recv_ts=RECV_TS,
            bid="0.00014365", bid_size="7080.00000000", ask="0.00014498", ask_size="275033.00000000",
            last="0.00014360", open_24h="0.00014069", high_24h="0.00014550", low_24h="0.00013851",
            volume_24h="20014582.00000000",
        )
    ]  # fmt: skip


def test_kline_fields_from_the_capture() -> None:
    adapter, recorder, link = replay_adapter(Binance, ["binance:candles.1m:NKN/USDT", "binance:candles.1m:LRC/BTC"])
    play(adapter, link, frames("binance/ws_combined_capture_2021-10-12.jsonl"))
    nkn, lrc = recorder.candles
    assert nkn == Candle(
        exchange=Exchange.BINANCE, symbol="NKN/USDT", ts=1633998523963, recv_ts=RECV_TS, timeframe=Timeframe.M1,
        open_time=1633998480000, open="0.35270000", high="0.35280000", low="0.35220000", close="0.35280000",
        volume="25877.00000000", closed=False,
    )  # fmt: skip
    assert (lrc.symbol, lrc.open, lrc.volume, lrc.ts) == ("LRC/BTC", "0.00000638", "177.00000000", 1633998534486)


def test_book_buffers_diffs_until_the_rest_snapshot_then_chains_them() -> None:
    adapter, recorder, link = replay_adapter(Binance, ["binance:book:NKN/USDT"])
    diffs = frames(DEPTH)
    play(adapter, link, diffs)
    # Nothing is published before the snapshot; the host was asked for one (reason None: first sync).
    assert recorder.books == []
    stream = adapter.stream_for(Topic.parse("binance:book:NKN/USDT"))
    assert set(recorder.resyncs) == {(stream, None)}
    body = (FIXTURES / SNAPSHOT).read_bytes()
    assert adapter.on_snapshot(stream, body, RECV_TS) is True
    [book] = recorder.books
    payloads = [json.loads(line)["data"] for line in diffs]
    bids, asks = expected_book(json.loads(body), payloads, 20)
    assert book == Book(
        exchange=Exchange.BINANCE, symbol="NKN/USDT", ts=payloads[-1]["E"], recv_ts=RECV_TS,
        bids=bids, asks=asks, resync=False,
    )  # fmt: skip
    assert book.bids[0] == ("0.35270000", "9602.00000000")


def test_a_gap_resyncs_with_a_fresh_snapshot_and_flags_the_next_view() -> None:
    adapter, recorder, link = replay_adapter(Binance, ["binance:book:NKN/USDT", "binance:trades:NKN/USDT"])
    diffs = frames(DEPTH)
    stream = adapter.stream_for(Topic.parse("binance:book:NKN/USDT"))
    play(adapter, link, diffs[:10])
    assert adapter.on_snapshot(stream, (FIXTURES / SNAPSHOT).read_bytes(), RECV_TS)
    recorder.resyncs.clear()
    play(adapter, link, diffs[10:20])
    published = len(recorder.books)
    play(adapter, link, diffs[21:30])  # diff 20 lost
    assert recorder.resyncs[0] == (stream, SyncReason.GAP)
    assert len(recorder.books) == published  # nothing shown from a book known to be wrong
    # The stale REST snapshot is refused (older than the buffered diffs): the host fetches again.
    assert adapter.on_snapshot(stream, (FIXTURES / SNAPSHOT).read_bytes(), RECV_TS) is False
    first_kept = json.loads(diffs[21])["data"]
    fresh = {
        "lastUpdateId": first_kept["U"] - 1,
        "bids": [["0.35000000", "1.00000000"]],
        "asks": [["0.36000000", "2.00000000"]],
    }
    assert adapter.on_snapshot(stream, json.dumps(fresh).encode(), RECV_TS) is True
    view = recorder.books[-1]
    assert view.resync is True
    replayed = [json.loads(line)["data"] for line in diffs[21:30]]
    assert (view.bids, view.asks) == expected_book(fresh, replayed, 20)
    play(adapter, link, diffs[30:31])
    assert recorder.books[-1].resync is False


def test_control_frames() -> None:
    adapter, recorder, link = replay_adapter(Binance, ["binance:trades:BTC/USDT"])
    doc = frames("binance/doc_examples_server_frames.jsonl")
    play(adapter, link, [doc[2], doc[4]])  # acks and a LIST_SUBSCRIPTIONS reply: nothing to do
    assert (recorder.events, link.retired, adapter.rejections) == ([], False, 0)
    play(adapter, link, [doc[1]])  # {"stream":"!serverShutdown",...}
    assert link.retired
    play(adapter, link, ['{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}'])
    assert adapter.rejections == 1


def test_subscribe_requests_follow_the_documented_shape() -> None:
    adapter, _, _ = replay_adapter(Binance, [])
    streams = [adapter.want(Topic.parse(f"binance:{c}:BTC/USDT")) for c in ("trades", "book", "ticker", "candles.4h")]
    [request] = adapter.requests(Op.SUBSCRIBE, streams)
    documented = json.loads(frames("binance/doc_examples_client_requests.jsonl")[0])
    sent = json.loads(request)
    assert sent.keys() == documented.keys()
    assert sent["method"] == "SUBSCRIBE"
    assert sorted(sent["params"]) == ["btcusdt@depth@100ms", "btcusdt@kline_4h", "btcusdt@ticker", "btcusdt@trade"]
    [unsubscribe] = adapter.requests(Op.UNSUBSCRIBE, streams[:1])
    assert json.loads(unsubscribe)["method"] == "UNSUBSCRIBE"
    assert json.loads(adapter.ping_message())["method"] == "LIST_SUBSCRIPTIONS"
