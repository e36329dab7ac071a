"""Safe extraction of a canonical archive into a tree, and verification of a tree against its manifest.

The archive's layout and the path rules are in :mod:`pinnacle_updates.formats.archive`; this module
reads archives into trees with them: the client into its slots, the publisher into the staging of a
delta's base. All file access below a root goes through
directory file descriptors with ``O_NOFOLLOW`` (``open_beneath``), so a symlink planted in a tree can never
redirect a read or a write. Every violation raises ``ArchiveError`` (one line); each side turns it into its own error.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import zstandard

from .archive import (
    CHUNK_SIZE,
    MEMBER_KINDS,
    ArchiveError,
    copy_hashed,
    fd_reader,
    is_skipped,
    list_dir,
    manifest_problems,
    open_beneath,
    open_parent,
    padding,
    path_problem,
    read_link,
    show_path,
    tar_header,
    tar_length,
)
from .fsutil import sync_filesystem
from .index import Digest, EntryType, Manifest, ManifestEntry

PARALLEL_HASH_MIN = 4 << 20
"""Bytes :func:`verify_tree` re-hashes from which it uses a second thread (with a second CPU)."""


# -- extraction ------------------------------------------------------------------------------------


class _BoundedHashingReader:
    """A read-only stream that hashes everything read and refuses more than ``limit`` bytes."""

    def __init__(self, read: Callable[[int], bytes], limit: int) -> None:
        self._read = read
        self._limit = limit
        self._hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK_SIZE
        data = self._read(min(size, self._limit - self.count + 1))
        self.count += len(data)
        if self.count > self._limit:
            raise ArchiveError(f"archive is longer than the manifest's {self._limit} bytes")
        self._hash.update(data)
        return data

    def drain(self) -> Digest:
        """Read to the end (still bounded) and return the digest of the whole stream."""
        while self.read(CHUNK_SIZE):
            pass
        return Digest(self.count, self._hash.hexdigest())


def _check_member(member: tarfile.TarInfo, entry: ManifestEntry | None) -> None:
    """``member`` must be safe on its own and be exactly ``entry`` (the next manifest entry)."""
    name = show_path(member.name)
    bad = path_problem(member.name)
    if bad:
        raise ArchiveError(f"unsafe archive member {name!r}: {bad}")
    kind = MEMBER_KINDS.get(member.type)
    if kind is None:
        what = {tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "device", tarfile.BLKTYPE: "device",
                tarfile.FIFOTYPE: "fifo"}.get(member.type, f"type {member.type!r}")
        raise ArchiveError(f"archive member {name}: {what} not allowed")
    if entry is None:
        raise ArchiveError(f"archive member {name} is not in the manifest")
    if member.name != entry.path:
        raise ArchiveError(f"archive member {name} is not the next manifest entry {show_path(entry.path)}")
    if kind is not entry.type:
        raise ArchiveError(f"archive member {name} is a {kind.value}, the manifest says {entry.type.value}")
    if member.mode != entry.mode:
        raise ArchiveError(f"archive member {name} has mode {member.mode:o}, manifest says {entry.mode:o}")
    if kind is EntryType.SYMLINK and member.linkname != entry.link:
        raise ArchiveError(f"archive member {name} -> {member.linkname!r}, manifest says -> {entry.link!r}")
    if kind is EntryType.FILE and member.size != entry.size:
        raise ArchiveError(f"archive member {name} has {member.size} bytes, the manifest says {entry.size}")


def write_file(root_fd: int, entry: ManifestEntry, source: Callable[[int], bytes], hashed: bool = True) -> None:
    """Create ``entry`` (O_EXCL, no symlink anywhere) from ``source``, at most ``entry.size`` bytes,
    hashed on the way unless the caller already hashed the very bytes ``source`` yields."""
    fd = open_beneath(root_fd, entry.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as out:
        if hashed:
            got, overflow = copy_hashed(source, out.write, entry.size)
        else:
            data = source(entry.size)
            out.write(data)
            got, overflow = Digest(len(data), entry.sha256), False  # the size is all that is left to check
        os.fchmod(out.fileno(), entry.mode)
    if overflow:
        raise ArchiveError(f"{show_path(entry.path)} is larger than the manifest's {entry.size} bytes")
    if got != Digest(entry.size, entry.sha256):
        raise ArchiveError(f"{show_path(entry.path)} does not match its manifest sha256/size")


def create_entry(root_fd: int, entry: ManifestEntry) -> None:
    parent, name = open_parent(root_fd, entry.path)
    try:
        if entry.type is EntryType.DIR:
            os.mkdir(name, 0o700, dir_fd=parent)  # final mode set by the closing fsync pass
        else:
            os.symlink(entry.link, name, dir_fd=parent)
    finally:
        os.close(parent)


def finish_tree(root_fd: int, manifest: Manifest) -> None:
    """One closing pass: set directory modes; then make the whole tree durable with one ``syncfs``
    of its file system where available (:func:`formats.fsutil.sync_filesystem`: one journal commit
    instead of one per file), else with an fsync of every file and directory, deepest first."""
    for e in reversed(manifest.entries):
        if e.type is EntryType.DIR:
            fd = open_beneath(root_fd, e.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchmod(fd, e.mode)
            finally:
                os.close(fd)
    if sync_filesystem(root_fd):
        return
    for e in reversed(manifest.entries):
        if e.type is EntryType.SYMLINK:
            continue  # made durable by its directory's fsync
        fd = open_beneath(root_fd, e.path, os.O_RDONLY | (os.O_DIRECTORY if e.type is EntryType.DIR else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.fsync(root_fd)


def extract_release(artifact: Path, dest: Path, manifest: Manifest) -> None:
    """Extract the full artifact (zstd of the canonical tar) into the empty directory ``dest``.

    Defence in depth on top of TUF verification: the manifest must pass :func:`manifest_problems`;
    every tar member must be exactly the next manifest entry (path, type, mode, link, size); only
    files, directories and symlinks are accepted; files are created with ``O_EXCL|O_NOFOLLOW``
    under parents opened with ``O_NOFOLLOW`` (nothing is ever written through a symlink or outside
    ``dest``), written at most ``size`` bytes and hashed while written; the whole decompressed
    stream is hashed, bounded by and compared with ``manifest.content``. Decompression streams in
    ``CHUNK_SIZE`` pieces. Everything is fsynced in one pass at the end.

    Raises ``ArchiveError`` (one line) on any violation. Partial output is then left in ``dest``:
    the caller discards the slot.
    """
    problems = manifest_problems(manifest.entries)
    if problems:
        raise ArchiveError(f"manifest {manifest.version} rejected: {problems[0]}")
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"cannot open slot {dest}: {exc.strerror}") from exc
    try:
        if os.listdir(root_fd):
            raise ArchiveError(f"slot {dest} is not empty")
        with open(artifact, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK_SIZE
        ) as unzstd:
            extract_stream(unzstd.read, root_fd, manifest)
        finish_tree(root_fd, manifest)
    except ArchiveError:
        raise
    except (OSError, tarfile.TarError, zstandard.ZstdError, UnicodeError, EOFError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        raise ArchiveError(f"cannot extract {artifact.name}: {detail}{where}") from exc
    finally:
        os.close(root_fd)


def extract_stream(read: Callable[[int], bytes], root_fd: int, manifest: Manifest) -> None:
    """Extract the tar that ``read`` yields into the empty directory ``root_fd`` with every check of
    :func:`extract_release` (members exactly the manifest's entries in order, files written
    ``O_EXCL|O_NOFOLLOW`` at most their size and hashed; the whole stream bounded by, hashed and
    compared with ``manifest.content``). No fsync. Raises ``ArchiveError`` on a violation;
    ``tarfile``, ``OSError`` and decoder errors propagate for the caller to word."""
    stream = _BoundedHashingReader(read, manifest.content.length)
    _extract_members(stream, root_fd, manifest)
    if stream.drain() != manifest.content:
        raise ArchiveError(f"archive content differs from manifest {manifest.version} (sha256/length)")


def extract_canonical(
    read: Callable[[int], bytes], root_fd: int, manifest: Manifest, skip: Iterable[str] = (), hashed: bool = True
) -> None:
    """Extract the canonical tar of ``manifest`` that ``read`` yields into the empty directory
    ``root_fd``, by its known layout rather than by parsing it: every byte that is not file content
    (each entry's header, the padding, the end blocks) must be exactly what
    :func:`write_canonical_tar` writes for these entries, and each file's bytes its size and sha256
    (written ``O_EXCL|O_NOFOLLOW``, hashed on the way), so the stream as a whole is checked without
    hashing it; nothing past the manifest's length is read. Entries below the top-level paths
    ``skip`` are consumed but neither created nor checked. ``hashed=False``: ``read`` yields bytes
    already hashed against ``manifest`` (:func:`read_canonical_tar`), so files are written unhashed
    (sizes and layout still checked). No fsync (the caller's :func:`finish_tree`). Raises
    ``ArchiveError`` on any difference; ``OSError`` and decoder errors propagate."""
    skipped = frozenset(p.strip("/") for p in skip)
    headers = [tar_header(e) for e in manifest.entries]
    length = tar_length(manifest.entries, headers)
    if length != manifest.content.length:
        raise ArchiveError(f"manifest {manifest.version} describes a {length}-byte archive, "
                           f"its content digest {manifest.content.length} bytes")
    source = _Exact(read)
    for e, header in zip(manifest.entries, headers, strict=True):
        if source.take(len(header)) != header:
            raise ArchiveError(f"archive header of {show_path(e.path)} is not the canonical one")
        hole = bool(skipped) and is_skipped(e.path, skipped)
        if e.type is EntryType.FILE:
            if hole:
                source.skip(e.size)
            else:
                write_file(root_fd, e, source.limited(e.size), hashed)
            if source.take(padding(e.size)).count(0) != padding(e.size):
                raise ArchiveError(f"archive padding after {show_path(e.path)} is not zeros")
        elif not hole:
            create_entry(root_fd, e)
    tail = length - source.count
    if source.take(tail).count(0) != tail:
        raise ArchiveError("archive end blocks are not zeros")
    if read(1):
        raise ArchiveError(f"archive is longer than the manifest's {length} bytes")


class _Exact:
    """Exact-size reads from a stream (``read(n)`` may return fewer bytes): a short stream is an
    ``ArchiveError``; ``count`` is the bytes taken so far."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.count = 0

    def take(self, n: int) -> bytes:
        if n <= 0:
            return b""
        out = self._read(n)
        while len(out) < n:
            more = self._read(n - len(out))
            if not more:
                raise ArchiveError(f"archive ends {n - len(out)} bytes early, after {self.count + len(out)}")
            out += more
        self.count += n
        return out

    def limited(self, n: int) -> Callable[[int], bytes]:
        """A reader of exactly the next ``n`` bytes (then ``b""``)."""
        left = n

        def read(size: int) -> bytes:
            nonlocal left
            data = self.take(min(size, left)) if left else b""
            left -= len(data)
            return data

        return read

    def skip(self, n: int) -> None:
        while n:
            n -= len(self.take(min(n, CHUNK_SIZE)))


def _extract_members(stream: _BoundedHashingReader, root_fd: int, manifest: Manifest) -> None:
    expected = iter(manifest.entries)
    with tarfile.open(  # type: ignore[call-overload]
        fileobj=stream, mode="r|", encoding="utf-8", errors="strict", bufsize=CHUNK_SIZE
    ) as tar:
        for member in tar:
            entry = next(expected, None)
            _check_member(member, entry)
            assert entry is not None
            if entry.type is EntryType.FILE:
                data = tar.extractfile(member)
                assert data is not None
                write_file(root_fd, entry, data.read)
            else:
                create_entry(root_fd, entry)
    missing = next(expected, None)
    if missing is not None:
        raise ArchiveError(f"archive ends before manifest entry {show_path(missing.path)}")


# -- verification ----------------------------------------------------------------------------------


def verify_tree(root: Path, manifest: Manifest, skip: Iterable[str] = ()) -> list[str]:
    """Compare the slot ``root`` with ``manifest`` file by file, re-hashing every file.

    Returns human-readable problems sorted by path ("modified: bin/app", "missing: x",
    "unexpected: y", "mode changed: ...", "not a symlink: ...", ...); an empty list means the slot
    is exactly the release. ``skip`` names relative paths (persistent data such as ``logs``)
    excluded on both sides, with everything below them. Below a missing or unexpected directory only
    the directory itself is reported.
    """
    skipped = frozenset(s.strip("/") for s in skip)
    wanted = {e.path: e for e in manifest.entries if not is_skipped(e.path, skipped)}
    problems: list[tuple[bytes, str]] = []

    def report(path: str, text: str) -> None:
        problems.append((path.encode("utf-8", "surrogateescape"), f"{text}: {show_path(path)}"))

    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return [f"missing: {root} ({exc.strerror})"]
    try:
        seen: set[str] = set()
        descended = {""}
        pending = [""]
        to_hash: list[ManifestEntry] = []
        while pending:
            directory = pending.pop()
            try:
                found = list_dir(root_fd, directory)
            except OSError as exc:
                report(directory, f"unreadable ({exc.strerror})")
                continue
            for path, st in found:
                if is_skipped(path, skipped):
                    continue
                entry = wanted.get(path)
                if entry is None:
                    report(path, "unexpected")
                    continue
                seen.add(path)
                try:
                    if _compare(root_fd, entry, st, report, to_hash):
                        pending.append(path)
                        descended.add(path)
                except OSError as exc:
                    report(path, f"unreadable ({exc.strerror})")
        for path in wanted:
            if path not in seen and path.rpartition("/")[0] in descended:
                report(path, "missing")
        _hash_files(root_fd, to_hash, report)
    finally:
        os.close(root_fd)
    return [text for _, text in sorted(problems)]


def _compare(
    root_fd: int, e: ManifestEntry, st: os.stat_result, report: Callable[[str, str], None],
    to_hash: list[ManifestEntry],
) -> bool:
    """Report how the object ``st`` at ``e.path`` differs from ``e``; True if it is a directory to descend.
    A regular file of the right size is added to ``to_hash`` (:func:`_hash_files` checks its content)."""
    if e.type is EntryType.DIR:
        if not stat.S_ISDIR(st.st_mode):
            report(e.path, "not a directory")
            return False
    elif e.type is EntryType.SYMLINK:
        if not stat.S_ISLNK(st.st_mode):
            report(e.path, "not a symlink")
            return False
        if read_link(root_fd, e.path) != e.link:
            report(e.path, "link changed")
        return False  # symlink permission bits are meaningless (and fixed on Linux)
    elif not stat.S_ISREG(st.st_mode):
        report(e.path, "not a regular file")
        return False
    if stat.S_IMODE(st.st_mode) != e.mode:
        report(e.path, f"mode changed ({stat.S_IMODE(st.st_mode):o}, expected {e.mode:o})")
    if e.type is EntryType.DIR:
        return True
    if st.st_size != e.size:
        report(e.path, "modified")
        return False
    to_hash.append(e)
    return False


def _check_files(
    root_fd: int, entries: Iterable[ManifestEntry], report: Callable[[str, str], None],
    stop: threading.Event | None = None,
) -> None:
    """Re-hash each file of ``entries`` below ``root_fd``: report it "modified" unless it has exactly the
    entry's size and sha256, "unreadable" when it cannot be opened or read. Returns early once ``stop`` is set."""
    for e in entries:
        if stop is not None and stop.is_set():
            return
        try:
            fd = open_beneath(root_fd, e.path, os.O_RDONLY)
            try:
                got, overflow = copy_hashed(fd_reader(fd), None, e.size)
            finally:
                os.close(fd)
        except OSError as exc:
            report(e.path, f"unreadable ({exc.strerror})")
            continue
        if overflow or got != Digest(e.size, e.sha256):
            report(e.path, "modified")


def _hash_files(root_fd: int, entries: Sequence[ManifestEntry], report: Callable[[str, str], None]) -> None:
    """:func:`_check_files` of every entry, split by size between this thread and a second one when there
    are at least ``PARALLEL_HASH_MIN`` bytes and a second CPU: reading and sha256 release the GIL, so the
    re-hash takes about half the wall time. Every file is still hashed, exactly once."""
    if sum(e.size for e in entries) < PARALLEL_HASH_MIN or _usable_cpus() < 2:
        _check_files(root_fd, entries, report)
        return
    halves: tuple[list[ManifestEntry], list[ManifestEntry]] = ([], [])
    sizes = [0, 0]
    for e in sorted(entries, key=lambda e: e.size, reverse=True):
        half = 0 if sizes[0] <= sizes[1] else 1
        halves[half].append(e)
        sizes[half] += e.size
    stop = threading.Event()
    failed: list[BaseException] = []

    def helper() -> None:
        try:
            _check_files(root_fd, halves[1], report, stop)
        except BaseException as exc:  # handed to the caller's thread below
            failed.append(exc)

    thread = threading.Thread(target=helper, name="verify_tree", daemon=True)
    thread.start()
    try:
        _check_files(root_fd, halves[0], report)
    except BaseException:
        stop.set()  # the helper stops after its current file; root_fd stays open until it has
        raise
    finally:
        thread.join()
    if failed:
        raise failed[0]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def tree_size(manifest: Manifest, block_size: int = 4096) -> int:
    """Upper estimate of the disk space the extracted release takes, for a free-space check:
    every file rounded up to whole blocks, one block per directory and symlink."""
    total = 0
    for e in manifest.entries:
        total += -(-e.size // block_size) * block_size if e.type is EntryType.FILE else block_size
    return total

