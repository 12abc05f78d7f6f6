"""Binance spot: the combined stream ``wss://stream.binance.com:9443/stream`` plus REST book snapshots.

Protocol notes (web-socket-streams.md): streams are subscribed with SUBSCRIBE
requests on one connection, at most 1024 per connection; a connection gets
at most 5 incoming frames a second (requests, pings and pongs all count)
and lives at most 24 hours. The server pings every 20 s and aiohttp answers;
our idle ping is LIST_SUBSCRIPTIONS, whose reply also proves the stream is
alive. Books follow the documented diff-depth procedure (`BinanceDepthSync`):
diffs are buffered while a REST snapshot is fetched in its own task.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, Final

import aiohttp
import msgspec

from collectors.book import Action, BinanceDepthSync, SyncError
from collectors.feed.adapter import Adapter, Bar, Link, Op, ResyncMode, Stream, to_json
from collectors.feed.rest import RestBudget
from shared.events import Side
from shared.topics import Exchange, Kind, Timeframe

# (bids, asks, event time) of one depthUpdate, held while the snapshot is on its way.
Diff = tuple[list[list[str]], list[list[str]], int]

# 1000 levels cost 50 request weight of the 6000 a minute an address gets: plenty of depth
# for a top-N view that stays right however far the price runs.
SNAPSHOT_LIMIT: Final = 1000
SNAPSHOT_WEIGHT: Final = 50
# [open time, open, high, low, close, volume, close time, quote volume, trades, taker base, taker quote, "0"]
_KLINES: Final = msgspec.json.Decoder(list[tuple[int, str, str, str, str, str, int, str, int, str, str, str]])
# Every timeframe of ours is a Binance kline interval of the same name (weeks from Monday).
_TIMEFRAMES: Final = {str(timeframe): timeframe for timeframe in Timeframe}


class Binance(Adapter[BinanceDepthSync[Diff]]):
    exchange: ClassVar[Exchange] = Exchange.BINANCE
    endpoints: ClassVar[dict[str, str]] = {
        "ws": "wss://stream.binance.com:9443/stream",
        "rest": "https://api.binance.com",
    }
    channels: ClassVar[dict[Kind, str]] = {Kind.TICKER: "ticker", Kind.TRADES: "trade", Kind.BOOK: "depth@100ms"}
    candle_channels: ClassVar[dict[Timeframe, str]] = {tf: f"kline_{name}" for name, tf in _TIMEFRAMES.items()}
    resync_mode: ClassVar[ResyncMode] = ResyncMode.SNAPSHOT
    max_streams_per_connection: ClassVar[int] = 1024
    max_streams_per_request: ClassVar[int] = 200
    # 5 frames/s is the hard limit and pongs to the server's pings count too: stay well under.
    requests_per_second: ClassVar[float] = 2.0
    max_connection_age_s: ClassVar[float | None] = 23 * 3600.0  # retire before the 24 h cut-off
    # 6000 weight a minute per address; books (50 each) and klines (2 each) share 80% of it.
    rest_weight_per_minute: ClassVar[float] = 4800.0
    history_intervals: ClassVar[dict[Timeframe, str]] = {tf: str(tf) for tf in Timeframe}
    history_page: ClassVar[int] = 1000
    history_weight: ClassVar[float] = 2.0

    def market(self, symbol: str) -> str:
        return symbol.replace("/", "")

    def new_sync(self) -> BinanceDepthSync[Diff]:
        return BinanceDepthSync()

    def render(self, op: Op, group: Hashable, streams: list[Stream]) -> str:
        # {"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}
        params = [f"{stream.market.lower()}@{stream.channel}" for stream in streams]
        return to_json({"method": op.upper(), "params": params, "id": self.request_id()})

    def ping_message(self) -> str:
        # {"method":"LIST_SUBSCRIPTIONS","id":3} -> {"result":["btcusdt@aggTrade"],"id":3}
        return to_json({"method": "LIST_SUBSCRIPTIONS", "id": self.request_id()})

    def on_message(self, link: Link, data: str | bytes, recv_ts: float) -> None:
        msg = self.decoder.decode(data)
        payload = msg.get("data", msg)  # combined streams wrap each event: {"stream":...,"data":{...}}
        event = payload.get("e") if isinstance(payload, dict) else None
        if event == "depthUpdate":
            self._depth(payload, recv_ts)
        elif event == "trade":
            self._trade(payload, recv_ts)
        elif event == "24hrTicker":
            self._ticker(payload, recv_ts)
        elif event == "kline":
            self._kline(payload, recv_ts)
        elif event == "serverShutdown":
            # {"e":"serverShutdown","E":1770123456789}: reconnect now rather than be cut off.
            link.retire()
        elif "error" in msg:
            # {"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}
            self.rejected(link, msg["error"])

    def _trade(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"e":"trade","E":1788481292965,"s":"BTCUSDT","t":6653570805,"p":"81207.45000000",
        #  "q":"0.00016000","T":1788481292964,"m":true,"M":true}
        side = Side.SELL if msg["m"] else Side.BUY  # the buyer was the maker: the taker sold
        self.trade(
            msg["s"], trade_id=str(msg["t"]), price=msg["p"], size=msg["q"], side=side, ts=msg["T"], recv_ts=recv_ts
        )

    def _ticker(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"e":"24hrTicker","E":1569805259092,"s":"DOGEBNB","p":"0.00000291","P":"2.068",
        #  "w":"0.00014188","x":"0.00014069","c":"0.00014360","Q":"51135.00000000",
        #  "b":"0.00014365","B":"7080.00000000","a":"0.00014498","A":"275033.00000000",
        #  "o":"0.00014069","h":"0.00014550","l":"0.00013851","v":"20014582.00000000",
        #  "q":"2839.62578157","O":1569718859088,"C":1569805259088,"F":64171,"L":64684,"n":514}
        self.ticker(
            msg["s"], msg["E"], recv_ts,
            bid=msg["b"], bid_size=msg["B"], ask=msg["a"], ask_size=msg["A"], last=msg["c"],
            open_24h=msg["o"], high_24h=msg["h"], low_24h=msg["l"], volume_24h=msg["v"],
        )  # fmt: skip

    def _kline(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"e":"kline","E":1633998523963,"s":"NKNUSDT","k":{"t":1633998480000,"T":1633998539999,
        #  "s":"NKNUSDT","i":"1m","f":19862761,"L":19862790,"o":"0.35270000","c":"0.35280000",
        #  "h":"0.35280000","l":"0.35220000","v":"25877.00000000","n":30,"x":false,
        #  "q":"9116.04600000","V":"58.00000000","Q":"20.46240000","B":"0"}}
        k = msg["k"]
        timeframe = _TIMEFRAMES.get(k["i"])
        if timeframe is not None:
            ohlcv = (k["o"], k["h"], k["l"], k["c"], k["v"])
            self.candle(msg["s"], timeframe, open_time=k["t"], ohlcv=ohlcv, ts=msg["E"], recv_ts=recv_ts, closed=k["x"])

    def _depth(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"e":"depthUpdate","E":1633998512568,"s":"NKNUSDT","U":499869753,"u":499869754,
        #  "b":[["0.35170000","4265.00000000"]],"a":[["0.35290000","10968.00000000"]]}
        feed = self.book_feed(msg["s"], recv_ts)
        if feed is None:
            return
        with self.syncing(feed):
            ready = feed.sync.on_diff(msg["U"], msg["u"], (msg["b"], msg["a"], msg["E"]))
            self._apply(feed.symbol, ready, recv_ts)
        if not feed.sync.synced:
            self.host.resync(self._book_streams[feed.symbol], None)  # a no-op while a fetch is running

    def _apply(self, symbol: str, diffs: list[Diff], recv_ts: float) -> None:
        feed = self.books[symbol]
        for bids, asks, _ in diffs:
            feed.apply(Action.APPLY, bids, asks)
        if diffs:
            feed.changed(diffs[-1][2], recv_ts)

    async def fetch_snapshot(self, session: aiohttp.ClientSession, budget: RestBudget, stream: Stream) -> bytes:
        url = f"{self.urls['rest']}/api/v3/depth"
        params = {"symbol": stream.market, "limit": str(SNAPSHOT_LIMIT)}
        return await budget.get(session, url, params, weight=SNAPSHOT_WEIGHT)

    def history_request(self, market: str, timeframe: Timeframe, start: int, end: int) -> tuple[str, dict[str, str]]:
        # GET /api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=...&endTime=...&limit=1000 (weight 2)
        params = {
            "symbol": market, "interval": self.history_intervals[timeframe], "startTime": str(start),
            "endTime": str(end - 1), "limit": str(self.history_page),
        }  # fmt: skip
        return f"{self.urls['rest']}/api/v3/klines", params

    def parse_history(self, body: bytes) -> list[Bar]:
        # [[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",
        #   1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]], oldest first
        return [(row[0], row[1], row[2], row[3], row[4], row[5]) for row in _KLINES.decode(body)]

    def on_snapshot(self, stream: Stream, body: bytes, recv_ts: float) -> bool:
        # {"lastUpdateId":160,"bids":[["0.0024","10"]],"asks":[["0.0026","100"]]}
        feed = self.books.get(stream.symbol)
        if feed is None:
            return True  # unsubscribed meanwhile
        snapshot = self.decoder.decode(body)
        try:
            ready = feed.sync.on_snapshot(snapshot["lastUpdateId"])
        except SyncError:
            return False  # older than the buffered diffs, or they have a gap: fetch another
        with self.syncing(feed):
            feed.apply(Action.REPLACE, snapshot["bids"], snapshot["asks"])
            self._apply(feed.symbol, ready, recv_ts)
            if not ready:
                feed.changed(int(recv_ts), recv_ts)  # the REST body carries no time of its own
            return True
        return False
