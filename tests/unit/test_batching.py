"""The batcher behind connect admission: who shares a call, and who gets which answer."""

from __future__ import annotations

import asyncio

import pytest

from gateway.batching import Batcher


class Calls:
    """A `run` that records each call's items and answers after the test lets it."""

    def __init__(self) -> None:
        self.items: list[list[int]] = []
        self.go = asyncio.Event()
        self.fail: Exception | None = None

    async def run(self, items: list[int]) -> list[int | Exception]:
        self.items.append(items)
        await self.go.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]


async def test_a_lone_request_goes_at_once_and_those_made_meanwhile_share_the_next_call() -> None:
    calls = Calls()
    batcher = Batcher(calls.run)
    first = asyncio.create_task(batcher.submit(0))
    for _ in range(3):  # the caller's task, the scheduled start, the call's task: no timer
        await asyncio.sleep(0)
    assert calls.items == [[0]]  # not held back waiting for company
    later = [asyncio.create_task(batcher.submit(item)) for item in (2, 4, 6)]
    await asyncio.sleep(0.01)
    assert calls.items == [[0]]  # one call out at a time
    calls.go.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [20, 40, 60]
    assert calls.items == [[0], [2, 4, 6]]


async def test_an_item_error_reaches_only_its_caller() -> None:
    calls = Calls()
    calls.go.set()
    batcher = Batcher(calls.run)
    outcomes = await asyncio.gather(*(batcher.submit(item) for item in (2, 3, 4)), return_exceptions=True)
    assert calls.items == [[2, 3, 4]]
    assert outcomes[0] == 20 and outcomes[2] == 40
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "odd 3"


async def test_a_failed_call_fails_each_of_its_callers() -> None:
    calls = Calls()
    calls.go.set()
    calls.fail = ConnectionError("redis is down")
    batcher = Batcher(calls.run)
    outcomes = await asyncio.gather(*(batcher.submit(item) for item in (2, 4)), return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [ConnectionError, ConnectionError]
    calls.fail = None
    assert await batcher.submit(6) == 60  # the next call is made as usual


async def test_calls_take_at_most_max_items() -> None:
    calls = Calls()
    calls.go.set()
    batcher = Batcher(calls.run, max_items=2)
    assert await asyncio.gather(*(batcher.submit(item) for item in (0, 2, 4, 6, 8))) == [0, 20, 40, 60, 80]
    assert calls.items == [[0, 2], [4, 6], [8]]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    calls = Calls()
    batcher = Batcher(calls.run)
    tasks = [asyncio.create_task(batcher.submit(item)) for item in (2, 4)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    calls.go.set()
    assert await tasks[1] == 40
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]


async def test_close_cancels_the_running_call_and_what_waits() -> None:
    calls = Calls()
    batcher = Batcher(calls.run)
    running = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(batcher.submit(4))
    await asyncio.sleep(0)
    await batcher.close()
    for task in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
