"""The per-file ops on the client: one writer per :class:`~pinnacle_updates.formats.delta_kinds.OpKind`
(registered in :mod:`.kinds`), each creating one target file from its op and the base tree, its
bytes bounded by the signed size while produced. Each returns the digest of what it wrote and
whether the output overflowed; :func:`.kinds.write_output` compares that with the signed manifest."""

from __future__ import annotations

import bz2
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import bsdiff4.core

from pinnacle_updates.formats import bsdiff_lzma, delta_format, delta_segments
from pinnacle_updates.formats.archive import CHUNK_SIZE, copy_hashed, show_path
from pinnacle_updates.formats.delta_kinds import OpKind
from pinnacle_updates.formats.index import Digest, Manifest, ManifestEntry

from .errors import DeltaError
from .streams import Op, Sources, ZstdStream, create_file, limited

Written = tuple[Digest, bool]
"""What an op writer produced: the digest of the bytes written, and whether the output overflowed."""


@dataclass(frozen=True)
class OpTarget:
    """One target file to create in ``dest_fd`` from ``op``; ``shared``: the delta's shared
    streams, when it has them (the ``shared`` container kind)."""

    dest_fd: int
    entry: ManifestEntry
    source: Sources
    op: Op
    shared: Shared | None = None

    @property
    def where(self) -> str:
        return f"{self.source.label}: {show_path(self.entry.path)}"


def write_copy(t: OpTarget) -> Written:
    """``copy``: the base file with the same signed sha256, hashed while copied (an edited one is
    reported as modified locally)."""
    base = t.source.base_entry(t.op)
    if (base.size, base.sha256) != (t.entry.size, t.entry.sha256):
        raise DeltaError(f"{t.where}: copy of {show_path(base.path)}, whose signed sha256 differs")
    fd = t.source.open_base(t.op)
    try:
        got, overflow = create_file(t.dest_fd, t.entry, lambda n: os.read(fd, n))
    finally:
        os.close(fd)
    if overflow or got != Digest(t.entry.size, t.entry.sha256):
        raise t.source.modified(base, got, overflow)
    return got, overflow


def check_whole_file(t: OpTarget) -> None:
    """A whole-file patch holds the base file and the output in memory: refuse one over
    ``WHOLE_PATCH_MAX`` on either side (the publisher segments such files), so that no delta can
    make the client allocate more than that bound."""
    size, limit = max(t.entry.size, t.source.base_entry(t.op).size), delta_segments.WHOLE_PATCH_MAX
    if size > limit:
        raise DeltaError(
            f"{t.where}: a whole-file {t.op.op} patch of a {size}-byte file is over the "
            f"{limit}-byte limit (larger files come as zstd-segments)"
        )


def write_bsdiff4(t: OpTarget) -> Written:
    """``bsdiff4`` (stock BSDIFF40; the publisher writes it where bz2 codes it smallest): :func:`bspatch`."""
    data = bspatch(t.source.base_bytes(t.op), t.source.payload_bytes(t.op), t.entry, t.source.label)
    return create_file(t.dest_fd, t.entry, io.BytesIO(data).read)


def write_bsdiff_lzma(t: OpTarget) -> Written:
    """``bsdiff-lzma``: bsdiff4's blocks, each bounded by the signed size (formats.bsdiff_lzma)."""
    try:
        data = bsdiff_lzma.patch(t.source.base_bytes(t.op), t.source.payload_bytes(t.op), t.entry.size)
    except delta_format.DeltaFormatError as exc:
        raise DeltaError(f"{t.where}: {exc}") from None
    return create_file(t.dest_fd, t.entry, io.BytesIO(data).read)


def write_bsdiff_shared(t: OpTarget) -> Written:
    """``bsdiff-shared``: the same blocks, taken from the delta's shared streams (:class:`Shared`)."""
    if t.shared is None:  # check_layout ties these ops to the streams: only a caller's mistake gets here
        raise DeltaError(f"{t.where}: a bsdiff-shared op without shared streams")
    data = t.shared.patch(t.source.base_bytes(t.op), t.op, t.entry)
    return create_file(t.dest_fd, t.entry, io.BytesIO(data).read)


def write_zstd(t: OpTarget) -> Written:
    """``zstd`` (a new file) and ``zstd-patch`` (the base file as raw prefix): one bounded frame."""
    prefix = t.source.base_bytes(t.op) if t.op.op is OpKind.ZSTD_PATCH else None
    stream = ZstdStream(t.source.payload_reader(t.op), prefix, t.entry.size, t.where)
    got, overflow = create_file(t.dest_fd, t.entry, stream.read)
    if not overflow:
        stream.finish()
    return got, overflow


def write_segments(t: OpTarget) -> Written:
    """``zstd-segments`` and ``bsdiff-segments``: the base file is hashed against the base manifest first
    (streamed), then each segment is decoded with its base region (``pread``): as zstd's prefix, or as the
    old bytes of its bsdiff-lzma patch. Memory: one region and one segment at a time, whatever the file
    sizes."""
    base = t.source.base_entry(t.op)
    fd = t.source.open_base(t.op)
    try:
        got, overflow = copy_hashed(lambda n: os.read(fd, n), None, base.size)
        if overflow or got != Digest(base.size, base.sha256):
            raise t.source.modified(base, got, overflow)
        stream = _SegmentStream(t.source.payload_reader(t.op), t.op.length, fd, base.size, t.entry.size, t.where,
                                t.op.op is OpKind.BSDIFF_SEGMENTS)
        got, overflow = create_file(t.dest_fd, t.entry, stream.read)
        if not overflow:
            stream.finish()
    finally:
        os.close(fd)
    return got, overflow


class Shared:
    """The shared bsdiff streams of a per-file delta (``formats.bsdiff_lzma.SharedStream``). Every
    ``bsdiff-shared`` op's lengths are read and bounded by its signed size first, which fixes each
    stream's total; ops then take their blocks in op order, and blocks of ops not written (below a
    persistent path) are skipped over, so every op gets its own."""

    def __init__(self, source: Sources, header: delta_format.DeltaHeader, target: Manifest) -> None:
        self.label = source.label
        sizes = {e.path: e.size for e in target.entries}
        self.lengths: dict[str, tuple[int, int, int]] = {}
        try:
            for op in header.ops:
                if op.op is not OpKind.BSDIFF_SHARED:
                    continue
                if sizes[op.path] > delta_segments.WHOLE_PATCH_MAX:  # also for an op not written (skipped)
                    raise delta_format.DeltaFormatError(
                        f"{show_path(op.path)}: a bsdiff-shared op for a {sizes[op.path]}-byte file is over the "
                        f"{delta_segments.WHOLE_PATCH_MAX}-byte limit"
                    )
                self.lengths[op.path] = bsdiff_lzma.parse_lengths(source.payload_bytes(op), sizes[op.path])
        except delta_format.DeltaFormatError as exc:
            raise DeltaError(f"{self.label}: {exc}") from None
        self.order = list(self.lengths)
        self.next = 0
        self.streams = [
            bsdiff_lzma.SharedStream(source.payload_reader_range(start, end, f"the shared {name} stream"),
                                     sum(lengths[i] for lengths in self.lengths.values()), name)
            for i, (name, (start, end)) in enumerate(zip(delta_format.SHARED_STREAMS, header.shared_ranges(),
                                                         strict=True))
        ]

    def _skip(self) -> None:
        """Skip the blocks of the next op (one not written)."""
        for stream, length in zip(self.streams, self.lengths[self.order[self.next]], strict=True):
            stream.take(length)
        self.next += 1

    def _take(self, path: str) -> tuple[bytes, bytes, bytes]:
        while self.next < len(self.order) and self.order[self.next] != path:
            self._skip()
        if self.next == len(self.order):
            raise delta_format.DeltaFormatError("bsdiff-shared ops are taken out of order")
        self.next += 1
        planes, diff, extra = (s.take(n) for s, n in zip(self.streams, self.lengths[path], strict=True))
        return bsdiff_lzma.from_planes(planes), diff, extra

    def patch(self, base: bytes, op: Op, entry: ManifestEntry) -> bytes:
        """The output of ``op`` (a ``bsdiff-shared`` op for ``entry``) from ``base``."""
        try:
            return bsdiff_lzma.apply_blocks(base, *self._take(op.path), entry.size)
        except delta_format.DeltaFormatError as exc:
            raise DeltaError(f"{self.label}: {show_path(entry.path)}: {exc}") from None

    def finish(self) -> None:
        """Every stream ends exactly after the last op's blocks (ops not written skipped)."""
        try:
            while self.next < len(self.order):
                self._skip()
            for stream in self.streams:
                stream.finish()
        except delta_format.DeltaFormatError as exc:
            raise DeltaError(f"{self.label}: {exc}") from None


def bspatch(base: bytes, patch: bytes, entry: ManifestEntry, label: str) -> bytes:
    """bsdiff4 ``patch`` applied to ``base``, refusing before any allocation a patch that declares
    another output size than the manifest, and bounding each decompressed block by that size."""
    where = f"{label}: {show_path(entry.path)}"
    return bspatch_bounded(base, patch, entry.size, BSDIFF4_TUPLE * (entry.size + 1), where)


def bspatch_bounded(base: bytes, patch: bytes, size: int, control_limit: int, where: str) -> bytes:
    """bsdiff4 ``patch`` applied to ``base``: it must declare exactly ``size`` output bytes (the
    signed size, checked before any allocation); the control block decompresses to at most
    ``control_limit`` bytes, the diff and extra blocks to at most ``size`` each."""
    if len(patch) < 32 or patch[:8] != b"BSDIFF40":
        raise DeltaError(f"{where}: not a bsdiff4 patch")
    len_control, len_diff, len_new = (bsdiff4.core.decode_int64(patch[i : i + 8]) for i in (8, 16, 24))
    if len_new != size:
        raise DeltaError(f"{where}: patch declares {len_new} output bytes, the signed size is {size}")
    if len_control < 0 or len_diff < 0 or 32 + len_control + len_diff > len(patch):
        raise DeltaError(f"{where}: bsdiff4 patch is truncated or malformed")
    blocks = (patch[32 : 32 + len_control], patch[32 + len_control : 32 + len_control + len_diff],
              patch[32 + len_control + len_diff :])  # fmt: skip
    limits = (control_limit, size, size)
    try:
        control, diff, extra = (_bunzip_bounded(b, n, where) for b, n in zip(blocks, limits, strict=True))
        if len(control) % BSDIFF4_TUPLE:
            raise DeltaError(f"{where}: bsdiff4 control block is malformed")
        out: bytes = bsdiff4.core.patch(base, len_new, control, diff, extra)
    except DeltaError:
        raise  # already one line naming the block (DeltaError is a ValueError)
    except (ValueError, OSError, MemoryError) as exc:
        raise DeltaError(f"{where}: bad bsdiff4 patch ({exc})") from exc
    return out


BSDIFF4_TUPLE = 24
"""Bytes of one bsdiff4 control tuple; a patch of ``n`` output bytes needs at most ``n + 1`` of them."""


def _bunzip_bounded(data: bytes, limit: int, where: str) -> bytes:
    decomp = bz2.BZ2Decompressor()
    out = decomp.decompress(data, limit + 1)
    if len(out) > limit:
        raise DeltaError(f"{where}: a bsdiff4 block decompresses to more than the signed size allows")
    if not decomp.eof:
        raise DeltaError(f"{where}: a bsdiff4 block is truncated")
    return out


class _SegmentStream:
    """The output of a ``zstd-segments`` op (or, with ``bsdiff``, a ``bsdiff-segments`` one), segment after
    segment. Each record is checked (``delta_segments.parse_record``: sizes, base range, the signed size not
    exceeded; a bsdiff patch's length within ``bsdiff_data_max``) before its data is read; each segment must
    decode to exactly its declared size."""

    def __init__(
        self, data: Callable[[int], bytes], length: int, base_fd: int, base_size: int, size: int, where: str,
        bsdiff: bool = False,
    ) -> None:
        self._data = data
        self._left = length  # op data bytes not taken yet
        self._base_fd = base_fd
        self._base_size = base_size
        self._undeclared = size  # output bytes no record has declared yet
        self._where = where
        self._count = 0
        self._bsdiff = bsdiff
        self._frame: ZstdStream | _Patched | None = None
        self._due = 0  # output bytes the current frame still owes

    def read(self, n: int) -> bytes:
        while True:
            if self._frame is None:
                if not self._left:
                    return b""
                self._next()
            assert self._frame is not None
            if self._due:
                out = self._frame.read(min(n, self._due))
                if not out:
                    raise DeltaError(f"{self._where}: segment #{self._count} decodes to fewer bytes than declared")
                self._due -= len(out)
                return out
            self._frame.finish()
            self._frame = None  # the region is released before the next one is read

    def finish(self) -> None:
        """Every declared byte was produced and the records cover exactly the signed size."""
        if self._frame is not None or self._left or self._undeclared:
            raise DeltaError(f"{self._where}: segments end {self._undeclared} bytes short of the signed size")

    def _next(self) -> None:
        self._count += 1
        where = f"{self._where}: segment #{self._count}"
        if self._left < delta_segments.RECORD.size:
            raise DeltaError(f"{where}: segment record truncated")
        record = self._data(delta_segments.RECORD.size)
        self._left -= len(record)
        try:
            seg = delta_segments.parse_record(record, self._base_size, self._undeclared, where)
        except delta_segments.SegmentError as exc:
            raise DeltaError(str(exc)) from None
        if seg.length > self._left:
            raise DeltaError(f"{where}: a {seg.length}-byte frame runs past the op's data ({self._left} left)")
        if self._bsdiff and seg.length > delta_segments.bsdiff_data_max(seg.size):
            raise DeltaError(f"{where}: a {seg.length}-byte bsdiff patch for {seg.size} bytes is over the "
                             f"{delta_segments.bsdiff_data_max(seg.size)}-byte bound")
        self._left -= seg.length
        self._undeclared -= seg.size
        prefix = delta_segments.read_region(self._base_fd, seg) if seg.base_length else None
        if prefix is not None and len(prefix) != seg.base_length:
            raise DeltaError(f"{where}: the base file shrank while being read")
        data = limited(self._data, seg.length)
        self._frame = _Patched(data, seg, prefix or b"", where) if self._bsdiff else ZstdStream(
            data, prefix, seg.size, where)
        self._due = seg.size


class _Patched:
    """One ``bsdiff-segments`` segment: its patch read whole (the caller bounded its length) and applied to
    its base region; read like a :class:`ZstdStream`."""

    def __init__(self, data: Callable[[int], bytes], seg: delta_segments.Segment, old: bytes, where: str) -> None:
        parts, left = [], seg.length
        while left and (chunk := data(min(left, CHUNK_SIZE))):
            parts.append(chunk)
            left -= len(chunk)
        try:
            self._out = io.BytesIO(bsdiff_lzma.patch(old, b"".join(parts), seg.size))
        except delta_format.DeltaFormatError as exc:
            raise DeltaError(f"{where}: {exc}") from None

    def read(self, n: int) -> bytes:
        return self._out.read(n)

    def finish(self) -> None:
        """Nothing to check: the patch produced exactly the segment's size, and its data was its length."""


__all__ = [
    "BSDIFF4_TUPLE", "OpTarget", "Shared", "Written", "bspatch", "bspatch_bounded", "check_whole_file",
    "write_bsdiff4",
    "write_bsdiff_lzma", "write_bsdiff_shared", "write_copy", "write_segments", "write_zstd",
]
