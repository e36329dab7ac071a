"""The canonical archive: its byte layout, safe extraction into a slot, and verification of a slot.

The canonical archive is a POSIX pax tar of a release tree whose bytes depend only on the
manifest and the file contents (see docs/ARCHITECTURE.md, "Canonical archive"). Everything that
defines it lives here, in the client, so that the publisher (``repo_tools.artifact``) writes it
through the same code the client can use to rebuild it from an installed slot, and so that the
rules for safe paths and links are one definition shared by the publisher's refusal of unsafe
input and the client's refusal of unsafe archives.

All file access below a root goes through directory file descriptors with ``O_NOFOLLOW``
(:func:`open_beneath`), so a symlink planted in a tree can never redirect a read or a write.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import zstandard

from .errors import InstallError
from .fsutil import sync_filesystem
from .index import Digest, EntryType, Manifest, ManifestEntry

CHUNK_SIZE = 1 << 20
"""Read/write granularity for every streamed copy (bounded memory)."""

PARALLEL_HASH_MIN = 4 << 20
"""Bytes :func:`verify_tree` re-hashes from which it uses a second thread (with a second CPU)."""

DIR_MODE = 0o755
EXEC_MODE = 0o755
FILE_MODE = 0o644
LINK_MODE = 0o777
ALLOWED_MODES = {
    EntryType.DIR: {DIR_MODE},
    EntryType.FILE: {FILE_MODE, EXEC_MODE},
    EntryType.SYMLINK: {LINK_MODE},
}
MAX_LINK_HOPS = 40
"""Symlinks followed while resolving one link before it counts as a loop (Linux's limit)."""

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- paths, modes, links: the rules shared by publisher and client ---------------------------------


def show_path(path: str) -> str:
    """``path`` printable on one line: undecodable bytes (surrogate escapes) shown as ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe release path (relative, '/'-separated, UTF-8), or ``None``."""
    if not path:
        return "empty path"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if "\x00" in path:
        return "name contains a NUL byte"
    if "\\" in path:
        return "name contains a backslash"
    if path.startswith("/"):
        return "absolute path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path segment {part!r} is not allowed"
    return None


def _link_text_problem(target: str) -> str | None:
    if not target:
        return "empty symlink target"
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return f"symlink target {show_path(target)!r} is not valid UTF-8"
    if "\x00" in target or "\\" in target:
        return f"symlink target {show_path(target)!r} contains a NUL or a backslash"
    return None


def normalise_mode(st_mode: int) -> int:
    """The canonical mode for a file system object: 0755 dirs and executables, 0644 files, 0777 links."""
    if stat.S_ISLNK(st_mode):
        return LINK_MODE
    if stat.S_ISDIR(st_mode) or st_mode & 0o111:
        return EXEC_MODE
    return FILE_MODE


def _link_escapes(link_path: str, target: str, links: dict[str, str]) -> str | None:
    """Resolve ``target`` (of the symlink at ``link_path``) inside the tree, following the tree's own
    symlinks like the kernel would; return why it leaves the tree, or ``None`` if it stays inside.

    Resolution is virtual (by name, against ``links``), so it does not depend on where the tree sits
    on disk: ``../<tree name>/x`` escapes even though it would land back inside on the publisher.
    """
    where = link_path.split("/")[:-1]
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return f"symlink points outside the tree (-> {show_path(target)})"
            where.pop()
            continue
        candidate = "/".join([*where, part])
        if candidate in links:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return f"symlink loop (-> {show_path(target)})"
            inner = links[candidate]
            if inner.startswith("/"):
                return f"symlink points outside the tree via {show_path(candidate)} (-> {show_path(inner)})"
            pending = inner.split("/") + pending
            continue
        where.append(part)
    return None


def manifest_problems(entries: Sequence[ManifestEntry]) -> list[str]:
    """Every reason why ``entries`` is not a safe, canonical release tree, each as ``"path: reason"``.

    Checks: safe paths, strictly increasing bytewise order (so parents come first), every parent a
    directory entry, canonical modes, and symlinks that are relative and resolve inside the tree
    (also through chains of links). Empty list means safe.
    """
    problems: list[str] = []
    kinds: dict[str, EntryType] = {}
    links: dict[str, str] = {}
    previous: bytes | None = None
    for e in entries:
        name = show_path(e.path)
        bad = path_problem(e.path)
        if bad:
            problems.append(f"{name}: {bad}")
            continue
        key = e.path.encode("utf-8")
        if previous is not None and key <= previous:
            problems.append(f"{name}: out of order or duplicated")
        previous = key
        parent = e.path.rpartition("/")[0]
        if parent and kinds.get(parent) is not EntryType.DIR:
            problems.append(f"{name}: parent {show_path(parent)} is not a directory of the tree")
        if e.mode not in ALLOWED_MODES[e.type]:
            problems.append(f"{name}: mode {e.mode:o} is not canonical for a {e.type.value}")
        kinds[e.path] = e.type
        if e.type is EntryType.SYMLINK:
            links[e.path] = e.link
    for path, target in links.items():
        bad = _link_text_problem(target)
        if bad is None and target.startswith("/"):
            bad = f"symlink target is absolute (-> {show_path(target)})"
        if bad is None:
            bad = _link_escapes(path, target, links)
        if bad:
            problems.append(f"{show_path(path)}: {bad}")
    return problems


# -- descriptor-relative file access ---------------------------------------------------------------


def open_parent(root_fd: int, path: str) -> tuple[int, str]:
    """Open the directory holding ``path`` below ``root_fd``, every component a real directory.

    Returns a new descriptor (the caller closes it) and the last component of ``path``.
    Raises ``OSError`` (``ELOOP``/``ENOTDIR``) when a component is a symlink or not a directory.
    """
    *parents, name = path.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parents:
            child = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of ``path`` below ``root_fd`` without following a symlink anywhere on the way."""
    parent, name = open_parent(root_fd, path)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    finally:
        os.close(parent)


def copy_hashed(
    read: Callable[[int], bytes], write: Callable[[bytes], object] | None = None, limit: int | None = None
) -> tuple[Digest, bool]:
    """Stream ``read`` into ``write`` in ``CHUNK_SIZE`` pieces while hashing.

    With ``limit``, at most ``limit`` bytes are written; if the source has more, stop and return
    ``overflow=True`` (the returned digest then covers only what was written).
    """
    digest = hashlib.sha256()
    count = 0
    while True:
        want = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - count + 1)
        chunk = read(want)
        if not chunk:
            return Digest(count, digest.hexdigest()), False
        if limit is not None and count + len(chunk) > limit:
            return Digest(count, digest.hexdigest()), True
        digest.update(chunk)
        count += len(chunk)
        if write is not None:
            write(chunk)


def _fd_reader(fd: int) -> Callable[[int], bytes]:
    return lambda n: os.read(fd, n)


# -- the canonical tar -----------------------------------------------------------------------------


class TreeChanged(Exception):
    """A file under a tree no longer matches its manifest entry while the canonical tar is written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{show_path(path)}: {reason}")


def read_link(root_fd: int, path: str) -> str | None:
    """The target of the symlink at ``path``, or ``None`` if it is not one (or is gone)."""
    try:
        parent, name = open_parent(root_fd, path)
    except OSError:
        return None
    try:
        return os.readlink(name, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)


def _tree_reader(fd: int, path: str) -> Callable[[int], bytes]:
    """``os.read`` of a tree file whose errors are a :class:`TreeChanged` (not an output error)."""

    def read(n: int) -> bytes:
        try:
            return os.read(fd, n)
        except OSError as exc:
            raise TreeChanged(path, f"cannot read ({exc.strerror})") from exc

    return read


def tar_header(entry: ManifestEntry) -> bytes:
    """The canonical pax header block(s) of ``entry``: mtime 0, uid/gid 0, no user/group names.

    A pax extended header appears only for what ustar cannot hold (long or non-ASCII path or link
    target, size >= 8 GiB); it never carries times or anything else about the building machine.
    """
    info = tarfile.TarInfo(entry.path)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.type is EntryType.FILE:
        info.type = tarfile.REGTYPE
        info.size = entry.size
    elif entry.type is EntryType.DIR:
        info.type = tarfile.DIRTYPE
    else:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def tar_length(entries: Sequence[ManifestEntry], headers: Sequence[bytes] | None = None) -> int:
    """Exact byte length of the canonical tar of ``entries``, known before writing it (``headers``:
    their :func:`tar_header` blocks, when the caller has them)."""
    total = 2 * tarfile.BLOCKSIZE
    for i, e in enumerate(entries):
        total += len(headers[i] if headers is not None else tar_header(e))
        if e.type is EntryType.FILE:
            total += e.size + _padding(e.size)
    return total + -total % tarfile.RECORDSIZE


def write_canonical_tar(
    root_fd: int,
    entries: Sequence[ManifestEntry],
    write: Callable[[bytes], object],
    holes: Iterable[str] = (),
    *,
    digest_stream: bool = True,
    check_files: bool = True,
) -> Digest:
    """Emit the canonical tar of the tree below ``root_fd`` described by ``entries`` into ``write``.

    File bytes are read with :func:`open_beneath` and must match each entry's size and sha256 exactly
    (checked while streaming; without ``check_files`` only the size, for a caller that verifies what
    it builds from the tar anyway); symlink targets must match too. Raises :class:`TreeChanged` otherwise,
    after part of the stream was emitted: the caller discards the output. Returns the tar's digest.
    The layout equals what ``tarfile`` writes in PAX format (20-block records).

    Entries below the top-level paths ``holes`` are not read: their headers are emitted, their file
    bytes replaced by zeros (same layout; the digest is then not the canonical one). Without
    ``digest_stream`` the tar itself is not hashed (every file still is, against its entry): the
    returned digest has the length and an empty sha256.
    """
    skipped = frozenset(h.strip("/") for h in holes)
    digest = hashlib.sha256()
    count = 0

    def emit(data: bytes) -> None:
        nonlocal count
        if digest_stream:
            digest.update(data)
        count += len(data)
        write(data)

    for e in entries:
        hole = bool(skipped) and _skipped(e.path, skipped)
        if e.type is EntryType.SYMLINK and not hole and read_link(root_fd, e.path) != e.link:
            raise TreeChanged(e.path, "symlink target changed")
        emit(tar_header(e))
        if e.type is not EntryType.FILE:
            continue
        _emit_file(root_fd, e, emit, hole, check_files)
        emit(bytes(_padding(e.size)))
    emit(bytes(2 * tarfile.BLOCKSIZE))
    emit(bytes(-count % tarfile.RECORDSIZE))
    return Digest(count, digest.hexdigest() if digest_stream else "")


def write_files(
    root_fd: int,
    entries: Sequence[ManifestEntry],
    write: Callable[[bytes], object],
    holes: Iterable[str] = (),
    *,
    check_files: bool = True,
) -> None:
    """Emit the bytes of the files ``entries`` below ``root_fd``, back to back in the order given,
    checked like :func:`write_canonical_tar` checks them (zeros for those below ``holes``)."""
    skipped = frozenset(h.strip("/") for h in holes)
    for e in entries:
        _emit_file(root_fd, e, write, bool(skipped) and _skipped(e.path, skipped), check_files)


def _emit_file(
    root_fd: int, e: ManifestEntry, emit: Callable[[bytes], object], hole: bool, check_files: bool
) -> None:
    """The bytes of the file ``e`` (zeros for a ``hole``), its size and (``check_files``) sha256 checked."""
    if hole:
        for done in range(0, e.size, CHUNK_SIZE):
            emit(bytes(min(CHUNK_SIZE, e.size - done)))
        return
    try:
        fd = open_beneath(root_fd, e.path, os.O_RDONLY)
    except OSError as exc:
        raise TreeChanged(e.path, f"cannot open ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TreeChanged(e.path, "no longer a regular file")
        if check_files:
            got, overflow = copy_hashed(_tree_reader(fd, e.path), emit, e.size)
            changed = overflow or got != Digest(e.size, e.sha256)
        else:
            changed = not _copy_exactly(_tree_reader(fd, e.path), emit, e.size)
    finally:
        os.close(fd)
    if changed:
        raise TreeChanged(e.path, "size or content changed")


def _copy_exactly(read: Callable[[int], bytes], write: Callable[[bytes], object], size: int) -> bool:
    """Copy ``read`` into ``write`` in ``CHUNK_SIZE`` pieces: True if it held exactly ``size`` bytes
    (never more is written)."""
    left = size
    while left:
        chunk = read(min(CHUNK_SIZE, left))
        if not chunk:
            return False
        write(chunk)
        left -= len(chunk)
    return not read(1)


def read_canonical_tar(tar: bytes) -> list[ManifestEntry]:
    """The entries whose canonical tar (:func:`write_canonical_tar`) is exactly ``tar``, each file
    hashed: its reverse, for a tar held in memory (so every size is bounded by its length) that is
    not trusted yet. Every member must be a file, directory or symlink at a safe path, starting
    where the previous one ends, its header bytes exactly :func:`tar_header` of the entry it
    describes, its data inside ``tar``; padding, end blocks and record padding zeros, nothing after;
    the entries must pass :func:`manifest_problems`. Raises ``InstallError`` (one line) otherwise."""
    entries: list[ManifestEntry] = []
    view, pos = memoryview(tar), 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:", encoding="utf-8", errors="strict") as archive:
            for member in archive:  # stops at the end blocks (or at a header it cannot read: then pos is short)
                kind = _MEMBER_KINDS.get(member.type)
                bad = f"type {member.type!r} not allowed" if kind is None else path_problem(member.name)
                end = member.offset_data + (member.size if kind is EntryType.FILE else 0)
                if kind is None or bad or member.offset != pos or end > len(tar):
                    where = "data past the end" if member.offset == pos else f"not at byte {pos}"
                    raise InstallError(f"archive member {show_path(member.name)} at {member.offset}: {bad or where}")
                if kind is EntryType.FILE:
                    sha256 = hashlib.sha256(view[member.offset_data:end]).hexdigest()
                    entry = ManifestEntry(member.name, kind, member.mode, member.size, sha256)
                else:
                    entry = ManifestEntry(member.name, kind, member.mode, link=member.linkname)
                pos = end + _padding(entry.size)
                if view[member.offset:member.offset_data] != tar_header(entry) or any(view[end:pos]):
                    raise InstallError(f"archive member {show_path(member.name)}: not its canonical header or padding")
                entries.append(entry)
    except (tarfile.TarError, UnicodeError, ValueError, EOFError) as exc:
        raise InstallError(f"archive unreadable after byte {pos} ({exc})") from exc
    length = pos + 2 * tarfile.BLOCKSIZE
    length += -length % tarfile.RECORDSIZE
    if len(tar) != length or any(view[pos:]):
        raise InstallError(f"archive is not canonical from byte {pos}: no further member, and not the end blocks")
    problems = manifest_problems(entries)
    if problems:
        raise InstallError(f"archive rejected: {problems[0]}")
    return entries


def release_compressor(level: int) -> zstandard.ZstdCompressor:
    """The zstd compressor of the release targets (full artifact, manifest): fixed parameters,
    single-threaded, so the same input always gives the same frame. The client uses it to compress
    a manifest rebuilt from a delta again and compare it with the signed manifest target."""
    return zstandard.ZstdCompressor(level=level, threads=0, write_content_size=True, write_checksum=True)


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
            raise InstallError(f"archive is longer than the manifest's {self._limit} bytes")
        self._hash.update(data)
        return data

    def drain(self) -> Digest:
        """Read to the end (still bounded) and return the digest of the whole stream."""
        while self.read(CHUNK_SIZE):
            pass
        return Digest(self.count, self._hash.hexdigest())


_MEMBER_KINDS = {tarfile.REGTYPE: EntryType.FILE, tarfile.AREGTYPE: EntryType.FILE,
                 tarfile.DIRTYPE: EntryType.DIR, tarfile.SYMTYPE: EntryType.SYMLINK}


def _check_member(member: tarfile.TarInfo, entry: ManifestEntry | None) -> None:
    """``member`` must be safe on its own and be exactly ``entry`` (the next manifest entry)."""
    name = show_path(member.name)
    bad = path_problem(member.name)
    if bad:
        raise InstallError(f"unsafe archive member {name!r}: {bad}")
    kind = _MEMBER_KINDS.get(member.type)
    if kind is None:
        what = {tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "device", tarfile.BLKTYPE: "device",
                tarfile.FIFOTYPE: "fifo"}.get(member.type, f"type {member.type!r}")
        raise InstallError(f"archive member {name}: {what} not allowed")
    if entry is None:
        raise InstallError(f"archive member {name} is not in the manifest")
    if member.name != entry.path:
        raise InstallError(f"archive member {name} is not the next manifest entry {show_path(entry.path)}")
    if kind is not entry.type:
        raise InstallError(f"archive member {name} is a {kind.value}, the manifest says {entry.type.value}")
    if member.mode != entry.mode:
        raise InstallError(f"archive member {name} has mode {member.mode:o}, manifest says {entry.mode:o}")
    if kind is EntryType.SYMLINK and member.linkname != entry.link:
        raise InstallError(f"archive member {name} -> {member.linkname!r}, manifest says -> {entry.link!r}")
    if kind is EntryType.FILE and member.size != entry.size:
        raise InstallError(f"archive member {name} has {member.size} bytes, the manifest says {entry.size}")


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
        raise InstallError(f"{show_path(entry.path)} is larger than the manifest's {entry.size} bytes")
    if got != Digest(entry.size, entry.sha256):
        raise InstallError(f"{show_path(entry.path)} does not match its manifest sha256/size")


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
    of its file system where available (:func:`client.fsutil.sync_filesystem`: one journal commit
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

    Raises ``InstallError`` (one line) on any violation. Partial output is then left in ``dest``:
    the caller discards the slot.
    """
    problems = manifest_problems(manifest.entries)
    if problems:
        raise InstallError(f"manifest {manifest.version} rejected: {problems[0]}")
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InstallError(f"cannot open slot {dest}: {exc.strerror}") from exc
    try:
        if os.listdir(root_fd):
            raise InstallError(f"slot {dest} is not empty")
        with open(artifact, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK_SIZE
        ) as unzstd:
            extract_stream(unzstd.read, root_fd, manifest)
        finish_tree(root_fd, manifest)
    except InstallError:
        raise
    except (OSError, tarfile.TarError, zstandard.ZstdError, UnicodeError, EOFError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        raise InstallError(f"cannot extract {artifact.name}: {detail}{where}") from exc
    finally:
        os.close(root_fd)


def extract_stream(read: Callable[[int], bytes], root_fd: int, manifest: Manifest) -> None:
    """Extract the tar that ``read`` yields into the empty directory ``root_fd`` with every check of
    :func:`extract_release` (members exactly the manifest's entries in order, files written
    ``O_EXCL|O_NOFOLLOW`` at most their size and hashed; the whole stream bounded by, hashed and
    compared with ``manifest.content``). No fsync. Raises ``InstallError`` on a violation;
    ``tarfile``, ``OSError`` and decoder errors propagate for the caller to word."""
    stream = _BoundedHashingReader(read, manifest.content.length)
    _extract_members(stream, root_fd, manifest)
    if stream.drain() != manifest.content:
        raise InstallError(f"archive content differs from manifest {manifest.version} (sha256/length)")


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
    ``InstallError`` on any difference; ``OSError`` and decoder errors propagate."""
    skipped = frozenset(p.strip("/") for p in skip)
    headers = [tar_header(e) for e in manifest.entries]
    length = tar_length(manifest.entries, headers)
    if length != manifest.content.length:
        raise InstallError(f"manifest {manifest.version} describes a {length}-byte archive, "
                           f"its content digest {manifest.content.length} bytes")
    source = _Exact(read)
    for e, header in zip(manifest.entries, headers, strict=True):
        if source.take(len(header)) != header:
            raise InstallError(f"archive header of {show_path(e.path)} is not the canonical one")
        hole = bool(skipped) and _skipped(e.path, skipped)
        if e.type is EntryType.FILE:
            if hole:
                source.skip(e.size)
            else:
                write_file(root_fd, e, source.limited(e.size), hashed)
            if source.take(_padding(e.size)).count(0) != _padding(e.size):
                raise InstallError(f"archive padding after {show_path(e.path)} is not zeros")
        elif not hole:
            create_entry(root_fd, e)
    tail = length - source.count
    if source.take(tail).count(0) != tail:
        raise InstallError("archive end blocks are not zeros")
    if read(1):
        raise InstallError(f"archive is longer than the manifest's {length} bytes")


class _Exact:
    """Exact-size reads from a stream (``read(n)`` may return fewer bytes): a short stream is an
    ``InstallError``; ``count`` is the bytes taken so far."""

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
                raise InstallError(f"archive ends {n - len(out)} bytes early, after {self.count + len(out)}")
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
        raise InstallError(f"archive ends before manifest entry {show_path(missing.path)}")


# -- verification ----------------------------------------------------------------------------------


def _skipped(path: str, skip: frozenset[str]) -> bool:
    return any(path == s or path.startswith(s + "/") for s in skip)


def list_dir(root_fd: int, directory: str = "") -> list[tuple[str, os.stat_result]]:
    """``(path, lstat)`` of each entry of ``directory`` (relative, "" for the root) below ``root_fd``,
    the directory opened without following symlinks; in directory order (callers sort)."""
    fd = os.dup(root_fd) if not directory else open_beneath(root_fd, directory, _NOFOLLOW_DIR)
    try:
        return [
            (f"{directory}/{name}" if directory else name, os.stat(name, dir_fd=fd, follow_symlinks=False))
            for name in os.listdir(fd)
        ]
    finally:
        os.close(fd)


def verify_tree(root: Path, manifest: Manifest, skip: Iterable[str] = ()) -> list[str]:
    """Compare the slot ``root`` with ``manifest`` file by file, re-hashing every file.

    Returns human-readable problems sorted by path ("modified: bin/app", "missing: x",
    "unexpected: y", "mode changed: ...", "not a symlink: ...", ...); an empty list means the slot
    is exactly the release. ``skip`` names relative paths (persistent data such as ``logs``)
    excluded on both sides, with everything below them. Below a missing or unexpected directory only
    the directory itself is reported.
    """
    skipped = frozenset(s.strip("/") for s in skip)
    wanted = {e.path: e for e in manifest.entries if not _skipped(e.path, skipped)}
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
                if _skipped(path, skipped):
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
                got, overflow = copy_hashed(_fd_reader(fd), None, e.size)
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

