"""The simulator's generated candle history: cheap to create, continuous, and the same for the same seed and day."""

from __future__ import annotations

import itertools

from collectors.simulator.history import DAY_S, MinuteTape

# 2026-12-03 07:30:20 UTC: a market created in the morning.
MORNING_S = 1_796_283_020


def tape(*, seed: int = 7, now_s: int = MORNING_S, history_days: int = 2) -> MinuteTape:
    return MinuteTape(
        seed=seed,
        exchange="binance",
        symbol="BTCUSDT",
        reference=9_000_000,
        lot_scale=1000,
        now_s=now_s,
        history_days=history_days,
        max_live_minutes=1440,
    )


def test_creating_a_market_draws_no_minute_until_one_is_asked_for() -> None:
    """Found under load: drawing every minute at creation stalled the simulator's loop for a second
    when one subscribe named 25 new symbols, and the collector dropped the connection as silent."""
    history = tape(history_days=30)
    assert not history._hours
    assert len(history.minutes(history.first_s, history.first_s + 3600)) == 60
    assert list(history._hours) == [0]


def test_the_minutes_are_a_continuous_walk_ending_at_the_live_start_price() -> None:
    history = tape()
    minutes = history.minutes(history.first_s, history.live_from_s)
    assert len(minutes) == (history.live_from_s - history.first_s) // 60
    assert [m.start_s for m in minutes] == list(range(history.first_s, history.live_from_s, 60))
    assert minutes[0].open == 9_000_000
    for before, after in itertools.pairwise(minutes):
        assert after.open == before.close
    for minute in minutes:
        assert minute.high >= max(minute.open, minute.close) and 1 <= minute.low <= min(minute.open, minute.close)
    assert minutes[-1].close == history.last_close


def test_the_same_seed_on_the_same_day_gives_the_same_history_up_to_the_hour_of_creation() -> None:
    morning, evening = tape(), tape(now_s=MORNING_S + 12 * 3600)
    created_hour = MORNING_S - MORNING_S % 3600
    assert morning.first_s == evening.first_s
    assert morning.minutes(morning.first_s, created_hour) == evening.minutes(morning.first_s, created_hour)
    other_seed = tape(seed=8)
    assert other_seed.minutes(morning.first_s, created_hour) != morning.minutes(morning.first_s, created_hour)
    next_day = tape(now_s=MORNING_S + DAY_S)
    assert next_day.first_s == morning.first_s + DAY_S
