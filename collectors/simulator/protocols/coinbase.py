"""Coinbase Advanced Trade market data: ``wss://advanced-trade-ws.coinbase.com``.

One channel per subscribe message; every message carries a per-connection ``sequence_num``
that counts all channels together, so a gap means a lost message. ``level2`` is answered
on channel ``l2_data`` (a snapshot, then updates), candles are five-minute only, and a
client that has not subscribed within 5 seconds is disconnected.
"""

from __future__ import annotations

import time
from typing import ClassVar, Final

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
    iso_time,
    loads,
    query_int,
)
from shared.topics import Exchange

# Marks where a connection's sequence_num goes into an already rendered message.
_SEQ: Final = "\x00"
CANDLE_INTERVAL: Final = Interval(300)
GRANULARITIES: Final = {
    "ONE_MINUTE": Interval(60),
    "FIVE_MINUTE": Interval(300),
    "FIFTEEN_MINUTE": Interval(900),
    "THIRTY_MINUTE": Interval(1800),
    "ONE_HOUR": Interval(3600),
    "TWO_HOUR": Interval(7200),
    "SIX_HOUR": Interval(21600),
    "ONE_DAY": Interval(86400),
}
MAX_CANDLES: Final = 350
TICKER_BATCH_S: Final = 5.0
_CHANNELS: Final[dict[str, FeedKind]] = {
    "level2": FeedKind.BOOK,
    "market_trades": FeedKind.TRADES,
    "ticker": FeedKind.TICKER,
    "ticker_batch": FeedKind.TICKER,
    "candles": FeedKind.CANDLES,
    "heartbeats": FeedKind.HEARTBEAT,
}
_AUTH_CHANNELS: Final = frozenset({"user", "futures_balance_summary"})


def _envelope(channel: str, events: object, *, client_id: bool = True) -> str:
    # {"channel":"l2_data","client_id":"","timestamp":"2026-09-07T01:57:58.894355Z",
    #  "sequence_num":0,"events":[...]}; subscriptions and heartbeats have no client_id.
    head = {"channel": channel, "client_id": ""} if client_id else {"channel": channel}
    head["timestamp"] = iso_time(time.time_ns(), 9)
    prefix = dumps(head)[:-1]
    return f'{prefix},"sequence_num":{_SEQ},"events":{dumps(events)}}}'


class CoinbaseProtocol(Protocol):
    exchange: ClassVar[Exchange] = Exchange.COINBASE
    endpoints: ClassVar[dict[str, str]] = {"ws": "/", "rest": ""}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v3/brokerage/market/products/{product_id}/candles", self._rest_candles)]

    async def _rest_candles(self, request: web.Request) -> web.Response:
        """GET /api/v3/brokerage/market/products/BTC-USD/candles?start=&end=&granularity=&limit= (s), newest first."""
        query = request.query
        interval = GRANULARITIES.get(query.get("granularity", ""))
        start, end = query_int(query.get("start")), query_int(query.get("end"))
        limit = query_int(query.get("limit", str(MAX_CANDLES)))
        if interval is None or start is None or end is None or limit is None or not 1 <= limit <= MAX_CANDLES:
            return web.json_response(
                {"error": "INVALID_ARGUMENT", "message": "bad start, end, granularity or limit"}, status=400
            )
        if (end - start) // interval.seconds > MAX_CANDLES:
            return web.json_response(
                {
                    "error": "INVALID_ARGUMENT",
                    "message": f"number of candles requested should be less than {MAX_CANDLES}",
                },
                status=400,
            )
        product = request.match_info["product_id"]
        market = self.market(product)
        if market is None:
            return web.json_response({"error": "NOT_FOUND", "message": "product not found"}, status=404)
        candles = self.history(market, interval, start, end + 1, limit)
        rows = [
            {
                "start": str(c.start_s), "low": self.px(market, c.low), "high": self.px(market, c.high),
                "open": self.px(market, c.open), "close": self.px(market, c.close), "volume": self.sz(market, c.volume),
            }
            for c in reversed(candles)
        ]  # fmt: skip
        return web.Response(text=dumps({"candles": rows}), content_type="application/json")

    # Coinbase prints prices and sizes without trailing zeros ("79944", "3.0105").
    number_style: ClassVar[NumberStyle] = NumberStyle.TRIMMED
    malformed: ClassVar[str] = '{"channel":"l2_data","client_id":"","timestamp":"2026-'

    def split_symbol(self, symbol: str) -> tuple[str, str] | None:
        parts = symbol.split("-")
        if len(parts) != 2 or not all(p.isalnum() and p.isupper() for p in parts):
            return None
        return parts[0], parts[1]

    def wrap(self, conn: Connection, feed: Feed | None, payload: str) -> str:
        head, mark, tail = payload.partition(_SEQ)
        if not mark:
            return payload
        seq = conn.seq
        conn.seq += 1
        return f"{head}{seq}{tail}"

    def _error(self, conn: Connection, message: str) -> None:
        # {"type":"error","message":"authentication failure"}
        self.send(conn, dumps({"type": "error", "message": message}))

    def on_text(self, conn: Connection, text: str) -> None:
        parsed = self._parse(text)
        if isinstance(parsed, str):
            self._error(conn, parsed)
            return
        action, channel, kind, products = parsed
        if action == "subscribe":
            conn.subscribe_messages += 1
            for product in products:
                self._subscribe(conn, channel, kind, product)
        else:
            for product in products:
                feed = conn.feeds.get(f"{channel}:{product}")
                if feed is not None:
                    self.detach(conn, feed)
        self._ack(conn)

    def _parse(self, text: str) -> tuple[str, str, FeedKind, list[str]] | str:
        """(type, channel, kind, product ids) of a request, or the error message."""
        try:
            request = loads(text) if len(text) <= MAX_REQUEST_BYTES else None
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            return "failure to parse request"
        channel = request.get("channel")
        kind = _CHANNELS.get(channel) if isinstance(channel, str) else None
        products = ["heartbeats"] if kind is FeedKind.HEARTBEAT else request.get("product_ids")
        if request.get("type") not in ("subscribe", "unsubscribe"):
            error = "type must be subscribe or unsubscribe"
        elif not isinstance(channel, str):
            # The Exchange feed's {"channels":[...]} form is not accepted here.
            error = "channel is required: one channel per message"
        elif channel in _AUTH_CHANNELS:
            error = "authentication failure"
        elif kind is None:
            error = f"channel {channel} is not supported"
        elif kind is not FeedKind.HEARTBEAT and (
            not isinstance(products, list)
            or not products
            or not all(isinstance(p, str) and self.split_symbol(p) for p in products)
        ):
            error = "product_ids must be a non-empty list of products like BTC-USD"
        else:
            return str(request["type"]), channel, kind, [str(p) for p in products or ()]
        return error

    def _subscribe(self, conn: Connection, channel: str, kind: FeedKind, product: str) -> None:
        key = f"{channel}:{product}"
        if key in conn.feeds:
            return
        if kind is FeedKind.HEARTBEAT:
            self.attach(conn, self.feed(key, kind, None))
            return
        market = self.market(product)
        if market is None:
            self._error(conn, f"too many products; {product} not subscribed")
            return
        interval = CANDLE_INTERVAL if kind is FeedKind.CANDLES else None
        feed = self.feed(key, kind, market, interval=interval, variant=channel)
        self.attach(conn, feed)
        snapshot = self._snapshot(feed, market)
        if snapshot is not None:
            self.send(conn, snapshot, feed)

    def _ack(self, conn: Connection) -> None:
        # {"channel":"subscriptions","timestamp":"2026-09-07T23:37:22.278739877Z",
        #  "sequence_num":2,"events":[{"subscriptions":{"heartbeats":["heartbeats"],
        #  "level2":["BTC-PERP-INTX","ETH-PERP-INTX"]}}]}
        subscriptions: dict[str, list[str]] = {}
        for key in conn.feeds:
            channel, _, product = key.partition(":")
            subscriptions.setdefault(channel, []).append(product)
        self.send(conn, _envelope("subscriptions", [{"subscriptions": subscriptions}], client_id=False))

    def check(self, conn: Connection, now: float) -> None:
        if not conn.ever_subscribed and now - conn.opened > self.config.coinbase_subscribe_timeout:
            conn.close(CloseReason.NO_SUBSCRIBE, CloseCode.POLICY_VIOLATION, "subscribe timeout")

    # -- renderers ------------------------------------------------------------------------

    def _levels(
        self, market: Market, side: Side, levels: list[tuple[int, int]], event_time: str
    ) -> list[dict[str, str]]:
        name = "bid" if side is Side.BID else "offer"
        return [
            {
                "side": name,
                "event_time": event_time,
                "price_level": self.px(market, price),
                "new_quantity": self.sz(market, size),
            }
            for price, size in levels
        ]

    def _snapshot(self, feed: Feed, market: Market) -> str | None:
        event_time = iso_time(time.time_ns())
        if feed.kind is FeedKind.BOOK:
            # {"channel":"l2_data","client_id":"","timestamp":"2026-09-07T01:57:58.894355Z",
            #  "sequence_num":0,"events":[{"type":"snapshot","product_id":"BTC-PERP-INTX",
            #  "updates":[{"side":"offer","event_time":"2026-09-07T01:57:58.894355Z",
            #  "price_level":"79944.1","new_quantity":"1.2"}, ...]}]}
            updates = self._levels(market, Side.BID, market.book.bids.top(), event_time)
            updates += self._levels(market, Side.ASK, market.book.asks.top(), event_time)
            return _envelope("l2_data", [{"type": "snapshot", "product_id": market.symbol, "updates": updates}])
        if feed.kind is FeedKind.TRADES:
            trades = [self._trade(market, t) for t in reversed(market.recent_trades)]
            return _envelope("market_trades", [{"type": "snapshot", "trades": trades}])
        if feed.kind is FeedKind.TICKER:
            name = "ticker_batch" if feed.variant == "ticker_batch" else "ticker"
            return _envelope(name, [{"type": "snapshot", "tickers": [self._ticker(market)]}])
        if feed.kind is FeedKind.CANDLES and feed.interval is not None:
            candle = market.candle(feed.interval, int(time.time()))
            return _envelope("candles", [{"type": "snapshot", "candles": [self._candle(market, candle)]}])
        return None

    def render_book(self, feed: Feed, update: BookUpdate) -> str | None:
        if feed.kind is not FeedKind.BOOK:
            return None
        market = update.market
        event_time = iso_time(update.ts_ms * 1_000_000)
        updates = self._levels(market, Side.BID, update.full(Side.BID), event_time)
        updates += self._levels(market, Side.ASK, update.full(Side.ASK), event_time)
        # {"channel":"l2_data",...,"events":[{"type":"update","product_id":"BTC-USD",
        #  "updates":[{"side":"bid","event_time":"...","price_level":"68900","new_quantity":"2"}]}]}
        return _envelope("l2_data", [{"type": "update", "product_id": market.symbol, "updates": updates}])

    def _trade(self, market: Market, trade: Trade) -> dict[str, str]:
        return {
            "trade_id": str(trade.trade_id),
            "product_id": market.symbol,
            "price": self.px(market, trade.price),
            "size": self.sz(market, trade.size),
            "side": trade.taker.value.upper(),
            "time": iso_time(trade.ts_ms * 1_000_000),
        }

    def render_trade(self, feed: Feed, trade: Trade) -> str | None:
        market = feed.market
        if market is None:
            return None
        if feed.kind is FeedKind.TRADES:
            # {"channel":"market_trades",...,"events":[{"type":"update","trades":[{"trade_id":
            #  "995098700","product_id":"BTC-USD","price":"68900.5","size":"0.0015","side":"BUY",
            #  "time":"2026-04-07T14:30:02.789012Z"}]}]}
            return _envelope("market_trades", [{"type": "update", "trades": [self._trade(market, trade)]}])
        if feed.kind is FeedKind.TICKER and feed.variant == "ticker":
            return _envelope("ticker", [{"type": "update", "tickers": [self._ticker(market)]}])
        return None

    def _ticker(self, market: Market) -> dict[str, str]:
        stats = market.stats
        bbo = self.bbo(market) or ((stats.last, 0), (stats.last, 0))
        change = (stats.last - stats.open) * 100 / stats.open if stats.open else 0.0
        # {"type":"ticker","product_id":"BTC-USD","price":"68900.5","volume_24_h":"15328.1234",
        #  "low_24_h":"67500","high_24_h":"69200","low_52_w":"25000","high_52_w":"73800",
        #  "price_percent_chg_24_h":"1.85","best_bid":"68900","best_bid_quantity":"1.5",
        #  "best_ask":"68901","best_ask_quantity":"0.5"}
        return {
            "type": "ticker",
            "product_id": market.symbol,
            "price": self.px(market, stats.last),
            "volume_24_h": self.sz(market, stats.volume),
            "low_24_h": self.px(market, stats.low),
            "high_24_h": self.px(market, stats.high),
            "low_52_w": self.px(market, stats.low),
            "high_52_w": self.px(market, stats.high),
            "price_percent_chg_24_h": f"{change:.8f}".rstrip("0").rstrip("."),
            "best_bid": self.px(market, bbo[0][0]),
            "best_bid_quantity": self.sz(market, bbo[0][1]),
            "best_ask": self.px(market, bbo[1][0]),
            "best_ask_quantity": self.sz(market, bbo[1][1]),
        }

    def _candle(self, market: Market, candle: Candle) -> dict[str, str]:
        # {"start":"1775521800","high":"68950","low":"68850","open":"68900","close":"68920.5",
        #  "volume":"42.15","product_id":"BTC-USD"}
        return {
            "start": str(candle.start_s),
            "high": self.px(market, candle.high),
            "low": self.px(market, candle.low),
            "open": self.px(market, candle.open),
            "close": self.px(market, candle.close),
            "volume": self.sz(market, candle.volume),
            "product_id": market.symbol,
        }

    def render_ticker(self, feed: Feed, now: float) -> str | None:
        market = feed.market
        if market is None or feed.variant != "ticker_batch" or now - feed.last_push < TICKER_BATCH_S:
            return None
        return _envelope("ticker_batch", [{"type": "update", "tickers": [self._ticker(market)]}])

    def render_candle(self, feed: Feed, candle: Candle, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        return _envelope("candles", [{"type": "update", "candles": [self._candle(market, candle)]}])

    def on_second(self, now: float) -> None:
        super().on_second(now)
        feed = self.feeds.get("heartbeats:heartbeats")
        if feed is None:
            return
        counter = int(now - self.server.started)
        wall = time.time_ns()
        # {"channel":"heartbeats","timestamp":"2026-09-07T23:37:22.675755362Z","sequence_num":3,
        #  "events":[{"current_time":"2026-09-07 23:37:22.674409 +0000 UTC m=+139651.272674714",
        #  "heartbeat_counter":139651}]}
        current = iso_time(wall, 6)[:-1].replace("T", " ")
        events = [
            {"current_time": f"{current} +0000 UTC m=+{now - self.server.started:.9f}", "heartbeat_counter": counter}
        ]
        self.broadcast(feed, _envelope("heartbeats", events, client_id=False))
