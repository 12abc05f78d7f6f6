"""Coinbase Advanced Trade: ``wss://advanced-trade-ws.coinbase.com``, public channels only.

Protocol notes: one channel per subscribe request, with a list of product ids
(``BTC-USD``); ``level2`` (messages on ``l2_data``) is a full book, public
here, unlike the old Exchange feed whose level2 now needs authentication.
Most channels close after a minute without updates unless the connection
also subscribes to ``heartbeats`` (one a second), which every connection
does first. ``sequence_num`` counts every message of a connection across
all channels, so a gap cannot be pinned on one product: every book of that
connection is resynced. Candles exist only as 5 minutes; other timeframes
are built from trades. Public trades name the maker's side: it is flipped to
the taker's, as the other exchanges report it. Coinbase merged its USDC books
into USD: a ``BTC-USDC`` subscription is answered under ``BTC-USD``, so data
of a ``-USD`` id also goes to its ``-USDC`` twin when that is subscribed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, Final

import msgspec

from collectors.book import Action, ConnectionSequencer, DataError, SnapshotGate, SyncError
from collectors.feed.adapter import Adapter, Bar, Link, Op, Stream, iso_ms, to_json
from shared.events import Side
from shared.topics import Exchange, Kind, Timeframe

_TAKER: Final = {"BUY": Side.SELL, "SELL": Side.BUY}  # the maker bought: the taker sold
_HEARTBEATS: Final = to_json({"type": "subscribe", "channel": "heartbeats"})


class _Candle(msgspec.Struct):
    start: str
    low: str
    high: str
    open: str
    close: str
    volume: str


class _Candles(msgspec.Struct):
    candles: list[_Candle]


_CANDLES: Final = msgspec.json.Decoder(_Candles)


class Coinbase(Adapter[SnapshotGate]):
    exchange: ClassVar[Exchange] = Exchange.COINBASE
    endpoints: ClassVar[dict[str, str]] = {
        "ws": "wss://advanced-trade-ws.coinbase.com",
        "rest": "https://api.coinbase.com",
    }
    channels: ClassVar[dict[Kind, str]] = {Kind.TICKER: "ticker", Kind.TRADES: "market_trades", Kind.BOOK: "level2"}
    candle_channels: ClassVar[dict[Timeframe, str]] = {Timeframe.M5: "candles"}
    # Coinbase disconnects slow consumers (ErrSlowConsume): keep full books of many products apart.
    max_streams_per_connection: ClassVar[int] = 100
    max_streams_per_request: ClassVar[int] = 100
    # 8 unauthenticated messages a second per address, shared by all connections.
    requests_per_second: ClassVar[float] = 4.0
    # Public REST: 10 requests a second per address; history takes a share of it.
    rest_weight_per_minute: ClassVar[float] = 300.0
    history_intervals: ClassVar[dict[Timeframe, str]] = {
        Timeframe.M1: "ONE_MINUTE",
        Timeframe.M5: "FIVE_MINUTE",
        Timeframe.M15: "FIFTEEN_MINUTE",
        Timeframe.M30: "THIRTY_MINUTE",
        Timeframe.H1: "ONE_HOUR",
        Timeframe.H2: "TWO_HOUR",
        Timeframe.H6: "SIX_HOUR",
        Timeframe.D1: "ONE_DAY",
    }
    history_page: ClassVar[int] = 350

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sequences: dict[str, ConnectionSequencer] = {}

    def market(self, symbol: str) -> str:
        return symbol.replace("/", "-")

    def _targets(self, product_id: str) -> list[str]:
        """The subscribed products a message's id stands for: itself, and its USDC twin."""
        targets = [product_id] if product_id in self.markets else []
        if product_id.endswith("-USD") and (twin := product_id + "C") in self.markets:
            targets.append(twin)
        return targets

    def new_sync(self) -> SnapshotGate:
        return SnapshotGate()

    def group(self, stream: Stream) -> Hashable:
        return stream.channel

    def render(self, op: Op, group: Hashable, streams: list[Stream]) -> str:
        # {"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"level2"}
        products = [stream.market for stream in streams]
        return to_json({"type": str(op), "product_ids": products, "channel": str(group)})

    def open_messages(self) -> list[str]:
        # {"type":"subscribe","channel":"heartbeats"}
        return [_HEARTBEATS]

    def connection_opened(self, link: Link) -> None:
        self._sequences[link.id] = ConnectionSequencer()  # numbering starts again per connection

    def connection_lost(self, link: Link) -> None:
        self._sequences.pop(link.id, None)
        super().connection_lost(link)

    def on_message(self, link: Link, data: str | bytes, recv_ts: float) -> None:
        msg = self.decoder.decode(data)
        sequence = msg.get("sequence_num")
        if sequence is not None:
            try:
                self._sequences.setdefault(link.id, ConnectionSequencer()).check(sequence)
            except SyncError as exc:
                for stream in link.streams:
                    if stream.kind is Kind.BOOK:
                        self.resync(stream.symbol, exc)
        channel = msg.get("channel")
        if channel == "l2_data":
            self._book(msg, recv_ts)
        elif channel == "market_trades":
            self._trades(msg, recv_ts)
        elif channel == "ticker":
            self._ticker(msg, recv_ts)
        elif channel == "candles":
            self._candle_update(msg, recv_ts)
        elif msg.get("type") == "error":
            # {"type":"error","message":"authentication failure"}
            self.rejected(link, msg.get("message"))
        # heartbeats and subscriptions acks need nothing beyond the sequence check

    def _book(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"l2_data","client_id":"","timestamp":"2026-04-07T14:30:01.456789Z",
        #  "sequence_num":1,"events":[{"type":"update","product_id":"BTC-USD","updates":[
        #  {"side":"bid","event_time":"2026-04-07T14:30:01.456789Z","price_level":"68900.00",
        #  "new_quantity":"2.00000000"}]}]}
        ts = iso_ms(msg["timestamp"])
        for event in msg["events"]:
            bids: list[tuple[str, str]] = []
            asks: list[tuple[str, str]] = []
            for update in event["updates"]:
                level = (update["price_level"], update["new_quantity"])
                (bids if update["side"] == "bid" else asks).append(level)
            for market in self._targets(event["product_id"]):
                feed = self.book_feed(market, recv_ts)
                if feed is None:
                    continue
                with self.syncing(feed):
                    action = feed.sync.check(snapshot=event["type"] == "snapshot")
                    feed.apply(action, bids, asks)
                    if action is not Action.SKIP:
                        feed.changed(ts, recv_ts)

    def _trades(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"market_trades","client_id":"","timestamp":"2026-04-07T14:30:02.789012Z",
        #  "sequence_num":5,"events":[{"type":"update","trades":[{"trade_id":"995098700",
        #  "product_id":"BTC-USD","price":"68900.50","size":"0.00150000","side":"BUY",
        #  "time":"2026-04-07T14:30:02.789012Z"}]}]}
        for event in msg["events"]:
            if event["type"] == "snapshot":
                continue  # recent history sent on subscribe: already published before a reconnect
            for trade in event["trades"]:
                for market in self._targets(trade["product_id"]):
                    self.trade(
                        market, trade_id=trade["trade_id"], price=trade["price"], size=trade["size"],
                        side=_TAKER[trade["side"]], ts=iso_ms(trade["time"]), recv_ts=recv_ts,
                    )  # fmt: skip

    def _ticker(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"ticker","client_id":"","timestamp":"2026-04-07T14:30:03.000000Z",
        #  "sequence_num":12,"events":[{"type":"snapshot","tickers":[{"type":"ticker",
        #  "product_id":"BTC-USD","price":"68900.50","volume_24_h":"15328.12345678",
        #  "low_24_h":"67500.00","high_24_h":"69200.00","low_52_w":"25000.00","high_52_w":"73800.00",
        #  "price_percent_chg_24_h":"1.85","best_bid":"68900.00","best_bid_quantity":"1.50000000",
        #  "best_ask":"68901.00","best_ask_quantity":"0.50000000"}]}]}
        ts = iso_ms(msg["timestamp"])
        for event in msg["events"]:
            for item in event["tickers"]:
                for market in self._targets(item["product_id"]):
                    self._one_ticker(market, item, ts, recv_ts)

    def _one_ticker(self, market: str, item: dict[str, Any], ts: int, recv_ts: float) -> None:
        self.ticker(
            market, ts, recv_ts,
            bid=item.get("best_bid"), bid_size=item.get("best_bid_quantity"),
            ask=item.get("best_ask"), ask_size=item.get("best_ask_quantity"), last=item["price"],
            high_24h=item["high_24_h"], low_24h=item["low_24_h"], volume_24h=item["volume_24_h"],
        )  # fmt: skip

    def history_request(self, market: str, timeframe: Timeframe, start: int, end: int) -> tuple[str, dict[str, str]]:
        # GET /api/v3/brokerage/market/products/BTC-USD/candles?start=..&end=..&granularity=ONE_MINUTE (seconds)
        params = {
            "start": str(start // 1000), "end": str((end - 1) // 1000),
            "granularity": self.history_intervals[timeframe], "limit": str(self.history_page),
        }  # fmt: skip
        return f"{self.urls['rest']}/api/v3/brokerage/market/products/{market}/candles", params

    def parse_history(self, body: bytes) -> list[Bar]:
        # {"candles":[{"start":"1712192400","low":"66055.14","high":"66331.99","open":"66312.4",
        #  "close":"66181.6","volume":"355.82896243"}, ...]}, newest first
        bars = []
        for item in reversed(_CANDLES.decode(body).candles):
            if not item.start.isascii() or not item.start.isdigit() or len(item.start) > 12:
                raise DataError(f"candle start {item.start[:20]!r} is not a time in seconds")
            bars.append((int(item.start) * 1000, item.open, item.high, item.low, item.close, item.volume))
        return bars

    def _candle_update(self, msg: dict[str, Any], recv_ts: float) -> None:
        # {"channel":"candles","client_id":"","timestamp":"2026-04-07T14:30:05.000000Z",
        #  "sequence_num":3,"events":[{"type":"update","candles":[{"start":"1775521800",
        #  "high":"68950.00","low":"68850.00","open":"68900.00","close":"68920.50",
        #  "volume":"42.15000000","product_id":"BTC-USD"}]}]}
        ts = iso_ms(msg["timestamp"])
        for event in msg["events"]:
            for item in event["candles"]:
                ohlcv = (item["open"], item["high"], item["low"], item["close"], item["volume"])
                open_time = int(item["start"]) * 1000
                for market in self._targets(item["product_id"]):
                    self.candle(market, Timeframe.M5, open_time=open_time, ohlcv=ohlcv, ts=ts, recv_ts=recv_ts)
