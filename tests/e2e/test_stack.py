"""The README's first command end to end: simulator -> collectors -> Redis -> gateway -> a client."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.embedded_redis import free_port
from stack.config import StackConfig
from tests.harness import connected, free_port_block

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"
TOPICS = [
    "binance:ticker:BTC/USDT",
    "coinbase:trades:BTC/USD",
    "kraken:book:BTC/USD",
    "bybit:candles.1m:ETH/USDT",
    "okx:book:ETH/USDT",
]


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    log: Path
    ready: dict[str, Any]


def ready_line(log: Path, process: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    """The stack's `ready` record, once it is logged."""
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("msg") == "ready":
                return dict(json.loads(line))
        assert process.poll() is None, f"the stack exited early: {log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no ready line in {log.read_text()[-3000:]}")


@contextmanager
def running_stack(tmp_path: Path, *args: str, name: str = "stack", ready_within_s: float = 60) -> Iterator[Stack]:
    """`fanout-local` with a private state dir and Redis port; stopped (exit 0 checked) on leaving."""
    log = tmp_path / f"{name}.log"
    with log.open("w") as sink:
        # subprocess.Popen, not asyncio's: the stack outlives nothing of this loop.
        process = subprocess.Popen(
            [sys.executable, "-m", "stack", "--state-dir", str(tmp_path / "state"), "--redis-port", "0", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Stack(process, log, ready_line(log, process, time.monotonic() + ready_within_s))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()[-3000:]


def readme_publish_snippet() -> str:
    section = README.read_text().split("## Publishing from a backend service", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's publishing snippet is a python block"
    return match.group(1)


async def handshake_origin(url: str, origin: str) -> tuple[int, str | None]:
    """Status and Access-Control-Allow-Origin of a browser's first long-polling request from `origin`."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/socket.io/?EIO=4&transport=polling", headers={"Origin": origin}) as response,
    ):
        return response.status, response.headers.get("Access-Control-Allow-Origin")


async def test_the_whole_system_on_one_host(tmp_path: Path) -> None:
    base = free_port_block(11)
    gateway, simulator, admin = base, base + 1, base + 6  # 1 gateway, 5 simulated exchanges, 5 admin APIs
    with running_stack(
        tmp_path,
        *("--port", str(gateway), "--simulator-port", str(simulator), "--admin-port", str(admin)),
        *("--simulate", "always"),
    ) as stack:
        url = stack.ready["url"]
        assert url == f"http://127.0.0.1:{gateway}"
        assert (stack.ready["demo_user"], stack.ready["demo_team"]) == ("demo", "demo")
        # `ready` means every process serves: no retry loop needed from here on.
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as response:
            assert response.status == 200
        async with connected(url, stack.ready["demo_token"]) as client:
            reply = await client.call("subscribe", TOPICS)
            assert all(result["ok"] for result in reply["results"]), reply
            seen: dict[str, dict[str, object]] = {}
            while len(seen) < len(TOPICS):  # the first trades may take a moment
                try:
                    topic, data = await client.next("market", timeout=30)
                except TimeoutError:
                    missing = sorted(set(TOPICS) - set(seen))
                    pytest.fail(f"nothing on {missing} for 30 s; the stack's log ends: {stack.log.read_text()[-6000:]}")
                seen[topic] = data
            assert seen["kraken:book:BTC/USD"]["type"] == "book" and seen["kraken:book:BTC/USD"]["bids"]
            assert seen["coinbase:trades:BTC/USD"]["type"] == "trade"
            assert seen["bybit:candles.1m:ETH/USDT"]["type"] == "candle"

            # The README's publishing snippet, verbatim but for the port of this test's Redis.
            snippet = readme_publish_snippet()
            assert '"redis://127.0.0.1:9379/0"' in snippet and 'user_id="demo"' in snippet
            assert StackConfig().redis_port == 9379, "the README snippet names the default port"
            exec(snippet.replace("redis://127.0.0.1:9379/0", stack.ready["redis_url"]), {})
            notification, _position = await client.next("notification", timeout=10)
            assert notification["user_id"] == "demo" and notification["title"] == "Order filled"

        # A page served by `next dev` on port 3000 may connect; another site may not.
        assert await handshake_origin(url, "http://localhost:3000") == (200, "http://localhost:3000")
        assert (await handshake_origin(url, "https://elsewhere.example"))[0] == 403


async def test_tokens_for_other_users_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    state = str(tmp_path / "state")
    minted = subprocess.run(
        [sys.executable, "-m", "stack", "token", "--user", "bob", "--teams", "red,blue", "--state-dir", state],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for run in range(2):
        with running_stack(tmp_path, "--port", str(port), "--exchanges", "", name=f"run{run}") as stack:
            async with connected(stack.ready["url"], minted) as client:
                reply = await client.call("notifications:unread", None)
                assert reply == {"ok": True, "unread": 0}


def run_refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack", "--state-dir", str(tmp_path / "state"), "--redis-port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_refusals_are_one_line_exit_2_and_start_nothing(tmp_path: Path) -> None:
    base = free_port_block(3)
    bad_channel = run_refused(tmp_path, "--port", str(base), "--channels", "ticker,bogus")
    assert bad_channel.returncode == 2
    assert bad_channel.stderr.strip().splitlines() == [
        "fanout-local: STACK_CHANNELS: unknown channel 'bogus'; use ticker, trades, book or candles:<timeframe>"
    ]

    env = {"PATH": "/usr/bin:/bin", "GATEWAY_PORT": "9000"}
    overridden = run_refused(tmp_path, "--port", str(base), "--exchanges", "", env=env)
    assert overridden.returncode == 2
    assert overridden.stderr.strip().splitlines() == [
        "fanout-local: the stack sets these for each process it starts, so yours would be ignored: "
        "GATEWAY_PORT (use --port or STACK_PORT)"
    ]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        in_use = run_refused(tmp_path, "--port", str(base), "--exchanges", "")
    assert in_use.returncode == 2
    assert in_use.stderr.strip().splitlines() == [
        f"fanout-local: port {base} on 127.0.0.1 (gateway-1) is in use; stop what holds it, or move it with --port"
    ]
    assert in_use.stdout == ""  # nothing started, so nothing logged


async def test_two_gateways_behind_nginx(tmp_path: Path) -> None:
    base = free_port_block(3)
    args = ("--port", str(base), "--gateways", "2", "--balancer", "true", "--exchanges", "")
    with running_stack(tmp_path, *args) as stack:
        assert stack.ready["url"] == f"http://127.0.0.1:{base}"
        assert stack.ready["gateways"] == [f"http://127.0.0.1:{base + 1}", f"http://127.0.0.1:{base + 2}"]
        for transport in ("websocket", "polling"):  # polling needs the sticky upstream
            async with connected(stack.ready["url"], stack.ready["demo_token"], transport=transport) as client:
                reply = await client.call("subscribe", TOPICS[:1])
                assert reply["ok"] is True
