"""The floor relay_bench measures beside the gateway: a floor that lost or refused messages would mislead."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from loadtests import relay_bench
from loadtests.load_client import ClientPool, ClientSpec
from shared.embedded_redis import free_port

pytestmark = pytest.mark.e2e

DEADLINE_S = 15.0


async def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            _, writer = await asyncio.open_connection(relay_bench.HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


async def test_the_floor_relays_every_message_to_every_subscriber_and_refuses_a_bad_token(redis_url: str) -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.floor_server",
        "--port",
        str(port),
        "--redis-url",
        redis_url,
        env={**os.environ, "GATEWAY_JWT_SECRET": relay_bench.SECRET},
    )
    try:
        await wait_for_port(port)
        async with ClientPool(1) as pool:
            topics = relay_bench.topic_names(2)
            report = await pool.connect(relay_bench.HOST, port, relay_bench.client_specs(6, topics), DEADLINE_S)
            assert (report.connected, report.errors) == (6, {})
            refused = await pool.connect(relay_bench.HOST, port, [ClientSpec(token="a.b.c", topic=None)], DEADLINE_S)
            assert (refused.connected, refused.errors) == (0, {"connect refused: token_invalid": 1})

            await pool.reset(sample_every=1)
            offered = await relay_bench.Feed(redis_url, topics, [3, 3]).run(rate=400, seconds=1.0)
            deadline = time.monotonic() + DEADLINE_S
            while (tally := await pool.tally(with_samples=True)).received < offered and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert offered >= 300 * 3  # about 400 messages, each to the three clients of its topic
            assert (tally.received, tally.lost) == (offered, 0)
            assert len(tally.samples) == offered  # every event carried its stamp to the client
    finally:
        server.terminate()
        await server.wait()
