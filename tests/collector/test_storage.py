"""collector.storage on a real SQLite file and a real PostgreSQL: ingest, dedupe, aggregates equal to a
recount of the raw rows, migrations once, concurrent writers, and the fleet report's exact counts."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.formats.report import ALLOWED, Report
from pinnacle_updates.repo_tools.collector.storage import SCHEMA_VERSION, StorageError, open_storage, release_of
from pinnacle_updates.repo_tools.collector.summary import Filters
from pinnacle_updates.repo_tools.errors import RepositoryStateError
from tests.collector.conftest import make_report


def raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows straight from the database (not through the code under test)."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    conn = sqlite3.connect(url)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


COMBOS = [(k, o, c) for (k, o), causes in ALLOWED.items() for c in sorted(causes)]


def random_reports(rng: random.Random, n: int, installs: list[str]) -> list[Report]:
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for _ in range(n):
        kind, outcome, cause = rng.choice(COMBOS)
        out.append(make_report(
            install_id=rng.choice(installs), kind=kind, outcome=outcome, cause=cause,
            at=now - timedelta(seconds=rng.randrange(0, 5 * 86400)),
            channel=rng.choice(["stable", "beta"]), to_version=rng.choice(["1.1.0", "1.2.0", ""]),
            from_version=rng.choice(["1.0.0", "1.1.0"]), ab_group=rng.choice(["", "a", "b"]),
            current_version=rng.choice(["", "1.0.0", "1.1.0"]) if kind != "heartbeat" else "1.1.0",
            durations={"total": rng.uniform(0, 100)} if rng.random() < 0.8 else {},
            bytes_downloaded=rng.randrange(0, 10**6), bytes_saved=rng.randrange(0, 10**6)))
    return out


def test_ingest_and_dedupe(db_url: str) -> None:
    batch = [make_report() for _ in range(50)]
    with open_storage(db_url) as storage:
        assert storage.ingest(batch) == (50, 0)
        assert storage.ingest(batch) == (0, 50)
        assert storage.ingest([*batch[:5], make_report(), batch[0]]) == (1, 6)  # a repeat inside a batch too
        counts = storage.counts()
    assert counts["reports"] == 51
    assert raw(db_url, "SELECT SUM(reports) FROM hourly") == [(51,)]


def test_aggregates_equal_a_recount_of_the_raw_rows(db_url: str) -> None:
    rng = random.Random(19)
    installs = [f"{i:032x}" for i in range(40)]
    reports = random_reports(rng, 1500, installs)
    with open_storage(db_url) as storage:
        for start in range(0, len(reports), 200):
            storage.ingest(reports[start:start + 200] + reports[max(0, start - 30):start])  # resends included
        document = storage.fleet_report()
    hourly = raw(db_url, "SELECT channel, platform, version, ab_group, hour, kind, outcome, cause, reports, "
                         "bytes_downloaded, bytes_saved FROM hourly ORDER BY 1, 2, 3, 4, 5, 6, 7, 8")
    recount = raw(db_url, """
        SELECT channel, platform, CASE WHEN kind = 'rollback' THEN from_version ELSE to_version END AS version,
               ab_group, at - at % 3600 AS hour, kind, outcome, cause, COUNT(*), SUM(bytes_downloaded),
               SUM(bytes_saved)
        FROM reports WHERE kind != 'heartbeat' GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8""")
    assert [tuple(int(v) if isinstance(v, int) else v for v in row) for row in hourly] == \
        [tuple(int(v) if not isinstance(v, str) else v for v in row) for row in recount]
    # The whole report, recounted in Python from the reports that were sent.
    unique = list({r.report_id: r for r in reports}.values())
    assert raw(db_url, "SELECT COUNT(*) FROM reports") == [(len(unique),)]
    for entry in document["releases"]:
        mine = [r for r in unique if r.kind != "heartbeat" and (r.channel, r.platform, release_of(r))
                == (entry["channel"], entry["platform"], entry["version"])]
        installs_ = [r for r in mine if r.kind == "install"]
        assert entry["offered"] == len({r.install_id for r in mine})
        assert entry["attempted"] == len(installs_)
        assert entry["succeeded"] == sum(r.outcome == "committed" for r in installs_)
        assert entry["rolled_back"] == dict(sorted(Counter(r.cause for r in installs_
                                                           if r.outcome == "rolled_back").items()))
        assert entry["failed"] == dict(sorted(Counter(r.cause for r in installs_ if r.outcome == "failed").items()))
        assert entry["delta_fallbacks"] == sum(r.cause == "delta_fallback" for r in installs_)
        assert entry["manual_rollbacks"] == sum(r.kind == "rollback" for r in mine)
        assert entry["bytes_saved"] == sum(r.bytes_saved for r in installs_)
        assert entry["install_time"]["timed"] == sum(r.outcome == "committed" and "total" in r.durations
                                                     for r in installs_)
        for group, tally in entry["groups"].items():
            assert tally["attempted"] == sum(r.ab_group == group for r in installs_)
    latest: dict[str, Report] = {}
    for r in sorted((r for r in unique if r.current_version), key=lambda r: r.at):
        latest[r.install_id] = r
    assert sum(v["installs"] for v in document["versions"]) == len(latest)


def test_fleet_report_exact_counts_and_filters(db_url: str) -> None:
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    reports = [
        *(make_report(durations={"total": 10.0}) for _ in range(6)),
        make_report(cause="delta_fallback", durations={"total": 20.0}),
        make_report(outcome="rolled_back", cause="health_check"),
        make_report(outcome="rolled_back", cause="health_check"),
        make_report(outcome="rolled_back", cause="start"),
        make_report(outcome="failed", cause="download"),
        make_report(kind="rollback", outcome="rolled_back", cause="manual", from_version="1.1.0",
                    to_version="1.0.0"),
        make_report(kind="check", outcome="failed", cause="verify", to_version=""),
        make_report(to_version="1.2.0", ab_group="canary", at=old),
        make_report(to_version="1.2.0", ab_group="control", outcome="failed", cause="space", at=old),
        make_report(channel="beta", to_version="2.0.0"),
        make_report(kind="heartbeat", outcome="ok", to_version="", current_version="1.1.0"),
        make_report(kind="heartbeat", outcome="ok", to_version="", current_version="1.0.0"),
    ]
    with open_storage(db_url) as storage:
        storage.ingest(reports)
        doc = storage.fleet_report()
        by_key = {(r["channel"], r["version"]): r for r in doc["releases"]}
        r11 = by_key[("stable", "1.1.0")]
        assert (r11["offered"], r11["attempted"], r11["succeeded"]) == (12, 11, 7)
        assert r11["rolled_back"] == {"health_check": 2, "start": 1}
        assert (r11["failed"], r11["delta_fallbacks"], r11["manual_rollbacks"]) == ({"download": 1}, 1, 1)
        assert r11["success_rate"] == round(7 / 11, 6)
        low, high = r11["success_interval"]
        assert 0.35 < low < 7 / 11 < high < 0.86
        assert r11["install_time"]["median"] == pytest.approx(10.0, rel=0.05)
        assert r11["install_time"]["p95"] == pytest.approx(20.0, rel=0.05)
        assert by_key[("stable", "")]["checks_failed"] == {"verify": 1}
        r12 = by_key[("stable", "1.2.0")]
        assert r12["groups"]["canary"]["succeeded"] == 1 and r12["groups"]["control"]["failed"] == {"space": 1}
        assert [(v["version"], v["installs"]) for v in doc["versions"]] == [("1.1.0", 1), ("1.0.0", 1)]
        # Newest version first within a channel and platform.
        assert [r["version"] for r in doc["releases"] if r["channel"] == "stable"] == ["1.2.0", "1.1.0", ""]

        assert [r["channel"] for r in storage.fleet_report(Filters(channel="beta"))["releases"]] == ["beta"]
        assert [r["version"] for r in storage.fleet_report(Filters(version="1.2.0"))["releases"]] == ["1.2.0"]
        recent = storage.fleet_report(Filters(since=datetime.now(UTC) - timedelta(days=1)))
        assert "1.2.0" not in [r["version"] for r in recent["releases"]]


def test_versions_keep_the_latest_report_per_install(db_url: str) -> None:
    install = "ab" * 16
    now = datetime.now(UTC).replace(microsecond=0)
    newer = make_report(install_id=install, kind="heartbeat", outcome="ok", current_version="2.0.0", at=now)
    older = make_report(install_id=install, kind="heartbeat", outcome="ok", current_version="1.0.0",
                        at=now - timedelta(hours=5))
    with open_storage(db_url) as storage:
        storage.ingest([newer])
        storage.ingest([older])  # arrives later, happened earlier: does not win
        assert [(v["version"], v["installs"]) for v in storage.fleet_report()["versions"]] == [("2.0.0", 1)]


def test_concurrent_writers_count_each_report_once(db_url: str) -> None:
    reports = random_reports(random.Random(7), 600, [f"{i:032x}" for i in range(30)])
    storages = [open_storage(db_url) for _ in range(2)]  # two collectors on one database
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for _ in range(12):
                start = rng.randrange(0, 550)
                results.append(storages[worker % 2].ingest(reports[start:start + 50]))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in storages:
        s.close()
    assert not errors
    stored = raw(db_url, "SELECT COUNT(*) FROM reports")[0][0]
    assert sum(a for a, _ in results) == stored
    assert raw(db_url, "SELECT SUM(reports) FROM hourly")[0][0] == \
        raw(db_url, "SELECT COUNT(*) FROM reports WHERE kind != 'heartbeat'")[0][0]


def test_a_group_commit_counts_each_batch_on_its_own(db_url: str) -> None:
    """Batches queued behind the writer are stored in one transaction; a report id in two of them
    is new in the one written first only, and every call gets its own counts."""
    reports = random_reports(random.Random(11), 30, [f"{i:032x}" for i in range(5)])
    batches = [reports[0:10], reports[5:20], reports[0:10], reports[20:30]]
    storage = open_storage(db_url)
    results: dict[int, tuple[int, int]] = {}
    storage._writer.acquire()  # the writer is busy: every batch below queues for one group
    threads = [threading.Thread(target=lambda i=i: results.update({i: storage.ingest(batches[i])}))
               for i in range(len(batches))]
    for t in threads:
        t.start()
    while len(storage._queue) < len(batches):
        threading.Event().wait(0.01)
    storage._writer.release()
    for t in threads:
        t.join()
    storage.close()
    assert all(sum(results[i]) == len(batches[i]) for i in results)
    assert sum(a for a, _ in results.values()) == 30 == raw(db_url, "SELECT COUNT(*) FROM reports")[0][0]
    assert results[3] == (10, 0)  # disjoint from the others: all new, whoever was first
    assert raw(db_url, "SELECT SUM(reports) FROM hourly")[0][0] == \
        raw(db_url, "SELECT COUNT(*) FROM reports WHERE kind != 'heartbeat'")[0][0]


def test_migrations_run_once(db_url: str) -> None:
    for _ in range(3):
        open_storage(db_url).close()
    assert raw(db_url, "SELECT version FROM schema_version") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_newer_schema_is_refused(db_url: str) -> None:
    open_storage(db_url).close()
    if db_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    else:
        with sqlite3.connect(db_url) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(StorageError, match="has schema 99, newer than this collector's"):
        open_storage(db_url)


@pytest.mark.parametrize("url", ["/nonexistent-dir/r.sqlite", "http://example.org/x", "postgresql://u:hunter2@127.0.0.1:1/x"])
def test_unusable_databases_are_one_line(url: str) -> None:
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert "\n" not in str(info.value) and "hunter2" not in str(info.value)
    assert info.value.exit_code == RepositoryStateError.exit_code


def test_sqlite_paths_with_uri_characters(tmp_path: Path) -> None:
    """The read-only reader opens the file by URI: '?', '#' and '%' in the path stay part of the name."""
    where = tmp_path / "a?b#c%20d"
    where.mkdir()
    with open_storage(str(where / "r.sqlite")) as storage:
        storage.ingest([make_report()])
        assert storage.fleet_report()["releases"][0]["attempted"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a?b#c%20d"]
    with pytest.raises(StorageError, match="no reports database at"):
        open_storage(str(tmp_path / "missing.sqlite"), create=False)
