"""Two gateway processes behind a real nginx: a node stopped with SIGTERM hands its clients over."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from shared.embedded_redis import free_port
from shared.events import Notification
from shared.publisher import AsyncPublisher
from stack.balancer import balancer_service
from tests.harness import SECRET, connected, make_token, wait_until

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def gateway_process(redis_url: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_SHUTDOWN_TIMEOUT_S": "5",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", env=env)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def nginx(tmp_path: Path, backends: list[int]) -> AsyncIterator[str]:
    port = free_port()
    service = balancer_service(port, [("127.0.0.1", p) for p in backends], tmp_path)
    process = await asyncio.create_subprocess_exec(*service.argv)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                assert process.returncode is None, (tmp_path / "error.log").read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def connections(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
        return int((await response.json())["connections"])


async def test_sigterm_moves_clients_to_the_other_node(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    publisher = AsyncPublisher(redis_client)
    ports = [free_port(), free_port()]
    async with (
        gateway_process(redis_url, ports[0]) as first,
        gateway_process(redis_url, ports[1]) as second,
        nginx(tmp_path, ports) as url,
        connected(url, make_token(sub="erin"), reconnection=True) as client,
    ):
        await publisher.publish(
            Notification(id="before", user_id="erin", type="info", title="t", message="m", created_at=1)
        )
        assert (await client.next("notification"))[0]["id"] == "before"
        counts = [await connections(p) for p in ports]
        assert sorted(counts) == [0, 1]
        serving, other = (first, second) if counts[0] == 1 else (second, first)
        other_port = ports[1] if counts[0] == 1 else ports[0]
        serving.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serving.wait(), 10) == 0
        await wait_until(lambda: client.sio.connected and len(client.disconnects) == 1, timeout=10)
        assert await connections(other_port) == 1
        assert other.returncode is None
        await publisher.publish(
            Notification(id="after", user_id="erin", type="info", title="t", message="m", created_at=2)
        )
        assert (await client.next("notification"))[0]["id"] == "after"
