"""The install flow end to end with real parts: a repository made by ``pinnacle-release``, served by
a real HTTP server subprocess on 127.0.0.1, hooks and health checks as real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinnacle_updates.client import config
from pinnacle_updates.client.errors import BusyError, HealthCheckError, InstallError, StateError
from pinnacle_updates.client.installer import Installer
from tests.helpers_client import PY, ROOT, Repo, app_files, env, init_client, make_repo, publish, serve, tree_digest

VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
BROKEN = "1.3.0"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """1.0.0 .. 1.2.0 healthy (1.0.0 and 1.1.0 ship logs/seed.txt); 1.3.0 fails its health check."""
    r = make_repo(tmp_path_factory.mktemp("pub"))
    for i, v in enumerate(VERSIONS):
        files = app_files(v)
        if i < 2:
            files["logs/seed.txt"] = f"seed from {v}\n"
        publish(r, v, files, entry_point="bin/app" if v == "1.2.0" else None)
    publish(r, BROKEN, app_files(BROKEN, healthy=False))
    return r


@pytest.fixture(scope="module")
def url(repo: Repo) -> Iterator[str]:
    with serve(repo.dir) as base:
        yield base


def version_of(d: Path) -> str:
    return (d / "current" / "VERSION").read_text().strip()


def test_install_upgrade_and_manual_rollback_over_http(tmp_path: Path, repo: Repo, url: str) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, url, repo)
    found = ins.check()
    assert found.to_dict() | {"reason": ""} == {
        "current_version": None,
        "update_available": True,
        "version": BROKEN,
        "type": "patch",
        "download_bytes": found.download_bytes,
        "path": "full",  # nothing installed: no delta applies
        "auto": True,
        "reason": "",
    }
    assert found.download_bytes > 0

    with pytest.raises(StateError, match="nothing is installed"):
        ins.entry_point()
    first = ins.install("1.0.0")
    assert ins.entry_point() is None  # published without --entry-point
    assert (first.outcome, first.version, first.slot, first.previous_version) == ("committed", "1.0.0", "a", None)
    assert os.readlink(d / "current") == "slots/a" and version_of(d) == "1.0.0"
    assert (d / "data/logs/seed.txt").read_text() == "seed from 1.0.0\n"  # seeded once
    slot_a = tree_digest(d / "slots/a")

    second = ins.install("1.1.0")
    assert (second.version, second.slot, second.previous_version) == ("1.1.0", "b", "1.0.0")
    assert second.bytes_downloaded > 0
    assert version_of(d) == "1.1.0"
    assert (d / "data/logs/seed.txt").read_text() == "seed from 1.0.0\n"  # never overwritten
    assert tree_digest(d / "slots/a") == slot_a  # the slot that was running is untouched
    st = ins.status()
    assert {k: st[k] for k in ("version", "slot", "channel", "state", "previous_version")} == {
        "version": "1.1.0",
        "slot": "b",
        "channel": "stable",
        "state": "committed",
        "previous_version": "1.0.0",
    }

    back = ins.rollback(mark_bad=True)  # a plain rollback records no bad version: tests/client/test_rollback_marks.py
    assert (back.version, back.slot, back.from_version) == ("1.0.0", "a", "1.1.0")
    assert version_of(d) == "1.0.0" and ins.status()["bad_versions"]["1.1.0"]["rollbacks"] == 1
    with pytest.raises(StateError, match=r"1.1.0, which was rolled back as bad"):
        ins.rollback()
    assert ins.rollback(force=True).version == "1.1.0"

    ops = [(h["op"], h.get("outcome")) for h in ins.history()]
    assert ops == [
        ("check", None),
        ("install", "committed"),
        ("install", "committed"),
        ("rollback", "rolled_back"),
        ("rollback", "rolled_back"),
    ]
    rec = ins.history()[2]
    assert rec["from_version"] == "1.0.0" and rec["sha256"] and rec["bytes"] > 0 and rec["duration"] >= 0


def test_rollback_to_a_version_older_than_max_rollback_days_needs_force(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo, max_rollback_days=30)
    ins.install("1.0.0")
    ins.install("1.1.0")
    doc = json.loads((d / "state.json").read_text())
    doc["slots"]["a"]["installed"] = "2000-01-01T00:00:00Z"
    (d / "state.json").write_text(json.dumps(doc))
    with pytest.raises(StateError, match=r"1.0.0 was installed \d+ days ago, more than max_rollback_days \(30\)"):
        ins.rollback()
    assert ins.rollback(force=True).version == "1.0.0"


def test_nothing_to_roll_back_to_is_a_clear_refusal(tmp_path: Path, repo: Repo) -> None:
    ins = init_client(tmp_path / "inst", str(repo.dir), repo)
    with pytest.raises(StateError, match="nothing is installed"):
        ins.rollback()
    ins.install("1.0.0")
    with pytest.raises(StateError, match="no previous version to roll back to: slot b holds no complete release"):
        ins.rollback()


def test_automatic_rollback_on_failed_health_check(tmp_path: Path, repo: Repo, url: str) -> None:
    d = tmp_path / "inst"
    log = d / "service.log"
    ins = init_client(
        d,
        url,
        repo,
        stop_command=f'echo "stop $PINNACLE_VERSION" >> {log}',
        start_command=f'echo "start $PINNACLE_VERSION $(basename "$PWD")" >> {log}',
        post_swap=f'echo "post_swap $PINNACLE_VERSION $PINNACLE_SLOT" >> {log}',
        on_rollback=f'echo "on_rollback $PINNACLE_VERSION failed=$PINNACLE_FAILED_VERSION" >> {log}',
        max_rollback_attempts=2,
    )
    ins.install("1.2.0")
    entry = ins.entry_point()
    assert entry == (d / "slots/a/bin/app").resolve()
    assert subprocess.run([str(entry)], capture_output=True, text=True).stdout == "app 1.2.0\n"
    log.write_text("")
    before = tree_digest(d / "slots/a")
    with pytest.raises(HealthCheckError) as info:
        ins.install(BROKEN)
    message = str(info.value)
    assert message.startswith(f"{BROKEN} failed after the swap (health check failed: unhealthy after 2 attempt(s)")
    assert re.search(r"; rolled back to 1\.2\.0, data restored from backup \d{8}T\d{9}Z-[0-9a-f]{4}$", message)
    assert version_of(d) == "1.2.0" and os.readlink(d / "current") == "slots/a"
    assert tree_digest(d / "slots/a") == before
    assert log.read_text().splitlines() == [
        f"stop {BROKEN}",
        f"post_swap {BROKEN} b",
        f"start {BROKEN} b",
        "stop 1.2.0",
        f"on_rollback 1.2.0 failed={BROKEN}",
        "start 1.2.0 a",
    ]
    st = ins.status()
    assert st["state"] == "rolled_back" and st["bad_versions"][BROKEN]["rollbacks"] == 1
    assert "health check failed" in st["last_error"]

    # not retried automatically; explicit requests need force; max_rollback_attempts caps force
    assert not ins.check().update_available
    assert "marked bad" in ins.check().reason
    assert ins.install().outcome == "up_to_date"
    with pytest.raises(InstallError, match="marked bad"):
        ins.install(BROKEN)
    with pytest.raises(HealthCheckError):
        ins.install(BROKEN, force=True)
    with pytest.raises(InstallError, match="rolled back 2 times \\(max_rollback_attempts 2\\)"):
        ins.install(BROKEN, force=True)
    hist = [h for h in ins.history() if h["op"] == "rollback"]
    assert [h.get("bad_version") for h in hist] == [BROKEN, BROKEN]


def test_first_install_failing_health_leaves_nothing_active(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    with pytest.raises(HealthCheckError, match="nothing to roll back to"):
        ins.install(BROKEN)
    assert not os.path.lexists(d / "current")
    assert ins.status()["version"] is None
    assert ins.install("1.0.0").outcome == "committed"


def test_pre_install_failure_aborts_before_the_swap(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    config.set_value(d, "pre_install", "echo 'config conflict: port 80 in use' >&2; exit 4")
    with pytest.raises(InstallError, match=r"pre_install .* exited 4: config conflict: port 80 in use; nothing was"):
        ins.install("1.1.0")
    st = ins.status()
    assert (st["state"], st["version"], st["previous_version"]) == ("failed", "1.0.0", None)
    assert version_of(d) == "1.0.0" and not list((d / "slots/b").iterdir())


def test_verify_catches_tampering_and_repair_fixes_it(tmp_path: Path, repo: Repo, url: str) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, url, repo)
    ins.install("1.0.0")
    ins.install("1.1.0")
    assert ins.verify().ok and ins.verify(all_slots=True).ok
    (d / "current/lib/part000.dat").write_bytes(b"tampered")
    (d / "current/extra.sh").write_text("evil\n")
    (d / "current/logs/app.log").write_text("persistent data is not release content\n")
    report = ins.verify()
    assert not report.ok
    assert [r.slot for r in report.slots] == ["b"]
    assert list(report.slots[0].problems) == ["unexpected: extra.sh", "modified: lib/part000.dat"]
    both = ins.verify(all_slots=True)
    assert [(r.slot, r.ok) for r in both.slots] == [("a", True), ("b", False)]

    # the cached manifest is gone: verify fetches it again through TUF
    for m in (d / "manifests").iterdir():
        m.unlink()
    assert not ins.verify().ok

    fixed = ins.repair()
    assert (fixed.outcome, fixed.version, fixed.slot) == ("committed", "1.1.0", "a")
    assert os.readlink(d / "current") == "slots/a"
    assert ins.verify().ok
    assert (d / "current/logs/app.log").read_text() == "persistent data is not release content\n"
    assert ins.history()[-1]["op"] == "verify"
    assert [h["op"] for h in ins.history() if h.get("outcome") == "committed"][-1] == "repair"


def test_persistent_data_survives_20_upgrade_rollback_cycles(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo, max_rollback_attempts=1000)
    ins.install("1.0.0")
    expected = {
        "logs/app.log": os.urandom(50_000),
        "uploads/photo.bin": os.urandom(123_457),
        "temp/session": b"token\n",
    }
    for rel, data in expected.items():
        (d / "current" / rel).write_bytes(data)
    for cycle in range(20):
        target = ("1.1.0", "1.2.0")[cycle % 2]
        ins.install(target, force=True)
        assert version_of(d) == target
        for rel, data in expected.items():
            assert (d / "current" / rel).read_bytes() == data, (cycle, rel)
        line = f"cycle {cycle} on {target}\n".encode()
        with open(d / "current/logs/app.log", "ab") as f:  # the app keeps writing its log
            f.write(line)
        keep = cycle % 2 == 0
        back = ins.rollback(force=True, keep_data=keep)
        assert version_of(d) == "1.0.0"
        if keep:  # --keep-data: what the newer version wrote stays
            expected["logs/app.log"] += line
            assert back.data_restored is None
        else:  # the data goes back to its snapshot from before the update; the newer data is kept aside
            assert back.data_restored is not None and back.data_rejected is not None
            rejected = d / "backups" / back.data_rejected / "data/logs/app.log"
            assert rejected.read_bytes() == expected["logs/app.log"] + line
        for rel, data in expected.items():
            assert (d / "current" / rel).read_bytes() == data, (cycle, rel)
    assert (d / "data/logs/seed.txt").read_text() == "seed from 1.0.0\n"
    assert ins.verify(all_slots=True).ok
    assert len(ins.backups()) <= 5  # max_backups


def test_corrupted_state_file_is_a_clear_error_and_is_rebuilt(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    for v in VERSIONS:
        ins.install(v)
    ins.rollback(mark_bad=True)  # active b = 1.1.0, a = 1.2.0 (bad)
    digests = {s: tree_digest(d / "slots" / s) for s in "ab"}
    (d / "state.json").write_bytes(b'{"schema": 1, "state": "comm')
    with pytest.raises(StateError, match=r"state file .* is corrupt .*run `pinnacle-update recover`"):
        ins.status()
    report = ins.recover()
    assert report.actions and report.actions[0].startswith("state file was unusable")
    st = ins.status()
    assert (st["version"], st["slot"], st["previous_version"]) == ("1.1.0", "b", "1.2.0")
    assert st["bad_versions"]["1.2.0"]["rollbacks"] == 1  # from the history log
    assert (d / "state.json.corrupt").exists()
    assert {s: tree_digest(d / "slots" / s) for s in "ab"} == digests
    assert ins.install("1.0.0", force=True).slot == "a"


def test_corrupted_state_with_unknown_running_slot_refuses(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    (d / "current/VERSION").write_text("9.9.9\n")
    (d / "state.json").write_text("garbage")
    before = tree_digest(d / "slots/a")
    with pytest.raises(StateError, match=r"cannot rebuild the state: slot a .* matches no cached release"):
        ins.install("1.1.0")
    assert tree_digest(d / "slots/a") == before


def test_missing_inactive_slot(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    ins.install("1.1.0")
    shutil.rmtree(d / "slots/a")
    report = ins.recover()
    assert report.actions == ("slot a was missing: recreated empty (no rollback version there)",)
    with pytest.raises(StateError, match="no previous version"):
        ins.rollback()
    assert ins.install("1.2.0").slot == "a"


def test_missing_active_slot_falls_back_to_the_other(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    ins.install("1.1.0")
    shutil.rmtree(d / "slots/b")
    missing = ins.verify()
    assert not missing.ok and missing.slots[0].problems[0].startswith("missing: ")
    report = ins.recover()
    assert report.actions == ("active slot b (1.1.0) was missing: switched to 1.0.0",)
    assert version_of(d) == "1.0.0" and ins.verify().ok


def test_link_disagreeing_with_state_follows_the_state(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    ins.install("1.1.0")
    os.unlink(d / "current")
    os.symlink("slots/a", d / "current")
    assert ins.status()["needs_recovery"]
    assert ins.recover().actions == ("current pointed at a; relinked to slot b as the state says",)
    assert version_of(d) == "1.1.0"
    assert ins.recover().actions == ()


def test_lock_busy_names_the_holder_and_wait_queues(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            "import sys, time\nfrom pinnacle_updates.formats.fsutil import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n",
            str(d / "lock"),
            "1.5",
        ],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError) as info:
        ins.install("1.0.0")
    assert str(info.value) == (f"another pinnacle-update process (pid {holder.pid}) is installing; use --wait to queue")
    checks = {c.name: c for c in ins.doctor()}
    assert not checks["lock"].ok and str(holder.pid) in checks["lock"].detail
    assert ins.install("1.0.0", wait=True).outcome == "committed"
    holder.wait()


def _driver(d: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tests/crash_driver.py"), "install", str(d), version],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


KILL_PARENT_ONCE = (
    '[ -f "$PINNACLE_INSTALL_DIR/killed" ] || {{ touch "$PINNACLE_INSTALL_DIR/killed"; {extra}kill -9 $PPID; }}'
)


def test_killed_during_trial_is_health_checked_and_committed(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    config.set_value(d, "post_swap", KILL_PARENT_ONCE.format(extra=""))
    proc = _driver(d, "1.1.0")
    assert proc.returncode == -9, proc.stdout + proc.stderr
    st = ins.status()
    assert st["state"] == "trial" and st["needs_recovery"] and os.readlink(d / "current") == "slots/b"
    report = ins.recover()
    assert report.actions == ("finished the interrupted trial of 1.1.0: healthy, committed",)
    assert ins.status()["state"] == "committed" and version_of(d) == "1.1.0"


def test_killed_during_trial_of_unhealthy_version_rolls_back(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    config.set_value(d, "post_swap", KILL_PARENT_ONCE.format(extra=""))
    assert _driver(d, BROKEN).returncode == -9
    report = ins.recover()
    assert len(report.actions) == 1 and report.actions[0].startswith(f"rolled back the interrupted trial of {BROKEN}")
    st = ins.status()
    assert (st["state"], st["version"]) == ("rolled_back", "1.0.0") and BROKEN in st["bad_versions"]
    assert version_of(d) == "1.0.0"


def test_killed_while_staged_is_discarded(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    config.set_value(d, "pre_install", KILL_PARENT_ONCE.format(extra=""))
    assert _driver(d, "1.1.0").returncode == -9
    assert ins.status()["state"] == "staged"
    assert ins.recover().actions == ("discarded the partly staged slot b",)
    st = ins.status()
    assert (st["state"], st["version"], st["previous_version"]) == ("failed", "1.0.0", None)
    assert not list((d / "slots/b").iterdir())
    assert ins.install("1.1.0").outcome == "committed"  # the next run goes through


def test_doctor_reports_every_check(tmp_path: Path, repo: Repo, url: str) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, url, repo)
    ins.install("1.0.0")
    checks = ins.doctor()
    assert [c.name for c in checks] == [
        "config",
        "state",
        "permissions",
        "free space",
        "lock",
        "repository",
        "clock",
    ]
    assert all(c.ok for c in checks), [c.to_dict() for c in checks if not c.ok]
    json.dumps([c.to_dict() for c in checks])
    config.set_value(d, "repo_url", "http://127.0.0.1:9/")
    repo_check = {c.name: c for c in ins.doctor()}["repository"]
    assert not repo_check.ok


# ----- disk full (a real small file system) ------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_while_staging(tmp_path: Path, small_fs: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    publish(repo, "1.0.0", app_files("1.0.0"))
    publish(repo, "2.0.0", {**app_files("2.0.0"), "lib/big.bin": os.urandom(700_000)})
    publish(repo, "3.0.0", {**app_files("3.0.0"), "lib/big.bin": os.urandom(4_000_000)})
    d = small_fs / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    state_before = (d / "state.json").read_bytes()
    slot_a = tree_digest(d / "slots/a")

    # too big for the file system: refused by the pre-check before anything is touched
    with pytest.raises(InstallError, match=r"not enough free space .* 3.0.0 needs .* nothing was changed"):
        ins.install("3.0.0")
    assert (d / "state.json").read_bytes() == state_before

    # fits at the pre-check, but the disk fills up while staging: fill it when staging starts
    filler = d / "filler"

    def fill(event: dict[str, object]) -> None:
        if event == {"event": "step", "step": "staging", "slot": "b"}:
            vfs = os.statvfs(d)
            filler.write_bytes(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - 64 * 1024))

    with pytest.raises(InstallError, match="No space left on device"):
        Installer(d, on_event=fill).install("2.0.0")
    st = ins.status()
    assert (st["state"], st["version"], st["slot"]) == ("failed", "1.0.0", "a")
    assert "No space left" in st["last_error"]
    assert tree_digest(d / "slots/a") == slot_a and version_of(d) == "1.0.0"
    assert ins.verify().ok

    filler.unlink()
    assert ins.install("2.0.0").outcome == "committed"
    assert version_of(d) == "2.0.0" and ins.verify(all_slots=True).ok
