"""Operations: health, readiness across a Redis restart, metrics, CORS and the CLI entry point."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import pytest
import redis.asyncio
import socketio

from shared.embedded_redis import EmbeddedRedis
from shared.events import Notification
from shared.publisher import AsyncPublisher
from tests.harness import SECRET, connected, make_token, new_client, running_node, wait_until


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_health_readiness_and_metrics(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with running_node(redis_url) as node, connected(node.url, make_token()) as client:
        status, body = await get(node.url + "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        status, body = await get(node.url + "/readyz")
        assert status == 200 and json.loads(body)["connections"] == 1
        await client.call("subscribe", ["okx:ticker:BTC/USDT"])
        status, metrics = await get(node.url + "/metrics")
        assert status == 200
        assert "gateway_connections 1.0" in metrics
        assert "gateway_subscriptions 1.0" in metrics
        assert "gateway_redis_channels 3.0" in metrics  # user:alice, the topic and the control channel
        assert "gateway_redis_connected 1.0" in metrics


async def test_redis_restart_is_survived(redis_client: redis.asyncio.Redis) -> None:
    server = EmbeddedRedis().start()
    try:
        async with running_node(server.url) as node, connected(node.url, make_token(sub="frank")) as client:
            server.stop()
            await wait_until(lambda: not node.node.ready)
            status, _ = await get(node.url + "/readyz")
            assert status == 503
            assert client.sio.connected  # clients stay connected through the outage
            server = EmbeddedRedis(port=server.port).start()
            await wait_until(lambda: node.node.ready, timeout=10)
            await wait_until(lambda: "user:{frank}" in node.node.relay.confirmed, timeout=5)
            async with redis.asyncio.Redis.from_url(server.url) as restarted:
                await AsyncPublisher(restarted).publish(
                    Notification(id="n", user_id="frank", type="info", title="t", message="m", created_at=1)
                )
            assert (await client.next("notification"))[0]["id"] == "n"
    finally:
        server.stop()


async def test_cors_allow_list(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with running_node(redis_url, cors_origins=["https://app.example"]) as node:
        async with connected(node.url, make_token()) as allowed:
            assert allowed.sio.connected  # no Origin header: not a browser
        client = new_client()
        await client.sio.connect(
            node.url,
            auth={"token": make_token()},
            headers={"Origin": "https://app.example"},
            transports=["polling"],
            wait_timeout=5,
        )
        await client.close()
        refused = new_client()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.sio.connect(
                node.url,
                auth={"token": make_token()},
                headers={"Origin": "https://evil.example"},
                transports=["polling"],
                wait_timeout=5,
            )
        await refused.sio.shutdown()


async def test_cli_refuses_bad_settings_with_exit_code_2() -> None:
    env = {**os.environ, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_PORT": "not-a-port"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"GATEWAY_PORT" in stderr
    env.pop("GATEWAY_PORT")
    env.pop("GATEWAY_JWT_SECRET")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"GATEWAY_JWT_SECRET" in stderr
