"""Crash safety of the data (issue 18): installs of a version that migrates the data and then fails
its health check, SIGKILLed at random instants inside the data snapshot and inside the restore
(``tests/data_crash_driver.py``). After each kill the next start recovers; every end state is exactly
the data from before the update (tree hash), nothing half-written is left, every backup verifies, and
the migrated data is kept in a rejected backup."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_data_rollback import MIGRATE_TO_2, PERSISTENT, SCHEMA_1
from tests.helpers_client import ROOT, app_files, env, init_client, make_repo, publish
from tests.kill_loop import driver_iterations

pytestmark = pytest.mark.slow


def test_60_kills_inside_snapshot_and_restore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    publish(repo, "1.0.0", {**app_files("1.0.0"), "bin/schema1": SCHEMA_1})
    publish(repo, "2.0.0", {**app_files("2.0.0", healthy=False), "bin/migrate": MIGRATE_TO_2},
            migration="bin/migrate")
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo, persistent_paths=PERSISTENT, max_rollback_attempts=1_000_000)
    ins.install("1.0.0")
    subprocess.run([str(d / "current/bin/schema1")], cwd=d / "current", check=True)
    for i in range(300):  # enough data that both phases take measurable time
        part = d / f"data/uploads/{i // 50:02d}/file{i:03d}.bin"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(os.urandom(16_384))
    os.symlink("../db/app.sqlite", d / "data/uploads/db-link")

    proc = subprocess.run([sys.executable, str(ROOT / "tests/data_crash_driver.py"), str(d), "60", "20261204",
                           "2.0.0"], env=env(), capture_output=True, text=True, timeout=900)
    rows, lines = driver_iterations(proc, 60)
    killed = collections.Counter(r["phase"] for r in lines if r["killed"])
    assert killed["snapshot"] >= 20 and killed["restore_data"] >= 20, (killed, rows[0])
    print("kills by phase:", dict(killed), "calibration:", rows[0])
