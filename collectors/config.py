"""Collector settings: which exchange and topics, where to publish, and the timing of it all.

Values come from defaults, then an optional TOML file, then the environment,
then the command line, each overriding the last. A file may describe several
collectors (``[[collectors]]`` tables, with top-level keys as defaults for
all); its keys are the field names below, and an unknown key is an error,
not a silent typo. Anything unusable is refused at start-up with a message.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from collectors.book import CollectorError
from collectors.feed.collector import FeedSettings
from collectors.feed.connection import LinkSettings
from shared.config import load, setting
from shared.errors import TopicError
from shared.redis_target import RedisTarget, RedisUrlError
from shared.topics import TIMEFRAME_SECONDS, Channel, Exchange, Kind, Timeframe, Topic, parse_symbol

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
# URL settings and the adapter endpoint each one overrides.
URL_SETTINGS: Final = {"ws_url": "ws", "rest_url": "rest", "business_url": "business"}


class ConfigError(CollectorError, ValueError):
    """A setting, topic or config file the collector cannot use; the command exits with status 2."""


def parse_channel(text: str) -> Channel:
    """``ticker``, ``trades``, ``book`` or ``candles:<timeframe>`` (``candles.<timeframe>`` too)."""
    kind_text, sep, timeframe_text = text.strip().replace(":", ".").partition(".")
    try:
        kind = Kind(kind_text)
    except ValueError:
        raise ConfigError(f"unknown channel {text!r}; use ticker, trades, book or candles:<timeframe>") from None
    if kind is Kind.CANDLES and not sep:
        raise ConfigError(f"channel {text!r} needs a timeframe, e.g. candles:1m")
    if kind is not Kind.CANDLES and sep:
        raise ConfigError(f"channel {text!r} takes no timeframe")
    if not sep:
        return Channel(kind)
    try:
        return Channel(kind, Timeframe(timeframe_text))
    except ValueError:
        supported = ", ".join(TIMEFRAME_SECONDS)
        raise ConfigError(f"unsupported timeframe {timeframe_text!r} in {text!r}; supported: {supported}") from None


def parse_exchange(text: str) -> Exchange:
    try:
        return Exchange(text.strip().lower())
    except ValueError:
        supported = ", ".join(Exchange)
        raise ConfigError(f"unsupported exchange {text!r}; supported: {supported}") from None


def topics_from(exchange: Exchange, symbols: Sequence[str], channels: Sequence[str]) -> list[Topic]:
    """Every channel of every symbol, as topics; raises ConfigError on any bad name."""
    parsed = [parse_channel(channel) for channel in channels]
    topics: list[Topic] = []
    for symbol in symbols:
        try:
            unified = parse_symbol(symbol.strip())
        except TopicError as exc:
            raise ConfigError(str(exc)) from None
        topics.extend(Topic(exchange, channel, unified) for channel in parsed)
    return topics


@dataclass(frozen=True, kw_only=True)
class CollectorConfig:
    """Collect one exchange's market data into Redis."""

    exchange: str = setting(
        "", "COLLECTOR_EXCHANGE", "binance, coinbase, kraken, bybit or okx (or the first argument)."
    )
    symbols: list[str] = setting([], "COLLECTOR_SYMBOLS", "Unified symbols, e.g. BTC/USDT,ETH/USDT.")
    channels: list[str] = setting(
        ["ticker", "trades", "book"],
        "COLLECTOR_CHANNELS",
        "ticker, trades, book and candles:<timeframe> (1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M).",
    )
    collector_id: str = setting("", "COLLECTOR_ID", "Name in status and logs (default: the exchange).", flag="--id")
    config: str = setting("", "COLLECTOR_CONFIG", "TOML file with settings and/or [[collectors]] tables.")
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "REDIS_URL",
        "Redis to publish to (redis+cluster://host:port,... for a Redis Cluster).",
        flag="--redis-url",
    )
    ws_url: str = setting("", "COLLECTOR_WS_URL", "Override the exchange's market-data WebSocket URL.")
    rest_url: str = setting(
        "", "COLLECTOR_REST_URL", "Override the exchange's REST base URL (candle history, Binance book snapshots)."
    )
    business_url: str = setting("", "COLLECTOR_BUSINESS_URL", "OKX only: override the /ws/v5/business URL (candles).")
    book_depth: int = setting(20, "COLLECTOR_BOOK_DEPTH", "Levels per side in published books.")
    book_rate: float = setting(
        10.0, "COLLECTOR_BOOK_RATE", "Most book views per second per symbol; 0: each change of the top N."
    )
    admin_host: str = setting("127.0.0.1", "COLLECTOR_ADMIN_HOST", "Address of the admin HTTP API.")
    admin_port: int = setting(9300, "COLLECTOR_ADMIN_PORT", "Port of the admin HTTP API; 0 picks a free one.")
    admin_token: str = setting(
        "", "COLLECTOR_ADMIN_TOKEN", "Bearer token the admin API's changes need; empty: changes are off."
    )
    admin_hosts: list[str] = setting(
        [], "COLLECTOR_ADMIN_HOSTS", "Host names the admin API answers to, besides localhost, 127.0.0.1 and [::1]."
    )
    admin_origins: list[str] = setting(
        [], "COLLECTOR_ADMIN_ORIGINS", "Web origins allowed to call the admin API (empty: no web page may)."
    )
    max_topics: int = setting(
        200, "COLLECTOR_MAX_TOPICS", "Most topics this collector serves; the admin API and demand add none past it."
    )
    on_demand: bool = setting(
        False,
        "COLLECTOR_ON_DEMAND",
        "Collect the topics gateways ask for (GATEWAY_ON_DEMAND) while they are wanted.",
    )
    on_demand_allow: list[str] = setting(
        ["*"], "COLLECTOR_ON_DEMAND_ALLOW", "Topic patterns (glob) that may be collected on demand."
    )
    on_demand_linger_s: float = setting(
        60.0, "COLLECTOR_ON_DEMAND_LINGER_S", "Seconds an on-demand topic is kept after the last gateway let go."
    )
    status_interval_s: float = setting(5.0, "COLLECTOR_STATUS_INTERVAL_S", "Seconds between status records.")
    status_ttl_s: float = setting(30.0, "COLLECTOR_STATUS_TTL_S", "Seconds a status record lives in Redis.")
    ping_interval_s: float = setting(20.0, "COLLECTOR_PING_INTERVAL_S", "Ping after this many idle seconds.")
    pong_timeout_s: float = setting(10.0, "COLLECTOR_PONG_TIMEOUT_S", "Dead if still silent this long after a ping.")
    connect_timeout_s: float = setting(10.0, "COLLECTOR_CONNECT_TIMEOUT_S", "Seconds to open a connection.")
    backoff_initial_s: float = setting(1.0, "COLLECTOR_BACKOFF_INITIAL_S", "First reconnect delay.")
    backoff_max_s: float = setting(60.0, "COLLECTOR_BACKOFF_MAX_S", "Longest reconnect delay.")
    stable_after_s: float = setting(10.0, "COLLECTOR_STABLE_AFTER_S", "Up this long, a connection resets backoff.")
    stale_after_s: float = setting(60.0, "COLLECTOR_STALE_AFTER_S", "Silent ticker/book stream: resubscribe.")
    trades_stale_after_s: float = setting(
        300.0, "COLLECTOR_TRADES_STALE_AFTER_S", "Silent trades/candles stream: resubscribe."
    )
    max_connection_age_s: float = setting(
        0.0, "COLLECTOR_MAX_CONNECTION_AGE_S", "Planned reconnect after this long; 0: the exchange's limit."
    )
    queue_size: int = setting(10000, "COLLECTOR_QUEUE_SIZE", "Events held while Redis is slow; oldest dropped.")
    batch_size: int = setting(500, "COLLECTOR_BATCH_SIZE", "Events per Redis pipeline.")
    publish_interval_ms: float = setting(
        2.0, "COLLECTOR_PUBLISH_INTERVAL_MS", "Least time between Redis pipelines; an event after a lull goes at once."
    )
    latest_ttl_s: int = setting(3600, "COLLECTOR_LATEST_TTL_S", "Seconds a latest-value key lives.")
    shutdown_timeout_s: float = setting(5.0, "COLLECTOR_SHUTDOWN_TIMEOUT_S", "Seconds to flush on shutdown.")
    rest_weight_per_minute: float = setting(
        0.0, "COLLECTOR_REST_WEIGHT_PER_MINUTE", "REST weight budget a minute (snapshots, history); 0: the exchange's."
    )
    database_url: str = setting(
        "",
        "DATABASE_URL",
        "PostgreSQL for candle history; empty: no history is loaded or stored.",
        flag="--database-url",
    )
    history_bars: int = setting(
        1000, "COLLECTOR_HISTORY_BARS", "Candles per candle topic to backfill on a first start."
    )
    candle_retention_days: list[str] = setting(
        ["1m=30", "3m=60", "5m=90", "15m=180", "30m=365"],
        "COLLECTOR_CANDLE_RETENTION_DAYS",
        "Days of candles kept per timeframe (`tf=days`); timeframes not listed are kept.",
    )
    candle_queue_size: int = setting(
        10000, "COLLECTOR_CANDLE_QUEUE_SIZE", "Candles waiting for PostgreSQL (coalesced per candle; oldest dropped)."
    )
    log_level: str = setting("info", "COLLECTOR_LOG_LEVEL", "debug, info, warning or error.")

    def __post_init__(self) -> None:
        try:
            RedisTarget.parse(self.redis_url)
        except RedisUrlError as exc:
            raise ConfigError(str(exc)) from None
        if self.exchange:
            parse_exchange(self.exchange)
        topics_from(Exchange.BINANCE, self.symbols, self.channels)  # any exchange: this checks the names
        if self.collector_id and not _ID_RE.fullmatch(self.collector_id):
            raise ConfigError(f"collector id {self.collector_id!r}: letters, digits and _.:@- only")
        positive = (
            *("book_depth", "status_interval_s", "ping_interval_s", "pong_timeout_s", "connect_timeout_s"),
            *("backoff_initial_s", "stale_after_s", "trades_stale_after_s", "queue_size", "batch_size"),
            *("latest_ttl_s", "shutdown_timeout_s", "max_topics", "history_bars", "candle_queue_size"),
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        self.retention  # noqa: B018 - parses, or raises ConfigError
        for name in (
            *("book_rate", "max_connection_age_s", "stable_after_s", "on_demand_linger_s"),
            "rest_weight_per_minute",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff_max_s must be at least backoff_initial_s")
        if self.status_ttl_s < self.status_interval_s:
            raise ConfigError("status_ttl_s must be at least status_interval_s")
        if not 0 <= self.admin_port <= 65535:
            raise ConfigError(f"admin_port {self.admin_port} is not a port")
        if len(self.symbols) * len(self.channels) > self.max_topics:
            raise ConfigError(f"{len(self.symbols) * len(self.channels)} topics exceed max_topics ({self.max_topics})")

    @property
    def name(self) -> str:
        return self.collector_id or self.exchange

    @property
    def topics(self) -> list[Topic]:
        return topics_from(parse_exchange(self.exchange), self.symbols, self.channels)

    @property
    def urls(self) -> dict[str, str]:
        """Endpoint overrides by adapter endpoint name (only those set)."""
        return {endpoint: getattr(self, name) for name, endpoint in URL_SETTINGS.items() if getattr(self, name)}

    @property
    def retention(self) -> dict[Timeframe, float]:
        """Days kept per timeframe, from ``tf=days`` items."""
        out = {}
        for item in self.candle_retention_days:
            name, _, days = item.partition("=")
            try:
                out[Timeframe(name.strip())] = float(days)
            except ValueError:
                raise ConfigError(f"candle retention {item!r}: use <timeframe>=<days>, e.g. 1m=30") from None
            if out[Timeframe(name.strip())] <= 0:
                raise ConfigError(f"candle retention {item!r}: days must be positive")
        return out

    @property
    def book_interval_s(self) -> float:
        return 1 / self.book_rate if self.book_rate else 0.0

    def feed_settings(self) -> FeedSettings:
        link = LinkSettings(
            connect_timeout_s=self.connect_timeout_s,
            close_timeout_s=min(1.0, self.pong_timeout_s),
            ping_interval_s=self.ping_interval_s,
            pong_timeout_s=self.pong_timeout_s,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
            stable_after_s=self.stable_after_s,
            max_age_s=self.max_connection_age_s or None,
        )
        return FeedSettings(
            link=link,
            stale_after_s=self.stale_after_s,
            trades_stale_after_s=self.trades_stale_after_s,
            rest_weight_per_minute=self.rest_weight_per_minute,
        )


def _file_sections(path: str) -> list[dict[str, Any]]:
    """The collectors a TOML file describes: top-level keys are defaults for each ``[[collectors]]``."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    known = {field.name for field in fields(CollectorConfig)} - {"config"}
    sections = document.pop("collectors", [{}])
    if not isinstance(sections, list) or not all(isinstance(section, dict) for section in sections):
        raise ConfigError(f"config file {path}: `collectors` must be an array of tables ([[collectors]])")
    for table in (document, *sections):
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return [{**document, **section} for section in sections]


def _section_name(section: Mapping[str, Any]) -> str:
    return str(section.get("collector_id") or section.get("exchange", ""))


def _as_env(values: Mapping[str, Any]) -> dict[str, str]:
    """File values in their environment-variable spelling, so `load` applies them with the usual precedence."""
    env_names = {field.name: field.metadata["env"] for field in fields(CollectorConfig)}
    out = {}
    for name, value in values.items():
        if isinstance(value, list):
            text = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        out[env_names[name]] = text
    return out


def load_configs(argv: Sequence[str], env: Mapping[str, str]) -> list[CollectorConfig]:
    """The collectors to run: one from the command line, or those of the config file it names.

    ``fanout-collector binance --symbols ...`` runs one; ``fanout-collector --config f.toml``
    runs every collector of the file; ``fanout-collector binance --config f.toml`` (or ``--id``)
    runs the matching one. Raises ConfigError (or shared.config.ConfigError) on bad input.
    """
    args = list(argv)
    if args and not args[0].startswith("-"):
        args[:1] = ["--exchange", args[0]]
    base = load(CollectorConfig, args, env, prog="fanout-collector")
    if not base.config:
        configs = [base]
    else:
        sections = _file_sections(base.config)
        if base.collector_id or base.exchange:
            wanted = base.collector_id or base.exchange
            sections = [section for section in sections if _section_name(section) == wanted]
            if not sections:
                raise ConfigError(f"config file {base.config} has no collector named {wanted!r}")
        configs = [
            load(CollectorConfig, args, {**_as_env(section), **env}, prog="fanout-collector") for section in sections
        ]
    for config in configs:
        if not config.exchange:
            raise ConfigError("name an exchange: fanout-collector <exchange> --symbols BASE/QUOTE,...")
        if not config.symbols:
            raise ConfigError(f"{config.name}: name at least one symbol (--symbols BTC/USDT,...)")
    for attribute in ("name", "admin_port"):
        seen = [getattr(config, attribute) for config in configs if getattr(config, attribute) != 0]
        duplicates = sorted({str(value) for value in seen if seen.count(value) > 1})
        if duplicates:
            raise ConfigError(f"collectors share a {attribute.replace('_', ' ')}: {', '.join(duplicates)}")
    return configs
