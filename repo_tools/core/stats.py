"""Pure statistics of fleet feedback: Wilson intervals and quantiles from fixed log-bucket histograms.

No I/O. The collector keeps durations as counts per bucket (``bucket_of``) in its per-hour aggregates,
so a median or p95 over millions of installs is a sum over at most ``BUCKETS`` numbers per release,
never a scan of the raw reports. Buckets are fixed (not adaptive) so that histograms from any hour,
any release and any database add up bucket by bucket.

Buckets: 0 holds ``[0, FIRST_EDGE)``; bucket ``i >= 1`` holds ``[FIRST_EDGE * RATIO**(i-1),
FIRST_EDGE * RATIO**i)``; the last one also holds everything above. With ``RATIO = 2**(1/8)`` a
quantile is reported as the geometric middle of its bucket, within 4.4 % of the true value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FIRST_EDGE = 0.01
"""Seconds: durations below this share bucket 0 (reported as FIRST_EDGE / 2)."""
RATIO = 2 ** (1 / 8)
BUCKETS = 1 + math.ceil(math.log(86400 / FIRST_EDGE, RATIO)) + 1
"""Enough buckets to reach a day (the longest duration a report may carry) from FIRST_EDGE."""
Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95 % interval."""


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a non-negative duration."""
    if seconds < FIRST_EDGE:
        return 0
    index = 1 + math.floor(math.log(seconds / FIRST_EDGE, RATIO))
    return min(max(index, 1), BUCKETS - 1)


def bucket_value(index: int) -> float:
    """The duration a bucket stands for: the geometric middle of its bounds."""
    if index <= 0:
        return FIRST_EDGE / 2
    return float(FIRST_EDGE * RATIO ** (index - 0.5))


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) of the durations counted in ``histogram`` (bucket -> count),
    as its bucket's middle; None for an empty histogram. Nearest-rank: the smallest bucket whose
    cumulative count reaches ``ceil(q * n)``."""
    if not 0 < q <= 1:
        raise ValueError(f"quantile {q} is outside (0, 1]")
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(histogram))  # unreachable: the counts add up to total


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a success rate (95 % by default); None without trials.
    Unlike the normal approximation it stays inside [0, 1] and is honest for 0 or all successes
    and for the small counts of a fresh canary."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes out of {trials} trials")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # In exact arithmetic low <= p <= high (low = 0 at p = 0, high = 1 at p = 1); rounding may
    # leave 1e-17 on the wrong side, which a reader comparing the rate with its interval should not see.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def merge(into: dict[int, int], histogram: Mapping[int, int]) -> dict[int, int]:
    """Add ``histogram``'s counts into ``into`` (returned)."""
    for index, count in histogram.items():
        into[index] = into.get(index, 0) + count
    return into


__all__ = ["BUCKETS", "FIRST_EDGE", "RATIO", "Z95", "bucket_of", "bucket_value", "merge", "quantile", "wilson"]
