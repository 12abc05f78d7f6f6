"""One module per exchange protocol, on the shared `Protocol` base."""

from __future__ import annotations

from typing import Final

from collectors.simulator.protocols.base import Feed, FeedKind, Protocol
from collectors.simulator.protocols.binance import BinanceProtocol
from collectors.simulator.protocols.bybit import BybitProtocol
from collectors.simulator.protocols.coinbase import CoinbaseProtocol
from collectors.simulator.protocols.kraken import KrakenProtocol
from collectors.simulator.protocols.okx import OkxProtocol
from shared.topics import Exchange

PROTOCOLS: Final[dict[Exchange, type[Protocol]]] = {
    Exchange.BINANCE: BinanceProtocol,
    Exchange.COINBASE: CoinbaseProtocol,
    Exchange.KRAKEN: KrakenProtocol,
    Exchange.BYBIT: BybitProtocol,
    Exchange.OKX: OkxProtocol,
}

__all__ = ["PROTOCOLS", "Feed", "FeedKind", "Protocol"]
