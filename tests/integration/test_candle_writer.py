"""CandleWriter against a real PostgreSQL: coalescing, the drop-oldest bound, and a store that fails."""

from __future__ import annotations

import asyncio
import contextlib

from collectors.candle_writer import CandleWriter
from shared.candle_store import CandleStore
from shared.events import Candle, Side, Trade
from shared.topics import Exchange, Timeframe
from tests.harness import wait_until

MINUTE = 60_000
T0 = 1_700_000_040_000


def candle(index: int, *, close: str = "100", closed: bool = False) -> Candle:
    return Candle(
        exchange=Exchange.OKX, symbol="BTC/USDT", ts=T0 + index * MINUTE, recv_ts=0.0, timeframe=Timeframe.M1,
        open_time=T0 + index * MINUTE, open="100", high="101", low="99", close=close, volume="1", closed=closed,
    )  # fmt: skip


async def test_updates_of_one_candle_coalesce_and_a_close_is_never_undone(store: CandleStore) -> None:
    writer = CandleWriter(store, flush_s=0.05)
    for step in range(50):
        writer.put(candle(0, close=str(100 + step)))
    writer.put(candle(0, close="200", closed=True))
    writer.put(candle(0, close="999"))  # a late open update after the close
    writer.put(
        Trade(
            exchange=Exchange.OKX,
            symbol="BTC/USDT",
            ts=1,
            recv_ts=0.0,
            trade_id="1",
            price="1",
            size="1",
            side=Side.BUY,
        )
    )
    assert len(writer) == 1
    task = asyncio.create_task(writer.run())
    try:
        await wait_until(lambda: writer.written == 1 and not len(writer), timeout=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [stored] = await store.page(Exchange.OKX, "BTC/USDT", Timeframe.M1, limit=5)
    assert (stored.close, stored.closed) == ("200", True)


async def test_a_full_queue_drops_the_oldest_candle(store: CandleStore) -> None:
    writer = CandleWriter(store, max_pending=3)
    for index in range(5):
        writer.put(candle(index))
    writer.put(candle(4, close="101"))  # an update of a queued candle takes no new room
    assert (len(writer), writer.dropped) == (3, 2)
    await writer.drain(10)
    stored = await store.page(Exchange.OKX, "BTC/USDT", Timeframe.M1, limit=10)
    assert [c.open_time for c in stored] == [T0 + i * MINUTE for i in (2, 3, 4)]
    assert stored[-1].close == "101"


async def test_a_failing_store_keeps_the_batch_and_counts_the_error(postgres_url: str) -> None:
    broken = await CandleStore.connect(postgres_url)
    await broken.close()  # every write now fails
    writer = CandleWriter(broken, backoff_initial_s=0.01, backoff_max_s=0.02)
    writer.put(candle(0))
    writer.put(candle(1))
    await writer.drain(1)
    assert (writer.errors, writer.db_up, len(writer), writer.dropped) == (1, False, 2, 0)
    writer.put(candle(1, close="150"))  # a newer state while the batch waited wins
    assert len(writer) == 2
