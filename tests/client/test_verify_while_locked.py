"""``verify`` is read-only, so it works while another process holds the install lock (an install in
progress, the agent), and never reports a torn state: it verifies against a snapshot of
``state.json`` and keeps its result only if the slots it hashed were not written meanwhile."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinnacle_updates.client import config
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.errors import BusyError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats.exitcodes import ExitCode
from tests.helpers_client import PY, ROOT, app_files, env, hold_lock, init_client, make_repo, publish


def client_cli(install_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(install_dir), *args],
                          cwd=ROOT, env=env(), capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("verify-locked")
    repo = make_repo(base)
    publish(repo, "1.0.0", app_files("1.0.0"))
    publish(repo, "2.0.0", app_files("2.0.0", n_files=40, size=20_000))
    d = base / "install"
    installer = init_client(d, str(repo.dir), repo)
    installer.install(version="1.0.0")
    return d, repo.dir


@pytest.fixture
def install_dir(installed: tuple[Path, Path], tmp_path: Path) -> Path:
    d = tmp_path / "install"
    shutil.copytree(installed[0], d, symlinks=True)
    return d


@pytest.fixture
def lock_held(install_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``DIR/lock`` until the test ends."""
    with hold_lock(install_dir) as proc:
        yield proc


def test_verify_works_while_another_process_holds_the_lock(install_dir: Path,
                                                           lock_held: subprocess.Popen[str]) -> None:
    with pytest.raises(BusyError):  # an operation that writes is refused as before
        Installer(install_dir).rollback()
    proc = client_cli(install_dir, "verify")
    assert proc.returncode == 0, proc.stderr
    assert "slot a (1.0.0, active): ok" in proc.stdout
    assert "note:" not in proc.stdout
    # it really hashes: a changed file is found while the lock is held
    (install_dir / "slots" / "a" / "VERSION").write_text("tampered\n")
    proc = client_cli(install_dir, "verify")
    assert proc.returncode == ExitCode.VERIFICATION, proc.stdout + proc.stderr
    assert "VERSION" in proc.stdout
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_verify_during_an_operation_checks_the_active_slot_only_and_says_so(
    install_dir: Path, lock_held: subprocess.Popen[str]
) -> None:
    state = install_dir / "state.json"
    s = sm.load(state)
    sm.save(state, sm.begin_staging(sm.begin_install(s, "2.0.0", "2" * 64)))  # what the holder saved
    (install_dir / "slots" / "b" / "half-written").write_text("x")
    report = Installer(install_dir).verify(all_slots=True)
    assert [(r.slot, r.version, r.ok) for r in report.slots] == [("a", "1.0.0", True)]
    assert "state staging" in report.note and "only the active slot" in report.note
    proc = client_cli(install_dir, "verify", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"note": "state staging' in proc.stdout


def test_verify_without_a_cached_manifest_while_locked_is_one_busy_line(
    install_dir: Path, lock_held: subprocess.Popen[str]
) -> None:
    shutil.rmtree(install_dir / "manifests")
    proc = client_cli(install_dir, "verify")
    assert proc.returncode == BusyError.exit_code, proc.stdout + proc.stderr
    assert "not cached" in proc.stderr and f"pid {lock_held.pid}" in proc.stderr and "--wait" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_verify_without_the_lock_holder_still_fetches_a_missing_manifest(install_dir: Path) -> None:
    shutil.rmtree(install_dir / "manifests")
    report = Installer(install_dir).verify()
    assert report.ok and report.note == ""
    assert any((install_dir / "manifests").iterdir())


def test_verify_during_a_real_install_never_reports_a_torn_slot(install_dir: Path) -> None:
    """An install of 2.0.0 runs in another process (staging into b, swap, commit) while this one
    verifies both slots again and again: every verify either passes or says it could not get a
    stable view; none reports a problem, since nothing was damaged."""
    config.update_values(install_dir, {"pre_install": "sleep 0.3"})  # a window with the state at staged
    install = subprocess.Popen([PY, "-m", "pinnacle_updates.client", "--install-dir", str(install_dir), "install",
                                "2.0.0"], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    outcomes: list[str] = []
    stop = threading.Event()

    def verify_loop() -> None:
        installer = Installer(install_dir)
        while not stop.is_set():
            try:
                report = installer.verify(all_slots=True)
            except BusyError as exc:
                outcomes.append(f"busy: {exc}")
                continue
            if not report.ok:
                outcomes.append(f"problems: {report.to_dict()}")
            else:
                outcomes.append("noted" if report.note else "ok")

    thread = threading.Thread(target=verify_loop)
    thread.start()
    try:
        _, err = install.communicate(timeout=120)
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join(60)
    assert install.returncode == 0, err
    assert not thread.is_alive()
    assert outcomes and all(o in ("ok", "noted") or "kept changing" in o for o in outcomes), outcomes
    assert "noted" in outcomes, outcomes  # it did verify while the install was in the middle
    final = Installer(install_dir).verify(all_slots=True)
    assert final.ok and [(r.slot, r.version) for r in final.slots] == [("a", "1.0.0"), ("b", "2.0.0")]
