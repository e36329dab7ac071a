"""The whole-archive kinds on the client: one zstd frame rebuilding the target's canonical tar, with
the base's canonical tar (written again from the base tree) as prefix (``archive``), or one stock
bsdiff4 patch of the target tar against that base tar (``archive-bsdiff4``, decoded whole in memory,
every block bounded by the signed sizes: :func:`bsdiff4_tar`)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

from pinnacle_updates.formats import bsdiff_lzma, delta_format
from pinnacle_updates.formats.archive import (
    ArchiveError,
    TreeChanged,
    read_canonical_tar,
    show_path,
    write_canonical_tar,
)
from pinnacle_updates.formats.delta_kinds import ContainerKind
from pinnacle_updates.formats.index import Digest, Manifest
from pinnacle_updates.formats.tree import extract_canonical

from .errors import DeltaError
from .jobs import ApplyJob, ManifestJob, Rebuilt
from .manifest import manifest_from_patch
from .ops import bspatch_bounded
from .streams import DIR_FLAGS, ZstdStream, decode_all, decoder_window_log, holes, limited


def apply_whole_archive(job: ApplyJob) -> None:
    """Rebuild the target from a whole-archive delta: the base's canonical tar is written again from
    the base tree (every file checked against ``base``: a locally edited file stops it), used as the
    zstd prefix of the frame, whose output (at most the signed ``target.content`` length is read) is
    extracted by its canonical layout; or the tar the manifest reader already rebuilt and read
    (every file hashed there, and the manifest built from them is the signed one) is extracted the
    same way, without hashing its files a second time.
    Memory: the base tar (held twice while zstd takes its copy) and a decoder window of
    ``patch_window_log`` of both sizes, all bounded by ``ARCHIVE_MAX`` of signed sizes
    (:func:`decode_memory`). The ``archive-bsdiff4`` kind decodes the whole target tar in memory
    first (:func:`bsdiff4_tar`, :func:`bsdiff4_decode_memory`), then extracts it the same way.

    Neither tar is hashed as a whole (each would be one more pass over every byte): the base tar is
    exact once each base file matched its sha256, and the output is checked by its known layout
    (:func:`pinnacle_updates.formats.tree.extract_canonical`: every header and padding byte equal to the canonical
    one, every file's sha256), which proves the same as its digest would.

    Persistent paths ``skip`` that the base shipped are no longer in the slot (they link to
    ``data/``): their file bytes are zeros in the rebuilt base tar, and the target's are not
    written; an output byte that depended on a zero is in a file not written, or fails its hash."""
    label, base, target = job.label, job.base, job.target
    tar = job.rebuilt.tar if job.rebuilt is not None else None
    check_hashes = tar is None  # a tar the manifest reader rebuilt had its files hashed there
    zstd: ZstdStream | None = None
    if tar is None:
        check_archive_size(base, target.content, label)
        old = base_tar(job.source.base_fd, base, holes(base, job.skip), label)
        if job.header.kind is ContainerKind.WHOLE_ARCHIVE_BSDIFF4:
            patch = job.source.payload_range_bytes(*job.header.archive_range(), "the archive")
            tar = bsdiff4_tar(old, patch, target.content.length, label)
        else:
            zstd = ZstdStream(job.source.payload_reader_range(*job.header.archive_range(), "the archive"), old,
                              target.content.length, f"{label}: archive")
        del old
    read: Callable[[int], bytes] = zstd.read if zstd is not None else io.BytesIO(tar or b"").read
    try:
        extract_canonical(read, job.dest_fd, target, job.skip, hashed=check_hashes)
        if zstd is not None:
            zstd.finish()
    except DeltaError:
        raise
    except ArchiveError as exc:
        raise DeltaError(f"{label}: {exc}") from exc


def whole_archive_manifest(job: ManifestJob) -> tuple[bytes, Rebuilt | None] | None:
    """The whole-archive kind's manifest reader: without a manifest patch, the target tar decoded in
    memory (:func:`archive_tar`) read by its exact canonical layout, with the release's version and
    content digest, and that tar kept for the apply; None when no base tar is to be had. With a
    patch (as written before the manifest was read from the tar), the patch."""
    if job.header.manifest is not None and job.header.manifest.length is not None:
        return manifest_from_patch(job)
    tar = archive_tar(job)
    if tar is None:
        return None
    release = job.release
    return Manifest(release.version, release.content, tuple(read_canonical_tar(tar))).to_bytes(), \
        Rebuilt(ContainerKind.WHOLE_ARCHIVE, tar)


def check_archive_size(base: Manifest, content: Digest, label: str) -> None:
    if base.content.length + content.length > delta_format.ARCHIVE_MAX:
        raise DeltaError(
            f"{label}: whole-archive delta over {base.content.length + content.length} bytes of tars "
            f"(limit {delta_format.ARCHIVE_MAX})"
        )


def bsdiff4_tar(old: bytes | bytearray, patch: bytes, size: int, label: str) -> bytes:
    """The target tar of an ``archive-bsdiff4`` delta: ``patch`` (stock ``BSDIFF40``) applied to the
    base tar ``old``; it must declare exactly the signed ``size``, its control block at most
    ``bsdiff_lzma.control_max(size)`` bytes (what the publisher writes at most), diff and extra
    blocks at most ``size`` each. Its bytes are then checked by the canonical layout and every
    file's sha256, like the zstd frame's output."""
    return bspatch_bounded(bytes(old), patch, size, bsdiff_lzma.control_max(size), f"{label}: the archive patch")


def bsdiff4_decode_memory(base: Manifest, target: Manifest) -> int:
    """At most: the base tar (twice while it is copied for bsdiff4), the patch (within the delta, at
    most both tars), the control block (``control_max``), the diff and extra blocks and the output
    (each the target tar), and the target tar kept when the manifest is read from it."""
    old, new = base.content.length, target.content.length
    return 2 * old + (old + new) + bsdiff_lzma.control_max(new) + 4 * new


def decode_memory(base: Manifest, target: Manifest) -> int:
    """At most: the base tar twice while zstd copies it as prefix, the decoder window, and the target
    tar when the manifest is read from it (both tars within ``ARCHIVE_MAX`` together)."""
    old, new = base.content.length, target.content.length
    return 2 * old + new + (1 << decoder_window_log(old, new))


def base_tar(base_fd: int, base: Manifest, holes: frozenset[str], label: str, check_files: bool = True) -> bytearray:
    """The canonical tar of ``base`` rebuilt from its tree below ``base_fd``, zeros for the file
    bytes below ``holes``: every file hashed against its entry (a locally edited one stops it), so
    the tar is exactly the base's; without ``check_files`` only sizes are checked."""
    old = bytearray()
    try:
        got = write_canonical_tar(base_fd, base.entries, old.extend, holes, digest_stream=False,
                                  check_files=check_files)
    except TreeChanged as exc:
        raise DeltaError(f"{label}: base file {show_path(exc.path)} was modified locally ({exc})") from exc
    if got.length != base.content.length:
        raise DeltaError(f"{label}: the base tree does not rebuild the archive of {base.version}")
    return old


def archive_tar(job: ManifestJob) -> bytes | None:
    """The target tar of the whole-archive delta ``job.f`` decoded in memory, at most the signed
    content length, or None when no base tar is to be had (``job.base_tar`` is neither the tar nor
    the directory of a tree without holes)."""
    base, content, label = job.base, job.release.content, job.label
    check_archive_size(base, content, label)
    old: bytes | bytearray | None = None if isinstance(job.base_tar, Path) else job.base_tar
    if isinstance(job.base_tar, Path) and not holes(base, job.skip):
        fd = os.open(job.base_tar, DIR_FLAGS)
        try:  # not hashed again: the installer checked the tree (base_problem) before the download, and
            # a file changed since makes a tar whose manifest is not the signed one (the delta is refused)
            old = base_tar(fd, base, frozenset(), label, check_files=False)
        finally:
            os.close(fd)
    if old is None:
        return None
    start, end = job.header.archive_range()
    job.f.seek(start)
    if job.header.kind is ContainerKind.WHOLE_ARCHIVE_BSDIFF4:
        patch = job.f.read(end - start)
        if len(patch) != end - start:
            raise DeltaError(f"{label}: delta truncated inside the archive patch")
        return bsdiff4_tar(old, patch, content.length, label)
    stream = ZstdStream(limited(job.f.read, end - start), old, content.length, f"{label}: archive")
    del old
    return decode_all(stream, content.length, f"{label}: the archive")


__all__ = ["apply_whole_archive", "archive_tar", "base_tar", "bsdiff4_decode_memory", "bsdiff4_tar",
           "check_archive_size", "decode_memory", "whole_archive_manifest"]
