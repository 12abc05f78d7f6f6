"""The local stack keeps serving through a kill -9 of any one of its processes, under traffic.

One stack (Redis, the simulator, two collectors, two gateways behind nginx) serves
a client subscribed to both exchanges' books through nginx. Each test kills one
kind of process outright and checks that the stack restarts it (counted in
stack.json), that no other process stopped, and that the client ends up
connected and receiving market data again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from stack.state import STACK_FILE
from tests.e2e.test_stack import Stack, running_stack
from tests.harness import Client, free_port_block, new_client, wait_until

# The first test also waits for the stack to start.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TOPICS = ["binance:book:BTC/USDT", "kraken:book:BTC/USD"]
# Generous for a loaded 2-core machine: a restart is a Python start-up (about a second) plus the backoff.
RESTART_WITHIN_S = 30.0
DATA_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("supervision")


@pytest.fixture(scope="module")
def stack(stack_dir: Path) -> Iterator[Stack]:
    base = free_port_block(10)  # nginx, 2 gateways, 5 simulator ports (one per exchange), 2 admin APIs
    args = [
        *("--port", str(base), "--gateways", "2", "--balancer", "true"),
        *("--simulator-port", str(base + 3), "--admin-port", str(base + 8), "--simulate", "always"),
        *("--exchanges", "binance,kraken", "--symbols", "BTC", "--simulator-rate", "5"),
    ]
    # Seven processes and an embedded PostgreSQL starting at once: slow when the machine is busy.
    with running_stack(stack_dir, *args, ready_within_s=100) as running:
        yield running


def services(stack_dir: Path) -> dict[str, dict[str, Any]]:
    """Each service's pid, restarts and last exit, as the running stack reports them (running_stack's state dir)."""
    return dict(json.loads((stack_dir / "state" / STACK_FILE).read_text())["services"])


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Client]:
    subscriber = await connect(stack)
    try:
        await subscribed(subscriber)
        yield subscriber
    finally:
        await subscriber.close()


async def connect(stack: Stack) -> Client:
    """A client that reconnects, connected through nginx; a refusal asking to retry is retried, as apps do.

    (Just after a Redis restart a node may answer `unavailable`: its first command on a pooled connection fails.)
    """
    deadline = time.monotonic() + DATA_WITHIN_S
    while True:
        subscriber = new_client(reconnection=True)
        try:
            await subscriber.sio.connect(
                stack.ready["url"], auth={"token": stack.ready["demo_token"]}, transports=["websocket"], wait_timeout=5
            )
        except socketio.exceptions.ConnectionError:
            await subscriber.sio.shutdown()
            refusal = subscriber.connect_error or {}
            if refusal.get("message") != "unavailable" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return subscriber


async def subscribed(client: Client) -> None:
    """Subscribe to both books and wait for one update of each (so data flows now)."""
    reply = await client.call("subscribe", TOPICS, timeout=10)
    assert all(result["ok"] for result in reply["results"]), reply
    await fresh_data(client, set(TOPICS))


async def fresh_data(client: Client, topics: set[str]) -> None:
    """Wait for an update of each of `topics` that arrives from now on."""
    queue = client.queue("market")
    while not queue.empty():
        queue.get_nowait()
    deadline = time.monotonic() + DATA_WITHIN_S
    missing = set(topics)
    while missing:
        topic, _data = await client.next("market", timeout=max(0.1, deadline - time.monotonic()))
        missing.discard(topic)


async def gateway_of(stack: Stack) -> str:
    """The name of the gateway holding the test's client (nginx is sticky by address: all of them)."""
    async with aiohttp.ClientSession() as http:
        for index, url in enumerate(stack.ready["gateways"]):
            async with http.get(url + "/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("gateway_connections ") and float(line.split()[1]) > 0:
                        return f"gateway-{index + 1}"
    raise AssertionError("no gateway holds a connection")


async def restarted(stack_dir: Path, name: str, before: dict[str, dict[str, Any]]) -> None:
    """Wait until the supervisor reports `name` restarted once more, under a new pid."""

    def done() -> bool:
        now = services(stack_dir)[name]
        return now["restarts"] == before[name]["restarts"] + 1 and now["pid"] not in (None, before[name]["pid"])

    await wait_until(done, timeout=RESTART_WITHIN_S, interval=0.1)
    after = services(stack_dir)
    assert after[name]["last_exit"] == "signal SIGKILL"
    os.kill(after[name]["pid"], 0)  # alive
    others = {other: (state["pid"], state["restarts"]) for other, state in after.items() if other != name}
    assert others == {other: (state["pid"], state["restarts"]) for other, state in before.items() if other != name}


@pytest.mark.parametrize("kind", ["collector-kraken", "simulator", "redis"])
async def test_market_data_resumes_after_a_kill(stack: Stack, stack_dir: Path, client: Client, kind: str) -> None:
    before = services(stack_dir)
    sid = client.sio.sid
    os.kill(before[kind]["pid"], signal.SIGKILL)
    await restarted(stack_dir, kind, before)
    await fresh_data(client, set(TOPICS))
    assert client.sio.sid == sid and not client.disconnects, "the client's gateway never went away"


@pytest.mark.parametrize("kind", ["gateway", "nginx"])
async def test_clients_reconnect_through_nginx_after_a_kill(
    stack: Stack, stack_dir: Path, client: Client, kind: str
) -> None:
    before = services(stack_dir)
    name = await gateway_of(stack) if kind == "gateway" else kind
    sid = client.sio.sid
    os.kill(before[name]["pid"], signal.SIGKILL)
    await restarted(stack_dir, name, before)
    await wait_until(lambda: client.sio.connected and client.sio.sid not in (None, sid), timeout=DATA_WITHIN_S)
    assert client.disconnects, "the client saw its transport close"
    await subscribed(client)  # a new session: subscriptions are the client's to restore, as socket.io-client apps do
