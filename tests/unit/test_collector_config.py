"""Collector settings and the command line: what is accepted, and the clear refusals (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.__main__ import main
from collectors.book import CollectorError
from collectors.config import CollectorConfig, ConfigError, load_configs, parse_channel, topics_from
from collectors.feed.rest import RestBudget
from collectors.runner import CollectorService
from shared.config import ConfigError as SettingError
from shared.topics import Channel, Exchange, Kind, Timeframe, Topic


@pytest.mark.parametrize(
    ("text", "channel"),
    [
        ("ticker", Channel(Kind.TICKER)),
        ("book", Channel(Kind.BOOK)),
        ("candles:1m", Channel(Kind.CANDLES, Timeframe.M1)),
        ("candles.4h", Channel(Kind.CANDLES, Timeframe.H4)),
    ],
)
def test_channels(text: str, channel: Channel) -> None:
    assert parse_channel(text) == channel


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("candles:2m", "unsupported timeframe '2m'"),
        ("candles", "needs a timeframe"),
        ("ticker:1m", "takes no timeframe"),
        ("depth", "unknown channel"),
    ],
)
def test_bad_channels(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_channel(text)


def test_topics_are_every_channel_of_every_symbol() -> None:
    topics = topics_from(Exchange.OKX, ["BTC/USDT", "ETH/USDT"], ["ticker", "candles:1d"])
    assert [str(topic) for topic in topics] == [
        "okx:ticker:BTC/USDT",
        "okx:candles.1d:BTC/USDT",
        "okx:ticker:ETH/USDT",
        "okx:candles.1d:ETH/USDT",
    ]
    with pytest.raises(ConfigError, match="BASE/QUOTE"):
        topics_from(Exchange.OKX, ["btc-usdt"], ["ticker"])


def test_command_line_with_positional_exchange() -> None:
    [config] = load_configs(["kraken", "--symbols", "BTC/USD,ETH/USD", "--channels", "book,candles:5m"], {})
    assert config.name == "kraken"
    assert config.topics == [
        Topic.parse("kraken:book:BTC/USD"),
        Topic.parse("kraken:candles.5m:BTC/USD"),
        Topic.parse("kraken:book:ETH/USD"),
        Topic.parse("kraken:candles.5m:ETH/USD"),
    ]
    assert config.book_interval_s == pytest.approx(0.1)


def test_environment_then_command_line() -> None:
    env = {"COLLECTOR_EXCHANGE": "bybit", "COLLECTOR_SYMBOLS": "BTC/USDT", "COLLECTOR_BOOK_DEPTH": "50"}
    [config] = load_configs(["--book-depth", "10"], env)
    assert (config.exchange, config.book_depth) == ("bybit", 10)


CONFIG_FILE = """
redis_url = "redis://127.0.0.1:6390/0"
book_depth = 10

[[collectors]]
exchange = "binance"
symbols = ["BTC/USDT", "ETH/USDT"]
channels = ["ticker", "book", "candles:1m"]
admin_port = 9401

[[collectors]]
exchange = "okx"
collector_id = "okx-main"
symbols = ["BTC/USDT"]
admin_port = 9402
book_rate = 0
"""


def test_a_file_describes_several_collectors(tmp_path: Path) -> None:
    path = tmp_path / "collectors.toml"
    path.write_text(CONFIG_FILE)
    binance, okx = load_configs(["--config", str(path)], {"COLLECTOR_BOOK_DEPTH": "25"})
    assert (binance.name, okx.name) == ("binance", "okx-main")
    assert binance.redis_url == okx.redis_url == "redis://127.0.0.1:6390/0"
    assert binance.book_depth == okx.book_depth == 25  # the environment overrides the file
    assert len(binance.topics) == 6 and okx.channels == ["ticker", "trades", "book"]
    assert okx.book_interval_s == 0.0
    [only] = load_configs(["--id", "okx-main", "--config", str(path)], {})
    assert only.exchange == "okx"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[collectors]]\nexchange = "binance"\nsymbol = ["BTC/USDT"]\n', "unknown setting"),
        ("collectors = 3\n", "array of tables"),
        ("this is not toml", "config file"),
        (
            '[[collectors]]\nexchange = "kraken"\nsymbols = ["BTC/USD"]\n'
            '[[collectors]]\nexchange = "kraken"\nsymbols = ["ETH/USD"]\n',
            "share a name",
        ),
        ('[[collectors]]\nexchange = "kraken"\n', "at least one symbol"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_configs(["--config", str(path)], {})


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_configs(["--config", str(tmp_path / "none.toml")], {})
    path = tmp_path / "collectors.toml"
    path.write_text(CONFIG_FILE)
    with pytest.raises(ConfigError, match="no collector named 'kraken'"):
        load_configs(["kraken", "--config", str(path)], {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ftx", "--symbols", "BTC/USDT"], "unsupported exchange 'ftx'"),
        (["binance", "--symbols", "BTCUSDT"], "BASE/QUOTE"),
        (["binance", "--symbols", "BTC/USDT", "--channels", "candles:2m"], "unsupported timeframe"),
        (["binance"], "at least one symbol"),
        (["--symbols", "BTC/USDT"], "name an exchange"),
        (["binance", "--symbols", "BTC/USDT", "--book-depth", "0"], "book_depth must be positive"),
        (["binance", "--symbols", "BTC/USDT", "--book-depth", "many"], "--book-depth"),
        (["kraken", "--symbols", "BTC/USD", "--business-url", "ws://x"], "kraken has no business endpoint"),
        (["binance", "--symbols", "BTC/USDT", "--id", "no spaces"], "collector id"),
        (["binance", "--symbols", "BTC/USDT", "--backoff-max-s", "0.1"], "backoff_max_s"),
        (["binance", "--symbols", "BTC/USDT", "--status-ttl-s", "1"], "status_ttl_s"),
        (["binance", "--symbols", "BTC/USDT", "--admin-port", "70000"], "not a port"),
        (["binance", "--symbols", "BTC/USDT", "--book-rate", "-1"], "must not be negative"),
    ],
)
def test_refused_at_start_with_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("COLLECTOR_EXCHANGE", "COLLECTOR_SYMBOLS", "COLLECTOR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("fanout-collector: ") and message in error


def test_config_errors_are_value_errors_of_the_package() -> None:
    assert issubclass(ConfigError, CollectorError) and issubclass(ConfigError, ValueError)
    with pytest.raises((ConfigError, SettingError)):
        CollectorConfig(exchange="binance", symbols=["BTC/USDT"], queue_size=0)


async def test_a_service_is_built_without_connecting() -> None:
    config = CollectorConfig(exchange="okx", symbols=["BTC/USDT"], channels=["book", "candles:1h"], admin_port=0)
    service = CollectorService(config)
    streams = {topic: service.collector.adapter.stream_for(topic) for topic in config.topics}
    assert {stream.endpoint for stream in streams.values()} == {"ws", "business"}
    assert len(service.collector.connections) == 2  # public and business: not started until run
    await service.redis.aclose()


async def test_collectors_of_one_exchange_in_a_process_share_one_rest_budget() -> None:
    budgets: dict[Exchange, RestBudget] = {}
    services = [
        CollectorService(
            CollectorConfig(exchange=exchange, collector_id=name, symbols=["BTC/USDT"], admin_port=0), budgets
        )
        for exchange, name in (("binance", "a"), ("binance", "b"), ("bybit", "c"))
    ]
    first, second, other = (service.collector.rest for service in services)
    assert first is second and first is not other
    assert budgets == {Exchange.BINANCE: first, Exchange.BYBIT: other}
    for service in services:
        await service.redis.aclose()


@pytest.mark.parametrize(
    ("retention", "message"),
    [(["1m=x"], "use <timeframe>=<days>"), (["2m=3"], "use <timeframe>=<days>"), (["1m=0"], "must be positive")],
)
def test_candle_retention_is_checked(retention: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CollectorConfig(exchange="binance", symbols=["BTC/USDT"], candle_retention_days=retention)
    config = CollectorConfig(exchange="binance", symbols=["BTC/USDT"], candle_retention_days=["1m=1.5", "1h=30"])
    assert config.retention == {Timeframe.M1: 1.5, Timeframe.H1: 30.0}
