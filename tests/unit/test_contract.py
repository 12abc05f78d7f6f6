"""The shared contract: topic grammar, event schemas, codec and settings loading."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import codec, names
from shared.config import ConfigError, load, setting
from shared.errors import PayloadError, TopicError
from shared.events import DECIMAL_PATTERN, END, Book, Candle, ExecutionUpdate, Notification, Ticker, bad_decimal
from shared.topics import Exchange, Kind, Timeframe, Topic


@pytest.mark.parametrize(
    "text",
    [
        "binance:ticker:BTC/USDT",
        "kraken:book:ETH/USD",
        "okx:candles.1m:BTC/USDT",
        "bybit:trades:1INCH/USDT",
        "coinbase:candles.1d:ETH/USD",
    ],
)
def test_valid_topics_round_trip(text: str) -> None:
    assert str(Topic.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "binance:ticker",
        "binance:ticker:BTC/USDT:x",
        "Binance:ticker:BTC/USDT",
        "binance:Ticker:BTC/USDT",
        "binance:ticker:btc/usdt",
        "binance:ticker:BTC-USDT",
        "binance:candles:BTC/USDT",
        "binance:candles.2m:BTC/USDT",
        "binance:ticker.1m:BTC/USDT",
        "ftx:ticker:BTC/USDT",
        "binance:ticker:BTC/" + "U" * 17,
        "x" * 65,
        "binance:ticker:BTC/USDT\n",
        'binance:ticker:BTC/US"DT',
    ],
)
def test_invalid_topics_are_refused(text: str) -> None:
    with pytest.raises(TopicError):
        Topic.parse(text)


def test_topic_parts_and_names() -> None:
    topic = Topic.parse("okx:candles.15m:SOL/USDT")
    assert (topic.exchange, topic.kind, topic.channel.timeframe, topic.symbol) == (
        Exchange.OKX,
        Kind.CANDLES,
        Timeframe.M15,
        "SOL/USDT",
    )
    assert topic.has_snapshot and not Topic.parse("okx:trades:SOL/USDT").has_snapshot
    assert Timeframe.H4.seconds == 14400
    assert names.market_channel(topic) == "md:okx:candles.15m:SOL/USDT"
    assert names.latest_key(topic) == "md:last:okx:candles.15m:SOL/USDT"
    assert names.notification_stream("u1") == "notifications:{u1}"


def test_market_events_round_trip_with_their_topic() -> None:
    candle = Candle(
        exchange="kraken",
        symbol="BTC/USD",
        ts=1,
        recv_ts=2.5,
        seq=3,
        timeframe="5m",
        open_time=0,
        open="1.10",
        high="1.20",
        low="1.00",
        close="1.15",
        volume="12.00000000",
        closed=True,
    )
    decoded = codec.decode_market(codec.encode(candle))
    assert decoded == candle and str(decoded.topic) == "kraken:candles.5m:BTC/USD"
    book = Book(exchange="bybit", symbol="BTC/USDT", ts=1, recv_ts=1, bids=[("100.0", "1")], asks=[("100.5", "2")])
    assert codec.decode_market(codec.encode(book)).bids == [("100.0", "1")]


def test_a_decoded_events_topic_text_is_its_topic_written_out() -> None:
    """`topic_text` (the gateway's per-message shortcut) is `str(topic)` for every exchange, kind, timeframe."""
    common = {"symbol": "1INCH/USDT", "ts": 1, "recv_ts": 1.0}
    ohlcv = dict.fromkeys(("open", "high", "low", "close", "volume"), "1")
    for exchange in Exchange:
        events: list[bytes] = [
            codec.encode(Ticker(exchange=exchange, **common)),
            codec.encode(Book(exchange=exchange, bids=[], asks=[], **common)),
            b'{"type":"trade","exchange":"%s","symbol":"1INCH/USDT","ts":1,"recv_ts":1,"trade_id":"1",'
            b'"price":"1","size":"1","side":"buy"}' % exchange.encode(),
            *(
                codec.encode(Candle(exchange=exchange, timeframe=timeframe, open_time=0, **ohlcv, **common))
                for timeframe in Timeframe
            ),
        ]
        for payload in events:
            event = codec.decode_market(payload)
            assert event.topic_text == str(event.topic)
            assert Topic.parse(event.topic_text) == event.topic


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"[]",
        b'{"type":"nope"}',
        b'{"type":"ticker","exchange":"binance","symbol":"BTC/USDT","ts":1}',
        b'{"type":"ticker","exchange":"binance","symbol":"BTC/USDT","ts":1,"recv_ts":1,"bid":1.5}',
        b'{"type":"ticker","exchange":"binance","symbol":"BTC/USDT","ts":1,"recv_ts":1,"bid":"1e999999"}',
        b'{"type":"trade","exchange":"binance","symbol":"BTC/USDT","ts":-1,"recv_ts":1,"trade_id":"1","price":"1",'
        b'"size":"1","side":"buy"}',
        b'{"type":"trade","exchange":"binance","symbol":"BTC/USDT","ts":1,"recv_ts":1,"trade_id":"1","price":"1.5\\n",'
        b'"size":"1","side":"buy"}',  # a trailing newline: the pattern's `$` took it once (`search`), not any more
        b'{"type":"book","exchange":"bybit","symbol":"BTC/USDT","ts":1,"recv_ts":1,"asks":[],"bids":['
        + b'["100.5","1"],' * 39
        + b'["100.5","1 "]]}',  # one bad size in 80 decimals
        b'{"type":"candle","exchange":"kraken","symbol":"BTC/USD","ts":1,"recv_ts":1,"timeframe":"5m","open_time":0,'
        b'"open":"1","high":"1","low":"1","close":"1\\n2","volume":"1"}',  # two decimals in one field
        b" " * (codec.MAX_PAYLOAD_BYTES + 1),
    ],
)
def test_bad_market_payloads_raise_payload_error(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        codec.decode_market(payload)


_REFERENCE_DECIMAL = re.compile(DECIMAL_PATTERN.removeprefix("^").removesuffix(END))
_near_decimals = st.text(alphabet="0123456789.-+eE\n x\u0663", max_size=12)  # \u0663: an Arabic-Indic digit
_decimals = st.from_regex(_REFERENCE_DECIMAL, fullmatch=True) | _near_decimals


@given(st.lists(st.tuples(_decimals, _decimals), max_size=25), st.lists(st.tuples(_decimals, _decimals), max_size=25))
def test_bad_decimal_finds_the_first_value_the_contract_pattern_refuses(
    bids: list[tuple[str, str]], asks: list[tuple[str, str]]
) -> None:
    """All of a book's decimals in one match give what the pattern gives field by field, as a browser reads it."""
    book = Book(exchange="bybit", symbol="BTC/USDT", ts=1, recv_ts=1, bids=bids, asks=asks)
    values = [value for level in (*bids, *asks) for value in level]
    expected = next((value for value in values if _REFERENCE_DECIMAL.fullmatch(value) is None), None)
    assert bad_decimal(book) == expected
    if expected is None:
        assert codec.decode_market(codec.encode(book)) == book
    else:
        with pytest.raises(PayloadError, match="is not a decimal string"):
            codec.decode_market(codec.encode(book))


@pytest.mark.parametrize(
    ("decode", "record"),
    [
        (
            codec.decode_market,
            {
                "type": "trade",
                "exchange": "binance",
                "symbol": "BTC/USDT\n",
                "ts": 1,
                "recv_ts": 1,
                "trade_id": "1",
                "price": "1",
                "size": "1",
                "side": "buy",
            },
        ),
        (
            codec.decode_market,
            {
                "type": "trade",
                "exchange": "binance",
                "symbol": "BTC/USDT",
                "ts": 1,
                "recv_ts": 1,
                "trade_id": "1",
                "price": "1",
                "size": "1\n",
                "side": "buy",
            },
        ),
        (
            codec.decode_notification,
            {"id": "n1", "user_id": "alice\n", "type": "info", "title": "t", "message": "m", "created_at": 1},
        ),
        (codec.decode_envelope, {"kind": "notification", "pos": "1-2\n", "data": {}}),
        (codec.decode_revocation, {"user_id": "alice\n"}),
    ],
)
def test_no_contract_pattern_takes_a_trailing_newline(decode: Any, record: dict[str, Any]) -> None:
    """Python's `$` matches before a final newline (and msgspec searches with it); a browser's does not."""
    with pytest.raises(PayloadError):
        decode(msgspec.json.encode(record))
    fixed = {name: value.rstrip("\n") if isinstance(value, str) else value for name, value in record.items()}
    decode(msgspec.json.encode(fixed))  # the same record without the newline passes


def test_notification_and_execution_schemas_are_strict() -> None:
    good = Notification(id="n1", user_id="u1", type="info", title="t", message="m", created_at=1)
    assert codec.decode_notification(codec.encode(good)) == good
    for bad in (
        b'{"id":"n1"}',
        msgspec.json.encode({**msgspec.to_builtins(good), "extra": 1}),
        msgspec.json.encode({**msgspec.to_builtins(good), "user_id": "a b"}),
        msgspec.json.encode({**msgspec.to_builtins(good), "type": "fatal"}),
    ):
        with pytest.raises(PayloadError):
            codec.decode_notification(bad)
    update = ExecutionUpdate(
        execution_id="e1",
        team_id="t1",
        status="failed",
        progress=100,
        error="boom",
        result={"fills": 3},
        updated_at=1,
        version=1,
    )
    assert codec.decode_execution(codec.encode(update)) == update
    with pytest.raises(PayloadError):
        codec.decode_execution(msgspec.json.encode({**msgspec.to_builtins(update), "progress": 101}))
    assert Ticker(exchange="okx", symbol="A/B", ts=1, recv_ts=1).topic.kind is Kind.TICKER


@dataclass(frozen=True, kw_only=True)
class Example:
    port: int = setting(8000, "EXAMPLE_PORT", "A port.")
    names: list[str] = setting(["a"], "EXAMPLE_NAMES", "Some names.")
    ratio: float | None = setting(None, "EXAMPLE_RATIO", "An optional ratio.")
    on: bool = setting(False, "EXAMPLE_ON", "A switch.")

    def __post_init__(self) -> None:
        if self.port <= 0:
            raise ValueError("EXAMPLE_PORT must be positive")


def test_settings_come_from_defaults_env_then_flags() -> None:
    assert load(Example, [], {}) == Example()
    env = {"EXAMPLE_PORT": "9000", "EXAMPLE_NAMES": "x, y,,z", "EXAMPLE_RATIO": "0.5", "EXAMPLE_ON": "yes"}
    assert load(Example, [], env) == Example(port=9000, names=["x", "y", "z"], ratio=0.5, on=True)
    assert load(Example, ["--port", "7000"], env).port == 7000


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {"EXAMPLE_PORT": "eighty"}, "EXAMPLE_PORT"),
        (["--on", "maybe"], {}, "--on"),
        ([], {"EXAMPLE_PORT": "-1"}, "positive"),
    ],
)
def test_bad_settings_name_their_source(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(Example, argv, env)
