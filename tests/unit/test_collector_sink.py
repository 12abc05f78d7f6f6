"""The bounded sink, with an autospec'd publisher behind `SerialPublisher`: drops oldest, requeues, resumes, drains."""

from __future__ import annotations

import asyncio
from unittest.mock import create_autospec

import pytest
import redis
import redis.client
import redis.exceptions

from collectors.sink import SerialPublisher, Sink
from shared import codec
from shared.events import Side, Ticker, Trade
from shared.publisher import AsyncPublisher, SyncPublisher


def tick(seq: int) -> Ticker:
    return Ticker(exchange="binance", symbol="BTC/USDT", ts=seq, recv_ts=float(seq), seq=seq, last="1")


def publisher() -> AsyncPublisher:
    return create_autospec(AsyncPublisher, spec_set=True, instance=True)


def test_a_full_queue_drops_the_oldest() -> None:
    sink = Sink(SerialPublisher(publisher()), max_queue=3)
    for seq in range(1, 6):
        sink.put(tick(seq))
    assert len(sink) == 3 and sink.dropped == 2
    assert sink.status().queued == 3


async def test_publishes_in_batches() -> None:
    target = publisher()
    sink = Sink(SerialPublisher(target), max_queue=100, batch_size=4)
    for seq in range(1, 11):
        sink.put(tick(seq))
    task = asyncio.create_task(sink.run())
    try:
        while sink.published < 10:
            await asyncio.sleep(0.001)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    batches = [[event.seq for event in call.args[0]] for call in target.publish_market.await_args_list]
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


async def test_redis_down_keeps_the_bound_then_resumes_in_order() -> None:
    target = publisher()
    failures = [redis.exceptions.ConnectionError("down")] * 3

    async def fail_then_ok(events: object) -> None:
        if failures:
            raise failures.pop()

    target.publish_market.side_effect = fail_then_ok
    sink = Sink(SerialPublisher(target), max_queue=5, batch_size=3, backoff_initial_s=0.001, backoff_max_s=0.002)
    for seq in range(1, 5):
        sink.put(tick(seq))
    task = asyncio.create_task(sink.run())
    try:
        while sink.errors < 1:
            await asyncio.sleep(0.001)
        assert not sink.redis_up
        for seq in range(5, 9):
            sink.put(tick(seq))
            assert len(sink) <= 5
        while sink.published < 5 or len(sink):
            await asyncio.sleep(0.001)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sink.redis_up and sink.errors == 3
    assert sink.published + sink.dropped == 8
    delivered = [e.seq for call in target.publish_market.await_args_list[3:] for e in call.args[0]]
    assert delivered == sorted(delivered) and delivered[-1] == 8  # the newest survive, in order


async def test_a_batch_redis_refuses_is_dropped_not_retried_forever() -> None:
    target = publisher()
    target.publish_market.side_effect = redis.exceptions.ResponseError("OOM")
    sink = Sink(SerialPublisher(target), max_queue=10, batch_size=10)
    sink.put(tick(1))
    sink.put(tick(2))
    await sink.drain(1.0)
    assert (sink.dropped, sink.errors, len(sink)) == (2, 1, 0)


async def test_drain_gives_up_when_redis_is_away() -> None:
    target = publisher()
    target.publish_market.side_effect = OSError("refused")
    serial = SerialPublisher(target)
    sink = Sink(serial, max_queue=10)
    sink.put(tick(1))
    await sink.drain(1.0)
    assert len(sink) == 1 and not sink.redis_up

    async def slow(events: object) -> None:
        await asyncio.sleep(10)

    target.publish_market.side_effect = slow
    await sink.drain(0.05)
    assert len(sink) == 1  # the unanswered batch went back to the queue
    serial.close()


def test_bad_bounds() -> None:
    with pytest.raises(ValueError, match="positive"):
        Sink(SerialPublisher(publisher()), max_queue=0)


async def test_an_unexpected_error_drops_the_batch_and_backs_off() -> None:
    target = publisher()
    target.publish_market.side_effect = TypeError("a bug")
    sink = Sink(SerialPublisher(target), max_queue=10)
    sink.put(tick(1))
    await sink.drain(1.0)
    assert (sink.dropped, sink.errors, len(sink)) == (1, 1, 0)


def test_a_batch_sets_each_latest_value_once_with_its_newest_event() -> None:
    client = create_autospec(redis.Redis, spec_set=True, instance=True)
    pipe = create_autospec(redis.client.Pipeline, spec_set=True, instance=True)
    client.pipeline.return_value = pipe
    eth = Ticker(exchange="binance", symbol="ETH/USDT", ts=9, recv_ts=9.0, seq=9, last="2")
    trade = Trade(
        exchange="binance", symbol="BTC/USDT", ts=3, recv_ts=3, trade_id="7", price="1", size="1", side=Side.BUY, seq=1
    )
    SyncPublisher(client, latest_ttl_s=60).publish_market([tick(1), eth, trade, tick(2), tick(3)])
    commands = [call.args for call in pipe.method_calls]  # execute_command(name, target, data, ...), execute()
    calls = [(name, target, codec.decode_market(data).seq) for name, target, data, *_ in commands[:-1]]
    assert calls == [
        ("PUBLISH", "md:binance:ticker:BTC/USDT", 1),
        ("PUBLISH", "md:binance:ticker:ETH/USDT", 9),
        ("SET", "md:last:binance:ticker:ETH/USDT", 9),
        ("PUBLISH", "md:binance:trades:BTC/USDT", 1),  # trades have no latest value
        ("PUBLISH", "md:binance:ticker:BTC/USDT", 2),
        ("PUBLISH", "md:binance:ticker:BTC/USDT", 3),
        ("SET", "md:last:binance:ticker:BTC/USDT", 3),  # the SETs of 1 and 2 would be overwritten
    ]
    assert pipe.method_calls[-1][0] == "execute"
    assert commands[2][3:] == ("EX", 60)


async def test_pipelines_go_at_most_every_interval_and_a_lone_event_at_once() -> None:
    target = publisher()
    sink = Sink(SerialPublisher(target), max_queue=100, min_interval_s=0.2)
    task = asyncio.create_task(sink.run())
    try:
        sink.put(tick(1))
        while sink.published < 1:
            await asyncio.sleep(0.001)
        started = asyncio.get_running_loop().time()
        for seq in range(2, 5):
            sink.put(tick(seq))
            await asyncio.sleep(0.01)
        while sink.published < 4:
            await asyncio.sleep(0.001)
        waited = asyncio.get_running_loop().time() - started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    batches = [[event.seq for event in call.args[0]] for call in target.publish_market.await_args_list]
    assert batches == [[1], [2, 3, 4]]
    assert 0.1 < waited < 0.5
