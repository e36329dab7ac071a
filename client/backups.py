"""Data snapshots: the persistent data (``DIR/data/<name>``) copied before an update, put back on rollback.

Code rolls back by switching slots; the data every slot shares does not. So before the swap (the
application stopped by ``stop_command``) the persistent paths are copied into
``DIR/backups/<id>/data/``, with reflink clones where the file system has them (``FICLONE``: btrfs,
XFS, bcachefs) and an ordinary copy per file elsewhere; a rollback puts that copy back and keeps
what the rejected version wrote as a backup of its own. Android's userdata checkpoint and
snapper's pre-update snapshots do the same one level down; this works on any file system.

On disk (``DIR/backups/``)::

    <id>/backup.json         the manifest (kind, versions, method, every entry); written last
    <id>/data/<name>/...     the tree: files, directories and symlinks (copied as links, never followed)
    .tmp-<id>/               a snapshot being written; renamed to <id> when complete, removed by recovery
    .restore-tmp/            a restore's clone of a snapshot being written; removed by recovery
    .restore/                a restore in progress (the journal): plan.json, data/<name> to put in place,
                             rejected/ (what the data was: becomes backup <rejected id>)

A snapshot never writes ``DIR/data``: a kill while it runs leaves the data as it was and a
``.tmp-`` directory that recovery removes. A restore writes ``DIR/data`` only by renames named in
``.restore/plan.json``, each step idempotent (see ``_finish``), so after a kill at any instant the
next start (``finish_pending``) completes it: the data is then exactly the snapshot's and the
rejected data exactly what was there before, never a mix, never lost.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pinnacle_updates.client.datacopy import (
    CopyStats,
    Entry,
    Progress,
    copy_tree,
    digest_tree,
    entry_of,
    free_bytes,
    needed_bytes,
    probe_reflink,
    publish_dir,
    rmtree,
    scan,
    sha256_of,
    sync_tree,
)
from pinnacle_updates.client.errors import BackupError, BackupSpaceError
from pinnacle_updates.client.slots import Layout, age_days
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.rollout import format_time

SCHEMA = 1
MANIFEST = "backup.json"
MANIFEST_MAX = 256 << 20
"""Bytes of a backup manifest read at most (about 200 bytes an entry: a million entries fit)."""
SPACE_MARGIN_MAX = 64 << 20
"""Free space a snapshot leaves on the file system beyond what it needs, since the update goes on
writing after it: a tenth of the snapshot plus 1 MiB, at most this."""
KINDS = ("snapshot", "rejected")


# ----- the manifest -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backup:
    """A complete backup: ``DIR/backups/<id>`` with its manifest."""

    id: str
    kind: str  # snapshot: taken before an update; rejected: what a restore moved aside
    created: str
    version: str | None  # the version whose data this is (running when it was taken)
    for_version: str | None  # snapshot: the version being installed; rejected: the version rejected
    reason: str
    method: str  # reflink | copy | mixed | empty
    paths: tuple[str, ...]
    files: int
    bytes: int
    seconds: float
    entries: tuple[Entry, ...] = ()
    restored_from: str | None = None  # rejected: the snapshot put back in its place

    def to_dict(self, entries: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA, "id": self.id, "kind": self.kind, "created": self.created,
            "version": self.version, "for_version": self.for_version, "reason": self.reason,
            "method": self.method, "paths": list(self.paths), "files": self.files, "bytes": self.bytes,
            "seconds": self.seconds, "restored_from": self.restored_from,
        }
        if entries:
            out["entries"] = [e.to_dict() for e in self.entries]
        return out

    def summary(self) -> dict[str, Any]:
        """What ``backups list`` shows: the manifest without entries, with its age and where it is
        (relative to the install directory)."""
        return {**self.to_dict(entries=False), "entries": len(self.entries),
                "age_days": round(age_days(self.created), 3), "path": f"backups/{self.id}"}

    @classmethod
    def from_bytes(cls, data: builtins.bytes, backup_id: str) -> Backup:
        try:
            d = boundedjson.load_object(data, f"backup {backup_id}: manifest", max_bytes=MANIFEST_MAX)
        except boundedjson.FormatError as exc:
            raise BackupError(str(exc)) from exc
        try:
            if d.get("schema") != SCHEMA or d.get("id") != backup_id or d.get("kind") not in KINDS:
                raise BackupError(f"backup {backup_id}: manifest names another backup or an unknown schema")
            raw = d.get("entries")
            if not isinstance(raw, list):
                raise BackupError(f"backup {backup_id}: manifest has no entry list")
            return cls(
                id=backup_id, kind=str(d["kind"]), created=str(d["created"]), version=_opt(d.get("version")),
                for_version=_opt(d.get("for_version")), reason=str(d.get("reason", "")), method=str(d["method"]),
                paths=tuple(str(p) for p in d["paths"]), files=int(d["files"]), bytes=int(d["bytes"]),
                seconds=float(d["seconds"]), entries=tuple(Entry.from_dict(e) for e in raw),
                restored_from=_opt(d.get("restored_from")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"backup {backup_id}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


# ----- where things are ---------------------------------------------------------------------------
def backups_dir(layout: Layout) -> Path:
    return layout.root / "backups"


def backup_dir(layout: Layout, backup_id: str) -> Path:
    if not valid_id(backup_id):
        raise BackupError(f"{backup_id[:80]!r} is not a backup id (e.g. 20261204T130501123Z-1a2b)")
    return backups_dir(layout) / backup_id


def valid_id(text: str) -> bool:
    """Ids are ``YYYYmmddTHHMMSSmmmZ-<4 hex>`` (UTC to the millisecond): sortable by time, safe as
    one path component."""
    digits = text[:8] + text[9:18]
    return (len(text) == 24 and text[8] == "T" and text[18:20] == "Z-"
            and all(c in "0123456789" for c in digits)  # ASCII only: str.isdigit() takes any script's digits
            and all(c in "0123456789abcdef" for c in text[20:]))


def new_id() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-" + secrets.token_hex(2)


def load(layout: Layout, backup_id: str) -> Backup:
    """The complete backup ``backup_id``; ``BackupError`` when it does not exist or is unreadable."""
    path = backup_dir(layout, backup_id) / MANIFEST
    try:
        data = fsutil.read_regular(path, MANIFEST_MAX)
    except FileNotFoundError:
        raise BackupError(f"no backup {backup_id} in {backups_dir(layout)} (see `pinnacle-update backups list`)") \
            from None
    except OSError as exc:
        raise BackupError(f"cannot read backup {backup_id}: {exc.strerror or exc}") from exc
    return Backup.from_bytes(data, backup_id)


def exists(layout: Layout, backup_id: str) -> bool:
    return valid_id(backup_id) and (backup_dir(layout, backup_id) / MANIFEST).is_file()


def count(layout: Layout) -> int:
    """How many complete backups there are, without reading a manifest (``status`` asks often and a
    manifest of a large tree is megabytes)."""
    with contextlib.suppress(FileNotFoundError):
        return sum(1 for e in os.scandir(backups_dir(layout))
                   if valid_id(e.name) and os.path.isfile(os.path.join(e.path, MANIFEST)))
    return 0


def list_backups(layout: Layout) -> list[Backup]:
    """Every complete backup, oldest first; an unreadable one is skipped (``verify`` names it)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.scandir(backups_dir(layout)), key=lambda e: e.name):
            if valid_id(entry.name) and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(BackupError):
                    out.append(load(layout, entry.name))
    return out


# ----- snapshot -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpacePlan:
    need: int
    free: int
    reflink: bool

    @property
    def fits(self) -> bool:
        return self.need + self.margin <= self.free

    @property
    def margin(self) -> int:
        return min(SPACE_MARGIN_MAX, (1 << 20) + self.need // 10)


def plan_space(layout: Layout, names: Iterable[str]) -> SpacePlan:
    """Whether a snapshot of ``names`` fits: a probe clone says if reflinks work here (then the
    snapshot takes inodes, not blocks); otherwise every file's blocks are needed."""
    root = backups_dir(layout)
    root.mkdir(exist_ok=True)
    need, entries = needed_bytes(layout.data, names)
    reflink = probe_reflink(layout.data, root)
    if reflink:
        need = entries * 4096
    return SpacePlan(need, free_bytes(root), reflink)


def check_space(layout: Layout, names: Iterable[str]) -> SpacePlan:
    """``plan_space``, raising ``BackupSpaceError`` (one line: need, free, what to do) when the
    snapshot does not fit; ``BackupError`` when the data cannot be read."""
    try:
        space = plan_space(layout, names)
    except OSError as exc:
        raise BackupError(f"cannot plan the data snapshot: {exc.strerror or exc}") from exc
    if not space.fits:
        raise BackupSpaceError(
            f"not enough space for the data snapshot: it needs {_mib(space.need + space.margin)} in "
            f"{backups_dir(layout)}, {_mib(space.free)} is free; free some space, prune old backups "
            "(`pinnacle-update backups prune`), or set backup_required = false to update without one"
        )
    return space


def snapshot(layout: Layout, names: Iterable[str], *, version: str | None, for_version: str | None,
             reason: str = "before update", progress: Progress | None = None) -> Backup:
    """Copy the persistent ``names`` under ``DIR/data`` into a new backup and return it.

    Checks free space first (``BackupError`` when it does not fit: nothing is written). Written
    under ``.tmp-<id>``, synced, then renamed into place: the backup exists complete or not at all."""
    names = [n for n in names if os.path.lexists(layout.data / n)]
    started = time.monotonic()
    space = check_space(layout, names)
    backup_id = new_id()
    tmp = backups_dir(layout) / f"{fsutil.TEMP_PREFIX}{backup_id}"
    final = backups_dir(layout) / backup_id
    try:
        (tmp / "data").mkdir(parents=True)
        stats = copy_tree(layout.data, names, tmp / "data", progress=progress, total=space.need)
        backup = Backup(
            id=backup_id, kind="snapshot", created=format_time(datetime.now(UTC)), version=version,
            for_version=for_version, reason=reason, method=stats.method, paths=tuple(names), files=stats.files,
            bytes=stats.bytes, seconds=round(time.monotonic() - started, 3), entries=tuple(stats.entries),
        )
        _write_manifest(tmp, backup)
        publish_dir(tmp, final)
    except BackupError:
        rmtree(tmp)
        raise
    except OSError as exc:
        rmtree(tmp)
        raise BackupError(f"cannot snapshot the persistent data: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from exc
    return backup


def _write_manifest(tmp: Path, backup: Backup) -> None:
    data = _dump(backup.to_dict())
    with open(tmp / MANIFEST, "wb") as f:  # the whole directory is synced next, then renamed in
        f.write(data)
    sync_tree(tmp)
    fsutil.fsync_dir(tmp)


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ----- restore (journaled) ------------------------------------------------------------------------
@dataclass(frozen=True)
class RestoreResult:
    backup: str
    rejected: str | None  # the backup now holding what the data was (None: there was nothing)
    seconds: float
    method: str


def restore(layout: Layout, backup_id: str, rejected_id: str, names: Iterable[str], *, version: str | None,
            rejected_version: str | None, reason: str, progress: Progress | None = None) -> RestoreResult:
    """Put backup ``backup_id``'s data in place of ``DIR/data/<names>`` (the application is stopped).

    1. clone the backup into ``.restore-tmp`` with ``plan.json``; sync; rename to ``.restore``
       (until then ``DIR/data`` is untouched; a kill leaves a ``.restore-tmp`` recovery removes);
    2. per name: move the current data into ``.restore/rejected/data``, the clone into ``DIR/data``;
    3. write the rejected manifest; rename ``.restore/rejected`` to ``backups/<rejected_id>``;
       remove the journal.
    Steps 2 and 3 are idempotent and ``finish_pending`` reruns them after a kill, so the same call
    (a rollback being finished) or the next start completes exactly this restore."""
    started = time.monotonic()
    journal = backups_dir(layout) / ".restore"
    if journal.exists():
        plan = _read_plan(journal)
        if plan.get("backup") == backup_id and plan.get("rejected") == rejected_id:
            return _finish(layout, journal, started)
        _finish(layout, journal, started)  # another restore was interrupted: it goes first
    if backup_dir(layout, rejected_id).exists():  # finished earlier (this is a rollback being replayed)
        return RestoreResult(backup_id, rejected_id, 0.0, "done")
    source = load(layout, backup_id)
    tmp = backups_dir(layout) / ".restore-tmp"
    rmtree(tmp)
    try:
        (tmp / "data").mkdir(parents=True)
        (tmp / "rejected" / "data").mkdir(parents=True)
        stats = copy_tree(backup_dir(layout, backup_id) / "data", source.paths, tmp / "data", hash_files=False,
                          progress=progress, total=source.bytes)
        present = sorted(n for n in {*names, *source.paths} if os.path.lexists(layout.data / n))
        plan = {"backup": backup_id, "rejected": rejected_id, "put": sorted(source.paths), "move_aside": present,
                "version": version, "rejected_version": rejected_version, "reason": reason,
                "method": stats.method}
        (tmp / "plan.json").write_bytes(_dump(plan))
        sync_tree(tmp)
        publish_dir(tmp, journal)
    except OSError as exc:
        rmtree(tmp)
        raise BackupError(f"cannot restore backup {backup_id}: {exc.strerror or exc}") from exc
    return _finish(layout, journal, started)


def _read_plan(journal: Path) -> dict[str, Any]:
    try:
        return boundedjson.load_object(fsutil.read_regular(journal / "plan.json", 1 << 20), "restore plan")
    except (OSError, boundedjson.FormatError) as exc:
        raise BackupError(f"the restore journal {journal} is unreadable ({exc}); move it aside by hand") from exc


def _finish(layout: Layout, journal: Path, started: float) -> RestoreResult:
    """Steps 2 and 3 of ``restore``, from whatever point a kill left them at."""
    plan = _read_plan(journal)
    put, aside = set(plan["put"]), set(plan["move_aside"])
    ready, rejected = journal / "data", journal / "rejected"
    data = layout.data
    data.mkdir(exist_ok=True)
    for name in sorted(put | aside):
        # The data at data/<name> is still the original while nothing was moved aside and (when
        # something is to be put there) the clone still waits in ready/: only then move it aside.
        original = not os.path.lexists(rejected / "data" / name) and (
            name not in put or os.path.lexists(ready / name))
        if name in aside and original and os.path.lexists(data / name):
            os.rename(data / name, rejected / "data" / name)
        if name in put and os.path.lexists(ready / name):
            os.rename(ready / name, data / name)
    fsutil.fsync_dir(data)
    if rejected.exists():
        fsutil.fsync_dir(rejected / "data")
    rejected_id = str(plan["rejected"])
    final = backup_dir(layout, rejected_id)
    kept: str | None = rejected_id
    if rejected.exists():
        moved = [n for n in sorted(aside) if os.path.lexists(rejected / "data" / n)]
        if moved:
            stats = CopyStats()
            for rel, st in scan(rejected / "data", moved):
                stats.entries.append(entry_of(rejected / "data", rel, st))
                if stat.S_ISREG(st.st_mode):
                    stats.files += 1
                    stats.bytes += st.st_size
            backup = Backup(
                id=rejected_id, kind="rejected", created=format_time(datetime.now(UTC)),
                version=plan.get("rejected_version"), for_version=plan.get("rejected_version"),
                reason=str(plan.get("reason", "")), method="moved", paths=tuple(moved), files=stats.files,
                bytes=stats.bytes, seconds=0.0, entries=tuple(stats.entries), restored_from=str(plan["backup"]),
            )
            (rejected / MANIFEST).write_bytes(_dump(backup.to_dict()))
            sync_tree(rejected)
            publish_dir(rejected, final)
        else:
            kept = None
    elif not final.exists():
        kept = None
    done = backups_dir(layout) / f".trash-restore-{secrets.token_hex(4)}"
    os.rename(journal, done)  # the journal is gone in one step; what is left is rubbish
    fsutil.fsync_dir(backups_dir(layout))
    rmtree(done)
    return RestoreResult(str(plan["backup"]), kept, round(time.monotonic() - started, 3), str(plan.get("method")))


def finish_pending(layout: Layout) -> list[str]:
    """After a crash: remove half-written snapshots and restore clones, and finish a restore whose
    journal was complete. Returns what was done (empty when nothing was pending)."""
    root = backups_dir(layout)
    actions: list[str] = []
    if not root.is_dir():
        return actions
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith((fsutil.TEMP_PREFIX, ".trash-")) or entry.name == ".restore-tmp":
            rmtree(path)
            if not entry.name.startswith(".trash-"):
                actions.append(f"removed an unfinished {'restore' if 'restore' in entry.name else 'data snapshot'}")
        elif entry.name.startswith(".reflink-probe-"):
            with contextlib.suppress(OSError):
                os.unlink(path)
    journal = root / ".restore"
    if journal.exists():
        result = _finish(layout, journal, time.monotonic())
        actions.append(f"finished restoring the data of backup {result.backup}"
                       + (f" (the data it replaced is backup {result.rejected})" if result.rejected else ""))
    return actions


def restore_pending(layout: Layout) -> bool:
    return (backups_dir(layout) / ".restore").exists()


# ----- verify and prune ---------------------------------------------------------------------------
def verify(layout: Layout, backup_id: str) -> list[str]:
    """Problems of backup ``backup_id`` against its manifest (empty: intact): every entry present
    with its type, mode, size, link text and, where recorded, sha256; nothing extra."""
    backup = load(layout, backup_id)
    root = backup_dir(layout, backup_id) / "data"
    problems: list[str] = []
    want = {e.path: e for e in backup.entries}
    seen: set[str] = set()
    try:
        found = list(scan(root, backup.paths))
    except BackupError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"cannot read {root}: {exc.strerror or exc}"]
    for rel, st in found:
        seen.add(rel)
        e = want.get(rel)
        if e is None:
            problems.append(f"{rel}: not in the manifest")
            continue
        got = entry_of(root, rel, st)
        if got.type != e.type:
            problems.append(f"{rel}: a {got.type}, the manifest says {e.type}")
        elif e.type == "link":
            if got.target != e.target:
                problems.append(f"{rel}: link text differs")
        elif got.mode != e.mode:
            problems.append(f"{rel}: mode {got.mode:o}, the manifest says {e.mode:o}")
        elif e.type == "file":
            if got.size != e.size:
                problems.append(f"{rel}: {got.size} bytes, the manifest says {e.size}")
            elif e.sha256 is not None and sha256_of(root / rel) != e.sha256:
                problems.append(f"{rel}: content differs from its sha256")
    problems.extend(f"{p}: missing" for p in sorted(set(want) - seen))
    return problems


def prune(layout: Layout, *, max_days: int, max_count: int, keep: Iterable[str | None] = ()) -> list[str]:
    """Remove backups older than ``max_days`` (0: no age limit) and all but the newest
    ``max_count`` (0: no count limit); ``keep`` (the snapshot a rollback of the running version
    would restore) stays while it is within ``max_days``. Returns the removed ids."""
    backups = list_backups(layout)
    kept = {k for k in keep if k} & {b.id for b in backups if not (max_days and age_days(b.created) > max_days)}
    removed = []
    others = sorted((b for b in backups if b.id not in kept), key=lambda b: b.id, reverse=True)
    room = max(max_count - len(kept), 0)  # the kept snapshot counts towards max_count
    for rank, b in enumerate(others):
        too_old = bool(max_days) and age_days(b.created) > max_days
        too_many = bool(max_count) and rank >= room
        if too_old or too_many:
            gone = backups_dir(layout) / f".trash-{b.id}"
            os.rename(backup_dir(layout, b.id), gone)  # one step out of the list, then deleted
            fsutil.fsync_dir(backups_dir(layout))
            rmtree(gone)
            removed.append(b.id)
    return removed


__all__ = [
    "Backup", "BackupError", "Entry", "RestoreResult", "SpacePlan", "backup_dir", "backups_dir", "check_space",
    "copy_tree",
    "digest_tree", "count", "exists", "finish_pending", "list_backups", "load", "new_id", "plan_space", "probe_reflink",
    "prune", "restore", "restore_pending", "snapshot", "valid_id", "verify",
]
