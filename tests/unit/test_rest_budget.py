"""RestBudget: one weight budget per collector, aligned with the exchange's count, paused on 429."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from collectors.feed.rest import USED_WEIGHT_HEADER, RestBudget


async def test_spending_past_the_budget_waits_for_the_refill() -> None:
    budget = RestBudget(6000)  # 100 a second
    await budget.spend(5990)
    assert budget.waited_s == 0
    await budget.spend(50)  # 40 short: about 0.4 s of refill
    assert 0.3 < budget.waited_s < 0.5  # computed from the rate, not measured
    assert budget.spent == 6040


async def test_the_exchanges_count_caps_what_is_left() -> None:
    budget = RestBudget(6000)
    budget.observe({USED_WEIGHT_HEADER: "5800"})
    assert budget.available == pytest.approx(200, abs=1)
    budget.observe({USED_WEIGHT_HEADER: "not a number"})
    assert budget.available == pytest.approx(200, abs=1)


async def test_a_pause_holds_every_caller() -> None:
    budget = RestBudget(6000)
    budget.pause(30)
    assert budget.throttled == 1
    held = asyncio.create_task(budget.spend(1))
    await asyncio.sleep(0.05)
    assert not held.done() and budget.waited_s > 29  # waiting out the pause
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RestBudget(0)
