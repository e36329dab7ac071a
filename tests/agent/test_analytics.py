"""Analytics from history records (pure), and against a history written by real installs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client.agent.analytics import compute
from pinnacle_updates.client.errors import HealthCheckError
from pinnacle_updates.client.history import read
from tests.helpers_client import app_files, init_client, make_repo, publish


def _install(ts: str, version: str, outcome: str = "committed", **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "op": "install", "version": version, "outcome": outcome, **extra}


def test_empty_history() -> None:
    a = compute([]).to_dict()
    assert a["total_updates"] == 0 and a["average_install_time"] is None and a["most_common_failure"] is None
    assert a["last_update_date"] is None and a["series"] == {"updates": [], "per_day": []}


def test_counts_failures_rollbacks_bytes_and_series() -> None:
    records = [
        {"ts": "2026-11-01T10:00:00Z", "op": "check", "bytes": 999},  # checks are not updates
        _install("2026-11-01T10:01:00Z", "1.0.0", duration=2.0, bytes=1000),
        _install("2026-11-02T09:00:00Z", "1.1.0", "failed", reason="disk full", duration=0.5),
        # an update that failed its health check: only the automatic rollback record exists
        {"ts": "2026-11-02T09:05:00Z", "op": "rollback", "from_version": "1.1.0", "version": "1.0.0",
         "reason": "health check failed: exit 1", "outcome": "rolled_back", "bad_version": "1.1.0"},
        _install("2026-11-03T08:00:00Z", "1.2.0", "failed", reason="disk full"),
        {"ts": "2026-11-03T08:10:00Z", "op": "repair", "version": "1.0.0", "outcome": "committed",
         "duration": 4.0, "bytes": 500, "bytes_saved": 1500},
        _install("2026-11-04T08:00:00Z", "1.3.0", duration=3.0, bytes=200, bytes_saved=800),
        {"ts": "2026-11-04T09:00:00Z", "op": "rollback", "from_version": "1.3.0", "version": "1.0.0",
         "reason": "manual rollback via the agent API", "outcome": "rolled_back"},
        "not a record",  # type: ignore[list-item]
        {"op": "install", "outcome": "committed", "version": "9", "bytes": -5, "duration": "slow"},
    ]
    a = compute(records)  # type: ignore[arg-type]
    assert (a.total_updates, a.successful_updates, a.failed_updates) == (7, 4, 3)
    assert a.rollbacks == 2
    assert a.average_install_time == 3.0  # (2 + 4 + 3) / 3: the record with no number is not averaged
    assert a.most_common_failure == "disk full"
    assert a.last_update_date == "2026-11-04T08:00:00Z"  # the last committed record has no time: skipped
    assert a.bytes_downloaded == 1700 and a.bytes_saved == 2300
    days = {d.day: (d.updates, d.failures, d.rollbacks) for d in a.per_day}
    assert days == {"2026-11-01": (1, 0, 0), "2026-11-02": (2, 2, 1), "2026-11-03": (2, 1, 0),
                    "2026-11-04": (1, 0, 1)}
    outcomes = [p.outcome for p in a.updates]
    assert outcomes == ["committed", "failed", "rolled_back", "failed", "committed", "committed", "committed"]


def test_most_common_failure_ties_go_to_the_latest_and_last_update_date() -> None:
    records = [
        _install("2026-11-01T00:00:00Z", "1", "failed", reason="a"),
        _install("2026-11-02T00:00:00Z", "2", "failed", reason="b"),
        _install("2026-11-03T00:00:00Z", "3"),
    ]
    a = compute(records)
    assert a.most_common_failure == "b"
    assert a.last_update_date == "2026-11-03T00:00:00Z"


def test_from_a_history_written_by_real_installs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    publish(repo, "1.0.0", app_files("1.0.0"))
    publish(repo, "1.0.1", app_files("1.0.1", healthy=False))  # fails its health check: rolled back
    installer = init_client(tmp_path / "inst", str(repo.dir), repo)
    installer.install("1.0.0")
    with pytest.raises(HealthCheckError, match="rolled back"):
        installer.install("1.0.1")
    a = compute(read(installer.layout.history))
    assert (a.total_updates, a.successful_updates, a.failed_updates, a.rollbacks) == (2, 1, 1, 1)
    assert a.most_common_failure is not None and "health check failed" in a.most_common_failure
    assert a.bytes_downloaded > 0 and a.average_install_time is not None and a.average_install_time > 0
