"""formats.rollout and formats.fleet: schedules, states, buckets, clock bounds and the per-client
fleet rules (rollout, A/B groups, update-type fast paths, min_version, yanks), with decide()."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pinnacle_updates.client.policy import UpdateConfig, decide
from pinnacle_updates.formats.fleet import evaluate, switch_channel_plan
from pinnacle_updates.formats.index import ChannelIndex, Digest, FormatError, Release, TargetRef, UpdateType
from pinnacle_updates.formats.rollout import (
    ABTest,
    ClockReading,
    Rollout,
    RolloutState,
    Schedule,
    ScheduleError,
    Yank,
    bucket,
    format_time,
    parse_duration,
    parse_schedule,
    rollout_time,
)

T = UpdateType
H = "0" * 64
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
START = format_time(T0)
PERCENTAGE = {"type": "percentage", "initial_percentage": 10, "increase_percentage": 25, "increase_interval": 3600}
WAVES = [{"after": "1h", "percent": 1}, {"after": "1d", "percent": 15}, {"after": "3d", "percent": 100}]


def rel(version: str, kind: UpdateType = T.PATCH, **fields: object) -> Release:
    base = f"stable/any/{version}"
    r = Release(version=version, platform="any", type=kind, published=START, content=Digest(1, H),
                full=TargetRef(f"{base}/full.tar.zst", 1, H), manifest=TargetRef(f"{base}/manifest.json.zst", 1, H))
    return replace(r, **fields)  # type: ignore[arg-type]


def at(hours: float) -> ClockReading:
    return ClockReading(T0 + timedelta(hours=hours))


def ids(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(n)]


# -- schedules -------------------------------------------------------------------------------------
def test_percentage_schedule_steps_and_caps() -> None:
    s = parse_schedule(PERCENTAGE)
    assert [s.percent_at(h * 3600) for h in (-1, 0, 0.99, 1, 2, 3, 4, 100)] == [0, 10, 10, 35, 60, 85, 100, 100]
    assert s.full_after() == 4 * 3600
    assert parse_schedule(s.to_dict()) == s


def test_waves_schedule_and_bare_list() -> None:
    s = parse_schedule(WAVES)
    assert s.waves[0].after == 3600 and s.waves[2].after == 3 * 86400
    assert [s.percent_at(x) for x in (0, 3599, 3600, 86400, 3 * 86400)] == [0, 0, 1, 15, 100]
    assert s.to_dict()["type"] == "waves" and parse_schedule(s.to_dict()) == s
    assert s.full_after() == 3 * 86400


@pytest.mark.parametrize(("data", "needle"), [
    ([{"after": "1h", "percent": 20}, {"after": "2h", "percent": 10}], "must not decrease"),
    ([{"after": "2h", "percent": 1}, {"after": "1h", "percent": 2}], "'after' must increase"),
    ([{"after": "1h", "percent": 101}], "outside 0-100"),
    ({"type": "fixed", "percent": -1}, "outside 0-100"),
    ({"type": "percentage", "initial_percentage": 10, "increase_percentage": 5, "increase_interval": 0}, "at least 1"),
    ({"type": "percentage", "initial_percentage": True, "increase_interval": 60}, "expected a number"),
    ({"type": "linear"}, "unknown schedule type"),
    ({"type": "fixed", "percent": 5, "extra": 1}, "unknown field 'extra'"),
    ([], "non-empty"),
    ([{"after": "soon", "percent": 1}], "expected a duration"),
])
def test_bad_schedules_are_refused(data: object, needle: str) -> None:
    with pytest.raises(ScheduleError, match=needle):
        parse_schedule(data)


def test_durations() -> None:
    assert [parse_duration(x, "d") for x in (90, "90s", "30m", "1h", "1.5h", "1d", "2w")] == [
        90, 90, 1800, 3600, 5400, 86400, 1209600]


# -- rollout state ---------------------------------------------------------------------------------
def test_pause_freezes_and_resume_continues_where_it_stopped() -> None:
    r = Rollout(parse_schedule(PERCENTAGE), START)
    paused = r.paused(T0 + timedelta(hours=1, minutes=30))
    assert paused.state is RolloutState.PAUSED and paused.paused_percent == 35
    assert paused.percent_at(T0 + timedelta(days=30)) == 35  # whatever the clock says
    resumed = paused.resumed(T0 + timedelta(hours=11, minutes=30))  # paused for 10 h
    assert resumed.state is RolloutState.ACTIVE and resumed.start == format_time(T0 + timedelta(hours=10))
    assert resumed.percent_at(T0 + timedelta(hours=11, minutes=30)) == 35
    assert resumed.percent_at(T0 + timedelta(hours=12)) == 60
    assert resumed.completed().percent_at(T0) == 100
    assert Rollout.from_dict(paused.to_dict()) == paused
    with pytest.raises(ScheduleError, match="paused"):
        paused.paused(T0)
    with pytest.raises(ScheduleError, match="not paused"):
        r.resumed(T0)
    with pytest.raises(ScheduleError, match="already complete"):
        r.completed().completed()


def test_index_round_trips_fleet_fields_and_stays_compatible() -> None:
    r = rel("1.1.0", rollout=Rollout(Schedule.fixed(50), START), yanked=Yank("crash", START), min_version="1.0.0",
            ramp=False, ab_testing=ABTest(20))
    index = ChannelIndex("stable", (rel("1.0.0"), r), START)
    again = ChannelIndex.from_bytes(index.to_bytes())
    assert again == index and again.releases[1].extra == {}
    assert "rollout" not in again.releases[0].to_dict()  # releases without controls keep their old shape
    doc = again.releases[1].to_dict()
    assert doc["rollout"]["schedule"] == {"type": "fixed", "percent": 50} and doc["ab_testing"] == {
        "test_group_percentage": 20}
    bad = index.to_bytes().replace(b'"percent":50', b'"percent":150')
    with pytest.raises(FormatError, match="outside 0-100"):
        ChannelIndex.from_bytes(bad)
    # A newer publisher's extra fields inside the controls do not lock this client out...
    newer = index.to_bytes().replace(b'"percent":50', b'"percent":50,"cohort":"eu"').replace(
        b'"test_group_percentage":20', b'"test_group_percentage":20,"metric":"p95"')
    assert ChannelIndex.from_bytes(newer).releases[1].rollout == r.rollout
    # ...while a publisher's own schedule file is still checked strictly.
    with pytest.raises(ScheduleError, match="unknown field 'cohort'"):
        parse_schedule({"type": "fixed", "percent": 5, "cohort": "eu"})


# -- buckets ---------------------------------------------------------------------------------------
def test_buckets_are_deterministic_uniform_and_differ_per_release() -> None:
    clients = ids(20_000)
    a = [bucket(c, "stable", "1.1.0") for c in clients]
    assert a == [bucket(c, "stable", "1.1.0") for c in clients]
    assert all(0 <= b < 100 for b in a)
    for cut in (1, 10, 50, 90):
        assert abs(sum(b < cut for b in a) / len(a) * 100 - cut) < 1.0
    b = [bucket(c, "stable", "1.2.0") for c in clients]
    first_a = {c for c, x in zip(clients, a, strict=True) if x < 10}
    first_b = {c for c, x in zip(clients, b, strict=True) if x < 10}
    assert len(first_a & first_b) < 0.2 * len(first_a)  # a fresh first cohort per release
    assert len({round(x, 4) for x in a}) > 19_000  # resolution far finer than 0.01 %


# -- clock -----------------------------------------------------------------------------------------
def test_clock_is_bounded_by_the_newest_signed_time() -> None:
    assert rollout_time(T0, None, 86400).now == T0
    behind = rollout_time(T0 - timedelta(days=3), T0, 86400)
    assert behind.now == T0 and "behind" in behind.note
    ahead = rollout_time(T0 + timedelta(days=10), T0, 86400)
    assert ahead.now == T0 + timedelta(days=1) and "ahead" in ahead.note and "max_clock_skew" in ahead.note
    fine = rollout_time(T0 + timedelta(hours=2), T0, 86400)
    assert fine.now == T0 + timedelta(hours=2) and fine.note == ""


def test_a_clock_far_ahead_does_not_jump_the_ramp() -> None:
    r = rel("1.1.0", rollout=Rollout(parse_schedule(WAVES), START))
    clock = rollout_time(T0 + timedelta(days=30), T0 + timedelta(hours=2), 3600)  # capped at 3 h
    held = [evaluate([r], "1.0.0", c, "stable", clock).held for c in ids(2000)]
    assert abs(sum(not h for h in held) / 2000 * 100 - 1) < 1  # 1 %, not 100 %


# -- fleet rules -----------------------------------------------------------------------------------
def eligible_fraction(releases: list[Release], clock: ClockReading, n: int = 4000, **kw: object) -> float:
    got = 0
    for c in ids(n):
        view = evaluate(releases, "1.0.0", c, "stable", clock, **kw)  # type: ignore[arg-type]
        d = decide(releases, "1.0.0", UpdateConfig(), held=view.held, required=view.required)
        got += d.auto_release is not None and d.auto_release.version == releases[-1].version
    return got / n * 100


def test_rollout_exposure_follows_the_schedule() -> None:
    releases = [rel("1.0.0"), rel("1.1.0", rollout=Rollout(parse_schedule(PERCENTAGE), START))]
    for hours, target in ((0, 10), (1, 35), (2, 60), (5, 100)):
        assert abs(eligible_fraction(releases, at(hours)) - target) < 2.5


def test_security_and_hotfix_skip_the_ramp_unless_told() -> None:
    ramp = Rollout(Schedule.fixed(0), START)
    for kind in (T.SECURITY, T.HOTFIX):
        assert eligible_fraction([rel("1.0.0"), rel("1.1.0", kind, rollout=ramp)], at(0), 200) == 100
        assert eligible_fraction([rel("1.0.0"), rel("1.1.0", kind, rollout=ramp, ramp=True)], at(0), 200) == 0
        assert eligible_fraction([rel("1.0.0"), rel("1.1.0", kind, rollout=ramp)], at(0), 200,
                                 skip_ramp_types=()) == 0  # a client's policy keeps it in the ramp
    assert eligible_fraction([rel("1.0.0"), rel("1.1.0", rollout=ramp, ramp=False)], at(0), 200) == 100


def test_ab_test_splits_the_fleet_into_test_and_control() -> None:
    releases = [rel("1.0.0"), rel("1.1.0", T.MINOR, ab_testing=ABTest(20))]
    groups = [evaluate(releases, "1.0.0", c, "stable", at(0)).groups["1.1.0"] for c in ids(4000)]
    assert abs(groups.count("test") / 40 - 20) < 2
    view = evaluate(releases, "1.0.0", next(c for c in ids(100) if bucket(c, "stable", "1.1.0") >= 20), "stable",
                    at(0))
    assert "control group" in view.held["1.1.0"]
    d = decide(releases, "1.0.0", UpdateConfig(), held=view.held)
    assert d.release is None and "control group" in d.reason


def test_min_version_forces_the_update_past_ramp_and_auto_install() -> None:
    releases = [rel("1.0.0"), rel("1.1.0", T.MINOR, rollout=Rollout(Schedule.fixed(0), START), min_version="1.1.0")]
    config = UpdateConfig(auto_install=False)
    view = evaluate(releases, "1.0.0", "0" * 32, "stable", at(0))
    assert view.required == {"1.1.0"} and not view.held
    d = decide(releases, "1.0.0", config, held=view.held, required=view.required)
    assert d.auto_release is not None and d.auto_release.version == "1.1.0"
    # a client already at or above min_version follows the ramp
    assert evaluate([*releases, rel("1.2.0")], "1.1.0", "0" * 32, "stable", at(0)).required == frozenset()
    # and a major stays behind a person even when required
    major = [rel("1.0.0"), rel("2.0.0", T.MAJOR, min_version="2.0.0")]
    view = evaluate(major, "1.0.0", "0" * 32, "stable", at(0))
    assert decide(major, "1.0.0", UpdateConfig(), held=view.held, required=view.required).auto_release is None


def test_yanked_release_is_skipped_and_its_clients_go_back() -> None:
    yank = Yank("corrupts data", START)
    releases = [rel("1.0.0"), rel("1.1.0"), rel("1.2.0", yanked=yank)]
    view = evaluate(releases, "1.1.0", "0" * 32, "stable", at(0))
    assert view.held == {"1.2.0": "yanked: corrupts data"} and view.rollback_to is None
    on_it = evaluate(releases, "1.2.0", "0" * 32, "stable", at(0), other_slot_version="1.0.0")
    assert on_it.installed_yank == yank and on_it.rollback_to is not None
    assert on_it.rollback_to.version == "1.1.0"  # the newest non-yanked, not merely the other slot
    # a bad version on this machine is not returned to; the other slot is, even outside a rollout
    assert evaluate(releases, "1.2.0", "0" * 32, "stable", at(0), bad_versions={"1.1.0"}).rollback_to.version == (  # type: ignore[union-attr]
        "1.0.0")
    ramped = [rel("1.0.0"), rel("1.1.0", rollout=Rollout(Schedule.fixed(0), START)), rel("1.2.0", yanked=yank)]
    assert evaluate(ramped, "1.2.0", "0" * 32, "stable", at(0)).rollback_to.version == "1.0.0"  # type: ignore[union-attr]
    assert evaluate(ramped, "1.2.0", "0" * 32, "stable", at(0),
                    other_slot_version="1.1.0").rollback_to.version == "1.1.0"  # type: ignore[union-attr]
    # a newer fix the client may have is taken unattended instead (even a minor with auto_install off)
    fixed = [*releases, rel("1.3.0", T.MINOR)]
    view = evaluate(fixed, "1.2.0", "0" * 32, "stable", at(0))
    d = decide(fixed, "1.2.0", UpdateConfig(auto_install=False), held=view.held, required=view.required)
    assert d.auto_release is not None and d.auto_release.version == "1.3.0"


def test_channel_switch_never_downgrades_unless_allowed() -> None:
    beta = [rel("1.0.0"), rel("1.1.0"), rel("1.2.0", yanked=Yank("x", START))]
    assert switch_channel_plan(beta, "1.5.0", "beta", False).install is None
    assert "older than the installed 1.5.0" in switch_channel_plan(beta, "1.5.0", "beta", False).reason
    plan = switch_channel_plan(beta, "1.5.0", "beta", True)
    assert plan.install is not None and plan.install.version == "1.1.0"
    assert switch_channel_plan(beta, "1.0.0", "beta", False).install is None
    assert switch_channel_plan([], "1.0.0", "beta", True).install is None
