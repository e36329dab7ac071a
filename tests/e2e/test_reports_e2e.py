"""Fleet feedback end to end with real parts only: a repository published with the ``pinnacle-release``
CLI and served by the suite's HTTP server, the channel's collector named in its signed index
(``feedback set``, with an ingest key), a real ``pinnacle-release collector serve`` process on SQLite
and on PostgreSQL, and 20 install directories that update from 1.0.0 to 1.1.0 with some health checks
failing, some installs refused by their pre_install hook and some manual rollbacks. Their background
senders deliver every report; ``pinnacle-release fleet report --json`` then shows the exact counts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import reporting
from pinnacle_updates.client.errors import HealthCheckError, InstallError
from tests.client.test_reporting import free_port
from tests.collector.conftest import pg_server, start_collector, stop  # noqa: F401 - pg_server: the fixture
from tests.conftest import run_cli
from tests.helpers_client import Repo, app_files, init_client, make_repo, publish, release_cli, serve

CLIENTS = 20
KEY = "e2e-ingest-key-3c1f"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repo, str]]:
    repo = make_repo(tmp_path_factory.mktemp("repo"))
    publish(repo, "1.0.0", app_files("1.0.0"))
    with serve(repo.dir) as url:
        yield repo, url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "reports.sqlite")
    server = request.getfixturevalue("pg_server")
    return str(server.create_database(f"e2e_{secrets.token_hex(6)}"))


def test_twenty_clients_report_exact_counts(served: tuple[Repo, str], database: str, tmp_path: Path) -> None:
    repo, url = served
    key_file = tmp_path / "ingest.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)  # the collector refuses a key file others can read
    proc, collector_url = start_collector(database, tmp_path / "collector", "--ingest-key-file", str(key_file))
    try:
        release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                    "--collector-url", collector_url, "--ingest-key-file", str(key_file))
        clients = [init_client(tmp_path / f"client{i:02d}", url, repo) for i in range(CLIENTS)]
        for ins in clients:
            assert ins.install("1.0.0").outcome == "committed"
        if not (repo.dir.parent / "src-stable-1.1.0").exists():  # the module's repository: publish once
            publish(repo, "1.1.0", app_files("1.1.0"))
        outcomes: dict[str, int] = {}
        for i, ins in enumerate(clients):
            if i % 5 == 0:  # the new version is unhealthy on these machines
                config_mod.set_value(ins.layout.root, "health_command", "false")
            if i % 5 == 1:  # refused before the swap
                config_mod.set_value(ins.layout.root, "pre_install", "false")
            try:
                outcome = ins.install("1.1.0").outcome
            except HealthCheckError:
                outcome = "rolled_back"
            except InstallError:
                outcome = "failed"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "committed" and i in (2, 7):
                ins.rollback()
        assert outcomes == {"committed": 12, "rolled_back": 4, "failed": 4}
        assert reporting.wait(60)
        for ins in clients:  # whatever a background sender left (a 429, a slow database) goes now
            done = reporting.flush(ins.layout.root, 30, force=True)
            assert (done.error, done.left) == ("", 0), done
        document = json.loads(run_cli("pinnacle-release", "fleet", "report", "--db", database, "--json").stdout)
    finally:
        stop(proc)
    releases = {r["version"]: r for r in document["releases"]}
    assert set(releases) == {"1.0.0", "1.1.0"}
    new, old = releases["1.1.0"], releases["1.0.0"]
    assert _counts(new) == {"offered": 20, "attempted": 20, "succeeded": 12, "rolled_back": {"health_check": 4},
                            "failed": {"other": 4}, "manual_rollbacks": 2, "delta_fallbacks": 0,
                            "checks_failed": {}}
    assert _counts(old) == {"offered": 20, "attempted": 20, "succeeded": 20, "rolled_back": {}, "failed": {},
                            "manual_rollbacks": 0, "delta_fallbacks": 0, "checks_failed": {}}
    assert new["success_rate"] == 0.6 and new["success_interval"][0] < 0.6 < new["success_interval"][1]
    assert old["install_time"]["timed"] == 20 and old["install_time"]["median"] > 0
    assert {(v["version"], v["installs"]) for v in document["versions"]} == {("1.1.0", 10), ("1.0.0", 10)}
    assert all(r["channel"] == "stable" and r["platform"] == "any" for r in document["releases"])


def test_offline_client_delivers_its_spool_exactly_once_to_the_real_collector(
        served: tuple[Repo, str], tmp_path: Path) -> None:
    """The channel names a collector that is not running: a client updates twice and rolls back by
    hand, keeping its reports. The collector starts on that address: one flush stores them all; the
    same reports sent again (a lost answer) are duplicates and the counts do not move."""
    repo, url = served
    port = free_port()
    release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                "--collector-url", f"http://127.0.0.1:{port}")
    if not (repo.dir.parent / "src-stable-1.1.0").exists():
        publish(repo, "1.1.0", app_files("1.1.0"))
    ins = init_client(tmp_path / "client", url, repo)
    assert ins.install("1.0.0").outcome == "committed" and ins.install("1.1.0").outcome == "committed"
    ins.rollback()
    assert reporting.wait(30)
    spooled = {p.name: p.read_bytes() for p in reporting.Reports(ins.layout.root).spool.iterdir()}
    assert len(spooled) == 4  # heartbeat, two installs, the manual rollback
    database = str(tmp_path / "reports.sqlite")
    proc, _ = start_collector(database, tmp_path / "collector", "--port", str(port))
    try:
        first = reporting.flush(ins.layout.root, 30, force=True)
        assert (first.sent, first.accepted, first.duplicates, first.left, first.error) == (4, 4, 0, 0, "")
        for name, data in spooled.items():  # as if the answer had been lost: everything again
            (reporting.Reports(ins.layout.root).spool / name).write_bytes(data)
        again = reporting.flush(ins.layout.root, 30, force=True)
        assert (again.sent, again.accepted, again.duplicates) == (4, 0, 4)
        document = json.loads(run_cli("pinnacle-release", "fleet", "report", "--db", database, "--json").stdout)
    finally:
        stop(proc)
    releases = {r["version"]: r for r in document["releases"]}
    assert (releases["1.0.0"]["attempted"], releases["1.0.0"]["succeeded"]) == (1, 1)
    assert (releases["1.1.0"]["attempted"], releases["1.1.0"]["succeeded"]) == (1, 1)
    assert releases["1.1.0"]["manual_rollbacks"] == 1
    assert [(v["version"], v["installs"]) for v in document["versions"]] == [("1.0.0", 1)]


def _counts(release: dict[str, Any]) -> dict[str, Any]:
    keys = ("offered", "attempted", "succeeded", "rolled_back", "failed", "manual_rollbacks", "delta_fallbacks",
            "checks_failed")
    return {k: release[k] for k in keys}
