"""Drive the client library from real processes for the crash tests.

``python tests/crash_driver.py install DIR VERSION``
    one forced install of VERSION (a process the tests SIGKILL); prints the result as JSON.

``python tests/crash_driver.py loop DIR ITERATIONS SEED REPO_URL ROOT_JSON V1,V2,...``
    ITERATIONS installs, each in a forked child process killed with SIGKILL after a random delay
    (uniform over a little more than an uninterrupted install takes, so kills land in every
    phase: download, staging, swap, hooks, health check, commit). After each kill this process
    starts the client normally (a fresh ``Installer(...).recover()``) and checks that the active
    slot hashes to exactly one released version and that ``current`` resolves to it. One JSON
    line per iteration on stdout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinnacle_updates.client.errors import UpdateError  # noqa: E402
from pinnacle_updates.client.installer import Installer  # noqa: E402
from pinnacle_updates.client.trust import RepositoryClient  # noqa: E402
from pinnacle_updates.formats.index import Manifest  # noqa: E402
from pinnacle_updates.formats.tree import verify_tree  # noqa: E402


def install(install_dir: str, version: str) -> int:
    try:
        result = Installer(Path(install_dir)).install(version, force=True, wait=True)
    except UpdateError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return exc.exit_code
    print(json.dumps(result.to_dict()), flush=True)
    return 0


def released_manifests(repo_url: str, root_json: str, versions: list[str]) -> dict[str, Manifest]:
    """The manifests of the released versions, fetched through TUF independently of the install dir."""
    tmp = Path(tempfile.mkdtemp(prefix="crash-manifests-"))
    with RepositoryClient(repo_url, tmp / "tuf", tmp / "cache", Path(root_json).read_bytes()) as client:
        client.refresh()
        index = client.channel_index("stable")
        out = {}
        for v in versions:
            release = index.find(v, "any")
            assert release is not None, v
            out[v] = client.fetch_manifest(release)
    return out


def check_active(install_dir: Path, manifests: dict[str, Manifest], persistent: tuple[str, ...]) -> dict[str, object]:
    """Which released versions the slot behind ``current`` matches exactly (must be one)."""
    ins = Installer(install_dir)
    status = ins.status()
    current = install_dir / "current"
    resolved = current.resolve()
    matches = [v for v, m in manifests.items() if not verify_tree(current, m, skip=persistent)]
    problems: list[str] = []
    if status["state"] not in ("committed", "rolled_back", "failed"):
        problems.append(f"not resting: {status['state']}")
    if resolved != (install_dir / "slots" / str(status["slot"])).resolve():
        problems.append(f"current -> {resolved}, state says slot {status['slot']}")
    if matches != [status["version"]]:
        problems.append(f"slot matches {matches}, state says {status['version']}")
    return {"version": status["version"], "slot": status["slot"], "matches": matches, "problems": problems}


def loop(install_dir: str, iterations: int, seed: int, repo_url: str, root_json: str, versions: list[str]) -> int:
    d = Path(install_dir)
    rng = random.Random(seed)
    manifests = released_manifests(repo_url, root_json, versions)
    persistent = Installer(d).config().persistent_paths

    def run_child(version: str, delay: float | None) -> tuple[bool, float]:
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: one install, as a separate process
            try:
                Installer(d).install(version, force=True, wait=True)
                os._exit(0)
            except UpdateError:
                os._exit(1)
            except BaseException:
                os._exit(2)
        killed, status = False, None  # status: the wait status once reaped
        while delay is not None:  # poll, so that an install finishing before its kill is timed exactly
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            status, left = None, start + delay - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)  # an unreaped child is still there to kill
                killed = True
                break
            time.sleep(min(left, 0.001))
        if status is None:
            _, status = os.waitpid(pid, 0)
        killed = killed and os.WIFSIGNALED(status)
        if not killed and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2:
            raise SystemExit("install crashed with an unexpected exception")
        return killed, time.monotonic() - start

    # calibrate: how long an uninterrupted install takes here; every install that finishes before its
    # kill updates the figure, so a calibration on a briefly loaded machine does not leave most kills late
    durations = []
    for i in range(3):
        _, took = run_child(versions[i % len(versions)], None)
        durations.append(took)
    print(json.dumps({"calibration": durations, "horizon": statistics.median(durations) * 1.3}), flush=True)

    failures = 0
    for i in range(iterations):
        active = Installer(d).status()["version"]
        target = rng.choice([v for v in versions if v != active])
        delay = rng.uniform(0, statistics.median(durations[-5:]) * 1.3)
        killed, took = run_child(target, delay)
        if not killed:
            durations.append(took)
        try:
            phase = json.loads((d / "state.json").read_bytes())["state"]
        except (OSError, ValueError, KeyError):
            phase = "unreadable"
        report = Installer(d).recover(wait=True)  # the next normal start
        check = check_active(d, manifests, persistent)
        failures += bool(check["problems"])
        line = {
            "i": i,
            "target": target,
            "delay": round(delay, 4),
            "killed": killed,
            "phase": phase,
            "actions": list(report.actions),
            **check,
        }
        print(json.dumps(line), flush=True)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv[0] == "install":
        return install(argv[1], argv[2])
    if argv[0] == "loop":
        return loop(argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5], argv[6].split(","))
    raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
