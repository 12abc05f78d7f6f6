"""What every adapter must provide, checked the same way for all five (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from collectors.exchanges import ADAPTERS
from collectors.feed.adapter import Adapter, Op
from shared.topics import TIMEFRAME_SECONDS, Exchange, Kind, Timeframe, Topic
from tests.collector_support import FakeLink, replay_adapter

ALL = [pytest.param(exchange, id=str(exchange)) for exchange in Exchange]
SYMBOL = {Exchange.COINBASE: "BTC/USD", Exchange.KRAKEN: "BTC/USD"}


def topics(exchange: Exchange) -> list[Topic]:
    symbol = SYMBOL.get(exchange, "BTC/USDT")
    kinds = [Topic.of(exchange, kind, symbol) for kind in (Kind.TICKER, Kind.TRADES, Kind.BOOK)]
    return kinds + [Topic.of(exchange, Kind.CANDLES, symbol, timeframe) for timeframe in TIMEFRAME_SECONDS]


def adapter_for(exchange: Exchange) -> Adapter[Any]:
    adapter, _, _ = replay_adapter(ADAPTERS[exchange], [])
    return adapter


@pytest.mark.parametrize("exchange", ALL)
def test_class_data_is_complete(exchange: Exchange) -> None:
    cls = ADAPTERS[exchange]
    assert cls.exchange is exchange
    assert "ws" in cls.endpoints and set(cls.kind_endpoints.values()) <= set(cls.endpoints)
    assert set(cls.channels) == {Kind.TICKER, Kind.TRADES, Kind.BOOK}
    assert set(cls.candle_channels) <= set(Timeframe) and cls.candle_channels
    assert cls.max_streams_per_request >= 1 and cls.max_streams_per_connection >= cls.max_streams_per_request
    assert 0 < cls.requests_per_second <= 10
    assert "rest" in cls.endpoints  # candle history, and Binance's book snapshots
    assert cls.history_intervals and set(cls.history_intervals) <= set(Timeframe)
    assert 1 <= cls.history_page <= 1000 and cls.history_weight > 0 and cls.rest_weight_per_minute > 0
    assert cls.__doc__ is None or cls.__module__.endswith(str(exchange))


@pytest.mark.parametrize("exchange", ALL)
def test_every_topic_maps_to_a_stream_and_back(exchange: Exchange) -> None:
    adapter = adapter_for(exchange)
    streams = [adapter.want(topic) for topic in topics(exchange)]
    for topic, stream in zip(topics(exchange), streams, strict=True):
        assert stream.symbol == topic.symbol
        assert adapter.markets[stream.market] == topic.symbol
        assert stream.endpoint in adapter.urls
        if topic.kind is Kind.CANDLES and topic.channel.timeframe not in adapter.candle_channels:
            assert stream.kind is Kind.TRADES  # built from trades
    # Each timeframe the exchange has natively gets its own stream.
    assert len({s for s in streams if s.kind is Kind.CANDLES}) == len(adapter.candle_channels)


@pytest.mark.parametrize("exchange", ALL)
def test_requests_are_json_within_the_limits(exchange: Exchange) -> None:
    adapter = adapter_for(exchange)
    streams = {
        adapter.want(Topic.of(exchange, kind, f"C{i}/USDT"))
        for i in range(30)
        for kind in Kind
        if kind is not Kind.CANDLES
    }
    for op in Op:
        requests = adapter.requests(op, streams)
        decoded = [json.loads(text) for text in requests]
        assert all(isinstance(request, dict) for request in decoded)
        text = " ".join(requests)
        for stream in streams:
            assert stream.market.lower() in text.lower()
        assert str(op) in text.lower()
        assert len(requests) >= len(streams) / adapter.max_streams_per_request
    assert adapter.requests(Op.SUBSCRIBE, []) == []
    ping = adapter.ping_message()
    assert ping is None or ping == "ping" or isinstance(json.loads(ping), dict)
    for text in adapter.open_messages():
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("exchange", ALL)
def test_frames_that_are_not_market_data_publish_nothing(exchange: Exchange) -> None:
    adapter, recorder, link = replay_adapter(ADAPTERS[exchange], [str(topic) for topic in topics(exchange)])
    for frame in ("{}", '{"unknown":"frame"}', '{"channel":"nope","data":[]}', '{"topic":"x.y","data":{}}'):
        adapter.on_message(link, frame, 1.0)
    assert recorder.events == []
    with pytest.raises(ValueError):  # malformed: the connection counts it and goes on
        adapter.on_message(link, '{"stream":"btcusdt@trade","data":{"e":"trade","E":17', 1.0)


@pytest.mark.parametrize("exchange", ALL)
def test_a_lost_connection_resets_its_books(exchange: Exchange) -> None:
    adapter, _, _ = replay_adapter(ADAPTERS[exchange], [str(topic) for topic in topics(exchange)])
    symbol = topics(exchange)[0].symbol
    feed = adapter.books[symbol]
    feed.ready = True
    adapter.connection_lost(FakeLink([adapter.stream_for(Topic.of(exchange, Kind.BOOK, symbol))]))
    assert not feed.ready
    adapter.unwant(Topic.of(exchange, Kind.BOOK, symbol))
    assert symbol not in adapter.books


def test_symbols_keep_their_exchange_spelling() -> None:
    spelled = {exchange: adapter_for(exchange).market("ETH/BTC") for exchange in Exchange}
    assert spelled == {
        Exchange.BINANCE: "ETHBTC",
        Exchange.COINBASE: "ETH-BTC",
        Exchange.KRAKEN: "ETH/BTC",
        Exchange.BYBIT: "ETHBTC",
        Exchange.OKX: "ETH-BTC",
    }
    assert msgspec.json.decode(adapter_for(Exchange.KRAKEN).ping_message() or "{}")["method"] == "ping"
