"""Kraken spot, WebSocket v2: ``wss://ws.kraken.com/v2``.

Protocol notes: one channel per request with a list of symbols (``BTC/USD``,
as ours); book depth is one of 10, 25, 100, 500, 1000 and every book message
carries a CRC32 of the top 10 levels, computed from the decimal text Kraken
sent. v2 sends prices as bare JSON numbers, so frames are decoded with floats
kept as their text. Kraken has no sequence numbers: the checksum after each
message is the only loss detector, and a mismatch resubscribes that symbol.
A subscribed connection gets a heartbeat every second; ``{"method":"ping"}``
is answered by a pong.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar, Final

import msgspec

from collectors.book import Action, DataError, Level, LevelText, SnapshotGate, SyncError
from collectors.checksums import kraken_level_text, verify_kraken
from collectors.feed.adapter import Adapter, Bar, Link, Op, Stream, iso_ms, to_json
from shared.events import Side
from shared.topics import Exchange, Kind, Timeframe

# Kraken's OHLC intervals in minutes. Its weekly (10080) grid is not documented, so our
# Monday weeks are built by us, like 3m, 2h, 6h, 8h, 12h, 3d and months.
_INTERVALS: Final = {
    Timeframe.M1: 1,
    Timeframe.M5: 5,
    Timeframe.M15: 15,
    Timeframe.M30: 30,
    Timeframe.H1: 60,
    Timeframe.H4: 240,
    Timeframe.D1: 1440,
}
_TIMEFRAMES: Final = {minutes: timeframe for timeframe, minutes in _INTERVALS.items()}


class _Ohlc(msgspec.Struct):
    error: list[str]
    result: dict[str, Any] = {}


_OHLC: Final = msgspec.json.Decoder(_Ohlc)
# [time (s), open, high, low, close, vwap, volume, count]
_ROWS: Final = list[tuple[int, str, str, str, str, str, str, int]]


def _text(value: object) -> str:
    # Floats arrive as their exact text (float_hook=str); integers ("qty":0) as int.
    return value if isinstance(value, str) else str(value)


class _Level(msgspec.Struct, gc=False):
    price: Any  # the exact text (decoded with float_hook=str); an integer ("qty":0) stays an int
    qty: Any


class _BookItem(msgspec.Struct, gc=False):
    symbol: str
    checksum: int
    bids: list[_Level] = []
    asks: list[_Level] = []
    timestamp: str | None = None


class _BookMessage(msgspec.Struct, gc=False):
    """A book message as typed fields: cheaper to decode and read than dicts, and most frames are these."""

    type: str
    data: list[_BookItem]


_BOOK: Final = msgspec.json.Decoder(_BookMessage, float_hook=str)
# How Kraken starts a book message; one that starts otherwise is decoded as any other and converted.
_BOOK_START: Final = '{"channel":"book",'


def _levels(levels: list[_Level]) -> list[Level]:
    # str() of a str is the str itself; anything else becomes text that the book refuses or accepts as Decimal would
    return [(str(level.price), str(level.qty)) for level in levels]


class Kraken(Adapter[SnapshotGate]):
    exchange: ClassVar[Exchange] = Exchange.KRAKEN
    endpoints: ClassVar[dict[str, str]] = {"ws": "wss://ws.kraken.com/v2", "rest": "https://api.kraken.com"}
    channels: ClassVar[dict[Kind, str]] = {Kind.TICKER: "ticker", Kind.TRADES: "trade", Kind.BOOK: "book"}
    # "ohlc:<minutes>": the interval is a request parameter, kept in the channel name.
    candle_channels: ClassVar[dict[Timeframe, str]] = {tf: f"ohlc:{minutes}" for tf, minutes in _INTERVALS.items()}
    book_depths: ClassVar[tuple[int, ...]] = (10, 25, 100, 500, 1000)
    # Kraken documents no stream cap; this keeps one connection's burst after a reconnect modest.
    max_streams_per_connection: ClassVar[int] = 400
    max_streams_per_request: ClassVar[int] = 50
    # The request rate limit is load-dependent and undocumented; stay slow.
    requests_per_second: ClassVar[float] = 4.0
    decoder: ClassVar[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(float_hook=str)
    # Public REST: about one call a second per address. OHLC keeps the 720 most recent candles.
    rest_weight_per_minute: ClassVar[float] = 45.0
    history_intervals: ClassVar[dict[Timeframe, str]] = {tf: str(minutes) for tf, minutes in _INTERVALS.items()}
    history_page: ClassVar[int] = 720
    history_max_bars: ClassVar[int | None] = 720

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Most decimals seen per symbol in prices and sizes: the instrument's precision, for a
        # checksum over text that lost its trailing zeros (`verify_kraken`). Only counted when
        # a message's text fails its checksum: an exact feed never needs it.
        self._precision: dict[str, tuple[int, int]] = {}

    def market(self, symbol: str) -> str:
        return symbol

    def new_sync(self) -> SnapshotGate:
        return SnapshotGate()

    def level_text(self) -> LevelText:
        return kraken_level_text

    def group(self, stream: Stream) -> Hashable:
        return stream.channel

    def render(self, op: Op, group: Hashable, streams: list[Stream]) -> str:
        # {"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10,
        #  "snapshot":true},"req_id":1}
        channel, _, minutes = str(group).partition(":")
        params: dict[str, Any] = {"channel": channel, "symbol": [stream.market for stream in streams]}
        if channel == "book":
            params["depth"] = self.subscribe_depth
        elif channel == "ohlc":
            params["interval"] = int(minutes)
        if op is Op.SUBSCRIBE:
            # Books need their snapshot; past trades and candles would be published again on every reconnect.
            params["snapshot"] = channel == "book"
        return to_json({"method": str(op), "params": params, "req_id": self.request_id()})

    def history_request(self, market: str, timeframe: Timeframe, start: int, end: int) -> tuple[str, dict[str, str]]:
        # GET /0/public/OHLC?pair=BTCUSD&interval=1&since=<s>: candles after `since`, the 720 most recent at most
        params = {"pair": market.replace("/", ""), "interval": self.history_intervals[timeframe]}
        params["since"] = str(max(0, start // 1000 - 1))
        return f"{self.urls['rest']}/0/public/OHLC", params

    def parse_history(self, body: bytes) -> list[Bar]:
        # {"error":[],"result":{"XXBTZUSD":[[1688671200,"30306.1","30306.2","30305.7","30305.7",
        #  "30306.1","3.39243896",23]],"last":1688672160}}, oldest first; the last one is still open
        reply = _OHLC.decode(body)
        if reply.error:
            raise DataError(f"kraken refused the request: {'; '.join(reply.error)[:300]}")
        pairs = [value for key, value in reply.result.items() if key != "last"]
        if len(pairs) != 1:
            raise DataError(f"an OHLC result holds {len(pairs)} pairs, not one")
        rows = msgspec.convert(pairs[0], _ROWS)
        return [(row[0] * 1000, row[1], row[2], row[3], row[4], row[6]) for row in rows]

    def ping_message(self) -> str:
        # {"method":"ping","req_id":101}
        return to_json({"method": "ping", "req_id": self.request_id()})

    def on_message(self, link: Link, data: str | bytes, recv_ts: float) -> None:
        if isinstance(data, str) and data.startswith(_BOOK_START):
            self._book(_BOOK.decode(data), recv_ts)
            return
        msg = self.decoder.decode(data)
        channel = msg.get("channel")
        if channel == "book":
            self._book(msgspec.convert(msg, _BookMessage), recv_ts)
        elif channel == "trade":
            self._trades(msg, recv_ts)
        elif channel == "ticker":
            self._ticker(msg, recv_ts)
        elif channel == "ohlc":
            self._ohlc(msg, recv_ts)
        elif msg.get("success") is False:
            # {"error":"Subscription depth not supported","method":"subscribe","success":false,
            #  "time_in":"2026-08-16T23:54:19.629313Z","time_out":"2026-08-16T23:54:19.629343Z"}
            self.rejected(link, msg.get("error"))
        # heartbeat, status, pong and subscribe acks need nothing

    def _book(self, msg: _BookMessage, recv_ts: float) -> None:
        # {"channel":"book","type":"update","data":[{"symbol":"ETH/BTC","bids":[{"price":0.031347,
        #  "qty":0.00000000},{"price":0.031329,"qty":19.07893401}],"asks":[],"checksum":2505869009,
        #  "timestamp":"2026-08-26T15:16:16.730423Z"}]}
        snapshot = msg.type == "snapshot"
        for item in msg.data:
            feed = self.book_feed(item.symbol, recv_ts)
            if feed is None:
                continue
            with self.syncing(feed):
                action = feed.sync.check(snapshot=snapshot)
                if action is Action.SKIP:
                    continue
                bids, asks = _levels(item.bids), _levels(item.asks)
                feed.apply(action, bids, asks)
                feed.book.truncate(self.subscribe_depth)  # Kraken sends no delete for levels pushed out
                try:
                    verify_kraken(feed.book, item.checksum)
                except SyncError:  # the text as sent failed: once more at the instrument's precision
                    precision = functools.partial(self._seen_precision, feed.symbol, bids, asks)
                    verify_kraken(feed.book, item.checksum, precision)
                timestamp = item.timestamp
                feed.changed(iso_ms(timestamp) if timestamp else int(recv_ts), recv_ts)

    def _seen_precision(self, symbol: str, *levels: Iterable[Level]) -> tuple[int, int]:
        """The most decimals seen in `symbol`'s levels: those of each message whose text failed, and of its top 10."""
        price_decimals, size_decimals = self._precision.get(symbol, (0, 0))
        for price, size in itertools.chain(*levels):
            price_decimals = max(price_decimals, len(price.partition(".")[2]))
            size_decimals = max(size_decimals, len(size.partition(".")[2]))
        self._precision[symbol] = precision = (min(price_decimals, 18), min(size_decimals, 18))
        return precision

    def _trades(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy",
        #  "price":105944.20,"qty":0.00027625,"ord_type":"limit","trade_id":10218208,
        #  "timestamp":"2023-10-06T17:35:55.440295Z"}]}
        for item in msg["data"]:
            self.trade(
                item["symbol"], trade_id=str(item["trade_id"]), price=_text(item["price"]), size=_text(item["qty"]),
                side=Side(item["side"]), ts=iso_ms(item["timestamp"]), recv_ts=recv_ts,
            )  # fmt: skip

    def _ticker(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"ticker","type":"snapshot","data":[{"symbol":"BTC/USD","bid":105944.20,
        #  "bid_qty":2.5,"ask":105944.30,"ask_qty":3.2,"last":105899.40,"volume":163.28908096,
        #  "vwap":105904.39279,"low":104711.00,"high":106613.10,"change":250.00,"change_pct":0.24,
        #  "timestamp":"2022-12-25T09:30:59.123456Z"}]}
        for item in msg["data"]:
            timestamp = item.get("timestamp")  # not in every version of the channel
            self.ticker(
                item["symbol"], iso_ms(timestamp) if timestamp else int(recv_ts), recv_ts,
                bid=_text(item["bid"]), bid_size=_text(item["bid_qty"]),
                ask=_text(item["ask"]), ask_size=_text(item["ask_qty"]), last=_text(item["last"]),
                high_24h=_text(item["high"]), low_24h=_text(item["low"]), volume_24h=_text(item["volume"]),
            )  # fmt: skip

    def _ohlc(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"ohlc","type":"update","data":[{"symbol":"BTC/USD","interval":1,
        #  "interval_begin":"2023-10-04T16:25:00.000000000Z","open":106038.2,"high":106044.3,
        #  "low":106038.1,"close":106040.1,"volume":30927.68066226,"vwap":106039.6,"trades":12}]}
        for item in msg["data"]:
            timeframe = _TIMEFRAMES.get(int(item["interval"]))
            if timeframe is None:
                continue
            ohlcv = (_text(item["open"]), _text(item["high"]), _text(item["low"]), _text(item["close"]),
                     _text(item["volume"]))  # fmt: skip
            timestamp = item.get("timestamp")
            ts = iso_ms(timestamp) if timestamp else int(recv_ts)
            open_time = iso_ms(item["interval_begin"])
            self.candle(item["symbol"], timeframe, open_time=open_time, ohlcv=ohlcv, ts=ts, recv_ts=recv_ts)
