"""CONNECTs that reach the node together share Redis round trips, yet each gets its own answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import redis.asyncio
import redis.exceptions

from gateway.batching import Query, SharedPipeline, joined
from shared.embedded_redis import EmbeddedRedis
from shared.publisher import AsyncPublisher
from shared.redis_target import RedisTarget
from tests.harness import RawWebSocket, make_token, raw_websocket, running_node, ws_frame
from tests.hostile.edge import next_text


async def connect_together(url: str, tokens: list[str]) -> list[str]:
    """Open a socket per token, put every CONNECT on the wire before any is answered; each one's reply code."""
    sockets: list[RawWebSocket] = [await raw_websocket(url) for _ in tokens]
    try:
        for ws in sockets:
            await ws.receive_text()  # the Engine.IO open packet
        for ws, token in zip(sockets, tokens, strict=True):
            ws.writer.write(ws_frame("40" + json.dumps({"token": token})))
        replies = await asyncio.gather(*(next_text(ws, "4") for ws in sockets))
    finally:
        for ws in sockets:
            ws.close()
    return ["ok" if reply.startswith("40") else json.loads(reply[2:])["data"]["code"] for reply in replies]


async def test_each_connect_of_a_batch_gets_its_own_answer(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = AsyncPublisher(redis_client)
    await publisher.revoke(user_id="vic")
    await publisher.revoke(token_id="stolen")
    tokens = {
        "uma 1": make_token(sub="uma"),
        "revoked user": make_token(sub="vic"),
        "uma 2": make_token(sub="uma"),
        "revoked token": make_token(sub="wes", jti="stolen"),
        "expired": make_token(sub="xia", exp_in=-10),
        "uma 3": make_token(sub="uma"),
        "other token of wes": make_token(sub="wes", jti="kept"),
        "bad signature": make_token(sub="yan", secret="not-the-secret" * 3),
    }
    async with running_node(redis_url, max_connections_per_user=2, connect_burst_per_ip=1000) as node:
        answers = dict(zip(tokens, await connect_together(node.url, list(tokens.values())), strict=True))
    assert answers == {
        "uma 1": "ok",
        "revoked user": "token_revoked",
        "uma 2": "ok",
        "revoked token": "token_revoked",
        "expired": "token_expired",
        "uma 3": "too_many_connections",
        "other token of wes": "ok",
        "bad signature": "token_invalid",
    }


async def test_redis_down_refuses_every_connect_of_a_batch_as_unavailable() -> None:
    server = EmbeddedRedis().start()
    try:
        async with running_node(server.url, connect_burst_per_ip=1000) as node:
            sockets = [await raw_websocket(node.url) for _ in range(20)]
            for ws in sockets:
                await ws.receive_text()
            server.stop()
            for index, ws in enumerate(sockets):
                ws.writer.write(ws_frame("40" + json.dumps({"token": make_token(sub=f"user{index}")})))
            replies = await asyncio.gather(*(next_text(ws, "4", timeout=15) for ws in sockets))
            for ws in sockets:
                ws.close()
            assert [json.loads(reply[2:])["data"]["code"] for reply in replies] == ["unavailable"] * 20
            # Redis back: the next connects are admitted (a failed batch leaves nothing stuck).
            server = EmbeddedRedis(port=server.port).start()
            assert await connect_together(node.url, [make_token(sub="zoe"), make_token(sub="zed")]) == ["ok", "ok"]
    finally:
        server.stop()


class CountingPipeline(SharedPipeline):
    """The real shared pipeline, counting its round trips to Redis."""

    round_trips = 0

    async def _round_trip(self, queries: list[Query[Any]]) -> list[Any]:
        self.round_trips += 1
        return await super()._round_trip(queries)


async def test_queries_of_every_kind_share_one_round_trip_and_each_gets_its_own_reply(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    await redis_client.set("shared:a", "1")
    await redis_client.xadd("shared:stream", {"data": "x"}, id="5-1")
    pipeline = CountingPipeline(RedisTarget.parse(redis_url), timeout_s=5)

    def reply(replies: list[Any]) -> Any:
        return replies[0] if len(replies) == 1 else replies

    queries = [
        Query((("GET", "shared:a"),), reply),
        Query((("GET", "shared:missing"), ("GET", "shared:a")), reply),
        Query((("EVAL", "return redis.error_reply('refused')", 0),), reply),
        Query((("XREVRANGE", "shared:stream", "+", "-", "COUNT", 1),), reply),
    ]
    try:
        outcomes = await asyncio.gather(*(pipeline.ask(query) for query in queries), return_exceptions=True)
        assert pipeline.round_trips == 1
        assert outcomes[:2] == [b"1", [None, b"1"]]
        assert isinstance(outcomes[2], redis.exceptions.ResponseError) and "refused" in str(outcomes[2])
        assert outcomes[3] == [[b"5-1", [b"data", b"x"]]]
        # A lost connection fails its round trip only: the next one opens a new connection.
        await redis_client.client_kill_filter(_type="normal", skipme=True)
        with contextlib.suppress(redis.exceptions.ConnectionError):
            await pipeline.ask(queries[0])  # may fail (the connection was lost) or reconnect
        assert await pipeline.ask(queries[0]) == b"1"
    finally:
        await pipeline.aclose()


async def test_joined_queries_take_one_wait_and_return_each_answer_or_error(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """A batch of connects asks its queries as one (`joined`): a failed one is its own answer, not raised."""
    await redis_client.set("joined:a", "1")
    pipeline = CountingPipeline(RedisTarget.parse(redis_url), timeout_s=5)

    def first(replies: list[Any]) -> Any:
        return replies[0]

    queries = [
        Query((("GET", "joined:a"),), first),
        Query((("EVAL", "return redis.error_reply('refused')", 0),), first),
        Query((("GET", "joined:missing"), ("GET", "joined:a")), lambda replies: replies),
    ]
    try:
        answers = await pipeline.ask(joined(queries))
        assert pipeline.round_trips == 1
        assert answers[0] == b"1" and answers[2] == [None, b"1"]
        assert isinstance(answers[1], redis.exceptions.ResponseError) and "refused" in str(answers[1])
        assert await pipeline.ask(joined([])) == []
    finally:
        await pipeline.aclose()
