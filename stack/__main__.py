"""`fanout-local`: start the whole system on this host and print how to connect."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence

import jwt

from shared.config import ConfigError, load
from shared.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from shared.logs import setup_logging
from stack.config import StackConfig
from stack.supervisor import Service, python_module, supervise

logger = logging.getLogger(__name__)

DEMO_TOKEN_TTL_S = 24 * 3600


def services(config: StackConfig) -> list[Service]:
    gateways = [
        python_module(
            f"gateway-{i + 1}",
            "gateway",
            env={
                "GATEWAY_PORT": str(config.port + i),
                "GATEWAY_HOST": config.host,
                "GATEWAY_NODE_ID": f"gateway-{i + 1}",
            },
        )
        for i in range(config.gateways)
    ]
    return gateways


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(StackConfig, argv, prog="fanout-local")
    except ConfigError as exc:
        print(f"fanout-local: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    embedded = None
    redis_url = config.redis_url
    if not redis_url:
        try:
            embedded = EmbeddedRedis().start()
        except EmbeddedRedisError:
            logger.exception("cannot start an embedded redis")
            return 1
        redis_url = embedded.url
    secret = config.jwt_secret or secrets.token_urlsafe(32)
    env = {**os.environ, "REDIS_URL": redis_url, "GATEWAY_JWT_SECRET": secret, "GATEWAY_LOG_LEVEL": config.log_level}
    token = jwt.encode({"sub": "demo", "teams": ["demo"], "exp": int(time.time()) + DEMO_TOKEN_TTL_S}, secret)
    logger.info(
        "stack starting",
        extra={
            "redis_url": redis_url,
            "gateways": [f"http://{config.host}:{config.port + i}" for i in range(config.gateways)],
            "demo_token": token,
        },
    )
    try:
        return asyncio.run(supervise(services(config), env))
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
