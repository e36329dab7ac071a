"""Collector fixtures: a database of each kind (a fresh SQLite file; a fresh database in the session's
throwaway PostgreSQL, tests/pg_server.py), reports to send, and a real collector process."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinnacle_updates.formats.report import Report
from tests.conftest import ROOT
from tests.pg_server import PgServer, find_binaries, run_postgres


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    binaries = find_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (CI installs Debian's postgresql: .ci/run)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with run_postgres(tmp_path_factory.mktemp("pg"), binaries) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty reports database of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "reports.sqlite")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database(f"t_{secrets.token_hex(6)}")


def make_report(**changes: Any) -> Report:
    """A committed install of stable/linux-x86_64 1.1.0 now; ``changes`` override fields."""
    values: dict[str, Any] = dict(
        report_id=secrets.token_hex(16), install_id=secrets.token_hex(16), at=datetime.now(UTC).replace(microsecond=0),
        kind="install", outcome="committed", channel="stable", platform="linux-x86_64", from_version="1.0.0",
        to_version="1.1.0", update_type="minor", bucket=17, durations={"download": 1.0, "total": 4.0},
        bytes_downloaded=1000, bytes_saved=4000, client_version="0.1.0")
    values.update(changes)
    return Report(**values)


@dataclass
class Collector:
    url: str
    token: str
    proc: subprocess.Popen[str]
    client: httpx.Client

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(f"{self.url}/v1/reports", content=body,
                                headers={"Content-Type": "application/json", **(headers or {})})

    def report(self, **params: str) -> httpx.Response:
        return self.client.get(f"{self.url}/v1/fleet/report", params=params,
                               headers={"Authorization": f"Bearer {self.token}"})


def start_collector(db: str, workdir: Path, *args: str, env: dict[str, str] | None = None
                    ) -> tuple[subprocess.Popen[str], str]:
    """``pinnacle-release collector serve`` on a free port: the process and its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinnacle_updates.repo_tools", "collector", "serve", "--db", db, "--port", "0",
         "--token-file", str(workdir / "collector.token"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise AssertionError(f"collector did not start: {line}{proc.communicate(timeout=10)}")
    return proc, line.split()[1].rstrip("/")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def collector_factory(tmp_path: Path) -> Iterator[Any]:
    """Start collectors (``factory(db_url, *args)``), all stopped at the end."""
    running: list[Collector] = []

    def factory(db: str, *args: str, env: dict[str, str] | None = None) -> Collector:
        proc, url = start_collector(db, tmp_path / f"c{len(running)}", *args, env=env)
        token = (tmp_path / f"c{len(running)}" / "collector.token").read_text().strip()
        running.append(Collector(url, token, proc, httpx.Client(timeout=30)))
        return running[-1]

    yield factory
    for c in running:
        c.client.close()
        stop(c.proc)
