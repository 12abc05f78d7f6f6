"""`fanout-collector`: collect exchange market data into Redis.

    fanout-collector binance --symbols BTC/USDT,ETH/USDT --channels ticker,trades,book,candles:1m
    fanout-collector --config collectors.toml          # every collector of the file, one process

Exit status 2 means the input was refused (unknown exchange, bad symbol or
timeframe, bad setting); the message says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import Sequence

from collectors.config import ConfigError, load_configs
from collectors.feed.adapter import SubscriptionError
from collectors.feed.rest import RestBudget
from collectors.runner import CollectorService, run_all
from shared.config import ConfigError as SettingError
from shared.logs import setup_logging
from shared.topics import Exchange


def main(argv: Sequence[str] | None = None) -> int:
    try:
        configs = load_configs(sys.argv[1:] if argv is None else argv, os.environ)
        budgets: dict[Exchange, RestBudget] = {}  # one REST budget per exchange in this process
        services = [CollectorService(config, budgets) for config in configs]
    except (ConfigError, SettingError, SubscriptionError) as exc:
        print(f"fanout-collector: {exc}", file=sys.stderr)
        return 2
    setup_logging(configs[0].log_level)
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - optional speed-up

        run = uvloop.run
    # What start-up built lives as long as the process: keep it out of the collector's reach. A busy
    # collector allocates thousands of containers a second and each full collection would walk it all.
    gc.collect()
    gc.freeze()
    run(run_all(services))
    return 0


if __name__ == "__main__":
    sys.exit(main())
