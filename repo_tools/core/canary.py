"""Canary analysis: whether a rolling release advances, holds, halts or is yanked, from reported outcomes. Pure.

``decide`` is called at every look (``health_check_interval``, 60 s by default) with the
release's cumulative counts (install attempts, failures by cause, distinct install ids), the
baseline (the previous good release on the same channel and platform, or none), the rollout step
and the options. It returns a ``Decision`` with its evidence. No I/O, no clock: the caller (``watch``)
reads the collector and publishes the decision.

The halt test: a mixture sequential probability ratio test (always valid)
--------------------------------------------------------------------------
Per cause class ``c`` (``CLASSES``: ``release`` = rolled back after the swap, the release itself
failed; ``delivery`` = failed before the swap), with ``n`` trials and ``k`` failures of that class::

    p0     = min(max_failure_rate, U(baseline) + tolerance)      (max_failure_rate alone without a baseline)
    LR_q   = (q / p0)^k * ((1 - q) / (1 - p0))^(n - k)           one alternative rate q > p0
    M      = sum_j w_j * LR_{q_j},  q_j = min(0.99, p0 * r_j)      (ALTERNATIVES: the r_j and the w_j, sum w_j = 1)
    halt when  n >= min_installs  and  M >= 1 / alpha_c,   alpha_c = alpha / len(CLASSES)

``U(baseline)`` is the upper end of the baseline rate's Wilson 95 % interval (``core.stats.wilson``),
so a baseline with few counts gives a high ``p0`` (fewer halts), never a low one by chance.

Why it stays valid however often it looks: if the true failure rate is ``p <= p0``, each step of
``LR_q`` (q > p0) multiplies it by a factor of mean ``1 + (p - p0)(q - p0) / (p0 (1 - p0)) <= 1``,
so every ``LR_q``, and their mixture ``M`` (weights summing to 1), is a non-negative
supermartingale starting at 1. Ville's inequality gives ``P(sup_n M_n >= 1/alpha_c) <= alpha_c``
over ALL ``n``: looking every minute for days, or only at some looks, or after batches, is
covered (a look is a sub-sequence). A union over the classes bounds the chance that a release no
worse than ``p0`` in every class is ever halted by ``alpha``. A release exactly as good as its
baseline (``p = baseline < p0``) is halted far more rarely than ``alpha``: measured by
``bench/canary.py`` (docs/CANARY-SIMULATION.md), which chose the defaults.

Alternatives below ``p0`` are left out on purpose: with ``q < p0`` the factor's mean exceeds 1
when ``p < p0``, and the mixture would no longer be a supermartingale under the composite null.

Reports are unauthenticated (threat model)
-----------------------------------------
* **Fake failures** raise ``k``: they can at most halt (the safe direction; a person resumes).
* **Fake successes** raise ``n`` and would dilute real failures. Trials are counted as
  ``min(attempted, installs + failures)``: honest data has ``attempted <= installs + failures``
  (one success per install id; only failures are retried), so this changes nothing for it, while
  successes repeated from few install ids do not count more than once each.
* **Hold** at a gate while ``M >= hold_at`` (10, half the halt threshold): the next step waits for
  more evidence. A hold that lasts ``hold_limit`` (a step's length) becomes a halt (``after_hold``),
  so a rollout whose step has no more clients to report is not left in limbo. That halt is outside
  Ville's bound (``M`` only had to reach ``hold_at`` at a gate); bench/canary.py measures it with
  the rest (with ``hold_at`` 4.5 instead of 10 it doubled the false halts of good releases).
* **Advance** needs, besides a healthy test, ``min_clients_per_step`` distinct install ids new in
  this step, and the timetable's time for the next step (``Step.due``): fake successes can never
  move a rollout ahead of its timetable, and only with that many distinct ids. The ingest key
  narrows who can report at all.

A/B groups
----------
``compare_rates`` and ``compare_means`` give the difference between two groups with an
always-valid confidence sequence (the normal-mixture boundary of Robbins, in the form of Howard et
al. 2021): for a mean of ``n`` observations with sub-Gaussian variance factor ``s2``, the radius ::

    r(n) = sqrt((n*s2 + rho) * ln((n*s2 + rho) / (rho * a^2))) / n

covers the true mean at every ``n`` at once with probability ``1 - a``. Each group gets
``a = alpha / 2``; the difference's interval is ``diff +- (r_A + r_B)``. ``s2`` is the group's
variance: for a success rate the Bernoulli variance at the Laplace-smoothed rate, for a numeric
metric its sample variance. Plugging in an estimated variance makes it an asymptotic confidence
sequence (Waudby-Smith et al. 2021), said so in the result; ``s2 = 1/4`` would make the rate's
interval exact (Hoeffding) but about twice as wide near 90 % success. ``rho`` sets where the
boundary is tightest (near ``plan_n`` observations); any ``rho > 0`` is valid. A winner is named
only when the interval excludes 0 and both groups have ``min_group`` observations; otherwise the
answer is "not enough data" with why (``winner`` None). For a metric whose better direction is
unknown (an application's own metric: ``higher_is_better=None``) the "winner" is the group with the
higher mean, and ``direction`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import stats

__all__ = [
    "ALTERNATIVES",
    "CLASSES",
    "RULE",
    "Action",
    "ClassEvidence",
    "Comparison",
    "Counts",
    "Decision",
    "MetricSummary",
    "Options",
    "Step",
    "compare_means",
    "compare_rates",
    "comparison_line",
    "decide",
    "mixture_ratio",
    "null_rate",
]

RULE = "mixture-sprt"
"""The rule's name, recorded with every decision's evidence."""

CLASSES: Mapping[str, tuple[str, frozenset[str]]] = {
    "release": ("rolled_back", frozenset({"stop", "migration", "start", "health_check", "other"})),
    "delivery": ("failed", frozenset({"download", "verify", "space", "other"})),
}
"""Cause classes: which outcome and causes (``formats.report.ALLOWED``) count as a failure of each."""

ALTERNATIVES: tuple[tuple[float, float], ...] = ((2.0, 0.15), (5.0, 0.65), (40.0, 0.2))
"""(ratio r_j, weight w_j): the alternative failure rates q_j = p0 * r_j the mixture spreads over.
Chosen with bench/canary.py and an exact first-passage computation of the rule's boundary: most of
the weight at 5x the null rate (a 5 % release over a 0.5 % baseline is ~7x p0, and 5x puts the
boundary at 5-6 failures where 5 % releases that started lucky are still being seen, near 150-200
installs), some at 2x so a 2 % release is caught before the last step, and some at 40x so that a
release failing everywhere is halted after a handful of installs. Spreading it wider, e.g.
(2, 0.15), (4, 0.5), (8, 0.2), (40, 0.15), costs ~10 clients of p95 exposure at 5 %."""


class Action(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    HALT = "halt"
    YANK = "yank"
    NONE = "none"


@dataclass(frozen=True)
class Options:
    """The rollout options of issue 20 and the test's constants; defaults from bench/canary.py."""

    max_failure_rate: float = 0.02
    """The highest failure rate tolerated in any class: the null rate without a baseline, a cap with one."""
    min_clients_per_step: int = 50
    """Distinct install ids that must report in a step before a gate lets the rollout advance."""
    gate: bool = True
    """Steps advance only on an ``advance`` decision (False: the timetable alone moves them)."""
    auto_yank: bool = False
    """A halt becomes a yank (halt plus fleet rollback to the last good release)."""
    alpha: float = 0.1
    """Bound on the chance of ever halting a release no worse than the null rate, over all looks."""
    tolerance: float = 0.0005
    """Added to the baseline's upper bound: how much worse than the baseline is still acceptable."""
    min_installs: int = 5
    """Install attempts before any decision (a halt included)."""
    hold_at: float = 10.0
    """A gate holds while a class's M >= this (half the default halt threshold 20; 0: never on evidence)."""
    hold_limit: int = 12 * 3600
    """Seconds a gate may hold a rollout whose failures lean bad before that hold becomes a halt (0: never):
    a hold that no new data can lift (the step's clients have all reported) must not leave the rollout in limbo."""
    after_hold: str = "halt"
    """What a hold that reached ``hold_limit`` becomes: ``halt`` or ``advance`` (the timetable wins)."""
    health_check_interval: int = 60
    """Seconds between looks (the seed's ``health_check_interval``); used by ``watch``, not here."""

    def problem(self) -> str:
        """'' when the options are usable, else what is wrong (one line)."""
        if not 0 < self.max_failure_rate < 1:
            return f"max_failure_rate {self.max_failure_rate:g} is outside (0, 1)"
        if not 0 < self.alpha < 1:
            return f"alpha {self.alpha:g} is outside (0, 1)"
        if not 0 <= self.tolerance < 1:
            return f"tolerance {self.tolerance:g} is outside [0, 1)"
        if self.min_clients_per_step < 1:
            return f"min_clients_per_step {self.min_clients_per_step} must be at least 1"
        if self.min_installs < 1:
            return f"min_installs {self.min_installs} must be at least 1"
        if self.hold_at < 0:
            return f"hold_at {self.hold_at:g} cannot be negative"
        if self.hold_limit < 0:
            return f"hold_limit {self.hold_limit} cannot be negative"
        if self.after_hold not in ("halt", "advance"):
            return f"after_hold {self.after_hold!r} is not 'halt' or 'advance'"
        if self.health_check_interval < 1:
            return f"health_check_interval {self.health_check_interval} must be at least 1 second"
        return ""

    @property
    def class_alpha(self) -> float:
        return self.alpha / len(CLASSES)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a count (an integer >= 0), not {value!r}")
    return value


@dataclass(frozen=True)
class Counts:
    """One release's cumulative outcomes: the fields of a fleet report entry the rule reads."""

    attempted: int = 0
    installs: int = 0
    """Distinct install ids that reported anything about the release (the report's ``offered``)."""
    rolled_back: Mapping[str, int] = field(default_factory=dict)
    failed: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _count("attempted", self.attempted)
        _count("installs", self.installs)
        for outcome in ("rolled_back", "failed"):
            for cause, n in getattr(self, outcome).items():
                _count(f"{outcome}.{cause}", n)
        if self.failures_total() > self.attempted:
            raise ValueError(f"{self.failures_total()} failures out of {self.attempted} attempted installs")

    def failures(self, cls: str) -> int:
        outcome, causes = CLASSES[cls]
        return sum(n for cause, n in getattr(self, outcome).items() if cause in causes)

    def failures_total(self) -> int:
        return sum(self.rolled_back.values()) + sum(self.failed.values())

    def trials(self) -> int:
        """Attempts that count (see the threat model): successes beyond one per install id do not."""
        return min(self.attempted, self.installs + self.failures_total())

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Counts:
        """From one release (or A/B group) of the fleet report document (``collector.summary``)."""
        return cls(attempted=entry.get("attempted", 0), installs=entry.get("offered", 0),
                   rolled_back=dict(entry.get("rolled_back") or {}), failed=dict(entry.get("failed") or {}))


@dataclass(frozen=True)
class Step:
    """Where the rollout stands, as ``watch`` reads it from the signed index and its own record."""

    index: int
    percent: float
    next_percent: float | None
    """The next step's percent (None: this is the last step)."""
    due: bool
    """The timetable's time for the next step has come."""
    installs_at_start: int = 0
    """Distinct install ids the release had when this step began."""
    state: str = "active"
    """The rollout's state (``formats.rollout.RolloutState`` value): decisions only for ``active``."""
    held_for: float = 0.0
    """Seconds the gate has held this step because its failures leaned bad (0: not holding)."""


@dataclass(frozen=True)
class ClassEvidence:
    cls: str
    trials: int
    failures: int
    by_cause: Mapping[str, int]
    null_rate: float
    baseline_rate: float | None
    statistic: float
    threshold: float

    @property
    def rate(self) -> float | None:
        return self.failures / self.trials if self.trials else None

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "trials": self.trials, "failures": self.failures,
                "by_cause": dict(sorted(self.by_cause.items())),
                "rate": None if self.rate is None else round(self.rate, 6), "null_rate": round(self.null_rate, 6),
                "baseline_rate": None if self.baseline_rate is None else round(self.baseline_rate, 6),
                "statistic": _finite(self.statistic), "threshold": round(self.threshold, 6)}


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    """One line: what was decided and why."""
    evidence: tuple[ClassEvidence, ...] = ()
    attempted: int = 0
    installs: int = 0
    step_installs: int = 0
    rule: str = RULE
    hold: str = ""
    """Why a ``hold``: ``clients`` (too few install ids in the step) or ``evidence`` (failures lean bad:
    the caller counts ``Step.held_for`` from the first such hold)."""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "rule": self.rule, "hold": self.hold,
                "attempted": self.attempted,
                "installs": self.installs, "step_installs": self.step_installs,
                "evidence": [e.to_dict() for e in self.evidence]}


def _finite(value: float) -> float | str:
    """JSON has no infinity: a statistic past any float is written as text."""
    return round(value, 6) if math.isfinite(value) else "inf"


# ----- the halt test ---------------------------------------------------------------------------------
def null_rate(baseline: Counts | None, cls: str, options: Options) -> tuple[float, float | None]:
    """``(p0, baseline rate)`` for a class (see the module doc); the rate is None without a baseline."""
    if baseline is None or baseline.trials() <= 0:
        return options.max_failure_rate, None
    n, k = baseline.trials(), min(baseline.failures(cls), baseline.trials())
    interval = stats.wilson(k, n)
    assert interval is not None  # n > 0
    return min(options.max_failure_rate, interval[1] + options.tolerance), k / n


def mixture_ratio(trials: int, failures: int, p0: float,
                  alternatives: Sequence[tuple[float, float]] = ALTERNATIVES) -> float:
    """M = sum_j w_j LR_{q_j}(trials, failures) against the null rate ``p0`` (module doc), in
    log space so that thousands of trials neither overflow nor underflow; ``inf`` past a float."""
    if not 0 < p0 < 1:
        raise ValueError(f"null rate {p0!r} is outside (0, 1)")
    if not 0 <= failures <= trials:
        raise ValueError(f"{failures} failures out of {trials} trials")
    logs = []
    for ratio, weight in alternatives:
        q = min(0.99, p0 * ratio)
        if q <= p0 or weight <= 0:
            continue  # only alternatives above the null keep M a supermartingale
        logs.append(math.log(weight) + failures * math.log(q / p0)
                    + (trials - failures) * math.log((1 - q) / (1 - p0)))
    if not logs:
        return 0.0
    top = max(logs)
    total = top + math.log(sum(math.exp(v - top) for v in logs))
    return math.exp(total) if total < 700 else math.inf


def _evidence(counts: Counts, baseline: Counts | None, options: Options) -> tuple[ClassEvidence, ...]:
    trials = counts.trials()
    out = []
    for cls, (outcome, causes) in CLASSES.items():
        p0, base = null_rate(baseline, cls, options)
        k = min(counts.failures(cls), trials)
        by_cause = {c: n for c, n in getattr(counts, outcome).items() if c in causes and n}
        out.append(ClassEvidence(cls, trials, k, by_cause, p0, base, mixture_ratio(trials, k, p0),
                                 1 / options.class_alpha))
    return tuple(out)


def decide(counts: Counts, baseline: Counts | None, step: Step, options: Options | None = None) -> Decision:
    """The decision at one look (see the module doc). ``ValueError`` for unusable options."""
    options = options or Options()
    problem = options.problem()
    if problem:
        raise ValueError(problem)
    evidence = _evidence(counts, baseline, options)
    step_installs = max(0, counts.installs - step.installs_at_start)

    def made(action: Action, reason: str, hold: str = "") -> Decision:
        return Decision(action, reason, evidence, counts.attempted, counts.installs, step_installs, hold=hold)

    if step.state != "active":
        return made(Action.NONE, f"the rollout is {step.state}: a person resumes or completes it")
    if counts.attempted < options.min_installs:
        return made(Action.NONE, f"{counts.attempted} install attempts reported, fewer than min_installs "
                                 f"{options.min_installs}: no decision yet")
    tripped = [e for e in evidence if e.statistic >= e.threshold]
    if tripped:
        e = max(tripped, key=lambda x: x.statistic)
        action = Action.YANK if options.auto_yank else Action.HALT
        return made(action, f"{e.cls} failures {e.failures}/{e.trials} ({_pct(e.rate)}) exceed the tolerated "
                            f"{_pct(e.null_rate)}: likelihood ratio {_show(e.statistic)} >= {_show(e.threshold)}")
    if not options.gate:
        return made(Action.NONE, "healthy so far; the timetable moves the steps (no gate)")
    if step.next_percent is None:
        return made(Action.NONE, f"healthy so far at the last step ({step.percent:g}%)")
    if not step.due:
        return made(Action.NONE, f"healthy so far at {step.percent:g}%; the next step is not due yet")
    if step_installs < options.min_clients_per_step:
        return made(Action.HOLD, f"the next step is due but only {step_installs} install ids reported in this step "
                                 f"(min_clients_per_step {options.min_clients_per_step})", "clients")
    leaning = [e for e in evidence if options.hold_at and e.statistic >= options.hold_at]
    if leaning:
        e = max(leaning, key=lambda x: x.statistic)
        if options.hold_limit and step.held_for >= options.hold_limit and options.after_hold == "advance":
            return made(Action.ADVANCE, f"{e.cls} failures {e.failures}/{e.trials} ({_pct(e.rate)}) leant bad for "
                                        f"{step.held_for / 3600:.1f} h at a gate without reaching a halt: the "
                                        f"timetable goes on, {step.percent:g}% -> {step.next_percent:g}% (the halt "
                                        "test keeps watching)")
        if options.hold_limit and step.held_for >= options.hold_limit:
            action = Action.YANK if options.auto_yank else Action.HALT
            return made(action, f"{e.cls} failures {e.failures}/{e.trials} ({_pct(e.rate)}) have leant bad for "
                                f"{step.held_for / 3600:.1f} h at a gate (likelihood ratio {_show(e.statistic)} >= "
                                f"{_show(options.hold_at)}): halted for a person to decide")
        return made(Action.HOLD, f"{e.cls} failures {e.failures}/{e.trials} ({_pct(e.rate)}) lean bad: likelihood "
                                 f"ratio {_show(e.statistic)} >= {_show(options.hold_at)}, not yet a halt", "evidence")
    return made(Action.ADVANCE, f"healthy: {step_installs} install ids in this step, every failure class below "
                                f"its tolerated rate; advance {step.percent:g}% -> {step.next_percent:g}%")


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.2f}%"


def _show(value: float) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.3g}"


# ----- A/B comparison -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSummary:
    """``n`` observations of a numeric metric: their mean and (sample) variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> MetricSummary:
        n = len(values)
        mean = sum(values) / n if n else 0.0
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)

    @classmethod
    def from_histogram(cls, histogram: Mapping[int, int]) -> MetricSummary:
        """From a ``core.stats`` log-bucket histogram (install time): each bucket as its middle, so the
        mean is within the bucket width (4.4 %) of the true one."""
        values = {stats.bucket_value(b): c for b, c in histogram.items() if c > 0}
        n = sum(values.values())
        mean = sum(v * c for v, c in values.items()) / n if n else 0.0
        var = sum(c * (v - mean) ** 2 for v, c in values.items()) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)


@dataclass(frozen=True)
class Comparison:
    metric: str
    group_a: str
    group_b: str
    n_a: int
    n_b: int
    value_a: float | None
    value_b: float | None
    difference: float | None
    """value_a - value_b."""
    interval: tuple[float, float] | None
    winner: str | None
    reason: str
    method: str
    direction: str = "higher_is_better"
    """``higher_is_better``, ``lower_is_better`` or ``higher`` (unknown: the winner is the higher group)."""

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        return {"metric": self.metric, "groups": [self.group_a, self.group_b], "n": [self.n_a, self.n_b],
                "values": [r(self.value_a), r(self.value_b)], "difference": r(self.difference),
                "interval": [r(self.interval[0]), r(self.interval[1])] if self.interval else None,
                "winner": self.winner, "reason": self.reason, "method": self.method, "direction": self.direction}


def comparison_line(c: Mapping[str, Any]) -> str:
    """One line for a comparison's dict (``Comparison.to_dict``): ``fleet report`` and ``watch`` print it."""
    a, b = c["groups"]
    metric = c["metric"]
    rate = metric == "success_rate"

    def show(v: float) -> str:
        return f"{100 * v:+.2f}%" if rate else f"{v:+.4g}"

    if c["difference"] is None:
        told = "no data in a group"
    else:
        low, high = c["interval"]
        told = f"{show(c['difference'])} [{show(low)}, {show(high)}]"
    verdict = c["reason"] if c["winner"] is None else c["reason"].split(":")[0]
    return f"{metric} {a} - {b}: {told} (n {c['n'][0]}/{c['n'][1]}): {verdict}"


def _radius(n: int, s2: float, alpha: float, plan_n: int) -> float:
    """The normal-mixture confidence-sequence radius for a mean of ``n`` observations (module doc)."""
    log_inv = math.log(1 / alpha)
    # rho making the boundary tight near plan_n observations (any rho > 0 keeps it valid)
    rho = max(s2, 1e-12) * plan_n / (2 * log_inv + math.log(1 + 2 * log_inv))
    v = n * s2 + rho
    return math.sqrt(v * math.log(v / (rho * alpha * alpha))) / n


def _compare(metric: str, names: tuple[str, str], a: MetricSummary, b: MetricSummary, s2: tuple[float, float],
             higher_is_better: bool | None, alpha: float, min_group: int, plan_n: int, method: str) -> Comparison:
    direction = {True: "higher_is_better", False: "lower_is_better", None: "higher"}[higher_is_better]
    if a.n < 1 or b.n < 1:
        return Comparison(metric, *names, a.n, b.n, None, None, None, None, None,
                          "not enough data (a group has no observations)", method, direction)
    diff = a.mean - b.mean
    half = _radius(a.n, s2[0], alpha / 2, plan_n) + _radius(b.n, s2[1], alpha / 2, plan_n)
    interval = (diff - half, diff + half)
    base = (metric, *names, a.n, b.n, a.mean, b.mean, diff, interval)
    if min(a.n, b.n) < min_group:
        return Comparison(*base, None, f"not enough data (too little data: {min(a.n, b.n)} < {min_group} "
                                       "observations in a group)", method, direction)
    if interval[0] <= 0 <= interval[1]:
        return Comparison(*base, None, "not enough data (the interval holds 0)", method, direction)
    a_better = (diff > 0) == (higher_is_better is not False)
    winner = names[0] if a_better else names[1]
    verb = "is higher" if higher_is_better is None else "is better"
    return Comparison(*base, winner, f"{winner} {verb}: the interval excludes 0", method, direction)


def compare_rates(names: tuple[str, str], a: tuple[int, int], b: tuple[int, int], *, alpha: float = 0.05,
                  min_group: int = 100, plan_n: int = 500) -> Comparison:
    """Success rates of two groups, each ``(successes, trials)``: difference a - b with an always-valid
    interval. The variance factor is each group's Bernoulli variance at its Laplace-smoothed rate
    ``(s + 1) / (n + 2)`` (asymptotic; 0 or all successes are not taken as certainty). The exact
    sub-Gaussian factor 1/4 would also be valid but twice as wide at rates near 90 %+."""
    summaries, factors = [], []
    for successes, trials in (a, b):
        _count("trials", trials)
        if not 0 <= _count("successes", successes) <= trials:
            raise ValueError(f"{successes} successes out of {trials} trials")
        p = successes / trials if trials else 0.0
        smoothed = (successes + 1) / (trials + 2)
        summaries.append(MetricSummary(trials, p, p * (1 - p)))
        factors.append(smoothed * (1 - smoothed))
    return _compare("success_rate", names, summaries[0], summaries[1], (factors[0], factors[1]), True, alpha,
                    min_group, plan_n, "normal-mixture confidence sequence, smoothed Bernoulli variance (asymptotic)")


def compare_means(metric: str, names: tuple[str, str], a: MetricSummary, b: MetricSummary, *,
                  higher_is_better: bool | None = False, alpha: float = 0.05, min_group: int = 100,
                  plan_n: int = 500) -> Comparison:
    """Means of a numeric metric (install time by default: lower is better; None: direction unknown,
    the "winner" is the higher group) of two groups; the interval uses each group's sample variance
    (asymptotic confidence sequence)."""
    for s in (a, b):
        if s.n < 0 or not math.isfinite(s.mean) or not math.isfinite(s.variance) or s.variance < 0:
            raise ValueError(f"{metric}: not a usable summary (n={s.n}, mean={s.mean}, variance={s.variance})")
    return _compare(metric, names, a, b, (a.variance, b.variance), higher_is_better, alpha, min_group, plan_n,
                    "normal-mixture confidence sequence with the sample variance (asymptotic)")
