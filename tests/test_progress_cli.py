"""Progress as CI sees it: the commands as separate processes with stdout a pipe. Phase lines by
default, JSON-line events with ``--json`` (every stdout line parses, the result document last),
nothing with ``PINNACLE_PROGRESS=off``; failures stay one line on stderr. Publish, verify --deep,
sync, install (against a repository nginx serves) and a backup restore."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client.errors import BackupError
from pinnacle_updates.repo_tools.errors import PublishRefused, UnsafeInputError
from tests.conftest import ServedRepo, run_cli, tree_digest, write_tree

PUBLISH_PHASES = ["scan", "hash", "compress", "write", "sign"]


def _app(root: Path, version: str) -> Path:
    files: dict[str, bytes | str] = {"bin/app": f"#!/bin/sh\necho app {version}\n", "share/VERSION": version}
    for i in range(8):  # 1 MiB that changes a little between versions: the delta phase has work
        files[f"lib/part{i:02d}.bin"] = (f"{version}:{i}".encode() * 8) + bytes(range(256)) * 512
    return write_tree(root, files)


def _publish(repo: Path, keys: Path, src: Path, version: str, *extra: str,
             env: dict[str, str] | None = None, check: bool = True) -> Any:
    return run_cli("pinnacle-release", "publish", str(repo), "--keys", str(keys), "--channel", "stable",
                   "--version", version, "--type", "minor", "--platform", "any", *extra, str(src), env=env,
                   check=check)


def _json_lines(stdout: str) -> tuple[list[dict[str, Any]], Any]:
    """Every stdout line as JSON: the events, and the result (the last line)."""
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert rows, "no output"
    events, result = rows[:-1], rows[-1]
    assert all(e["event"] in ("phase", "progress", "done") for e in events), events
    assert "event" not in result
    return events, result


def _phases(events: list[dict[str, Any]]) -> list[str]:
    """The phases in the order they started; each is opened, then only moved, then done."""
    names: list[str] = []
    open_phase = None
    for e in events:
        assert e["unit"] in ("bytes", "files") and isinstance(e["done"], int) and isinstance(e["total"], int)
        assert e["elapsed"] >= 0
        if e["event"] == "phase":
            assert open_phase is None, f"{e} while {open_phase} is open"
            open_phase = e["phase"]
            names.append(e["phase"])
        else:
            assert e["phase"] == open_phase, e
            assert e["total"] == 0 or e["done"] <= e["total"], e
            if e["event"] == "done":
                open_phase = None
    assert open_phase is None
    return names


class Published:
    """A repository with 1.0 (published as text) and 1.1 (published with ``--json``) on stable."""

    def __init__(self, repo: Path, text: str, as_json: str, source: Path) -> None:
        self.repo, self.text, self.as_json, self.source = repo, text, as_json, source


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Published:
    base = tmp_path_factory.mktemp("progress")
    run_cli("pinnacle-release", "init", str(base / "repo"), "--keys", str(keys_dir))
    env = {k: v for k, v in os.environ.items() if k != "PINNACLE_PROGRESS"}  # the default: not a terminal
    text = _publish(base / "repo", keys_dir, _app(base / "src1", "1.0"), "1.0", env=env).stdout
    as_json = _publish(base / "repo", keys_dir, _app(base / "src2", "1.1"), "1.1", "--json").stdout
    return Published(base / "repo", text, as_json, base / "src2")


def test_publish_prints_phase_lines_when_not_a_terminal(published: Published) -> None:
    lines = published.text.splitlines()
    assert lines[-1].startswith("published stable 1.0 (any, minor): stable/any/1.0/full.tar.zst")
    shown = lines[:-1]
    assert [line.split()[1] for line in shown] == [name for p in PUBLISH_PHASES for name in (p, p)]
    for start, end in zip(shown[::2], shown[1::2], strict=True):
        assert start.startswith("pinnacle-release: ") and start.endswith(" ...")
        assert " done: " in end and " in " in end
    assert shown[2] == "pinnacle-release: hash (1.0 MiB) ..."  # the total, known before the bytes
    assert shown[3].startswith("pinnacle-release: hash done: 1.0 MiB in ")
    assert shown[9].startswith("pinnacle-release: sign done: 3 files in ")


def test_publish_json_is_events_then_the_result(published: Published) -> None:
    events, result = _json_lines(published.as_json)
    assert _phases(events) == ["scan", "hash", "compress", "delta", "write", "sign"]
    assert result["release"]["version"] == "1.1" and result["deltas"][0]["from"] == "1.0"
    done = {e["phase"]: e for e in events if e["event"] == "done"}
    assert done["hash"]["done"] == done["hash"]["total"] == sum(
        p.stat().st_size for p in published.source.rglob("*") if p.is_file())
    assert done["compress"]["total"] == done["compress"]["done"] == result["release"]["content"]["length"]
    assert done["delta"]["detail"] == "from 1.0" and done["delta"]["done"] == done["delta"]["total"]
    written = result["release"]["full"]["length"] + result["release"]["manifest"]["length"]
    assert done["write"]["done"] >= written + result["deltas"][0]["length"]
    assert done["sign"] == {**done["sign"], "done": 3, "total": 3, "unit": "files"}
    assert done["scan"]["done"] == 13  # 10 files, 3 directories: every path walked


def test_publish_failures_stay_one_line(published: Published, keys_dir: Path, tmp_path: Path) -> None:
    """A refusal after phases were shown: the phase lines on stdout, one error line on stderr."""
    repo_dir, src = published.repo, published.source
    before = tree_digest(repo_dir)
    older = _publish(repo_dir, keys_dir, src, "0.9", check=False)  # refused after the scan
    assert older.returncode == PublishRefused.exit_code, older.stderr
    assert len(older.stderr.strip().splitlines()) == 1 and "Traceback" not in older.stderr
    assert "0.9" in older.stderr and older.stdout.splitlines()[-1].startswith("pinnacle-release: hash done: ")
    # --json: the events, then the error as the last line (formats.cliutil), nothing on stderr
    older = _publish(repo_dir, keys_dir, src, "0.9", "--json", check=False)
    assert older.returncode == PublishRefused.exit_code and older.stderr == ""
    rows = [json.loads(line) for line in older.stdout.splitlines()]
    assert [r.get("phase") for r in rows[:-1]] == ["scan", "scan", "hash", "hash"]
    assert rows[-1]["error"]["code"] == PublishRefused.exit_code and "0.9" in rows[-1]["error"]["message"]
    unsafe_src = write_tree(tmp_path / "unsafe", {"bin/app": "#!/bin/sh\n"})
    os.mkfifo(unsafe_src / "bin" / "pipe")
    unsafe = _publish(repo_dir, keys_dir, unsafe_src, "2.0", "--json", check=False)
    rows = [json.loads(line) for line in unsafe.stdout.splitlines()]
    assert unsafe.returncode == UnsafeInputError.exit_code == rows[-1]["error"]["code"]
    assert "FIFO" in rows[-1]["error"]["message"] and rows[0]["phase"] == "scan"
    unsafe = _publish(repo_dir, keys_dir, unsafe_src, "2.0", check=False)
    assert unsafe.returncode == UnsafeInputError.exit_code and "FIFO" in unsafe.stderr
    assert len(unsafe.stderr.strip().splitlines()) == 1
    assert tree_digest(repo_dir) == before


def test_verify_deep_and_sync_report_phases(published: Published, tmp_path: Path) -> None:
    repo_dir = published.repo
    events, report = _json_lines(run_cli("pinnacle-release", "verify", str(repo_dir), "--deep", "--json").stdout)
    assert _phases(events) == ["decompress", "decompress", "deltas"]
    assert [e.get("detail") for e in events if e["event"] == "phase"] == ["stable 1.0", "stable 1.1", None]
    assert report["problems"] == [] and report["applied_deltas"] == 1
    assert [e for e in events if e["event"] == "done"][-1]["done"] == 1
    human = run_cli("pinnacle-release", "verify", str(repo_dir), "--deep").stdout.splitlines()
    assert human[0] == "pinnacle-release: decompress stable 1.0 (1.0 MiB) ..." and human[-1].startswith("ok: ")
    quiet = run_cli("pinnacle-release", "verify", str(repo_dir), "--deep", env={"PINNACLE_PROGRESS": "off"})
    assert quiet.stdout.startswith("ok: ") and quiet.stdout.count("\n") == 1
    plain = run_cli("pinnacle-release", "verify", str(repo_dir), "--json").stdout  # not --deep: one document
    assert json.loads(plain)["problems"] == []

    events, result = _json_lines(run_cli("pinnacle-release", "sync", str(repo_dir), str(tmp_path / "out"),
                                         "--json").stdout)
    assert _phases(events) == ["sync"]
    assert events[-1]["done"] == events[-1]["total"] == result["copied"] > 10
    again = run_cli("pinnacle-release", "sync", str(repo_dir), str(tmp_path / "out")).stdout.splitlines()
    assert again[0] == f"pinnacle-release: sync ({result['copied']} files) ..."
    assert again[1].startswith(f"pinnacle-release: sync done: {result['copied']} files in ")


# ----- the client -----------------------------------------------------------------------------------------
def _client(d: Path, *args: str, check: bool = True) -> Any:
    return run_cli("pinnacle-update", "--install-dir", str(d), *args, check=check)


def test_install_and_restore_report_phases(published: Published, tmp_path: Path,
                                          serve: Callable[[Path], ServedRepo]) -> None:
    repo_dir = published.repo
    served = serve(repo_dir)
    d = tmp_path / "inst"
    _client(d, "init", "--repo", served.url, "--root", str(repo_dir / "metadata" / "1.root.json"),
            "--channel", "stable", "--platform", "any")
    events, first = _json_lines(_client(d, "install", "1.0", "--json").stdout)
    assert first["outcome"] == "committed" and first["version"] == "1.0"
    assert _phases(events) == ["download", "apply", "verify", "snapshot", "activate", "health check"]
    download = [e for e in events if e["phase"] == "download"]
    [artifact] = (repo_dir / "targets" / "stable" / "any" / "1.0").glob("*.full.tar.zst")
    full = artifact.stat().st_size
    assert download[0]["total"] == download[-1]["done"] == full and download[-1]["event"] == "done"
    assert all(e["unit"] == "bytes" for e in download)

    uploads = d / "data" / "uploads"
    write_tree(uploads, {f"photo{i}.bin": os.urandom(1 << 16) for i in range(8)})
    lines = _client(d, "install", "1.1").stdout.splitlines()  # not a terminal: phase lines, the result last
    started = [line.split(": ", 1)[1].removesuffix(" ...").split(" (")[0] for line in lines if line.endswith(" ...")]
    assert started[:2] == ["download", "apply"] and "snapshot" in started and started[-2:] == ["activate",
                                                                                                 "health check"]
    assert lines[-1].startswith("installed 1.1 in slot b (was 1.0;")
    snapshot_done = next(line for line in lines if line.startswith("pinnacle-update: snapshot done: "))
    assert "0.5 MiB in " in snapshot_done  # the bytes copied into the snapshot

    backup = next(b for b in json.loads(_client(d, "backups", "list", "--json").stdout) if b["kind"] == "snapshot"
                  and b["for_version"] == "1.1")
    events, report = _json_lines(_client(d, "backups", "restore", backup["id"], "--json").stdout)
    assert _phases(events) == ["restore"] and report["backup"] == backup["id"]
    done = events[-1]
    assert done["unit"] == "bytes" and done["done"] == done["total"] == backup["bytes"] == 8 << 16

    missing = _client(d, "backups", "restore", "20990101T000000Z-0000", "--json", check=False)
    [error] = [json.loads(line)["error"] for line in missing.stdout.splitlines()]  # no events: nothing began
    assert missing.returncode == BackupError.exit_code == error["code"] and missing.stderr == ""
    missing = _client(d, "backups", "restore", "20990101T000000Z-0000", check=False)
    assert missing.returncode == BackupError.exit_code and len(missing.stderr.strip().splitlines()) == 1
    assert missing.stdout == "" and "Traceback" not in missing.stderr
    bad = _client(d, "install", "9.9", "--json", check=False)
    rows = [json.loads(line) for line in bad.stdout.splitlines()]
    assert bad.returncode == rows[-1]["error"]["code"] != 0 and "9.9" in rows[-1]["error"]["message"]
