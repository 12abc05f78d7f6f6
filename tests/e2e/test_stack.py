"""The README's first command end to end: simulator -> five collectors -> Redis -> gateway -> a client."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness import connected, free_port_block

pytestmark = pytest.mark.e2e

TOPICS = [
    "binance:ticker:BTC/USDT",
    "coinbase:trades:BTC/USD",
    "kraken:book:BTC/USD",
    "bybit:candles.1m:ETH/USDT",
    "okx:book:ETH/USDT",
]


def demo_token(log: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"demo_token"' in line:
                return str(json.loads(line)["demo_token"])
        time.sleep(0.1)
    raise AssertionError(f"no demo token in {log.read_text()[-2000:]}")


async def ready(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


async def test_the_whole_system_on_one_host(tmp_path: Path) -> None:
    base = free_port_block(11)
    gateway, simulator, admin = base, base + 1, base + 6  # 1 gateway, 5 simulated exchanges, 5 admin APIs
    log = tmp_path / "stack.log"
    with log.open("w") as sink:
        # subprocess.Popen, not asyncio's: the stack outlives nothing of this loop.
        stack = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stack",
                "--port",
                str(gateway),
                "--simulator-port",
                str(simulator),
                "--admin-port",
                str(admin),
                "--simulate",
                "always",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        token = demo_token(log, time.monotonic() + 30)
        url = f"http://127.0.0.1:{gateway}"
        await ready(url + "/readyz", time.monotonic() + 30)
        async with connected(url, token) as client:
            reply = await client.call("subscribe", TOPICS)
            assert all(result["ok"] for result in reply["results"]), reply
            seen: dict[str, dict[str, object]] = {}
            while len(seen) < len(TOPICS):  # collectors may still be connecting: allow them time
                topic, data = await client.next("market", timeout=30)
                seen[topic] = data
        assert set(seen) == set(TOPICS)
        assert seen["kraken:book:BTC/USD"]["type"] == "book" and seen["kraken:book:BTC/USD"]["bids"]
        assert seen["coinbase:trades:BTC/USD"]["type"] == "trade"
        assert seen["bybit:candles.1m:ETH/USDT"]["type"] == "candle"
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            code = stack.wait(30)
        except subprocess.TimeoutExpired:
            stack.kill()
            raise
    assert code == 0, log.read_text()[-3000:]


async def test_two_gateways_behind_nginx(tmp_path: Path) -> None:
    base = free_port_block(3)
    log = tmp_path / "stack.log"
    with log.open("w") as sink:
        stack = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stack",
                "--port",
                str(base),
                "--gateways",
                "2",
                "--balancer",
                "true",
                "--exchanges",
                "",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        token = demo_token(log, time.monotonic() + 30)
        for port in (base + 1, base + 2):
            await ready(f"http://127.0.0.1:{port}/readyz", time.monotonic() + 30)
        await ready(f"http://127.0.0.1:{base}/readyz", time.monotonic() + 30)  # through nginx
        for transport in ("websocket", "polling"):  # polling needs the sticky upstream
            async with connected(f"http://127.0.0.1:{base}", token, transport=transport) as client:
                reply = await client.call("subscribe", TOPICS[:1])
                assert reply["ok"] is True
    finally:
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(30)
    assert code == 0, log.read_text()[-3000:]
