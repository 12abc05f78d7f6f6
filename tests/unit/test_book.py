"""OrderBook and the per-exchange sequencers, against real recorded frames where they exist."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors.book import (
    Action,
    BinanceDepthSync,
    BookSide,
    BybitSequencer,
    CollectorError,
    ConnectionSequencer,
    Level,
    OkxSequencer,
    OrderBook,
    SnapshotGate,
    SyncError,
    SyncReason,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "exchanges"
VECTORS = json.loads((FIXTURES / "checksums.json").read_text())
SEQUENCE_VECTORS = {vector["id"]: vector for vector in VECTORS["sequence_vectors"]}


def frames(relative: str) -> list[Any]:
    return [json.loads(line) for line in (FIXTURES / relative).read_text().splitlines() if line]


def pairs(levels: list[list[str]]) -> list[Level]:
    return [(level[0], level[1]) for level in levels]


# -- OrderBook ---------------------------------------------------------------------------


def test_snapshot_sorts_best_first_and_keeps_text() -> None:
    book = OrderBook()
    book.apply_snapshot(
        bids=[("99.50", "1.0"), ("100.00", "2.50000000"), ("98", "3")],
        asks=[("101.5", "4"), ("100.5", "0.00100000"), ("102", "0")],
    )
    assert book.top() == (
        [("100.00", "2.50000000"), ("99.50", "1.0"), ("98", "3")],
        [("100.5", "0.00100000"), ("101.5", "4")],
    )
    assert book.best_bid == ("100.00", "2.50000000")
    assert book.best_ask == ("100.5", "0.00100000")
    assert len(book) == 5


def test_updates_add_change_and_remove_levels() -> None:
    book = OrderBook()
    book.apply_snapshot([("10", "1")], [("11", "1")])
    book.apply_update(BookSide.BID, "10.5", "2")
    book.apply_update(BookSide.ASK, "11", "0.00000000")
    book.apply_update(BookSide.ASK, "12", "3")
    book.apply_update(BookSide.BID, "10", "5")
    book.apply_update(BookSide.ASK, "13", "0")  # removing an unknown level is a no-op
    assert book.top() == ([("10.5", "2"), ("10", "5")], [("12", "3")])


def test_equal_prices_in_other_text_are_one_level() -> None:
    book = OrderBook()
    book.apply_snapshot([("136.2", "1")], [])
    book.apply_update(BookSide.BID, "136.20", "2")
    assert book.top() == ([("136.20", "2")], [])
    book.apply_update(BookSide.BID, "136.200", "0")
    assert len(book) == 0


def test_a_snapshot_replaces_the_book() -> None:
    book = OrderBook()
    book.apply_snapshot([("1", "1"), ("2", "1")], [("3", "1")])
    book.apply_snapshot([("5", "1")], [])
    assert book.top() == ([("5", "1")], [])
    assert book.best_ask is None


def test_top_n_and_truncate() -> None:
    book = OrderBook()
    book.apply_snapshot([(str(p), "1") for p in range(1, 21)], [(str(p), "1") for p in range(21, 41)])
    bids, asks = book.top(3)
    assert [p for p, _ in bids] == ["20", "19", "18"]
    assert [p for p, _ in asks] == ["21", "22", "23"]
    book.truncate(10)
    bids, asks = book.top()
    assert [p for p, _ in bids] == [str(p) for p in range(20, 10, -1)]
    assert [p for p, _ in asks] == [str(p) for p in range(21, 31)]
    book.apply_update(BookSide.BID, "15", "0")
    book.apply_update(BookSide.BID, "10", "7")  # comes back below depth: Kraken republishes it
    assert book.top()[0][-1] == ("10", "7")
    with pytest.raises(ValueError, match="depth"):
        book.truncate(-1)


@pytest.mark.parametrize(
    ("price", "size"),
    [("abc", "1"), ("NaN", "1"), ("1", "Infinity"), ("1", "-2"), ("", "1")],
)
def test_a_malformed_level_raises_sync_error(price: str, size: str) -> None:
    book = OrderBook()
    with pytest.raises(SyncError) as info:
        book.apply_update(BookSide.ASK, price, size)
    assert info.value.reason is SyncReason.BAD_LEVEL
    assert isinstance(info.value, CollectorError)
    assert isinstance(info.value, RuntimeError)
    assert len(book) == 0


def test_side_must_be_a_book_side() -> None:
    book = OrderBook()
    book.apply_update("bid", "1", "1")  # type: ignore[arg-type]  # StrEnum text is accepted
    with pytest.raises(KeyError):
        book.apply_update("buy", "1", "1")  # type: ignore[arg-type]
    assert book.best_bid == ("1", "1")


# Prices on a 0.5 grid written in several ways, so equal values arrive as different text.
_price = st.builds(
    lambda units, style: [f"{units / 2:g}", f"{units / 2:.1f}", f"{units / 2:.3f}"][style],
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=0, max_value=2),
)
_size = st.sampled_from(["0", "0.000", "1", "2.5", "0.00100000", "7"])
_update = st.tuples(st.just("update"), st.sampled_from(list(BookSide)), _price, _size)
_truncate = st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=15))
_levels = st.lists(st.tuples(_price, _size), max_size=30)


def _level_text(price: str, size: str) -> bytes:
    return f"{price}|{size};".encode()


@given(
    bids=_levels,
    asks=_levels,
    ops=st.lists(st.one_of(_update, _truncate), max_size=80),
    n=st.integers(min_value=1, max_value=20),
)
def test_book_matches_a_naive_model(bids: list[Level], asks: list[Level], ops: list[tuple[Any, ...]], n: int) -> None:
    book = OrderBook(level_text=_level_text)
    book.apply_snapshot(bids, asks)
    model: dict[BookSide, dict[Decimal, Level]] = {BookSide.BID: {}, BookSide.ASK: {}}

    def model_set(side: BookSide, price: str, size: str) -> None:
        if Decimal(size) == 0:
            model[side].pop(Decimal(price), None)
        else:
            model[side][Decimal(price)] = (price, size)

    def model_top(side: BookSide, depth: int | None = None) -> list[Level]:
        ordered = sorted(model[side].items(), reverse=side is BookSide.BID)
        return [level for _, level in ordered[:depth]]

    for price, size in bids:
        model_set(BookSide.BID, price, size)
    for price, size in asks:
        model_set(BookSide.ASK, price, size)
    for op in ops:
        if op[0] == "update":
            _, side, price, size = op
            book.apply_update(side, price, size)
            model_set(side, price, size)
        else:
            book.truncate(op[1])
            for side in BookSide:
                model[side] = {Decimal(p): (p, s) for p, s in model_top(side, op[1])}
        assert book.top(n) == (model_top(BookSide.BID, n), model_top(BookSide.ASK, n))
        shallow = n // 2 + 1  # views of two depths are cached side by side (Kraken: checksum and view)
        assert book.top(shallow) == (model_top(BookSide.BID, shallow), model_top(BookSide.ASK, shallow))
        for depth in (shallow, n):  # the kept level texts follow every change, truncations included
            texts = tuple(b"".join(_level_text(*level) for level in model_top(side, depth)) for side in BookSide)
            assert book.text(depth) == texts
    assert book.top() == (model_top(BookSide.BID), model_top(BookSide.ASK))
    assert len(book) == len(model[BookSide.BID]) + len(model[BookSide.ASK])
    assert book.best_bid == next(iter(model_top(BookSide.BID, 1)), None)
    assert book.best_ask == next(iter(model_top(BookSide.ASK, 1)), None)


# -- Binance diff-depth sync ----------------------------------------------------------------

BINANCE_SYMBOLS = ("NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR")


def binance_stream(symbol: str) -> list[dict[str, Any]]:
    """The symbol's depth diffs and bookTickers, in arrival order."""
    return [
        frame["data"]
        for frame in frames("binance/ws_combined_capture_2021-10-12.jsonl")
        if frame["stream"].startswith(symbol.lower() + "@")
        and ("@depth" in frame["stream"] or "@bookTicker" in frame["stream"])
    ]


def binance_snapshot(symbol: str) -> dict[str, Any]:
    path = FIXTURES / f"binance/rest_depth_snapshot_{symbol}_2021-10-12.json"
    body: dict[str, Any] = json.loads(path.read_text())
    return body


def apply_diff(book: OrderBook, diff: dict[str, Any]) -> None:
    for price, size in diff["b"]:
        book.apply_update(BookSide.BID, price, size)
    for price, size in diff["a"]:
        book.apply_update(BookSide.ASK, price, size)


def binance_diffs(symbol: str) -> list[dict[str, Any]]:
    return [data for data in binance_stream(symbol) if data.get("e") == "depthUpdate"]


@pytest.mark.parametrize("symbol", BINANCE_SYMBOLS)
@pytest.mark.parametrize("snapshot_after", [1, 2, 1000])
def test_binance_sync_on_real_snapshot_and_diffs(symbol: str, snapshot_after: int) -> None:
    """Replay the capture with the REST snapshot arriving after 1, 2 or all diffs.

    Content check: after each diff that ends at an update id some bookTicker
    also carries, the book's best bid and ask equal that bookTicker's.
    """
    snapshot = binance_snapshot(symbol)
    vector = SEQUENCE_VECTORS["binance_diff_depth_sync_NKNUSDT"]
    if symbol == "NKNUSDT":
        assert snapshot["lastUpdateId"] == vector["rest_lastUpdateId"]
        first_applied = (vector["first_applied_event"]["U"], vector["first_applied_event"]["u"])
    else:
        expected = vector["other_symbols"][symbol]
        assert snapshot["lastUpdateId"] == expected["lastUpdateId"]
        first_applied = tuple(expected["first_applied"])
    stream = binance_stream(symbol)
    tickers = {data["u"]: data for data in stream if "e" not in data}
    diffs = binance_diffs(symbol)

    sync: BinanceDepthSync[dict[str, Any]] = BinanceDepthSync()
    book = OrderBook()
    applied: list[dict[str, Any]] = []
    tickers_checked = 0

    def apply(ready: list[dict[str, Any]]) -> None:
        nonlocal tickers_checked
        for diff in ready:
            apply_diff(book, diff)
            applied.append(diff)
            if (ticker := tickers.get(diff["u"])) is not None:
                assert book.best_bid == (ticker["b"], ticker["B"])
                assert book.best_ask == (ticker["a"], ticker["A"])
                tickers_checked += 1

    for index, diff in enumerate(diffs, 1):
        apply(sync.on_diff(diff["U"], diff["u"], diff))
        if index == min(snapshot_after, len(diffs)):
            ready = sync.on_snapshot(snapshot["lastUpdateId"])
            book.apply_snapshot(pairs(snapshot["bids"]), pairs(snapshot["asks"]))
            apply(ready)

    assert sync.synced
    assert (applied[0]["U"], applied[0]["u"]) == first_applied
    assert applied == [d for d in diffs if d["u"] > snapshot["lastUpdateId"]]
    if symbol == "LRCBTC":
        assert len(diffs) - len(applied) == vector["other_symbols"]["LRCBTC"]["dropped_before"]
    bid, ask = book.best_bid, book.best_ask
    assert bid is not None and ask is not None and Decimal(bid[0]) < Decimal(ask[0])
    assert tickers_checked == {"NKNUSDT": 19, "BLZETH": 1, "LRCBTC": 6, "RUNEEUR": 0}[symbol]


def synced_binance(diffs: list[dict[str, Any]]) -> BinanceDepthSync[dict[str, Any]]:
    sync: BinanceDepthSync[dict[str, Any]] = BinanceDepthSync()
    sync.on_snapshot(binance_snapshot("NKNUSDT")["lastUpdateId"])
    for diff in diffs:
        assert sync.on_diff(diff["U"], diff["u"], diff) in ([diff], [])
    return sync


def test_binance_missing_diff_is_a_gap() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync = synced_binance(diffs[:10])
    with pytest.raises(SyncError, match=rf"^gap: expected U={diffs[10]['U']}, got U={diffs[11]['U']}"):
        sync.on_diff(diffs[11]["U"], diffs[11]["u"], diffs[11])
    assert not sync.synced
    # The offending diff starts the new buffer: a fresh snapshot just before it recovers.
    assert sync.on_snapshot(diffs[11]["U"] - 1) == [diffs[11]]
    assert sync.on_diff(diffs[12]["U"], diffs[12]["u"], diffs[12]) == [diffs[12]]


def test_binance_reordered_diff_is_a_gap() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync = synced_binance(diffs[:20])
    with pytest.raises(SyncError) as info:
        sync.on_diff(diffs[21]["U"], diffs[21]["u"], diffs[21])
    assert info.value.reason is SyncReason.GAP
    assert sync.on_diff(diffs[20]["U"], diffs[20]["u"], diffs[20]) == []  # buffering again


def test_binance_duplicate_diff_is_dropped() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync = synced_binance(diffs[:5])
    assert sync.on_diff(diffs[4]["U"], diffs[4]["u"], diffs[4]) == []
    assert sync.on_diff(diffs[5]["U"], diffs[5]["u"], diffs[5]) == [diffs[5]]


def test_binance_only_the_first_diff_may_straddle() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync = synced_binance(diffs[:5])
    merged = {**diffs[5], "U": diffs[4]["U"]}  # overlaps what was applied already
    with pytest.raises(SyncError, match=rf"expected U={diffs[5]['U']}, got U={diffs[4]['U']}"):
        sync.on_diff(merged["U"], merged["u"], merged)


def test_binance_gap_inside_the_buffer() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync: BinanceDepthSync[dict[str, Any]] = BinanceDepthSync()
    for diff in diffs[:5] + diffs[6:9]:
        assert sync.on_diff(diff["U"], diff["u"], diff) == []
    with pytest.raises(SyncError, match=rf"expected U={diffs[5]['U']}, got U={diffs[6]['U']}"):
        sync.on_snapshot(diffs[1]["u"])
    # The diffs before the gap are gone; a snapshot newer than the gap recovers.
    assert sync.on_snapshot(diffs[6]["u"]) == diffs[7:9]


def test_binance_snapshot_older_than_the_buffer() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync: BinanceDepthSync[dict[str, Any]] = BinanceDepthSync()
    for diff in diffs[3:6]:
        sync.on_diff(diff["U"], diff["u"], diff)
    with pytest.raises(SyncError) as info:
        sync.on_snapshot(diffs[0]["u"])
    assert info.value.reason is SyncReason.STALE_SNAPSHOT
    assert not sync.synced
    assert sync.on_snapshot(diffs[2]["u"]) == diffs[3:6]


def test_binance_snapshot_newer_than_every_buffered_diff() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync: BinanceDepthSync[dict[str, Any]] = BinanceDepthSync()
    for diff in diffs[:3]:
        sync.on_diff(diff["U"], diff["u"], diff)
    # lastUpdateId falls inside diffs[3]: it is the first to apply, and it straddles.
    assert sync.on_snapshot(diffs[3]["U"]) == []
    assert sync.on_diff(diffs[3]["U"], diffs[3]["u"], diffs[3]) == [diffs[3]]
    with pytest.raises(SyncError):
        sync.on_diff(diffs[5]["U"], diffs[5]["u"], diffs[5])


def test_binance_buffer_is_bounded() -> None:
    diffs = binance_diffs("NKNUSDT")
    sync: BinanceDepthSync[dict[str, Any]] = BinanceDepthSync(max_buffered=4)
    for diff in diffs[:10]:
        sync.on_diff(diff["U"], diff["u"], diff)
    assert sync.dropped == 6
    with pytest.raises(SyncError, match="stale_snapshot"):
        sync.on_snapshot(diffs[0]["u"])
    assert sync.on_snapshot(diffs[5]["u"]) == diffs[6:10]
    with pytest.raises(ValueError, match="max_buffered"):
        BinanceDepthSync(max_buffered=0)


# -- Bybit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", SEQUENCE_VECTORS["bybit_v5_u_continuity"]["pairs"])
def test_bybit_real_snapshot_then_delta(pair: dict[str, Any]) -> None:
    snapshot, delta = [f for f in frames("bybit/" + pair["fixture"].split("/")[1]) if "topic" in f][:2]
    sequencer = BybitSequencer()
    book = OrderBook()
    assert sequencer.check(snapshot["data"]["u"], snapshot=snapshot["type"] == "snapshot") is (Action.REPLACE)
    book.apply_snapshot(pairs(snapshot["data"]["b"]), pairs(snapshot["data"]["a"]))
    assert snapshot["data"]["u"] == pair["snapshot_u"]
    assert sequencer.check(delta["data"]["u"], snapshot=delta["type"] == "snapshot") is Action.APPLY
    for side, key in ((BookSide.BID, "b"), (BookSide.ASK, "a")):
        for price, size in delta["data"][key]:
            book.apply_update(side, price, size)
    bids, asks = book.top()
    levels = {BookSide.BID: dict(bids), BookSide.ASK: dict(asks)}
    for side, key in ((BookSide.BID, "b"), (BookSide.ASK, "a")):
        for price, size in delta["data"][key]:
            assert levels[side].get(price) == (None if Decimal(size) == 0 else size)
    assert Decimal(bids[0][0]) < Decimal(asks[0][0])


def test_bybit_gap_then_skip_until_snapshot() -> None:
    sequencer = BybitSequencer()
    assert sequencer.check(5, snapshot=False) is Action.SKIP  # no snapshot yet
    assert sequencer.check(2876700, snapshot=True) is Action.REPLACE
    assert sequencer.check(2876701, snapshot=False) is Action.APPLY
    with pytest.raises(SyncError, match=r"^gap: expected u=2876702, got u=2876703$"):
        sequencer.check(2876703, snapshot=False)
    assert sequencer.check(2876704, snapshot=False) is Action.SKIP
    assert sequencer.skipped == 2
    assert sequencer.check(2876710, snapshot=True) is Action.REPLACE
    assert sequencer.check(2876711, snapshot=False) is Action.APPLY


def test_bybit_u_1_means_a_service_restart() -> None:
    sequencer = BybitSequencer()
    sequencer.check(177400506, snapshot=True)
    assert sequencer.check(1, snapshot=False) is Action.REPLACE
    assert sequencer.check(2, snapshot=False) is Action.APPLY


def test_bybit_reset_waits_for_a_snapshot() -> None:
    sequencer = BybitSequencer()
    sequencer.check(10, snapshot=True)
    sequencer.reset()
    assert sequencer.check(11, snapshot=False) is Action.SKIP


# -- OKX seqId chain --------------------------------------------------------------------------


def test_okx_real_seqid_chain() -> None:
    updates = frames("okx/v5_books_SOL-USDT_updates_seqid_2025-11-25.jsonl")
    chain = [(u["data"][0]["prevSeqId"], u["data"][0]["seqId"]) for u in updates]
    assert [list(link) for link in chain] == SEQUENCE_VECTORS["okx_seqid_chain_SOL-USDT"]["chain"]
    sequencer = OkxSequencer()
    # The capture starts mid-stream: stand in a snapshot carrying the first prevSeqId.
    assert sequencer.check(chain[0][0], -1, snapshot=True) is Action.REPLACE
    for prev_seq_id, seq_id in chain:
        assert sequencer.check(seq_id, prev_seq_id, snapshot=False) is Action.APPLY


def test_okx_real_snapshot_and_update_2026() -> None:
    books = [
        f for f in frames("okx/v5_real_frames_trimmed_2026-09.jsonl") if f.get("arg", {}).get("channel") == "books"
    ]
    sequencers: dict[str, OkxSequencer] = {}
    for frame in books:
        data = frame["data"][0]
        sequencer = sequencers.setdefault(frame["arg"]["instId"], OkxSequencer())
        action = sequencer.check(data["seqId"], data.get("prevSeqId", -1), snapshot=frame["action"] == "snapshot")
        assert action is (Action.REPLACE if frame["action"] == "snapshot" else Action.APPLY)
    assert set(sequencers) == {"BTC-USDT", "SOL-USDT"}


def test_okx_documented_exceptions() -> None:
    """The docs' example: snapshot 10, update 10->15, idle 15->15, reset 15->3, update 3->5."""
    sequencer = OkxSequencer()
    assert sequencer.check(10, -1, snapshot=True) is Action.REPLACE
    for prev_seq_id, seq_id in [(10, 15), (15, 15), (15, 3), (3, 5)]:
        assert sequencer.check(seq_id, prev_seq_id, snapshot=False) is Action.APPLY


def test_okx_gap_then_skip_until_snapshot() -> None:
    sequencer = OkxSequencer()
    sequencer.check(27329772739, -1, snapshot=True)
    with pytest.raises(SyncError, match=r"^gap: expected prevSeqId=27329772739, got prevSeqId=27329772750$"):
        sequencer.check(27329772800, 27329772750, snapshot=False)
    assert sequencer.check(27329772807, 27329772800, snapshot=False) is Action.SKIP
    assert sequencer.check(27329772900, -1, snapshot=True) is Action.REPLACE


# -- Coinbase Advanced Trade and feeds without sequence -----------------------------------------


def test_coinbase_sequence_num_per_connection() -> None:
    acks_and_heartbeat, snapshot_other_session = [], None
    for frame in frames("coinbase/advanced_trade_real_frames_2026-09.jsonl"):
        if frame.get("channel") == "l2_data":
            snapshot_other_session = frame
        elif "sequence_num" in frame:
            acks_and_heartbeat.append(frame)
    sequencer = ConnectionSequencer()
    for frame in acks_and_heartbeat:
        sequencer.check(frame["sequence_num"])
    assert [f["sequence_num"] for f in acks_and_heartbeat] == [1, 2, 3]
    # The l2_data frame was recorded on another connection: on this one it is a gap.
    assert snapshot_other_session is not None
    with pytest.raises(SyncError, match=r"^gap: expected sequence_num=4, got 0$"):
        sequencer.check(snapshot_other_session["sequence_num"])
    sequencer.check(1)  # counting continues from the number received
    sequencer.reset()
    sequencer.check(0)  # a new connection starts anywhere


def test_snapshot_gate() -> None:
    gate = SnapshotGate()
    assert gate.check(snapshot=False) is Action.SKIP
    assert gate.check(snapshot=True) is Action.REPLACE
    assert gate.check(snapshot=False) is Action.APPLY
    gate.reset()
    assert gate.check(snapshot=False) is Action.SKIP
    assert gate.skipped == 2
