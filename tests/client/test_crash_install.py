"""Crash safety: installs killed with SIGKILL at random moments, each followed by a normal start.

Property: after recovery the install directory is at rest, ``current`` resolves to the slot the
state names, and that slot hashes to exactly one released version (never a mix of two), while
persistent data is untouched. Releases differ in every file, so a mix cannot match any manifest.

Two loops: 200 installs from a local-path repository in forked child processes (fast, so kills
land in every phase), and a smaller number over HTTP in freshly exec'd ``python`` processes.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinnacle_updates.client.installer import Installer
from tests.crash_driver import check_active, released_manifests
from tests.helpers_client import ROOT, Repo, app_files, env, init_client, make_repo, publish, serve
from tests.kill_loop import driver_iterations

pytestmark = pytest.mark.slow

VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0")  # 1.3.0 fails its health check: kills land in rollbacks too


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = make_repo(tmp_path_factory.mktemp("crash-pub"))
    for v in VERSIONS:
        publish(r, v, app_files(v, healthy=v != "1.3.0", n_files=40, size=32768))
    return r


def _client(d: Path, url: str, repo: Repo) -> Installer:
    log = "$PINNACLE_INSTALL_DIR/data/logs/service.log"
    ins = init_client(
        d,
        url,
        repo,
        # the health check takes a little time so that kills land in it
        health_command="sleep 0.05; test -f healthy",
        health_retries=1,
        stop_command=f'echo "stop $PINNACLE_VERSION" >> {log}',
        start_command=f'echo "start $PINNACLE_VERSION" >> {log}',
        max_rollback_attempts=1_000_000,
    )
    ins.install("1.0.0")
    (d / "data/uploads/keep.bin").write_bytes(b"precious" * 1000)
    return ins


def _summarise(lines: list[dict[str, object]]) -> str:
    phases = collections.Counter(str(x["phase"]) for x in lines if x["killed"])
    return f"{len(lines)} installs, {sum(bool(x['killed']) for x in lines)} killed; state at kill: {dict(phases)}"


def test_200_installs_killed_at_random_moments(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    _client(d, str(repo.dir), repo)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/crash_driver.py"),
            "loop",
            str(d),
            "200",
            "20261126",
            str(repo.dir),
            str(repo.root_json),
            ",".join(VERSIONS),
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    _rows, lines = driver_iterations(proc, 200)
    killed = [r for r in lines if r["killed"]]
    assert len(killed) >= 80, _summarise(lines)  # ~150 expected; a loaded machine finishes more in time
    phases = {r["phase"] for r in killed}
    assert "trial" in phases and len(phases) >= 3, _summarise(lines)
    assert (d / "data/uploads/keep.bin").read_bytes() == b"precious" * 1000
    print(_summarise(lines))


def test_installs_over_http_killed_in_separate_processes(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    manifests = released_manifests(str(repo.dir), str(repo.root_json), list(VERSIONS))
    rng = random.Random(7)
    with serve(repo.dir) as url:
        ins = _client(d, url, repo)
        persistent = ins.config().persistent_paths

        def start(version: str) -> tuple[subprocess.Popen[str], float]:
            cmd = [sys.executable, str(ROOT / "tests/crash_driver.py"), "install", str(d), version]
            p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            return p, time.monotonic()

        # calibrate on two uninterrupted runs
        took = []
        for v in ("1.1.0", "1.2.0"):
            p, t0 = start(v)
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            took.append(time.monotonic() - t0)
        horizon = max(took) * 1.1
        results = []
        for _ in range(25):
            active = ins.status()["version"]
            target = rng.choice([v for v in VERSIONS if v != active])
            p, _t0 = start(target)
            time.sleep(rng.uniform(0, horizon))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
            killed = p.returncode == -signal.SIGKILL
            phase = json.loads((d / "state.json").read_bytes())["state"]
            report = Installer(d).recover(wait=True)
            check = check_active(d, manifests, persistent)
            assert not check["problems"], (target, phase, report.actions, check)
            results.append({"killed": killed, "phase": phase})
        assert sum(r["killed"] for r in results) >= 5
        print("over HTTP:", dict(collections.Counter(str(r["phase"]) for r in results if r["killed"])))
        assert (d / "data/uploads/keep.bin").read_bytes() == b"precious" * 1000
        assert os.path.realpath(d / "current").startswith(str(d / "slots"))
