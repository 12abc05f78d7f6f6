"""Settings of the local stack."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import setting


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """Run Redis, gateway nodes, exchange collectors (and a simulator when offline) on this host."""

    redis_url: str = setting("", "REDIS_URL", "Redis to use; empty starts an embedded one.", flag="--redis-url")
    gateways: int = setting(1, "STACK_GATEWAYS", "Gateway processes to run (ports from --port upward).")
    port: int = setting(8000, "STACK_PORT", "Port of the first gateway process.")
    host: str = setting("127.0.0.1", "STACK_HOST", "Address the gateways listen on.")
    jwt_secret: str = setting(
        "", "GATEWAY_JWT_SECRET", "HS256 secret; empty generates one for this run.", flag="--jwt-secret"
    )
    log_level: str = setting("info", "STACK_LOG_LEVEL", "Log level of every process.")

    def __post_init__(self) -> None:
        if not 1 <= self.gateways <= 64:
            raise ValueError("STACK_GATEWAYS must be between 1 and 64")
