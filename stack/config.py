"""Settings of the local stack."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.config import setting
from shared.topics import Exchange


class Simulate(StrEnum):
    AUTO = "auto"  # simulate when the real exchanges cannot be reached
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """Run Redis, gateway nodes, exchange collectors (and a simulator when offline) on this host."""

    redis_url: str = setting("", "REDIS_URL", "Redis to use; empty starts an embedded one.", flag="--redis-url")
    database_url: str = setting(
        "", "DATABASE_URL", "PostgreSQL for candle history; empty starts an embedded one.", flag="--database-url"
    )
    gateways: int = setting(
        1, "STACK_GATEWAYS", "Gateway processes to run (ports from --port, or --port + 1 behind nginx)."
    )
    port: int = setting(8000, "STACK_PORT", "Port clients connect to: the first gateway, or nginx with --balancer.")
    balancer: bool = setting(
        False, "STACK_BALANCER", "Put nginx (sticky by client address) on --port in front of the gateways."
    )
    host: str = setting("127.0.0.1", "STACK_HOST", "Address the gateways listen on.")
    jwt_secret: str = setting(
        "", "GATEWAY_JWT_SECRET", "HS256 secret; empty generates one for this run.", flag="--jwt-secret"
    )
    exchanges: list[Exchange] = setting(list(Exchange), "STACK_EXCHANGES", "Exchanges to collect (empty: none).")
    channels: list[str] = setting(
        ["ticker", "trades", "book", "candles:1m"], "STACK_CHANNELS", "Channels every collector subscribes."
    )
    simulate: Simulate = setting(
        Simulate.AUTO, "STACK_SIMULATE", "Feed collectors from the local exchange simulator: auto, always or never."
    )
    simulator_port: int = setting(9400, "STACK_SIMULATOR_PORT", "First port of the simulator (one per exchange).")
    simulator_rate: float = setting(20.0, "STACK_SIMULATOR_RATE", "Simulated book updates per second per symbol.")
    admin_port: int = setting(9300, "STACK_ADMIN_PORT", "First admin API port of the collectors (one per exchange).")
    log_level: str = setting("info", "STACK_LOG_LEVEL", "Log level of every process.")

    def __post_init__(self) -> None:
        if not 1 <= self.gateways <= 64:
            raise ValueError("STACK_GATEWAYS must be between 1 and 64")
