"""``formats.rollout.reach``, which the dashboard's rollout card shows as "when this machine gets
it": checked against the definition it answers (the first time ``percent_at`` passes the bucket),
for every schedule kind, a pause, a gate and a schedule that stops below the bucket."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from pinnacle_updates.formats.rollout import Rollout, RolloutState, format_time, parse_schedule, reach

START = "2026-12-01T00:00:00Z"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _first_in(rollout: Rollout, b: float, now: datetime, horizon: int, step: int = 60) -> datetime | None:
    """The definition, by brute force: the first minute from ``now`` at which ``b < percent_at``."""
    for s in range(0, horizon, step):
        t = now + timedelta(seconds=s)
        if rollout.percent_at(t) > b:
            return t
    return None


def test_reach_matches_the_definition_for_random_schedules_and_buckets() -> None:
    rng = random.Random(21)
    schedules = [
        {"type": "percentage", "initial_percentage": 0, "increase_percentage": 10, "increase_interval": 3600},
        {"type": "percentage", "initial_percentage": 5, "increase_percentage": 30, "increase_interval": 600},
        {"type": "waves", "waves": [{"after": 600, "percent": 1}, {"after": 7200, "percent": 20},
                                    {"after": 86400, "percent": 100}]},
        {"type": "fixed", "percent": 40},
    ]
    for data in schedules:
        rollout = Rollout(parse_schedule(data), START)
        for _ in range(15):
            b = rng.uniform(0, 100)
            now = T0 + timedelta(minutes=rng.randrange(0, 600))
            got = reach(rollout, b, now)
            want = _first_in(rollout, b, now, horizon=2 * 86400)
            assert got.at == want, (data, b, now, got)
            assert got.why, got


def test_reach_says_why_when_the_timetable_alone_never_gets_there() -> None:
    now = T0 + timedelta(hours=1)
    fixed = Rollout(parse_schedule({"type": "fixed", "percent": 20}), START)
    assert reach(fixed, 50.0, now).at is None
    assert "stops at 20%" in reach(fixed, 50.0, now).why

    paused = Rollout(parse_schedule({"type": "percentage", "initial_percentage": 10, "increase_percentage": 10,
                                     "increase_interval": 60}), START, RolloutState.PAUSED,
                     format_time(T0), 10.0)
    assert reach(paused, 50.0, now).at is None and "paused at 10%" in reach(paused, 50.0, now).why
    assert reach(paused, 5.0, now).at == now  # a paused rollout still holds those it reached

    gated = Rollout(parse_schedule({"type": "waves", "gate": True, "waves": [
        {"after": 0, "percent": 5}, {"after": 60, "percent": 50}, {"after": 120, "percent": 100}]}), START)
    assert reach(gated, 30.0, now).at is None and "waits for the publisher's approval" in reach(gated, 30.0, now).why
    approved = Rollout(gated.schedule, START, approved_step=1)
    assert reach(approved, 30.0, now).at == now  # step 2 approved, and its time has come
    assert reach(approved, 70.0, now).at is None  # step 3 not approved yet

    complete = Rollout(fixed.schedule, START, RolloutState.COMPLETE)
    assert reach(complete, 99.9, now).at == now
