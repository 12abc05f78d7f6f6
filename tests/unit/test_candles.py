"""CandleAggregator: bucket alignment, close emission, exact volume, late trades."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collectors.book import DataError
from collectors.candles import CandleAggregator
from shared import codec
from shared.errors import TopicError
from shared.events import Candle
from shared.topics import Exchange, Timeframe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "exchanges"

T0 = 1_633_998_512_068  # 2021-10-12T00:28:32.068Z
MINUTE = 60_000


def aggregator(timeframe: Timeframe = Timeframe.M1) -> CandleAggregator:
    return CandleAggregator(exchange=Exchange.BINANCE, symbol="BTC/USDT", timeframe=timeframe)


@pytest.mark.parametrize(
    ("timeframe", "open_time"),
    [
        (Timeframe.M1, 1_633_998_480_000),  # 00:28:00
        (Timeframe.M5, 1_633_998_300_000),  # 00:25:00
        (Timeframe.M15, 1_633_997_700_000),  # 00:15:00
        (Timeframe.H1, 1_633_996_800_000),  # 00:00:00
        (Timeframe.H4, 1_633_996_800_000),  # 00:00:00, a multiple of 4 h since the epoch
        (Timeframe.D1, 1_633_996_800_000),  # UTC midnight
    ],
)
def test_buckets_align_to_utc_epoch_multiples(timeframe: Timeframe, open_time: int) -> None:
    [candle] = aggregator(timeframe).add("100", "1", T0, 1.0)
    assert candle.open_time == open_time
    assert candle.open_time % (timeframe.seconds * 1000) == 0
    assert candle.timeframe is timeframe


def test_bucket_edges() -> None:
    agg = aggregator()
    start = T0 - T0 % MINUTE
    [first] = agg.add("1", "1", start, 0.0)
    [same] = agg.add("2", "1", start + MINUTE - 1, 0.0)
    closed, current = agg.add("3", "1", start + MINUTE, 0.0)
    assert first.open_time == same.open_time == closed.open_time == start
    assert current.open_time == start + MINUTE


def test_ohlcv_and_close_emission() -> None:
    agg = aggregator()
    [c1] = agg.add("100.50", "1.5", T0, 10.0)
    assert (c1.open, c1.high, c1.low, c1.close, c1.volume, c1.closed) == (
        "100.50",
        "100.50",
        "100.50",
        "100.50",
        "1.5",
        False,
    )
    agg.add("101.25", "0.5", T0 + 1_000, 11.0)
    agg.add("99.75", "2", T0 + 2_000, 12.0)
    [c4] = agg.add("100.00", "1", T0 + 3_000, 13.0)
    assert (c4.open, c4.high, c4.low, c4.close, c4.volume) == ("100.50", "101.25", "99.75", "100.00", "5.0")
    assert (c4.ts, c4.recv_ts, c4.seq) == (T0 + 3_000, 13.0, 0)

    closed, current = agg.add("98", "3", T0 + MINUTE, 14.0)
    assert closed == Candle(
        exchange=Exchange.BINANCE,
        symbol="BTC/USDT",
        ts=T0 + MINUTE,
        recv_ts=14.0,
        timeframe=Timeframe.M1,
        open_time=c4.open_time,
        open="100.50",
        high="101.25",
        low="99.75",
        close="100.00",
        volume="5.0",
        closed=True,
    )
    assert (current.open_time, current.open, current.volume, current.closed) == (
        c4.open_time + MINUTE,
        "98",
        "3",
        False,
    )


def test_quiet_buckets_produce_no_candle() -> None:
    agg = aggregator()
    agg.add("1", "1", T0, 0.0)
    closed, current = agg.add("2", "1", T0 + 10 * MINUTE, 0.0)
    assert current.open_time - closed.open_time == 10 * MINUTE


def test_volume_is_exact_decimal() -> None:
    agg = aggregator()
    agg.add("1", "0.1", T0, 0.0)
    [candle] = agg.add("1", "0.2", T0 + 1, 0.0)
    assert candle.volume == "0.3"  # a float sum would give 0.30000000000000004

    agg = aggregator()
    agg.add("1", "0.00100000", T0, 0.0)
    [candle] = agg.add("1", "0.00200000", T0 + 1, 0.0)
    assert candle.volume == "0.00300000"  # the exchange's precision is kept

    agg = aggregator()
    [candle] = agg.add("1", "1E-8", T0, 0.0)
    assert candle.volume == "0.00000001"  # never exponent form

    agg = aggregator()
    agg.add("1", "123456789012345678901.12345678", T0, 0.0)
    [candle] = agg.add("1", "987654321098765432109.87654321", T0 + 1, 0.0)
    assert candle.volume == "1111111110111111111010.99999999"  # 30 digits: more than prec 28


def test_real_bybit_trades_fold_into_one_candle() -> None:
    """Nine real trades of one millisecond: volume 0.049 exactly, close is the last to arrive.

    {"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1774021164273,"data":[{"T":1774021164272,
     "s":"BTCUSDT","S":"Sell","v":"0.001","p":"69916.80","L":"MinusTick","i":"8c93...","BT":false,
     "RPI":false,"seq":549792210006}, ...]}
    """
    path = FIXTURES / "bybit/v5_linear_orderbook50_trade_BTCUSDT_2026-03.jsonl"
    [frame] = [f for f in map(json.loads, path.read_text().splitlines()) if f.get("topic") == "publicTrade.BTCUSDT"]
    agg = CandleAggregator(exchange=Exchange.BYBIT, symbol="BTC/USDT", timeframe=Timeframe.M1)
    out: list[Candle] = []
    for trade in frame["data"]:
        out = agg.add(trade["p"], trade["v"], trade["T"], frame["ts"] / 1000)
    [candle] = out
    assert (candle.open, candle.high, candle.low, candle.close, candle.volume) == (
        "69916.80",
        "69916.80",
        "69914.20",
        "69914.20",
        "0.049",
    )
    assert candle.open_time == 1774021140000
    assert codec.decode_market(codec.encode(candle)) == candle


def test_late_trades() -> None:
    agg = aggregator()
    start = T0 - T0 % MINUTE
    agg.add("10", "1", start + 30_000, 0.0)
    # Late but inside the open bucket: counted, and it becomes the open, not the close.
    [candle] = agg.add("9", "1", start + 10_000, 0.0)
    assert (candle.open, candle.close, candle.low, candle.volume) == ("9", "10", "9", "2")
    agg.add("11", "1", start + MINUTE + 5, 0.0)
    # Its bucket is closed: ignored and counted.
    assert agg.add("12", "1", start + 59_000, 0.0) == []
    assert agg.add("12", "1", start - MINUTE, 0.0) == []
    assert agg.ignored == 2
    [candle] = agg.add("12", "1", start + MINUTE + 10, 0.0)
    assert (candle.open, candle.close, candle.volume) == ("11", "12", "2")


def test_close_due() -> None:
    agg = aggregator()
    start = T0 - T0 % MINUTE
    assert agg.close_due(start + MINUTE, 0.0) is None  # nothing open
    agg.add("10", "1", T0, 0.0)
    assert agg.close_due(start + MINUTE - 1, 0.0) is None
    closed = agg.close_due(start + MINUTE, 5.0)
    assert closed is not None
    assert (closed.closed, closed.open_time, closed.ts, closed.recv_ts) == (True, start, start + MINUTE, 5.0)
    assert agg.close_due(start + 2 * MINUTE, 0.0) is None
    assert agg.add("10", "1", start + 100, 0.0) == []  # its bucket is closed
    [candle] = agg.add("11", "2", start + MINUTE + 1, 0.0)  # the next one opens normally
    assert (candle.open_time, candle.volume) == (start + MINUTE, "2")


@pytest.mark.parametrize(("price", "size"), [("x", "1"), ("1", "-1"), ("NaN", "1"), ("1", "inf")])
def test_bad_trade_values(price: str, size: str) -> None:
    agg = aggregator()
    with pytest.raises(DataError):
        agg.add(price, size, T0, 0.0)
    assert agg.close_due(T0 + MINUTE, 0.0) is None  # nothing was folded in


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(TopicError):
        CandleAggregator(exchange=Exchange.OKX, symbol="btc-usdt", timeframe=Timeframe.M1)
    with pytest.raises(ValueError, match="2m"):
        CandleAggregator(exchange=Exchange.OKX, symbol="BTC/USDT", timeframe="2m")  # type: ignore[arg-type]


def test_candles_round_trip_the_codec() -> None:
    agg = aggregator(Timeframe.H4)
    agg.add("30243.4", "0.0012029", T0, 1.5)
    closed, current = agg.add("30243.5", "1.44679", T0 + 4 * 3_600_000, 2.5)
    for candle in (closed, current):
        assert codec.decode_market(codec.encode(candle)) == candle
    assert str(current.topic) == "binance:candles.4h:BTC/USDT"


@pytest.mark.parametrize(
    ("timeframe", "ts", "open_time", "end"),
    [
        # 2021-10-12 was a Tuesday: its week opened on Monday 2021-10-11 00:00 UTC.
        (Timeframe.W1, T0, 1_633_910_400_000, 1_634_515_200_000),
        # Months open on the 1st: October 2021, then November.
        (Timeframe.MO1, T0, 1_633_046_400_000, 1_635_724_800_000),
        # December rolls into January of the next year.
        (Timeframe.MO1, 1_640_995_199_999, 1_638_316_800_000, 1_640_995_200_000),
        # 3d buckets are epoch multiples, as Binance's and OKX's 3-day bars.
        (Timeframe.D3, T0, 1_633_996_800_000, 1_634_256_000_000),
        (Timeframe.H8, T0, 1_633_996_800_000, 1_634_025_600_000),
    ],
)
def test_calendar_buckets(timeframe: Timeframe, ts: int, open_time: int, end: int) -> None:
    assert timeframe.start(ts) == open_time
    assert timeframe.end(open_time) == end
    assert timeframe.start(end) == end  # the next bucket opens where this one ends
    assert timeframe.start(end - 1) == open_time


def test_a_month_of_trades_closes_on_the_first() -> None:
    agg = aggregator(Timeframe.MO1)
    [october] = agg.add("1", "1", T0, 0.0)
    closed, november = agg.add("2", "1", 1_635_724_800_000, 0.0)
    assert closed.closed and closed.open_time == october.open_time == 1_633_046_400_000
    assert november.open_time == 1_635_724_800_000


@pytest.mark.parametrize(
    ("finer", "coarser", "divides"),
    [
        (Timeframe.M1, Timeframe.M3, True),
        (Timeframe.H1, Timeframe.H8, True),
        (Timeframe.D1, Timeframe.W1, True),
        (Timeframe.D1, Timeframe.MO1, True),
        (Timeframe.H4, Timeframe.D3, True),
        (Timeframe.M5, Timeframe.M3, False),
        (Timeframe.D3, Timeframe.W1, False),
        (Timeframe.W1, Timeframe.MO1, False),
        (Timeframe.H8, Timeframe.H4, False),
    ],
)
def test_which_timeframes_build_which(finer: Timeframe, coarser: Timeframe, divides: bool) -> None:
    assert finer.divides(coarser) is divides
