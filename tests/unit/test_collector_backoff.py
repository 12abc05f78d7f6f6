"""Reconnect backoff: exponential, capped, jittered, reset after success."""

from __future__ import annotations

import random

import pytest

from collectors.feed.backoff import Backoff


def test_doubles_up_to_the_cap_with_jitter_within_half() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8, 8, 8], strict=True):
        assert base / 2 <= delay <= base
    assert backoff.attempt == 8


def test_reset_starts_over_and_many_failures_do_not_overflow() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    for _ in range(5000):
        assert backoff.next() <= 30.0
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next() <= 0.5


def test_jitter_spreads_clients_apart() -> None:
    firsts = {round(Backoff(initial=1.0, maximum=1.0).next(), 6) for _ in range(50)}
    assert len(firsts) > 40


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_rejects_nonsense(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(initial=initial, maximum=maximum, factor=factor)
