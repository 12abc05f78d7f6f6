"""The project's cluster client when redis-py closes its connections under running commands."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.exceptions

from shared.redis_target import REDIS_ERRORS, RedisTarget
from tests.cluster.conftest import Cluster


async def test_a_connection_closed_under_a_command_is_a_redis_error(cluster: Cluster) -> None:
    """redis-py's RedisCluster closes every connection on CLUSTERDOWN, also those other commands are
    connecting on: each such command must fail with an error callers retry (REDIS_ERRORS), not with
    redis-py's AttributeError ('NoneType' object has no attribute 'writelines').

    The close comes after 0..29 loop turns, so it lands at every step of the commands' connect.
    """
    client = RedisTarget.parse(cluster.url).async_client()
    outcomes: Counter[str] = Counter()
    try:
        await client.ping()
        for turns in range(30):
            commands = [asyncio.create_task(client.get(f"k{n}")) for n in range(20)]
            for _ in range(turns):
                await asyncio.sleep(0)
            await client.aclose()  # what redis-py itself does on CLUSTERDOWN
            for result in await asyncio.gather(*commands, return_exceptions=True):
                assert not isinstance(result, Exception) or isinstance(result, REDIS_ERRORS), repr(result)
                outcomes[type(result).__name__] += 1
    finally:
        await client.aclose()
    # Not vacuous: some command was caught with its connection closed under it.
    assert outcomes[redis.exceptions.ConnectionError.__name__] > 0, outcomes
