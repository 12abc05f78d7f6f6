"""`fanout-gateway --workers 2`: two processes share one port, a crashed one comes back, SIGTERM drains both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio

from shared import names
from shared.embedded_redis import free_port
from shared.status import decode_gateway_status
from tests.harness import SECRET, make_token, raw_websocket

pytestmark = pytest.mark.e2e


async def worker_records(client: redis.asyncio.Redis) -> dict[str, int]:
    """Each worker's id and connections, from the status records they write every 5 s."""
    records = {}
    for key in await client.keys(names.GATEWAY_STATUS_PREFIX + "*"):
        status = decode_gateway_status(await client.get(key))
        records[status.id] = status.connections
    return records


async def test_two_workers_share_a_port_restart_and_drain(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "gateway.log").open("w")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--workers", "2", "--transports", "websocket", "--port", str(port),
        "--host", "127.0.0.1", "--node-id", "box", "--redis-url", redis_url, "--handshake-burst-per-ip", "1000",
        env={**os.environ, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_SHUTDOWN_TIMEOUT_S": "5"},
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    sockets = []
    try:
        deadline = time.monotonic() + 30
        while set(await worker_records(redis_client)) != {"box-w1", "box-w2"}:  # both listen, then connect
            assert time.monotonic() < deadline, "the workers never started"
            await asyncio.sleep(0.2)
        sockets = [await raw_websocket(url) for _ in range(30)]
        for ws in sockets:
            await ws.receive_text()
            await ws.send("40" + json.dumps({"token": make_token(sub=f"u{len(sockets)}")}))
        # Both workers took some of the 30 connections (all on one: a chance of 2 in a billion).
        deadline = time.monotonic() + 20
        while (records := await worker_records(redis_client)).keys() != {"box-w1", "box-w2"} or sum(
            records.values()
        ) < 30:
            assert time.monotonic() < deadline, records
            await asyncio.sleep(0.5)
        assert all(count > 0 for count in records.values()), records
        # A worker killed outright is restarted by the parent.
        pids = [int(p) for p in (await (await asyncio.create_subprocess_exec(
            "pgrep", "-P", str(process.pid), stdout=asyncio.subprocess.PIPE)).communicate())[0].split()]  # fmt: skip
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        await redis_client.delete(names.gateway_status_key("box-w1"), names.gateway_status_key("box-w2"))
        deadline = time.monotonic() + 30
        while set(await worker_records(redis_client)) != {"box-w1", "box-w2"}:
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for ws in sockets:
            ws.close()
        log.close()


async def test_workers_do_not_outlive_their_parent(redis_url: str, redis_client: redis.asyncio.Redis) -> None:
    """A parent killed outright (SIGKILL, an OOM kill) takes its workers with it: no orphans hold the port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--workers", "2", "--transports", "websocket", "--port", str(port),
        "--host", "127.0.0.1", "--node-id", "orphans", "--redis-url", redis_url,
        env={**os.environ, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_SHUTDOWN_TIMEOUT_S": "2"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not {"orphans-w1", "orphans-w2"} <= set(await worker_records(redis_client)):
            assert time.monotonic() < deadline, "the workers never started"
            await asyncio.sleep(0.2)
        children = (await (await asyncio.create_subprocess_exec(
            "pgrep", "-P", str(process.pid), stdout=asyncio.subprocess.PIPE)).communicate())[0].split()  # fmt: skip
        pids = [int(pid) for pid in children]
        assert len(pids) == 2
        process.kill()
        await process.wait()
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            await asyncio.sleep(0.2)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
