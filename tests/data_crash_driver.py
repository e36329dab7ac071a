"""Kill loop of the data snapshot and restore (issue 18): ``python tests/data_crash_driver.py DIR N SEED VERSION``.

``VERSION`` migrates the data (its signed migration step) and then fails its health check, so every
install of it snapshots the data, changes it, and restores it. Each of the N iterations forks a
child that installs it and SIGKILLs the child at a random instant inside the snapshot or inside the
restore (alternately; the instant uniform over that phase's duration as measured uninterrupted).
The parent then starts the client normally (``recover``) and checks:

* the persistent data is exactly the tree from before the update (tree hash): never a mix;
* no half-written snapshot, clone or journal is left in ``DIR/backups``, and every backup verifies;
* when the migration had run, the data it wrote is kept in a rejected backup: never lost.

One JSON line per iteration on stdout; exit status 1 when any check failed.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinnacle_updates.client import backups  # noqa: E402
from pinnacle_updates.client.errors import UpdateError  # noqa: E402
from pinnacle_updates.client.installer import Installer  # noqa: E402
from pinnacle_updates.client.slots import Layout  # noqa: E402

PHASES = {"snapshot": "snapshotted", "restore_data": "swap_back"}
"""Each phase a kill lands in: the step event that starts it and the one that follows it."""


def run_child(d: Path, version: str, kill_in: str | None, fraction: float, lengths: dict[str, float]) -> dict[str, Any]:
    """One install of ``version`` in a forked child, killed ``fraction`` of the way through phase
    ``kill_in`` (None: not killed). Returns the steps it reported and whether the kill landed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one install, as a separate process
        os.close(r)

        def on_event(event: dict[str, Any]) -> None:
            os.write(w, (json.dumps(event, default=str) + "\n").encode())

        try:
            Installer(d, on_event=on_event).install(version, force=True, wait=True)
            os._exit(0)
        except UpdateError:
            os._exit(1)
        except BaseException:
            os._exit(2)
    os.close(w)
    started = time.monotonic()
    steps: dict[str, float] = {}
    deadline: float | None = None
    killed = False
    pending = b""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:  # the instant chosen inside the phase
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            step = json.loads(line).get("step")
            if isinstance(step, str) and step not in steps:
                steps[step] = time.monotonic() - started
                if step == kill_in and deadline is None:
                    deadline = time.monotonic() + fraction * lengths[kill_in]
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2:
        raise SystemExit("install crashed with an unexpected exception")
    killed = killed and os.WIFSIGNALED(status)
    return {"steps": steps, "killed": killed}


def phase_lengths(steps: dict[str, float]) -> dict[str, float]:
    return {start: steps[end] - steps[start] for start, end in PHASES.items() if start in steps and end in steps}


def schema(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def check(d: Path, names: tuple[str, ...], before: str, known: set[str], migrated: bool) -> tuple[list[str], set[str]]:
    """What is wrong after recovery; and the backups that exist now."""
    problems: list[str] = []
    layout = Layout(d)
    status = Installer(d).status()
    if status["state"] not in ("rolled_back", "failed", "committed") or status["version"] != "1.0.0":
        problems.append(f"not at rest on 1.0.0: {status['state']} {status['version']}")
    if backups.digest_tree(layout.data, names) != before:
        problems.append("the data is not the tree from before the update")
    leftovers = [p.name for p in backups.backups_dir(layout).iterdir() if p.name.startswith(".")]
    if leftovers:
        problems.append(f"left in backups/: {leftovers}")
    now = {b.id: b for b in backups.list_backups(layout)}
    for backup_id in now:
        bad = backups.verify(layout, backup_id)
        if bad:
            problems.append(f"backup {backup_id}: {bad[0]}")
    new_rejected = [b for i, b in now.items() if i not in known and b.kind == "rejected"]
    if migrated:
        kept = [b for b in new_rejected
                if schema(backups.backup_dir(layout, b.id) / "data/db/app.sqlite") == 2
                and (backups.backup_dir(layout, b.id) / "data/uploads/written-by-2.txt").is_file()]
        if not kept:
            problems.append("the migrated data is in no rejected backup")
    return problems, set(now)


def loop(install_dir: str, iterations: int, seed: int, version: str) -> int:
    d = Path(install_dir)
    rng = random.Random(seed)
    names = Installer(d).config().persistent_paths
    before = backups.digest_tree(d / "data", names)
    known = {b.id for b in backups.list_backups(Layout(d))}

    # calibrate: how long each phase takes here, uninterrupted
    measured: dict[str, list[float]] = {p: [] for p in PHASES}
    for _ in range(2):
        run = run_child(d, version, None, 0.0, {})
        for phase, length in phase_lengths(run["steps"]).items():
            measured[phase].append(length)
        problems, known = check(d, names, before, known, migrated=True)
        if problems:
            raise SystemExit(f"an uninterrupted run already fails: {problems}")
    lengths = {p: statistics.median(v) * 1.2 for p, v in measured.items()}
    print(json.dumps({"calibration": lengths}), flush=True)

    failures = 0
    for i in range(iterations):
        phase = ("snapshot", "restore_data")[i % 2]
        fraction = rng.random()
        run = run_child(d, version, phase, fraction, lengths)
        try:
            saved = json.loads((d / "state.json").read_bytes())["state"]
        except (OSError, ValueError, KeyError):
            saved = "unreadable"
        report = Installer(d).recover(wait=True)  # the next normal start
        # recovery always finishes this failing version's trial or rollback, so its migration has run
        # and the data it wrote must be kept in a rejected backup, whatever instant the kill hit
        problems, known = check(d, names, before, known, migrated=True)
        failures += bool(problems)
        print(json.dumps({"i": i, "phase": phase, "fraction": round(fraction, 3), "killed": run["killed"],
                          "state": saved, "steps": sorted(run["steps"], key=run["steps"].get),
                          "actions": list(report.actions), "problems": problems}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(loop(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
