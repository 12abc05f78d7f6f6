"""The lean RESP publisher against a real Redis, and its connection against servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from unittest.mock import create_autospec

import hiredis
import pytest
import redis
import redis.asyncio
import redis.client
import redis.exceptions
import uvloop

from collectors.sink import Sink
from shared import codec, names, resp
from shared.embedded_redis import EmbeddedRedis
from shared.events import AnyMarketEvent, Book, Side, Ticker, Trade
from shared.publisher import RespPublisher, SyncPublisher
from shared.redis_target import RedisTarget


def tick(seq: int, symbol: str = "BTC/USDT") -> Ticker:
    return Ticker(exchange="binance", symbol=symbol, ts=seq, recv_ts=float(seq), seq=seq, last=str(seq))


def batch() -> list[AnyMarketEvent]:
    trade = Trade(
        exchange="binance", symbol="BTC/USDT", ts=3, recv_ts=3, trade_id="7", price="1", size="1", side=Side.BUY, seq=1
    )
    book = Book(exchange="kraken", symbol="ETH/USD", ts=4, recv_ts=4.0, seq=5, bids=[("1.5", "2")], asks=[("1.6", "3")])
    return [tick(1), tick(9, "ETH/USDT"), trade, book, tick(2), tick(3)]


def test_the_payload_holds_the_commands_of_redis_pys_pipeline() -> None:
    client = create_autospec(redis.Redis, spec_set=True, instance=True)
    pipe = create_autospec(redis.client.Pipeline, spec_set=True, instance=True)
    client.pipeline.return_value = pipe
    SyncPublisher(client, latest_ttl_s=60).publish_market(batch())
    expected = [
        [arg if isinstance(arg, bytes) else str(arg).encode() for arg in call.args] for call in pipe.method_calls[:-1]
    ]
    payload, count = RespPublisher(RedisTarget.parse("redis://127.0.0.1:1"), latest_ttl_s=60)._commands.market_resp(
        batch()
    )
    reader = hiredis.Reader()
    reader.feed(payload)
    commands = []
    while (command := reader.gets()) is not False:
        commands.append(command)
    assert commands == expected and count == len(expected) == 9


async def test_publishes_and_sets_the_latest_values(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = RespPublisher(RedisTarget.parse(redis_url), latest_ttl_s=60)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(names.market_channel("binance:ticker:BTC/USDT"), names.market_channel("kraken:book:ETH/USD"))
    try:
        for _ in range(2):
            await pubsub.get_message(timeout=1)  # the subscribe confirmations
        await publisher.publish_market(batch())
        received = []
        while len(received) < 4:
            message = await pubsub.get_message(timeout=1)
            assert message is not None, f"only {len(received)} messages"
            received.append(codec.decode_market(message["data"]))
    finally:
        await pubsub.aclose()
        publisher.close()
    assert [(event.symbol, event.seq) for event in received] == [
        ("BTC/USDT", 1),
        ("ETH/USD", 5),
        ("BTC/USDT", 2),
        ("BTC/USDT", 3),
    ]
    latest = await redis_client.get(names.latest_key("binance:ticker:BTC/USDT"))
    assert latest is not None and codec.decode_market(latest).seq == 3
    assert 0 < await redis_client.ttl(names.latest_key("kraken:book:ETH/USD")) <= 60
    assert await redis_client.get(names.latest_key("binance:trades:BTC/USDT")) is None  # trades keep no latest


async def test_credentials_and_database_from_the_url(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    user, password = f"collector-{secrets.token_hex(4)}", secrets.token_hex(8)
    # May publish, but not SET: Redis refuses part of each batch.
    await redis_client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+publish", "+select")
    host_port = redis_url.split("//", 1)[1].rsplit("/", 1)[0]
    try:
        refused = RespPublisher(RedisTarget.parse(f"redis://{user}:wrong@{host_port}/0"))
        with pytest.raises(redis.exceptions.AuthenticationError):
            await refused.publish_market([tick(1)])
        publisher = RespPublisher(RedisTarget.parse(f"redis://{user}:{password}@{host_port}/3"))
        await publisher.publish_market([batch()[2]])  # a trade: PUBLISH only
        with pytest.raises(redis.exceptions.ResponseError, match="NOPERM"):
            await publisher.publish_market([tick(1)])  # its SET is refused
        publisher.close()
    finally:
        await redis_client.execute_command("ACL", "DELUSER", user)


async def test_redis_restarted_fails_the_batch_then_reconnects() -> None:
    server = EmbeddedRedis().start()
    try:
        publisher = RespPublisher(RedisTarget.parse(server.url))
        await publisher.publish_market([tick(1)])
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await publisher.publish_market([tick(2)])
        server = EmbeddedRedis(port=server.port).start()
        await publisher.publish_market([tick(3)])
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            latest = await client.get(names.latest_key("binance:ticker:BTC/USDT"))
        finally:
            await client.aclose()
        assert latest is not None and codec.decode_market(latest).seq == 3
        publisher.close()
    finally:
        server.stop()


def test_runs_on_uvloop(redis_url: str) -> None:
    async def publish() -> None:
        publisher = RespPublisher(RedisTarget.parse(redis_url))
        try:
            await publisher.publish_market([tick(1), tick(2)])
        finally:
            publisher.close()

    uvloop.run(publish())


# -- servers that misbehave ---------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_redis(handler: Handler) -> AsyncIterator[RedisTarget]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield RedisTarget.parse(f"redis://127.0.0.1:{port}/0")
    finally:
        server.close()
        await server.wait_closed()


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that reads every request and answers none, until the client closes."""
    await reader.read()
    writer.close()


async def closes_after_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.close()


def answers(data: bytes, *, unasked: bool = False) -> Handler:
    """A server that sends `data` once the request arrives (or at once, `unasked`)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not unasked:
                await reader.read(1)
            writer.write(data)
            await writer.drain()
            await reader.read()  # until the client closes
        finally:
            writer.close()

    return handler


@pytest.mark.parametrize(
    ("server", "match"),
    [
        (answers(b"+OK\r\n", unasked=True), "nobody asked for"),
        (answers(b"?garbage\r\n"), "unreadable reply"),
        (answers(b"$%d\r\n" % (resp.MAX_REPLY_BUFFER + 10) + b"x" * (resp.MAX_REPLY_BUFFER + 1)), "exceeds"),
    ],
    ids=["unsolicited", "garbage", "huge"],
)
async def test_a_bad_reply_fails_the_request_and_closes_the_connection(server: Handler, match: str) -> None:
    async with fake_redis(server) as target:
        conn = await resp.RespConnection.open(target, timeout_s=1)
        await asyncio.sleep(0.05)  # an unsolicited reply arrives first
        with pytest.raises(redis.exceptions.ConnectionError, match=match):
            await asyncio.wait_for(conn.execute(resp.command("PING"), 1), 5)
        assert not conn.is_open


async def test_connection_closed_mid_pipeline_fails_the_batch_and_the_sink_keeps_it() -> None:
    async with fake_redis(closes_after_reading) as target:
        sink = Sink(RespPublisher(target), max_queue=10, backoff_initial_s=0.01, backoff_max_s=0.02)
        for seq in range(1, 4):
            sink.put(tick(seq))
        task = asyncio.create_task(sink.run())
        try:
            while sink.errors < 2:
                await asyncio.sleep(0.005)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert not sink.redis_up and sink.published == 0 and sink.dropped == 0 and len(sink) == 3


async def test_a_request_abandoned_by_its_deadline_closes_the_connection() -> None:
    async with fake_redis(never_answers) as target:
        conn = await resp.RespConnection.open(target, timeout_s=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await conn.execute(resp.command("PING"), 1)
        assert not conn.is_open  # its late reply would be taken for the next request's
        with pytest.raises(redis.exceptions.ConnectionError):
            await conn.execute(resp.command("PING"), 1)


async def test_nothing_listening_is_a_connection_error() -> None:
    async with fake_redis(closes_after_reading) as target:
        pass  # closed: its port refuses now
    with pytest.raises(redis.exceptions.ConnectionError, match="cannot connect"):
        await RespPublisher(target, timeout_s=1).publish_market([tick(1)])


async def test_an_unanswered_pipeline_fails_the_connection_after_the_reply_timeout() -> None:
    async with fake_redis(never_answers) as target:
        conn = await resp.RespConnection.open(target, timeout_s=0.1)
        first, second = conn.send(resp.command("PING"), 1), conn.send(resp.command("PING"), 1)
        assert conn.pending == 2  # the second went without waiting for the first's reply
        with pytest.raises(redis.exceptions.ConnectionError, match="no reply"):
            await asyncio.wait_for(first, 5)
        with pytest.raises(redis.exceptions.ConnectionError, match="no reply"):
            await second
        assert not conn.is_open and conn.pending == 0


async def test_the_sink_keeps_pipelines_in_flight_and_order(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = RespPublisher(RedisTarget.parse(redis_url))
    sink = Sink(publisher, max_queue=10_000, batch_size=7, max_in_flight=8)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(names.market_channel("binance:ticker:BTC/USDT"))
    await pubsub.get_message(timeout=1)
    task = asyncio.create_task(sink.run())
    try:
        for seq in range(1, 501):
            sink.put(tick(seq))
        received: list[int] = []
        while len(received) < 500:
            message = await pubsub.get_message(timeout=2)
            assert message is not None, f"only {len(received)} messages"
            received.append(codec.decode_market(message["data"]).seq)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        publisher.close()
    assert received == list(range(1, 501)) and sink.published == 500 and sink.errors == 0
