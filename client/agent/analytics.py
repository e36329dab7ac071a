"""Update analytics computed from ``history.jsonl`` records. Pure: records in, numbers out.

The history log is the single source of truth (the installer appends a record for every
install, repair, rollback, check, verify and recovery), so analytics never keep state of their
own and agree with ``pinnacle-update history`` by construction.

How records are read:

* an **update** is an ``install`` or ``repair`` record (``outcome`` ``committed`` or ``failed``)
  or an *automatic* rollback: a new version that failed after the swap leaves no failed install
  record, only a ``rollback`` record whose ``reason`` is the failure. Manual rollbacks (their
  reason starts with ``manual rollback``) are rollbacks, not failed updates.
* ``bytes_downloaded`` sums the ``bytes`` of update records; ``bytes_saved`` sums the
  ``bytes_saved`` field that delta installs add (missing counts as 0).
* records that are not dicts of the expected types are skipped, never fatal: the log is
  append-only and may hold records of older or newer formats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

UPDATE_OPS = ("install", "repair")
MANUAL_ROLLBACK_PREFIX = "manual rollback"


@dataclass(frozen=True)
class UpdatePoint:
    """One update attempt, for plots."""

    ts: str
    version: str | None
    from_version: str | None
    outcome: str
    duration: float | None
    bytes: int
    bytes_saved: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "version": self.version,
            "from_version": self.from_version,
            "outcome": self.outcome,
            "duration": self.duration,
            "bytes": self.bytes,
            "bytes_saved": self.bytes_saved,
        }


@dataclass(frozen=True)
class DayCount:
    """Updates, failures and rollbacks of one UTC day (``YYYY-MM-DD``)."""

    day: str
    updates: int = 0
    failures: int = 0
    rollbacks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "updates": self.updates, "failures": self.failures, "rollbacks": self.rollbacks}


@dataclass(frozen=True)
class Analytics:
    """The seed's figures plus rollbacks and byte counts, and the series the dashboard plots."""

    total_updates: int = 0
    successful_updates: int = 0
    failed_updates: int = 0
    average_install_time: float | None = None
    most_common_failure: str | None = None
    last_update_date: str | None = None
    rollbacks: int = 0
    bytes_downloaded: int = 0
    bytes_saved: int = 0
    updates: tuple[UpdatePoint, ...] = ()
    per_day: tuple[DayCount, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_updates": self.total_updates,
            "successful_updates": self.successful_updates,
            "failed_updates": self.failed_updates,
            "average_install_time": self.average_install_time,
            "most_common_failure": self.most_common_failure,
            "last_update_date": self.last_update_date,
            "rollbacks": self.rollbacks,
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_saved": self.bytes_saved,
            "series": {
                "updates": [p.to_dict() for p in self.updates],
                "per_day": [d.to_dict() for d in self.per_day],
            },
        }


def compute(records: Iterable[Mapping[str, Any]]) -> Analytics:
    """Analytics of ``records`` (oldest first, as ``client.history.read`` returns them)."""
    points: list[UpdatePoint] = []
    failures: Counter[str] = Counter()
    last_failure_at: dict[str, int] = {}
    days: dict[str, dict[str, int]] = {}
    rollbacks = 0
    for rec in records:
        if not isinstance(rec, Mapping):
            continue
        op = rec.get("op")
        ts = _text(rec.get("ts")) or ""
        day = days.setdefault(ts[:10], {"updates": 0, "failures": 0, "rollbacks": 0}) if ts else None
        if op == "rollback":
            rollbacks += 1
            if day is not None:
                day["rollbacks"] += 1
            reason = _text(rec.get("reason")) or ""
            if reason.startswith(MANUAL_ROLLBACK_PREFIX):
                continue
            point = UpdatePoint(
                ts, _text(rec.get("from_version")), _text(rec.get("version")), "rolled_back", None, 0, 0
            )
        elif op in UPDATE_OPS and rec.get("outcome") in ("committed", "failed"):
            point = UpdatePoint(
                ts,
                _text(rec.get("version")),
                _text(rec.get("from_version")),
                str(rec.get("outcome")),
                _number(rec.get("duration")),
                _count(rec.get("bytes")),
                _count(rec.get("bytes_saved")),
            )
            reason = _text(rec.get("reason")) or ""
        else:
            continue
        points.append(point)
        if day is not None:
            day["updates"] += 1
        if point.outcome != "committed":
            if day is not None:
                day["failures"] += 1
            key = reason or "unknown"
            failures[key] += 1
            last_failure_at[key] = len(points)
    committed = [p for p in points if p.outcome == "committed"]
    durations = [p.duration for p in committed if p.duration is not None]
    most_common = None
    if failures:
        # ties: the failure seen most recently
        most_common = max(failures, key=lambda k: (failures[k], last_failure_at[k]))
    return Analytics(
        total_updates=len(points),
        successful_updates=len(committed),
        failed_updates=len(points) - len(committed),
        average_install_time=round(sum(durations) / len(durations), 3) if durations else None,
        most_common_failure=most_common,
        last_update_date=next((p.ts for p in reversed(committed) if p.ts), None),
        rollbacks=rollbacks,
        bytes_downloaded=sum(p.bytes for p in points),
        bytes_saved=sum(p.bytes_saved for p in points),
        updates=tuple(points),
        per_day=tuple(DayCount(d, **counts) for d, counts in sorted(days.items()) if any(counts.values())),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value
