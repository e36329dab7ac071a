"""The solid kind on the client: one raw LZMA2 stream of every target file that is not a base file,
with the base files as its preset dictionary (``formats.delta_format.solid_layout`` fixes both), and a
*skeleton* manifest the rebuilt files' hashes complete."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import replace
from pathlib import Path

from pinnacle_updates.formats import delta_format, lzma_dict
from pinnacle_updates.formats.archive import ArchiveError, TreeChanged, show_path, write_files
from pinnacle_updates.formats.delta_kinds import ContainerKind, OpKind
from pinnacle_updates.formats.index import EntryType, Manifest
from pinnacle_updates.formats.tree import create_entry, write_file

from .errors import DeltaError
from .jobs import ApplyJob, ManifestJob, Rebuilt
from .manifest import manifest_from_patch, parse_manifest
from .ops import OpTarget, write_copy
from .streams import DIR_FLAGS, Op, Sources, holes, under
from .whole_archive import check_archive_size


def apply_solid(job: ApplyJob) -> None:
    """Rebuild the target but its persistent paths ``skip`` (decoded, never written) from a solid
    delta: each file from the base file with its sha256 (hashed while copied) or from the stream's
    output: the manifest reader's, which hashed every file (:func:`complete_skeleton`), written as
    is; else decoded here, with every dictionary file hashed against ``base`` and every output
    hashed while written."""
    label, base, target = job.label, job.base, job.target
    layout = delta_format.solid_layout(base, target.entries)
    solid = job.rebuilt.of(ContainerKind.SOLID) if job.rebuilt is not None else None
    hashed = solid is None
    if solid is None:
        solid = solid_data(job.source, job.header, base, target, holes(base, job.skip), check_files=True)
    if len(solid) < layout.size:
        raise DeltaError(f"{label}: the solid stream holds {len(solid)} bytes, the files need {layout.size}")
    view, offset, ranges = memoryview(solid), 0, {}
    for entry in layout.solid:
        ranges[entry.path] = view[offset : offset + entry.size]
        offset += entry.size
    for entry in target.entries:
        if under(entry.path, job.skip):
            continue
        if entry.type is not EntryType.FILE:
            create_entry(job.dest_fd, entry)
        elif entry.path in layout.copies:
            copy = Op(entry.path, OpKind.COPY, layout.copies[entry.path].path)
            write_copy(OpTarget(job.dest_fd, entry, job.source, copy))
        else:
            try:
                write_file(job.dest_fd, entry, io.BytesIO(ranges[entry.path]).read, hashed)
            except ArchiveError as exc:
                raise DeltaError(f"{label}: the solid stream rebuilt other bytes: {exc}") from None


def solid_manifest(job: ManifestJob) -> tuple[bytes, Rebuilt | None] | None:
    """The solid kind's manifest reader: the skeleton (a manifest patch), completed with the hashes
    of the files the stream rebuilds, decoded here with the base files of the verified tree at
    ``job.base_tar`` as dictionary (kept for the apply); None without that tree."""
    if not isinstance(job.base_tar, Path):
        return None
    skeleton = parse_manifest(manifest_from_patch(job)[0], job.release, job.label)
    fd = os.open(job.base_tar, DIR_FLAGS)
    try:  # base files not hashed again: the installer checked the tree before the download, and a file
        # changed since makes output whose manifest is not the signed one (the delta is refused)
        source = Sources(job.f, job.header.payload_start, fd, job.base.by_path(), job.label)
        solid = solid_data(source, job.header, job.base, skeleton, holes(job.base, job.skip), check_files=False)
    finally:
        os.close(fd)
    return complete_skeleton(skeleton, job.base, solid, job.label).to_bytes(), Rebuilt(ContainerKind.SOLID, solid)


def solid_data(
    source: Sources, header: delta_format.DeltaHeader, base: Manifest, target: Manifest, holes: frozenset[str],
    check_files: bool,
) -> bytearray:
    """The bytes of the files a solid delta's stream rebuilds (``delta_format.solid_layout`` of
    ``base`` and ``target``'s entries: the signed manifest's or the skeleton's), decoded with the base
    files below ``source.base_fd`` as the dictionary (zeros below ``holes``; with ``check_files``
    every one hashed against ``base``, else only its size checked). Memory: the dictionary and the
    output, bounded like a whole-archive delta by ``ARCHIVE_MAX`` of signed tar lengths, the output
    also by ``target``'s signed content length (:func:`decode_memory`)."""
    label = source.label
    check_archive_size(base, target.content, label)
    _check_no_holes(base, holes, label)
    layout = delta_format.solid_layout(base, target.entries)
    if layout.size > target.content.length:
        raise DeltaError(f"{label}: the solid stream would rebuild {layout.size} bytes, more than the "
                         f"{target.content.length}-byte release")
    dictionary = bytearray()
    try:
        write_files(source.base_fd, layout.dictionary, dictionary.extend, holes, check_files=check_files)
    except TreeChanged as exc:
        raise DeltaError(f"{label}: base file {show_path(exc.path)} was modified locally ({exc})") from exc
    stream = source.payload_range_bytes(*header.solid_range(), "the solid stream")
    try:
        return lzma_dict.decompress(stream, dictionary, layout.size)
    except delta_format.DeltaFormatError as exc:
        raise DeltaError(f"{label}: {exc}") from None


def decode_memory(base: Manifest, target: Manifest) -> int:
    """At most: the dictionary (the base files), the output (at most the target's files) and the
    decoder's dictionary over both (``lzma_dict.dict_size``)."""
    old, new = base.content.length, target.content.length
    return old + new + lzma_dict.dict_size(old, new)


def _check_no_holes(base: Manifest, holes: frozenset[str], label: str) -> None:
    """A solid stream cannot be decoded with bytes of its dictionary missing: unlike a zstd frame,
    whose matches would only copy wrong bytes, LZMA's model depends on every byte it has seen, so
    the whole output would be garbage. Refused at once (the installer falls back to the full
    artifact) when the base shipped a non-empty file below a persistent path, which the slot links away."""
    for e in base.entries:
        if e.type is EntryType.FILE and e.size and under(e.path, holes):
            raise DeltaError(f"{label}: a solid delta needs the base file {show_path(e.path)}, which is below a "
                             "persistent path and not in the slot")


def complete_skeleton(skeleton: Manifest, base: Manifest, solid: bytes | bytearray, label: str) -> Manifest:
    """``skeleton`` with the sha256 of each file the solid stream rebuilt (``solid``, in layout order).
    A rebuilt file may not have a base file's sha256 (the publisher copies those): the completed
    manifest then gives :func:`apply_solid` exactly the skeleton's layout, so the bytes hashed here
    are the bytes it writes without hashing them again."""
    view, offset, hashes = memoryview(solid), 0, {}
    base_hashes = {e.sha256 for e in base.entries if e.type is EntryType.FILE}
    for entry in delta_format.solid_layout(base, skeleton.entries).solid:
        digest = hashlib.sha256(view[offset : offset + entry.size]).hexdigest()
        if digest in base_hashes:
            raise DeltaError(f"{label}: the solid stream rebuilds {show_path(entry.path)}, a copy of a base file")
        hashes[entry.path] = digest
        offset += entry.size
    entries = tuple(replace(e, sha256=hashes[e.path]) if e.path in hashes else e for e in skeleton.entries)
    return Manifest(skeleton.version, skeleton.content, entries)


__all__ = ["apply_solid", "complete_skeleton", "decode_memory", "solid_data", "solid_manifest"]
