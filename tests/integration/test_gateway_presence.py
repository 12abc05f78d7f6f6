"""The node's connection claims in Redis: renewed in pipelines of a bounded size, each one."""

from __future__ import annotations

import asyncio

import redis.asyncio

from gateway.batching import Query, SharedPipeline
from gateway.policy import TopicPolicy
from gateway.presence import HEARTBEAT_BATCH, Presence
from shared import names
from shared.redis_target import RedisTarget


async def test_a_heartbeat_renews_every_claim_over_several_pipelines_and_none_given_back(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    client = RedisTarget.parse(redis_url).async_client()
    pipeline = SharedPipeline(RedisTarget.parse(redis_url), timeout_s=5)
    presence = Presence(
        client, pipeline, node="n1", topics=dict, teams=dict, policy=TopicPolicy(["*"], ""), max_items=10
    )
    try:
        count = 2 * HEARTBEAT_BATCH + 7
        for i in range(count):
            sid, user = f"s{i}", f"u{i}"
            command = presence.claim_command(sid, user, 5)
            assert await pipeline.ask(Query((command,), lambda r, s=sid, u=user: presence.claimed(s, u, r[0])))
        claimed = {i: await redis_client.zscore(names.connection_set(f"u{i}"), f"n1 s{i}") for i in range(count)}
        presence.release("s3")
        await asyncio.sleep(0.01)  # the expiry scores are milliseconds: a renewal moves them on
        await presence.heartbeat()
        for i in range(count):
            score = await redis_client.zscore(names.connection_set(f"u{i}"), f"n1 s{i}")
            if i == 3:
                assert score == claimed[i]  # given back: not renewed (the flush removes it)
            else:
                before = claimed[i]
                assert score is not None and before is not None and score > before, i
    finally:
        await pipeline.aclose()
        await client.aclose()
