"""The official JavaScript socket.io-client, run by node, against a real gateway node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from shared import codec, names
from shared.embedded_redis import free_port
from shared.events import Notification, Ticker
from shared.publisher import AsyncPublisher
from tests.harness import make_token, running_node

JS_DIR = Path(__file__).parent / "js"
TOPIC = "coinbase:ticker:ETH/USD"

pytestmark = pytest.mark.e2e


class JsClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.unread: list[dict[str, Any]] = []

    async def next(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next record of `event`; records of other events stay unread."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                for index, record in enumerate(self.unread):
                    if record["event"] == event:
                        return self.unread.pop(index)
                line = await self.process.stdout.readline()
                assert line, "the node client exited"
                self.unread.append(json.loads(line))

    def send(self, event: str) -> None:
        """Make the client send `event` with an ack; its answer comes as a `reply` or `request_failed` record."""
        assert self.process.stdin is not None
        self.process.stdin.write(event.encode() + b"\n")


@asynccontextmanager
async def js_client(
    url: str,
    token: str,
    transport: str,
    *topics: str,
    resume: bool = False,
) -> AsyncIterator[JsClient]:
    node = shutil.which("node")
    assert node, "node is required (test.sh installs it)"
    assert (JS_DIR / "node_modules" / "socket.io-client").is_dir(), "run `npm ci` in tests/e2e/js (test.sh does)"
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "client.mjs"),
        url,
        token,
        transport,
        *topics,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=JS_DIR,
        env={**os.environ, "RESUME": "1" if resume else "0"},
    )
    try:
        yield JsClient(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


def ticker(seq: int) -> Ticker:
    return Ticker(exchange="coinbase", symbol="ETH/USD", ts=1, recv_ts=time.time() * 1000, seq=seq, bid="3000.01")


@pytest.mark.parametrize("transport", ["websocket", "polling", "upgrade"])
async def test_official_client_receives_snapshot_live_data_and_notifications(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    transport: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    await publisher.publish_market([ticker(1)])
    async with running_node(redis_url) as node, js_client(node.url, make_token(sub="dana"), transport, TOPIC) as js:
        connected_over = (await js.next("connect"))["transport"]
        # An upgrading client may finish its upgrade before or after its CONNECT is answered.
        assert connected_over == transport or transport == "upgrade"
        reply = (await js.next("subscribed"))["reply"]
        assert reply == {"ok": True, "results": [{"topic": TOPIC, "ok": True, "collected": False}]}
        snapshot = await js.next("market")
        assert snapshot["topic"] == TOPIC and snapshot["data"]["seq"] == 1 and snapshot["data"]["bid"] == "3000.01"
        await publisher.publish_market([ticker(2)])
        assert (await js.next("market"))["data"]["seq"] == 2
        position = await publisher.publish(
            Notification(id="n1", user_id="dana", type="success", title="Filled", message="1 ETH", created_at=1)
        )
        got = await js.next("notification")
        assert got["notification"]["id"] == "n1" and got["position"] == position
        if transport == "upgrade":
            assert (await js.next("upgrade"))["transport"] == "websocket"
            await publisher.publish_market([ticker(3)])
            assert (await js.next("market"))["data"]["seq"] == 3


async def test_official_client_sees_the_refusal_code(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with running_node(redis_url) as node, js_client(node.url, make_token(exp_in=-60), "websocket") as js:
        refused = await js.next("connect_error")
        assert refused["message"] == "token_expired"
        assert refused["data"]["code"] == "token_expired"


async def test_official_client_resumes_after_its_node_goes_away(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)

    def note(n: int) -> Notification:
        return Notification(id=f"n{n}", user_id="vic", type="info", title="t", message="m", created_at=n)

    port = free_port()
    async with (
        running_node(redis_url, port=port) as node,
        js_client(node.url, make_token(sub="vic"), "websocket", TOPIC, resume=True) as js,
    ):
        await js.next("sync")
        await publisher.publish(note(0))
        assert (await js.next("notification"))["notification"]["id"] == "n0"
        await node.stop()  # the node goes away; the client keeps retrying
        assert (await js.next("disconnect"))["reason"] == "transport close"
        for n in range(1, 6):  # published while no node serves the client
            await publisher.publish(note(n))
        async with running_node(redis_url, port=port):
            status = (await js.next("sync", timeout=15))["status"]
            assert status["notifications"]["recovered"] == 5 and status["complete"] is True
            ids = [(await js.next("notification"))["notification"]["id"] for _ in range(5)]
            assert ids == [f"n{n}" for n in range(1, 6)]
            await publisher.publish(note(6))
            assert (await js.next("notification"))["notification"]["id"] == "n6"


async def test_official_client_survives_its_node_going_away_with_a_request_unanswered(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    """Why the resume test above once failed under load: the node stopped before it answered a request.

    Redis is paused so that the request waits for certain; the client must note the failed request
    and reconnect, not exit on the rejected promise.
    """
    port = free_port()
    async with (
        running_node(redis_url, port=port) as node,
        js_client(node.url, make_token(sub="vic"), "websocket", TOPIC, resume=True) as js,
    ):
        await js.next("subscribed")
        await redis_client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        js.send("notifications:unread")
        await asyncio.sleep(0.3)  # the request is in, waiting on the paused Redis
        await node.stop()
        failed = await js.next("request_failed")
        assert failed["message"] == "socket has been disconnected"
        async with running_node(redis_url, port=port):
            assert (await js.next("sync", timeout=15))["status"]["complete"] is True


async def test_official_client_reads_each_frame_of_a_batch_as_its_own_event(redis_url: str) -> None:
    """A loop turn's messages reach a client in one write; the official client parses every frame of it.

    The messages are handed to the node's fan-out as Redis reads would hand them (how much one read
    carries is up to the kernel), in two turns: first one audience (both clients, one topic: the frames
    joined once, the same bytes to both), then two (the second topic has one subscriber: each client's
    frames collected and written once).
    """
    other = "coinbase:ticker:BTC/USD"

    def message(topic: str, seq: int) -> tuple[bytes, bytes]:
        symbol = topic.split(":")[2]
        event = Ticker(exchange="coinbase", symbol=symbol, ts=1, recv_ts=time.time() * 1000, seq=seq, bid="1.5")
        return names.market_channel(topic).encode(), codec.encode(event)

    async with (
        running_node(redis_url) as node,
        js_client(node.url, make_token(sub="both"), "websocket", TOPIC, other) as both,
        js_client(node.url, make_token(sub="one"), "websocket", TOPIC) as one,
    ):
        assert (await both.next("subscribed"))["reply"]["ok"] and (await one.next("subscribed"))["reply"]["ok"]
        node.node.fanout.on_messages([message(TOPIC, seq) for seq in range(1, 51)])
        await asyncio.sleep(0)  # the turn ends: its batch is written
        node.node.fanout.on_messages([message(topic, seq) for seq in range(51, 101) for topic in (TOPIC, other)])
        for client, topics in ((both, (TOPIC, other)), (one, (TOPIC,))):
            seen: dict[str, list[int]] = {topic: [] for topic in topics}
            for _ in range(50 + 50 * len(topics)):
                record = await client.next("market")
                seen[record["topic"]].append(record["data"]["seq"])
            assert seen[TOPIC] == list(range(1, 101))
            if other in seen:
                assert seen[other] == list(range(51, 101))
