"""OKX v5 public streams: ``wss://ws.okx.com:8443/ws/v5/public`` and ``/ws/v5/business``.

Candles live on /business only: subscribing them on /public fails with 60018, as live.
``books`` is a snapshot then updates chained by ``prevSeqId`` == the previous ``seqId``
(not contiguous). OKX deprecated the ``checksum`` field (always 0 since 2026-06-23); the
``okx_real_checksum`` setting sends the real signed CRC32 instead. Keep-alive is the text
``ping``/``pong``; a connection that has not subscribed within 30 s, or that had nothing
pushed to it for 30 s, is closed.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar, Final

import msgspec
from aiohttp import web

from collectors.checksums import okx_checksum
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
    query_int,
)
from shared.topics import Exchange

PUBLIC: Final = "/ws/v5/public"
BUSINESS: Final = "/ws/v5/business"
BOOK_DEPTH: Final = 400
CHECKSUM_DEPTH: Final = 25
_HK_OFFSET_S: Final = 8 * 3600
_PUBLIC_CHANNELS: Final[dict[str, tuple[FeedKind, int | None]]] = {
    "tickers": (FeedKind.TICKER, None),
    "trades": (FeedKind.TRADES, None),
    "books": (FeedKind.BOOK, BOOK_DEPTH),
    "books5": (FeedKind.TOP, 5),
    "bbo-tbt": (FeedKind.BBO, 1),
}
_CANDLE_RE: Final = re.compile(r"candle(?P<n>\d+)(?P<unit>[smHDWM])(?P<utc>utc)?")
_UNIT_S: Final = {"s": 1, "m": 60, "H": 3600, "D": 86400, "W": 604800}
_ID_RE: Final = re.compile(r"[A-Za-z0-9]{1,32}")


def _candle_interval(channel: str) -> Interval | None:
    """candle1m, candle4H, candle1Dutc ...; bars of 6H and up align to Hong Kong time unless
    they end in "utc"."""
    match = _CANDLE_RE.fullmatch(channel)
    if match is None or match["n"] == "0":
        return None
    count, unit, utc = int(match["n"]), match["unit"], bool(match["utc"])
    if utc and unit in ("s", "m", "H") and not (unit == "H" and count >= 6):
        return None
    seconds = count * _UNIT_S.get(unit, 0)
    offset = 0 if utc or (unit in ("s", "m") or (unit == "H" and count < 6)) else _HK_OFFSET_S
    if unit == "M":
        return Interval(months=count, offset_s=offset)
    return Interval(seconds, offset_s=offset)


class OkxProtocol(Protocol):
    exchange: ClassVar[Exchange] = Exchange.OKX
    endpoints: ClassVar[dict[str, str]] = {"ws": PUBLIC, "business": BUSINESS, "rest": ""}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v5/market/candles", self._rest_candles),
            web.get("/api/v5/market/history-candles", self._rest_candles),
        ]

    async def _rest_candles(self, request: web.Request) -> web.Response:
        """GET /api/v5/market/candles (recent 1440 bars, limit 300) and /history-candles (limit 100), newest first.

        `after`: bars older than that time (ms); `before`: bars newer than it.
        """
        query = request.query
        recent = request.path.endswith("/candles")
        interval = _candle_interval("candle" + query.get("bar", "1m"))
        limit = query_int(query.get("limit", "100"))
        after, before = query_int(query.get("after")), query_int(query.get("before"))
        market = self.market(query.get("instId", ""))
        if interval is None or limit is None or not 1 <= limit <= (300 if recent else 100) or market is None:
            return web.json_response({"code": "51000", "msg": "Parameter error", "data": []})
        start = None if before is None else before // 1000 + 1
        end = None if after is None else -(-after // 1000)
        candles = self.history(market, interval, start, end, limit)
        rows = [
            [
                str(c.start_s * 1000), self.px(market, c.open), self.px(market, c.high), self.px(market, c.low),
                self.px(market, c.close), self.sz(market, c.volume), self.quote_volume(market, c.quote_volume),
                self.quote_volume(market, c.quote_volume), "1" if c.closed else "0",
            ]
            for c in reversed(candles)
        ]  # fmt: skip
        return web.Response(text=dumps({"code": "0", "msg": "", "data": rows}), content_type="application/json")

    number_style: ClassVar[NumberStyle] = NumberStyle.TRIMMED
    has_checksum: ClassVar[bool] = True
    malformed: ClassVar[str] = '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"upd'

    def split_symbol(self, symbol: str) -> tuple[str, str] | None:
        parts = symbol.split("-")
        if not 2 <= len(parts) <= 3 or not all(p.isalnum() and p.isupper() for p in parts):
            return None
        return parts[0], parts[1]

    def _conn_id(self, conn: Connection) -> str:
        return conn.id.replace("-", "")[:8]

    def _event(self, conn: Connection, body: dict[str, Any], request_id: Any) -> None:
        head: dict[str, Any] = {"id": request_id} if request_id is not None else {}
        self.send(conn, dumps(head | body | {"connId": self._conn_id(conn)}))

    def _error(self, conn: Connection, code: str, msg: str, request_id: Any = None) -> None:
        # {"event":"error","msg":"Subscribe failed, wrong URL or channel:candle1m,instId:BTC-USDT
        #  doesn't exist. ...","code":"60018","connId":"e1f69f02"}
        self._event(conn, {"event": "error", "msg": msg, "code": code}, request_id)

    def on_text(self, conn: Connection, text: str) -> None:
        if text == "ping":
            self.send(conn, "pong")
            return
        try:
            request = loads(text) if len(text) <= MAX_REQUEST_BYTES else None
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            self._error(conn, "60012", f"Invalid request: {text[:200]}")
            return
        request_id = request.get("id")
        if request_id is not None and not (isinstance(request_id, str) and _ID_RE.fullmatch(request_id)):
            self._error(conn, "60012", f"Invalid request: {text[:200]}")
            return
        op, args = request.get("op"), request.get("args")
        if (
            op not in ("subscribe", "unsubscribe")
            or not isinstance(args, list)
            or not args
            or not all(
                isinstance(a, dict) and isinstance(a.get("channel"), str) and isinstance(a.get("instId"), str)
                for a in args
            )
        ):
            self._error(conn, "60012", f"Invalid request: {text[:200]}", request_id)
            return
        if op == "subscribe":
            conn.subscribe_messages += 1
        for arg in args:
            self._subscription(conn, op, arg["channel"], arg["instId"], request_id)

    def _subscription(self, conn: Connection, op: str, channel: str, inst_id: str, request_id: Any) -> None:
        arg = {"channel": channel, "instId": inst_id}
        key = f"{channel}:{inst_id}"
        if op == "unsubscribe":
            feed = conn.feeds.get(key)
            if feed is not None:
                self.detach(conn, feed)
            self._event(conn, {"event": "unsubscribe", "arg": arg}, request_id)
            return
        business = conn.path == BUSINESS
        known = _candle_interval(channel) if business else None
        channel_spec = None if business else _PUBLIC_CHANNELS.get(channel)
        market = self.market(inst_id) if (known or channel_spec) else None
        if market is None:
            self._error(
                conn,
                "60018",
                f"Subscribe failed, wrong URL or channel:{channel},"
                f"instId:{inst_id} doesn't exist. Please use the correct URL, channel "
                "and parameters referring to API document.",
                request_id,
            )
            return
        # {"event":"subscribe","arg":{"channel":"tickers","instId":"BTC-USDT"},"connId":"76defc81"}
        self._event(conn, {"event": "subscribe", "arg": arg}, request_id)
        if key in conn.feeds:
            return
        if known is not None:
            feed = self.feed(key, FeedKind.CANDLES, market, interval=known, variant=channel)
        else:
            assert channel_spec is not None
            kind, depth = channel_spec
            feed = self.feed(key, kind, market, depth=depth, variant=channel, seq=market.seq)
        self.attach(conn, feed)
        if feed.kind is FeedKind.BOOK:
            self.send(conn, self._books(feed, market, None), feed)

    def check(self, conn: Connection, now: float) -> None:
        timeout = self.config.okx_idle_timeout
        if not conn.ever_subscribed and now - conn.opened > timeout:
            conn.close(CloseReason.NO_SUBSCRIBE, CloseCode.NORMAL, "no subscription")
        elif now - conn.last_out > timeout:
            conn.close(CloseReason.IDLE, CloseCode.NORMAL, "idle")

    # -- renderers ------------------------------------------------------------------------

    def _levels(self, market: Market, levels: list[tuple[int, int]]) -> list[list[str]]:
        # [price, size, "0" (deprecated liquidated orders), order count]
        return [[self.px(market, p), self.sz(market, s), "0", str(1 + s % 9) if s else "0"] for p, s in levels]

    def _checksum(self, market: Market) -> int:
        if not self.config.okx_real_checksum:
            # A corrupted deprecated checksum is a wrong non-zero value.
            return 1 if self.take_corrupt(market) else 0
        bids = [(self.px(market, p), self.sz(market, s)) for p, s in market.book.bids.top(CHECKSUM_DEPTH)]
        asks = [(self.px(market, p), self.sz(market, s)) for p, s in market.book.asks.top(CHECKSUM_DEPTH)]
        value = okx_checksum(bids, asks)
        return value ^ 0x5A5A5A5A if self.take_corrupt(market) else value

    def _books(self, feed: Feed, market: Market, update: BookUpdate | None) -> str:
        if update is None:
            # A snapshot describes the book as of the feed's last message, so the next
            # update's prevSeqId chains to it.
            action, prev = "snapshot", -1
            bids, asks = market.book.bids.top(BOOK_DEPTH), market.book.asks.top(BOOK_DEPTH)
            seq_id = feed.seq
        else:
            action, prev = "update", feed.seq
            bids = update.view(Side.BID, BOOK_DEPTH, report_pushed_out=True)
            asks = update.view(Side.ASK, BOOK_DEPTH, report_pushed_out=True)
            seq_id = feed.seq = update.seq
        ts = str(market.last_ts_ms)
        # {"arg":{"channel":"books","instId":"SOL-USDT"},"action":"update","data":[{"asks":
        #  [["120.67","60.475897","0","5"]],"bids":[["120.66","0","0","0"]],"ts":"1790394877300",
        #  "checksum":0,"seqId":32032594315,"prevSeqId":32032594283}]}
        data = {
            "asks": self._levels(market, asks),
            "bids": self._levels(market, bids),
            "ts": ts,
            "checksum": self._checksum(market),
            "seqId": seq_id,
            "prevSeqId": prev,
        }
        return dumps({"arg": {"channel": "books", "instId": market.symbol}, "action": action, "data": [data]})

    def render_book(self, feed: Feed, update: BookUpdate) -> str | None:
        market = update.market
        depth = feed.depth or BOOK_DEPTH
        if not (
            update.view(Side.BID, depth, report_pushed_out=True) or update.view(Side.ASK, depth, report_pushed_out=True)
        ):
            return None
        if feed.kind is FeedKind.BOOK:
            return self._books(feed, market, update)
        # {"arg":{"channel":"books5","instId":"BTC-USDT"},"data":[{"asks":[["83774.2",
        #  "0.25697131","0","6"],...],"bids":[...],"instId":"BTC-USDT","ts":"1790358564306",
        #  "seqId":81625379489}]}
        # {"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[["111.06","55154",
        #  "0","2"]],"bids":[["111.05","57745","0","2"]],"ts":"1670324386802","seqId":363996337}]}
        data: dict[str, Any] = {
            "asks": self._levels(market, market.book.asks.top(depth)),
            "bids": self._levels(market, market.book.bids.top(depth)),
        }
        if feed.kind is FeedKind.TOP:
            data["instId"] = market.symbol
        data |= {"ts": str(market.last_ts_ms), "seqId": update.seq}
        return dumps({"arg": {"channel": feed.variant, "instId": market.symbol}, "data": [data]})

    def render_trade(self, feed: Feed, trade: Trade) -> str | None:
        market = feed.market
        if market is None or feed.kind is not FeedKind.TRADES:
            return None
        # {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
        #  "tradeId":"1062992715","px":"83772.6","sz":"0.0000178","side":"buy",
        #  "ts":"1790358565298","count":"1","source":"0","seqId":81625379835}]}
        item = {
            "instId": market.symbol,
            "tradeId": str(trade.trade_id),
            "px": self.px(market, trade.price),
            "sz": self.sz(market, trade.size),
            "side": trade.taker.value,
            "ts": str(trade.ts_ms),
            "count": "1",
            "source": "0",
            "seqId": market.seq,
        }
        return dumps({"arg": {"channel": "trades", "instId": market.symbol}, "data": [item]})

    def _inst_type(self, symbol: str) -> str:
        parts = symbol.split("-")
        if len(parts) == 2:
            return "SPOT"
        return "SWAP" if parts[2] == "SWAP" else "FUTURES"

    def render_ticker(self, feed: Feed, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        bbo = self.bbo(market)
        state = (market.stats.version, bbo)
        if state == feed.last:
            return None
        feed.last = state
        stats = market.stats
        bbo = bbo or ((stats.last, 0), (stats.last, 0))
        # {"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT",
        #  "instId":"BTC-USDT","last":"83766.8","lastSz":"0.0000102","askPx":"83774.2",
        #  "askSz":"0.25697131","bidPx":"83774.1","bidSz":"0.65302934","open24h":"84180.1",
        #  "high24h":"85258.8","low24h":"83174.7","sodUtc0":"84409.9","sodUtc8":"83800",
        #  "volCcy24h":"458903124.056360828","vol24h":"5449.95415651","ts":"1790358564077"}]}
        item = {
            "instType": self._inst_type(market.symbol),
            "instId": market.symbol,
            "last": self.px(market, stats.last),
            "lastSz": self.sz(market, stats.last_size),
            "askPx": self.px(market, bbo[1][0]),
            "askSz": self.sz(market, bbo[1][1]),
            "bidPx": self.px(market, bbo[0][0]),
            "bidSz": self.sz(market, bbo[0][1]),
            "open24h": self.px(market, stats.open),
            "high24h": self.px(market, stats.high),
            "low24h": self.px(market, stats.low),
            "sodUtc0": self.px(market, stats.open),
            "sodUtc8": self.px(market, stats.open),
            "volCcy24h": self.quote_volume(market, stats.quote_volume),
            "vol24h": self.sz(market, stats.volume),
            "ts": str(int(time.time() * 1000)),
        }
        return dumps({"arg": {"channel": "tickers", "instId": market.symbol}, "data": [item]})

    def render_candle(self, feed: Feed, candle: Candle, now: float) -> str | None:
        market = feed.market
        if market is None:
            return None
        # {"arg":{"channel":"candle1D","instId":"BTC-USDT"},"data":[["1597026383085","8533.02",
        #  "8553.74","8527.17","8548.26","45247","529.5858061","5529.5858061","0"]]}
        volume = self.sz(market, candle.volume)
        quote = self.quote_volume(market, candle.quote_volume)
        row = [
            str(candle.start_s * 1000),
            self.px(market, candle.open),
            self.px(market, candle.high),
            self.px(market, candle.low),
            self.px(market, candle.close),
            volume,
            quote,
            quote,
            "1" if candle.closed else "0",
        ]
        return dumps({"arg": {"channel": feed.variant, "instId": market.symbol}, "data": [row]})
