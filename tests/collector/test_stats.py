"""core.stats (Wilson intervals, log-bucket quantiles) and the fleet report's filters."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinnacle_updates.formats.boundedjson import FormatError
from pinnacle_updates.repo_tools.collector.summary import Filters
from pinnacle_updates.repo_tools.core import stats


def test_wilson_known_values() -> None:
    # Worked by hand from Wilson (1927): centre (p + z²/2n) / (1 + z²/n),
    # half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert stats.wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert stats.wilson(81, 263) == pytest.approx((0.25529, 0.36621), abs=1e-5)
    assert stats.wilson(0, 0) is None
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**7), st.data())
def test_wilson_holds_the_rate(trials: int, data: st.DataObject) -> None:
    successes = data.draw(st.integers(0, trials))
    interval = stats.wilson(successes, trials)
    assert interval is not None
    low, high = interval
    assert 0 <= low <= successes / trials <= high <= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 86400), min_size=1, max_size=300), st.sampled_from([0.5, 0.95, 0.99, 1.0]))
def test_quantiles_from_buckets_are_within_the_bucket_width(values: list[float], q: float) -> None:
    histogram: dict[int, int] = {}
    for v in values:
        stats.merge(histogram, {stats.bucket_of(v): 1})
    exact = sorted(values)[max(1, math.ceil(q * len(values))) - 1]
    estimate = stats.quantile(histogram, q)
    assert estimate is not None
    if exact < stats.FIRST_EDGE:
        assert estimate == stats.FIRST_EDGE / 2
    else:
        assert abs(estimate / exact - 1) <= math.sqrt(stats.RATIO) - 1 + 1e-9


def test_buckets_are_ordered_and_bounded() -> None:
    edges = [stats.bucket_of(v) for v in (0, 0.005, 0.01, 0.5, 1, 60, 3600, 86400, 10**9)]
    assert edges == sorted(edges) and edges[0] == 0 and edges[-1] == stats.BUCKETS - 1
    assert stats.quantile({}, 0.5) is None
    with pytest.raises(ValueError):
        stats.quantile({1: 1}, 0)


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_filters() -> None:
    assert Filters.parse("stable", "1.2.0", "7d", NOW) == Filters("stable", "1.2.0", NOW - timedelta(days=7))
    assert Filters.parse(None, None, "2026-12-01T00:00:00Z", NOW).since == datetime(2026, 12, 1, tzinfo=UTC)
    for channel, version, since, message in (("../x", None, None, "channel"), (None, "one", None, "PEP 440"),
                                             (None, None, "soon", "since"), (None, None, "9" * 30 + "w", "since"),
                                             (None, None, "2026-13-01T00:00:00Z", "since")):
        with pytest.raises(FormatError, match=message):
            Filters.parse(channel, version, since, NOW)
