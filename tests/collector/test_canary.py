"""The canary decision core (``repo_tools.core.canary``): the sequential halt test, the gate, the threat model
of unauthenticated reports, the A/B comparison, counts read back from the real report storage, and the
simulation's ``--quick`` run. Monte Carlo checks are seeded and bounded (a few seconds each)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time

import pytest

from pinnacle_updates.repo_tools.collector.storage import Filters, open_storage
from pinnacle_updates.repo_tools.core import canary
from pinnacle_updates.repo_tools.core.canary import Action, Counts, Options, Step
from tests.collector.conftest import make_report
from tests.conftest import ROOT

BASELINE = Counts(attempted=10_000, installs=10_000, rolled_back={"health_check": 50})
DUE = Step(index=0, percent=1, next_percent=5, due=True)
NOT_DUE = Step(index=0, percent=1, next_percent=5, due=False)


def healthy(n: int, failures: int = 0, installs: int | None = None) -> Counts:
    return Counts(attempted=n, installs=n if installs is None else installs,
                  rolled_back={"health_check": failures} if failures else {})


# ----- the statistic -------------------------------------------------------------------------------------------
def test_mixture_ratio_grows_with_failures_and_shrinks_with_successes() -> None:
    p0 = 0.01
    assert canary.mixture_ratio(0, 0, p0) == pytest.approx(1.0)  # a test martingale starts at 1
    by_k = [canary.mixture_ratio(100, k, p0) for k in range(8)]
    assert by_k == sorted(by_k) and by_k[0] < 1 < by_k[-1]
    by_n = [canary.mixture_ratio(n, 3, p0) for n in (10, 100, 1000, 10_000)]
    assert by_n == sorted(by_n, reverse=True)
    assert canary.mixture_ratio(10**6, 10**6, p0) == math.inf  # past a float: inf, not an OverflowError
    assert canary.mixture_ratio(10**6, 0, p0) == 0.0
    with pytest.raises(ValueError, match="outside"):
        canary.mixture_ratio(10, 1, 0.0)
    with pytest.raises(ValueError, match="failures out of"):
        canary.mixture_ratio(3, 4, 0.01)


def _ever_halts(rng: random.Random, p: float, p0: float, threshold: float, n: int, look: int) -> bool:
    k = 0
    for i in range(1, n + 1):
        k += rng.random() < p
        if i % look == 0 and canary.mixture_ratio(i, k, p0) >= threshold:
            return True
    return False


def test_halts_at_the_null_rate_stay_under_alpha_over_all_looks() -> None:
    """Ville: a release exactly at the null rate, looked at 300 times over 3,000 installs, crosses 1/alpha_c in
    at most alpha_c of runs (plus Monte Carlo slack); 5x that rate is caught in most runs."""
    rng = random.Random(20)
    alpha_c = Options().class_alpha
    runs = 400
    false = sum(_ever_halts(rng, 0.01, 0.01, 1 / alpha_c, 3000, 10) for _ in range(runs))
    assert false / runs <= alpha_c + 0.03
    caught = sum(_ever_halts(rng, 0.05, 0.01, 1 / alpha_c, 600, 10) for _ in range(100))
    assert caught >= 90


def test_null_rate_from_the_baseline_or_the_maximum() -> None:
    options = Options()
    assert canary.null_rate(None, "release", options) == (options.max_failure_rate, None)
    p0, rate = canary.null_rate(BASELINE, "release", options)
    assert rate == 0.005 and 0.005 + options.tolerance < p0 < 0.009  # Wilson upper end plus the tolerance
    few = Counts(attempted=20, installs=20)  # 0 of 20: the upper end is ~16 %, capped by the maximum
    assert canary.null_rate(few, "release", options)[0] == options.max_failure_rate
    bad_base = Counts(attempted=1000, installs=1000, rolled_back={"start": 300})
    assert canary.null_rate(bad_base, "release", options)[0] == options.max_failure_rate


# ----- decisions -------------------------------------------------------------------------------------------------
def test_no_decision_before_min_installs() -> None:
    d = canary.decide(healthy(4, failures=4), BASELINE, DUE)
    assert d.action is Action.NONE and "min_installs" in d.reason


def test_a_failing_release_halts_with_its_evidence_and_yanks_with_auto_yank() -> None:
    counts = healthy(60, failures=5)
    d = canary.decide(counts, BASELINE, NOT_DUE)
    assert d.action is Action.HALT
    release = d.evidence[0]
    assert (release.cls, release.trials, release.failures) == ("release", 60, 5)
    assert release.statistic >= release.threshold == pytest.approx(1 / Options().class_alpha)
    doc = d.to_dict()
    assert doc["rule"] == canary.RULE and doc["action"] == "halt" and doc["evidence"][0]["by_cause"] == {
        "health_check": 5}
    json.dumps(doc)  # finite numbers only
    assert "\n" not in d.reason
    assert canary.decide(counts, BASELINE, NOT_DUE, Options(auto_yank=True)).action is Action.YANK


def test_the_delivery_class_is_tested_on_its_own() -> None:
    counts = Counts(attempted=60, installs=60, failed={"download": 5})
    d = canary.decide(counts, BASELINE, NOT_DUE)
    assert d.action is Action.HALT and "delivery" in d.reason
    assert [e.failures for e in d.evidence] == [0, 5]


def test_only_an_active_rollout_gets_decisions() -> None:
    paused = Step(index=1, percent=5, next_percent=25, due=True, state="paused")
    d = canary.decide(healthy(60, failures=30), BASELINE, paused)
    assert d.action is Action.NONE and "paused" in d.reason


def test_the_gate() -> None:
    good = healthy(200, failures=1)
    assert canary.decide(good, BASELINE, NOT_DUE).action is Action.NONE
    advance = canary.decide(good, BASELINE, DUE)
    assert advance.action is Action.ADVANCE and "1% -> 5%" in advance.reason
    assert canary.decide(good, BASELINE, DUE, Options(gate=False)).action is Action.NONE
    last = Step(index=3, percent=100, next_percent=None, due=True)
    assert canary.decide(good, BASELINE, last).action is Action.NONE
    few = canary.decide(healthy(40), BASELINE, DUE)
    assert (few.action, few.hold) == (Action.HOLD, "clients")


def test_a_gate_holds_while_failures_lean_bad_and_halts_after_hold_limit() -> None:
    leaning = healthy(120, failures=4)  # above hold_at, below the halt threshold
    stat = canary.decide(leaning, BASELINE, NOT_DUE).evidence[0].statistic
    assert Options().hold_at <= stat < 1 / Options().class_alpha
    held = canary.decide(leaning, BASELINE, DUE)
    assert (held.action, held.hold) == (Action.HOLD, "evidence")
    long = Step(index=0, percent=1, next_percent=5, due=True, held_for=12 * 3600)
    assert canary.decide(leaning, BASELINE, long).action is Action.HALT
    assert canary.decide(leaning, BASELINE, long, Options(hold_limit=0)).action is Action.HOLD
    assert canary.decide(leaning, BASELINE, long, Options(after_hold="advance")).action is Action.ADVANCE
    assert canary.decide(leaning, BASELINE, DUE, Options(hold_at=0)).action is Action.ADVANCE


@pytest.mark.parametrize("changes, message", [
    ({"alpha": 0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"max_failure_rate": 0}, "max_failure_rate"),
    ({"tolerance": -0.1}, "tolerance"), ({"min_clients_per_step": 0}, "min_clients_per_step"),
    ({"min_installs": 0}, "min_installs"), ({"hold_at": -1}, "hold_at"), ({"after_hold": "x"}, "after_hold"),
    ({"hold_limit": -1}, "hold_limit"),
    ({"health_check_interval": 0}, "health_check_interval"),
])
def test_unusable_options_are_refused_in_one_line(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        canary.decide(healthy(10), None, DUE, Options(**changes))  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fields, message", [
    ({"attempted": -1}, "attempted"), ({"attempted": True}, "attempted"), ({"installs": 1.5}, "installs"),
    ({"attempted": 2, "rolled_back": {"start": 3}}, "3 failures out of 2"),
    ({"attempted": 2, "failed": {"space": -1}}, "failed.space"),
])
def test_bad_counts_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Counts(**fields)  # type: ignore[arg-type]


# ----- the threat model: reports are unauthenticated -------------------------------------------------------------
def test_fake_failures_from_few_install_ids_can_halt() -> None:
    """The safe direction: a flood of failure reports from 3 install ids halts (a person can resume)."""
    flood = Counts(attempted=1000, installs=3, rolled_back={"health_check": 990})
    assert canary.decide(flood, BASELINE, NOT_DUE).action is Action.HALT


def test_fake_successes_never_advance_ahead_of_the_timetable() -> None:
    for installs in (5, 49, 10_000, 10**6):
        flood = healthy(10**6, installs=installs)
        assert canary.decide(flood, BASELINE, NOT_DUE).action is Action.NONE
    few_ids = canary.decide(healthy(10**6, installs=49), BASELINE, DUE)
    assert few_ids.action is Action.HOLD  # due, but fewer than min_clients_per_step distinct ids


def test_fake_successes_from_few_ids_do_not_hide_real_failures() -> None:
    real = healthy(100, failures=8)
    assert canary.decide(real, BASELINE, NOT_DUE).action is Action.HALT
    diluted = Counts(attempted=100 + 100_000, installs=100 + 5, rolled_back={"health_check": 8})
    d = canary.decide(diluted, BASELINE, NOT_DUE)
    assert d.action is Action.HALT and d.evidence[0].trials == 113


def test_successes_from_distinct_ids_advance_a_gated_step_only_after_min_clients_per_step() -> None:
    options = Options(min_clients_per_step=50)
    start = Step(index=1, percent=5, next_percent=25, due=True, installs_at_start=100)
    seen = []
    for new in range(0, 80, 5):
        seen.append((new, canary.decide(healthy(100 + new), BASELINE, start, options).action))
    assert all(a is Action.HOLD for n, a in seen if n < 50)
    assert all(a is Action.ADVANCE for n, a in seen if n >= 50)


# ----- counts from the real storage --------------------------------------------------------------------------------
def test_counts_from_a_fleet_report_of_the_real_storage(tmp_path: object) -> None:
    storage = open_storage(str(tmp_path / "reports.sqlite"))  # type: ignore[operator]
    try:
        reports = [make_report() for _ in range(40)]
        reports += [make_report(outcome="rolled_back", cause="health_check") for _ in range(3)]
        reports += [make_report(outcome="failed", cause="download") for _ in range(2)]
        storage.ingest(reports)
        entry = storage.fleet_report(Filters(channel="stable"))["releases"][0]
    finally:
        storage.close()
    counts = Counts.from_entry(entry)
    assert (counts.attempted, counts.installs) == (45, 45)
    assert (counts.failures("release"), counts.failures("delivery"), counts.trials()) == (3, 2, 45)
    assert Counts.from_entry({}) == Counts()


# ----- A/B ---------------------------------------------------------------------------------------------------------
def test_ab_no_winner_on_too_little_data_or_an_interval_holding_zero() -> None:
    small = canary.compare_rates(("a", "b"), (30, 30), (20, 30))
    assert small.winner is None and "too little data" in small.reason
    same = canary.compare_rates(("a", "b"), (950, 1000), (948, 1000))
    assert same.winner is None and same.interval is not None and same.interval[0] < 0 < same.interval[1]
    empty = canary.compare_rates(("a", "b"), (0, 0), (5, 10))
    assert empty.winner is None and empty.interval is None


def test_ab_names_a_winner_when_the_interval_excludes_zero() -> None:
    c = canary.compare_rates(("new", "old"), (990, 1000), (900, 1000))
    assert c.winner == "new" and c.interval is not None and 0 < c.interval[0] < 0.09 < c.interval[1]
    json.dumps(c.to_dict())
    fast = canary.MetricSummary.of([10.0 + (i % 7) * 0.1 for i in range(500)])
    slow = canary.MetricSummary.of([14.0 + (i % 7) * 0.1 for i in range(500)])
    t = canary.compare_means("install_time", ("new", "old"), fast, slow)
    assert t.winner == "new" and t.difference == pytest.approx(-4.0)  # lower install time is better
    assert canary.compare_means("score", ("new", "old"), fast, slow, higher_is_better=True).winner == "old"
    with pytest.raises(ValueError, match="usable"):
        canary.compare_means("x", ("a", "b"), canary.MetricSummary(10, math.nan, 1.0), slow)


def test_ab_metric_from_an_install_time_histogram() -> None:
    from pinnacle_updates.repo_tools.core import stats

    histogram: dict[int, int] = {}
    for seconds in [3.0] * 50 + [5.0] * 50:
        b = stats.bucket_of(seconds)
        histogram[b] = histogram.get(b, 0) + 1
    s = canary.MetricSummary.from_histogram(histogram)
    assert s.n == 100 and s.mean == pytest.approx(4.0, rel=0.05) and s.variance > 0


def test_ab_interval_covers_the_true_difference_at_every_look() -> None:
    """Two groups with the same success rate, looked at every 50 observations up to 2,000: the interval
    excludes the true difference (0) in at most alpha of runs, and never names a winner more often."""
    rng = random.Random(4)
    runs, wrong = 200, 0
    for _ in range(runs):
        sa = sb = 0
        for n in range(1, 2001):
            sa += rng.random() < 0.9
            sb += rng.random() < 0.9
            if n % 50 == 0 and canary.compare_rates(("a", "b"), (sa, n), (sb, n), min_group=1).winner is not None:
                wrong += 1
                break
    assert wrong / runs <= 0.05


# ----- the simulation ----------------------------------------------------------------------------------------------
def test_the_simulation_quick_run_prints_its_table_shape() -> None:
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "canary.py"), "--quick", "--json", "--jobs", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert time.monotonic() - began < 90
    assert doc["quick"] is True and doc["clients"] == 10_000 and doc["steps"] == [1.0, 5.0, 25.0, 100.0]
    assert set(doc["cases"]) == {"0.005", "0.02", "0.05", "0.2", "1"}
    for case in doc["cases"].values():
        assert set(case["fixed"]) == {"10", "25", "50", "100"}
        for row in [case["ours"], *case["fixed"].values()]:
            assert {"halted", "exposed_median", "exposed_p95", "reached_last_step"} <= set(row)
            assert 0 <= row["halted"] <= 1 and 0 <= row["exposed_median"] <= row["exposed_p95"] <= 10_000
        assert case["storage_check"]["same"] is True
    assert doc["cases"]["1"]["ours"]["halted"] == 1.0  # a release failing everywhere always stops
    assert doc["cases"]["1"]["ours"]["exposed_p95"] <= 10
    assert len(doc["goals"]) == 6 and all({"goal", "value", "pass"} <= set(g) for g in doc["goals"])


def test_the_simulation_s_information_bound_is_the_neyman_pearson_one() -> None:
    """bench/canary.py's bound on any rule (figures checked against scipy.stats.binom by hand)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import canary as bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert [bench.information_bound(f) for f in (0.004, 0.006, 0.0065, 0.008)] == [177, 170, 168, 153]
    assert bench.information_bound(0.5) < bench.information_bound(0.01) < bench.information_bound(0.001)
