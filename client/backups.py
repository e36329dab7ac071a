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
import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pinnacle_updates.client.errors import BackupError, BackupSpaceError
from pinnacle_updates.client.slots import Layout, age_days
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.rollout import format_time

SCHEMA = 1
MANIFEST = "backup.json"
MANIFEST_MAX = 256 << 20
"""Bytes of a backup manifest read at most (about 200 bytes an entry: a million entries fit)."""
HASH_MAX = 1 << 20
"""Files up to this size that are copied through the process get a sha256 in the manifest (the
bytes pass through memory anyway); larger files, and cloned ones, are recorded by size and mtime."""
SPACE_MARGIN_MAX = 64 << 20
"""Free space a snapshot leaves on the file system beyond what it needs, since the update goes on
writing after it: a tenth of the snapshot plus 1 MiB, at most this."""
KINDS = ("snapshot", "rejected")
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_NOT_CLONABLE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


# ----- the manifest -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One path under the data directory (``name/sub/file``) as it was snapshotted."""

    path: str
    type: str  # file | dir | link
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    sha256: str | None = None
    target: str | None = None  # a link's text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode, "uid": self.uid,
                               "gid": self.gid}
        if self.type == "file":
            out.update(size=self.size, mtime_ns=self.mtime_ns, sha256=self.sha256)
        if self.type == "link":
            out["target"] = self.target
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Entry:
        if not isinstance(d, dict):
            raise BackupError("backup manifest: an entry is not an object")
        kind = d.get("type")
        path = d.get("path")
        if kind not in ("file", "dir", "link") or not isinstance(path, str) or not _safe_rel(path):
            raise BackupError(f"backup manifest: bad entry {str(path)[:80]!r}")
        sha = d.get("sha256")
        target = d.get("target")
        return cls(path=path, type=kind, mode=int(d["mode"]), uid=int(d["uid"]), gid=int(d["gid"]),
                   size=int(d.get("size", 0)), mtime_ns=int(d.get("mtime_ns", 0)),
                   sha256=sha if isinstance(sha, str) else None,
                   target=target if isinstance(target, str) else None)


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


def _safe_rel(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts) \
        and "\x00" not in path


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


def list_backups(layout: Layout) -> list[Backup]:
    """Every complete backup, oldest first; an unreadable one is skipped (``verify`` names it)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.scandir(backups_dir(layout)), key=lambda e: e.name):
            if valid_id(entry.name) and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(BackupError):
                    out.append(load(layout, entry.name))
    return out


# ----- copying a tree -----------------------------------------------------------------------------
@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    cloned: int = 0
    copied: int = 0
    reflink: bool = True  # False once the file system refused a clone: stop trying
    entries: list[Entry] = field(default_factory=list)

    @property
    def method(self) -> str:
        if not self.files:
            return "empty"
        if self.cloned and self.copied:
            return "mixed"
        return "reflink" if self.cloned else "copy"


Progress = Callable[[int, int], None]


def scan(root: Path, names: Iterable[str]) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under ``root/<name>`` (the names themselves included), parents first, by lstat:
    links are entries, never followed. A FIFO, socket or device is refused: it cannot be copied
    faithfully and reading one may block for ever."""
    base = os.fspath(root)  # plain strings: pathlib cost more than the syscalls on a 10,000-file tree
    stack = [n for n in sorted(names, reverse=True) if os.path.lexists(os.path.join(base, n))]
    while stack:
        rel = stack.pop()
        path = f"{base}/{rel}"
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise BackupError(
                f"cannot back up data/{rel}: it is a {_kind_name(kind)}; persistent paths may hold only files, "
                "directories and symbolic links"
            )
        yield rel, st
        if kind == stat.S_IFDIR:
            stack.extend(f"{rel}/{n}" for n in sorted(os.listdir(path), reverse=True))


def _kind_name(kind: int) -> str:
    return {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
            stat.S_IFBLK: "block device"}.get(kind, "special file")


def needed_bytes(root: Path, names: Iterable[str]) -> tuple[int, int]:
    """(bytes, entries) a copy of ``root/<names>`` takes: file sizes in 4 KiB blocks plus a block
    an entry for inodes and directories. Raises ``BackupError`` for a special file."""
    total = entries = 0
    for _rel, st in scan(root, names):
        entries += 1
        if stat.S_ISREG(st.st_mode):
            total += -(-st.st_size // 4096) * 4096
    return total + entries * 4096, entries


COPY_WORKERS = 2
"""Threads copying file contents. ``FICLONE``, ``copy_file_range``, ``read``/``write`` and sha256
all run outside the GIL, so a second worker keeps a second CPU (or another request in the disk's
queue) busy while the walk stays on the calling thread; measured in ``bench/backup.py``."""
BATCH_FILES = 64
BATCH_BYTES = 8 << 20
"""Files go to the workers in batches of at most this many files or bytes (whichever is reached
first): one hand-over per batch instead of per file, which costs about as much as a clone."""
COPY_QUEUE = 8
"""Batches handed over and not yet collected, at most: bounds memory on huge trees."""

_Job = tuple[str, str, os.stat_result]


def copy_tree(src_root: Path, names: Iterable[str], dst_root: Path, *, hash_files: bool = True,
              progress: Progress | None = None, total: int = 0) -> CopyStats:
    """Copy ``src_root/<name>`` for each name into ``dst_root`` (which exists): files cloned when the
    file system allows, else copied; directories and links recreated; modes, owners (when this
    process may set them) and times kept. Not durable by itself: the caller syncs once.

    Directories and links are made by the calling thread in walk order (a parent exists before its
    files are handed over); file contents go to ``COPY_WORKERS`` threads in batches. On any error
    the batches not started are dropped and the running ones finish before it is raised, so the
    caller may remove ``dst_root`` at once."""
    stats = CopyStats()
    dirs: list[tuple[str, os.stat_result]] = []
    chown = os.geteuid() == 0 if hasattr(os, "geteuid") else False
    src_base, dst_base = os.fspath(src_root), os.fspath(dst_root)
    entries: list[Entry | None] = []
    batch: list[_Job] = []
    batch_bytes = 0
    first = 0  # index in entries of the batch's first file
    queue: collections.deque[tuple[int, list[_Job], Future[list[tuple[str | None, bool]]]]] = collections.deque()

    def collect() -> None:
        start, jobs, done = queue.popleft()
        index = start
        for (_src, _dst, st), (digest, cloned) in zip(jobs, done.result(), strict=True):
            while entries[index] is not None:  # dirs and links walked between the batch's files
                index += 1
            if cloned:
                stats.cloned += 1
            elif st.st_size:  # an empty file is neither: it must not make a reflink snapshot "mixed"
                stats.copied += 1
            stats.files += 1
            stats.bytes += st.st_size
            entries[index] = Entry(_src[len(src_base) + 1:], "file", stat.S_IMODE(st.st_mode), st.st_uid,
                                   st.st_gid, st.st_size, st.st_mtime_ns, digest)
            index += 1
        if progress is not None:
            progress(stats.bytes, total)

    with ThreadPoolExecutor(COPY_WORKERS, thread_name_prefix="pinnacle-backup") as pool:

        def hand_over() -> None:
            nonlocal batch, batch_bytes
            queue.append((first, batch, pool.submit(_copy_files, batch, stats, hash_files, chown)))
            batch, batch_bytes = [], 0
            if len(queue) >= COPY_QUEUE:
                collect()

        try:
            for rel, st in scan(src_root, names):
                src, dst = f"{src_base}/{rel}", f"{dst_base}/{rel}"
                kind = stat.S_IFMT(st.st_mode)
                if kind == stat.S_IFDIR:
                    os.mkdir(dst, 0o700)  # opened up to its own mode once its children are in
                    dirs.append((dst, st))
                    entries.append(Entry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
                elif kind == stat.S_IFLNK:
                    target = os.readlink(src)
                    os.symlink(target, dst)
                    if chown:
                        os.lchown(dst, st.st_uid, st.st_gid)
                    with contextlib.suppress(NotImplementedError, OSError):
                        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                    entries.append(Entry(rel, "link", 0o777, st.st_uid, st.st_gid, target=target))
                else:
                    if not batch:
                        first = len(entries)
                    batch.append((src, dst, st))
                    batch_bytes += st.st_size
                    entries.append(None)
                    if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                        hand_over()
            if batch:
                hand_over()
            while queue:
                collect()
        except BaseException:
            for *_, job in queue:
                job.cancel()  # the pool's exit waits for the ones already running
            raise
    stats.entries = [e for e in entries if e is not None]
    for dst, st in reversed(dirs):  # children first: setting a parent's mtime last keeps it
        if chown:
            os.chown(dst, st.st_uid, st.st_gid)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return stats


def _copy_files(jobs: list[_Job], stats: CopyStats, hash_files: bool, chown: bool) -> list[tuple[str | None, bool]]:
    return [_copy_file(src, dst, st, stats, hash_files, chown) for src, dst, st in jobs]


def _copy_file(src: str, dst: str, st: os.stat_result, stats: CopyStats, hash_files: bool,
               chown: bool) -> tuple[str | None, bool]:
    """One regular file (on a worker thread): a reflink clone, else a copy (through memory, hashed,
    for small files; in the kernel for the rest). ``O_NOFOLLOW`` both ways: a link swapped in
    meanwhile fails. Returns (sha256 or None, cloned)."""
    try:
        sfd = fsutil.open_regular(src)
    except fsutil.NotRegularFile as exc:
        raise BackupError(f"cannot back up {src}: it changed while being copied ({exc})") from exc
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            digest = None
            cloned = _clone(sfd, dfd, st.st_size, stats)
            if not cloned:
                digest = _copy_bytes(sfd, dfd, st.st_size, hash_files)
            if chown:
                os.fchown(dfd, st.st_uid, st.st_gid)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            return digest, cloned
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _clone(sfd: int, dfd: int, size: int, stats: CopyStats) -> bool:
    if not stats.reflink or size == 0:
        return False
    try:
        fcntl.ioctl(dfd, FICLONE, sfd)
    except OSError as exc:
        if exc.errno in _NOT_CLONABLE:
            stats.reflink = False  # this file system cannot: copy the rest without asking again
            return False
        raise
    return True


def _copy_bytes(sfd: int, dfd: int, size: int, hash_files: bool) -> str | None:
    if hash_files and size <= HASH_MAX:
        parts = []
        want = size + 1  # one byte more than lstat said: a short read is the end of the file
        while True:  # read to EOF: a file that grew is copied whole
            chunk = os.read(sfd, want)
            parts.append(chunk)
            if len(chunk) < want:
                break
            want = 1 << 20
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        view = memoryview(data)
        while view:
            view = view[os.write(dfd, view):]
        return hashlib.sha256(data).hexdigest()
    copied = 0
    try:
        while True:  # in the kernel (no copy through this process); to EOF
            n = os.copy_file_range(sfd, dfd, 1 << 30)
            if n == 0:
                break
            copied += n
    except OSError as exc:
        if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        with os.fdopen(os.dup(sfd), "rb") as fin, os.fdopen(os.dup(dfd), "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    return None


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _sync_tree(root: Path) -> None:
    """Make everything written under ``root`` durable: one ``syncfs`` where Linux has it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fsutil.sync_filesystem(fd):
            return
    finally:
        os.close(fd)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        fsutil.fsync_dir(dirpath)


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename a complete directory into place, durably (the commit point of a backup)."""
    os.rename(tmp, final)
    fsutil.fsync_dir(final.parent)


def _rmtree(path: Path) -> None:
    """Remove a tree we wrote (backups are ours: links inside are removed, never followed)."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        os.unlink(path)
        return
    # modes copied from the data may deny us; open directories up before removing
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path)


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


def probe_reflink(src_dir: Path, dst_dir: Path) -> bool:
    """Can files be cloned from ``src_dir`` into ``dst_dir``? One tiny clone tells."""
    src = src_dir / f".reflink-probe-{os.getpid()}"
    dst = dst_dir / f".reflink-probe-{os.getpid()}"
    try:
        fsutil.atomic_write(src, b"pinnacle reflink probe\n")
        sfd = os.open(src, os.O_RDONLY)
        try:
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
                return True
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except OSError:
        return False
    finally:
        for p in (src, dst):
            with contextlib.suppress(OSError):
                os.unlink(p)


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
        _publish_dir(tmp, final)
    except BackupError:
        _rmtree(tmp)
        raise
    except OSError as exc:
        _rmtree(tmp)
        raise BackupError(f"cannot snapshot the persistent data: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from exc
    return backup


def _write_manifest(tmp: Path, backup: Backup) -> None:
    data = _dump(backup.to_dict())
    with open(tmp / MANIFEST, "wb") as f:  # the whole directory is synced next, then renamed in
        f.write(data)
    _sync_tree(tmp)
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
            rejected_version: str | None, reason: str) -> RestoreResult:
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
    _rmtree(tmp)
    try:
        (tmp / "data").mkdir(parents=True)
        (tmp / "rejected" / "data").mkdir(parents=True)
        stats = copy_tree(backup_dir(layout, backup_id) / "data", source.paths, tmp / "data", hash_files=False)
        present = sorted(n for n in {*names, *source.paths} if os.path.lexists(layout.data / n))
        plan = {"backup": backup_id, "rejected": rejected_id, "put": sorted(source.paths), "move_aside": present,
                "version": version, "rejected_version": rejected_version, "reason": reason,
                "method": stats.method}
        (tmp / "plan.json").write_bytes(_dump(plan))
        _sync_tree(tmp)
        _publish_dir(tmp, journal)
    except OSError as exc:
        _rmtree(tmp)
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
                stats.entries.append(_entry(rejected / "data", rel, st))
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
            _sync_tree(rejected)
            _publish_dir(rejected, final)
        else:
            kept = None
    elif not final.exists():
        kept = None
    done = backups_dir(layout) / f".trash-restore-{secrets.token_hex(4)}"
    os.rename(journal, done)  # the journal is gone in one step; what is left is rubbish
    fsutil.fsync_dir(backups_dir(layout))
    _rmtree(done)
    return RestoreResult(str(plan["backup"]), kept, round(time.monotonic() - started, 3), str(plan.get("method")))


def _entry(root: Path, rel: str, st: os.stat_result) -> Entry:
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        return Entry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if kind == stat.S_IFLNK:
        return Entry(rel, "link", 0o777, st.st_uid, st.st_gid, target=os.readlink(root / rel))
    return Entry(rel, "file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)


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
            _rmtree(path)
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
        got = _entry(root, rel, st)
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
            elif e.sha256 is not None and _sha256_of(root / rel) != e.sha256:
                problems.append(f"{rel}: content differs from its sha256")
    problems.extend(f"{p}: missing" for p in sorted(set(want) - seen))
    return problems


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    fd = fsutil.open_regular(path)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
            _rmtree(gone)
            removed.append(b.id)
    return removed


def digest_tree(root: Path, names: Iterable[str]) -> str:
    """One sha256 over a tree (paths, types, modes, sizes, contents, link texts): equal digests
    mean equal data. Tests and ``bench/backup.py`` compare trees with it."""
    h = hashlib.sha256()
    for rel, st in scan(root, names):
        e = _entry(root, rel, st)
        h.update(f"{rel}\0{e.type}\0{e.mode:o}\0{e.target or ''}\0".encode())
        if e.type == "file":
            h.update(_sha256_of(root / rel).encode())
    return h.hexdigest()


__all__ = [
    "Backup", "BackupError", "Entry", "RestoreResult", "SpacePlan", "backup_dir", "backups_dir", "check_space",
    "copy_tree",
    "digest_tree", "exists", "finish_pending", "list_backups", "load", "new_id", "plan_space", "probe_reflink",
    "prune", "restore", "restore_pending", "snapshot", "valid_id", "verify",
]
