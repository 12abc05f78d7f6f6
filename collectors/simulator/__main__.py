"""``fanout-simulator``: serve simulated exchanges until interrupted.

    fanout-simulator --exchange binance,okx --host 127.0.0.1 --port 0 --mode synthetic \
        --rate 1000 --speed 1.0

Each exchange gets its own port and keeps the live URL paths. The URLs are logged (one
JSON line per exchange, message "exchange simulator listening") and printed once on
stdout as one JSON object, for a parent process to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import msgspec

from collectors.simulator.config import SimulatorConfig
from collectors.simulator.server import Simulator
from shared.config import load_or_exit
from shared.logs import setup_logging

logger = logging.getLogger(__name__)


async def serve(config: SimulatorConfig) -> None:
    """Run until SIGINT or SIGTERM, then close every connection and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        sys.stdout.write(msgspec.json.encode({"simulator": sim.urls()}).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
        logger.info("exchange simulator stopping")


def main(argv: Sequence[str] | None = None) -> int:
    config = load_or_exit(SimulatorConfig, argv, prog="fanout-simulator")
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        logger.error("cannot serve", extra={"error": str(exc)})  # noqa: TRY400 - message is the whole story
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
