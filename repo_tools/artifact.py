"""Deterministic release artifacts from a source directory.

``scan_tree`` turns a directory into manifest entries, refusing anything a release must never carry;
``build_artifact`` streams the canonical tar (layout defined once, in ``formats.archive``) straight
into zstd, hashing as it goes, and writes ``full.tar.zst`` and ``manifest.json.zst``. Memory stays
bounded (``CHUNK_SIZE`` pieces) whatever the size of the tree, and the same tree content gives
byte-identical files on every run and machine (with the same zstd library version): nothing about
times, owners, umask, directory order or hard links reaches the output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import zstandard

from pinnacle_updates.formats.archive import (
    DIR_MODE,
    LINK_MODE,
    TreeChanged,
    copy_hashed,
    list_dir,
    manifest_problems,
    normalise_mode,
    open_beneath,
    path_problem,
    read_link,
    release_compressor,
    show_path,
    tar_length,
    write_canonical_tar,
)
from pinnacle_updates.formats.fsutil import atomic_write, atomic_writer
from pinnacle_updates.formats.index import PLATFORM_ANY, Digest, EntryType, Manifest, ManifestEntry
from pinnacle_updates.formats.progress import NULL, Progress

from .errors import ReleaseError, UnsafeInputError

DEFAULT_LEVEL = 10
FULL_NAME = "full.tar.zst"
MANIFEST_NAME = "manifest.json.zst"
TAR_NAME = "full.tar"
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


@dataclass(frozen=True)
class BuiltArtifact:
    """What ``build_artifact`` wrote: paths, the canonical tar's digest, the manifest, file digests."""

    full_path: Path
    manifest_path: Path
    tar_path: Path | None
    content: Digest
    manifest: Manifest
    full_length: int
    full_sha256: str
    manifest_length: int
    manifest_sha256: str


def _refuse(source: Path, problem: str) -> UnsafeInputError:
    return UnsafeInputError(f"refusing {show_path(str(source))}: {problem}")


def _open_root(source: Path) -> int:
    try:
        return os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise _refuse(source, "not a directory") from None
    except OSError as exc:
        raise ReleaseError(f"cannot read source {source}: {exc.strerror}") from exc


def scan_tree(source: Path, platform: str = PLATFORM_ANY, progress: Progress = NULL) -> list[ManifestEntry]:
    """Manifest entries of every path below ``source`` (not the root), sorted bytewise by UTF-8 path.

    Files are hashed (streamed); modes are normalised; hard links become plain files. Raises
    ``UnsafeInputError`` naming the path (escaped) and the rule for: devices, FIFOs, sockets,
    setuid/setgid/sticky bits, names with a backslash, NUL, a control or bidirectional formatting
    character or invalid UTF-8, names or paths over the POSIX lengths, names unsafe on ``platform``
    (``formats.archive.platform_problems``: Windows names, case and normalisation collisions; the
    default ``any`` means safe on every platform), absolute symlinks or symlinks resolving outside
    the tree (also through chains), a source that is not a directory or is empty. ``source`` itself
    may be a symlink to a directory; nothing below it is ever followed. ``progress`` gets phases
    ``scan`` (paths) and ``hash`` (bytes).
    """
    root_fd = _open_root(source)
    entries: list[ManifestEntry] = []
    try:
        # Walk first, then hash: the walk gives the hash phase its total (bytes), so progress can
        # show an estimate; each path is still checked, in the same order, by _scan_one.
        progress.start("scan", unit="files")
        found: list[tuple[str, os.stat_result]] = []
        pending = [""]
        while pending:
            for path, st in list_dir(root_fd, pending.pop()):
                found.append((path, st))
                progress.advance()
                if stat.S_ISDIR(st.st_mode):
                    pending.append(path)
        progress.start("hash", sum(st.st_size for _, st in found if stat.S_ISREG(st.st_mode)), "bytes")
        for path, st in found:
            entries.append(_scan_one(source, root_fd, path, st))
            progress.advance(st.st_size if stat.S_ISREG(st.st_mode) else 0)
        progress.end()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ReleaseError(f"cannot read source {source}: {exc.strerror}{where}") from exc
    finally:
        os.close(root_fd)
    if not entries:
        raise _refuse(source, "the directory is empty")
    entries.sort(key=lambda e: e.path.encode("utf-8"))
    problems = manifest_problems(entries, platform)
    if problems:
        raise _refuse(source, f"{problems[0]} (names must be safe on platform {platform})")
    return entries


def _scan_one(source: Path, root_fd: int, path: str, st: os.stat_result) -> ManifestEntry:
    """The entry for ``path`` (lstat ``st``), or an ``UnsafeInputError`` naming it."""
    bad = path_problem(path)
    if bad:
        raise _refuse(source, f"{show_path(path)}: {bad}")
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        link = read_link(root_fd, path)
        if link is None:
            raise UnsafeInputError(f"source changed while scanning: {path}")
        return ManifestEntry(path, EntryType.SYMLINK, LINK_MODE, link=link)
    kind = (
        "character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode)
        else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
        else None if stat.S_ISDIR(mode) or stat.S_ISREG(mode) else "unsupported file type"
    )
    if kind:
        raise _refuse(source, f"{path}: {kind} not allowed")
    if mode & _SPECIAL_BITS:
        raise _refuse(source, f"{path}: setuid/setgid/sticky bit set (mode {stat.S_IMODE(mode):o})")
    if stat.S_ISDIR(mode):
        return ManifestEntry(path, EntryType.DIR, DIR_MODE)
    fd = open_beneath(root_fd, path, os.O_RDONLY)
    try:
        digest, _ = copy_hashed(lambda n: os.read(fd, n))
    finally:
        os.close(fd)
    if digest.length != st.st_size:
        raise UnsafeInputError(f"source changed while scanning: {path}")
    return ManifestEntry(path, EntryType.FILE, normalise_mode(mode), size=digest.length, sha256=digest.sha256)


class _HashingSink:
    """A binary writer that hashes and counts what passes into ``out`` (hash while writing)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.length = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._hash.update(data)
        self.length += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """Fixed parameters, single-threaded: the same input always gives the same frame (one definition
    with the client, which compresses a manifest rebuilt from a delta again to check it)."""
    return release_compressor(level)


def build_artifact(
    source: Path, out_dir: Path, version: str, level: int = DEFAULT_LEVEL, keep_tar: bool = False,
    platform: str = PLATFORM_ANY,
) -> BuiltArtifact:
    """Scan ``source`` for ``platform`` and write the release artifacts into ``out_dir`` (see
    :func:`write_artifact`)."""
    return write_artifact(source, scan_tree(source, platform), out_dir, version, level, keep_tar)


def write_artifact(
    source: Path,
    entries: Sequence[ManifestEntry],
    out_dir: Path,
    version: str,
    level: int = DEFAULT_LEVEL,
    keep_tar: bool = False,
    progress: Progress = NULL,
) -> BuiltArtifact:
    """Write ``full.tar.zst`` and ``manifest.json.zst`` for the scanned ``entries`` of ``source``.

    The canonical tar is streamed once: every file is re-read and must still match its scanned size
    and sha256 (else ``UnsafeInputError`` "source changed while building"), and the tar bytes are
    hashed and compressed as they are produced (the zstd frame records the tar length, known in
    advance, and a checksum). The uncompressed tar is not kept unless ``keep_tar``, in which case
    it is also written as ``full.tar``. Every file is written atomically (temp, fsync, rename);
    on any error none of them is left half-written.
    """
    problems = manifest_problems(entries)
    if problems:
        raise _refuse(source, problems[0])
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ReleaseError(f"compression level {level} out of range 1..{zstandard.MAX_COMPRESSION_LEVEL}")
    out_real, src_real = out_dir.resolve(), source.resolve()
    if out_real == src_real or src_real in out_real.parents:
        raise _refuse(source, f"the output directory {out_dir} is inside the source tree")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReleaseError(f"cannot create output directory {out_dir}: {exc.strerror}") from exc

    full_path, manifest_path = out_dir / FULL_NAME, out_dir / MANIFEST_NAME
    tar_path = out_dir / TAR_NAME if keep_tar else None
    expected_length = tar_length(entries)
    root_fd = _open_root(source)
    try:
        with contextlib.ExitStack() as stack:
            full = _HashingSink(stack.enter_context(atomic_writer(full_path)))
            tar_out = stack.enter_context(atomic_writer(tar_path)) if tar_path else None
            zst = _compressor(level).stream_writer(cast(IO[bytes], full), size=expected_length, closefd=False)

            def write(data: bytes) -> None:
                zst.write(data)
                if tar_out is not None:
                    tar_out.write(data)
                progress.advance(len(data))

            progress.start("compress", expected_length, "bytes")

            try:
                content = write_canonical_tar(root_fd, entries, write)
            except TreeChanged as exc:
                raise UnsafeInputError(f"source changed while building: {exc}") from exc
            zst.flush(zstandard.FLUSH_FRAME)
        manifest = Manifest(version=version, content=content, entries=tuple(entries))
        manifest_zst = _compressor(level).compress(manifest.to_bytes())
        atomic_write(manifest_path, manifest_zst)
        progress.end()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ReleaseError(f"cannot write artifact into {out_dir}: {exc.strerror or exc}{where}") from exc
    finally:
        os.close(root_fd)
    return BuiltArtifact(
        full_path=full_path,
        manifest_path=manifest_path,
        tar_path=tar_path,
        content=content,
        manifest=manifest,
        full_length=full.length,
        full_sha256=full.sha256,
        manifest_length=len(manifest_zst),
        manifest_sha256=hashlib.sha256(manifest_zst).hexdigest(),
    )
