"""Issue 17, class 1, after the swap: whatever a value does, the running version ends checked or
rolled back, the cause is in the history, and ``status``, ``recover`` and ``install`` keep working.

Real installs (a repository made by ``pinnacle-release``, hooks and health checks as real processes,
a real ``pinnacle-update`` process for the CLI cases). The reported case first: bad values written
into config.toml by hand (bypassing ``config set``) used to be accepted by ``load`` and raise
``InvalidURL``/``UnicodeError``/``ValueError`` after the swap, leaving the state in trial and every later
command a traceback; now ``load`` refuses them before anything changes. Then the defence behind the
checks: values that reach activation without the checks (a config object built without ``validate``,
as a value a future check misses would) still end in a rollback, and an interrupted trial is finished
by ``recover`` whatever config.toml says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pinnacle_updates.client import config
from pinnacle_updates.client.errors import ConfigError, HealthCheckError, StateError
from pinnacle_updates.client.installer import Installer
from tests.client.test_config_values import write_raw
from tests.helpers_client import PY, ROOT, Repo, app_files, env, init_client, make_repo, publish, tree_digest

VERSIONS = ("1.0.0", "1.1.0", "1.2.0")

# (key, TOML literal written by hand, what used to escape after the swap)
HAND_WRITTEN = [
    ("health_url", '"http://127.0.0.1:80a/"', "InvalidURL"),
    ("health_url", '"http://a..b/health"', "UnicodeError"),
    ("post_swap", '"echo \\u0000 migrate"', "ValueError: embedded null byte"),
    ("health_timeout", "1e300", "OverflowError"),
    ("hook_timeout", "nan", "a hook that never times out"),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = make_repo(tmp_path_factory.mktemp("pub"))
    for v in VERSIONS:
        publish(r, v, app_files(v))
    return r


def _installed(tmp_path: Path, repo: Repo, **settings: object) -> tuple[Path, Installer]:
    """An install dir running 1.1.0 in slot b, with 1.0.0 in slot a (the rollback target)."""
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo, **settings)
    ins.install("1.0.0")
    ins.install("1.1.0")
    return d, ins


def _cli(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(d), *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120, check=False)


def _version(d: Path) -> str:
    return (d / "current" / "VERSION").read_text().strip()


@pytest.mark.parametrize(("key", "literal", "used_to"), HAND_WRITTEN, ids=[h[0] for h in HAND_WRITTEN])
def test_a_value_broken_by_hand_is_refused_before_the_swap_and_every_command_still_works(
        tmp_path: Path, repo: Repo, key: str, literal: str, used_to: str) -> None:
    d, ins = _installed(tmp_path, repo)
    slots = {n: tree_digest(d / "slots" / n) for n in ("a", "b")}
    write_raw(d, key, literal)

    proc = _cli(d, "install", "1.2.0")
    assert proc.returncode == ConfigError.exit_code, proc.stderr  # before anything was downloaded or swapped
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"config key {key!r}" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert _version(d) == "1.1.0" and {n: tree_digest(d / "slots" / n) for n in ("a", "b")} == slots

    status = json.loads(_cli(d, "status", "--json").stdout)  # status works and says what is wrong
    assert status["state"] == "committed" and status["version"] == "1.1.0" and not status["needs_recovery"]
    assert len(status["config_problems"]) == 1 and f"config key {key!r}" in status["config_problems"][0]
    human = _cli(d, "status")
    assert human.returncode == 0 and "CONFIG INVALID: config key" in human.stdout
    recover = _cli(d, "recover")
    assert recover.returncode == 0, recover.stderr
    assert ins.recover().actions == ()

    # fixed with config set (not by editing the file), the install goes through
    default = config.KEYS[key].default
    fix = _cli(d, "config", "set", key, str(default))
    assert fix.returncode == 0, fix.stderr
    assert ins.install("1.2.0").outcome == "committed" and _version(d) == "1.2.0"


def _with_unchecked(ins: Installer, **raw: object) -> None:
    """From now on ``ins`` works with config values that skipped every check: the loaded config
    with ``raw`` put in as they are (what a value that a check misses looks like to activation)."""
    site = ins.site
    loaded = site.config

    def unchecked() -> config.ClientConfig:
        return config.ClientConfig({**loaded().values, **raw})

    site.config = unchecked  # type: ignore[method-assign]


UNCHECKED = [
    ({"post_swap": "echo \x00 migrate"}, "post_swap `echo \\x00 migrate` exited 127: cannot run: embedded null byte"),
    ({"health_url": "http://127.0.0.1:80a/"}, "cannot be probed (InvalidURL: Invalid port: '80a')"),
    ({"health_url": "http://a..b/"}, "cannot be probed (UnicodeError"),
    ({"health_retries": "3"}, "unexpected AssertionError"),  # a value of the wrong type: the accessor refuses it
    ({"health_command": None}, "unexpected AssertionError"),
]


@pytest.mark.parametrize(("raw", "cause"), UNCHECKED, ids=[next(iter(r)) + str(i) for i, (r, _c) in
                                                           enumerate(UNCHECKED)])
def test_any_exception_after_the_swap_rolls_back_and_records_the_cause(tmp_path: Path, repo: Repo,
                                                                       raw: dict[str, object], cause: str) -> None:
    d, ins = _installed(tmp_path, repo, on_rollback="echo rolled back >> rollbacks.txt")
    slot_a = tree_digest(d / "slots" / "a")
    _with_unchecked(ins, **raw)

    with pytest.raises(HealthCheckError) as err:
        ins.install("1.2.0")
    message = str(err.value)
    assert message.startswith("1.2.0 failed after the swap (") and "rolled back to 1.1.0" in message, message
    assert cause in message and "\n" not in message
    assert _version(d) == "1.1.0" and (d / "slots/b/rollbacks.txt").read_text() == "rolled back\n"
    assert tree_digest(d / "slots" / "a") != slot_a  # 1.2.0 was staged there, the running slot b untouched

    rec = ins.history()[-1]
    assert (rec["op"], rec["outcome"], rec["version"], rec["from_version"], rec["bad_version"]) == (
        "rollback", "rolled_back", "1.1.0", "1.2.0", "1.2.0")
    assert cause in rec["reason"]
    st = ins.status()
    assert (st["state"], st["version"], st["needs_recovery"]) == ("rolled_back", "1.1.0", False)
    assert ins.recover().actions == ()
    # with the values checked again (the config as it is on disk), everything works
    del ins.site.config
    assert Installer(d).install("1.2.0", force=True).outcome == "committed" and _version(d) == "1.2.0"


def test_a_rollback_that_cannot_finish_is_one_line_and_recover_finishes_it(tmp_path: Path, repo: Repo) -> None:
    """The health check fails, then the rollback's own save fails (a hook put a directory where
    state.json is, once): one StateError line naming both; once the saved trial is back in place,
    ``recover`` resumes it from the swap, the health check fails again, and it rolls back."""
    once = ('[ -e "$PINNACLE_INSTALL_DIR/once" ] || { touch "$PINNACLE_INSTALL_DIR/once"; '
            'mv "$PINNACLE_INSTALL_DIR/state.json" "$PINNACLE_INSTALL_DIR/state.kept"; '
            'mkdir "$PINNACLE_INSTALL_DIR/state.json"; }')
    d, ins = _installed(tmp_path, repo)
    config.update_values(d, {"post_swap": once, "health_command": "false"})
    with pytest.raises(StateError) as err:
        ins.install("1.2.0")
    message = str(err.value)
    assert message.startswith("1.2.0 failed after the swap (health check failed: unhealthy after 2 attempt(s)")
    assert "the rollback did not finish (cannot save install state" in message and "\n" not in message
    assert "run `pinnacle-update recover` to finish it" in message and err.value.exit_code == StateError.exit_code
    (d / "state.json").rmdir()
    (d / "state.kept").rename(d / "state.json")
    assert json.loads((d / "state.json").read_text())["state"] == "trial"
    report = Installer(d).recover()
    assert report.actions[0].startswith("rolled back the interrupted trial of 1.2.0: 1.2.0 failed after the swap")
    assert _version(d) == "1.1.0" and Installer(d).status()["state"] == "rolled_back"


def test_recover_finishes_an_interrupted_trial_whatever_config_toml_says(tmp_path: Path, repo: Repo) -> None:
    """The install process is killed after the swap (state saved as trial), then config.toml is broken
    by hand; ``recover`` (a real process) rolls the trial back instead of failing on the config,
    with the hooks' usable values, and every command works again."""
    d, ins = _installed(tmp_path, repo, on_rollback="echo back >> rollbacks.txt")
    config.set_value(d, "post_swap", "kill -KILL $PPID; sleep 5")  # the hook's parent is the installing process
    proc = subprocess.run([sys.executable, str(ROOT / "tests/crash_driver.py"), "install", str(d), "1.2.0"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr
    assert json.loads((d / "state.json").read_text())["state"] == "trial" and _version(d) == "1.2.0"

    write_raw(d, "health_url", '"http://127.0.0.1:80a/"')
    write_raw(d, "post_swap", '""')
    status = _cli(d, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["needs_recovery"] is True, status.stderr
    rec = _cli(d, "recover")
    assert rec.returncode == 0, rec.stderr
    assert "rolled back the interrupted trial of 1.2.0: the config cannot be used to health-check it" in rec.stdout
    assert _version(d) == "1.1.0" and (d / "slots/b/rollbacks.txt").read_text() == "back\n"
    st = json.loads(_cli(d, "status", "--json").stdout)
    assert (st["state"], st["version"], st["needs_recovery"]) == ("rolled_back", "1.1.0", False)
    assert "1.2.0" not in st["bad_versions"]  # nothing was found wrong with it
    assert _cli(d, "config", "set", "health_url", "").returncode == 0
    assert ins.install("1.2.0").outcome == "committed" and _version(d) == "1.2.0"
