"""Runs cryptofeed 3.0.1 against this project's exchange simulator, for `collector_bench` (not a test).

cryptofeed needs Python 3.13, so this script runs in a venv of its own (never this project's)
and imports nothing of the project: `collector_bench --cryptofeed-python PATH` starts it there.
It is the reference collector of the benchmark: cryptofeed's own Feed classes (Binance, Kraken)
with their endpoints pointed at the simulator, publishing to Redis through cryptofeed's own
Redis backends (TradeRedis, TickerRedis, BookRedis: ZADD per event, batched by its
BackendQueue), so the CPU it spends is what a cryptofeed deployment spends.

- Endpoints: each Feed class declares ``websocket_endpoints`` and ``rest_endpoints`` as class
  data; a subclass per run overrides both, so the WebSocket (Binance's ``/stream?streams=...``
  combined stream, Kraken's v2) and Binance's REST depth snapshots go to the simulator.
- cryptofeed accepts only ``wss://`` addresses; the simulator speaks plain ``ws://`` on loopback
  (as this project's collector does in the benchmark), so the addresses are given as ``wss://``
  and the one function cryptofeed opens sockets with is wrapped to dial ``ws://``: no TLS on
  either side.
- Symbols: cryptofeed fetches the exchange's instrument list (exchangeInfo, AssetPairs) before
  it connects; the mapping for the benchmark's symbols is set directly instead (`Symbols.set`),
  as a cached symbol file would, so nothing outside the simulator is asked.
- ``--book delta`` (cryptofeed's default BookRedis): each book message is written as its delta
  (plus a full book every 1000 deltas); ``--book full`` (``snapshots_only=True``): the full book,
  ``max_depth`` levels a side, per message, the like-for-like of this project's top-N view.

It prints one JSON line (``{"stats": URL}``) once its stats endpoint listens; ``GET /stats``
answers the frames read, events handed to the backends, what they wrote, dropped and hold,
and the warnings and errors cryptofeed logged (a checksum failure or gap restarts a connection).

    python loadtests/cryptofeed_driver.py --exchange kraken --ws-url ws://127.0.0.1:9000/v2 \
        --symbols BTC/USD,ETH/USD --channels ticker,trades,book --redis-url redis://127.0.0.1:6379/0
"""

# This file runs under Python 3.13 with cryptofeed installed; the project's type checks see
# cryptofeed as an untyped import.
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import cryptofeed.connection
import uvloop
from aiohttp import web
from cryptofeed import FeedHandler
from cryptofeed.backends.redis import BookRedis, TickerRedis, TradeRedis
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Binance, Kraken
from cryptofeed.symbols import Symbols

CHANNELS = {"ticker": TICKER, "trades": TRADES, "book": L2_BOOK}
BACKENDS = {TICKER: TickerRedis, TRADES: TradeRedis}


class LogCounter(logging.Handler):
    """Counts cryptofeed's warnings and errors (book resets, checksum failures, reconnects)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.last: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname.lower()] += 1
        self.last = [*self.last[-4:], record.getMessage()[:300]]


def plain_ws() -> None:
    """Make cryptofeed's WebSocket connections dial ws:// for the wss:// addresses it insists on."""
    connect = cryptofeed.connection.connect

    def dial(address: str, **kwargs: Any) -> Any:
        return connect(address.replace("wss://", "ws://", 1), **kwargs)

    cryptofeed.connection.connect = dial


def feed_class(exchange: str, ws_url: str, rest_url: str) -> type[Any]:
    """The exchange's Feed with its endpoints at the simulator, counting the frames it handles."""
    base: type[Any] = {"binance": Binance, "kraken": Kraken}[exchange]
    ws = urlsplit(ws_url.replace("ws://", "wss://", 1))
    if exchange == "binance":
        websocket = WebsocketEndpoint(f"{ws.scheme}://{ws.netloc}")  # Binance's _address() appends /stream?streams=
        routes = Routes("/api/v3/exchangeInfo", l2book="/api/v3/depth?symbol={}&limit={}")
    else:
        websocket = WebsocketEndpoint(ws.geturl(), limit=20)
        routes = Routes("/0/public/AssetPairs", l2book="/0/public/Depth?pair={}&count={}")

    class Counted(base):  # type: ignore[misc]
        frames = 0

        async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
            Counted.frames += 1
            await super().message_handler(msg, conn, timestamp)

    Counted.websocket_endpoints = [websocket]
    Counted.rest_endpoints = [RestEndpoint(rest_url.rstrip("/"), routes=routes)]
    return Counted


def set_symbols(exchange: str, feed_id: str, symbols: list[str]) -> list[str]:
    """Map the benchmark's BASE/QUOTE symbols as an instrument list would; returns cryptofeed's names."""
    normalized: dict[str, str] = {}
    info: dict[str, dict[str, str]] = {"instrument_type": {}, "tick_size": {}}
    for symbol in symbols:
        base, quote = symbol.split("/")
        name = f"{base}-{quote}"
        normalized[name] = f"{base}{quote}" if exchange == "binance" else symbol
        info["instrument_type"][name] = "spot"
        info["tick_size"][name] = "0.01"
    Symbols.set(feed_id, normalized, info)
    return list(normalized)


async def run(args: argparse.Namespace) -> None:
    plain_ws()
    counter = LogCounter()
    logging.getLogger().addHandler(counter)
    logging.getLogger().setLevel(logging.WARNING)
    redis = urlsplit(args.redis_url)
    host, port = redis.hostname or "127.0.0.1", redis.port or 6379
    cls = feed_class(args.exchange, args.ws_url, args.rest_url)
    names = set_symbols(args.exchange, cls.id, args.symbols.split(","))
    channels = [CHANNELS[name] for name in args.channels.split(",")]
    callbacks: dict[str, Any] = {}
    for channel in channels:
        if channel == L2_BOOK:
            callbacks[channel] = BookRedis(host=host, port=port, snapshots_only=args.book == "full")
        else:
            callbacks[channel] = BACKENDS[channel](host=host, port=port)
    feed = cls(symbols=names, channels=channels, callbacks=callbacks, max_depth=args.depth)
    handler = FeedHandler(config={"log": {"disabled": True}, "uvloop": True})
    handler.add_feed(feed)

    async def stats(_: web.Request) -> web.Response:
        backends = [callback.stats for callback in callbacks.values()]
        return web.json_response(
            {
                "frames": cls.frames,
                "written": sum(stat.written for stat in backends),
                "dropped": sum(stat.dropped_overflow + stat.dropped_failed for stat in backends),
                "queued": sum(stat.qsize for stat in backends),
                "logged": dict(counter.counts),
                "last_logged": counter.last,
            }
        )

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.stats_port)
    await site.start()
    print(json.dumps({"stats": f"http://127.0.0.1:{args.stats_port}/stats"}), flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, handler.request_stop)
    try:
        await handler.run_async(install_signal_handlers=False)
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchange", choices=("binance", "kraken"), required=True)
    parser.add_argument("--ws-url", required=True, help="the simulator's WebSocket URL of the exchange")
    parser.add_argument("--rest-url", default="", help="the simulator's REST base URL (Binance snapshots)")
    parser.add_argument("--symbols", required=True, help="comma separated BASE/QUOTE")
    parser.add_argument("--channels", default="trades,book", help="of ticker, trades, book")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--book", choices=("delta", "full"), default="delta")
    parser.add_argument("--depth", type=int, default=20, help="max_depth: levels a side kept and published")
    parser.add_argument("--stats-port", type=int, required=True)
    args = parser.parse_args()
    try:
        uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
