"""Kraken spot WebSocket v2: ``wss://ws.kraken.com/v2``.

Numbers are bare JSON numbers printed with the instrument's precision (``0.00100000``), and
the book checksum is a CRC32 over exactly those tokens, on snapshots and updates. A
depth-N book sends the levels that enter the top N (Kraken's "republish") but no removal
for a level pushed below it: the client truncates, as the docs say.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Final

import msgspec
from aiohttp import web

from collectors.checksums import kraken_checksum
from collectors.simulator.connection import Connection
from collectors.simulator.market import BookUpdate, Candle, Interval, Market, Side, Trade
from collectors.simulator.protocols.base import (
    MAX_REQUEST_BYTES,
    Feed,
    FeedKind,
    NumberStyle,
    Protocol,
    dumps,
    iso_time,
    loads,
    query_int,
)
from shared.topics import Exchange

BOOK_DEPTHS: Final = frozenset({10, 25, 100, 500, 1000})
OHLC_INTERVALS: Final = frozenset({1, 5, 15, 30, 60, 240, 1440, 10080, 21600})
REST_OHLC_COUNT: Final = 720
# Quotes a REST pair without a slash ("BTCUSD") may end with, longest first.
REST_QUOTES: Final = ("USDT", "USDC", "USD", "EUR", "GBP", "CAD", "JPY", "CHF", "AUD", "XBT", "BTC", "ETH")
CHECKSUM_DEPTH: Final = 10
_CHANNELS: Final[dict[str, FeedKind]] = {
    "book": FeedKind.BOOK,
    "ticker": FeedKind.TICKER,
    "trade": FeedKind.TRADES,
    "ohlc": FeedKind.CANDLES,
}
_PRIVATE: Final = frozenset({"executions", "balances", "level3"})


def _raw(text: str) -> msgspec.Raw:
    """A number token written exactly as given (JSON numbers keep their trailing zeros)."""
    return msgspec.Raw(text.encode())


class KrakenProtocol(Protocol):
    exchange: ClassVar[Exchange] = Exchange.KRAKEN
    endpoints: ClassVar[dict[str, str]] = {"ws": "/v2", "rest": ""}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/0/public/OHLC", self._rest_ohlc)]

    async def _rest_ohlc(self, request: web.Request) -> web.Response:
        """GET /0/public/OHLC?pair=BTCUSD&interval=1&since=<s>: the 720 most recent after `since`, the open one last."""
        query = request.query
        minutes = query_int(query.get("interval", "1"))
        since = query_int(query.get("since", "0"))
        pair = query.get("pair", "")
        symbol = next((f"{pair[: -len(q)]}/{q}" for q in REST_QUOTES if pair.endswith(q) and len(pair) > len(q)), pair)
        market = self.market(symbol) if minutes in OHLC_INTERVALS and since is not None else None
        if market is None or minutes is None or since is None:
            return web.json_response({"error": ["EQuery:Unknown asset pair"]})
        candles = self.history(market, Interval(minutes * 60), None, None, REST_OHLC_COUNT)
        rows = [
            [
                c.start_s, self.px(market, c.open), self.px(market, c.high), self.px(market, c.low),
                self.px(market, c.close), self.px(market, c.close), self.sz(market, c.volume), c.trades,
            ]
            for c in candles
            if c.start_s > since
        ]  # fmt: skip
        last = candles[-1].start_s if candles else 0
        return web.Response(
            text=dumps({"error": [], "result": {pair: rows, "last": last}}), content_type="application/json"
        )

    number_style: ClassVar[NumberStyle] = NumberStyle.FIXED
    has_checksum: ClassVar[bool] = True
    malformed: ClassVar[str] = '{"channel":"book","type":"update","data":[{"symbol":"BTC/US'

    def split_symbol(self, symbol: str) -> tuple[str, str] | None:
        parts = symbol.split("/")
        if len(parts) != 2 or not all(p.isalnum() and p.isupper() for p in parts):
            return None
        return parts[0], parts[1]

    def _times(self, time_in: int) -> dict[str, str]:
        return {"time_in": iso_time(time_in), "time_out": iso_time(time.time_ns())}

    def on_open(self, conn: Connection, request: web.Request) -> None:
        # {"channel":"status","type":"update","data":[{"version":"2.0.10","system":"online",
        #  "api_version":"v2","connection_id":12072546403441331453}]}
        connection_id = int(conn.id.replace("-", "")[:16], 16)
        self.send(
            conn,
            dumps(
                {
                    "channel": "status",
                    "type": "update",
                    "data": [
                        {"version": "2.0.10", "system": "online", "api_version": "v2", "connection_id": connection_id}
                    ],
                }
            ),
        )

    def _reply(
        self,
        conn: Connection,
        method: str,
        req_id: Any,
        time_in: int,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        symbol: str | None = None,
    ) -> None:
        # {"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,
        #  "symbol":"ETH/BTC"},"success":true,"time_in":"...","time_out":"..."}
        # {"error":"Subscription depth not supported","method":"subscribe","success":false,
        #  "time_in":"2026-08-16T23:54:19.629313Z","time_out":"2026-08-16T23:54:19.629343Z"}
        body: dict[str, Any] = {"error": error} if error is not None else {}
        body["method"] = method
        if req_id is not None:
            body["req_id"] = req_id
        if result is not None:
            body["result"] = result
        body["success"] = error is None
        if symbol is not None:
            body["symbol"] = symbol
        body.update(self._times(time_in))
        self.send(conn, dumps(body))

    def on_text(self, conn: Connection, text: str) -> None:
        time_in = time.time_ns()
        try:
            request = loads(text) if len(text) <= MAX_REQUEST_BYTES else None
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            self._reply(conn, "", None, time_in, error="Malformed request")
            return
        method = request.get("method")
        req_id = request.get("req_id")
        if method == "ping":
            # {"method":"pong","req_id":101,"time_in":"...","time_out":"..."}
            body: dict[str, Any] = {"method": "pong"}
            if req_id is not None:
                body["req_id"] = req_id
            self.send(conn, dumps(body | self._times(time_in)))
        elif method in ("subscribe", "unsubscribe"):
            params = request.get("params")
            if not isinstance(params, dict):
                self._reply(conn, method, req_id, time_in, error="Missing params")
                return
            if method == "subscribe":
                conn.subscribe_messages += 1
            self._subscription(conn, method, params, req_id, time_in)
        else:
            self._reply(conn, str(method), req_id, time_in, error=f"Method {method} not found")

    @staticmethod
    def _options(kind: FeedKind, params: dict[str, Any]) -> tuple[int | None, int | None, str] | str:
        """(depth, interval, event_trigger) of a subscription, or the error message."""
        depth = params.get("depth", 10) if kind is FeedKind.BOOK else None
        if depth is not None and depth not in BOOK_DEPTHS:
            return "Subscription depth not supported"
        interval = params.get("interval", 1) if kind is FeedKind.CANDLES else None
        if interval is not None and interval not in OHLC_INTERVALS:
            return "Subscription interval not supported"
        trigger = params.get("event_trigger", "trades") if kind is FeedKind.TICKER else ""
        if trigger not in ("", "trades", "bbo"):
            return "Invalid event_trigger"
        return depth, interval, trigger

    def _subscription(self, conn: Connection, method: str, params: dict[str, Any], req_id: Any, time_in: int) -> None:
        channel = params.get("channel")
        kind = _CHANNELS.get(channel) if isinstance(channel, str) else None
        symbols = params.get("symbol")
        options = self._options(kind, params) if kind is not None else ""
        if channel in _PRIVATE:
            error = "Token required"
        elif kind is None:
            error = f"Channel {channel} not supported"
        elif not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
            error = "Missing symbol"
        elif isinstance(options, str):
            error = options
        else:
            depth, interval, trigger = options
            snapshot = bool(params.get("snapshot", kind is not FeedKind.TRADES))
            result: dict[str, Any] = {"channel": channel}
            if depth is not None:
                result["depth"] = depth
            if interval is not None:
                result["interval"] = interval
            if trigger:
                result["event_trigger"] = trigger
            for symbol in symbols:
                key = f"{channel}|{symbol}|{depth or interval or trigger}"
                if method == "unsubscribe":
                    self._unsubscribe(conn, key, req_id, time_in, result | {"symbol": symbol})
                else:
                    feed_kw = {
                        "depth": depth,
                        "variant": trigger,
                        "interval": Interval(interval * 60) if interval else None,
                    }
                    self._subscribe(
                        conn,
                        kind,
                        key,
                        symbol,
                        snapshot=snapshot,
                        req_id=req_id,
                        time_in=time_in,
                        result=result,
                        feed_kw=feed_kw,
                    )
            return
        self._reply(conn, method, req_id, time_in, error=error)

    def _unsubscribe(self, conn: Connection, key: str, req_id: Any, time_in: int, result: dict[str, Any]) -> None:
        feed = conn.feeds.get(key)
        if feed is None:
            self._reply(conn, "unsubscribe", req_id, time_in, error="Subscription Not Found", symbol=result["symbol"])
            return
        self.detach(conn, feed)
        self._reply(conn, "unsubscribe", req_id, time_in, result=result)

    def _subscribe(
        self,
        conn: Connection,
        kind: FeedKind,
        key: str,
        symbol: str,
        *,
        snapshot: bool,
        req_id: Any,
        time_in: int,
        result: dict[str, Any],
        feed_kw: dict[str, Any],
    ) -> None:
        market = self.market(symbol)
        if market is None:
            self._reply(
                conn, "subscribe", req_id, time_in, error=f"Currency pair not supported {symbol}", symbol=symbol
            )
            return
        if key in conn.feeds:
            self._reply(conn, "subscribe", req_id, time_in, error="Already subscribed", symbol=symbol)
            return
        feed = self.feed(key, kind, market, **feed_kw)
        self.attach(conn, feed)
        self._reply(conn, "subscribe", req_id, time_in, result=result | {"snapshot": snapshot, "symbol": symbol})
        if snapshot:
            self._send_snapshot(conn, feed, market)

    # -- renderers ------------------------------------------------------------------------

    def _levels(self, market: Market, levels: list[tuple[int, int]]) -> list[dict[str, msgspec.Raw]]:
        texts = self.level_texts(market)
        return [{"price": _raw(price), "qty": _raw(size)} for price, size in map(texts.__getitem__, levels)]

    def _checksum(self, market: Market) -> int:
        texts, book = self.level_texts(market), market.book
        value = kraken_checksum(
            list(map(texts.__getitem__, book.bids.top(CHECKSUM_DEPTH))),
            list(map(texts.__getitem__, book.asks.top(CHECKSUM_DEPTH))),
        )
        return value ^ 0x5A5A5A5A if self.take_corrupt(market) else value

    def _send_snapshot(self, conn: Connection, feed: Feed, market: Market) -> None:
        now_text = iso_time(time.time_ns())
        if feed.kind is FeedKind.BOOK:
            # {"channel":"book","type":"snapshot","data":[{"symbol":"ETH/BTC","bids":[{"price":
            #  0.031348,"qty":0.03740000},...],"asks":[...],"checksum":3619791617,
            #  "timestamp":"2026-08-26T15:16:16.637831Z"}]}
            depth = feed.depth or 10
            data = {
                "symbol": market.symbol,
                "bids": self._levels(market, market.book.bids.top(depth)),
                "asks": self._levels(market, market.book.asks.top(depth)),
                "checksum": self._checksum(market),
                "timestamp": now_text,
            }
            self.send(conn, dumps({"channel": "book", "type": "snapshot", "data": [data]}), feed)
        elif feed.kind is FeedKind.TICKER:
            self.send(conn, dumps({"channel": "ticker", "type": "snapshot", "data": [self._ticker(market)]}), feed)
        elif feed.kind is FeedKind.TRADES:
            trades = [self._trade(market, t) for t in market.recent_trades]
            self.send(conn, dumps({"channel": "trade", "type": "snapshot", "data": trades}), feed)
        elif feed.kind is FeedKind.CANDLES and feed.interval is not None:
            candle = market.candle(feed.interval, int(time.time()))
            self.send(
                conn,
                dumps(
                    {"channel": "ohlc", "type": "snapshot", "timestamp": now_text, "data": [self._ohlc(market, candle)]}
                ),
                feed,
            )

    def render_book(self, feed: Feed, update: BookUpdate) -> str | None:
        market = update.market
        depth = feed.depth or 10
        bids = update.view(Side.BID, depth, report_pushed_out=False)
        asks = update.view(Side.ASK, depth, report_pushed_out=False)
        if not bids and not asks:
            return None
        # {"channel":"book","type":"update","data":[{"symbol":"ETH/BTC","bids":[{"price":
        #  0.031347,"qty":0.00000000},{"price":0.031329,"qty":19.07893401}],"asks":[],
        #  "checksum":2505869009,"timestamp":"2026-08-26T15:16:16.730423Z"}]}
        data = {
            "symbol": market.symbol,
            "bids": self._levels(market, bids),
            "asks": self._levels(market, asks),
            "checksum": self._checksum(market),
            "timestamp": iso_time(update.ts_ms * 1_000_000),
        }
        return dumps({"channel": "book", "type": "update", "data": [data]})

    def on_book(self, update: BookUpdate) -> None:
        super().on_book(update)
        # Tickers with event_trigger "bbo" follow the best bid and offer.
        for feed in list(self.by_market.get(update.market, {}).values()):
            if feed.kind is FeedKind.TICKER and feed.variant == "bbo":
                bbo = self.bbo(update.market)
                if bbo is not None and bbo != feed.last:
                    feed.last = bbo
                    self.broadcast(
                        feed, dumps({"channel": "ticker", "type": "update", "data": [self._ticker(update.market)]})
                    )

    def _trade(self, market: Market, trade: Trade) -> dict[str, Any]:
        return {
            "symbol": market.symbol,
            "side": trade.taker.value,
            "price": _raw(self.px(market, trade.price)),
            "qty": _raw(self.sz(market, trade.size)),
            "ord_type": "market" if trade.trade_id % 3 else "limit",
            "trade_id": trade.trade_id,
            "timestamp": iso_time(trade.ts_ms * 1_000_000),
        }

    def render_trade(self, feed: Feed, trade: Trade) -> str | None:
        market = feed.market
        if market is None:
            return None
        if feed.kind is FeedKind.TRADES:
            # {"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy",
            #  "price":105944.2,"qty":0.00027625,"ord_type":"limit","trade_id":10218208,
            #  "timestamp":"2023-10-06T17:35:55.440295Z"}]}
            return dumps({"channel": "trade", "type": "update", "data": [self._trade(market, trade)]})
        if feed.kind is FeedKind.TICKER and feed.variant == "trades":
            return dumps({"channel": "ticker", "type": "update", "data": [self._ticker(market)]})
        if feed.kind is FeedKind.CANDLES and feed.interval is not None:
            # OHLC updates are generated on trade events.
            candle = market.candle(feed.interval, trade.ts_ms // 1000)
            return dumps(
                {
                    "channel": "ohlc",
                    "type": "update",
                    "timestamp": iso_time(trade.ts_ms * 1_000_000),
                    "data": [self._ohlc(market, candle)],
                }
            )
        return None

    def _ticker(self, market: Market) -> dict[str, Any]:
        stats = market.stats
        bbo = self.bbo(market) or ((stats.last, 0), (stats.last, 0))
        vwap = stats.quote_volume // stats.volume if stats.volume else stats.last
        change = stats.last - stats.open
        percent = f"{change * 100 / stats.open:.2f}" if stats.open else "0.00"
        # {"symbol":"BTC/USD","bid":105944.20,"bid_qty":2.5,"ask":105944.30,"ask_qty":3.2,
        #  "last":105899.40,"volume":163.28908096,"vwap":105904.39279,"low":104711.00,
        #  "high":106613.10,"change":250.00,"change_pct":0.24,"timestamp":"..."}
        return {
            "symbol": market.symbol,
            "bid": _raw(self.px(market, bbo[0][0])),
            "bid_qty": _raw(self.sz(market, bbo[0][1])),
            "ask": _raw(self.px(market, bbo[1][0])),
            "ask_qty": _raw(self.sz(market, bbo[1][1])),
            "last": _raw(self.px(market, stats.last)),
            "volume": _raw(self.sz(market, stats.volume)),
            "vwap": _raw(self.px(market, vwap)),
            "low": _raw(self.px(market, stats.low)),
            "high": _raw(self.px(market, stats.high)),
            "change": _raw(self.px(market, change)),
            "change_pct": _raw(percent),
            "timestamp": iso_time(time.time_ns()),
        }

    def _ohlc(self, market: Market, candle: Candle) -> dict[str, Any]:
        vwap = candle.quote_volume // candle.volume if candle.volume else candle.close
        # {"symbol":"BTC/USD","open":106038.2,"high":106044.3,"low":106038.1,"close":106040.1,
        #  "trades":12,"volume":30927.68066226,"vwap":106039.6,"interval_begin":
        #  "2023-10-04T16:25:00.000000000Z","interval":1,"timestamp":"2023-10-04T16:26:00.000000Z"}
        return {
            "symbol": market.symbol,
            "open": _raw(self.px(market, candle.open)),
            "high": _raw(self.px(market, candle.high)),
            "low": _raw(self.px(market, candle.low)),
            "close": _raw(self.px(market, candle.close)),
            "trades": candle.trades,
            "volume": _raw(self.sz(market, candle.volume)),
            "vwap": _raw(self.px(market, vwap)),
            "interval_begin": iso_time(candle.start_s * 1_000_000_000, 9),
            "interval": candle.interval.seconds // 60,
            "timestamp": iso_time(candle.end_s * 1_000_000_000),
        }

    def render_candle(self, feed: Feed, candle: Candle, now: float) -> str | None:
        # Running candles are pushed on trades (render_trade); only closes come here.
        market = feed.market
        if market is None or not candle.closed:
            return None
        return dumps(
            {
                "channel": "ohlc",
                "type": "update",
                "timestamp": iso_time(time.time_ns()),
                "data": [self._ohlc(market, candle)],
            }
        )

    def on_second(self, now: float) -> None:
        # {"channel":"heartbeat"} once a second to every connection with a subscription.
        heartbeat = dumps({"channel": "heartbeat"})
        for conn in list(self.server.connections.values()):
            if conn.feeds:
                self.send(conn, heartbeat)
