"""Relay.acquire: every channel of a call confirmed by a real Redis, or released (timeout, cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway import relay as relay_module
from gateway.relay import Relay
from shared.redis_target import RedisTarget


@contextlib.asynccontextmanager
async def running_relay(url: str) -> AsyncIterator[Relay]:
    relay = Relay(RedisTarget.parse(url), lambda _messages: None, permanent=("test:control",))
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(5):
            while not relay.ready:
                await asyncio.sleep(0.01)
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def silent_redis() -> AsyncIterator[str]:
    """A server that accepts connections and reads, but never answers (a Redis that hangs)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_acquire_confirms_every_channel_once(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with running_relay(redis_url) as relay:
        assert await relay.acquire(["u:a", "u:b", "u:a"]) == {"u:a", "u:b"}
        assert {c.decode() for c in await redis_client.pubsub_channels()} >= {"u:a", "u:b"}
        assert relay.confirmed >= {"u:a", "u:b"}
        assert await relay.acquire(["u:b"]) == {"u:b"}  # already confirmed: at once
        for channel in ("u:a", "u:a", "u:b"):
            relay.release(channel)
        assert relay.wants("u:b")  # one interest left
        relay.release("u:b")
        assert not relay.wants("u:a") and not relay.wants("u:b")


async def test_acquire_releases_what_redis_did_not_confirm_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "SUBSCRIBE_TIMEOUT_S", 0.2)
    async with silent_redis() as url, running_relay(url) as relay:
        assert await relay.acquire(["u:a", "u:b"]) == set()
        assert not relay.wants("u:a") and not relay.wants("u:b")
        assert relay._waiters == {}  # no waiter outlives its call


async def test_a_cancelled_acquire_holds_nothing() -> None:
    async with silent_redis() as url, running_relay(url) as relay:
        call = asyncio.create_task(relay.acquire(["u:a", "u:b"]))
        await asyncio.sleep(0.05)
        assert relay.wants("u:a")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert relay.channels == frozenset({"test:control"})
        assert relay._waiters == {}
