"""`fanout-local`: start the whole system on this host and print how to connect."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import jwt

from collectors.config import URL_SETTINGS
from collectors.exchanges import ADAPTERS
from collectors.simulator.config import PORT_ORDER
from shared.config import load_or_exit
from shared.embedded_postgres import EmbeddedPostgresError, postgres_or_embedded
from shared.embedded_redis import EmbeddedRedisError, redis_or_embedded
from shared.logs import setup_logging
from shared.topics import Exchange
from stack.balancer import BalancerError, balancer_service
from stack.config import Simulate, StackConfig
from stack.supervisor import Service, python_module, supervise

logger = logging.getLogger(__name__)

DEMO_TOKEN_TTL_S = 24 * 3600
REACHABILITY_TIMEOUT_S = 3.0
# Symbols each exchange lists for its demo collector.
SYMBOLS: Final[dict[Exchange, str]] = {
    Exchange.BINANCE: "BTC/USDT,ETH/USDT",
    Exchange.COINBASE: "BTC/USD,ETH/USD",
    Exchange.KRAKEN: "BTC/USD,ETH/USD",
    Exchange.BYBIT: "BTC/USDT,ETH/USDT",
    Exchange.OKX: "BTC/USDT,ETH/USDT",
}


def exchanges_reachable() -> bool:
    """Whether a real exchange answers (this machine may have no internet)."""
    host, port = urlsplit(ADAPTERS[Exchange.BINANCE].endpoints["ws"]).hostname, 9443
    try:
        with socket.create_connection((host, port), REACHABILITY_TIMEOUT_S):
            return True
    except OSError:
        return False


def simulated(url: str, exchange: Exchange, config: StackConfig) -> str:
    """The simulator's stand-in for one of an exchange's real URLs (same path, local port)."""
    parts = urlsplit(url)
    scheme = {"wss": "ws", "https": "http"}.get(parts.scheme, parts.scheme)
    port = config.simulator_port + PORT_ORDER.index(exchange)
    return urlunsplit((scheme, f"127.0.0.1:{port}", parts.path, parts.query, ""))


def gateway_ports(config: StackConfig) -> list[int]:
    first = config.port + 1 if config.balancer else config.port
    return [first + i for i in range(config.gateways)]


def services(config: StackConfig, *, simulate: bool, workdir: Path) -> list[Service]:
    result = []
    if simulate and config.exchanges:
        result.append(
            python_module(
                "simulator",
                "collectors.simulator",
                "--exchange",
                ",".join(config.exchanges),
                "--port",
                str(config.simulator_port),
                "--mode",
                "synthetic",
                "--rate",
                str(config.simulator_rate),
            )
        )
    for index, exchange in enumerate(config.exchanges):
        args = [
            str(exchange),
            "--symbols",
            SYMBOLS[exchange],
            "--channels",
            ",".join(config.channels),
            "--admin-port",
            str(config.admin_port + index),
        ]
        if simulate:
            for setting_name, endpoint in URL_SETTINGS.items():
                url = ADAPTERS[exchange].endpoints.get(endpoint)
                if url:
                    args += ["--" + setting_name.replace("_", "-"), simulated(url, exchange, config)]
        result.append(python_module(f"collector-{exchange}", "collectors", *args))
    result += [
        python_module(
            f"gateway-{i + 1}",
            "gateway",
            env={
                "GATEWAY_PORT": str(port),
                "GATEWAY_HOST": config.host,
                "GATEWAY_NODE_ID": f"gateway-{i + 1}",
                # Behind nginx every client would otherwise share nginx's address.
                "GATEWAY_TRUST_FORWARDED_FOR": "true" if config.balancer else "false",
            },
        )
        for i, port in enumerate(gateway_ports(config))
    ]
    if config.balancer:
        backends = [(config.host, port) for port in gateway_ports(config)]
        result.append(balancer_service(config.port, backends, workdir / "nginx"))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    config = load_or_exit(StackConfig, argv, prog="fanout-local")
    setup_logging(config.log_level)
    try:
        with (
            redis_or_embedded(config.redis_url) as redis_url,
            postgres_or_embedded(config.database_url) as database_url,
        ):
            return run_stack(config, redis_url, database_url)
    except (EmbeddedRedisError, EmbeddedPostgresError):
        logger.exception("cannot start an embedded redis or postgresql")
        return 1


def run_stack(config: StackConfig, redis_url: str, database_url: str = "") -> int:
    """Start every service against `redis_url` and supervise them until a signal or a failure."""
    simulate = config.simulate is Simulate.ALWAYS or (config.simulate is Simulate.AUTO and not exchanges_reachable())
    secret = config.jwt_secret or secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "GATEWAY_JWT_SECRET": secret,
        "GATEWAY_LOG_LEVEL": config.log_level,
        "COLLECTOR_LOG_LEVEL": config.log_level,
    }
    token = jwt.encode({"sub": "demo", "teams": ["demo"], "exp": int(time.time()) + DEMO_TOKEN_TTL_S}, secret)
    logger.info(
        "stack starting",
        extra={
            "redis_url": redis_url,
            "database_url": database_url,
            "url": f"http://{config.host}:{config.port}",
            "gateways": [f"http://{config.host}:{port}" for port in gateway_ports(config)],
            "demo_token": token,
            "simulated_exchanges": simulate,
        },
    )
    try:
        with tempfile.TemporaryDirectory(prefix="fanout-local-") as workdir:
            return asyncio.run(supervise(services(config, simulate=simulate, workdir=Path(workdir)), env))
    except BalancerError as exc:
        logger.error("cannot start the balancer", extra={"error": str(exc)})  # noqa: TRY400 - no traceback needed
        return 1


if __name__ == "__main__":
    sys.exit(main())
