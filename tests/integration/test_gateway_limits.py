"""Limits and revocation: each refusal carries its code, and a revoked user is gone within a second."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
import socketio

from shared import names
from shared.publisher import AsyncPublisher
from tests.harness import connected, make_token, new_client, running_node, wait_until


async def refusal(url: str, token: str) -> str:
    client = new_client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    await client.sio.shutdown()
    return str(client.connect_error["data"]["code"])


async def test_connection_attempts_per_address(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with running_node(redis_url, connect_rate_per_ip=0.01, connect_burst_per_ip=3) as node:
        for _ in range(3):
            async with connected(node.url, make_token()):
                pass
        assert await refusal(node.url, make_token()) == "rate_limited"


async def test_connections_per_user(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with (
        running_node(redis_url, max_connections_per_user=2) as node,
        connected(node.url, make_token(sub="nia")),
        connected(node.url, make_token(sub="nia")) as second,
    ):
        assert await refusal(node.url, make_token(sub="nia")) == "too_many_connections"
        async with connected(node.url, make_token(sub="oscar")):
            pass  # other users are not affected
        await second.sio.disconnect()
        await wait_until(lambda: len(node.node.sessions) == 1)
        async with connected(node.url, make_token(sub="nia")) as third:
            assert third.sio.connected


async def test_a_refused_token_holds_none_of_the_users_connections(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """A connect's revocation reads and cap claim go in one query: a revoked token's claim is given back at once."""
    await AsyncPublisher(redis_client).revoke(token_id="stolen")
    async with running_node(redis_url, max_connections_per_user=1) as node:
        for _ in range(3):
            assert await refusal(node.url, make_token(sub="una", jti="stolen")) == "token_revoked"
        async with connected(node.url, make_token(sub="una", jti="own")) as client:
            assert client.sio.connected  # the one connection allowed was not held by the refused ones
            members = await redis_client.zrange(names.connection_set("una"), 0, -1)
            assert [member.decode().split(" ")[1] for member in members] == [client.sio.get_sid()]


async def test_events_per_socket(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with (
        running_node(redis_url, event_rate=1.0, event_burst=5) as node,
        connected(node.url, make_token()) as client,
    ):
        replies = await asyncio.gather(*(client.call("subscribe", ["okx:ticker:BTC/USDT"]) for _ in range(12)))
        limited = [r for r in replies if not r["ok"]]
        assert len(replies) - len(limited) == 4  # every packet counts: the CONNECT took one of the burst
        assert all(r["error"]["code"] == "rate_limited" for r in limited)
        assert node.node.metrics.client_errors.labels("rate_limited")._value.get() == 8
        await asyncio.sleep(1.1)
        assert (await client.call("subscribe", ["okx:ticker:BTC/USDT"]))["ok"] is True


async def test_revoking_a_user_closes_their_sockets_on_every_node(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    token = make_token(sub="pat")
    async with (
        running_node(redis_url) as n1,
        running_node(redis_url) as n2,
        connected(n1.url, token) as a,
        connected(n2.url, token) as b,
        connected(n1.url, make_token(sub="quinn")) as bystander,
    ):
        started = time.monotonic()
        await publisher.revoke(user_id="pat")
        for client in (a, b):
            (payload,) = await client.next("session_revoked", timeout=1.0)
            assert payload["code"] == "token_revoked"
        await wait_until(lambda: not a.sio.connected and not b.sio.connected, timeout=1.0)
        print(f"[revocation] both sockets closed {1000 * (time.monotonic() - started):.0f} ms after revoke()")
        assert bystander.sio.connected
        assert await refusal(n1.url, token) == "token_revoked"
        await asyncio.sleep(1.1)  # a token issued after the revocation is accepted
        async with connected(n2.url, make_token(sub="pat")) as again:
            assert again.sio.connected


async def test_revoking_one_token_keeps_the_users_other_sessions(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    async with (
        running_node(redis_url) as node,
        connected(node.url, make_token(sub="rae", jti="laptop")) as laptop,
        connected(node.url, make_token(sub="rae", jti="phone")) as phone,
    ):
        await publisher.revoke(token_id="laptop")
        await laptop.next("session_revoked", timeout=1.0)
        await wait_until(lambda: not laptop.sio.connected, timeout=1.0)
        assert phone.sio.connected
        assert await refusal(node.url, make_token(sub="rae", jti="laptop")) == "token_revoked"
        refresh = await phone.call("refresh", {"token": make_token(sub="rae", jti="laptop")})
        assert refresh["error"]["code"] == "token_revoked"
        await redis_client.publish("gateway:control", b'{"user_id":"bad id!"}')
        await redis_client.publish("gateway:control", b"{}")
        await wait_until(lambda: node.node.metrics.messages_rejected.labels("gateway")._value.get() == 2)
        assert phone.sio.connected
