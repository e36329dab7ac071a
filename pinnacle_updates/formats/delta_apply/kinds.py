"""The appliers' registry of delta kinds (the client's, shared with ``verify --deep``): for every op
kind and container kind (:mod:`pinnacle_updates.formats.delta_kinds`), how it is applied and the most
memory decoding it may take. ``tests/formats/test_delta_kinds.py`` checks that :data:`CLIENT_KINDS` covers every kind
exactly, like the publisher's ``PUBLISHER_KINDS`` (:mod:`pinnacle_updates.repo_tools.delta`).

The memory bounds are what the client's checks guarantee whatever a delta says (output bounded by the
signed sizes, whole-file patches by ``WHOLE_PATCH_MAX``, segments by the format's limits, containers
by ``ARCHIVE_MAX``), not typical use; the compressed op data read whole (patches) comes on top.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pinnacle_updates.formats import bsdiff_lzma, delta_segments
from pinnacle_updates.formats.archive import CHUNK_SIZE, show_path
from pinnacle_updates.formats.delta_kinds import ContainerKind, DeltaKind, OpKind
from pinnacle_updates.formats.index import Digest, EntryType, Manifest
from pinnacle_updates.formats.tree import create_entry

from . import solid, whole_archive
from .errors import DeltaError
from .jobs import ApplyJob, ManifestJob, Rebuilt
from .manifest import manifest_from_patch
from .ops import (
    BSDIFF4_TUPLE,
    OpTarget,
    Shared,
    Written,
    check_whole_file,
    write_bsdiff4,
    write_bsdiff_lzma,
    write_bsdiff_shared,
    write_copy,
    write_segments,
    write_zstd,
)
from .streams import decoder_window_log

MemoryBound = Callable[[int, int], int]
"""Bytes at most, from the base file's and the target file's signed sizes."""


@dataclass(frozen=True)
class OpApplier:
    """How the client applies one op kind: ``write`` creates the file (:class:`~.ops.OpTarget`),
    ``output`` names its bytes in errors, ``decode_memory`` bounds what that may hold."""

    write: Callable[[OpTarget], Written]
    output: str
    decode_memory: MemoryBound


@dataclass(frozen=True)
class ContainerApplier:
    """How the client applies one container kind: ``apply`` rebuilds the tree, ``manifest`` reads the
    target manifest's canonical JSON from the delta (and what it decoded on the way, for ``apply``;
    None: not to be had here, the signed manifest is downloaded), ``decode_memory`` bounds what
    decoding holds, from the base and target manifests."""

    apply: Callable[[ApplyJob], None]
    manifest: Callable[[ManifestJob], tuple[bytes, Rebuilt | None] | None]
    decode_memory: Callable[[Manifest, Manifest], int]


def _bsdiff4_memory(old: int, new: int) -> int:
    """The base, the three bzip2 blocks (control at most a tuple per output byte and one, diff and
    extra each at most the output) and the output."""
    return old + BSDIFF4_TUPLE * (new + 1) + 3 * new


def _bsdiff_blocks_memory(old: int, new: int) -> int:
    """The base, the raw blocks (``check_lengths``: control within ``control_max``, diff and extra
    together at most the output) and the output; the blocks' decoders are counted by whoever decodes
    them (the op itself, or the shared streams)."""
    return old + bsdiff_lzma.control_max(new) + 2 * new


def _bsdiff_lzma_memory(old: int, new: int) -> int:
    """:func:`_bsdiff_blocks_memory` and the three blocks' LZMA decoders, decoded side by side."""
    return _bsdiff_blocks_memory(old, new) + 3 * bsdiff_lzma.dict_size(new)


def _zstd_patch_memory(old: int, new: int) -> int:
    """The base held twice (read, and zstd's prefix copy) and the decoder window over both."""
    return 2 * old + (1 << decoder_window_log(old, new))


def _segments_memory(old: int, new: int) -> int:
    """One base region and one segment's window at a time, whatever the file sizes."""
    return _zstd_patch_memory(min(old, delta_segments.SEGMENT_BASE_MAX), min(new, delta_segments.SEGMENT_MAX))


def _bsdiff_segments_memory(old: int, new: int) -> int:
    """One base region, one segment's patch (``bsdiff_data_max``) and :func:`_bsdiff_lzma_memory` of the
    segment against the region, whatever the file sizes."""
    region, size = min(old, delta_segments.SEGMENT_BASE_MAX), min(new, delta_segments.SEGMENT_MAX)
    return delta_segments.bsdiff_data_max(size) + _bsdiff_lzma_memory(region, size)


OP_APPLIERS: Mapping[OpKind, OpApplier] = {
    OpKind.COPY: OpApplier(write_copy, "copied", lambda old, new: CHUNK_SIZE),
    OpKind.BSDIFF4: OpApplier(write_bsdiff4, "patched", _bsdiff4_memory),
    OpKind.BSDIFF_LZMA: OpApplier(write_bsdiff_lzma, "patched", _bsdiff_lzma_memory),
    OpKind.BSDIFF_SHARED: OpApplier(write_bsdiff_shared, "patched", _bsdiff_blocks_memory),
    OpKind.ZSTD_PATCH: OpApplier(write_zstd, "patched", _zstd_patch_memory),
    OpKind.ZSTD: OpApplier(write_zstd, "decompressed", lambda old, new: 1 << decoder_window_log(0, new)),
    OpKind.ZSTD_SEGMENTS: OpApplier(write_segments, "patched", _segments_memory),
    OpKind.BSDIFF_SEGMENTS: OpApplier(write_segments, "patched", _bsdiff_segments_memory),
}


def write_output(target: OpTarget) -> None:
    """Create ``target.entry`` from its op through the op kind's writer; its bytes bounded by and
    checked against the signed manifest."""
    kind, entry = target.op.op, target.entry
    if kind.whole_file:
        check_whole_file(target)
    applier = OP_APPLIERS[kind]
    got, overflow = applier.write(target)
    if overflow:
        raise DeltaError(f"{target.where}: {applier.output} output exceeds the signed size of {entry.size} bytes")
    if got != Digest(entry.size, entry.sha256):
        raise DeltaError(
            f"{target.where}: {applier.output} output has sha256 {got.sha256[:16]}... ({got.length} bytes), "
            f"expected {entry.sha256[:16]}... ({entry.size} bytes)"
        )


def apply_per_file(job: ApplyJob) -> None:
    """The per-file kinds: directories and symlinks from the target manifest, each file from its op
    (:func:`write_output`); with shared streams, every ``bsdiff-shared`` op's blocks from them, which
    must then end exactly after the last op's."""
    shared = Shared(job.source, job.header, job.target) if job.header.kind is ContainerKind.SHARED else None
    ops = {op.path: op for op in job.header.ops}
    for entry in job.wanted.entries:
        if entry.type is not EntryType.FILE:
            create_entry(job.dest_fd, entry)
            continue
        op = ops.get(entry.path)
        if op is None:
            raise DeltaError(f"{job.label}: no op rebuilds {show_path(entry.path)}")
        write_output(OpTarget(job.dest_fd, entry, job.source, op, shared))
    if shared is not None:
        shared.finish()


def _largest(manifest: Manifest) -> int:
    return max((e.size for e in manifest.entries if e.type is EntryType.FILE), default=0)


def _per_file_memory(base: Manifest, target: Manifest) -> int:
    """The most demanding op on the largest files (whole-file patches refused above ``WHOLE_PATCH_MAX``)."""
    old, new, cap = _largest(base), _largest(target), delta_segments.WHOLE_PATCH_MAX
    return max(
        applier.decode_memory(min(old, cap), min(new, cap)) if kind.whole_file else applier.decode_memory(old, new)
        for kind, applier in OP_APPLIERS.items()
    )


def _shared_memory(base: Manifest, target: Manifest) -> int:
    """Per-file, plus the three shared streams' LZMA decoders (each dictionary ``dict_size`` of a
    stream, at most 64 MiB)."""
    return _per_file_memory(base, target) + 3 * bsdiff_lzma.dict_size(target.content.length)


CONTAINER_APPLIERS: Mapping[ContainerKind, ContainerApplier] = {
    ContainerKind.PER_FILE: ContainerApplier(apply_per_file, manifest_from_patch, _per_file_memory),
    ContainerKind.SHARED: ContainerApplier(apply_per_file, manifest_from_patch, _shared_memory),
    ContainerKind.WHOLE_ARCHIVE: ContainerApplier(whole_archive.apply_whole_archive,
                                                  whole_archive.whole_archive_manifest, whole_archive.decode_memory),
    ContainerKind.WHOLE_ARCHIVE_BSDIFF4: ContainerApplier(whole_archive.apply_whole_archive,
                                                          whole_archive.whole_archive_manifest,
                                                          whole_archive.bsdiff4_decode_memory),
    ContainerKind.SOLID: ContainerApplier(solid.apply_solid, solid.solid_manifest, solid.decode_memory),
}

CLIENT_KINDS: Mapping[DeltaKind, OpApplier | ContainerApplier] = dict(
    [*OP_APPLIERS.items(), *CONTAINER_APPLIERS.items()]
)
"""Every kind the client applies; ``tests/formats/test_delta_kinds.py`` checks it is every kind."""


__all__ = ["CLIENT_KINDS", "CONTAINER_APPLIERS", "OP_APPLIERS", "ContainerApplier", "OpApplier", "write_output"]
