"""CandleStore on a real PostgreSQL: migrations, idempotent upserts, pages, trimming; the embedded server."""

from __future__ import annotations

import asyncpg
import msgspec

from shared.candle_store import CandleStore, migrate
from shared.embedded_postgres import EmbeddedPostgres
from shared.events import Candle
from shared.topics import Exchange, Timeframe

MINUTE = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE


def candle(index: int, *, close: str = "100", closed: bool = True, symbol: str = "BTC/USDT") -> Candle:
    return Candle(
        exchange=Exchange.BINANCE, symbol=symbol, ts=T0 + index * MINUTE + 59_999, recv_ts=0.0,
        timeframe=Timeframe.M1, open_time=T0 + index * MINUTE, open="100", high="101", low="99", close=close,
        volume="1.50000000", closed=closed,
    )  # fmt: skip


async def test_migrations_apply_once(store: CandleStore) -> None:
    async with store.pool.acquire() as connection:
        version = await migrate(connection)
        assert await migrate(connection) == version
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == version


async def test_upsert_is_idempotent_and_pages_run_backwards(store: CandleStore) -> None:
    batch = [candle(i) for i in range(10)]
    await store.upsert(batch)
    await store.upsert(batch)
    page = await store.page(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, limit=4)
    assert [c.open_time for c in page] == [T0 + i * MINUTE for i in range(6, 10)]
    older = await store.page(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, before=page[0].open_time, limit=100)
    assert [c.open_time for c in older] == [T0 + i * MINUTE for i in range(6)]
    assert msgspec.structs.replace(older[0], recv_ts=0.0) == batch[0]
    assert await store.pool.fetchval("SELECT count(*) FROM candles") == 10


async def test_a_closed_candle_is_not_reopened_but_may_be_corrected(store: CandleStore) -> None:
    await store.upsert([candle(0, close="101", closed=True)])
    await store.upsert([candle(0, close="150", closed=False)])  # a late update of the open bar
    [stored] = await store.page(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, limit=1)
    assert (stored.close, stored.closed) == ("101", True)
    await store.upsert([candle(0, close="102", closed=True)])  # a REST correction
    [stored] = await store.page(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, limit=1)
    assert stored.close == "102"


async def test_states_of_one_candle_in_one_batch(store: CandleStore) -> None:
    sent = await store.upsert(
        [candle(0, close="1", closed=False), candle(0, close="2", closed=True), candle(0, close="3", closed=False)]
    )
    assert sent == 1
    [stored] = await store.page(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, limit=5)
    assert (stored.close, stored.closed) == ("2", True)


async def test_last_closed_between_and_trim(store: CandleStore) -> None:
    await store.upsert([candle(i) for i in range(5)] + [candle(5, closed=False), candle(0, symbol="ETH/USDT")])
    assert await store.last_closed(Exchange.BINANCE, "BTC/USDT", Timeframe.M1) == T0 + 4 * MINUTE
    assert await store.last_closed(Exchange.BINANCE, "SOL/USDT", Timeframe.M1) is None
    inside = await store.between(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, T0 + MINUTE, T0 + 3 * MINUTE)
    assert [c.open_time for c in inside] == [T0 + MINUTE, T0 + 2 * MINUTE]
    assert await store.trim(Exchange.BINANCE, "BTC/USDT", Timeframe.M1, T0 + 2 * MINUTE) == 2
    assert await store.pool.fetchval("SELECT count(*) FROM candles WHERE symbol = 'BTC/USDT'") == 4


async def test_embedded_server_starts_from_the_wheel() -> None:
    with EmbeddedPostgres() as server:
        connection = await asyncpg.connect(server.url())
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
