"""Bybit v5 spot: ``wss://stream.bybit.com/v5/public/spot``.

Protocol notes: topics are ``<channel>.<SYMBOL>`` (``orderbook.50.BTCUSDT``,
``publicTrade.BTCUSDT``, ``tickers.BTCUSDT``, ``kline.1.BTCUSDT``); a spot
subscribe request takes at most 10 of them. Spot books come at depth 1, 50,
200 or 1000; a snapshot is followed by deltas whose ``u`` goes up by one
(`BybitSequencer`); ``u == 1`` means the service restarted and the message
is a fresh snapshot. Bybit asks for ``{"op":"ping"}`` every 20 seconds, busy or not.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, Final

import msgspec

from collectors.book import BybitSequencer, DataError
from collectors.feed.adapter import Adapter, Bar, Link, Op, Stream, to_json
from shared.events import Side
from shared.topics import Exchange, Kind, Timeframe

# Bybit's kline intervals (weeks from Monday, months from the 1st); 8h and 3d are built by us.
_INTERVALS: Final = {
    Timeframe.M1: "1",
    Timeframe.M3: "3",
    Timeframe.M5: "5",
    Timeframe.M15: "15",
    Timeframe.M30: "30",
    Timeframe.H1: "60",
    Timeframe.H2: "120",
    Timeframe.H4: "240",
    Timeframe.H6: "360",
    Timeframe.H12: "720",
    Timeframe.D1: "D",
    Timeframe.W1: "W",
    Timeframe.MO1: "M",
}
_TIMEFRAMES: Final = {name: timeframe for timeframe, name in _INTERVALS.items()}
_SIDES: Final = {"Buy": Side.BUY, "Sell": Side.SELL}


class _KlineList(msgspec.Struct):
    # [start (ms), open, high, low, close, volume, turnover]
    rows: list[tuple[str, str, str, str, str, str, str]] = msgspec.field(default_factory=list, name="list")


class _Kline(msgspec.Struct):
    retCode: int  # Bybit's field names
    retMsg: str
    result: _KlineList


_KLINE: Final = msgspec.json.Decoder(_Kline)


class Bybit(Adapter[BybitSequencer]):
    exchange: ClassVar[Exchange] = Exchange.BYBIT
    endpoints: ClassVar[dict[str, str]] = {
        "ws": "wss://stream.bybit.com/v5/public/spot",
        "rest": "https://api.bybit.com",
    }
    channels: ClassVar[dict[Kind, str]] = {Kind.TICKER: "tickers", Kind.TRADES: "publicTrade", Kind.BOOK: "orderbook"}
    candle_channels: ClassVar[dict[Timeframe, str]] = {tf: f"kline.{name}" for tf, name in _INTERVALS.items()}
    book_depths: ClassVar[tuple[int, ...]] = (1, 50, 200, 1000)
    # Bybit caps the args of one request (21,000 characters); 200 topics stay far below it.
    max_streams_per_connection: ClassVar[int] = 200
    max_streams_per_request: ClassVar[int] = 10  # spot's documented limit per subscribe
    requests_per_second: ClassVar[float] = 5.0
    ping_always: ClassVar[bool] = True  # Bybit drops connections that stop pinging, however busy
    # 600 requests per 5 s per address; history takes a small share.
    rest_weight_per_minute: ClassVar[float] = 600.0
    history_intervals: ClassVar[dict[Timeframe, str]] = _INTERVALS
    history_page: ClassVar[int] = 1000

    def market(self, symbol: str) -> str:
        return symbol.replace("/", "")

    def channel(self, kind: Kind) -> str:
        return f"orderbook.{self.subscribe_depth}" if kind is Kind.BOOK else self.channels[kind]

    def new_sync(self) -> BybitSequencer:
        return BybitSequencer()

    def render(self, op: Op, group: Hashable, streams: list[Stream]) -> str:
        # {"req_id":"test","op":"subscribe","args":["orderbook.50.BTCUSDT","publicTrade.BTCUSDT"]}
        args = [f"{stream.channel}.{stream.market}" for stream in streams]
        return to_json({"req_id": str(self.request_id()), "op": str(op), "args": args})

    def history_request(self, market: str, timeframe: Timeframe, start: int, end: int) -> tuple[str, dict[str, str]]:
        # GET /v5/market/kline?category=spot&symbol=BTCUSDT&interval=1&start=..&end=..&limit=1000 (ms)
        params = {
            "category": "spot", "symbol": market, "interval": self.history_intervals[timeframe],
            "start": str(start), "end": str(end - 1), "limit": str(self.history_page),
        }  # fmt: skip
        return f"{self.urls['rest']}/v5/market/kline", params

    def parse_history(self, body: bytes) -> list[Bar]:
        # {"retCode":0,"retMsg":"OK","result":{"symbol":"BTCUSDT","category":"spot","list":[
        #  ["1670608800000","17071","17073","17027","17055.5","268611","15.74462667"]]}}, newest first
        reply = _KLINE.decode(body)
        if reply.retCode != 0:
            raise DataError(f"bybit refused the request: {reply.retCode} {reply.retMsg[:200]}")
        bars = []
        for row in reversed(reply.result.rows):
            if not row[0].isascii() or not row[0].isdigit() or len(row[0]) > 15:
                raise DataError(f"kline start {row[0][:20]!r} is not a time in milliseconds")
            bars.append((int(row[0]), row[1], row[2], row[3], row[4], row[5]))
        return bars

    def ping_message(self) -> str:
        # {"req_id":"100001","op":"ping"}
        return to_json({"req_id": str(self.request_id()), "op": "ping"})

    def on_message(self, link: Link, data: str | bytes, recv_ts: float) -> None:
        msg = self.decoder.decode(data)
        topic = msg.get("topic")
        if topic is None:
            if msg.get("success") is False:
                # {"success":false,"ret_msg":"error:handler not found,topic:liquidations:BTCUSDT",
                #  "conn_id":"da7r0pitbetqa8diesh0-m4ao","req_id":"","op":"subscribe"}
                self.rejected(link, msg.get("ret_msg"))
            return  # acks and pongs
        channel, _, market = topic.rpartition(".")
        if channel.startswith("orderbook."):
            self._book(msg, recv_ts)
        elif channel == "publicTrade":
            self._trades(msg, recv_ts)
        elif channel == "tickers":
            self._ticker(msg, recv_ts)
        elif channel.startswith("kline."):
            self._kline(channel, market, msg, recv_ts)

    def _book(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"topic":"orderbook.50.BTCUSDT","ts":1731035685345,"type":"delta","data":{"s":"BTCUSDT",
        #  "b":[["75848.62","0.014895"],["75837.13","0"]],"a":[["75852.65","0"]],"u":2876701,
        #  "seq":47474967823},"cts":1731035685342}
        data = msg["data"]
        feed = self.book_feed(data["s"], recv_ts)
        if feed is None:
            return
        with self.syncing(feed):
            action = feed.sync.check(data["u"], snapshot=msg["type"] == "snapshot")
            feed.apply(action, data["b"], data["a"])
            feed.changed(msg["ts"], recv_ts)

    def _trades(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"topic":"publicTrade.BTCUSDT","ts":1703430745372,"type":"snapshot","data":[{
        #  "i":"2290000000090712223","T":1703430745370,"p":"43774.01","v":"0.009516","S":"Buy",
        #  "s":"BTCUSDT","BT":false}]}
        for item in msg["data"]:
            self.trade(
                item["s"], trade_id=item["i"], price=item["p"], size=item["v"], side=_SIDES[item["S"]], ts=item["T"],
                recv_ts=recv_ts,
            )  # fmt: skip

    def _ticker(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"topic":"tickers.BTCUSDT","ts":1673853746003,"type":"snapshot","cs":2588407389,
        #  "data":{"symbol":"BTCUSDT","lastPrice":"21109.77","highPrice24h":"21426.99",
        #  "lowPrice24h":"20575","prevPrice24h":"20704.93","volume24h":"6780.866843",
        #  "turnover24h":"141946527.22907118","price24hPcnt":"0.0196","usdIndexPrice":"21120.2400136"}}
        data = msg["data"]
        self.ticker(
            data["symbol"], msg["ts"], recv_ts,
            bid=data.get("bid1Price"), bid_size=data.get("bid1Size"),
            ask=data.get("ask1Price"), ask_size=data.get("ask1Size"), last=data["lastPrice"],
            open_24h=data["prevPrice24h"], high_24h=data["highPrice24h"], low_24h=data["lowPrice24h"],
            volume_24h=data["volume24h"],
        )  # fmt: skip

    def _kline(self, channel: str, market: str, msg: dict[str, Any], recv_ts: float) -> None:
        # {"topic":"kline.1.BTCUSDT","data":[{"start":1719667560000,"end":1719667619999,
        #  "interval":"1","open":"61030","close":"61029.9","high":"61030","low":"61015",
        #  "volume":"10.798","turnover":"658980.4245","confirm":false,"timestamp":1719667601380}],
        #  "ts":1719667601380,"type":"snapshot"}
        timeframe = _TIMEFRAMES.get(channel.partition(".")[2])
        if timeframe is None:
            return
        for item in msg["data"]:
            ohlcv = (item["open"], item["high"], item["low"], item["close"], item["volume"])
            self.candle(
                market, timeframe, open_time=item["start"], ohlcv=ohlcv, ts=item["timestamp"], recv_ts=recv_ts,
                closed=item["confirm"],
            )  # fmt: skip
