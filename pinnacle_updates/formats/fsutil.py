"""Crash-safe file primitives shared by the publisher and the client.

Every state change in pinnacle goes through these: write to a temporary file in the same
directory, fsync it, rename it over the destination, fsync the directory. A kill at any
instant leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(fd: int) -> bool:
    """Make every file written so far on the file system of ``fd`` durable with one ``syncfs(2)``
    (Linux): much cheaper than an ``fsync`` per file when a slot of many files was just written
    (one journal commit instead of one each). Returns False where it is unavailable, and the
    caller fsyncs file by file. An ``OSError`` is raised if it fails (write-back errors are
    reported by Linux 5.8 and later)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here: loaded only by the commands that write a tree

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def _temp_path(dest: Path) -> Path:
    return dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{dest.name}")


@contextlib.contextmanager
def atomic_writer(dest: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``dest`` atomically when the block exits cleanly.

    On an exception the temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    tmp = _temp_path(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask must not weaken or widen what the caller asked for
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def atomic_write(dest: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``dest`` with ``data`` atomically and durably."""
    with atomic_writer(dest, mode) as f:
        f.write(data)


def atomic_move(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Fsync ``src`` and rename it over ``dest`` (same file system), then fsync the directory."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dest)
    fsync_dir(Path(dest).parent)


def atomic_symlink(target: str, link: str | os.PathLike[str]) -> None:
    """Point ``link`` at ``target`` by renaming a new symlink over the old one."""
    link = Path(link)
    tmp = _temp_path(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(link.parent)


def remove_stale_temps(directory: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed writer left in ``directory``; return how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.startswith(TEMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class NotRegularFile(OSError):
    """A path that should hold a file we wrote holds a FIFO, device, socket, directory or symlink."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o644, *,
                 follow: bool = False) -> int:
    """Open ``path`` (``flags`` as for ``os.open``) only if it is a regular file, and return the fd.

    ``O_NONBLOCK`` makes opening a planted FIFO return at once instead of waiting for a writer, and
    ``fstat`` then refuses it (and devices, sockets, directories); without ``follow`` a symlink is
    refused too (``O_NOFOLLOW``): the files pinnacle itself writes are never links. Raises
    ``NotRegularFile`` (an ``OSError``) naming what is there."""
    try:
        fd = os.open(path, flags | _NONBLOCK | _CLOEXEC | (0 if follow else _NOFOLLOW), mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR) and os.path.lexists(path):
            raise _not_regular(path, os.lstat(path).st_mode) from None  # say what is there, not the errno
        raise
    try:
        st_mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(st_mode):
            raise _not_regular(path, st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_regular(path: str | os.PathLike[str], st_mode: int) -> NotRegularFile:
    kind = ("a FIFO" if stat.S_ISFIFO(st_mode) else "a symbolic link" if stat.S_ISLNK(st_mode)
            else "a directory" if stat.S_ISDIR(st_mode) else "a socket" if stat.S_ISSOCK(st_mode)
            else "a device" if stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode) else "not a regular file")
    return NotRegularFile(errno.EINVAL, f"{kind}, not a regular file" if kind[0] == "a" else kind, str(path))


def read_regular(path: str | os.PathLike[str], limit: int, *, follow: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (see ``open_regular``), at most ``limit`` of them:
    a larger file raises ``OSError`` (``EFBIG``) without being read past the limit."""
    fd = open_regular(path, follow=follow)
    try:
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return b"".join(chunks)


def append_line(path: str | os.PathLike[str], line: bytes) -> None:
    """Append one ``line`` (ending in a newline) to the log at ``path`` (created when missing) and
    fsync before returning: a record that was reported is on disk. A killed writer leaves at most a
    torn last line; the next append starts on a fresh line, and ``tail_lines`` readers skip it."""
    fd = open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)  # read-write: never blocks, even on a FIFO
    try:
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def tail_lines(path: str | os.PathLike[str], limit: int) -> list[bytes]:
    """The lines in the last ``limit`` bytes of the regular file ``path`` (a first line cut by the
    limit is dropped); ``FileNotFoundError``/``OSError`` as ``open_regular``."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit)
        data = os.pread(fd, size - start, start) if size else b""
    finally:
        os.close(fd)
    return data.split(b"\n")[1 if start else 0:]


def open_to_others(mode: int) -> str:
    """'' when a secret file's ``st_mode`` keeps it from other users, else why not (one phrase): the one
    rule for every secret file (tokens, ingest keys, repository credentials)."""
    return f"is readable by other users (mode {mode & 0o777:o})" if mode & 0o077 else ""


class LockBusyError(OSError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], wait: bool = False, record_pid: bool = True) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``path`` for the block.

    The kernel drops the lock when the holder dies, so a ``kill -9`` never leaves a stale lock.
    Raises ``LockBusyError`` at once when ``wait`` is false and another process holds it.
    """
    fd = open_regular(path, os.O_RDWR | os.O_CREAT)  # a FIFO planted there must not hang or lock
    try:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockBusyError(errno.EWOULDBLOCK, f"{path} is held by another process") from exc
            raise
        if record_pid:  # lets a refused caller name the holder
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
