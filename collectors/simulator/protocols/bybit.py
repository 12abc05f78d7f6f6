"""Bybit v5 spot public stream: ``wss://stream.bybit.com/v5/public/spot``.

Order books are a snapshot then deltas whose ``u`` grows by exactly one per message of a
topic (``seq`` is the cross sequence: monotonic, not contiguous); ``orderbook.1`` is
snapshots only. A subscribe carries at most 10 args on spot. A connection with neither
ping-pong nor data for 10 minutes is cut (configurable, for tests).
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar, Final

import msgspec
from aiohttp import web

from collectors.simulator.connection import CloseCode, CloseReason, Connection
from collectors.simulator.market import BookUpdate, Candle, Interval, Market, Side, Trade
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

_TOPIC_RE: Final = re.compile(
    r"(?:orderbook\.(?P<depth>1|50|200|1000)|(?P<kind>publicTrade|tickers)"
    r"|kline\.(?P<interval>1|3|5|15|30|60|120|240|360|720|D|W|M))\.(?P<symbol>[A-Z0-9]{2,25})"
)
MAX_KLINES: Final = 1000
_MINUTE_INTERVALS: Final = frozenset({"1", "3", "5", "15", "30", "60", "120", "240", "360", "720"})
_INTERVALS: Final[dict[str, Interval]] = {
    "D": Interval(86400),
    "W": Interval(604800),
    "M": Interval(months=1),
}
_QUOTES: Final = ("USDT", "USDC", "USDE", "EUR", "BRL", "TRY", "BTC", "ETH", "DAI", "MNT")


class BybitProtocol(Protocol):
    exchange: ClassVar[Exchange] = Exchange.BYBIT
    endpoints: ClassVar[dict[str, str]] = {"ws": "/v5/public/spot", "rest": ""}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v5/market/kline", self._rest_kline)]

    async def _rest_kline(self, request: web.Request) -> web.Response:
        """GET /v5/market/kline?category=spot&symbol=BTCUSDT&interval=1&start=&end=&limit=200 (ms), newest first."""
        query = request.query
        text = query.get("interval", "")
        interval = _INTERVALS.get(text) or (Interval(int(text) * 60) if text in _MINUTE_INTERVALS else None)
        limit = query_int(query.get("limit", "200"))
        start, end = query_int(query.get("start")), query_int(query.get("end"))
        symbol = query.get("symbol", "")
        market = self.market(symbol) if query.get("category") == "spot" else None
        if interval is None or limit is None or not 1 <= limit <= MAX_KLINES or market is None:
            return web.json_response({"retCode": 10001, "retMsg": "params error", "result": {}, "time": now_ms()})
        candles = self.history_ms(market, interval, start, end, limit)
        rows = [
            [
                str(c.start_s * 1000), self.px(market, c.open), self.px(market, c.high), self.px(market, c.low),
                self.px(market, c.close), self.sz(market, c.volume), self.quote_volume(market, c.quote_volume),
            ]
            for c in reversed(candles)
        ]  # fmt: skip
        body = {"retCode": 0, "retMsg": "OK", "result": {"symbol": symbol, "category": "spot", "list": rows}}
        return web.Response(text=dumps(body | {"time": now_ms()}), content_type="application/json")

    # Spot prints "75845.4" and "43774", not "75845.40".
    number_style: ClassVar[NumberStyle] = NumberStyle.TRIMMED
    malformed: ClassVar[str] = '{"topic":"orderbook.50.BTCUSDT","ts":1731035685345,"type":"del'

    def split_symbol(self, symbol: str) -> tuple[str, str] | None:
        if not (symbol.isalnum() and symbol.isupper()):
            return None
        for quote in _QUOTES:
            if symbol.endswith(quote) and len(symbol) > len(quote):
                return symbol[: -len(quote)], quote
        return None

    def _reply(self, conn: Connection, op: str, req_id: Any, *, success: bool = True, message: str = "") -> None:
        # {"success":true,"ret_msg":"subscribe","conn_id":"4492c76f-36ec-4e93-afa9-39d7d871d5d2",
        #  "op":"subscribe"}  (req_id is echoed when the request had one)
        body: dict[str, Any] = {"success": success, "ret_msg": message or op, "conn_id": conn.id}
        if req_id is not None:
            body["req_id"] = req_id
        body["op"] = op
        self.send(conn, dumps(body))

    def on_text(self, conn: Connection, text: str) -> None:
        try:
            request = loads(text) if len(text) <= MAX_REQUEST_BYTES else None
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            self._reply(conn, "", None, success=False, message="error:request not json")
            return
        op = request.get("op")
        req_id = request.get("req_id")
        if op == "ping":
            # {"success":true,"ret_msg":"pong","conn_id":"0970e817-...","op":"ping"}
            self._reply(conn, "ping", req_id, message="pong")
        elif op in ("subscribe", "unsubscribe"):
            args = request.get("args")
            if op == "subscribe":
                conn.subscribe_messages += 1
            self._subscription(conn, op, args, req_id)
        else:
            self._reply(conn, str(op), req_id, success=False, message=f"error:illegal op {op}")

    def _subscription(self, conn: Connection, op: str, args: Any, req_id: Any) -> None:
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            self._reply(conn, op, req_id, success=False, message="error:args must be a list")
            return
        if len(args) > self.config.bybit_max_args:
            self._reply(conn, op, req_id, success=False, message=f"error:args size >{self.config.bybit_max_args}")
            return
        bad = [topic for topic in args if not _TOPIC_RE.fullmatch(topic)]
        if bad:
            self._reply(conn, op, req_id, success=False, message=f"error:handler not found,topic:{bad[0]}")
            return
        if op == "unsubscribe":
            for topic in args:
                feed = conn.feeds.get(topic)
                if feed is not None:
                    self.detach(conn, feed)
            self._reply(conn, op, req_id)
            return
        duplicate = [topic for topic in args if topic in conn.feeds]
        if duplicate:
            self._reply(conn, op, req_id, success=False, message=f"error:already subscribed,topic:{duplicate[0]}")
            return
        feeds: list[Feed] = []
        for topic in dict.fromkeys(args):
            feed = self._feed(topic)
            if feed is None:
                self._reply(conn, op, req_id, success=False, message=f"error:handler not found,topic:{topic}")
                return
            feeds.append(feed)
        self._reply(conn, op, req_id)
        for feed in feeds:
            self.attach(conn, feed)
            if feed.kind in (FeedKind.BOOK, FeedKind.TOP) and feed.market is not None:
                self.send(conn, self._orderbook(feed, feed.market, "snapshot", None), feed)

    def _feed(self, topic: str) -> Feed | None:
        match = _TOPIC_RE.fullmatch(topic)
        if match is None:
            return None
        market = self.market(match["symbol"])
        if market is None:
            return None
        if match["depth"]:
            depth = int(match["depth"])
            kind = FeedKind.TOP if depth == 1 else FeedKind.BOOK
            # u starts high, as on the live venue, so no client can assume it starts at 1.
            return self.feed(topic, kind, market, depth=depth, seq=market.update_id // 7)
        if match["interval"]:
            text = match["interval"]
            interval = _INTERVALS.get(text) or Interval(int(text) * 60)
            return self.feed(topic, FeedKind.CANDLES, market, interval=interval, variant=text)
        kind = FeedKind.TRADES if match["kind"] == "publicTrade" else FeedKind.TICKER
        return self.feed(topic, kind, market)

    def check(self, conn: Connection, now: float) -> None:
        if now - max(conn.last_in, conn.last_out) > self.config.bybit_idle_timeout:
            conn.close(CloseReason.IDLE, CloseCode.NORMAL, "idle")

    # -- renderers ------------------------------------------------------------------------

    def _orderbook(self, feed: Feed, market: Market, kind: str, update: BookUpdate | None) -> str:
        depth = feed.depth or 50
        if update is None:
            bids, asks = market.book.bids.top(depth), market.book.asks.top(depth)
        else:
            bids = update.view(Side.BID, depth, report_pushed_out=True)
            asks = update.view(Side.ASK, depth, report_pushed_out=True)
        ts = now_ms()
        # {"topic":"orderbook.50.BTCUSDT","ts":1731035685345,"type":"delta","data":{"s":"BTCUSDT",
        #  "b":[["75848.62","0.014895"],["75837.13","0"]],"a":[["75848.89","0.088149"]],
        #  "u":2876701,"seq":47474967823},"cts":1731035685342}
        return dumps(
            {
                "topic": feed.key,
                "ts": ts,
                "type": kind,
                "data": {
                    "s": market.symbol,
                    "b": self.text_levels(market, bids),
                    "a": self.text_levels(market, asks),
                    "u": feed.seq,
                    "seq": market.seq,
                },
                "cts": market.last_ts_ms,
            }
        )

    def render_book(self, feed: Feed, update: BookUpdate) -> str | None:
        depth = feed.depth or 50
        if not (
            update.view(Side.BID, depth, report_pushed_out=True) or update.view(Side.ASK, depth, report_pushed_out=True)
        ):
            return None
        feed.seq += 1
        if feed.kind is FeedKind.TOP:
            return self._orderbook(feed, update.market, "snapshot", None)
        return self._orderbook(feed, update.market, "delta", update)

    def render_trade(self, feed: Feed, trade: Trade) -> str | None:
        market = feed.market
        if market is None or feed.kind is not FeedKind.TRADES:
            return None
        # {"topic":"publicTrade.BTCUSDT","ts":1774021164273,"type":"snapshot","data":[{"T":
        #  1774021164272,"s":"BTCUSDT","S":"Sell","v":"0.001","p":"69916.8","i":"2290000000090712222",
        #  "BT":false,"RPI":false,"seq":549792210006}]}  (spot has no "L" tick direction)
        item = {
            "T": trade.ts_ms,
            "s": market.symbol,
            "S": trade.taker.value.capitalize(),
            "v": self.sz(market, trade.size),
            "p": self.px(market, trade.price),
            "i": str(trade.trade_id),
            "BT": False,
            "RPI": False,
            "seq": market.seq,
        }
        return dumps({"topic": feed.key, "ts": now_ms(), "type": "snapshot", "data": [item]})

    def render_ticker(self, feed: Feed, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        stats = market.stats
        change = (stats.last - stats.open) / stats.open if stats.open else 0.0
        # {"topic":"tickers.BTCUSDT","ts":1673853746003,"type":"snapshot","cs":2588407389,
        #  "data":{"symbol":"BTCUSDT","lastPrice":"21109.77","highPrice24h":"21426.99",
        #  "lowPrice24h":"20575","prevPrice24h":"20704.93","volume24h":"6780.866843",
        #  "turnover24h":"141946527.22907118","price24hPcnt":"0.0196","usdIndexPrice":"21120.24"}}
        return dumps(
            {
                "topic": feed.key,
                "ts": now_ms(),
                "type": "snapshot",
                "cs": market.seq,
                "data": {
                    "symbol": market.symbol,
                    "lastPrice": self.px(market, stats.last),
                    "highPrice24h": self.px(market, stats.high),
                    "lowPrice24h": self.px(market, stats.low),
                    "prevPrice24h": self.px(market, stats.open),
                    "volume24h": self.sz(market, stats.volume),
                    "turnover24h": self.quote_volume(market, stats.quote_volume),
                    "price24hPcnt": f"{change:.4f}",
                    "usdIndexPrice": self.px(market, stats.last),
                },
            }
        )

    def render_candle(self, feed: Feed, candle: Candle, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        ts = int(time.time() * 1000)
        # {"topic":"kline.1.BTCUSDT","data":[{"start":1719667560000,"end":1719667619999,
        #  "interval":"1","open":"61030","close":"61029.9","high":"61030","low":"61015",
        #  "volume":"10.798","turnover":"658980.4245","confirm":false,"timestamp":1719667601380}],
        #  "ts":1719667601380,"type":"snapshot"}
        item = {
            "start": candle.start_s * 1000,
            "end": candle.end_s * 1000 - 1,
            "interval": feed.variant,
            "open": self.px(market, candle.open),
            "close": self.px(market, candle.close),
            "high": self.px(market, candle.high),
            "low": self.px(market, candle.low),
            "volume": self.sz(market, candle.volume),
            "turnover": self.quote_volume(market, candle.quote_volume),
            "confirm": candle.closed,
            "timestamp": ts,
        }
        return dumps({"topic": feed.key, "data": [item], "ts": ts, "type": "snapshot"})
