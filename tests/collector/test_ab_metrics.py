"""Application metrics and A/B comparisons in the collector (issue 20 item 4), with real parts: the
collector process over HTTP, SQLite and PostgreSQL storage, ``pinnacle-release fleet report`` as a user
runs it.

* The wire format's ``metrics``: bad names and values are a one-line 400 and store nothing.
* Storage: the per group/release metric aggregates equal a recount of the reports sent; a database
  made by the previous schema (2) is migrated and its old reports still count.
* Comparisons: ten reports per group never name a winner, however different; a clear difference over
  hundreds of real reports per group does (success rate, install time, a metric), and two groups drawn
  from one distribution do not.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.formats.report import FormatError, Report, encode_batch, encode_batches
from pinnacle_updates.repo_tools.collector.storage import MIGRATIONS, SCHEMA_VERSION, open_storage
from pinnacle_updates.repo_tools.collector.summary import MIN_GROUP
from tests.collector.conftest import make_report
from tests.collector.test_storage import raw
from tests.conftest import run_cli


def body_with(metrics: Any) -> bytes:
    doc = json.loads(encode_batch([make_report()]))
    doc["reports"][0]["metrics"] = metrics
    return json.dumps(doc).encode()


BAD_METRICS = [
    ({"Startup": 1}, "reports[0]: report field metrics: name 'Startup' is not like ^[a-z][a-z0-9_.]{0,47}$"),
    ({"a" * 49: 1}, "is not like"),
    ({"ok": True}, "report field metrics.ok: expected a number, not a boolean"),
    ({"ok": "12"}, "report field metrics.ok: expected a number, not a string"),
    ({"ok": None}, "report field metrics.ok: expected a number, not null"),
    ({"ok": 1e16}, "report field metrics.ok: 1e+16 is not a finite number within +-1e+15"),
    ({f"m{i}": i for i in range(17)}, "report field metrics: 17 metrics, at most 16"),
    ([1, 2], "report field metrics: expected an object, not an array"),
    ("startup=1", "report field metrics: expected an object, not a string"),
]


def test_bad_metrics_are_a_one_line_400_and_store_nothing(tmp_path: Path, collector_factory: Any) -> None:
    collector = collector_factory(str(tmp_path / "reports.sqlite"))
    for metrics, words in BAD_METRICS:
        answer = collector.post(body_with(metrics))
        assert answer.status_code == 400, (metrics, answer.text)
        error = answer.json()["error"]
        assert words in error and "\n" not in error, (metrics, error)
    for text in (b'{"ok": NaN}', b'{"ok": Infinity}'):  # not JSON: refused by the parser, one line
        answer = collector.post(body_with({}).replace(b'"metrics": {}', b'"metrics": ' + text))
        assert answer.status_code == 400 and "\n" not in answer.json()["error"], answer.text
    good = collector.post(body_with({"startup_ms": 120.5, "mem.rss_mb": 64}))
    assert good.status_code == 200 and good.json() == {"accepted": 1, "duplicates": 0}
    entry = collector.report().json()["releases"][0]
    assert entry["attempted"] == 1
    assert entry["metrics"] == {"mem.rss_mb": {"n": 1, "mean": 64.0, "sd": None},
                                "startup_ms": {"n": 1, "mean": 120.5, "sd": None}}
    # a report without the field is what every client before it sends, and a round trip keeps it absent
    plain = make_report()
    assert "metrics" not in plain.to_dict() and Report.from_dict(plain.to_dict()) == plain
    with pytest.raises(FormatError, match="17 metrics, at most 16"):
        make_report(metrics={f"m{i}": 1 for i in range(17)})


# ----- storage ------------------------------------------------------------------------------------------
def metric_reports(rng: random.Random, n: int) -> list[Report]:
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for _ in range(n):
        kind = rng.choice(["install", "heartbeat", "heartbeat", "check"])
        version = rng.choice(["1.1.0", "1.2.0"])
        fields: dict[str, Any] = {"kind": kind, "ab_group": rng.choice(["", "a", "b"]), "current_version": version,
                                  "at": now - timedelta(seconds=rng.randrange(0, 3 * 86400))}
        if kind == "heartbeat":
            fields.update(outcome="ok", from_version="", to_version="", durations={}, bytes_downloaded=0,
                          bytes_saved=0)
        elif kind == "check":
            fields.update(outcome="failed", cause="download", from_version="", to_version="", durations={})
        else:
            fields.update(to_version=version)
        names = rng.sample(["startup_ms", "errors", "mem.mb"], rng.randrange(0, 4))
        fields["metrics"] = {m: round(rng.gauss(100, 30), 3) for m in names}
        out.append(make_report(**fields))
    return out


def test_metric_aggregates_equal_a_recount(db_url: str) -> None:
    rng = random.Random(2020)
    reports = metric_reports(rng, 900)
    with open_storage(db_url) as storage:
        for start in range(0, len(reports), 150):
            storage.ingest(reports[start:start + 150] + reports[max(0, start - 20):start])  # resends too
        document = storage.fleet_report()
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in reports:
        for name, v in r.metrics.items():
            values[(r.current_version, "", name)].append(v)
            if r.ab_group:
                values[(r.current_version, r.ab_group, name)].append(v)
    assert raw(db_url, "SELECT SUM(n) FROM hourly_metrics")[0][0] == sum(len(r.metrics) for r in reports)
    stored = raw(db_url, "SELECT metrics FROM reports WHERE metrics != ''")
    assert len(stored) == sum(1 for r in reports if r.metrics)
    seen = 0
    for entry in document["releases"]:
        for group, tally in [("", entry), *entry["groups"].items()]:
            for name, summary in tally["metrics"].items():
                expected = values[(entry["version"], group, name)]
                mean = sum(expected) / len(expected)
                sd = math.sqrt(sum((v - mean) ** 2 for v in expected) / (len(expected) - 1))
                assert summary["n"] == len(expected)
                assert summary["mean"] == pytest.approx(mean, abs=1e-6)
                assert summary["sd"] == pytest.approx(sd, rel=1e-6)
                seen += 1
    assert seen == len(values)


def test_a_schema_2_database_is_migrated_and_its_reports_still_count(db_url: str) -> None:
    """What a collector of the previous release left: migrations 1 and 2 and reports without metrics."""
    statements = [s.replace("{without_rowid}", " WITHOUT ROWID" if not db_url.startswith("postgresql") else "")
                  for migration in MIGRATIONS[:2] for s in migration]
    old = make_report()
    row = (old.report_id, old.install_id, int(old.at.timestamp()), 0, "install", "committed", "", "", "stable",
           "linux-x86_64", "1.0.0", "1.1.0", "minor", 17, "", 1.0, None, None, 4.0, 1000, 4000, "0.1.0", "")
    script = [*((sql, ()) for sql in statements),
              ("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)", ()),
              ("INSERT INTO schema_version VALUES (1, 0), (2, 0)", ()),
              (f"INSERT INTO reports VALUES ({', '.join('?' * len(row))})", row)]
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db_url) as pg:
            for sql, params in script:
                pg.execute(sql.replace("?", "%s"), params)
    else:
        conn = sqlite3.connect(db_url)
        with conn:
            for sql, params in script:
                conn.execute(sql, params)
        conn.close()
    with open_storage(db_url) as storage:
        assert storage.ingest([old, make_report(metrics={"startup_ms": 80.0}, current_version="1.1.0")]) == (1, 1)
        entry = storage.fleet_report()["releases"][0]
    assert raw(db_url, "SELECT version FROM schema_version ORDER BY version") == \
        [(v,) for v in range(1, SCHEMA_VERSION + 1)] and SCHEMA_VERSION == 3
    assert raw(db_url, f"SELECT metrics FROM reports WHERE report_id = '{old.report_id}'") == [("",)]
    assert entry["metrics"] == {"startup_ms": {"n": 1, "mean": 80.0, "sd": None}}


# ----- comparisons through the real collector -----------------------------------------------------------
def group_reports(rng: random.Random, group: str, n: int, success: float, seconds: float, startup: float,
                  version: str = "1.1.0") -> list[Report]:
    out = []
    for _ in range(n):
        if rng.random() < success:
            out.append(make_report(ab_group=group, to_version=version, current_version=version,
                                   durations={"total": max(0.5, rng.gauss(seconds, seconds / 5))},
                                   metrics={"startup_ms": round(rng.gauss(startup, 25.0), 3)},
                                   install_id=secrets.token_hex(16)))
        else:
            out.append(make_report(ab_group=group, to_version=version, outcome="rolled_back", cause="health_check",
                                   durations={}, current_version="1.0.0"))
    return out


def send(collector: Any, reports: list[Report]) -> None:
    for count, body in encode_batches(reports):
        answer = collector.post(body)
        assert answer.status_code == 200 and answer.json()["accepted"] == count, answer.text


def comparisons(document: dict[str, Any], version: str) -> dict[str, dict[str, Any]]:
    entry = next(r for r in document["releases"] if r["version"] == version)
    return {c["metric"]: c for c in entry["comparisons"]}


def test_ten_reports_per_group_never_name_a_winner(tmp_path: Path, collector_factory: Any) -> None:
    db = str(tmp_path / "reports.sqlite")
    collector = collector_factory(db)
    rng = random.Random(10)
    # as different as ten reports can be: all succeed and start in 100 ms, or half fail and start in 400 ms
    send(collector, group_reports(rng, "control", 10, 1.0, 4.0, 100.0)
         + group_reports(rng, "new", 10, 0.5, 40.0, 400.0))
    token_file = tmp_path / "c0" / "collector.token"
    out = run_cli("pinnacle-release", "fleet", "report", "--collector", collector.url, "--token-file",
                  str(token_file), "--json")
    found = comparisons(json.loads(out.stdout), "1.1.0")
    assert set(found) == {"success_rate", "install_time", "startup_ms"}
    for c in found.values():
        assert c["winner"] is None and c["reason"].startswith("not enough data"), c
        assert c["groups"] == ["new", "control"] and min(c["n"]) < MIN_GROUP
    assert found["success_rate"]["n"] == [10, 10] and found["success_rate"]["difference"] < 0
    text = run_cli("pinnacle-release", "fleet", "report", "--db", db).stdout
    lines = [line for line in text.splitlines() if line.startswith("stable/linux-x86_64/1.1.0: ")]
    assert len(lines) == 3 and all("not enough data" in line for line in lines), text
    assert "A/B GROUPS" in text and " is better" not in text and " is higher" not in text


def test_a_clear_difference_over_enough_reports_names_the_winner(tmp_path: Path, collector_factory: Any) -> None:
    db = str(tmp_path / "reports.sqlite")
    collector = collector_factory(db)
    rng = random.Random(20)
    reports = (group_reports(rng, "control", 400, 0.98, 4.0, 200.0)
               + group_reports(rng, "new", 400, 0.80, 8.0, 150.0)
               # 1.2.0: two groups from one distribution
               + group_reports(rng, "a", 300, 0.95, 5.0, 180.0, "1.2.0")
               + group_reports(rng, "b", 300, 0.95, 5.0, 180.0, "1.2.0"))
    rng.shuffle(reports)
    send(collector, reports)
    document = collector.report().json()
    found = comparisons(document, "1.1.0")
    assert found["success_rate"]["winner"] == "control" and found["success_rate"]["interval"][1] < 0
    assert found["install_time"]["winner"] == "control" and found["install_time"]["interval"][0] > 0  # new slower
    assert found["startup_ms"]["winner"] == "control" and found["startup_ms"]["direction"] == "higher"
    low, high = found["startup_ms"]["interval"]
    assert low < -50 < high < 0  # the true difference, new - control, is inside
    same = comparisons(document, "1.2.0")
    assert set(same) == {"success_rate", "install_time", "startup_ms"}
    for c in same.values():
        assert c["winner"] is None and c["reason"] == "not enough data (the interval holds 0)", c
        assert c["groups"] == ["b", "a"] and min(c["n"]) >= MIN_GROUP
    text = run_cli("pinnacle-release", "fleet", "report", "--db", db).stdout
    assert "stable/linux-x86_64/1.1.0: success_rate new - control: -" in text
    assert "control is better" in text and "control is higher" in text
    assert sum("1.2.0: " in line and "not enough data (the interval holds 0)" in line
               for line in text.splitlines()) == 3
