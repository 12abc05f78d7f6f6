"""`fanout-gateway`: run one gateway node (or `--workers N` of them on one port) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from gateway.config import GatewayConfig
from gateway.garbage import GarbageSchedule
from gateway.node import GatewayNode
from gateway.workers import run_workers
from shared.config import load_or_exit
from shared.embedded_redis import EmbeddedRedisError, redis_or_embedded
from shared.logs import setup_logging

logger = logging.getLogger(__name__)


async def serve(config: GatewayConfig, redis_url: str, *, ready: asyncio.Event | None = None) -> None:
    """Serve until a stop signal, then drain clients within the shutdown deadline."""
    node = GatewayNode(config, redis_url=redis_url)
    await node.start()
    garbage = GarbageSchedule(
        node.metrics.gc_pause,
        node.metrics.gc_collected,
        node.metrics.gc_censuses,
        full_every_s=config.gc_full_interval_s,
    )
    garbage.start()
    logger.info("gateway listening", extra={"node": config.name, "host": config.host, "port": config.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        logger.info("shutting down", extra={"deadline_s": config.shutdown_timeout_s})
        await node.drain(config.shutdown_timeout_s)
    finally:
        garbage.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(node.close(), config.shutdown_timeout_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    config = load_or_exit(GatewayConfig, argv, prog="fanout-gateway")
    setup_logging(config.log_level)
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - optional speed-up

        run = uvloop.run
    try:
        with redis_or_embedded(config.redis_url) as redis_url:
            if config.workers > 1:
                return run(run_workers(config, sys.argv[1:] if argv is None else argv, redis_url))
            run(serve(config, redis_url))
    except EmbeddedRedisError:
        logger.exception("cannot start an embedded redis")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
