"""Settings of the local stack: defaults, then a TOML file, then the environment, then flags.

`load_stack_config()` applies that precedence; `refused_variables()` names the
child processes' variables that the stack itself sets for each process, so a
developer who exports one (say ``GATEWAY_PORT``) is told what to use instead
rather than having it silently overridden.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Final

from collectors.config import ConfigError as CollectorConfigError
from collectors.config import parse_channel
from shared.config import ConfigError, load, setting
from shared.topics import Exchange, parse_symbol

# Every browser origin a frontend developer commonly serves from; the stack adds its own origin.
DEV_ORIGINS: Final = ["http://localhost:3000", "http://127.0.0.1:3000"]
# The quote currency a bare base symbol (``SOL``) gets on each exchange.
DEFAULT_QUOTES: Final[dict[Exchange, str]] = {
    Exchange.BINANCE: "USDT",
    Exchange.COINBASE: "USD",
    Exchange.KRAKEN: "USD",
    Exchange.BYBIT: "USDT",
    Exchange.OKX: "USDT",
}
_BASE_RE: Final = re.compile(r"[A-Z0-9]{1,16}")

# What to use instead of a child's variable that the stack sets for each process it starts.
INSTEAD: Final[dict[str, str]] = {
    "GATEWAY_PORT": "--port or STACK_PORT",
    "GATEWAY_HOST": "--host or STACK_HOST",
    "GATEWAY_NODE_ID": "nothing: gateways are named gateway-1, gateway-2, ...",
    "GATEWAY_TRUST_FORWARDED_FOR": "--balancer or STACK_BALANCER",
    "GATEWAY_LOG_LEVEL": "--log-level or STACK_LOG_LEVEL",
    "COLLECTOR_EXCHANGE": "--exchanges or STACK_EXCHANGES",
    "COLLECTOR_SYMBOLS": "--symbols or STACK_SYMBOLS",
    "COLLECTOR_CHANNELS": "--channels or STACK_CHANNELS",
    "COLLECTOR_ADMIN_PORT": "--admin-port or STACK_ADMIN_PORT",
    "COLLECTOR_WS_URL": "--simulate never to reach the real exchanges",
    "COLLECTOR_REST_URL": "--simulate never to reach the real exchanges",
    "COLLECTOR_BUSINESS_URL": "--simulate never to reach the real exchanges",
    "COLLECTOR_LOG_LEVEL": "--log-level or STACK_LOG_LEVEL",
    "GATEWAY_ON_DEMAND": "--on-demand or STACK_ON_DEMAND",
    "GATEWAY_STATUS_OPEN": "nothing: the local stack's status page is open (set GATEWAY_ADMIN_TOKEN elsewhere)",
    "COLLECTOR_ON_DEMAND": "--on-demand or STACK_ON_DEMAND",
    "SIM_EXCHANGES": "--exchanges or STACK_EXCHANGES",
    "SIM_PORT": "--simulator-port or STACK_SIMULATOR_PORT",
    "SIM_MODE": "nothing: the stack's simulator is synthetic",
    "SIM_RATE": "--simulator-rate or STACK_SIMULATOR_RATE",
    "SIM_LOG_LEVEL": "--log-level or STACK_LOG_LEVEL",
}


class Simulate(StrEnum):
    AUTO = "auto"  # simulate when the real exchanges cannot be reached
    ALWAYS = "always"
    NEVER = "never"


def _check_port(name: str, port: int, *, zero_ok: bool = False) -> None:
    if not (0 if zero_ok else 1) <= port <= 65535:
        raise ValueError(f"{name} {port} is not a port")


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """Run Redis, gateway nodes, exchange collectors (and a simulator when offline) on this host."""

    config: str = setting("", "STACK_CONFIG", "TOML file of these settings (keys: the names below, snake_case).")
    redis_url: str = setting("", "REDIS_URL", "Redis to use; empty starts an embedded one.", flag="--redis-url")
    database_url: str = setting(
        "", "DATABASE_URL", "PostgreSQL for candle history; empty starts an embedded one.", flag="--database-url"
    )
    redis_port: int = setting(
        9379, "STACK_REDIS_PORT", "Port of the embedded Redis (the README's snippets use 9379); 0 picks a free one."
    )
    gateways: int = setting(
        1, "STACK_GATEWAYS", "Gateway processes to run (ports from --port, or --port + 1 behind nginx)."
    )
    port: int = setting(8000, "STACK_PORT", "Port clients connect to: the first gateway, or nginx with --balancer.")
    balancer: bool = setting(
        False, "STACK_BALANCER", "Put nginx (sticky by client address) on --port in front of the gateways."
    )
    host: str = setting("127.0.0.1", "STACK_HOST", "Address the gateways listen on.")
    cors_origins: list[str] = setting(
        DEV_ORIGINS,
        "GATEWAY_CORS_ORIGINS",
        "Browser origins the gateways accept, besides the stack's own; `*` allows any.",
        flag="--cors-origins",
    )
    jwt_secret: str = setting(
        "", "GATEWAY_JWT_SECRET", "HS256 secret; empty uses (or creates) <state dir>/secret.", flag="--jwt-secret"
    )
    state_dir: str = setting(
        ".fanout-local", "STACK_STATE_DIR", "Where the secret and the running stack's stack.json are kept."
    )
    exchanges: list[Exchange] = setting(list(Exchange), "STACK_EXCHANGES", "Exchanges to collect (empty: none).")
    symbols: list[str] = setting(
        ["BTC", "ETH"],
        "STACK_SYMBOLS",
        "Symbols to collect: BASE (quoted in each exchange's usual USD or USDT) or BASE/QUOTE.",
    )
    channels: list[str] = setting(
        ["ticker", "trades", "book", "candles:1m"], "STACK_CHANNELS", "Channels every collector subscribes."
    )
    simulate: Simulate = setting(
        Simulate.AUTO, "STACK_SIMULATE", "Feed collectors from the local exchange simulator: auto, always or never."
    )
    simulator_port: int = setting(9400, "STACK_SIMULATOR_PORT", "First port of the simulator (one per exchange).")
    simulator_rate: float = setting(20.0, "STACK_SIMULATOR_RATE", "Simulated book updates per second per symbol.")
    admin_port: int = setting(9300, "STACK_ADMIN_PORT", "First admin API port of the collectors (one per exchange).")
    on_demand: bool = setting(
        True,
        "STACK_ON_DEMAND",
        "Collect any topic a client subscribes to (on-demand collection in gateways and collectors).",
    )
    log_level: str = setting("info", "STACK_LOG_LEVEL", "Log level of every process.")

    def __post_init__(self) -> None:
        if not 1 <= self.gateways <= 64:
            raise ValueError("STACK_GATEWAYS must be between 1 and 64")
        _check_port("STACK_REDIS_PORT", self.redis_port, zero_ok=True)
        _check_port("STACK_PORT", self.port)
        _check_port("STACK_SIMULATOR_PORT", self.simulator_port)
        _check_port("STACK_ADMIN_PORT", self.admin_port)
        for channel in self.channels:
            try:
                parse_channel(channel)
            except CollectorConfigError as exc:
                raise ValueError(f"STACK_CHANNELS: {exc}") from None
        if self.exchanges and not self.symbols:
            raise ValueError("STACK_SYMBOLS: name at least one symbol (or collect no exchange: --exchanges '')")
        for exchange in self.exchanges:
            self.symbols_of(exchange)  # raises on a bad symbol
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"STACK_LOG_LEVEL: expected debug, info, warning or error, got {self.log_level!r}")

    def symbols_of(self, exchange: Exchange) -> list[str]:
        """The unified symbols one exchange's collector subscribes to."""
        result = []
        for symbol in self.symbols:
            if _BASE_RE.fullmatch(symbol):
                result.append(f"{symbol}/{DEFAULT_QUOTES[exchange]}")
            else:
                try:
                    result.append(parse_symbol(symbol))
                except ValueError as exc:
                    raise ValueError(f"STACK_SYMBOLS: {exc}; or a bare BASE such as SOL") from None
        return result

    @property
    def origins(self) -> list[str]:
        """The origins the gateways accept: the configured ones plus the stack's own URL."""
        own = [f"http://{self.host}:{self.port}"]
        if self.host == "127.0.0.1":
            own.append(f"http://localhost:{self.port}")
        return [*self.cors_origins, *(origin for origin in own if origin not in self.cors_origins)]


def _file_as_env(path: str) -> dict[str, str]:
    """A settings file's values, spelled as their environment variables (lists comma-separated)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    by_name = {field.name: field.metadata["env"] for field in fields(StackConfig) if field.name != "config"}
    unknown = sorted(set(document) - set(by_name))
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    env = {}
    for name, value in document.items():
        if isinstance(value, list):
            env[by_name[name]] = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            env[by_name[name]] = str(value).lower()
        else:
            env[by_name[name]] = str(value)
    return env


def load_stack_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> StackConfig:
    """Flags over environment over the `--config` file over defaults; raises ConfigError on bad input."""
    base = load(StackConfig, argv, env, prog="fanout-local")
    if not base.config:
        return base
    return load(StackConfig, argv, {**_file_as_env(base.config), **env}, prog="fanout-local")


def refused_variables(env: Mapping[str, str], set_by_stack: Iterable[str]) -> str | None:
    """A one-line refusal naming the variables in `env` that the stack overrides, or None.

    The stack's own settings (REDIS_URL, GATEWAY_JWT_SECRET, GATEWAY_CORS_ORIGINS) are honoured, not refused.
    """
    own = {field.metadata["env"] for field in fields(StackConfig)}
    clashes = sorted(name for name in set(set_by_stack) - own if name in env)
    if not clashes:
        return None
    named = "; ".join(f"{name} (use {INSTEAD.get(name, 'a fanout-local setting')})" for name in clashes)
    return f"the stack sets these for each process it starts, so yours would be ignored: {named}"
