"""The ``pinnacle-update`` CLI as a user runs it: separate processes against a real repository served over
HTTP by ``pinnacle-release serve`` on 127.0.0.1. (``run`` is covered elsewhere.)"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import ServedRepo, result_json, run_cli, tree_digest, write_tree

V1, V2 = "1.0.0", "1.1.0"
PERSISTENT = ("logs", "uploads", "temp")


# ----- fixtures and helpers ---------------------------------------------------------------------------
class Published:
    """A repository with ``V1`` (patch) and ``V2`` (minor) on ``stable``, platform ``any``."""

    def __init__(self, repo: Repository, sources: dict[str, Path], releases: dict[str, dict[str, Any]]) -> None:
        self.repo = repo
        self.sources = sources
        self.releases = releases

    @property
    def root_json(self) -> Path:
        return self.repo.path / "metadata" / "1.root.json"


def _app(root: Path, version: str) -> Path:
    """A small app tree in which every file differs between versions."""
    return write_tree(
        root,
        {
            "bin/app": f"#!/bin/sh\necho app {version}\n",
            "share/VERSION": version,
            "lib/data.bin": version.encode() * 3000,
            "lib/pkg/mod.py": f"VERSION = {version!r}\n",
        },
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Published:
    base = tmp_path_factory.mktemp("cli-repo")
    repo = Repository(base / "repo")
    keys = KeyStore(keys_dir)
    ops.init_repository(repo, keys)
    sources, releases = {}, {}
    for version, kind in ((V1, "patch"), (V2, "minor")):
        sources[version] = _app(base / f"src-{version}", version)
        request = ops.PublishRequest("stable", version, kind, "any", sources[version], entry_point="bin/app")
        releases[version] = ops.publish(repo, keys, request)["release"]
    return Published(repo, sources, releases)


@pytest.fixture
def served(published: Published, serve: Callable[[Path], ServedRepo]) -> ServedRepo:
    return serve(published.repo.path)


def update(d: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pinnacle-update --install-dir D ARGS``; must succeed."""
    return run_cli("pinnacle-update", "--install-dir", str(d), *args, env=env)


def update_json(d: Path, *args: str) -> Any:
    return result_json(update(d, *args, "--json").stdout)


def fails(d: Path | None, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail cleanly: non-zero exit, exactly one stderr line, no traceback.
    Returns that line."""
    prefix = ("--install-dir", str(d)) if d is not None else ()
    proc = run_cli("pinnacle-update", *prefix, *args, env=env, check=False)
    assert proc.returncode != 0, f"expected a failure, got exit 0:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    if "--json" in args:  # the error is one JSON line on stdout, the last one, and nothing on stderr
        error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
        assert error["code"] == proc.returncode and proc.stderr == "", (proc.stdout, proc.stderr)
        return f"pinnacle-update: error: {error['message']}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("pinnacle-update: error: ")
    return lines[0]


def init(d: Path, published: Published, served: ServedRepo, *install: str) -> None:
    """``init`` against the served repository, then ``install`` each of ``install`` in turn."""
    update(
        d, "init", "--repo", served.url, "--root", str(published.root_json), "--channel", "stable", "--platform", "any"
    )
    for version in install:
        update(d, "install", version)


def release_digest(root: Path) -> dict[str, str]:
    """``tree_digest`` without the persistent-path links every slot carries."""
    return {k: v for k, v in tree_digest(root).items() if k.split("/", 1)[0] not in PERSISTENT}


def state_digest(d: Path) -> dict[str, str]:
    """Everything an install decision could change (the lock file only records the last pid)."""
    return {k: v for k, v in tree_digest(d).items() if k != "lock"}


def config_values(d: Path) -> dict[str, Any]:
    return tomllib.loads((d / "config.toml").read_text())


# ----- init and the install directory option ---------------------------------------------------------------
def test_init_writes_config_and_root_and_refuses_a_second_init(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    out = update_json(
        d, "init", "--repo", served.url, "--root", str(published.root_json), "--channel", "beta", "--platform", "any"
    )
    assert out["install_dir"] == str(d) and out["channel"] == "beta"
    cfg = config_values(d)
    assert cfg["repo_url"] == served.url
    assert cfg["channel"] == "beta" and cfg["platform"] == "any"
    assert len(cfg["client_id"]) >= 16 and cfg["client_id"] == out["client_id"]
    assert (d / "root.json").read_bytes() == published.root_json.read_bytes()
    before = state_digest(d)

    line = fails(d, "init", "--repo", served.url, "--root", str(published.root_json))
    assert "already initialised" in line
    assert state_digest(d) == before  # same client id, same root, same state


def test_install_dir_from_the_environment(tmp_path: Path, published: Published, served: ServedRepo) -> None:
    d = tmp_path / "from-env"
    env = {"PINNACLE_INSTALL_DIR": str(d)}
    run_cli("pinnacle-update", "init", "--repo", served.url, "--root", str(published.root_json), env=env)
    assert (d / "config.toml").is_file()
    status = json.loads(run_cli("pinnacle-update", "status", "--json", env=env).stdout)
    assert status["install_dir"] == str(d) and status["version"] is None
    # the option wins over the environment
    other = tmp_path / "other"
    line = fails(other, "status", env=env)
    assert str(other) in line and "init" in line


def test_a_command_on_an_uninitialised_directory_is_one_line(tmp_path: Path) -> None:
    line = fails(tmp_path / "nothing-here", "status", "--json")
    assert "config" in line and "init" in line


# ----- check, install, status ---------------------------------------------------------------------------
def test_check_json_before_and_after_install(tmp_path: Path, published: Published, served: ServedRepo) -> None:
    d = tmp_path / "inst"
    init(d, published, served)
    v2 = published.releases[V2]
    want = {
        "current_version": None,
        "update_available": True,
        "version": V2,
        "type": "minor",
        "download_bytes": v2["full"]["length"] + v2["manifest"]["length"],
        "path": "full",  # nothing installed: no delta applies
    }
    found = update_json(d, "check")
    assert {k: found[k] for k in want} == want
    assert not (d / "current").exists()  # check installs nothing

    update(d, "install", V1)
    found = update_json(d, "check")
    with_delta = {"path": found["path"], "download_bytes": found["download_bytes"]}
    assert {k: found[k] for k in want} == want | {"current_version": V1} | with_delta
    assert found["path"] in ("full", f"delta:{V1}->{V2}") and found["download_bytes"] <= want["download_bytes"]

    update(d, "install")
    found = update_json(d, "check")
    assert {k: found[k] for k in want} == {
        "current_version": V2,
        "update_available": False,
        "version": None,
        "type": None,
        "download_bytes": 0,
        "path": None,
    }


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in stdout.splitlines()[:-1]]  # every stdout line but the result is an event


def test_install_version_then_newest_with_json_progress(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served)

    proc = update(d, "install", V1, "--json")
    first = result_json(proc.stdout)
    assert (first["outcome"], first["version"], first["previous_version"], first["slot"]) == (
        "committed",
        V1,
        None,
        "a",
    )
    events = _events(proc.stdout)
    download = [e for e in events if e["phase"] == "download"]  # formats.progress: phase, progress..., done
    assert download and download[0]["event"] == "phase" and download[-1]["event"] == "done", events
    full_length = published.releases[V1]["full"]["length"]
    for e in download:
        assert isinstance(e["done"], int) and e["unit"] == "bytes"
        assert 0 <= e["done"] <= e["total"] == full_length
    assert download[-1]["done"] == full_length
    assert first["bytes_downloaded"] >= full_length

    second = update_json(d, "install")
    assert (second["outcome"], second["version"], second["previous_version"], second["slot"]) == (
        "committed",
        V2,
        V1,
        "b",
    )

    again = update_json(d, "install")
    assert again["outcome"] == "up_to_date" and again["version"] == V2

    status = update_json(d, "status")
    assert {k: status[k] for k in ("version", "slot", "channel", "state")} == {
        "version": V2,
        "slot": "b",
        "channel": "stable",
        "state": "committed",
    }
    assert (d / "current").resolve() == (d / "slots" / "b").resolve()
    assert release_digest(d / "current") == release_digest(published.sources[V2])
    assert release_digest(d / "slots" / "a") == release_digest(published.sources[V1])  # the previous version


def test_install_of_a_version_that_does_not_exist_changes_nothing(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served, V1)
    before = state_digest(d)
    line = fails(d, "install", "9.9.9", "--json")
    assert "9.9.9" in line
    assert state_digest(d) == before
    assert update_json(d, "status")["version"] == V1


# ----- config -------------------------------------------------------------------------------------
def test_config_set_validates_and_refuses_cleanly(tmp_path: Path, published: Published, served: ServedRepo) -> None:
    d = tmp_path / "inst"
    init(d, published, served)
    assert config_values(d).get("health_retries", 3) != 2
    update(d, "config", "set", "health_retries", "2")
    assert config_values(d)["health_retries"] == 2
    assert update_json(d, "config", "show")["health_retries"] == 2
    before = (d / "config.toml").read_bytes()

    line = fails(d, "config", "set", "nonsense", "1")
    assert "nonsense" in line
    line = fails(d, "config", "set", "health_retries", "abc")
    assert "health_retries" in line and "abc" in line
    assert (d / "config.toml").read_bytes() == before


# ----- rollback and history ---------------------------------------------------------------------------
def test_rollback_swaps_back_and_refuses_without_a_previous_slot(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served, V1)
    before = state_digest(d)
    line = fails(d, "rollback")
    assert "no previous version" in line
    assert state_digest(d) == before

    update(d, "install", V2)
    back = update_json(d, "rollback")
    assert (back["version"], back["slot"], back["from_version"], back["from_slot"]) == (V1, "a", V2, "b")
    assert (d / "current").resolve() == (d / "slots" / "a").resolve()
    assert (d / "current" / "share" / "VERSION").read_text() == V1
    status = update_json(d, "status")
    assert (status["version"], status["slot"]) == (V1, "a")


def test_history_json_lists_checks_installs_and_rollbacks(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served)
    assert update_json(d, "history") == []
    update(d, "check")
    update(d, "install", V1)
    update(d, "install", V2)
    update(d, "rollback")
    records = update_json(d, "history")
    assert [r["op"] for r in records] == ["check", "install", "install", "rollback"]
    check, first, second, back = records
    assert check["version"] == V2 and check["update_available"] is True
    assert check["requests"] > 0 and check["bytes"] > 0
    assert (first["version"], first["outcome"], first["slot"]) == (V1, "committed", "a")
    assert (second["version"], second["from_version"], second["outcome"]) == (V2, V1, "committed")
    assert second["sha256"] == published.releases[V2]["content"]["sha256"]
    assert (back["version"], back["from_version"], back["outcome"]) == (V1, V2, "rolled_back")
    assert update_json(d, "history", "--limit", "1") == [back]


def test_history_text_shows_when_each_record_happened(tmp_path: Path, published: Published, served: ServedRepo) -> None:
    d = tmp_path / "inst"
    init(d, published, served)
    update(d, "check")
    update(d, "install", V1)
    records = update_json(d, "history")
    lines = update(d, "history").stdout.splitlines()
    assert len(lines) == len(records) == 2
    for line, record in zip(lines, records, strict=True):
        assert record["ts"] in line


# ----- verify, repair, health-check, doctor ------------------------------------------------------------------
def test_verify_finds_a_modified_file_and_repair_fixes_it(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served, V1, V2)
    assert update(d, "verify").returncode == 0
    assert update_json(d, "verify")["ok"] is True

    target = d / "current" / "lib" / "pkg" / "mod.py"
    original = target.read_bytes()
    target.write_bytes(b"import os; os.system('evil')\n")
    proc = run_cli("pinnacle-update", "--install-dir", str(d), "verify", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "lib/pkg/mod.py" in proc.stdout
    report = json.loads(run_cli("pinnacle-update", "--install-dir", str(d), "verify", "--json", check=False).stdout)
    assert report["ok"] is False
    assert any("lib/pkg/mod.py" in p for s in report["slots"] for p in s["problems"])

    repaired = update_json(d, "repair")
    assert repaired["version"] == V2
    assert update(d, "verify").returncode == 0
    assert (d / "current" / "lib" / "pkg" / "mod.py").read_bytes() == original
    assert release_digest(d / "current") == release_digest(published.sources[V2])
    assert update_json(d, "status")["version"] == V2


def test_rollback_after_repair_does_not_activate_the_modified_copy(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served, V1, V2)
    (d / "current" / "lib" / "pkg" / "mod.py").write_text("tampered\n")
    update(d, "repair")
    run_cli("pinnacle-update", "--install-dir", str(d), "rollback", check=False)  # a refusal is fine too
    assert run_cli("pinnacle-update", "--install-dir", str(d), "verify", check=False).returncode == 0
    status = update_json(d, "status")
    assert status["version"] not in status["bad_versions"]


def test_health_check_runs_in_the_active_slot_and_fails_non_zero(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served, V1)
    update(d, "config", "set", "health_retries", "1")
    update(d, "config", "set", "health_command", f"grep -q {V1} share/VERSION")  # cwd: the active slot
    healthy = update_json(d, "health-check")
    assert healthy["healthy"] is True

    update(d, "config", "set", "health_command", f"grep -q {V2} share/VERSION")
    proc = run_cli("pinnacle-update", "--install-dir", str(d), "health-check", "--json", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["healthy"] is False


def test_doctor_json_lists_checks_and_notices_an_unreachable_repository(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served, V1)
    checks = update_json(d, "doctor")
    assert isinstance(checks, list)
    by_name = {c["name"]: c for c in checks}
    assert {"config", "state", "permissions", "free space", "lock", "repository", "clock"} <= set(by_name)
    assert all(c["status"] == "ok" for c in checks), checks
    assert all(isinstance(c["detail"], str) and c["detail"] for c in checks)

    served.stop()
    proc = run_cli("pinnacle-update", "--install-dir", str(d), "doctor", "--json", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    by_name = {c["name"]: c for c in json.loads(proc.stdout)}
    assert by_name["repository"]["status"] == "fail"
    assert by_name["config"]["status"] == "ok"


def test_errors_are_one_line_for_every_refusal_on_an_empty_install(
    tmp_path: Path, published: Published, served: ServedRepo
) -> None:
    d = tmp_path / "inst"
    init(d, published, served)
    before = state_digest(d)
    for args in (("rollback",), ("verify",), ("repair",), ("health-check",)):
        line = fails(d, *args)
        assert "nothing is installed" in line, (args, line)
    assert {k: v for k, v in state_digest(d).items() if k != "history.jsonl"} == {
        k: v for k, v in before.items() if k != "history.jsonl"
    }
    assert not os.path.lexists(d / "current")
