"""Replay of recorded real exchange traffic, looping, at a chosen speed.

A recording is parsed into the market it describes (the book snapshot, then each book
delta and trade at its original time offset) and played into a `Market`; every protocol
then renders it. So a recording serves every channel of its symbol with fresh, consistent
ids, sequence numbers, checksums and timestamps, and a loop stays consistent: at the end
the book is brought back to the recorded snapshot with one ordinary delta and playback
restarts. The recorded prices and sizes (and so the text on the wire, for the exchange that
recorded them) are kept exactly.

The recordings live in ``recordings/`` beside this module; their provenance is in
``recordings/README.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from collectors.simulator.market import (
    BookEvent,
    Change,
    Market,
    MarketEvent,
    Side,
    TakerSide,
    TradeEvent,
    decimals_of,
    parse_scaled,
)
from shared.topics import Exchange

logger = logging.getLogger(__name__)

# Pause between the last recorded event and the loop's first one, in recorded seconds.
LOOP_GAP_S: Final = 0.5

TextChange = tuple[Side, str, str]


@dataclass(frozen=True, slots=True)
class _TextBook:
    offset_s: float
    changes: tuple[TextChange, ...]
    id_span: int = 0


@dataclass(frozen=True, slots=True)
class _TextTrade:
    offset_s: float
    price: str
    size: str
    taker: TakerSide


_TextEvent = _TextBook | _TextTrade


@dataclass(frozen=True, slots=True)
class Recording:
    """A recorded market in exact integers, ready to play."""

    exchange: Exchange
    symbol: str
    base: str
    quote: str
    price_decimals: int
    size_decimals: int
    # Deeper levels are cut after every event, as a client of a depth-limited feed does.
    depth: int | None
    initial: tuple[Change, ...]
    events: tuple[tuple[float, MarketEvent], ...]
    duration_s: float


def _iso_s(text: str) -> float:
    """Unix seconds of an RFC 3339 time with up to nanosecond digits."""
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


def _binance(snapshot: str, frames: list[str]) -> tuple[list[TextChange], list[_TextEvent]]:
    # Snapshot: {"lastUpdateId":499869752,"bids":[["0.35210000","672.00000000"],...],"asks":[...]}
    # Frame: {"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":1633998512068,
    #   "s":"NKNUSDT","U":499869750,"u":499869752,"b":[["0.35130000","6195.00000000"]],"a":[]}}
    body = json.loads(snapshot)
    last = body["lastUpdateId"]
    initial = [(Side.BID, p, q) for p, q in body["bids"]] + [(Side.ASK, p, q) for p, q in body["asks"]]
    events: list[_TextEvent] = []
    for line in frames:
        data = json.loads(line)["data"]
        if data["e"] == "depthUpdate" and data["u"] > last:
            changes = [(Side.BID, p, q) for p, q in data["b"]] + [(Side.ASK, p, q) for p, q in data["a"]]
            span = data["u"] - max(data["U"], last + 1) + 1
            events.append(_TextBook(data["E"] / 1000, tuple(changes), span))
            last = data["u"]
        elif data["e"] == "aggTrade":
            # {"e":"aggTrade","E":1633998523963,"s":"NKNUSDT","a":15683430,"p":"0.35280000",
            #  "q":"58.00000000","f":19862790,"l":19862790,"T":1633998523963,"m":false,"M":true}
            taker = TakerSide.SELL if data["m"] else TakerSide.BUY
            events.append(_TextTrade(data["T"] / 1000, data["p"], data["q"], taker))
    return initial, events


def _coinbase_exchange(frames: list[str]) -> tuple[list[TextChange], list[_TextEvent]]:
    # The Exchange feed (the only long real Coinbase capture); values and timing are kept,
    # the Advanced Trade protocol renders them.
    # {"type":"snapshot","product_id":"SKL-USD","bids":[["0.7901","450.0"]],"asks":[...]}
    # {"type":"l2update","product_id":"SKL-USD","changes":[["sell","0.7923","7441.5"]],
    #  "time":"2021-04-17T16:43:37.075351Z"}
    # {"type":"match","side":"sell","size":"450","price":"0.791","time":"2021-04-17T16:43:37.121358Z",...}
    initial: list[TextChange] = []
    events: list[_TextEvent] = []
    for line in frames:
        frame = json.loads(line)
        kind = frame["type"]
        if kind == "snapshot":
            initial = [(Side.BID, p, q) for p, q in frame["bids"]]
            initial += [(Side.ASK, p, q) for p, q in frame["asks"]]
        elif kind == "l2update":
            changes = tuple((Side.BID if side == "buy" else Side.ASK, p, q) for side, p, q in frame["changes"])
            events.append(_TextBook(_iso_s(frame["time"]), changes))
        elif kind == "match":
            # `side` is the maker's side; the taker took the other one.
            taker = TakerSide.BUY if frame["side"] == "sell" else TakerSide.SELL
            events.append(_TextTrade(_iso_s(frame["time"]), frame["price"], frame["size"], taker))
    return initial, events


def _kraken_v2(frames: list[str]) -> tuple[list[TextChange], list[_TextEvent]]:
    # {"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],
    #  "asks":[{"price":29431.1,"qty":0.0}],"checksum":3547452596,"timestamp":"2023-07-30T15:29:58.343415Z"}]}
    initial: list[TextChange] = []
    events: list[_TextEvent] = []
    for line in frames:
        frame = json.loads(line, parse_float=str, parse_int=str)
        for item in frame["data"]:
            changes = [(Side.BID, level["price"], level["qty"]) for level in item["bids"]]
            changes += [(Side.ASK, level["price"], level["qty"]) for level in item["asks"]]
            if frame["type"] == "snapshot":
                initial = changes
            else:
                events.append(_TextBook(_iso_s(item["timestamp"]), tuple(changes)))
    return initial, events


def _bybit(frames: list[str]) -> tuple[list[TextChange], list[_TextEvent]]:
    # {"topic":"orderbook.50.BTCUSDT","ts":1731035685345,"type":"delta","data":{"s":"BTCUSDT",
    #  "b":[["75848.62","0.014895"]],"a":[["75852.65","0"]],"u":2876701,"seq":47474967823},"cts":1731035685342}
    initial: list[TextChange] = []
    events: list[_TextEvent] = []
    for line in frames:
        frame = json.loads(line)
        data = frame["data"]
        changes = [(Side.BID, p, q) for p, q in data["b"]] + [(Side.ASK, p, q) for p, q in data["a"]]
        if frame["type"] == "snapshot":
            initial = changes
        else:
            events.append(_TextBook(frame["ts"] / 1000, tuple(changes)))
    return initial, events


def _okx(frames: list[str]) -> tuple[list[TextChange], list[_TextEvent]]:
    # {"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":
    #  [["30243.5","1.44679","0","6"]],"bids":[],"ts":"1652459225381","checksum":-1426380329}]}
    # {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
    #  "tradeId":"309495981","px":"30243.5","sz":"0.0012","side":"buy","ts":"1652459225381"}]}
    initial: list[TextChange] = []
    events: list[_TextEvent] = []
    for line in frames:
        frame = json.loads(line)
        channel = frame["arg"]["channel"]
        for item in frame["data"]:
            if channel == "trades":
                taker = TakerSide(item["side"])
                events.append(_TextTrade(int(item["ts"]) / 1000, item["px"], item["sz"], taker))
                continue
            changes = [(Side.BID, lv[0], lv[1]) for lv in item["bids"]]
            changes += [(Side.ASK, lv[0], lv[1]) for lv in item["asks"]]
            if frame["action"] == "snapshot":
                initial = changes
            else:
                events.append(_TextBook(int(item["ts"]) / 1000, tuple(changes)))
    return initial, events


@dataclass(frozen=True, slots=True)
class _Spec:
    exchange: Exchange
    symbol: str
    base: str
    quote: str
    files: tuple[str, ...]
    depth: int | None
    min_size_decimals: int = 0


_SPECS: Final = (
    _Spec(
        Exchange.BINANCE,
        "NKNUSDT",
        "NKN",
        "USDT",
        ("binance_NKNUSDT_depth_snapshot_2021-10-12.json", "binance_NKNUSDT_combined_2021-10-12.jsonl"),
        None,
    ),
    _Spec(Exchange.COINBASE, "SKL-USD", "SKL", "USD", ("coinbase_SKL-USD_exchange_feed_2021-04-17.jsonl",), None),
    # Kraken's BTC/USD quantities have 8 decimals; the file lost trailing zeros.
    _Spec(Exchange.KRAKEN, "BTC/USD", "BTC", "USD", ("kraken_v2_BTC-USD_book10_2023-07-30_reserialized.jsonl",), 10, 8),
    _Spec(Exchange.BYBIT, "BTCUSDT", "BTC", "USDT", ("bybit_BTCUSDT_orderbook50_2024-11-08.jsonl",), 50),
    _Spec(Exchange.OKX, "BTC-USDT", "BTC", "USDT", ("okx_BTC-USDT_public_2022-05-13.jsonl",), 400),
)


def _read(name: str) -> str:
    return resources.files("collectors.simulator").joinpath("recordings", name).read_text("utf-8")


def _parse(spec: _Spec) -> tuple[list[TextChange], list[_TextEvent]]:
    texts = [_read(name) for name in spec.files]
    lines = [line for line in texts[-1].splitlines() if line.strip()]
    parsers: dict[Exchange, Callable[[], tuple[list[TextChange], list[_TextEvent]]]] = {
        Exchange.BINANCE: lambda: _binance(texts[0], lines),
        Exchange.COINBASE: lambda: _coinbase_exchange(lines),
        Exchange.KRAKEN: lambda: _kraken_v2(lines),
        Exchange.BYBIT: lambda: _bybit(lines),
        Exchange.OKX: lambda: _okx(lines),
    }
    return parsers[spec.exchange]()


def _build(spec: _Spec) -> Recording:
    initial_text, text_events = _parse(spec)
    prices = [p for _, p, _ in initial_text]
    sizes = [q for _, _, q in initial_text]
    for event in text_events:
        if isinstance(event, _TextBook):
            prices += [p for _, p, _ in event.changes]
            sizes += [q for _, _, q in event.changes]
        else:
            prices.append(event.price)
            sizes.append(event.size)
    pdec = max(map(decimals_of, prices))
    sdec = max(spec.min_size_decimals, *map(decimals_of, sizes))
    t0 = min(event.offset_s for event in text_events)
    events: list[tuple[float, MarketEvent]] = []
    for event in sorted(text_events, key=lambda e: e.offset_s):
        offset = event.offset_s - t0
        if isinstance(event, _TextBook):
            changes = tuple((s, parse_scaled(p, pdec), parse_scaled(q, sdec)) for s, p, q in event.changes)
            events.append((offset, BookEvent(changes, event.id_span)))
        else:
            events.append(
                (offset, TradeEvent(parse_scaled(event.price, pdec), parse_scaled(event.size, sdec), event.taker))
            )
    initial = tuple((s, parse_scaled(p, pdec), parse_scaled(q, sdec)) for s, p, q in initial_text)
    duration = (events[-1][0] if events else 0.0) + LOOP_GAP_S
    return Recording(
        spec.exchange, spec.symbol, spec.base, spec.quote, pdec, sdec, spec.depth, initial, tuple(events), duration
    )


@cache
def recordings(exchange: Exchange) -> dict[str, Recording]:
    """The recordings of `exchange` by symbol, parsed once per process."""
    return {spec.symbol: _build(spec) for spec in _SPECS if spec.exchange is exchange}


def _truncated(market: Market, changes: tuple[Change, ...], depth: int) -> tuple[Change, ...]:
    """`changes` plus removals of the levels that fall below `depth` once they are applied."""
    extra: list[Change] = []
    for side in Side:
        book_side = market.book[side]
        levels = dict(book_side.sizes)
        for s, price, size in changes:
            if s is side:
                if size:
                    levels[price] = size
                else:
                    levels.pop(price, None)
        if len(levels) > depth:
            ordered = sorted(levels, key=book_side.key)
            extra.extend((side, price, 0) for price in ordered[depth:])
    return changes + tuple(extra)


class ReplaySource:
    """Plays one recording into its market, looping, at `speed` times the recorded pace."""

    def __init__(self, market: Market, recording: Recording, *, speed: float, now: float) -> None:
        self.market = market
        self.recording = recording
        self._speed = speed
        self._start = now
        self._index = 0
        self.loops = 0

    def initial_book(self) -> list[Change]:
        return list(self.recording.initial)

    def resume(self, now: float) -> None:
        """Continue from the current position without replaying the idle time as a burst."""
        events = self.recording.events
        position = events[self._index][0] if self._index < len(events) else self.recording.duration_s
        self._start = now - position / self._speed

    def step(self, now: float) -> Iterator[MarketEvent]:
        """Events due by `now`; the caller applies each before asking for the next."""
        recording = self.recording
        while True:
            if self._index >= len(recording.events):
                if now < self._start + recording.duration_s / self._speed:
                    return
                # Bring the book back to the recorded snapshot with an ordinary delta.
                self._start += recording.duration_s / self._speed
                self._index = 0
                self.loops += 1
                reset = tuple(self.market.book.diff_to(recording.initial))
                if reset:
                    yield BookEvent(reset)
                continue
            offset, event = recording.events[self._index]
            if now < self._start + offset / self._speed:
                return
            self._index += 1
            if isinstance(event, BookEvent) and recording.depth is not None:
                event = BookEvent(_truncated(self.market, event.changes, recording.depth), event.id_span)
            yield event
