"""Deadlines on one timer: each fires once its delay has passed, never before, and only if not cleared."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from gateway.protocol import deadlines as module
from gateway.protocol.deadlines import Deadlines

GRANULARITY_S = 0.05
DELAY_S = 0.2
WAIT_S = 10.0  # how long a test waits for callbacks: generous, for a loaded machine; idle, they come in 0.5 s


async def until(condition: Callable[[], bool]) -> None:
    """Return once `condition` holds (polled), or fail after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


class Recorder:
    def __init__(self) -> None:
        self.fired: list[tuple[object, float]] = []

    def __call__(self, key: object) -> None:
        self.fired.append((key, asyncio.get_running_loop().time()))

    @property
    def keys(self) -> list[object]:
        return [key for key, _ in self.fired]


async def test_each_deadline_fires_once_after_its_delay_never_before_and_at_most_the_granularity_late() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    deadlines: Deadlines[str] = Deadlines(recorder, granularity_s=GRANULARITY_S)
    set_at = {}
    for key, delay in (("c", DELAY_S * 2), ("a", DELAY_S), ("b", DELAY_S * 1.5)):
        set_at[key] = loop.time() + delay
        deadlines.set(key, delay)
    await until(lambda: len(recorder.fired) == 3)
    assert recorder.keys == ["a", "b", "c"]
    for key, fired_at in recorder.fired:
        assert fired_at >= set_at[key]  # never early; late by the granularity, and what a busy machine adds
    assert len(deadlines) == 0
    assert deadlines._timer is None  # nothing left: no timer either


async def test_a_cleared_deadline_never_fires_and_a_set_again_one_restarts() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    deadlines: Deadlines[str] = Deadlines(recorder, granularity_s=GRANULARITY_S)
    for key in ("cleared", "restarted", "kept"):
        deadlines.set(key, DELAY_S)
    deadlines.clear("cleared")
    deadlines.clear("never set")
    restarted_at = loop.time()
    deadlines.set("restarted", DELAY_S * 2)  # no sleep before: a loaded machine could let the first one fire
    await until(lambda: "restarted" in recorder.keys)
    await asyncio.sleep(GRANULARITY_S * 2)  # a cleared deadline's time has long passed too
    assert recorder.keys == ["kept", "restarted"]
    assert recorder.fired[1][1] >= restarted_at + DELAY_S * 2


async def test_an_earlier_deadline_set_later_wakes_the_timer_earlier() -> None:
    recorder = Recorder()
    deadlines: Deadlines[str] = Deadlines(recorder, granularity_s=GRANULARITY_S)
    deadlines.set("late", 10.0)
    deadlines.set("soon", DELAY_S)
    await until(lambda: bool(recorder.fired))
    assert recorder.keys == ["soon"]
    assert len(deadlines) == 1
    deadlines.close()
    assert len(deadlines) == 0 and deadlines._timer is None


async def test_a_callback_that_fails_is_logged_and_the_others_still_fire(caplog: pytest.LogCaptureFixture) -> None:
    fired: list[str] = []

    def on_due(key: str) -> None:
        if key == "bad":
            raise RuntimeError("broken")
        fired.append(key)

    deadlines: Deadlines[str] = Deadlines(on_due, granularity_s=GRANULARITY_S)
    for key in ("bad", "good"):
        deadlines.set(key, DELAY_S)
    with caplog.at_level(logging.ERROR):
        await until(lambda: not deadlines)
    assert fired == ["good"]
    assert "a deadline's callback failed" in caplog.text


async def test_callbacks_may_set_and_clear_deadlines() -> None:
    fired: list[str] = []

    def on_due(key: str) -> None:
        fired.append(key)
        if key == "x":
            deadlines.set("x+", 0.0)  # due at once: fired in this wake-up or the next
            deadlines.clear("y")

    deadlines: Deadlines[str] = Deadlines(on_due, granularity_s=GRANULARITY_S)
    deadlines.set("x", DELAY_S)
    deadlines.set("y", DELAY_S + 0.1)
    await until(lambda: not deadlines)
    assert fired == ["x", "x+"]
    assert len(deadlines) == 0


async def test_many_due_at_once_share_few_wake_ups_and_fire_a_bounded_number_per_turn() -> None:
    """Ten thousand deadlines due in one interval: a few wake-ups, at most MAX_FIRED_PER_TURN callbacks each."""
    recorder = Recorder()
    deadlines: Deadlines[int] = Deadlines(recorder, granularity_s=GRANULARITY_S)
    wake_ups = 0
    fire = deadlines._fire

    def counted() -> None:
        nonlocal wake_ups
        wake_ups += 1
        before = len(recorder.fired)
        fire()
        assert len(recorder.fired) - before <= module.MAX_FIRED_PER_TURN

    deadlines._fire = counted  # type: ignore[method-assign]
    for key in range(10_000):
        deadlines.set(key, DELAY_S)
    await until(lambda: not deadlines)
    assert sorted(recorder.keys) == list(range(10_000))  # type: ignore[type-var]
    assert wake_ups <= 10_000 // module.MAX_FIRED_PER_TURN + 5


async def test_cleared_deadlines_leave_a_bounded_heap() -> None:
    """Connections that come and go each leave a bucket number behind; the heap is rebuilt past a bound."""
    deadlines: Deadlines[int] = Deadlines(Recorder(), granularity_s=0.001)
    for key in range(5_000):
        deadlines.set(key, 60.0 + key * 0.01)  # a bucket each
        deadlines.clear(key)
    assert len(deadlines._numbers) <= module.MAX_STALE_TIMES + 1
    assert not deadlines._buckets
    deadlines.close()
