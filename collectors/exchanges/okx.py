"""OKX v5: ``wss://ws.okx.com:8443/ws/v5/public``, and candles on ``/ws/v5/business``.

Protocol notes: subscribe args are ``{"channel": ..., "instId": "BTC-USDT"}``;
candle channels are refused on /public (error 60018) and live on /business,
so candles get a connection of their own. ``candle1D`` follows Hong Kong
time; ``candle1Dutc`` lines up with the other exchanges. The ``books``
channel chains ``prevSeqId`` to the previous ``seqId`` (`OkxSequencer`); its
CRC32 checksum is deprecated (always 0 since 2026-06-23) and is verified
only when non-zero. OKX drops a connection silent for 30 s: the keep-alive
is the text ``ping``, answered by ``pong``. A ``notice`` event announces a
service upgrade: the connection is then replaced before it is cut.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Final

import msgspec

from collectors.book import DataError, OkxSequencer
from collectors.checksums import verify_okx
from collectors.feed.adapter import Adapter, Bar, Link, Op, Stream, to_json
from shared.events import Side
from shared.topics import Exchange, Kind, Timeframe

# OKX's bars from 6h up come in Hong Kong time unless suffixed "utc"; 8h is built by us.
_CANDLES: Final = {
    Timeframe.M1: "candle1m",
    Timeframe.M3: "candle3m",
    Timeframe.M5: "candle5m",
    Timeframe.M15: "candle15m",
    Timeframe.M30: "candle30m",
    Timeframe.H1: "candle1H",
    Timeframe.H2: "candle2H",
    Timeframe.H4: "candle4H",
    Timeframe.H6: "candle6Hutc",
    Timeframe.H12: "candle12Hutc",
    Timeframe.D1: "candle1Dutc",
    Timeframe.D3: "candle3Dutc",
    Timeframe.W1: "candle1Wutc",
    Timeframe.MO1: "candle1Mutc",
}
_TIMEFRAMES: Final = {channel: timeframe for timeframe, channel in _CANDLES.items()}
# /market/candles serves the most recent 1440 bars; older ones come from /market/history-candles.
RECENT_BARS: Final = 1440


class _Candles(msgspec.Struct):
    code: str
    msg: str
    # [ts (ms), open, high, low, close, vol, volCcy, volCcyQuote, confirm]
    data: list[tuple[str, str, str, str, str, str, str, str, str]]


_CANDLE_PAGE: Final = msgspec.json.Decoder(_Candles)
# Books before seqId existed (and trimmed captures) carry none: -1 chains with -1, so the
# checksum alone guards them.
_NO_SEQ: Final = -1


def _levels(levels: list[list[str]]) -> Iterator[tuple[str, str]]:
    # ["83774.2","0.25697131","0","6"]: price, size, a deprecated field, the order count
    for level in levels:
        yield level[0], level[1]


class Okx(Adapter[OkxSequencer]):
    exchange: ClassVar[Exchange] = Exchange.OKX
    endpoints: ClassVar[dict[str, str]] = {
        "ws": "wss://ws.okx.com:8443/ws/v5/public",
        "business": "wss://ws.okx.com:8443/ws/v5/business",
        "rest": "https://www.okx.com",
    }
    channels: ClassVar[dict[Kind, str]] = {Kind.TICKER: "tickers", Kind.TRADES: "trades", Kind.BOOK: "books"}
    candle_channels: ClassVar[dict[Timeframe, str]] = _CANDLES
    kind_endpoints: ClassVar[dict[Kind, str]] = {Kind.CANDLES: "business"}
    max_streams_per_connection: ClassVar[int] = 200
    # A request's args may total 64 kB; 50 args stay far below.
    max_streams_per_request: ClassVar[int] = 50
    # 480 (un)subscribe requests per connection per hour: pace them, resyncs included.
    requests_per_second: ClassVar[float] = 1.0
    # history-candles: 20 requests per 2 s per address; candles: 40. History takes a share.
    rest_weight_per_minute: ClassVar[float] = 300.0
    history_intervals: ClassVar[dict[Timeframe, str]] = {
        tf: name.removeprefix("candle") for tf, name in _CANDLES.items()
    }
    history_page: ClassVar[int] = 100  # history-candles' limit (candles' is 300)

    def market(self, symbol: str) -> str:
        return symbol.replace("/", "-")

    def new_sync(self) -> OkxSequencer:
        return OkxSequencer()

    def render(self, op: Op, group: Hashable, streams: list[Stream]) -> str:
        # {"id":"1512","op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}
        args = [{"channel": stream.channel, "instId": stream.market} for stream in streams]
        return to_json({"id": str(self.request_id()), "op": str(op), "args": args})

    def ping_message(self) -> str:
        return "ping"

    def history_request(self, market: str, timeframe: Timeframe, start: int, end: int) -> tuple[str, dict[str, str]]:
        # GET /api/v5/market/candles?instId=BTC-USDT&bar=1m&after=<ms>&before=<ms>&limit=100: bars older
        # than `after` and newer than `before`; /history-candles the same for bars past the recent 1440.
        recent = end >= time.time() * 1000 - RECENT_BARS * timeframe.seconds * 1000
        path = "candles" if recent else "history-candles"
        params = {
            "instId": market, "bar": self.history_intervals[timeframe], "after": str(end),
            "before": str(start - 1), "limit": str(self.history_page),
        }  # fmt: skip
        return f"{self.urls['rest']}/api/v5/market/{path}", params

    def parse_history(self, body: bytes) -> list[Bar]:
        # {"code":"0","msg":"","data":[["1597026383085","3.721","3.743","3.677","3.708","8422410",
        #  "22698348.04828491","12698348.04828491","0"]]}, newest first
        reply = _CANDLE_PAGE.decode(body)
        if reply.code != "0":
            raise DataError(f"okx refused the request: {reply.code} {reply.msg[:200]}")
        bars = []
        for row in reversed(reply.data):
            if not row[0].isascii() or not row[0].isdigit() or len(row[0]) > 15:
                raise DataError(f"candle time {row[0][:20]!r} is not a time in milliseconds")
            bars.append((int(row[0]), row[1], row[2], row[3], row[4], row[5]))
        return bars

    def on_message(self, link: Link, data: str | bytes, recv_ts: float) -> None:
        if data == "pong":
            return
        msg = self.decoder.decode(data)
        arg = msg.get("arg")
        channel = arg.get("channel") if arg is not None else None
        if "data" not in msg or channel is None:
            self._event(link, msg)
        elif channel == "books":
            self._book(msg, recv_ts)
        elif channel == "trades":
            self._trades(msg, recv_ts)
        elif channel == "tickers":
            self._ticker(msg, recv_ts)
        elif channel in _TIMEFRAMES:
            self._candle_update(msg, _TIMEFRAMES[channel], recv_ts)

    def _event(self, link: Link, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "error":
            # {"event":"error","msg":"Subscribe failed, wrong URL or channel:candle1m,instId:BTC-USDT
            #  doesn't exist. ...","code":"60018","connId":"e1f69f02"}
            self.rejected(link, f"{msg.get('code')}: {msg.get('msg')}")
        elif event == "notice":
            # {"event":"notice","code":"64008","msg":"The connection will soon be closed for a
            #  service upgrade. Please reconnect.","connId":"a4d3ae55"}
            link.retire()

    def _book(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"arg":{"channel":"books","instId":"SOL-USDT"},"action":"update","data":[{
        #  "asks":[["120.67","60.475897","0","5"]],"bids":[["120.66","0","0","0"]],
        #  "ts":"1790394877300","checksum":0,"seqId":32032594315,"prevSeqId":32032594283}]}
        feed = self.book_feed(msg["arg"]["instId"], recv_ts)
        if feed is None:
            return
        snapshot = msg.get("action") == "snapshot"
        for item in msg["data"]:
            with self.syncing(feed):
                action = feed.sync.check(item.get("seqId", _NO_SEQ), item.get("prevSeqId", _NO_SEQ), snapshot=snapshot)
                feed.apply(action, _levels(item["bids"]), _levels(item["asks"]))
                if feed.ready:
                    verify_okx(feed.book, int(item.get("checksum", 0)))
                    feed.changed(int(item["ts"]), recv_ts)

    def _trades(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
        #  "tradeId":"1062992715","px":"83772.6","sz":"0.0000178","side":"buy","ts":"1790358565298",
        #  "count":"1","source":"1","seqId":81625379835}]}
        for item in msg["data"]:
            self.trade(
                item["instId"], trade_id=item["tradeId"], price=item["px"], size=item["sz"], side=Side(item["side"]),
                ts=int(item["ts"]), recv_ts=recv_ts,
            )  # fmt: skip

    def _ticker(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT",
        #  "instId":"BTC-USDT","last":"83766.8","lastSz":"0.0000102","askPx":"83774.2",
        #  "askSz":"0.25697131","bidPx":"83774.1","bidSz":"0.65302934","open24h":"84180.1",
        #  "high24h":"85258.8","low24h":"83174.7","sodUtc0":"84409.9","sodUtc8":"83800",
        #  "volCcy24h":"458903124.056360828","vol24h":"5449.95415651","ts":"1790358564077"}]}
        for item in msg["data"]:
            self.ticker(
                item["instId"], int(item["ts"]), recv_ts,
                bid=item["bidPx"] or None, bid_size=item["bidSz"] or None,
                ask=item["askPx"] or None, ask_size=item["askSz"] or None, last=item["last"],
                open_24h=item["open24h"], high_24h=item["high24h"], low_24h=item["low24h"], volume_24h=item["vol24h"],
            )  # fmt: skip

    def _candle_update(self, msg: dict[str, Any], timeframe: Timeframe, recv_ts: float) -> None:
        # {"arg":{"channel":"candle1D","instId":"BTC-USDT"},"data":[["1597026383085","8533.02",
        #  "8553.74","8527.17","8548.26","45247","529.5858061","5529.5858061","0"]]}
        market = msg["arg"]["instId"]
        for row in msg["data"]:
            ohlcv = (row[1], row[2], row[3], row[4], row[5])
            # A candle message carries no event time of its own: the receive time stands in.
            self.candle(
                market, timeframe, open_time=int(row[0]), ohlcv=ohlcv, ts=int(recv_ts), recv_ts=recv_ts,
                closed=row[8] == "1",
            )  # fmt: skip
