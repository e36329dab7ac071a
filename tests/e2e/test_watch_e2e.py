"""Issue 20's acceptance end to end, real parts only: a repository published with the ``pinnacle-release``
CLI and served by the suite's HTTP server (nginx), a real collector process on SQLite named in the
channel's signed index, ``pinnacle-release watch --once`` run as a process after each round, and real
install directories on the unattended path (the continuous loop of the Python API) sending their
reports in the background.

* A release whose health check fails on a share of the clients that took it is halted and, with
  ``--auto-yank``, yanked: the client that had committed it returns to the last good release with its
  data restored (the release's migration had changed it), and no other client installs it.
* A healthy release advances through its gates to 100 % and every client takes it.
* Fake reports posted straight to the collector: failures halt a rollout (a person resumes it), a few
  install ids posting successes never advance it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinnacle_updates.client import AutoUpdater, reporting
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats.report import Report, encode_batch
from pinnacle_updates.formats.rollout import bucket
from tests.collector.conftest import start_collector, stop
from tests.conftest import run_cli
from tests.helpers_client import Repo, app_files, init_client, make_repo, publish, release_cli, serve, write_tree

MIGRATE = "#!/bin/sh\necho 'rewritten by 1.1.0' >> db/notes.txt\n"
NOTES = "note 1\nnote 2\n"
WATCH = ("--min-installs", "2", "--min-clients-per-step", "1", "--max-failure-rate", "0.02")


def _ids() -> list[str]:
    """Six client ids: three inside the first 50 % of 1.1.0, three outside; for 1.2.0 two in each third."""
    wanted = [(k < 3, k % 3) for k in range(6)]
    found: list[str] = []
    i = 0
    while len(found) < 6:
        cid = f"{i:032x}"
        i += 1
        key = (bucket(cid, "stable", "1.1.0") < 50, min(2, int(bucket(cid, "stable", "1.2.0") // (100 / 3))))
        if key == wanted[len(found)]:
            found.append(cid)
    return found


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Repo, str, str, str, list[Installer]]]:
    """A served repository with 1.0.0, its collector, and six clients on 1.0.0 with data."""
    repo = make_repo(tmp_path / "pub")
    publish(repo, "1.0.0", app_files("1.0.0"))
    database = str(tmp_path / "reports.sqlite")
    proc, collector = start_collector(database, tmp_path / "collector")
    try:
        release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                    "--collector-url", collector)
        with serve(repo.dir) as url:
            clients = []
            for n, cid in enumerate(_ids()):
                ins = init_client(tmp_path / f"client{n}", url, repo, persistent_paths=["db"])
                values = {**config_mod.load(ins.layout.root).values, "client_id": cid}
                config_mod.write(ins.layout.root, config_mod.validate(values))  # which side of each step it lands
                assert ins.install().outcome == "committed"
                write_tree(ins.layout.root / "data" / "db", {"notes.txt": NOTES})
                clients.append(ins)
            yield repo, url, database, collector, clients
    finally:
        stop(proc)


def _round(clients: list[Installer]) -> None:
    """Every client's unattended round, then every report delivered."""
    for ins in clients:
        asyncio.run(AutoUpdater(ins.layout.root).run_continuous_updates(iterations=1))
    assert reporting.wait(60)
    for ins in clients:
        done = reporting.flush(ins.layout.root, 30, force=True)
        assert (done.error, done.left) == ("", 0), done


def _watch(repo: Repo, database: str, *extra: str) -> dict[str, Any]:
    out = run_cli("pinnacle-release", "watch", str(repo.dir), "--keys", str(repo.keys), "--db", database, "--once",
                  "--json", *WATCH, *extra)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _signed(repo: Repo, version: str) -> dict[str, Any]:
    """The release's fleet fields as ``status --json`` reads them from the signed index."""
    status = json.loads(release_cli("status", str(repo.dir), "--json"))
    return next(r for r in status["channels"]["stable"] if r["version"] == version)  # type: ignore[no-any-return]


def _versions(clients: list[Installer]) -> list[str]:
    return [str(ins.status()["version"]) for ins in clients]


def _gated(tmp_path: Path, percents: list[int]) -> Path:
    path = tmp_path / f"gated-{'-'.join(map(str, percents))}.json"
    path.write_text(json.dumps({"type": "waves", "gate": True,
                                "waves": [{"after": i, "percent": p} for i, p in enumerate(percents)]}))
    return path


def _publish_gated(repo: Repo, version: str, files: dict[str, str | bytes], schedule: Path, *extra: str) -> None:
    src = repo.dir.parent / f"src-{version}"
    write_tree(src, files)
    release_cli("publish", str(repo.dir), str(src), "--keys", str(repo.keys), "--channel", "stable", "--version",
                version, "--type", "patch", "--platform", "any", "--rollout", str(schedule), *extra)


def test_a_failing_release_is_yanked_and_a_healthy_one_advances_through_its_gates(
        fleet: tuple[Repo, str, str, str, list[Installer]], tmp_path: Path) -> None:
    repo, url, database, _, clients = fleet
    # 1.1.0 rewrites the data in its migration; its health check fails on two of the three clients that take it
    for ins in clients[:2]:
        config_mod.set_value(ins.layout.root, "health_command", "false")
    _publish_gated(repo, "1.1.0", {**app_files("1.1.0"), "bin/migrate": MIGRATE}, _gated(tmp_path, [50, 100]),
                   "--migration", "bin/migrate")
    _round(clients)
    assert _versions(clients) == ["1.0.0", "1.0.0", "1.1.0", "1.0.0", "1.0.0", "1.0.0"]
    assert "rewritten by 1.1.0" in (clients[2].layout.root / "data" / "db" / "notes.txt").read_text()

    look = _watch(repo, database, "--auto-yank")
    (verdict,) = [r for r in look["releases"] if r["version"] == "1.1.0"]
    assert (verdict["action"], verdict["applied"]) == ("yank", "yanked")
    release = next(e for e in verdict["evidence"] if e["class"] == "release")
    assert (release["trials"], release["failures"], release["by_cause"]) == (3, 2, {"health_check": 2})
    assert "halted automatically by pinnacle-release watch" in json.dumps(_signed(repo, "1.1.0"))

    _round(clients)  # the client on 1.1.0 leaves it with its data; nobody else installs it
    assert _versions(clients) == ["1.0.0"] * 6
    assert (clients[2].layout.root / "data" / "db" / "notes.txt").read_text() == NOTES
    late = init_client(tmp_path / "late", url, repo)
    assert late.install().version == "1.0.0"

    # a healthy 1.2.0 behind gates 34 % -> 67 % -> 100 %: each look approves the next step once the
    # clients of the step reported
    for ins in clients[:2]:
        config_mod.set_value(ins.layout.root, "health_command", "test -f healthy")
    _publish_gated(repo, "1.2.0", app_files("1.2.0"), _gated(tmp_path, [34, 67, 100]))
    taken: list[int] = []
    actions: list[str] = []
    reasons: list[str] = []
    for _ in range(6):
        _round(clients)
        taken.append(_versions(clients).count("1.2.0"))
        look = _watch(repo, database)
        mine = [r for r in look["releases"] if r["version"] == "1.2.0"]
        actions += [r["action"] for r in mine]
        reasons += [str(r.get("reason", "")) for r in mine]
        if taken[-1] == 6:
            break
    # each approved step brings its share of the clients: 2, then 4, then all 6. On a loaded machine a
    # look may come before the next step is due by the timetable ("none"): it then waits a look, never skips
    assert [n for i, n in enumerate(taken) if i == 0 or n != taken[i - 1]] == [2, 4, 6], (taken, actions, reasons)
    assert [a for a in actions if a != "none"][:2] == ["advance", "advance"], (actions, reasons)
    assert "halt" not in actions and "yank" not in actions, (actions, reasons)
    assert _signed(repo, "1.2.0")["rollout"]["approved_step"] == 2
    report = json.loads(run_cli("pinnacle-release", "fleet", "report", "--db", database, "--repo", str(repo.dir),
                                "--json").stdout)
    assert {r["version"]: r["succeeded"] for r in report["releases"]}["1.2.0"] == 6
    assert [(d["version"], d["action"], d["status"]) for d in report["decisions"]] == [
        ("1.1.0", "yank", "applied"), ("1.2.0", "advance", "applied"), ("1.2.0", "advance", "applied")]
    assert report["decisions"][0]["evidence"]["evidence"][0]["class"] == "release"
    assert (repo.dir / ".pinnacle" / "decisions.jsonl").is_file()
    assert httpx.get(f"{url}.pinnacle/decisions.jsonl", timeout=10).status_code == 404  # the audit log is not served
    text = run_cli("pinnacle-release", "fleet", "report", "--db", database, "--repo", str(repo.dir)).stdout
    assert "stable/any/1.1.0  yank      applied" in text and "likelihood ratio" in text


def _fake(collector: str, install_ids: list[str], outcome: str, repeat: int = 1) -> None:
    cause = "health_check" if outcome == "rolled_back" else ""
    reports = [Report(report_id=secrets.token_hex(16), install_id=iid, at=datetime.now(UTC).replace(microsecond=0),
                      kind="install", outcome=outcome, cause=cause, channel="stable", platform="any",
                      from_version="1.0.0", to_version="1.1.0", update_type="patch", bucket=1, client_version="x")
               for iid in install_ids for _ in range(repeat)]
    for start in range(0, len(reports), 400):
        r = httpx.post(f"{collector}/v1/reports", content=encode_batch(reports[start:start + 400]),
                       headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text


def test_fake_reports_can_halt_but_never_advance(fleet: tuple[Repo, str, str, str, list[Installer]],
                                                 tmp_path: Path) -> None:
    repo, _, database, collector, _ = fleet
    _publish_gated(repo, "1.1.0", app_files("1.1.0"), _gated(tmp_path, [10, 100]))
    published = time.monotonic()
    # two install ids claim 300 successes each: the due step still waits for install ids
    _fake(collector, [secrets.token_hex(16) for _ in range(2)], "committed", repeat=300)
    time.sleep(max(0.0, published + 1.5 - time.monotonic()))  # the timetable's second step (after 1 s) is due
    look = _watch(repo, database, "--min-clients-per-step", "20")
    (verdict,) = look["releases"]
    assert (verdict["action"], verdict["hold"], verdict["applied"]) == ("hold", "clients", "")
    assert _signed(repo, "1.1.0")["rollout"]["approved_step"] == 0
    # fake failures from made-up install ids: halted (the safe direction)
    _fake(collector, [secrets.token_hex(16) for _ in range(8)], "rolled_back")
    look = _watch(repo, database, "--min-clients-per-step", "20")
    assert [(r["action"], r["applied"]) for r in look["releases"]] == [("halt", "paused at 10%")]
    assert _signed(repo, "1.1.0")["rollout"]["state"] == "paused"
    # a person looks, decides the reports were fake and resumes; the halt stays in the audit trail
    release_cli("rollout", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", "1.1.0",
                "--resume")
    assert _signed(repo, "1.1.0")["rollout"]["state"] == "active"
    assert run_cli("pinnacle-release", "verify", str(repo.dir)).returncode == 0
