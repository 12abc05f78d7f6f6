"""The five exchange adapters, by exchange."""

from __future__ import annotations

from typing import Any, Final

from collectors.exchanges.binance import Binance
from collectors.exchanges.bybit import Bybit
from collectors.exchanges.coinbase import Coinbase
from collectors.exchanges.kraken import Kraken
from collectors.exchanges.okx import Okx
from collectors.feed.adapter import Adapter
from shared.topics import Exchange

ADAPTERS: Final[dict[Exchange, type[Adapter[Any]]]] = {
    adapter.exchange: adapter for adapter in (Binance, Coinbase, Kraken, Bybit, Okx)
}

__all__ = ["ADAPTERS", "Binance", "Bybit", "Coinbase", "Kraken", "Okx"]
