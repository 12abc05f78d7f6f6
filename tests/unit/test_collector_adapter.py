"""The adapter base: topics to streams, what gets published, candles closing, books' pace."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from collectors.book import Action, SnapshotGate
from collectors.exchanges import Binance, Bybit, Coinbase, Kraken, Okx
from collectors.feed.adapter import CANDLE_CLOSE_GRACE_MS, Adapter, SubscriptionError, iso_ms
from collectors.feed.books import BookFeed
from shared import codec
from shared.events import Book, Candle, Side
from shared.topics import Exchange, Kind, Timeframe, Topic
from tests.collector_support import RECV_TS, Recorder, replay_adapter

MINUTE = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE


def test_iso_times_are_cut_to_milliseconds() -> None:
    assert iso_ms("2026-09-07T23:37:22.675755362Z") == 1788824242675
    assert iso_ms("1970-01-01T00:00:00Z") == 0
    # The fast path (one parse per second) agrees with the full parser, short fractions included.
    assert iso_ms("2026-09-07T23:37:22.6Z") == 1788824242600
    assert iso_ms("2026-09-07T23:37:22.67Z") == 1788824242670
    assert iso_ms("2026-09-07T23:37:22.675+00:00") == iso_ms("2026-09-07T23:37:22.675Z") == 1788824242675
    assert iso_ms("2026-09-07T23:37:22.675+01:00") == 1788824242675 - 3_600_000
    assert iso_ms("2026-09-07 23:37:22.675Z") == 1788824242675


@pytest.mark.parametrize(
    "text", ["2026-09-07T23:37:2x.675Z", "2026-09-07T23:37:22.6٣Z", "2026-13-07T23:37:22.675Z", ""]
)
def test_a_bad_time_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        iso_ms(text)


def test_streams_native_candles_and_trade_built_ones() -> None:
    adapter, _, _ = replay_adapter(Coinbase, [])
    five = adapter.stream_for(Topic.parse("coinbase:candles.5m:BTC/USD"))
    hour = adapter.stream_for(Topic.parse("coinbase:candles.1h:BTC/USD"))
    trades = adapter.stream_for(Topic.parse("coinbase:trades:BTC/USD"))
    assert (five.kind, five.channel, five.timeframe) == (Kind.CANDLES, "candles", Timeframe.M5)
    assert hour == trades and hour.key == (Kind.TRADES, "BTC/USD", None)
    with pytest.raises(SubscriptionError, match="not a coinbase topic"):
        adapter.stream_for(Topic.parse("kraken:trades:BTC/USD"))


@pytest.mark.parametrize(
    ("adapter_class", "view", "subscribed"),
    [(Kraken, 20, 25), (Kraken, 10, 10), (Kraken, 2000, 1000), (Bybit, 20, 50), (Bybit, 1, 1), (Okx, 20, 20)],
)
def test_the_subscribed_book_covers_the_published_view(adapter_class: type, view: int, subscribed: int) -> None:
    adapter, _, _ = replay_adapter(adapter_class, [], book_depth=view)
    assert adapter.subscribe_depth == subscribed


def test_only_wanted_topics_are_published() -> None:
    adapter, recorder, _ = replay_adapter(Binance, ["binance:trades:BTC/USDT"])
    adapter.trade("BTCUSDT", trade_id="1", price="1", size="1", side=Side.BUY, ts=T0, recv_ts=RECV_TS)
    adapter.ticker("BTCUSDT", T0, RECV_TS, last="1")  # not subscribed: dropped
    assert [type(event).__name__ for event in recorder.events] == ["Trade"]
    adapter.unwant(Topic.parse("binance:trades:BTC/USDT"))
    adapter.trade("BTCUSDT", trade_id="2", price="1", size="1", side=Side.BUY, ts=T0, recv_ts=RECV_TS)
    assert len(recorder.events) == 1  # frames still in flight after an unsubscribe are not published
    assert adapter.last_seen[(Kind.TRADES, "BTC/USDT", None)] == RECV_TS


def test_trades_feed_trade_built_candles_even_without_the_trades_topic() -> None:
    adapter, recorder, _ = replay_adapter(Coinbase, ["coinbase:candles.1m:BTC/USD"])
    for i, (price, size) in enumerate([("10", "1"), ("12", "2"), ("9", "0.5")]):
        adapter.trade("BTC-USD", trade_id=str(i), price=price, size=size, side=Side.BUY, ts=T0 + i, recv_ts=RECV_TS)
    adapter.trade("BTC-USD", trade_id="9", price="11", size="1", side=Side.SELL, ts=T0 + MINUTE, recv_ts=RECV_TS)
    assert recorder.trades == []
    closed = [candle for candle in recorder.candles if candle.closed]
    assert [(c.open, c.high, c.low, c.close, c.volume) for c in closed] == [("10", "12", "9", "9", "3.5")]
    assert recorder.candles[-1].open_time == T0 + MINUTE and not recorder.candles[-1].closed
    # The clock closes the quiet bucket once it is over (plus a grace for late trades).
    adapter.tick(T0 + 2 * MINUTE + CANDLE_CLOSE_GRACE_MS, RECV_TS)
    assert recorder.candles[-1].closed and recorder.candles[-1].open_time == T0 + MINUTE


def native(adapter: Adapter[Any], symbol: str, open_time: int, close: str, *, closed: bool = False) -> None:
    """One native candle update for `symbol`'s 1m bucket starting at `open_time`."""
    market = adapter.market(symbol)
    ohlcv = ("1", "2", "1", close, "5")
    adapter.candle(
        market, Timeframe.M1, open_time=open_time, ohlcv=ohlcv, ts=open_time + 1, recv_ts=RECV_TS, closed=closed
    )


def test_native_candles_close_when_the_next_bucket_starts_or_on_time() -> None:
    adapter, recorder, _ = replay_adapter(Kraken, ["kraken:candles.1m:BTC/USD"])
    native(adapter, "BTC/USD", T0, "1.5")
    native(adapter, "BTC/USD", T0, "1.7")
    native(adapter, "BTC/USD", T0 + MINUTE, "1.8")
    native(adapter, "BTC/USD", T0, "9")  # late
    assert [(c.open_time, c.close, c.closed) for c in recorder.candles] == [
        (T0, "1.5", False),
        (T0, "1.7", False),
        (T0, "1.7", True),  # Kraken never says a candle closed: the next bucket does
        (T0 + MINUTE, "1.8", False),
    ]
    adapter.tick(T0 + 2 * MINUTE + CANDLE_CLOSE_GRACE_MS - 1, RECV_TS)
    assert len(recorder.candles) == 4
    adapter.tick(T0 + 2 * MINUTE + CANDLE_CLOSE_GRACE_MS, RECV_TS)
    assert recorder.candles[-1] == msgspec.structs.replace(recorder.candles[3], closed=True)
    adapter.tick(T0 + 3 * MINUTE + CANDLE_CLOSE_GRACE_MS, RECV_TS)
    assert len(recorder.candles) == 5  # closed once


def test_an_exchange_close_is_not_repeated() -> None:
    adapter, recorder, _ = replay_adapter(Binance, ["binance:candles.1m:BTC/USDT"])
    native(adapter, "BTC/USDT", T0, "3", closed=True)
    native(adapter, "BTC/USDT", T0 + MINUTE, "4")
    assert [c.closed for c in recorder.candles] == [True, False]


def feed(interval_s: float, published: list[Book]) -> BookFeed[SnapshotGate]:
    return BookFeed(
        exchange=Exchange.KRAKEN, symbol="BTC/USD", sync=SnapshotGate(), depth=2, interval_s=interval_s,
        publish=published.append,
    )  # fmt: skip


async def test_book_views_are_paced_and_the_latest_wins() -> None:
    published: list[Book] = []
    book = feed(0.1, published)
    book.apply(Action.REPLACE, [("10", "1"), ("9", "1"), ("8", "1")], [("11", "1")])
    book.changed(1, RECV_TS)
    assert len(published) == 1 and published[0].bids == [("10", "1"), ("9", "1")]  # top 2 only
    started = time.monotonic()
    for size in range(2, 30):
        book.apply(Action.APPLY, [("10", str(size))], [])
        book.changed(size, RECV_TS)
    assert len(published) == 1  # coalesced into one pending view
    while len(published) < 2:
        await asyncio.sleep(0.005)
    # Sent by the interval's own timer: not before the interval ends, nor long after (1 s: a loaded machine's delays).
    assert 0.08 <= time.monotonic() - started < 1.0
    assert (published[1].bids[0], published[1].ts) == (("10", "29"), 29)  # the latest state
    await asyncio.sleep(0.15)
    assert len(published) == 2  # nothing new, nothing sent


def test_a_reset_book_waits_for_a_snapshot_and_then_says_resync() -> None:
    published: list[Book] = []
    book = feed(0.0, published)
    book.changed(1, RECV_TS)
    assert published == []  # nothing to show before the first snapshot
    book.apply(Action.REPLACE, [("10", "1")], [("11", "1")])
    book.changed(2, RECV_TS)
    book.reset()
    book.reset()
    book.changed(3, RECV_TS)
    assert len(book.book) == 0 and len(published) == 1
    book.apply(Action.REPLACE, [("10", "2")], [("11", "2")])
    book.changed(4, RECV_TS)
    book.apply(Action.APPLY, [("10", "3")], [])
    book.changed(5, RECV_TS)
    assert [(view.ts, view.resync) for view in published] == [(2, False), (4, True), (5, False)]


def test_a_change_below_the_published_depth_publishes_nothing() -> None:
    published: list[Book] = []
    book = feed(0.0, published)  # the top 2 per side
    book.apply(Action.REPLACE, [("10", "1"), ("9", "1"), ("8", "1")], [("11", "1"), ("12", "1")])
    book.changed(1, RECV_TS)
    for ts, (bids, asks) in enumerate(
        [
            ([("8", "5")], []),  # third bid: not shown
            ([], [("13", "1")]),  # a new third ask: not shown
            ([("7", "1"), ("8", "0")], []),  # still below the top 2
            ([("9", "2")], []),  # the second bid: shown
            ([("9.5", "1")], []),  # a new second bid, pushing 9 out: shown
            ([], [("12", "0")]),  # an ask removed from the top 2 (13 moves up): shown
        ],
        start=2,
    ):
        book.apply(Action.APPLY, bids, asks)
        book.changed(ts, RECV_TS)
    assert [(view.ts, view.bids, view.asks) for view in published] == [
        (1, [("10", "1"), ("9", "1")], [("11", "1"), ("12", "1")]),
        (5, [("10", "1"), ("9", "2")], [("11", "1"), ("12", "1")]),
        (6, [("10", "1"), ("9.5", "1")], [("11", "1"), ("12", "1")]),
        (7, [("10", "1"), ("9.5", "1")], [("11", "1"), ("13", "1")]),
    ]


def test_adapter_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="book depth"):
        Okx(host=Recorder(), book_depth=0)
    adapter = Okx(host=Recorder(), urls={"business": "ws://127.0.0.1:1/b", "ws": ""})
    assert adapter.urls == {"ws": Okx.endpoints["ws"], "business": "ws://127.0.0.1:1/b", "rest": Okx.endpoints["rest"]}


def test_candle_records_stay_valid_events() -> None:
    adapter, recorder, _ = replay_adapter(Bybit, ["bybit:candles.1m:BTC/USDT"])
    native(adapter, "BTC/USDT", T0, "2")
    [event] = recorder.candles
    assert isinstance(event, Candle)
    assert codec.decode_market(codec.encode(event)) == event
