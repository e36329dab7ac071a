"""Segmented patches of large files (the ``zstd-segments`` op): memory bounded whatever the file size.

Whole-file patches need both files in memory, on both sides: bsdiff4 about 17x the old file to encode and
old + 3x new to apply, zstd patch-from old + new (and a window covering both). A changed file larger than
:data:`WHOLE_PATCH_MAX` on either side is therefore never patched whole (the publisher does not write it,
the client refuses it and takes the full artifact). Instead the new file is cut into *segments* of at most
:data:`SEGMENT_MAX` bytes, and each segment is one zstd frame compressed with a *region* of the base file
(at most :data:`SEGMENT_BASE_MAX` bytes) as raw prefix: normally the segment's own offsets in the old file
widened by a margin on each side (:func:`regions`), so edits, insertions and appends that move content by
less than the margin still patch well. Publisher and client hold one region, one segment and one zstd
context at a time.

The op's payload data is, for each segment in order::

    record  32 bytes: u64 big-endian base_offset, base_length, size, length
    frame   ``length`` bytes: one zstd frame (content size declared, no checksum) of ``size`` bytes, with the
            base file's bytes [base_offset, base_offset + base_length) as raw prefix (none when
            base_length is 0) and window log ``patch_window_log(base_length, size)``

Rules a reader enforces (:func:`parse_record`, and the client while decoding): 1 <= size <=
:data:`SEGMENT_MAX`; base_length is 0 or between :data:`PREFIX_MIN` and :data:`SEGMENT_BASE_MAX`; the base
range lies inside the base file's signed size; the sizes add up to exactly the output file's signed size
(a record going past it is refused before its frame is read); each frame decodes to exactly its ``size``
and the records and frames end exactly at the end of the op's data. The output's sha256 comes from the
signed target manifest, as for every op. Pure apart from :func:`read_region` (a ``pread`` loop).

``bsdiff-segments`` ops use the same records with another codec: each segment's ``length`` bytes are one
``bsdiff-lzma`` patch (:mod:`formats.bsdiff_lzma`) whose old bytes are the base region (empty when
base_length is 0) and whose output is the segment's ``size`` bytes. The patch is read whole, so a reader
also refuses a ``length`` over :func:`bsdiff_data_max` of the segment's size before reading it. A publisher
writes them where whole-file bsdiff does not fit its memory budget: a window's suffix sort needs 17x the
region, not the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .bsdiff_lzma import control_max

MIB = 1 << 20
WHOLE_PATCH_MAX = 64 * MIB
"""Largest file (base or target) a whole-file ``bsdiff4`` or ``zstd-patch`` op may patch: the client holds
the base file, the output and (bsdiff4) the decompressed diff and extra blocks, so about 4 x 64 MiB at worst."""
SEGMENT_MAX = 32 * MIB
"""Largest segment (output bytes of one frame)."""
SEGMENT_BASE_MAX = 64 * MIB
"""Largest base region (raw prefix) of one segment."""
PREFIX_MIN = 8
"""zstd refuses a raw prefix shorter than this; a region is then empty (plain frame)."""

RECORD = struct.Struct(">QQQQ")


class SegmentError(ValueError):
    """A segment record breaks the rules (one line, naming the segment)."""


@dataclass(frozen=True)
class Segment:
    """One segment: the base region used as prefix, the output bytes ``size`` and the frame's ``length``."""

    base_offset: int
    base_length: int
    size: int
    length: int = 0

    def record(self) -> bytes:
        return RECORD.pack(self.base_offset, self.base_length, self.size, self.length)


@dataclass(frozen=True)
class SegmentParams:
    """How the publisher segments: files above ``whole_max`` (either side) are segmented into pieces of
    ``size`` bytes, each against the same offsets of the base widened by ``margin`` on both sides. Tests
    lower them to exercise segments on small files; they can never exceed the format's limits."""

    whole_max: int = WHOLE_PATCH_MAX
    size: int = SEGMENT_MAX
    margin: int = (SEGMENT_BASE_MAX - SEGMENT_MAX) // 2

    def __post_init__(self) -> None:
        if not 0 < self.whole_max <= WHOLE_PATCH_MAX:
            raise ValueError(f"whole_max {self.whole_max} outside 1..{WHOLE_PATCH_MAX}")
        if not 0 < self.size <= SEGMENT_MAX or self.margin < 0 or self.size + 2 * self.margin > SEGMENT_BASE_MAX:
            raise ValueError(f"segment size {self.size} / margin {self.margin} outside the format's limits")


DEFAULT_SEGMENTS = SegmentParams()


def regions(base_size: int, size: int, params: SegmentParams = DEFAULT_SEGMENTS) -> list[Segment]:
    """The segments (``length`` still 0) of a ``size``-byte file patched against a ``base_size``-byte base:
    consecutive pieces of ``params.size`` bytes; each one's region is the base bytes at the same offsets
    widened by ``params.margin`` on both sides, shifted to stay inside the base (so the end of a grown file
    is patched against the end of the base), and empty when the base is shorter than :data:`PREFIX_MIN`."""
    return [_placed(start, min(params.size, size - start), 0, base_size, params.margin)
            for start in range(0, size, params.size)]


def _placed(start: int, size: int, shift: int, base_size: int, margin: int) -> Segment:
    """The segment of ``size`` bytes at ``start``: its region the base bytes at its offsets moved by ``shift``,
    widened by ``margin`` on both sides and kept inside the base (empty when the base is too short)."""
    length = min(size + 2 * margin, base_size)
    if length < PREFIX_MIN:
        return Segment(0, 0, size)
    return Segment(max(0, min(start + shift - margin, base_size - length)), length, size)


BLOCKS = 8
""":func:`matched_regions` looks content up in blocks of a segment's size / BLOCKS."""
ANCHORS = 16
"""Samples per block that :func:`matched_regions` looks up in the base."""
ANCHOR = 32
"""Bytes of one sample: long enough to occur once in a real binary unless the content is the same."""
VOTES_MIN = 2
"""Samples that must agree on a block's shift: one alone is as often a chance match elsewhere (ruff's
executable, rebuilt all over, has most blocks with a few samples found, each at another offset)."""


def matched_regions(old: bytes, new: bytes, params: SegmentParams = DEFAULT_SEGMENTS) -> list[Segment]:
    """Segments of ``new`` (at most ``params.size`` bytes) whose regions follow its content in ``old``.

    ``new`` is cut into blocks of ``params.size // BLOCKS`` bytes; a block's *shift* is the offset (base
    position minus new position) most of its :data:`ANCHORS` evenly spaced samples are first found at in
    ``old`` (samples of fewer than 8 distinct bytes, such as padding, are skipped; ties go to the earlier
    sample's; fewer than :data:`VOTES_MIN` agreeing, as for new content: no shift). Consecutive blocks make
    one segment while it stays within ``params.size`` and each block's shift is within ``params.margin`` of the
    segment's first, so its region (the segment's offsets moved by that shift, widened by the margin) holds
    every block's content. A library rebuilt with code added or dropped moves its pieces by more than any
    margin, each its own way (numpy 2.0.2 -> 2.1.0's OpenBLAS, 36 -> 22 MB: by up to 12.9 MB), which the same
    offsets would miss."""
    block = max(1, params.size // BLOCKS)
    out: list[Segment] = []
    start = length = 0
    first: int | None = None
    for at in range(0, len(new), block):
        n = min(block, len(new) - at)
        shift = _shift(old, new, at, n)
        apart = shift is not None and first is not None and abs(shift - first) > params.margin
        if length and (length + n > params.size or apart):
            out.append(_placed(start, length, first or 0, len(old), params.margin))
            start, length, first = at, 0, None
        length += n
        first = shift if first is None else first
    if length:
        out.append(_placed(start, length, first or 0, len(old), params.margin))
    return out


def _shift(old: bytes, new: bytes, start: int, size: int) -> int | None:
    """The block ``new[start:start + size]``'s shift in ``old`` (see :func:`matched_regions`), or None."""
    votes: dict[int, int] = {}
    for i in range(ANCHORS):
        at = start + i * size // ANCHORS
        sample = new[at : at + ANCHOR]
        if len(sample) == ANCHOR and len(set(sample)) >= 8 and (found := old.find(sample)) >= 0:
            votes[found - at] = votes.get(found - at, 0) + 1
    best = max(votes, key=votes.__getitem__, default=None)  # the first of equals: dicts keep insertion order
    return best if best is not None and votes[best] >= VOTES_MIN else None


def parse_record(data: bytes, base_size: int, remaining: int, where: str) -> Segment:
    """The segment record ``data`` (:data:`RECORD` bytes), checked against the base file's signed size and
    the ``remaining`` output bytes of the file; :class:`SegmentError` naming ``where`` otherwise."""
    if len(data) != RECORD.size:
        raise SegmentError(f"{where}: segment record truncated")
    seg = Segment(*RECORD.unpack(data))
    if not 1 <= seg.size <= SEGMENT_MAX:
        raise SegmentError(f"{where}: segment of {seg.size} bytes (1..{SEGMENT_MAX} allowed)")
    if seg.size > remaining:
        raise SegmentError(f"{where}: segments declare more than the signed size ({seg.size} > {remaining} left)")
    if seg.base_length == 0 and seg.base_offset:
        raise SegmentError(f"{where}: an empty base region must have offset 0")
    if seg.base_length and not PREFIX_MIN <= seg.base_length <= SEGMENT_BASE_MAX:
        raise SegmentError(f"{where}: base region of {seg.base_length} bytes (0 or {PREFIX_MIN}..{SEGMENT_BASE_MAX})")
    if seg.base_offset + seg.base_length > base_size:
        raise SegmentError(
            f"{where}: base region {seg.base_offset}+{seg.base_length} outside the {base_size}-byte base file"
        )
    return seg


def bsdiff_data_max(size: int) -> int:
    """The longest ``bsdiff-segments`` segment data (one ``bsdiff-lzma`` patch) for ``size`` output bytes: its
    raw blocks' bound (control within ``control_max``, diff and extra ``size`` together) and as much again for
    the coding's framing, which no real patch comes near (LZMA2 adds a few bytes per 64 KiB)."""
    return control_max(size) + 2 * size


def read_region(fd: int, seg: Segment) -> bytes:
    """The base region of ``seg`` read from the file ``fd`` (shorter only if the file ends early)."""
    parts, got = [], 0
    while got < seg.base_length:
        chunk = os.pread(fd, seg.base_length - got, seg.base_offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


__all__ = [
    "ANCHOR", "ANCHORS", "BLOCKS", "DEFAULT_SEGMENTS", "PREFIX_MIN", "RECORD", "SEGMENT_BASE_MAX", "SEGMENT_MAX",
    "VOTES_MIN", "WHOLE_PATCH_MAX", "Segment", "SegmentError", "SegmentParams", "bsdiff_data_max", "matched_regions",
    "parse_record", "read_region", "regions",
]
