"""Issue 18's acceptance, end to end with the real client over nginx: a rollback brings the data back.

Version 1 keeps a SQLite database (schema 1) in the persistent path ``db``; version 2 ships a signed
migration step that rewrites it to schema 2. When version 2 then fails its health check, the
automatic rollback puts back the database byte for byte and keeps the schema-2 file as a backup;
a manual rollback after a good update does the same (or keeps the data with ``--keep-data``). A
snapshot that cannot fit, or a data tree holding a FIFO, stops the update before the swap; a link
to a file outside the install directory is copied as a link and that file never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinnacle_updates.client import backups
from pinnacle_updates.client.errors import BackupError, BackupSpaceError, HealthCheckError, StateError
from pinnacle_updates.client.installer import Installer
from tests.conftest import result_json, run_cli
from tests.data_crash_driver import schema as _schema
from tests.helpers_client import Repo, app_files, init_client, make_repo, publish, serve

PERSISTENT = ["logs", "uploads", "temp", "db"]

# The application's own code: schema 1 (version 1) and the migration to schema 2 (version 2). The
# migration is idempotent, as every hook must be (recovery may run it again after a crash).
SCHEMA_1 = f"""#!{sys.executable}
import sqlite3, sys
db = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else "db/app.sqlite")
db.execute("PRAGMA journal_mode=DELETE")
if db.execute("PRAGMA user_version").fetchone()[0] == 0:
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {{i}}",) for i in range(200)])
    db.execute("PRAGMA user_version = 1")
db.commit()
"""
MIGRATE_TO_2 = f"""#!{sys.executable}
import sqlite3
db = sqlite3.connect("db/app.sqlite")
db.execute("PRAGMA journal_mode=DELETE")
if db.execute("PRAGMA user_version").fetchone()[0] == 1:
    db.execute("ALTER TABLE notes ADD COLUMN tags TEXT DEFAULT ''")
    db.execute("UPDATE notes SET body = body || ' (v2)', tags = 'migrated'")
    db.execute("PRAGMA user_version = 2")
db.commit()
open("uploads/written-by-2.txt", "w").write("schema 2 was here\\n")
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = make_repo(tmp_path_factory.mktemp("data-rollback-pub"))
    publish(r, "1.0.0", {**app_files("1.0.0"), "bin/schema1": SCHEMA_1})
    publish(r, "2.0.0", {**app_files("2.0.0", healthy=False), "bin/migrate": MIGRATE_TO_2}, migration="bin/migrate")
    publish(r, "2.1.0", {**app_files("2.1.0"), "bin/migrate": MIGRATE_TO_2}, migration="bin/migrate")
    # migrations that change the data and then fail: one exits 3, one runs past migration_timeout
    publish(r, "2.2.0", {**app_files("2.2.0"), "bin/migrate": MIGRATE_TO_2 + "raise SystemExit(3)\n"},
            migration="bin/migrate")
    publish(r, "2.3.0", {**app_files("2.3.0"), "bin/migrate": MIGRATE_TO_2 + "import time; time.sleep(60)\n"},
            migration="bin/migrate")
    return r


@pytest.fixture(scope="module")
def url(repo: Repo) -> Iterator[str]:
    with serve(repo.dir) as u:
        yield u


def _client(d: Path, url: str, repo: Repo, **settings: object) -> Installer:
    ins = init_client(d, url, repo, persistent_paths=PERSISTENT, **settings)
    ins.install("1.0.0")
    subprocess.run([str(d / "current/bin/schema1")], cwd=d / "current", check=True)  # version 1 runs
    (d / "data/uploads/photo.bin").write_bytes(os.urandom(300_000))
    return ins


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()




def _cli(d: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("pinnacle-update", "--install-dir", str(d), *args, check=check)


def test_automatic_rollback_restores_the_database_and_keeps_the_migrated_one(tmp_path: Path, url: str,
                                                                                repo: Repo) -> None:
    d = tmp_path / "inst"
    _client(d, url, repo)
    db = d / "data/db/app.sqlite"
    before = backups.digest_tree(d / "data", PERSISTENT)
    db_sha = _sha(db)
    assert _schema(db) == 1

    proc = _cli(d, "install", "2.0.0", check=False)
    assert proc.returncode == HealthCheckError.exit_code
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "2.0.0 failed after the swap (health check failed" in line
    assert "rolled back to 1.0.0, data restored from backup" in line

    # version 1 runs on the database exactly as it was before the update
    assert os.readlink(d / "current") == "slots/a"
    assert _sha(db) == db_sha and _schema(db) == 1
    assert backups.digest_tree(d / "data", PERSISTENT) == before
    assert not (d / "data/uploads/written-by-2.txt").exists()

    # the schema-2 file is kept in the backups area, and history says where
    record = [h for h in Installer(d).history() if h["op"] == "rollback"][-1]
    assert record["cause"] == "health_check" and record["from_version"] == "2.0.0"
    rejected = d / "backups" / record["data_rejected"]
    assert _schema(rejected / "data/db/app.sqlite") == 2
    assert (rejected / "data/uploads/written-by-2.txt").read_text() == "schema 2 was here\n"
    listed = {b["id"]: b for b in json.loads(_cli(d, "backups", "list", "--json").stdout)}
    assert listed[record["data_restored"]]["kind"] == "snapshot"
    assert (listed[record["data_restored"]]["version"], listed[record["data_restored"]]["for_version"]) == (
        "1.0.0", "2.0.0")
    assert listed[record["data_rejected"]]["kind"] == "rejected"
    assert listed[record["data_rejected"]]["restored_from"] == record["data_restored"]
    for backup_id in listed:
        assert json.loads(_cli(d, "backups", "verify", backup_id, "--json").stdout)["ok"]
    assert Installer(d).status()["backups"] == len(listed)  # first install, snapshot, rejected


@pytest.mark.parametrize("keep_data", [False, True], ids=["restore", "keep-data"])
def test_manual_rollback_after_a_good_update(tmp_path: Path, url: str, repo: Repo, keep_data: bool) -> None:
    d = tmp_path / "inst"
    _client(d, url, repo)
    db = d / "data/db/app.sqlite"
    before_update = _sha(db)
    installed = Installer(d).install("2.1.0")
    assert installed.outcome == "committed" and installed.route["data_backup"]
    assert _schema(db) == 2
    # version 2.1.0 runs a while and writes more data
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO notes (body, tags) VALUES ('written by 2.1.0', 'new')")
    conn.commit()
    conn.close()
    time.sleep(1.1)  # a later second: backup ids and history stamps order the events
    after_use = _sha(db)

    args = ["rollback", "--json"] + (["--keep-data"] if keep_data else [])
    result = result_json(_cli(d, *args).stdout)
    assert (result["version"], result["from_version"]) == ("1.0.0", "2.1.0")
    record = [h for h in Installer(d).history() if h["op"] == "rollback"][-1]
    assert record["cause"] == "manual"
    if keep_data:
        assert result["data_restored"] is None and record["data_restored"] is None
        assert _sha(db) == after_use and _schema(db) == 2
    else:
        assert result["data_restored"] == installed.route["data_backup"]
        assert _sha(db) == before_update and _schema(db) == 1
        kept = d / "backups" / result["data_rejected"] / "data/db/app.sqlite"
        assert _sha(kept) == after_use  # what 2.1.0 wrote is kept, not deleted
        assert record["data_rejected"] == result["data_rejected"]


def test_manual_rollback_refuses_when_the_snapshot_was_removed(tmp_path: Path, url: str, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = _client(d, url, repo)
    snap = ins.install("2.1.0").route["data_backup"]
    os.rename(d / "backups" / snap, d / "elsewhere")  # pruned or removed by hand
    state = (d / "state.json").read_bytes()
    proc = _cli(d, "rollback", check=False)
    assert proc.returncode == StateError.exit_code
    assert proc.stderr.strip().endswith("use --keep-data to roll back the code and keep the data as it is")
    assert (d / "state.json").read_bytes() == state and os.readlink(d / "current") == "slots/b"
    assert result_json(_cli(d, "rollback", "--keep-data", "--json").stdout)["version"] == "1.0.0"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs ({proc.stderr.strip()}); CI runs as root")
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_too_small_for_the_snapshot(small_fs: Path, url: str, repo: Repo) -> None:
    d = small_fs / "inst"
    log = "$PINNACLE_INSTALL_DIR/service.log"
    ins = _client(d, url, repo, stop_command=f'echo "stop $PINNACLE_VERSION" >> {log}',
                  start_command=f'echo "start $PINNACLE_VERSION" >> {log}')
    (d / "data/uploads/video.bin").write_bytes(os.urandom(4 << 20))
    data = backups.digest_tree(d / "data", PERSISTENT)
    state = (d / "state.json").read_bytes()

    # refused before anything is downloaded: one line, BackupSpaceError, nothing swapped
    proc = _cli(d, "install", "2.1.0", check=False)
    assert proc.returncode == BackupSpaceError.exit_code
    line = proc.stderr.strip()
    assert line.startswith("pinnacle-update: error: not enough space for the data snapshot") and "\n" not in line
    assert (d / "state.json").read_bytes() == state
    assert backups.digest_tree(d / "data", PERSISTENT) == data and os.readlink(d / "current") == "slots/a"

    # fits at the first check, but the disk fills up before the snapshot: stopped before the swap,
    # the running version started again
    filler = d / "filler"

    def fill(event: dict[str, object]) -> None:
        if event.get("step") == "snapshot":
            vfs = os.statvfs(d)
            filler.write_bytes(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - 256 * 1024))

    (d / "data/uploads/video.bin").write_bytes(os.urandom(1 << 20))
    data = backups.digest_tree(d / "data", PERSISTENT)
    (d / "service.log").write_text("")
    with pytest.raises(BackupSpaceError, match=r"not enough space for the data snapshot.*nothing was swapped, "
                                               r"1\.0\.0 keeps running$"):
        Installer(d, on_event=fill).install("2.1.0")
    assert (d / "service.log").read_text().splitlines() == ["stop 2.1.0", "start 1.0.0"]
    st = ins.status()
    assert (st["state"], st["version"], st["slot"]) == ("failed", "1.0.0", "a")
    assert backups.digest_tree(d / "data", PERSISTENT) == data and os.readlink(d / "current") == "slots/a"
    assert not [p for p in (d / "backups").iterdir() if p.name.startswith(".")]
    failed = ins.history()[-1]
    assert (failed["outcome"], failed["cause"]) == ("failed", "space")

    # backup_required = false: the update goes on without a snapshot, and the history says so
    _cli(d, "config", "set", "backup_required", "false")
    filler.unlink()
    result = Installer(d, on_event=fill).install("2.1.0")
    assert result.outcome == "committed" and "not enough space" in result.route["data_backup_skipped"]
    filler.unlink()
    assert ins.status()["version"] == "2.1.0"


def test_a_fifo_in_the_data_stops_the_update_before_the_swap(tmp_path: Path, url: str, repo: Repo) -> None:
    d = tmp_path / "inst"
    _client(d, url, repo)
    os.mkfifo(d / "data/uploads/pipe")
    state = (d / "state.json").read_bytes()
    proc = _cli(d, "install", "2.1.0", check=False)
    assert proc.returncode == BackupError.exit_code
    assert proc.stderr.strip() == (
        "pinnacle-update: error: cannot back up data/uploads/pipe: it is a FIFO; persistent paths may hold only files, "
        "directories and symbolic links")
    assert (d / "state.json").read_bytes() == state and os.readlink(d / "current") == "slots/a"


def test_links_to_outside_files_are_copied_as_links_never_followed(tmp_path: Path, url: str, repo: Repo) -> None:
    d = tmp_path / "inst"
    _client(d, url, repo)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("never read, never written\n")
    (outside / "dir").mkdir()
    (outside / "dir/inner.txt").write_text("not copied\n")
    os.utime(secret, (1, time.time()))  # atime in 1970: any read (relatime) moves it
    os.symlink(secret, d / "data/uploads/to-secret")
    os.symlink(outside / "dir", d / "data/uploads/to-dir")
    os.symlink(outside, d / "data/temp/escape")
    before = secret.stat()

    with pytest.raises(HealthCheckError):  # snapshot, migration, failed health check, restore
        Installer(d).install("2.0.0")
    record = [h for h in Installer(d).history() if h["op"] == "rollback"][-1]
    snap = d / "backups" / record["data_restored"] / "data"
    assert os.readlink(snap / "uploads/to-secret") == str(secret)
    assert os.readlink(snap / "uploads/to-dir") == str(outside / "dir")
    assert not (snap / "uploads/to-dir").is_dir() or (snap / "uploads/to-dir").is_symlink()
    assert os.readlink(d / "data/uploads/to-secret") == str(secret)  # restored as the same link
    assert os.readlink(d / "data/temp/escape") == str(outside)
    after = secret.stat()
    assert (after.st_atime_ns, after.st_mtime_ns, after.st_size) == (before.st_atime_ns, before.st_mtime_ns,
                                                                      before.st_size)
    assert secret.read_text() == "never read, never written\n"
    assert sorted(p.name for p in outside.iterdir()) == ["dir", "secret.txt"]
    assert sorted(p.name for p in (outside / "dir").iterdir()) == ["inner.txt"]


@pytest.mark.parametrize(("version", "why"), [("2.2.0", r"migration `\./bin/migrate` exited 3"),
                                             ("2.3.0", r"migration `\./bin/migrate` timed out")])
def test_a_failing_or_hanging_migration_rolls_back_code_and_data(tmp_path: Path, url: str, repo: Repo,
                                                                  version: str, why: str) -> None:
    d = tmp_path / "inst"
    _client(d, url, repo, migration_timeout=2.0)
    before = backups.digest_tree(d / "data", PERSISTENT)
    started = time.monotonic()
    with pytest.raises(HealthCheckError, match=f"{version} failed after the swap \\({why}.*rolled back to 1\\.0\\.0, "
                                               "data restored from backup"):
        Installer(d).install(version)
    assert time.monotonic() - started < 30  # the hanging one was killed at its timeout
    assert backups.digest_tree(d / "data", PERSISTENT) == before
    record = [h for h in Installer(d).history() if h["op"] == "rollback"][-1]
    assert record["cause"] == "migration"
    assert _schema(d / "backups" / record["data_rejected"] / "data/db/app.sqlite") == 2
