"""Copying a data tree faithfully: the engine under ``client.backups`` (snapshots and restores).

Files are cloned with ``ioctl(FICLONE)`` where the file system shares blocks (btrfs, XFS, bcachefs)
and copied otherwise (through memory with a sha256 up to ``HASH_MAX``, in the kernel with
``copy_file_range`` above); directories and symbolic links are recreated (a link is copied as a
link, never followed); modes, times and, as root, owners are kept; a FIFO, socket or device is
refused (``BackupError``): it cannot be copied faithfully and reading one may block for ever.
Nothing here is durable by itself: callers ``sync_tree`` once and ``publish_dir`` a finished tree.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinnacle_updates.client.errors import BackupError
from pinnacle_updates.formats import fsutil

HASH_MAX = 1 << 20
"""Files up to this size that are copied through the process get a sha256 in the manifest (the
bytes pass through memory anyway); larger files, and cloned ones, are recorded by size and mtime."""


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_NOT_CLONABLE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


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


def _safe_rel(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts) \
        and "\x00" not in path


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


def sync_tree(root: Path) -> None:
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


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a complete directory into place, durably (the commit point of a backup)."""
    os.rename(tmp, final)
    fsutil.fsync_dir(final.parent)


def rmtree(path: Path) -> None:
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


def probe_reflink(src_dir: Path, dst_dir: Path) -> bool:
    """Can files be cloned from ``src_dir`` into ``dst_dir``? One tiny clone tells."""
    src = src_dir / f".reflink-probe-{os.getpid()}"
    dst = dst_dir / f".reflink-probe-{os.getpid()}"
    try:
        # Deleted again below: not worth the fsyncs of an atomic write (two per probe, on every install).
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"pinnacle reflink probe\n")
        finally:
            os.close(fd)
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


def entry_of(root: Path, rel: str, st: os.stat_result) -> Entry:
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        return Entry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if kind == stat.S_IFLNK:
        return Entry(rel, "link", 0o777, st.st_uid, st.st_gid, target=os.readlink(root / rel))
    return Entry(rel, "file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    fd = fsutil.open_regular(path)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_tree(root: Path, names: Iterable[str]) -> str:
    """One sha256 over a tree (paths, types, modes, sizes, contents, link texts): equal digests
    mean equal data. Tests and ``bench/backup.py`` compare trees with it."""
    h = hashlib.sha256()
    for rel, st in scan(root, names):
        e = entry_of(root, rel, st)
        h.update(f"{rel}\0{e.type}\0{e.mode:o}\0{e.target or ''}\0".encode())
        if e.type == "file":
            h.update(sha256_of(root / rel).encode())
    return h.hexdigest()


__all__ = [
    "FICLONE", "HASH_MAX", "CopyStats", "Entry", "copy_tree", "digest_tree", "entry_of", "free_bytes",
    "needed_bytes", "Progress", "probe_reflink", "publish_dir", "rmtree", "scan", "sha256_of", "sync_tree",
]
