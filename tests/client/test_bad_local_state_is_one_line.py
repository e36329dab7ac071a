"""The client's failure paths: malformed local files and hostile inputs end in one
line on stderr and a non-zero exit code (never a traceback), and the running slot is untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers_client import PY, ROOT, env, make_repo, release_cli, write_tree


def client_cli(install_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(install_dir), *args], cwd=ROOT,
                          env=env(),
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("bad-local-state")
    repo = make_repo(base)
    src = base / "src"
    write_tree(src, {"bin/app": "#!/bin/sh\necho 1\n", "a.txt": "hello\n"})
    release_cli("publish", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", "1.0.0",
                "--type", "patch", "--platform", "any", str(src))
    d = base / "install"
    assert client_cli(d, "init", "--repo", str(repo.dir), "--root", str(repo.root_json), "--platform", "any"
                      ).returncode == 0
    assert client_cli(d, "install").returncode == 0
    return d


@pytest.fixture
def install_dir(installed: Path, tmp_path: Path) -> Path:
    d = tmp_path / "install"
    shutil.copytree(installed, d, symlinks=True)
    return d


def assert_one_line_failure(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_fleet_record_with_wrong_types_does_not_crash_status(install_dir: Path) -> None:
    (install_dir / "fleet.json").write_text(json.dumps(
        {"groups": 5, "newest_signed_time": 7, "channel": [1], "clock_note": 3, "installed_yanked": "x"}))
    proc = client_cli(install_dir, "status")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "1.0.0 in slot a" in proc.stdout


def _edit_state(install_dir: Path, edit: dict[str, object]) -> None:
    path = install_dir / "state.json"
    doc = json.loads(path.read_text())
    doc["slots"]["a"].update(edit)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("version", ["garbage!!", 5])
@pytest.mark.parametrize("command", ["status", "verify"])
def test_state_with_a_malformed_slot_version_is_reported_in_one_line(
    install_dir: Path, version: object, command: str
) -> None:
    _edit_state(install_dir, {"version": version})
    proc = client_cli(install_dir, command)
    assert_one_line_failure(proc)
    assert "state file" in proc.stderr
    assert (install_dir / "current").resolve() == (install_dir / "slots" / "a").resolve()


@pytest.mark.parametrize("version", ["garbage!!", 5])
def test_install_rebuilds_a_state_with_a_malformed_slot_version(install_dir: Path, version: object) -> None:
    _edit_state(install_dir, {"version": version})
    proc = client_cli(install_dir, "install")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert json.loads((install_dir / "state.json").read_text())["slots"]["a"]["version"] == "1.0.0"


def test_run_with_a_missing_entry_point_is_one_line(install_dir: Path) -> None:
    _edit_state(install_dir, {"entry_point": "bin/missing"})
    proc = client_cli(install_dir, "run")
    assert_one_line_failure(proc)
    assert "bin/missing" in proc.stderr


def _replace_with_dir(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.mkdir()


def _replace_with_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("x\n")


@pytest.mark.parametrize(("obstacle", "command"), [
    ("lock", "check"),        # e.g. a lock file this user may not open
    ("lock", "install"),
    ("history.jsonl", "history"),
])
def test_unusable_local_file_is_one_line(install_dir: Path, obstacle: str, command: str) -> None:
    _replace_with_dir(install_dir / obstacle)
    proc = client_cli(install_dir, command)
    assert_one_line_failure(proc)
    assert obstacle in proc.stderr
    assert (install_dir / "current").resolve() == (install_dir / "slots" / "a").resolve()


@pytest.mark.parametrize(("obstacle", "command"), [("tuf", "check")])
def test_unusable_local_directory_is_one_line(install_dir: Path, obstacle: str, command: str) -> None:
    _replace_with_file(install_dir / obstacle)
    proc = client_cli(install_dir, command)
    assert_one_line_failure(proc)
    assert obstacle in proc.stderr
    assert (install_dir / "current").resolve() == (install_dir / "slots" / "a").resolve()


@pytest.mark.parametrize(("obstacle", "command"), [("cache", "check"), ("manifests", "verify")])
def test_a_file_in_place_of_a_working_directory_is_removed_as_the_entry(install_dir: Path, obstacle: str,
                                                                        command: str) -> None:
    """The client's own working directories (issue 17, class 5): a stray file there is replaced by
    the directory, under the lock, and the command works."""
    if obstacle == "manifests":
        for m in (install_dir / "manifests").iterdir():
            m.unlink()
    _replace_with_file(install_dir / obstacle)
    proc = client_cli(install_dir, command)
    assert proc.returncode == 0, proc.stderr
    assert (install_dir / obstacle).is_dir()
    assert (install_dir / "current").resolve() == (install_dir / "slots" / "a").resolve()


def test_config_set_on_a_full_disk_is_one_line(install_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from click.testing import CliRunner

    from pinnacle_updates.client.cli import cli
    from pinnacle_updates.client.errors import ConfigError
    from pinnacle_updates.formats import fsutil

    before = (install_dir / "config.toml").read_bytes()

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "atomic_write", full)
    result = CliRunner().invoke(cli, ["--install-dir", str(install_dir), "config", "set", "check_interval", "60"])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == ConfigError.exit_code
    assert "No space left on device" in result.output
    assert (install_dir / "config.toml").read_bytes() == before


@pytest.mark.parametrize("command", ["check", "install"])
def test_requested_version_that_is_not_pep440_is_one_line(install_dir: Path, command: str) -> None:
    proc = client_cli(install_dir, command, "garbage!!")
    assert_one_line_failure(proc)
    assert "garbage!!" in proc.stderr
    assert (install_dir / "current").resolve() == (install_dir / "slots" / "a").resolve()


def test_install_with_the_slots_directory_gone_does_not_crash(install_dir: Path) -> None:
    shutil.rmtree(install_dir / "slots")
    proc = client_cli(install_dir, "install", "--force")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 1, proc.stderr


@pytest.mark.parametrize("status", [404, 500])
def test_webhook_failure_does_not_publish_the_webhook_url(status: int) -> None:
    # the agent shows only whether a webhook is set (the URL often is the credential), while the
    # notifier's last error is served by the unauthenticated GET /api/updates/status
    from pinnacle_updates.client.agent.notify import Notification, Notifier, NotifySettings
    from tests.agent_server import Receiver

    with Receiver(status=status, fail_first=5 if status == 500 else 0) as rx:
        url = rx.url.rstrip("/") + "/T000-s3cr3t-hook-path"
        s = NotifySettings(notify_on=frozenset({"success"}), webhook_url=url, retries=1)
        n = Notifier(lambda: s, backoff=0.01, timeout=5.0)
        try:
            n.notify(Notification("success", "1.0.0", "1.1.0", "committed", "", "c" * 32))
            for _ in range(500):
                if n.stats()["failed"]:
                    break
                time.sleep(0.02)
            stats = n.stats()
        finally:
            n.close(timeout=5)
    assert stats["failed"] == 1
    assert str(status) in stats["last_error"]
    assert "s3cr3t" not in stats["last_error"]
