"""The documented contract, checked from outside: what docs/protocol.md promises holds."""

from __future__ import annotations

import redis.asyncio

from shared import names
from shared.publisher import AsyncPublisher
from tests.harness import connected, make_token, running_node
from tests.integration.test_gateway_relay import notification


async def test_the_position_of_an_empty_stream_resumes_completely(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """A client that stored `0-0` (its stream was empty) was told `complete: false` on every reconnect."""
    publisher = AsyncPublisher(redis_client)
    async with running_node(redis_url) as node:
        auth = {"token": make_token(sub="alice"), "positions": {"notifications": "0-0"}}
        async with connected(node.url, None, auth=auth) as client:
            status = (await client.next("sync"))[0]
            assert status["complete"] is True and status["notifications"]["position"] == "0-0"
        for n in range(3):
            await publisher.publish(notification("alice", n))
        async with connected(node.url, None, auth=auth) as client:
            status = (await client.next("sync"))[0]
            assert status["complete"] is True and status["notifications"]["recovered"] == 3
            assert [(await client.next("notification"))[0]["id"] for _ in range(3)] == ["n0", "n1", "n2"]
        # Only when records after it are really gone is it incomplete.
        first = (await redis_client.xrange(names.notification_stream("alice"), count=1))[0][0]
        await redis_client.xdel(names.notification_stream("alice"), first)
        async with connected(node.url, None, auth=auth) as client:
            assert (await client.next("sync"))[0]["complete"] is False
