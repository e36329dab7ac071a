"""``pinnacle-update backups list|show|verify|restore|prune`` over a real install directory: version
1.0.0 installed with data in its persistent paths, then 2.0.0 installed (the real install took the
snapshot before the swap) and its data changed. Each command with and without ``--json``, and every
bad input: one line on stderr, the documented exit code (BackupError 9, BusyError 8), no traceback,
nothing changed on disk.

Commands run in process through click's CliRunner (the group's own ``main``, so exit codes and the
one-line rule are the real ones); the lock case runs the CLI as a separate process as well."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pinnacle_updates.client import backups
from pinnacle_updates.client.cli import cli
from pinnacle_updates.client.errors import BackupError, BusyError, StateError
from tests.conftest import result_json
from tests.helpers_client import (
    PY,
    ROOT,
    Repo,
    app_files,
    copy_install,
    env,
    hold_lock,
    init_client,
    make_repo,
    publish,
    tree_digest,
)

PERSISTENT = ["uploads", "db"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = make_repo(tmp_path_factory.mktemp("backups-cli-pub"))
    publish(r, "1.0.0", app_files("1.0.0"))
    publish(r, "2.0.0", app_files("2.0.0"))
    return r


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, repo: Repo) -> Path:
    d = tmp_path_factory.mktemp("backups-cli") / "inst"
    ins = init_client(d, str(repo.dir), repo, persistent_paths=PERSISTENT)
    ins.install("1.0.0")
    for i in range(20):
        (d / "data/uploads" / f"photo{i:02d}.bin").write_bytes(bytes([i]) * (1000 + i))
    (d / "data/db/app.db").write_bytes(b"schema 1\n" * 100)
    (d / "data/uploads/latest").symlink_to("photo19.bin")
    ins.install("2.0.0")
    (d / "data/db/app.db").write_bytes(b"schema 2\n")
    (d / "data/uploads/from-2.txt").write_text("written by 2.0.0\n")
    return d


@pytest.fixture
def d(template: Path, tmp_path: Path) -> Path:
    return copy_install(template, tmp_path / "inst")


def run(d: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--install-dir", str(d), *args], prog_name="pinnacle-update")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def ok_json(d: Path, *args: str) -> Any:
    result = run(d, *args, "--json")
    assert result.exit_code == 0, result.output
    return result_json(result.stdout)


def refused(d: Path, code: int, *args: str) -> str:
    """Run a command that must fail: the exit code, one line on stderr (with --json: one JSON error line
    on stdout, its message returned), the disk unchanged."""
    before = on_disk(d)
    result = run(d, *args)
    assert result.exit_code == code, (args, result.exit_code, result.output)
    assert on_disk(d) == before, args
    if "--json" in args:
        error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
        assert error["code"] == code and result.stderr == "", (args, result.output)
        return str(error["message"])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnacle-update: error: "), (args, result.stderr)
    return lines[0]


def on_disk(d: Path) -> dict[str, str]:
    keep = ("data", "backups", "state.json", "current", "slots", "history.jsonl", "config.toml")
    return {k: v for k, v in tree_digest(d).items() if k.split("/", 1)[0] in keep}


def snapshot_of_1(d: Path) -> dict[str, Any]:
    rows = ok_json(d, "backups", "list")
    found = [r for r in rows if r["kind"] == "snapshot" and r["for_version"] == "2.0.0"]
    assert len(found) == 1, rows
    row: dict[str, Any] = found[0]
    return row


def data_digest(root: Path) -> str:
    return backups.digest_tree(root, PERSISTENT)


# ----- the commands ----------------------------------------------------------------------------------
def test_list_and_show_with_and_without_json(d: Path) -> None:
    rows = ok_json(d, "backups", "list")
    assert [(r["kind"], r["version"], r["for_version"]) for r in rows] == [
        ("snapshot", None, "1.0.0"), ("snapshot", "1.0.0", "2.0.0")]  # oldest first
    snap = rows[1]
    assert snap["files"] == 21 and snap["entries"] == 24 and snap["path"] == f"backups/{snap['id']}"
    human = run(d, "backups", "list")
    assert human.exit_code == 0 and human.stderr == ""
    lines = human.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{snap['id']}  snapshot 1.0.0") and "21 files" in lines[1]

    shown = ok_json(d, "backups", "show", snap["id"])
    assert shown["id"] == snap["id"] and len(shown["entries"]) == 24
    link = next(e for e in shown["entries"] if e["path"] == "uploads/latest")
    assert link == {"path": "uploads/latest", "type": "link", "mode": 0o777, "uid": link["uid"], "gid": link["gid"],
                    "target": "photo19.bin"}
    human = run(d, "backups", "show", snap["id"])
    assert human.exit_code == 0
    assert f"id: {snap['id']}" in human.stdout and "uploads/latest -> photo19.bin" in human.stdout


def test_list_of_a_fresh_install_dir_says_no_backups(repo: Repo, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    init_client(fresh, str(repo.dir), repo)
    assert run(fresh, "backups", "list").stdout == "no backups\n"
    assert ok_json(fresh, "backups", "list") == []
    assert ok_json(fresh, "backups", "prune") == {"removed": []}


def test_verify_an_intact_backup(d: Path) -> None:
    snap = snapshot_of_1(d)
    human = run(d, "backups", "verify", snap["id"])
    assert human.exit_code == 0 and human.stdout == f"backup {snap['id']}: intact\n"
    assert ok_json(d, "backups", "verify", snap["id"]) == {"id": snap["id"], "ok": True, "problems": []}


def test_restore_puts_the_snapshot_back_and_keeps_the_replaced_data(d: Path) -> None:
    snap = snapshot_of_1(d)
    want = data_digest(d / "backups" / snap["id"] / "data")
    replaced = data_digest(d / "data")
    human = run(d, "backups", "restore", snap["id"])
    assert human.exit_code == 0, human.output
    line = human.stdout.strip().splitlines()[-1]  # after the restore's phase lines (formats.progress)
    assert line.startswith(f"restored the data of backup {snap['id']} under 2.0.0; the replaced data kept as backup ")
    kept = line.rsplit(" ", 1)[1]
    assert data_digest(d / "data") == want and data_digest(d / "backups" / kept / "data") == replaced
    assert (d / "data/uploads/latest").readlink() == Path("photo19.bin")

    # again with --json: the data now is the snapshot's, so what it replaces is the same
    report = ok_json(d, "backups", "restore", snap["id"])
    assert set(report) == {"backup", "data_rejected", "version", "duration", "notes"}
    assert (report["backup"], report["version"], report["notes"]) == (snap["id"], "2.0.0", [])
    assert data_digest(d / "backups" / report["data_rejected"] / "data") == want == data_digest(d / "data")
    kinds = [r["kind"] for r in ok_json(d, "backups", "list")]
    assert kinds == ["snapshot", "snapshot", "rejected", "rejected"]


def test_prune_with_max_backups_1_keeps_the_rollback_snapshot(d: Path) -> None:
    snap = snapshot_of_1(d)
    first = ok_json(d, "backups", "list")[0]["id"]  # the first install's, of no data
    kept = ok_json(d, "backups", "restore", snap["id"])["data_rejected"]
    assert run(d, "config", "set", "max_backups", "1").exit_code == 0
    human = run(d, "backups", "prune")
    assert human.exit_code == 0
    assert human.stdout.splitlines() == ["removed 2 backup(s)", f"  {kept}", f"  {first}"]
    assert [r["id"] for r in ok_json(d, "backups", "list")] == [snap["id"]]  # a rollback of 2.0.0 restores it
    assert ok_json(d, "backups", "prune") == {"removed": []}
    assert run(d, "backups", "prune").stdout == "removed 0 backup(s)\n"


# ----- bad inputs --------------------------------------------------------------------------------------
def test_unknown_and_malformed_ids(d: Path) -> None:
    unknown = "20200101T000000000Z-abcd"
    for command in ("show", "verify", "restore"):
        for extra in ((), ("--json",)):
            line = refused(d, BackupError.exit_code, "backups", command, unknown, *extra)
            assert f"no backup {unknown} in " in line and "backups list" in line
            for bad in ("../x", "", "a" * 500, "20200101T000000000Z-ABCD", f"{unknown}/../{unknown}", "x\x00y"):
                line = refused(d, BackupError.exit_code, "backups", command, bad, *extra)
                assert "is not a backup id (e.g. 20261204T130501123Z-1a2b)" in line, line
                assert len(line) < 200  # a 500-character id is cut short in the message


def test_a_file_changed_by_hand_is_named_by_verify(d: Path) -> None:
    snap = snapshot_of_1(d)
    data = d / "backups" / snap["id"] / "data"
    (data / "uploads/photo03.bin").write_bytes(b"\x00" + bytes([3]) * 1002)  # same size, other content
    (data / "uploads/photo05.bin").chmod(0o600)
    (data / "uploads/latest").unlink()
    before = on_disk(d)
    human = run(d, "backups", "verify", snap["id"])
    assert human.exit_code == BackupError.exit_code
    assert human.stdout.splitlines() == [
        f"backup {snap['id']}: 3 problem(s)",
        "  uploads/photo03.bin: content differs from its sha256",
        "  uploads/photo05.bin: mode 600, the manifest says 644",
        "  uploads/latest: missing",
    ]
    assert human.stderr == f"pinnacle-update: error: backup {snap['id']} differs from its manifest\n"
    as_json = run(d, "backups", "verify", snap["id"], "--json")
    assert as_json.exit_code == BackupError.exit_code and as_json.stderr.count("\n") == 1
    assert json.loads(as_json.stdout)["problems"][0] == "uploads/photo03.bin: content differs from its sha256"
    assert on_disk(d) == before


@pytest.mark.parametrize("damage", ["cut", "not-an-object", "other-id", "bad-entry", "empty"])
def test_a_corrupt_manifest_is_one_line_everywhere(d: Path, damage: str) -> None:
    snap = snapshot_of_1(d)
    manifest = d / "backups" / snap["id"] / "backup.json"
    doc = json.loads(manifest.read_bytes())
    manifest.write_bytes({
        "cut": manifest.read_bytes()[:-30],
        "not-an-object": b"[1, 2]",
        "other-id": json.dumps({**doc, "id": "20200101T000000000Z-abcd"}).encode(),
        "bad-entry": json.dumps({**doc, "entries": [*doc["entries"], {"path": "../../etc/passwd", "type": "file"}]})
        .encode(),
        "empty": b"",
    }[damage])
    for command in ("show", "verify", "restore"):
        line = refused(d, BackupError.exit_code, "backups", command, snap["id"])
        assert snap["id"] in line or "backup manifest" in line, line
    assert snap["id"] not in {r["id"] for r in ok_json(d, "backups", "list")}  # skipped by the list


@pytest.fixture
def lock_held(d: Path) -> Iterator[subprocess.Popen[str]]:
    with hold_lock(d) as proc:
        yield proc


def test_restore_and_prune_while_another_process_holds_the_lock(d: Path, lock_held: subprocess.Popen[str]) -> None:
    snap = snapshot_of_1(d)
    for args in (("backups", "restore", snap["id"]), ("backups", "prune"), ("backups", "restore", snap["id"],
                                                                            "--json")):
        line = refused(d, BusyError.exit_code, *args)
        assert f"pid {lock_held.pid}" in line and "--wait" in line, line
    # as a separate process too: the exit code a shell sees
    before = on_disk(d)
    proc = subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(d), "backups", "restore",
                           snap["id"]], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == BusyError.exit_code and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and f"pid {lock_held.pid}" in proc.stderr
    assert on_disk(d) == before
    # reading needs no lock
    assert ok_json(d, "backups", "verify", snap["id"])["ok"] is True
    assert len(ok_json(d, "backups", "list")) == 2


def test_restore_when_the_application_cannot_be_stopped(d: Path) -> None:
    snap = snapshot_of_1(d)
    assert run(d, "config", "set", "stop_command", "exit 3").exit_code == 0
    for extra in ((), ("--json",)):
        line = refused(d, StateError.exit_code, "backups", "restore", snap["id"], *extra)
        assert line.endswith("; nothing was restored") and "stop_command" in line, line
