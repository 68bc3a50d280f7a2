"""Simulated time: when minutes become processable, and the wall time that maps to them."""

from __future__ import annotations

from datetime import datetime, timedelta

from anomaly.clock import SimulatedClock, latest_processable, minute_range, processable_at
from anomaly.engines import make_plan

START = datetime(2026, 1, 5, 4, 0)


def test_a_minute_is_processable_only_after_it_ends_plus_the_delay():
    clock = SimulatedClock(START, wall_start=1000.0, speed=60.0)
    assert processable_at(clock, START, 5) == 1000.0 + 65 / 60
    assert clock.at_wall(1000.0 + 64 / 60) < START + timedelta(seconds=65)


class FrozenClock(SimulatedClock):
    def now(self) -> datetime:
        return self.sim_start


def test_latest_processable_lags_now_by_a_minute_and_the_delay():
    at = FrozenClock(START + timedelta(minutes=10, seconds=4), 0.0, 1.0)
    assert latest_processable(at, 5) == START + timedelta(minutes=8)
    after = FrozenClock(START + timedelta(minutes=10, seconds=5), 0.0, 1.0)
    assert latest_processable(after, 5) == START + timedelta(minutes=9)


def test_minute_range_is_inclusive_and_ordered():
    minutes = minute_range(START, START + timedelta(minutes=3))
    assert minutes == [START + timedelta(minutes=i) for i in range(4)]
    assert minute_range(START, START - timedelta(minutes=1)) == []


def test_plan_warms_up_on_history_then_replays_the_requested_minutes():
    plan = make_plan("ray", START, history_minutes=120, minutes=30, speed=60, delay_seconds=5)
    assert plan.warmup_first == START
    assert plan.warmup_last == START + timedelta(minutes=119)
    assert plan.replay_first == START + timedelta(minutes=120)
    assert plan.replay_minutes == 30
    assert plan.run_id.startswith("ray-")
