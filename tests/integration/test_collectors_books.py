"""Book resyncs against the simulator: a gap or a bad checksum rebuilds that one symbol's book.

Consumers are told: the first view after the rebuild says ``resync``. The
other symbols' books go on untouched (except on Coinbase, whose sequence
numbers span the whole connection, so every book on it is rebuilt).
"""

from __future__ import annotations

import pytest

from collectors.simulator import Simulator, SimulatorConfig
from shared.events import Book
from shared.topics import Exchange
from tests.collector_support import Tap, collector_config, running, wait_until

# The fault, and the symbol as the exchange writes it.
FAULTS = {
    Exchange.BINANCE: ("gap", "BTCUSDT"),  # diff ids no longer chain: a new REST snapshot
    Exchange.BYBIT: ("gap", "BTCUSDT"),  # u skips one
    Exchange.OKX: ("gap", "BTC-USDT"),  # prevSeqId does not match the last seqId
    Exchange.KRAKEN: ("corrupt_checksum", "BTC/USD"),  # no sequence numbers: the CRC32 catches it
    Exchange.COINBASE: ("gap", "BTC-USD"),  # sequence_num skips: every book of the connection
}


@pytest.mark.parametrize("exchange", list(FAULTS))
async def test_a_broken_book_is_rebuilt_alone_and_flagged(exchange: Exchange, redis_url: str) -> None:
    fault, native = FAULTS[exchange]
    async with Simulator(SimulatorConfig(exchanges=[exchange])) as sim, Tap(redis_url) as tap:
        config = collector_config(sim, exchange, redis_url, channels=["book", "trades"])
        faulty, other = config.symbols
        async with running(config) as service:
            await wait_until(lambda: {b.symbol for b in tap.of(Book)} == {faulty, other})
            server = sim.server(exchange)
            if fault == "gap":
                server.gap(native)
            else:
                server.corrupt_checksum(native)
            await wait_until(lambda: any(book.resync for book in tap.of(Book, faulty)))
            status = service.collector.status()
            assert status.resyncs >= 1
            reasons = {reason for (symbol, reason) in service.collector.resync_reasons if symbol == faulty}
            assert reasons == {"checksum" if fault == "corrupt_checksum" else "gap"}
            before = len(tap.of(Book, faulty))
            await wait_until(lambda: len(tap.of(Book, faulty)) > before + 3)  # and it goes on
            resynced_other = any(book.resync for book in tap.of(Book, other))
            assert resynced_other is (exchange is Exchange.COINBASE)
            first_after = next(book for book in tap.of(Book, faulty) if book.resync)
            assert first_after.bids and first_after.asks
