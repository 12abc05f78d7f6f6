"""Binance spot: ``wss://stream.binance.com:9443`` /ws, /ws/<streams>, /stream?streams= and
the REST depth snapshot ``GET /api/v3/depth`` whose lastUpdateId chains with the diff stream.

Limits as documented (web-socket-streams.md): a ping frame every 20 s and a disconnect
when its pong is a minute late; 5 incoming frames a second (pings, pongs and JSON
requests all count) or the connection is dropped; 1024 streams per connection.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec
from aiohttp import web

from collectors.simulator.connection import CloseCode, CloseReason, Connection, ControlKind
from collectors.simulator.market import BookUpdate, Candle, Interval, Market, Side, TakerSide, Trade
from collectors.simulator.protocols.base import (
    MAX_REQUEST_BYTES,
    Feed,
    FeedKind,
    NumberStyle,
    Protocol,
    dumps,
    loads,
    now_ms,
    query_int,
)
from shared.topics import Exchange

if TYPE_CHECKING:
    from collectors.simulator.server import ExchangeServer

_STREAM_RE: Final = re.compile(
    r"(?P<symbol>[a-z0-9]{2,20})@(?P<kind>trade|aggTrade|bookTicker|ticker|miniTicker"
    r"|kline_(?P<tf>1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)"
    r"|depth(?P<levels>5|10|20)?(?:@(?:100|1000)ms)?)"
)
_INTERVALS: Final[dict[str, Interval]] = {
    "1s": Interval(1),
    "1m": Interval(60),
    "3m": Interval(180),
    "5m": Interval(300),
    "15m": Interval(900),
    "30m": Interval(1800),
    "1h": Interval(3600),
    "2h": Interval(7200),
    "4h": Interval(14400),
    "6h": Interval(21600),
    "8h": Interval(28800),
    "12h": Interval(43200),
    "1d": Interval(86400),
    "3d": Interval(259200),
    "1w": Interval(604800),
    "1M": Interval(months=1),
}
# Longest first, so "USDT" wins over "USD" and "FDUSD" over "USD".
_QUOTES: Final = (
    "FDUSD",
    "USDT",
    "USDC",
    "TUSD",
    "BUSD",
    "USDP",
    "EUR",
    "TRY",
    "BRL",
    "GBP",
    "JPY",
    "BTC",
    "ETH",
    "BNB",
    "DAI",
    "USD",
)
_METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_RE: Final = re.compile(r"[A-Za-z0-9]{1,36}")
MAX_DEPTH_LIMIT: Final = 5000
MAX_KLINES: Final = 1000
KLINES_WEIGHT: Final = 2
USED_WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1M"


def depth_weight(limit: int) -> int:
    """GET /api/v3/depth's request weight by `limit`, as Binance documents it."""
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def _error(code: int, msg: str, request_id: object = None) -> str:
    # {"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}
    return dumps({"error": {"code": code, "msg": msg}, "id": request_id})


class BinanceProtocol(Protocol):
    exchange: ClassVar[Exchange] = Exchange.BINANCE
    endpoints: ClassVar[dict[str, str]] = {"ws": "/ws", "stream": "/stream", "rest": ""}

    def __init__(self, server: ExchangeServer) -> None:
        super().__init__(server)
        self._weight_minute = 0
        self._weight_used = 0

    number_style: ClassVar[NumberStyle] = NumberStyle.FIXED8
    malformed: ClassVar[str] = '{"stream":"btcusdt@trade","data":{"e":"trade","E":17'

    def split_symbol(self, symbol: str) -> tuple[str, str] | None:
        upper = symbol.upper()
        if not upper.isalnum() or not 2 <= len(upper) <= 20:
            return None
        for quote in _QUOTES:
            if upper.endswith(quote) and len(upper) > len(quote):
                return upper[: -len(quote)], quote
        return upper[:-3], upper[-3:]

    # -- handshake and requests ---------------------------------------------------------

    def _url_streams(self, request: web.Request) -> list[str] | None:
        stream = request.path.startswith("/stream")
        text = request.query.get("streams", "") if stream else request.path[len("/ws") :]
        names = [name for name in text.split("/") if name]
        return names if all(_STREAM_RE.fullmatch(name) for name in names) else None

    def accept(self, request: web.Request) -> web.StreamResponse | None:
        if not (request.path in ("/ws", "/stream") or request.path.startswith("/ws/")):
            return web.json_response({"code": -1, "msg": "Not found"}, status=404)
        streams = self._url_streams(request)
        if streams is None:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        if len(streams) > self.config.binance_max_streams:
            return web.json_response({"code": -1, "msg": "Too many streams"}, status=400)
        return None

    def on_open(self, conn: Connection, request: web.Request) -> None:
        conn.combined = request.path.startswith("/stream")
        for name in self._url_streams(request) or []:
            self._subscribe_stream(conn, name)

    def on_frame(self, conn: Connection, now: float) -> bool:
        # Pings, pongs and JSON requests all count against the 5-per-second limit.
        conn.incoming.append(now)
        limit = self.config.binance_max_incoming
        window = conn.incoming
        if len(window) > limit and now - window[-limit - 1] < 1.0:
            conn.close(CloseReason.RATE_LIMIT, CloseCode.POLICY_VIOLATION, "Too many requests")
            return False
        return True

    def on_text(self, conn: Connection, text: str) -> None:
        if len(text) > MAX_REQUEST_BYTES:
            self.send(conn, _error(2, "Invalid request: message too large"))
            return
        try:
            request = loads(text)
        except msgspec.DecodeError:
            self.send(conn, _error(3, "Invalid JSON: expected value at line 1 column 1"))
            return
        if not isinstance(request, dict):
            self.send(conn, _error(2, "Invalid request: expected an object"))
            return
        request_id = request.get("id")
        valid_id = (
            request_id is None
            or (isinstance(request_id, int) and not isinstance(request_id, bool))
            or (isinstance(request_id, str) and _ID_RE.fullmatch(request_id))
        )
        if not valid_id:
            self.send(conn, _error(2, "Invalid request: request ID must be an unsigned integer"))
            return
        method = request.get("method")
        if method is None:
            self.send(conn, _error(2, "Invalid request: missing field `method`", request_id))
        elif method not in _METHODS:
            expected = ", ".join(f"`{m}`" for m in _METHODS)
            self.send(
                conn, _error(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", request_id)
            )
        else:
            self._handle(conn, method, request.get("params"), request_id)

    def _handle(self, conn: Connection, method: str, params: Any, request_id: Any) -> None:
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) and _STREAM_RE.fullmatch(p) for p in params):
                self.send(conn, _error(2, "Invalid request: invalid stream", request_id))
            elif method == "SUBSCRIBE":
                self._subscribe(conn, params, request_id)
            else:
                for name in params:
                    feed = conn.feeds.get(name)
                    if feed is not None:
                        self.detach(conn, feed)
                self.send(conn, dumps({"result": None, "id": request_id}))
        elif method == "LIST_SUBSCRIPTIONS":
            self.send(conn, dumps({"result": list(conn.feeds), "id": request_id}))
        else:
            self._property(conn, method, params, request_id)

    def _subscribe(self, conn: Connection, streams: list[str], request_id: Any) -> None:
        conn.subscribe_messages += 1
        fresh = [name for name in dict.fromkeys(streams) if name not in conn.feeds]
        if len(conn.feeds) + len(fresh) > self.config.binance_max_streams:
            self.send(conn, _error(2, "Invalid request: too many streams", request_id))
            return
        # The ack precedes the first event of the new streams.
        self.send(conn, dumps({"result": None, "id": request_id}))
        for name in fresh:
            self._subscribe_stream(conn, name)

    def _property(self, conn: Connection, method: str, params: Any, request_id: Any) -> None:
        """SET_PROPERTY / GET_PROPERTY: only "combined" exists."""
        if method == "SET_PROPERTY":
            if not (isinstance(params, list) and len(params) == 2 and params[0] == "combined"):
                self.send(conn, _error(0, "Unknown property", request_id))
            elif not isinstance(params[1], bool):
                self.send(conn, _error(1, "Invalid value type: expected Boolean", request_id))
            else:
                conn.combined = params[1]
                self.send(conn, dumps({"result": None, "id": request_id}))
        elif params != ["combined"]:
            self.send(conn, _error(0, "Unknown property", request_id))
        else:
            self.send(conn, dumps({"result": conn.combined, "id": request_id}))

    def _subscribe_stream(self, conn: Connection, name: str) -> None:
        match = _STREAM_RE.fullmatch(name)
        if match is None:
            return
        market = self.market(match["symbol"].upper())
        if market is None:
            return
        kind_text = match["kind"]
        if kind_text.startswith("depth"):
            levels = match["levels"]
            if levels:
                feed = self.feed(name, FeedKind.TOP, market, depth=int(levels))
            else:
                feed = self.feed(name, FeedKind.BOOK, market)
        elif kind_text.startswith("kline_"):
            feed = self.feed(name, FeedKind.CANDLES, market, interval=_INTERVALS[match["tf"]], variant=match["tf"])
        elif kind_text in ("trade", "aggTrade"):
            feed = self.feed(name, FeedKind.TRADES, market, variant=kind_text)
        elif kind_text == "bookTicker":
            feed = self.feed(name, FeedKind.BBO, market)
        else:
            feed = self.feed(name, FeedKind.TICKER, market, variant=kind_text)
        self.attach(conn, feed)

    def wrap(self, conn: Connection, feed: Feed | None, payload: str) -> str:
        if conn.combined and feed is not None:
            # {"stream":"btcusdt@trade","data":{"e":"trade",...}}
            return f'{{"stream":"{feed.key}","data":{payload}}}'
        return payload

    # -- keep-alive ---------------------------------------------------------------------

    def on_pong(self, conn: Connection, data: bytes) -> None:
        # Unsolicited pongs are allowed but only the echo of our ping keeps the connection.
        if conn.ping_payload is not None and data == conn.ping_payload:
            conn.ping_payload = None
            conn.pong_due = None

    def check(self, conn: Connection, now: float) -> None:
        if conn.pong_due is not None and now > conn.pong_due:
            conn.close(CloseReason.PONG_TIMEOUT, CloseCode.POLICY_VIOLATION, "Pong timeout")
            return
        if now - conn.last_ping >= self.config.ping_interval:
            conn.last_ping = now
            payload = str(now_ms()).encode()
            conn.send_control(ControlKind.PING, payload)
            if conn.pong_due is None:
                conn.ping_payload = payload
                conn.pong_due = now + self.config.pong_timeout

    # -- renderers ------------------------------------------------------------------------

    def render_book(self, feed: Feed, update: BookUpdate) -> str | None:
        market = update.market
        if feed.kind is FeedKind.BBO:
            return self._book_ticker(feed, market)
        if feed.kind is FeedKind.TOP:
            depth = feed.depth or 5
            if not (
                update.view(Side.BID, depth, report_pushed_out=True)
                or update.view(Side.ASK, depth, report_pushed_out=True)
            ):
                return None
            return self.partial_depth(market, depth)
        # {"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,
        #  "b":[["0.0024","10"]],"a":[["0.0026","100"]]}
        return dumps(
            {
                "e": "depthUpdate",
                "E": now_ms(),
                "s": market.symbol,
                "U": update.update_first,
                "u": update.update_last,
                "b": self.text_levels(market, update.full(Side.BID)),
                "a": self.text_levels(market, update.full(Side.ASK)),
            }
        )

    def partial_depth(self, market: Market, depth: int) -> str:
        # {"lastUpdateId":160,"bids":[["0.0024","10"]],"asks":[["0.0026","100"]]}
        return dumps(
            {
                "lastUpdateId": market.update_id,
                "bids": self.text_levels(market, market.book.bids.top(depth)),
                "asks": self.text_levels(market, market.book.asks.top(depth)),
            }
        )

    def _book_ticker(self, feed: Feed, market: Market) -> str | None:
        # {"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",
        #  "A":"40.66000000"}
        bbo = self.bbo(market)
        if bbo is None or bbo == feed.last:
            return None
        feed.last = bbo
        (bid, bid_size), (ask, ask_size) = bbo
        return dumps(
            {
                "u": market.update_id,
                "s": market.symbol,
                "b": self.px(market, bid),
                "B": self.sz(market, bid_size),
                "a": self.px(market, ask),
                "A": self.sz(market, ask_size),
            }
        )

    def render_trade(self, feed: Feed, trade: Trade) -> str | None:
        market = feed.market
        if feed.kind is not FeedKind.TRADES or market is None:
            return None
        maker_is_buyer = trade.taker is TakerSide.SELL
        if feed.variant == "aggTrade":
            # {"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100",
            #  "f":100,"l":105,"T":1672515782136,"m":true,"M":true}
            return dumps(
                {
                    "e": "aggTrade",
                    "E": now_ms(),
                    "s": market.symbol,
                    "a": trade.trade_id,
                    "p": self.px(market, trade.price),
                    "q": self.sz(market, trade.size),
                    "f": trade.trade_id,
                    "l": trade.trade_id,
                    "T": trade.ts_ms,
                    "m": maker_is_buyer,
                    "M": True,
                }
            )
        # {"e":"trade","E":1788481292965,"s":"BTCUSDT","t":6653570805,"p":"81207.45000000",
        #  "q":"0.00016000","T":1788481292964,"m":true,"M":true}
        return dumps(
            {
                "e": "trade",
                "E": now_ms(),
                "s": market.symbol,
                "t": trade.trade_id,
                "p": self.px(market, trade.price),
                "q": self.sz(market, trade.size),
                "T": trade.ts_ms,
                "m": maker_is_buyer,
                "M": True,
            }
        )

    def render_ticker(self, feed: Feed, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        stats = market.stats
        event_ms = now_ms()
        if feed.variant == "miniTicker":
            # {"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025","o":"0.0010",
            #  "h":"0.0025","l":"0.0010","v":"10000","q":"18"}
            return dumps(
                {
                    "e": "24hrMiniTicker",
                    "E": event_ms,
                    "s": market.symbol,
                    "c": self.px(market, stats.last),
                    "o": self.px(market, stats.open),
                    "h": self.px(market, stats.high),
                    "l": self.px(market, stats.low),
                    "v": self.sz(market, stats.volume),
                    "q": self.quote_volume(market, stats.quote_volume),
                }
            )
        bbo = self.bbo(market) or ((stats.last, 0), (stats.last, 0))
        change = stats.last - stats.open
        percent = f"{change * 100 / stats.open:.3f}" if stats.open else "0.000"
        vwap = stats.quote_volume // stats.volume if stats.volume else stats.last
        # {"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00",
        #  "w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10","a":"0.0026",
        #  "A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18","O":0,
        #  "C":86400000,"F":0,"L":18150,"n":18151}
        return dumps(
            {
                "e": "24hrTicker",
                "E": event_ms,
                "s": market.symbol,
                "p": self.px(market, change),
                "P": percent,
                "w": self.px(market, vwap),
                "x": self.px(market, stats.open),
                "c": self.px(market, stats.last),
                "Q": self.sz(market, stats.last_size),
                "b": self.px(market, bbo[0][0]),
                "B": self.sz(market, bbo[0][1]),
                "a": self.px(market, bbo[1][0]),
                "A": self.sz(market, bbo[1][1]),
                "o": self.px(market, stats.open),
                "h": self.px(market, stats.high),
                "l": self.px(market, stats.low),
                "v": self.sz(market, stats.volume),
                "q": self.quote_volume(market, stats.quote_volume),
                "O": max(stats.opened_ms, event_ms - 86_400_000),
                "C": event_ms,
                "F": stats.first_trade_id if stats.trades else -1,
                "L": market.next_trade_id - 1 if stats.trades else -1,
                "n": stats.trades,
            }
        )

    def render_candle(self, feed: Feed, candle: Candle, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        # {"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,
        #  "s":"BNBBTC","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025",
        #  "l":"0.0015","v":"1000","n":100,"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}
        return dumps(
            {
                "e": "kline",
                "E": now_ms(),
                "s": market.symbol,
                "k": {
                    "t": candle.start_s * 1000,
                    "T": candle.end_s * 1000 - 1,
                    "s": market.symbol,
                    "i": feed.variant,
                    "f": candle.first_trade_id,
                    "L": candle.last_trade_id,
                    "o": self.px(market, candle.open),
                    "c": self.px(market, candle.close),
                    "h": self.px(market, candle.high),
                    "l": self.px(market, candle.low),
                    "v": self.sz(market, candle.volume),
                    "n": candle.trades,
                    "x": candle.closed,
                    "q": self.quote_volume(market, candle.quote_volume),
                    "V": self.sz(market, candle.volume // 2),
                    "Q": self.quote_volume(market, candle.quote_volume // 2),
                    "B": "0",
                },
            }
        )

    # -- REST -----------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v3/depth", self._rest_depth),
            web.get("/api/v3/klines", self._rest_klines),
            web.get("/api/v3/exchangeInfo", self._rest_exchange_info),
            web.get("/api/v3/ping", self._rest_ping),
            web.get("/api/v3/time", self._rest_time),
        ]

    def _spend(self, weight: int) -> tuple[dict[str, str], web.Response | None]:
        """Count `weight` against this minute's limit; the headers to send, and a 429 when over it."""
        now = time.time()
        minute = int(now // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        self._weight_used += weight
        headers = {USED_WEIGHT_HEADER: str(self._weight_used)}
        if self._weight_used > self.config.binance_weight_per_minute:
            retry = str(max(1, 60 - int(now % 60)))
            body = {"code": -1003, "msg": "Too much request weight used; current limit is per minute."}
            return headers, web.json_response(body, status=429, headers={**headers, "Retry-After": retry})
        return headers, None

    async def _rest_depth(self, request: web.Request) -> web.Response:
        """GET /api/v3/depth?symbol=BTCUSDT&limit=1000: lastUpdateId chains with the diffs."""
        symbol = request.query.get("symbol", "")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_DEPTH_LIMIT:
            return web.json_response(
                {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}, status=400
            )
        headers, refused = self._spend(depth_weight(limit))
        if refused is not None:
            return refused
        market = self.market(symbol) if symbol.isupper() else None
        if market is None:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        return web.Response(text=self.partial_depth(market, limit), content_type="application/json", headers=headers)

    async def _rest_klines(self, request: web.Request) -> web.Response:
        """GET /api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=&endTime=&limit=500 (weight 2), oldest first."""
        query = request.query
        interval = _INTERVALS.get(query.get("interval", ""))
        limit = query_int(query.get("limit", "500"))
        start, end = query_int(query.get("startTime")), query_int(query.get("endTime"))
        if interval is None or interval.seconds == 1 or limit is None or not 1 <= limit <= MAX_KLINES:
            return web.json_response({"code": -1120, "msg": "Invalid interval or limit."}, status=400)
        headers, refused = self._spend(KLINES_WEIGHT)
        if refused is not None:
            return refused
        symbol = query.get("symbol", "")
        market = self.market(symbol) if symbol.isupper() else None
        if market is None:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        candles = self.history_ms(market, interval, start, end, limit)
        rows = [
            [
                c.start_s * 1000, self.px(market, c.open), self.px(market, c.high), self.px(market, c.low),
                self.px(market, c.close), self.sz(market, c.volume), c.end_s * 1000 - 1,
                self.quote_volume(market, c.quote_volume), c.trades, self.sz(market, c.volume // 2),
                self.quote_volume(market, c.quote_volume // 2), "0",
            ]
            for c in candles
        ]  # fmt: skip
        return web.Response(text=dumps(rows), content_type="application/json", headers=headers)

    async def _rest_exchange_info(self, request: web.Request) -> web.Response:
        """A minimal exchangeInfo: the asked symbol, or every market served so far."""
        symbol = request.query.get("symbol")
        if symbol is None:
            markets = list(self.server.markets.values())
        else:
            market = self.market(symbol) if symbol.isupper() else None
            if market is None:
                return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
            markets = [market]
        return web.Response(
            content_type="application/json",
            text=dumps(
                {
                    "timezone": "UTC",
                    "serverTime": now_ms(),
                    "rateLimits": [],
                    "exchangeFilters": [],
                    "symbols": [self._symbol_info(market) for market in markets],
                }
            ),
        )

    def _symbol_info(self, market: Market) -> dict[str, Any]:
        instrument = market.instrument
        tick = self.num(1, instrument.price_decimals)
        step = self.num(1, instrument.size_decimals)
        return {
            "symbol": instrument.symbol,
            "status": "TRADING",
            "baseAsset": instrument.base,
            "baseAssetPrecision": 8,
            "quoteAsset": instrument.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "isSpotTradingAllowed": True,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000.00000000", "stepSize": step},
            ],
        }

    async def _rest_ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _rest_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})
