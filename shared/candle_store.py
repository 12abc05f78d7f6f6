"""Candle history in PostgreSQL: the schema, its migrations, idempotent writes and paged reads.

One table holds every candle, keyed by exchange, symbol, timeframe and open
time; its primary key is also the index behind "the last N before T". Prices
and volumes are stored as the exchange's decimal text, so history and live
events carry the same strings. A write is an upsert: an open candle is
replaced by newer states of itself, a closed one only by another closed one
(a late open update never reopens a bar, a REST correction may fix one).
Migrations are numbered, applied in order at start-up under an advisory
lock, so collectors and gateways starting together migrate once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg

from shared.events import Candle
from shared.topics import Exchange, Timeframe

logger = logging.getLogger(__name__)

# Any constant: the lock that serialises migrations across processes.
_MIGRATION_LOCK: Final = 0x63616E646C6573  # "candles"
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE candles (
            exchange text NOT NULL,
            symbol text NOT NULL,
            timeframe text NOT NULL,
            open_time bigint NOT NULL,
            open text NOT NULL,
            high text NOT NULL,
            low text NOT NULL,
            close text NOT NULL,
            volume text NOT NULL,
            closed boolean NOT NULL,
            ts bigint NOT NULL,
            PRIMARY KEY (exchange, symbol, timeframe, open_time)
        )
        """,
    ),
)
_UPSERT: Final = """
    INSERT INTO candles AS c (exchange, symbol, timeframe, open_time, open, high, low, close, volume, closed, ts)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::boolean[], $11::bigint[])
    ON CONFLICT (exchange, symbol, timeframe, open_time) DO UPDATE SET
        open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
        volume = EXCLUDED.volume, closed = EXCLUDED.closed, ts = EXCLUDED.ts
    WHERE NOT c.closed OR EXCLUDED.closed
"""
_PAGE: Final = """
    SELECT open_time, open, high, low, close, volume, closed, ts FROM candles
    WHERE exchange = $1 AND symbol = $2 AND timeframe = $3 AND open_time < $4
    ORDER BY open_time DESC LIMIT $5
"""
_RANGE: Final = """
    SELECT open_time, open, high, low, close, volume, closed, ts FROM candles
    WHERE exchange = $1 AND symbol = $2 AND timeframe = $3 AND open_time >= $4 AND open_time < $5
    ORDER BY open_time
"""
_LAST_CLOSED: Final = """
    SELECT max(open_time) FROM candles
    WHERE exchange = $1 AND symbol = $2 AND timeframe = $3 AND closed
"""
_TRIM: Final = "DELETE FROM candles WHERE exchange = $1 AND symbol = $2 AND timeframe = $3 AND open_time < $4"
# Larger than any open time: "before" left out means "up to now and the open candle".
NO_LIMIT_MS: Final = 2**62


async def migrate(connection: asyncpg.Connection) -> int:
    """Apply the migrations this database lacks; returns the schema version."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL)"
        )
        applied = {row[0] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in applied:
                continue
            await connection.execute(sql)
            await connection.execute("INSERT INTO schema_migrations VALUES ($1, now())", version)
            logger.info("schema migrated", extra={"version": version})
    return MIGRATIONS[-1][0]


def _rows(candles: Iterable[Candle]) -> list[list[object]]:
    """Column arrays for the upsert; of several states of one candle the last wins (closed ones first)."""
    latest: dict[tuple[str, str, str, int], Candle] = {}
    for candle in candles:
        key = (candle.exchange, candle.symbol, candle.timeframe, candle.open_time)
        held = latest.get(key)
        if held is None or candle.closed or not held.closed:
            latest[key] = candle
    columns: list[list[object]] = [[] for _ in range(11)]
    for candle in latest.values():
        values = (
            str(candle.exchange), candle.symbol, str(candle.timeframe), candle.open_time, candle.open, candle.high,
            candle.low, candle.close, candle.volume, candle.closed, candle.ts,
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


class CandleStore:
    """Reads and writes the candles table over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 4, timeout_s: float = 10.0) -> CandleStore:
        """A store on a new pool, its schema migrated."""
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, timeout=timeout_s, command_timeout=timeout_s
        )
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def upsert(self, candles: Sequence[Candle]) -> int:
        """Write candles in one statement; returns how many distinct candles were sent."""
        columns = _rows(candles)
        if columns[0]:
            await self.pool.execute(_UPSERT, *columns)
        return len(columns[0])

    async def page(
        self, exchange: Exchange, symbol: str, timeframe: Timeframe, *, before: int = NO_LIMIT_MS, limit: int
    ) -> list[Candle]:
        """At most `limit` candles opening before `before` (ms), oldest first."""
        rows = await self.pool.fetch(_PAGE, str(exchange), symbol, str(timeframe), before, limit)
        return [_candle(exchange, symbol, timeframe, row) for row in reversed(rows)]

    async def between(
        self, exchange: Exchange, symbol: str, timeframe: Timeframe, start: int, end: int
    ) -> list[Candle]:
        """Candles opening in [start, end), oldest first."""
        rows = await self.pool.fetch(_RANGE, str(exchange), symbol, str(timeframe), start, end)
        return [_candle(exchange, symbol, timeframe, row) for row in rows]

    async def last_closed(self, exchange: Exchange, symbol: str, timeframe: Timeframe) -> int | None:
        """Open time of the newest closed candle stored, if any."""
        value: int | None = await self.pool.fetchval(_LAST_CLOSED, str(exchange), symbol, str(timeframe))
        return value

    async def trim(self, exchange: Exchange, symbol: str, timeframe: Timeframe, before: int) -> int:
        """Delete candles opening before `before`; returns how many went."""
        status: str = await self.pool.execute(_TRIM, str(exchange), symbol, str(timeframe), before)
        return int(status.rsplit(" ", 1)[-1])


def _candle(exchange: Exchange, symbol: str, timeframe: Timeframe, row: asyncpg.Record) -> Candle:
    open_time, open_, high, low, close, volume, closed, ts = row
    return Candle(
        exchange=exchange, symbol=symbol, ts=ts, recv_ts=0.0, timeframe=timeframe, open_time=open_time,
        open=open_, high=high, low=low, close=close, volume=volume, closed=closed,
    )  # fmt: skip
