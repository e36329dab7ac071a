"""Every exit code of the shared table (``formats.exitcodes``), each provoked for real through the
CLIs (a real repository served by nginx, real install directories, real hooks; click's runner in
this process to keep the file fast, and separate processes where a process matters: a usage error
as typed, Ctrl-C while waiting for the lock, an update that rolls back); the ``--json`` error line
of each failure parses and names the same code. And the rollback semantics of
issue 21: a manual rollback records the version as rolled back (installable by name), ``--mark-bad``
makes it bad (refused, with the exact command that overrides it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pinnacle_updates.client.cli import cli as update_cli
from pinnacle_updates.client.policy import UpdateConfig, decide
from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.repo_tools.cli import cli as release_cli
from tests.client.test_policy import rel
from tests.helpers_client import (
    PY,
    ROOT,
    Repo,
    app_files,
    env,
    hold_lock,
    init_client,
    make_repo,
    publish,
    serve,
)


@dataclass(frozen=True)
class World:
    base: Path
    repo: Repo
    url: str
    on_v11: Path  # an install directory running 1.1.0 (1.0.0 in the other slot); copy before changing it


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("codes")
    repo = make_repo(base)
    publish(repo, "1.0.0", app_files("1.0.0"))
    publish(repo, "1.1.0", app_files("1.1.0"))
    with serve(repo.dir) as url:
        on_v11 = base / "on-v11"
        installer = init_client(on_v11, url, repo)
        installer.install("1.0.0")
        installer.install("1.1.0")
        publish(repo, "1.2.0", app_files("1.2.0", healthy=False))  # its health check fails
        yield World(base, repo, url, on_v11)


def _copy(world: World, name: str) -> Path:
    dest = world.base / name
    shutil.copytree(world.on_v11, dest, symlinks=True)
    return dest


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _invoke(cli: click.Command, prog: str, args: list[str]) -> Ran:
    result = CliRunner().invoke(cli, args, prog_name=prog)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def update(d: Path, *args: str, process: bool = False) -> Ran:
    if not process:
        return _invoke(update_cli, "pinnacle-update", ["--install-dir", str(d), *args])
    proc = subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(d), *args], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=90, check=False)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def release(*args: str) -> Ran:
    return _invoke(release_cli, "pinnacle-release", list(args))


def _last(stdout: str) -> Any:
    """The result document of --json: all of stdout, or its last line when progress events (one JSON
    object per line) came first."""
    try:
        return json.loads(stdout)
    except ValueError:
        return json.loads(stdout.strip().splitlines()[-1])


def _fails(proc: Ran, code: ExitCode) -> str:
    """A failure with ``code``: one line on stderr, no traceback; returns the line."""
    assert proc.returncode == code, (proc.returncode, code, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], proc.stderr
    return lines[0]


def _fails_json(proc: Ran, code: ExitCode) -> dict[str, object]:
    """The same failure under --json: the last stdout line (or, after a printed result, stderr's one line)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    where = proc.stderr if proc.stderr.strip() else proc.stdout
    error = json.loads(where.strip().splitlines()[-1])["error"]
    assert (error["code"], error["name"]) == (int(code), code.name.lower()) and error["message"], error
    assert isinstance(error, dict)
    return error


# -- one case per code -----------------------------------------------------------------------------------------
def _ok(w: World) -> None:
    assert update(w.on_v11, "status").returncode == ExitCode.OK


def _internal(w: World) -> None:
    # a refusal no subclass names yet is the root error: 1 (nginx-config's unquotable path)
    proc = release("nginx-config", "/srv/re$po")
    assert "cannot go into an nginx configuration" in _fails(proc, ExitCode.INTERNAL)


def _usage(w: World) -> None:
    typed = update(w.on_v11, "status", "--bogus", process=True)  # as a shell runs it
    assert "No such option '--bogus'" in _fails(typed, ExitCode.USAGE)
    _fails_json(update(w.on_v11, "status", "--json", "--bogus"), ExitCode.USAGE)


def _config(w: World) -> None:
    empty = w.base / "not-initialised"
    empty.mkdir(exist_ok=True)
    assert "no config at" in _fails(update(empty, "status"), ExitCode.CONFIG)
    _fails_json(update(empty, "status", "--json"), ExitCode.CONFIG)


def _unreachable(w: World) -> Path:
    d = w.base / "unreachable"
    if not d.exists():
        d = _copy(w, "unreachable")
        assert update(d, "config", "set", "repo_url", "http://127.0.0.1:9/").returncode == 0  # discard port
    return d


def _network(w: World) -> None:
    d = _unreachable(w)
    _fails(update(d, "check"), ExitCode.NETWORK)
    _fails_json(update(d, "check", "--json"), ExitCode.NETWORK)


def _verification(w: World) -> None:
    d = _copy(w, "tampered")
    (d / "current" / "VERSION").write_text("tampered\n")
    assert "pinnacle-update repair" in _fails(update(d, "verify"), ExitCode.VERIFICATION)
    proc = update(d, "verify", "--json")  # the report on stdout (one document), the error line on stderr
    assert _last(proc.stdout)["ok"] is False
    _fails_json(proc, ExitCode.VERIFICATION)
    # the publisher's verify: the same code for the same meaning
    repo = w.base / "tampered-repo"
    shutil.copytree(w.repo.dir, repo)
    target = next(p for p in sorted((repo / "targets").rglob("*")) if p.is_file() and p.stat().st_size > 100)
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    _fails_json(release("verify", str(repo), "--json"), ExitCode.VERIFICATION)
    proc = release("verify", str(repo))
    assert proc.returncode == ExitCode.VERIFICATION and proc.stderr.strip().splitlines()[-1].startswith(
        "pinnacle-release: error: verification failed")


def _install_failed(w: World) -> None:
    d = _copy(w, "pre-install-fails")
    assert update(d, "config", "set", "pre_install", "echo 'port 80 in use' >&2; exit 4").returncode == 0
    line = _fails(update(d, "install", "1.2.0"), ExitCode.INSTALL_FAILED)
    assert "port 80 in use" in line and "nothing was" in line
    assert _last(update(d, "status", "--json").stdout)["version"] == "1.1.0"


def _rolled_back(w: World) -> None:
    d = _copy(w, "broken-update")
    error = _fails_json(update(d, "install", "1.2.0", "--json", process=True), ExitCode.ROLLED_BACK)
    assert "rolled back to 1.1.0" in str(error["message"])
    status = _last(update(d, "status", "--json").stdout)
    assert status["version"] == "1.1.0" and "1.2.0" in status["bad_versions"]  # an automatic rollback: bad


def _busy(w: World) -> None:
    with hold_lock(w.on_v11):
        assert "--wait" in _fails(update(w.on_v11, "install"), ExitCode.BUSY)
        _fails_json(update(w.on_v11, "check", "--json"), ExitCode.BUSY)


def _state(w: World) -> None:
    d = w.base / "nothing-installed"
    init_client(d, w.url, w.repo)
    assert "nothing is installed" in _fails(update(d, "rollback"), ExitCode.STATE)


def _backup(w: World) -> None:
    line = _fails(update(w.on_v11, "backups", "show", "20200101T000000000Z-abcd"), ExitCode.BACKUP)
    assert "no backup 20200101T000000000Z-abcd" in line


def _keys(w: World) -> None:
    empty = w.base / "no-keys"
    empty.mkdir(exist_ok=True)
    src = w.repo.dir.parent / "src-stable-1.1.0"
    proc = release("publish", str(w.repo.dir), str(src), "--keys", str(empty), "--channel", "stable",
                   "--version", "9.0.0", "--type", "patch", "--platform", "any")
    _fails(proc, ExitCode.KEYS)


def _unsafe_input(w: World) -> None:
    src = w.base / "src-con"
    (src / "bin").mkdir(parents=True, exist_ok=True)
    (src / "bin" / "CON").write_text("a reserved device name on Windows\n")
    proc = release("publish", str(w.repo.dir), str(src), "--keys", str(w.repo.keys), "--channel", "stable",
                   "--version", "9.0.0", "--type", "patch", "--platform", "any")
    assert "reserved device name on Windows" in _fails(proc, ExitCode.UNSAFE_INPUT)


def _refused(w: World) -> None:
    src = w.repo.dir.parent / "src-stable-1.0.0"
    proc = release("publish", str(w.repo.dir), str(src), "--keys", str(w.repo.keys), "--channel", "stable",
                   "--version", "1.0.0", "--type", "patch", "--platform", "any")
    _fails(proc, ExitCode.REFUSED)  # not newer than what the channel has
    line = _fails(update(w.on_v11, "install", "1.1.0"), ExitCode.REFUSED)
    assert "already installed; 'install 1.1.0 --force' reinstalls it" in line


def _expiring_soon(w: World) -> None:
    proc = release("status", str(w.repo.dir), "--warn-days", "100000", "--json")
    assert "timestamp" in _last(proc.stdout)["roles"]  # the status document, then the error line on stderr
    assert "expire within" in str(_fails_json(proc, ExitCode.EXPIRING_SOON)["message"])


def _object_store(w: World) -> None:
    proc = release("sync", str(w.repo.dir), "s3://x/prefix")  # "x" is no bucket name: refused before any request
    assert "not an s3://BUCKET[/PREFIX] URL" in _fails(proc, ExitCode.OBJECT_STORE)


def _no_update(w: World) -> None:
    d = w.base / "on-beta"  # nothing is published on beta: nothing to install
    init_client(d, w.url, w.repo)
    assert update(d, "config", "set", "channel", "beta").returncode == 0
    assert update(d, "check").returncode == ExitCode.OK  # the default stays: no update is no failure
    proc = update(d, "check", "--exit-code", "--json")
    assert proc.returncode == ExitCode.NO_UPDATE and _last(proc.stdout)["update_available"] is False
    assert update(d, "install", "--exit-code").returncode == ExitCode.NO_UPDATE
    assert update(w.on_v11, "check", "--exit-code").returncode == ExitCode.OK  # 1.2.0 is there for it


def _unhealthy(w: World) -> None:
    d = _copy(w, "unhealthy")
    assert update(d, "config", "set", "health_command", "false").returncode == 0
    assert "unhealthy" in _fails(update(d, "health-check"), ExitCode.UNHEALTHY)
    proc = update(d, "health-check", "--json")
    assert _last(proc.stdout)["healthy"] is False
    _fails_json(proc, ExitCode.UNHEALTHY)


def _checks_failed(w: World) -> None:
    proc = update(_unreachable(w), "doctor", "--json")
    by_name = {c["name"]: c["status"] for c in _last(proc.stdout)}
    assert by_name["repository"] == "fail" and by_name["config"] == "ok"
    assert "repository" in str(_fails_json(proc, ExitCode.CHECKS_FAILED)["message"])


def _interrupted(w: World) -> None:
    d = _copy(w, "interrupted")
    with hold_lock(d):
        # Python turns SIGINT into KeyboardInterrupt only when it starts with SIGINT at its default: a suite run
        # as a background job (`make test &`, nohup) hands its children SIGINT ignored, as a shell should
        proc = subprocess.Popen([PY, "-m", "pinnacle_updates.client", "--install-dir", str(d), "install", "--wait"],
                                cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # start-up on a loaded 2-core machine can take many seconds: interrupt it only once it waits for the
        # lock (a SIGINT during start-up is a different case), and never hang the suite if it does not get there
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not _waits_for_lock(proc.pid, d / "lock"):
            time.sleep(0.1)
        waiting = _waits_for_lock(proc.pid, d / "lock")
        proc.send_signal(signal.SIGINT if waiting else signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert waiting, ("the install never waited for the lock", proc.returncode, out, err)
    assert proc.returncode == ExitCode.INTERRUPTED, (proc.returncode, out, err)
    assert err.strip().endswith("pinnacle-update: error: interrupted") and "Traceback" not in err


def _waits_for_lock(pid: int, lock: Path) -> bool:
    """The process has opened ``lock``, i.e. it is past start-up and trying it (it polls: fsutil.exclusive_lock)."""
    try:
        return any(os.readlink(fd) == str(lock) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


CASES: dict[ExitCode, Callable[[World], None]] = {
    ExitCode.OK: _ok, ExitCode.INTERNAL: _internal, ExitCode.USAGE: _usage, ExitCode.CONFIG: _config,
    ExitCode.NETWORK: _network, ExitCode.VERIFICATION: _verification, ExitCode.INSTALL_FAILED: _install_failed,
    ExitCode.ROLLED_BACK: _rolled_back, ExitCode.BUSY: _busy, ExitCode.STATE: _state, ExitCode.BACKUP: _backup,
    ExitCode.KEYS: _keys, ExitCode.UNSAFE_INPUT: _unsafe_input, ExitCode.REFUSED: _refused,
    ExitCode.EXPIRING_SOON: _expiring_soon, ExitCode.OBJECT_STORE: _object_store, ExitCode.NO_UPDATE: _no_update,
    ExitCode.UNHEALTHY: _unhealthy, ExitCode.CHECKS_FAILED: _checks_failed, ExitCode.INTERRUPTED: _interrupted,
}


def test_every_code_has_a_case() -> None:
    assert set(CASES) == set(ExitCode)


@pytest.mark.parametrize("code", list(ExitCode), ids=[c.name.lower() for c in ExitCode])
def test_exit_code(world: World, code: ExitCode) -> None:
    CASES[code](world)


# -- rollback semantics ------------------------------------------------------------------------------------------
def test_a_manual_rollback_is_not_a_verdict_and_mark_bad_is(world: World) -> None:
    d = _copy(world, "manual-rollback")
    back = _last(update(d, "rollback", "--json").stdout)
    assert (back["from_version"], back["version"]) == ("1.1.0", "1.0.0")
    status = _last(update(d, "status", "--json").stdout)
    assert "1.1.0" in status["rolled_back_versions"] and "1.1.0" not in status["bad_versions"]
    # automatic updates skip it (the newer 1.2.0 is still offered), a request by name takes it, no flag needed
    check = _last(update(d, "check", "--json").stdout)
    assert check["version"] == "1.2.0"  # a newer release is offered as usual (the skip itself: the test below)
    installed = _last(update(d, "install", "1.1.0", "--json").stdout)
    assert (installed["outcome"], installed["version"]) == ("committed", "1.1.0")
    status = _last(update(d, "status", "--json").stdout)
    assert status["rolled_back_versions"] == {} and status["bad_versions"] == {}  # committed again: no mark

    text = update(d, "rollback", "--mark-bad")
    assert text.returncode == ExitCode.OK
    assert "1.1.0 is marked bad: 'pinnacle-update install 1.1.0 --force' installs it again" in text.stdout
    status = _last(update(d, "status", "--json").stdout)
    assert "1.1.0" in status["bad_versions"] and "1.1.0" not in status["rolled_back_versions"]
    line = _fails(update(d, "install", "1.1.0"), ExitCode.REFUSED)
    assert line.endswith("1.1.0 (patch) is marked bad (this machine rolled back from it); "
                         "'install 1.1.0 --force' installs it anyway"), line
    forced = update(d, "install", "1.1.0", "--force")
    assert forced.returncode == ExitCode.OK, forced.stderr
    assert _last(update(d, "status", "--json").stdout)["bad_versions"] == {}


def test_policy_skips_a_rolled_back_version_unless_asked_by_name() -> None:
    releases = [rel("1.0.0"), rel("1.1.0")]
    auto = decide(releases, "1.0.0", UpdateConfig(), rolled_back={"1.1.0"})
    assert auto.release is None and auto.reason == (
        "no eligible update: 1.1.0 skipped (rolled back by the operator (install 1.1.0 takes it again))")
    assert decide(releases, "1.0.0", UpdateConfig(), rolled_back={"1.1.0"}, force=True).release == releases[1]
    asked = decide(releases, "1.0.0", UpdateConfig(), rolled_back={"1.1.0"}, requested_version="1.1.0")
    assert asked.release == releases[1] and asked.reason == "1.1.0 (patch) as requested"
    bad = decide(releases, "1.0.0", UpdateConfig(), bad_versions={"1.1.0"}, requested_version="1.1.0")
    assert bad.release is None and "'install 1.1.0 --force' installs it anyway" in bad.reason


def test_a_lost_state_file_keeps_the_operators_rollback(world: World) -> None:
    """The mark is rebuilt from the history, so a rebuilt state does not reinstall what a person left."""
    d = _copy(world, "rebuilt")
    assert update(d, "rollback").returncode == ExitCode.OK
    (d / "state.json").write_bytes(b'{"schema": 1, "state": "comm')
    assert update(d, "recover").returncode == ExitCode.OK
    status = _last(update(d, "status", "--json").stdout)
    assert "1.1.0" in status["rolled_back_versions"] and status["bad_versions"] == {}


def test_config_show_is_toml(world: World) -> None:
    d = _copy(world, "config-show")
    assert update(d, "config", "set", "webhook_url", "http://u:hunter2@127.0.0.1:9/hook").returncode == 0
    shown = update(d, "config", "show")
    as_toml = tomllib.loads(shown.stdout)
    as_json = _last(update(d, "config", "show", "--json").stdout)
    assert as_toml == as_json and as_toml["health_retries"] == 2 and "hunter2" not in shown.stdout
    assert tomllib.loads((d / "config.toml").read_text())["webhook_url"].endswith("hunter2@127.0.0.1:9/hook")
