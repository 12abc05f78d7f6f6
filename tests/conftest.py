"""Session-wide fixtures: one private Redis server per test session, and a PostgreSQL database of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio

from shared.candle_store import CandleStore
from shared.embedded_postgres import EmbeddedPostgres
from shared.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client on a freshly emptied database."""
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The machine's PostgreSQL when one answers on 127.0.0.1:5432, else a private embedded one."""
    if os.environ.get("FANOUT_TEST_POSTGRES", "auto") != "embedded" and _port_open(5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    with EmbeddedPostgres() as server:
        yield server.url()


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database of this test session's own (random name), dropped at the end."""
    name = f"fanout_test_{secrets.token_hex(6)}"
    admin = postgres_server_url

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[CandleStore]:
    """A candle store on this session's database, emptied."""
    store = await CandleStore.connect(postgres_url)
    await store.pool.execute("TRUNCATE candles")
    yield store
    await store.close()
