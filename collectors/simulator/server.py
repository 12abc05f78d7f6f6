"""The simulator's servers: one aiohttp app per exchange, on its own port.

Each exchange listens on its own port and keeps the real URL paths, so a collector is
pointed at it by replacing only scheme, host and port (``wss://ws.kraken.com/v2`` becomes
``ws://127.0.0.1:PORT/v2``). On the same port:

    GET    /_sim/stats    counters: connections, subscribe messages and current
                          subscriptions per connection, markets
    POST   /_sim/faults   inject a fault (see `collectors.simulator.faults`)
    DELETE /_sim/faults   clear faults

One driver task per exchange advances the markets that have subscribers every `TICK_S`
and runs the once-a-second work (tickers, candles, heartbeats, keep-alive rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from aiohttp import WSMsgType, web

from collectors.simulator.config import Mode, SimulatorConfig
from collectors.simulator.connection import CloseCode, CloseReason, Connection, ControlKind
from collectors.simulator.faults import (
    DropMode,
    Fault,
    FaultError,
    FaultKind,
    FaultState,
    decode_fault,
)
from collectors.simulator.history import MinuteTape
from collectors.simulator.market import Instrument, Market, TradeEvent
from collectors.simulator.protocols import PROTOCOLS
from collectors.simulator.protocols.base import now_ms
from collectors.simulator.replay import ReplaySource, recordings
from collectors.simulator.synthetic import SyntheticSource, make_instrument, market_rng
from shared.topics import Exchange

logger = logging.getLogger(__name__)

# Driver period: small enough that 1000 updates/s come out as bursts of ~10.
TICK_S: Final = 0.01
MAX_FRAME_BYTES: Final = 1024 * 1024
# Time a closing connection's writer gets to flush its close frame.
WRITER_GRACE_S: Final = 2.0
SHUTDOWN_GRACE_S: Final = 1.0
RECENTLY_CLOSED: Final = 100
MAX_BACKOFF_S: Final = 1.0

# Hosts of the live endpoints, for `Simulator.rewrite`.
REAL_HOSTS: Final[dict[str, Exchange]] = {
    "stream.binance.com": Exchange.BINANCE,
    "data-stream.binance.vision": Exchange.BINANCE,
    "api.binance.com": Exchange.BINANCE,
    "data-api.binance.vision": Exchange.BINANCE,
    "advanced-trade-ws.coinbase.com": Exchange.COINBASE,
    "ws.kraken.com": Exchange.KRAKEN,
    "stream.bybit.com": Exchange.BYBIT,
    "ws.okx.com": Exchange.OKX,
    "wsaws.okx.com": Exchange.OKX,
    "www.okx.com": Exchange.OKX,
    "api.coinbase.com": Exchange.COINBASE,
    "api.kraken.com": Exchange.KRAKEN,
    "api.bybit.com": Exchange.BYBIT,
}

Source = SyntheticSource | ReplaySource


class ExchangeServer:
    """One simulated exchange: its protocol, markets, connections and faults."""

    def __init__(self, exchange: Exchange, config: SimulatorConfig) -> None:
        self.exchange = exchange
        self.config = config
        self.faults = FaultState()
        self.connections: dict[str, Connection] = {}
        self.markets: dict[str, Market] = {}
        self.started = time.monotonic()
        self.port = 0
        self.counters: Counter[str] = Counter()
        self._sources: dict[Market, Source] = {}
        self._active: set[Market] = set()
        self._recently_closed: deque[dict[str, Any]] = deque(maxlen=RECENTLY_CLOSED)
        self._runner: web.AppRunner | None = None
        self._driver: asyncio.Task[None] | None = None
        # Set whenever the last open connection has finished (for a prompt shutdown).
        self._all_closed = asyncio.Event()
        self.protocol = PROTOCOLS[exchange](self)
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/_sim/stats", self._http_stats)
        app.router.add_post("/_sim/faults", self._http_inject)
        app.router.add_delete("/_sim/faults", self._http_clear)
        app.add_routes(self.protocol.routes())
        app.router.add_get("/{tail:.*}", self._handle_ws)
        return app

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port_for(self.exchange))
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.started = time.monotonic()
        self._driver = asyncio.create_task(self._drive(), name=f"sim-driver-{self.exchange}")
        logger.info(
            "exchange simulator listening",
            extra={
                "exchange": self.exchange.value,
                "url": self.url(),
                "urls": self.urls(),
                "mode": self.config.mode.value,
            },
        )

    async def stop(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        for conn in list(self.connections.values()):
            conn.close(CloseReason.SHUTDOWN, CloseCode.GOING_AWAY, "server shutdown")
        if self.connections:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), SHUTDOWN_GRACE_S)
        for conn in list(self.connections.values()):
            conn.abort(CloseReason.SHUTDOWN)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- URLs ---------------------------------------------------------------------------

    def advertised_host(self) -> str:
        """The host to put in URLs: a wildcard bind is reached on loopback."""
        host = self.config.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    def urls(self) -> dict[str, str]:
        """Every endpoint by name: WebSocket URLs, and "rest" for Binance's HTTP API."""
        out: dict[str, str] = {}
        for name, path in self.protocol.endpoints.items():
            scheme = "http" if name == "rest" else "ws"
            # Coinbase's URL has no path: ws://127.0.0.1:PORT, like wss://advanced-trade-ws...
            shown = "" if path == "/" else path
            out[name] = f"{scheme}://{self.advertised_host()}:{self.port}{shown}"
        out["control"] = f"http://{self.advertised_host()}:{self.port}/_sim"
        return out

    def url(self, name: str | None = None) -> str:
        """The WebSocket URL standing for the exchange's documented one (or a named one)."""
        urls = self.urls()
        return urls[name or next(iter(self.protocol.endpoints))]

    # -- markets ------------------------------------------------------------------------

    def market(self, symbol: str, base: str, quote: str) -> Market | None:
        """The market of a native symbol, created (replayed or synthetic) on first use."""
        market = self.markets.get(symbol)
        if market is not None:
            return market
        if len(self.markets) >= self.config.max_markets:
            return None
        now, ms = time.monotonic(), now_ms()
        rng = market_rng(self.config.seed, self.exchange.value, symbol)
        ids = {
            "first_update_id": rng.randrange(10**8, 10**9),
            "first_trade_id": rng.randrange(10**6, 10**8),
            "first_seq": rng.randrange(10**9, 10**10),
            "now_ms": ms,
        }
        recording = recordings(self.exchange).get(symbol) if self.config.mode is Mode.REPLAY else None
        source: Source
        if recording is not None:
            instrument = Instrument(
                symbol, recording.base, recording.quote, recording.price_decimals, recording.size_decimals
            )
            prices = sorted(p for _, p, _ in recording.initial)
            market = Market(instrument, reference_price=prices[len(prices) // 2], **ids)
            source = ReplaySource(market, recording, speed=self.config.speed, now=now)
            market.tape = self._tape(symbol, market.stats.last, instrument, history_days=0)
        else:
            instrument, price = make_instrument(symbol, base, quote)
            reference = max(1, round(price * 10**instrument.price_decimals))
            tape = self._tape(symbol, reference, instrument, history_days=self.config.history_days)
            market = Market(instrument, reference_price=tape.last_close, **ids)
            market.tape = tape
            source = SyntheticSource(
                market,
                rng,
                start_price=tape.last_close / 10**instrument.price_decimals,
                levels=self.config.book_levels,
                rate=self.config.rate,
            )
        # No one is subscribed yet, so the initial book is applied without rendering.
        market.apply(source.initial_book(), ms)
        self.markets[symbol] = market
        self._sources[market] = source
        logger.debug(
            "market created", extra={"exchange": self.exchange.value, "symbol": symbol, "replay": recording is not None}
        )
        return market

    def _tape(self, symbol: str, reference: int, instrument: Instrument, *, history_days: int) -> MinuteTape:
        return MinuteTape(
            seed=self.config.seed,
            exchange=self.exchange.value,
            symbol=symbol,
            reference=reference,
            lot_scale=10**instrument.size_decimals,
            now_s=int(time.time()),
            history_days=history_days,
            max_live_minutes=max(1, self.config.history_days) * 1440,
        )

    def activate(self, market: Market) -> None:
        """Start advancing `market` (it has a subscriber now)."""
        if market not in self._active:
            self._active.add(market)
            self._sources[market].resume(time.monotonic())

    def source(self, market: Market) -> Source:
        return self._sources[market]

    async def _drive(self) -> None:
        failures = 0
        next_second = time.monotonic() + 1.0
        while True:
            delay = TICK_S
            if failures:
                delay = min(MAX_BACKOFF_S, TICK_S * 2**failures) * random.uniform(0.5, 1.5)  # noqa: S311
            await asyncio.sleep(delay)
            try:
                now = time.monotonic()
                self._step_markets(now)
                if now >= next_second:
                    next_second = max(next_second + 1.0, now + 0.5)
                    self._each_second(now)
                failures = 0
            except Exception:
                failures = min(failures + 1, 10)
                logger.exception(
                    "simulator driver step failed", extra={"exchange": self.exchange.value, "failures": failures}
                )

    def _step_markets(self, now: float) -> None:
        protocol = self.protocol
        ts = now_ms()
        for market in list(self._active):
            if not protocol.is_active(market):
                self._active.discard(market)
                continue
            for event in self._sources[market].step(now):
                if isinstance(event, TradeEvent):
                    for candle in market.roll_candles(ts // 1000):  # a trade never lands in an ended bucket
                        protocol.on_candle_closed(market, candle)
                    trade = market.record_trade(event.price, event.size, event.taker, ts)
                    protocol.on_trade(market, trade)
                else:
                    update = market.apply(event.changes, ts, id_span=event.id_span)
                    if update is not None:
                        protocol.on_book(update)

    def _each_second(self, now: float) -> None:
        now_s = int(time.time())
        for market in list(self._active):
            for candle in market.roll_candles(now_s):
                self.protocol.on_candle_closed(market, candle)
        self.protocol.on_second(now)
        for conn in list(self.connections.values()):
            if not conn.closing and not conn.is_stalled(now):
                self.protocol.check(conn, now)

    # -- WebSocket connections ----------------------------------------------------------

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        if self.faults.refusing(now):
            self.counters["refused"] += 1
            return web.Response(status=self.faults.refuse_status, text="refused by fault injection")
        rejection = self.protocol.accept(request)
        if rejection is not None:
            return rejection
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=MAX_FRAME_BYTES)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="expected a WebSocket upgrade")
        if len(self.connections) >= self.config.max_connections:
            self.counters["refused"] += 1
            return web.Response(status=503, text="too many connections")
        await ws.prepare(request)
        conn = Connection(conn_id=str(uuid.uuid4()), ws=ws, request=request, max_queue=self.config.max_queue, now=now)
        self.connections[conn.id] = conn
        self.counters["accepted"] += 1
        logger.debug(
            "connection opened", extra={"exchange": self.exchange.value, "conn_id": conn.id, "path": request.path}
        )
        writer = asyncio.create_task(conn.run_writer(), name=f"sim-writer-{conn.id}")
        try:
            self.protocol.on_open(conn, request)
            await self._read(conn)
        finally:
            await self._finish(conn, writer)
        return ws

    async def _read(self, conn: Connection) -> None:
        ws, protocol = conn.ws, self.protocol
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            now = time.monotonic()
            conn.messages_in += 1
            conn.last_in = now
            if not protocol.on_frame(conn, now) or conn.is_stalled(now):
                # A stalled server reads but answers nothing, pings included.
                continue
            try:
                if msg.type is WSMsgType.TEXT:
                    protocol.on_text(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    conn.send_control(ControlKind.PONG, msg.data)
                elif msg.type is WSMsgType.PONG:
                    protocol.on_pong(conn, msg.data)
            except Exception:
                # A request that trips a protocol bug must not take the connection down
                # silently; the client sees no answer, the log has the traceback.
                logger.exception("request handling failed", extra={"exchange": self.exchange.value, "conn_id": conn.id})

    async def _finish(self, conn: Connection, writer: asyncio.Task[None]) -> None:
        conn.stop()
        try:
            await asyncio.wait({writer}, timeout=WRITER_GRACE_S)
        finally:
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            if conn.close_reason is None:
                conn.close_reason = CloseReason.CLIENT
            self.protocol.on_close(conn)
            self.connections.pop(conn.id, None)
            if not self.connections:
                self._all_closed.set()
            self.counters[f"closed: {conn.close_reason.value}"] += 1
            self._recently_closed.append(conn.stats())
            logger.debug(
                "connection closed",
                extra={
                    "exchange": self.exchange.value,
                    "conn_id": conn.id,
                    "reason": conn.close_reason.value,
                    "messages_out": conn.messages_out,
                },
            )

    # -- faults -------------------------------------------------------------------------

    def inject(self, fault: Fault) -> dict[str, Any]:
        """Apply one fault now; raises FaultError when it cannot apply here."""
        targets = list(self.connections.values())
        if fault.connection is not None:
            conn = self.connections.get(fault.connection)
            if conn is None:
                raise FaultError(f"no open connection {fault.connection!r}")
            targets = [conn]
        handlers = {
            FaultKind.DROP: self._drop,
            FaultKind.STALL: self._stall,
            FaultKind.REFUSE: self._refuse,
            FaultKind.GAP: self._gap,
            FaultKind.CORRUPT_CHECKSUM: self._corrupt,
            FaultKind.MALFORMED: self._malformed,
            FaultKind.CLEAR: self._clear,
        }
        handlers[fault.fault](fault, targets)
        kind = fault.fault.value
        self.faults.injected[kind] = self.faults.injected.get(kind, 0) + 1
        logger.info(
            "fault injected", extra={"exchange": self.exchange.value, "fault": kind, "connections": len(targets)}
        )
        return {"fault": kind, "connections": len(targets)}

    def _drop(self, fault: Fault, targets: list[Connection]) -> None:
        for conn in targets:
            if fault.mode is DropMode.ABORT:
                conn.abort(CloseReason.FAULT)
            else:
                conn.close(CloseReason.FAULT, fault.code, "dropped")

    def _stall(self, fault: Fault, targets: list[Connection]) -> None:
        now = time.monotonic()
        until = now + fault.seconds if fault.seconds is not None else float("inf")
        for conn in targets:
            conn.stalled_until = until

    def _refuse(self, fault: Fault, targets: list[Connection]) -> None:
        self.faults.refuse_until = time.monotonic() + (fault.seconds or 0.0)
        self.faults.refuse_status = fault.status

    def _gap(self, fault: Fault, targets: list[Connection]) -> None:
        self.faults.gaps.add(fault.symbol or "")

    def _corrupt(self, fault: Fault, targets: list[Connection]) -> None:
        if not self.protocol.has_checksum:
            raise FaultError(f"{self.exchange} books carry no checksum")
        self.faults.corrupt.add(fault.symbol or "")

    def _malformed(self, fault: Fault, targets: list[Connection]) -> None:
        for conn in targets:
            conn.send(self.protocol.malformed)

    def _clear(self, fault: Fault, targets: list[Connection]) -> None:
        self.faults.clear()
        for conn in self.connections.values():
            conn.stalled_until = None

    def drop_connections(self, mode: DropMode = DropMode.ABORT) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.DROP, mode=mode))

    def stall(self, seconds: float | None = None, connection: str | None = None) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.STALL, seconds=seconds, connection=connection))

    def refuse(self, seconds: float, status: int = 503) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.REFUSE, seconds=seconds, status=status))

    def gap(self, symbol: str) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.GAP, symbol=symbol))

    def corrupt_checksum(self, symbol: str) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.CORRUPT_CHECKSUM, symbol=symbol))

    def send_malformed(self, connection: str | None = None) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.MALFORMED, connection=connection))

    def clear_faults(self) -> dict[str, Any]:
        return self.inject(Fault(fault=FaultKind.CLEAR))

    # -- control API --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters a test can assert on; `connections` lists the open ones."""
        return {
            "exchange": self.exchange.value,
            "mode": self.config.mode.value,
            "urls": self.urls(),
            "connections_accepted": self.counters["accepted"],
            "connections_refused": self.counters["refused"],
            "connections_open": len(self.connections),
            "closed": {k.removeprefix("closed: "): v for k, v in self.counters.items() if k.startswith("closed: ")},
            "faults_injected": dict(self.faults.injected),
            "markets": {
                symbol: {"active": market in self._active, "update_id": market.update_id, "trades": market.stats.trades}
                for symbol, market in self.markets.items()
            },
            "connections": [conn.stats() for conn in self.connections.values()],
            "recently_closed": list(self._recently_closed),
        }

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _http_inject(self, request: web.Request) -> web.Response:
        try:
            result = self.inject(decode_fault(await request.read()))
        except FaultError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True} | result)

    async def _http_clear(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True} | self.clear_faults())


class Simulator:
    """Every configured exchange, each on its own port, as one async context manager.

    async with Simulator(SimulatorConfig(exchanges=[Exchange.BINANCE])) as sim:
        url = sim.url("binance")   # ws://127.0.0.1:PORT/ws
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.servers: dict[Exchange, ExchangeServer] = {}

    async def start(self) -> None:
        try:
            for exchange in self.config.exchanges:
                server = ExchangeServer(exchange, self.config)
                await server.start()
                self.servers[exchange] = server
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            await server.stop()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def server(self, exchange: Exchange | str) -> ExchangeServer:
        return self.servers[Exchange(exchange)]

    def url(self, exchange: Exchange | str, name: str | None = None) -> str:
        """The local URL standing for the exchange's public WebSocket URL."""
        return self.server(exchange).url(name)

    def urls(self) -> dict[str, dict[str, str]]:
        return {exchange.value: server.urls() for exchange, server in self.servers.items()}

    def rewrite(self, url: str) -> str:
        """Map a live URL (wss://ws.kraken.com/v2, https://api.binance.com/api/v3/depth?...)
        to this simulator, keeping path and query."""
        parts = urlsplit(url)
        exchange = REAL_HOSTS.get(parts.hostname or "")
        if exchange is None or exchange not in self.servers:
            raise ValueError(f"no simulated exchange serves {url!r}")
        server = self.servers[exchange]
        scheme = {"wss": "ws", "https": "http"}.get(parts.scheme, parts.scheme)
        netloc = f"{server.advertised_host()}:{server.port}"
        return urlunsplit((scheme, netloc, parts.path, parts.query, ""))

    def rewrite_all(self, endpoints: Mapping[str, str]) -> dict[str, str]:
        """`rewrite` applied to a collector's endpoint table ({"ws": ..., "rest": ...})."""
        return {name: self.rewrite(url) for name, url in endpoints.items()}
