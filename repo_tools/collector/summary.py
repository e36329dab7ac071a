"""The fleet report: per-release health from the collector's aggregates. Pure (rows in, a document out).

Per release (``channel, platform, version``) and per A/B group of it:

* ``offered``: distinct install ids with any report naming the release (a ``to_version``, or the
  ``from_version`` of a manual rollback). Simple and documented, not "clients whose check saw it".
* ``attempted``: install reports; ``succeeded``: those committed (with or without a delta fallback);
  ``rolled_back``: automatic rollbacks after the swap, by cause; ``failed``: failures before the
  swap, by cause; ``delta_fallbacks``: committed installs whose delta failed and the full artifact was
  installed instead; ``manual_rollbacks``: people leaving the release; ``checks_failed`` by cause.
* ``success_rate`` = succeeded / attempted with its Wilson 95 % interval (``core.stats.wilson``).
* ``install_time``: median and p95 of committed installs' total duration, from the log-bucket
  histograms (``core.stats``: within 4.4 %); null without timed installs.
* ``bytes_downloaded`` / ``bytes_saved``: sums over the release's install reports.
* ``metrics``: per application metric name (``formats.report``'s ``metrics``; counted for the version
  running when reported) ``n``, ``mean`` and ``sd`` (sample standard deviation, null below 2).
* ``comparisons`` (releases with two or more A/B groups): each group against the reference group
  (``control`` when there is one, else the first by name) for the success rate, the install time and
  every application metric both have: ``core.canary.compare_rates``/``compare_means``, the difference
  with an always-valid 95 % interval; ``winner`` is null ("not enough data") unless the interval
  excludes 0 and both groups have ``MIN_GROUP`` observations. An application metric's direction is
  unknown, so its ``winner`` is the higher group (``direction`` says so).

``versions``: the fleet's version distribution: per channel and platform, how many install ids run
each version by their latest report that carried ``current_version`` (heartbeats always do).
``since`` keeps what happened at or after it (aggregates by whole hours: the hour holding ``since``
is in); ``channel`` and ``version`` keep one channel or one release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from packaging.version import InvalidVersion, Version

from pinnacle_updates.formats.boundedjson import FormatError
from pinnacle_updates.formats.index import check_channel, parse_version
from pinnacle_updates.formats.rollout import ScheduleError, format_time, parse_duration, parse_time

from ..core import canary, stats

Rows = Mapping[str, Sequence[Sequence[Any]]]
"""Query name -> result rows, as ``storage`` reads them."""
REPORT_FORMAT = 1
REFERENCE_GROUP = "control"
MIN_GROUP = 100
"""Observations each group needs before a comparison may name a winner."""


@dataclass(frozen=True)
class Filters:
    channel: str | None = None
    version: str | None = None
    since: datetime | None = None

    @classmethod
    def parse(cls, channel: str | None, version: str | None, since: str | None, now: datetime) -> Filters:
        """Filters from text (command line, query string); ``since`` is a UTC time like
        2026-01-31T12:00:00Z or a duration back from ``now`` (``90m``, ``1d``, seconds).
        ``FormatError`` (one line) for a bad value."""
        if channel is not None:
            check_channel(channel)
        if version is not None:
            parse_version(version)
        when = None
        if since is not None:
            try:
                when = parse_time(since) if "T" in since else now - timedelta(seconds=parse_duration(since, "since"))
            except (ScheduleError, OverflowError):
                raise FormatError(f"since: expected a UTC time like 2026-01-31T12:00:00Z or a duration "
                                  f"such as 90m or 7d, not {since[:40]!r}") from None
        return cls(channel, version, when)

    def to_dict(self) -> dict[str, str | None]:
        return {"channel": self.channel, "version": self.version,
                "since": format_time(self.since) if self.since else None}


class _Tally:
    """The counters of one release or one A/B group of it."""

    def __init__(self) -> None:
        self.offered = 0
        self.attempted = 0
        self.succeeded = 0
        self.delta_fallbacks = 0
        self.manual_rollbacks = 0
        self.rolled_back: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.checks_failed: dict[str, int] = {}
        self.bytes_downloaded = 0
        self.bytes_saved = 0
        self.timing: dict[int, int] = {}
        self.metrics: dict[str, tuple[int, float, float]] = {}
        """name -> (count, sum, sum of squares)."""

    def metric(self, name: str) -> canary.MetricSummary:
        n, total, squares = self.metrics.get(name, (0, 0.0, 0.0))
        mean = total / n if n else 0.0
        # sum of squares minus n * mean^2 can come out a hair below 0 by rounding: no variance is negative
        variance = max(0.0, (squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return canary.MetricSummary(n, mean, variance)

    def add(self, kind: str, outcome: str, cause: str, count: int, downloaded: int, saved: int) -> None:
        if kind == "install":
            self.attempted += count
            self.bytes_downloaded += downloaded
            self.bytes_saved += saved
            if outcome == "committed":
                self.succeeded += count
                if cause == "delta_fallback":
                    self.delta_fallbacks += count
            elif outcome == "rolled_back":
                self.rolled_back[cause] = self.rolled_back.get(cause, 0) + count
            elif outcome == "failed":
                self.failed[cause] = self.failed.get(cause, 0) + count
        elif kind == "rollback":
            self.manual_rollbacks += count
        elif kind == "check" and outcome == "failed":
            self.checks_failed[cause] = self.checks_failed.get(cause, 0) + count

    def to_dict(self) -> dict[str, Any]:
        interval = stats.wilson(self.succeeded, self.attempted)
        median = stats.quantile(self.timing, 0.5) if self.timing else None
        p95 = stats.quantile(self.timing, 0.95) if self.timing else None
        return {
            "offered": self.offered,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "rolled_back": dict(sorted(self.rolled_back.items())),
            "rolled_back_total": sum(self.rolled_back.values()),
            "failed": dict(sorted(self.failed.items())),
            "failed_total": sum(self.failed.values()),
            "delta_fallbacks": self.delta_fallbacks,
            "manual_rollbacks": self.manual_rollbacks,
            "checks_failed": dict(sorted(self.checks_failed.items())),
            "success_rate": round(self.succeeded / self.attempted, 6) if self.attempted else None,
            "success_interval": [round(v, 6) for v in interval] if interval else None,
            "install_time": {"median": _seconds(median), "p95": _seconds(p95),
                             "timed": sum(self.timing.values())},
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_saved": self.bytes_saved,
            "metrics": {name: _metric_dict(self.metric(name)) for name in sorted(self.metrics)},
        }


def _metric_dict(m: canary.MetricSummary) -> dict[str, Any]:
    return {"n": m.n, "mean": round(m.mean, 6), "sd": round(m.variance ** 0.5, 6) if m.n > 1 else None}


def compare_groups(groups: Mapping[str, _Tally]) -> list[dict[str, Any]]:
    """Each group against the reference one (module doc): success rate, install time, every
    application metric both groups reported; ``canary.Comparison.to_dict`` each."""
    if len(groups) < 2:
        return []
    reference = REFERENCE_GROUP if REFERENCE_GROUP in groups else min(groups)
    base = groups[reference]
    out = []
    for name in sorted(groups):
        if name == reference:
            continue
        tally, names = groups[name], (name, reference)
        found = [canary.compare_rates(names, (tally.succeeded, tally.attempted), (base.succeeded, base.attempted),
                                      min_group=MIN_GROUP),
                 canary.compare_means("install_time", names, canary.MetricSummary.from_histogram(tally.timing),
                                      canary.MetricSummary.from_histogram(base.timing), min_group=MIN_GROUP)]
        for metric in sorted(set(tally.metrics) & set(base.metrics)):
            found.append(canary.compare_means(metric, names, tally.metric(metric), base.metric(metric),
                                              higher_is_better=None, min_group=MIN_GROUP))
        out += [c.to_dict() for c in found]
    return out


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _order(key: tuple[str, str, str]) -> tuple[Any, ...]:
    """Channel, platform, then newest version first ("" and non-PEP 440 versions last)."""
    channel, platform, version = key
    try:
        return channel, platform, 0, _Descending(Version(version))
    except InvalidVersion:
        return channel, platform, 1, version


class _Descending:
    def __init__(self, version: Version) -> None:
        self.version = version

    def __lt__(self, other: _Descending) -> bool:
        return self.version > other.version


def build_report(rows: Rows, filters: Filters, now: datetime) -> dict[str, Any]:
    """The fleet report document (``fleet report --json`` and ``GET /v1/fleet/report``)."""
    releases: dict[tuple[str, str, str], _Tally] = {}
    groups: dict[tuple[str, str, str], dict[str, _Tally]] = {}

    def tallies(channel: str, platform: str, version: str, group: str) -> tuple[_Tally, _Tally | None]:
        key = (channel, platform, version)
        release = releases.setdefault(key, _Tally())
        if not group:
            return release, None
        return release, groups.setdefault(key, {}).setdefault(group, _Tally())

    for channel, platform, version, group, kind, outcome, cause, count, downloaded, saved in rows["hourly"]:
        for tally in tallies(channel, platform, version, group):
            if tally is not None:
                tally.add(kind, outcome, cause, int(count), int(downloaded), int(saved))
    for channel, platform, version, group, bucket, count in rows["timing"]:
        for tally in tallies(channel, platform, version, group):
            if tally is not None:
                stats.merge(tally.timing, {int(bucket): int(count)})
    for channel, platform, version, group, name, n, total, squares in rows.get("metrics", ()):
        for tally in tallies(channel, platform, version, group):
            if tally is not None:
                count, summed, squared = tally.metrics.get(name, (0, 0.0, 0.0))
                tally.metrics[name] = (count + int(n), summed + float(total), squared + float(squares))
    for channel, platform, version, group, count in rows["offered"]:
        _, grouped = tallies(channel, platform, version, group)
        if grouped is not None:
            grouped.offered = int(count)
    for channel, platform, version, count in rows["offered_release"]:
        tallies(channel, platform, version, "")[0].offered = int(count)

    out = []
    for key in sorted(releases, key=_order):
        channel, platform, version = key
        entry = {"channel": channel, "platform": platform, "version": version, **releases[key].to_dict()}
        entry["groups"] = {name: tally.to_dict() for name, tally in sorted(groups.get(key, {}).items())}
        entry["comparisons"] = compare_groups(groups.get(key, {}))
        out.append(entry)
    versions = [{"channel": c, "platform": p, "version": v, "installs": int(n)}
                for c, p, v, n in sorted(rows["versions"], key=lambda r: (*_order((r[0], r[1], r[2])), r[3]))]
    return {
        "format": REPORT_FORMAT,
        "generated_at": format_time(now),
        "filters": filters.to_dict(),
        "releases": out,
        "versions": versions,
    }
