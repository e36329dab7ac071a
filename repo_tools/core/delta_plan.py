"""Pure planning of a delta: per target file, which base file to use and which encoders may run.

Matching (first rule that applies):

1. ``copy``: some base file has the same sha256 (renames included, such as ``pkg-1.2.dist-info/``
   becoming ``pkg-1.3.dist-info/``); the same path is preferred, then the same versioned path,
   then the first such base file in manifest order.
2. a patch against the base file at the same path;
3. else against a base file whose path is the same once normalised (:func:`normalise_path`:
   content-hash-like runs and version-like runs become ``#``: ``pkg-1.2.dist-info/RECORD`` ~
   ``pkg-1.3.dist-info/RECORD``, ``lib/libfoo.so.1.2`` ~ ``lib/libfoo.so.1.3``,
   ``numpy.libs/libscipy_openblas64_-99b71e71.so`` ~ ``numpy.libs/libscipy_openblas64_-ff651d7f.so``);
   among several, the closest in size, then the first in manifest order;
4. else, for a file of at least :data:`SIMILAR_MIN` bytes, against a *spare* base file (one that
   rules 1-3 gave to no target file) in the same directory, with the same extension
   (:func:`extension`), at least :data:`SIMILAR_MIN` bytes and within :data:`SIMILAR_RATIO` of its
   size: the closest in size, then the first in manifest order; each spare base file serves at
   most one target file, in target manifest order. Such a guess also keeps plain ``zstd`` as a
   candidate, so an unrelated base never makes the output larger than a new file's;
5. else ``zstd`` (a new file).

Encoders, by a memory budget in bytes (what the process may still add to its resident size):
``zstd`` is always a candidate (a patch does not always beat plain compression, e.g. on small or
rewritten files); ``zstd-patch`` when :func:`zstd_patch_memory` fits; ``bsdiff-lzma`` (bsdiff4's matches, coded
smaller: :mod:`formats.bsdiff_lzma`) when :func:`bsdiff_lzma_memory` (about 17x the old file,
measured) fits, and then ``bsdiff4`` (the same matches in stock ``BSDIFF40``, bz2 coded: several
times smaller when a few bytes changed in a large file, where LZMA pays for every 273 bytes of the
zero runs in bsdiff's diff block; the publisher codes it only then). The I/O layer runs every candidate
and keeps the smallest output; ties go to the earlier candidate (cheaper to apply).

When whole-file bsdiff does not fit the budget, ``bsdiff-segments`` takes its place
(:func:`bsdiff_windows`): the same coding, run per window, a segment of the new file against the
region of the base where most of the segment's samples are found, widened by half a segment on each
side (``formats.delta_segments.matched_regions``), with the windows as large as the budget allows
(bsdiff's suffix array is 17x the region). The encoder holds both whole files to look the samples up;
they come off the windows' budget. ruff 0.6.8 -> 0.6.9 at ``--memory-budget 512M``: 2,707,712 B (its
30 MB executable in 9 MiB windows) where the best without it was 3,271,563 B; unbounded 2,709,915 B.

Large files (base or target above ``SegmentParams.whole_max``, at most
:data:`formats.delta_segments.WHOLE_PATCH_MAX`) are never patched whole, whatever the budget: the
client would need both files in memory. They get ``zstd-segments`` (bounded memory on both sides,
:func:`segments_memory`) when it fits the budget, else plain ``zstd``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pinnacle_updates.formats.bsdiff_lzma import lzma_memory
from pinnacle_updates.formats.delta_kinds import OpKind
from pinnacle_updates.formats.delta_segments import DEFAULT_SEGMENTS, SEGMENT_BASE_MAX, SEGMENT_MAX, SegmentParams
from pinnacle_updates.formats.index import EntryType, Manifest, ManifestEntry

MIB = 1 << 20
BSDIFF4_PER_OLD_BYTE = 17
"""bsdiff4 encoding peak RSS is 17 x old + 1 x new bytes (suffix array of the old file), fitted to
0.5% on real releases (docs/field notes); both inputs are included."""
BSDIFF4_SLACK = 32 * MIB
ZSTD_PATCH_PER_BYTE = 2.5
"""zstd patch-from at level 19 with long-distance matching: measured 2.2 x (old + new) + 80 MiB
including both inputs held in memory (4, 30 and 100 MB pairs); rounded up."""
ZSTD_PATCH_FIXED = 96 * MIB
ZSTD_MEMORY = 128 * MIB
"""Plain zstd at level 19 streamed in 1 MiB pieces: window and match tables, about 100 MiB
whatever the file size (measured); rounded up."""
ZSTD_PREFIX_MIN = 8
"""zstd (pyzstd) refuses a raw prefix shorter than 8 bytes; such a base is not worth patching anyway."""


SIDE_BY_SIDE = frozenset({OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA})
"""The two slow candidates of a file, which a publisher may run side by side (the zstd patch on a
second thread): both read the two whole files from memory and release the GIL."""
WHOLE_INPUTS = SIDE_BY_SIDE | {OpKind.BSDIFF_SEGMENTS}
"""Candidates that read both whole files (at most ``WHOLE_PATCH_MAX`` each): ``bsdiff-segments`` looks each
window's content up in the base (``formats.delta_segments.matched_regions``)."""


class PlanError(ValueError):
    """No encoder fits the memory budget."""


@dataclass(frozen=True)
class FilePlan:
    """What to do for one target file: ``copy`` from ``base``, or run ``candidates`` (smallest wins).

    ``base`` is ``None`` for a new file; ``match`` says why the base was chosen ("sha256", "path",
    "normalised-path", "similar-size" or "new"); ``skipped`` names encoders the budget ruled out, with the need;
    ``windows``: the segments of a ``bsdiff-segments`` candidate (:func:`bsdiff_windows`).
    """

    entry: ManifestEntry
    base: ManifestEntry | None
    match: str
    candidates: tuple[OpKind, ...]
    skipped: tuple[str, ...] = ()
    windows: SegmentParams | None = None

    @property
    def is_copy(self) -> bool:
        return self.candidates == (OpKind.COPY,)

    @property
    def memory(self) -> int:
        """Estimated peak bytes of the most demanding candidate."""
        return max((self.need(kind) for kind in self.candidates), default=0)

    def need(self, kind: OpKind) -> int:
        """Estimated peak bytes of the candidate ``kind`` here: ``bsdiff-segments`` at this plan's windows,
        plus both whole files, which it holds (:data:`WHOLE_INPUTS`), and :data:`WINDOW_HEADROOM`."""
        old, new = (self.base.size if self.base else 0), self.entry.size
        if kind is not OpKind.BSDIFF_SEGMENTS:
            return encoder_memory(kind, old, new)
        return old + new + WINDOW_HEADROOM + bsdiff_segments_memory(old, new, self.windows or DEFAULT_SEGMENTS)

    @property
    def memory_side_by_side(self) -> int:
        """Estimated peak bytes when the zstd patch runs beside the other candidates, which run in turn
        (each estimate counts both inputs, which the encoders share: an overestimate)."""
        old, new = (self.base.size if self.base else 0), self.entry.size
        others = (self.need(kind) for kind in self.candidates if kind is not OpKind.ZSTD_PATCH)
        return encoder_memory(OpKind.ZSTD_PATCH, old, new) + max(others, default=0)


@dataclass(frozen=True)
class DeltaPlan:
    """One :class:`FilePlan` per file entry of the target manifest, in manifest order."""

    files: tuple[FilePlan, ...]

    @property
    def memory(self) -> int:
        return max((f.memory for f in self.files), default=0)


def bsdiff4_memory(old: int, new: int) -> int:
    return BSDIFF4_PER_OLD_BYTE * old + new + BSDIFF4_SLACK


def bsdiff_lzma_memory(old: int, new: int) -> int:
    """bsdiff4's peak, or the LZMA coding of its blocks after it (both inputs, the blocks and
    LZMA's match finder), whichever is larger."""
    return max(bsdiff4_memory(old, new), old + 3 * new + lzma_memory(new) + BSDIFF4_SLACK)


def zstd_patch_memory(old: int, new: int) -> int:
    return int(ZSTD_PATCH_PER_BYTE * (old + new)) + ZSTD_PATCH_FIXED


def bsdiff_segments_memory(old: int, new: int, windows: SegmentParams = DEFAULT_SEGMENTS) -> int:
    """``bsdiff-segments``: bsdiff-lzma of one segment against its base region at a time (``windows``),
    whatever the file sizes."""
    return bsdiff_lzma_memory(min(old, windows.size + 2 * windows.margin), min(new, windows.size))


WINDOW_MIN = 1 * MIB
"""The smallest ``bsdiff-segments`` segment the planner uses (or the configured segment size, if
smaller): at 1 MiB the encoder needs about 70 MiB, less than plain zstd's level 19."""
WINDOW_HEADROOM = 64 * MIB
"""Kept free below the budget when sizing ``bsdiff-segments`` windows, which fill what is left by design: the
plan is made from the resident size before the first file, and the allocator keeps pages earlier files'
encoders freed (numpy 2.0.2 -> 2.1.0 at 512M reached OpenBLAS 41 MiB above its start: a 512.7 MiB peak without)."""


def bsdiff_windows(budget: int, segments: SegmentParams = DEFAULT_SEGMENTS) -> SegmentParams | None:
    """The largest ``bsdiff-segments`` windows whose encoder fits ``budget``: segments of at most
    ``segments.size`` bytes (in whole MiB, or ``segments.size`` itself), each against a base region widened
    by half a segment on each side (at most ``segments.margin``); ``None`` when not even
    :data:`WINDOW_MIN` fits."""
    for size in (segments.size, *range((segments.size - 1) // MIB * MIB, WINDOW_MIN - 1, -MIB)):
        windows = SegmentParams(segments.whole_max, size, min(segments.margin, size // 2))
        if bsdiff_segments_memory(size + 2 * windows.margin, size, windows) <= budget:
            return windows
    return None


def segments_memory(old: int, new: int) -> int:
    """``zstd-segments``: one patch-from of a base region and a segment at a time (both at most the
    format's limits, whatever the file sizes); level 12 needs less than this level-19 estimate."""
    return zstd_patch_memory(min(old, SEGMENT_BASE_MAX), min(new, SEGMENT_MAX))


ENCODER_MEMORY: Mapping[OpKind, Callable[[int, int], int]] = {
    OpKind.COPY: lambda old, new: 0,  # no encoder: the plan found the same sha256
    OpKind.BSDIFF4: bsdiff4_memory,
    OpKind.BSDIFF_LZMA: bsdiff_lzma_memory,
    OpKind.BSDIFF_SHARED: bsdiff_lzma_memory,  # the bsdiff-lzma candidate's blocks (its streams: the container's)
    OpKind.ZSTD_PATCH: zstd_patch_memory,
    OpKind.ZSTD: lambda old, new: ZSTD_MEMORY,
    OpKind.ZSTD_SEGMENTS: segments_memory,
    OpKind.BSDIFF_SEGMENTS: bsdiff_segments_memory,  # at the largest windows; a plan's are in FilePlan.need
}
"""Each op kind's encoder memory estimate (inputs and output included), from the base and target
file sizes: what the planner budgets with, and the ``memory`` of the publisher's registry
(``repo_tools.delta.PUBLISHER_KINDS``)."""


def encoder_memory(kind: OpKind, old: int, new: int) -> int:
    """Estimated peak resident bytes an encoder adds (inputs and output included)."""
    return ENCODER_MEMORY[kind](old, new)


_HASH_RUN = re.compile(r"(?<=[-_.])(?=[a-f]*[0-9])[0-9a-f]{6,}(?![0-9A-Za-z])")
"""A content-hash-like run, as tools append them to names: after ``-``, ``_`` or ``.``, 6 or more
lowercase hex characters with at least one digit, up to the end of the word (``-99b71e71`` in
``libscipy_openblas64_-99b71e71.so``, ``.3f2a9c1b`` in ``main.3f2a9c1b.js``; not ``x86_64``,
``cpython-311``, ``sha256``, ``_decade`` or a word starting a name, like ``facade12.py``)."""
_VERSION_RUN = re.compile(r"\d+(?:\.\d+)*")
SIMILAR_MIN = 64 << 10
"""Rule 4 (same directory and extension, similar size) applies to files of at least this size: below
it a patch against a guessed base saves too little to be worth the encoders' time."""
SIMILAR_RATIO = 2
"""Rule 4 pairs files only when the larger is at most this many times the smaller."""


def normalise_path(path: str) -> str:
    """``path`` with every content-hash-like run (:data:`_HASH_RUN`), then every run of digits (and
    dots between digits), replaced by ``#``."""
    return _VERSION_RUN.sub("#", _HASH_RUN.sub("#", path))


def extension(path: str) -> str:
    """The normalised extension: the file name from its first dot on (a leading dot excluded), or
    "" (``.so.5.0.0`` and ``.so.5.1`` are both ``.so.#``)."""
    name = path.rpartition("/")[2]
    dot = name.find(".", 1)
    return normalise_path(name[dot:]) if dot > 0 else ""


def plan_delta(
    base: Manifest, target: Manifest, memory_budget: int, segments: SegmentParams = DEFAULT_SEGMENTS
) -> DeltaPlan:
    """Plan every file of ``target`` against ``base`` (see the module docstring for the rules);
    ``segments`` says which files are large (segmented rather than patched whole).

    Raises :class:`PlanError` when ``memory_budget`` is below what plain zstd needs.
    """
    if memory_budget < ZSTD_MEMORY:
        raise PlanError(
            f"a memory budget of {memory_budget // MIB} MiB is below the {ZSTD_MEMORY // MIB} MiB zstd needs"
        )
    base_files = [e for e in base.entries if e.type is EntryType.FILE]
    files = [e for e in target.entries if e.type is EntryType.FILE]
    matches = _match_by_name(base_files, files)
    used = {chosen.path for chosen, _ in matches if chosen is not None}
    spare = [e for e in base_files if e.path not in used and e.size >= SIMILAR_MIN]
    plans = []
    for entry, (chosen, match) in zip(files, matches, strict=True):
        if chosen is None and entry.size >= SIMILAR_MIN:
            chosen = _similar(entry, spare)
            if chosen is not None:
                spare.remove(chosen)
                match = "similar-size"
        if chosen is None:
            plans.append(FilePlan(entry, None, "new", (OpKind.ZSTD,)))
        elif match == "sha256":
            plans.append(FilePlan(entry, chosen, match, (OpKind.COPY,)))
        else:
            plans.append(_encoders(entry, chosen, match, memory_budget, segments))
    return DeltaPlan(tuple(plans))


def _match_by_name(
    base_files: Sequence[ManifestEntry], files: Sequence[ManifestEntry]
) -> list[tuple[ManifestEntry | None, str]]:
    """Rules 1-3 for each of ``files``: the base file and the rule's name, or ``(None, "new")``."""
    by_path = {e.path: e for e in base_files}
    by_sha: dict[str, list[ManifestEntry]] = {}
    by_shape: dict[str, list[ManifestEntry]] = {}
    for e in base_files:
        by_sha.setdefault(e.sha256, []).append(e)
        by_shape.setdefault(normalise_path(e.path), []).append(e)
    out: list[tuple[ManifestEntry | None, str]] = []
    for entry in files:
        shape = normalise_path(entry.path)
        same = by_sha.get(entry.sha256)
        if same:
            out.append((_preferred(same, entry.path, shape), "sha256"))
        elif entry.path in by_path:
            out.append((by_path[entry.path], "path"))
        elif shape in by_shape:
            out.append((min(by_shape[shape], key=lambda e: abs(e.size - entry.size)), "normalised-path"))
        else:
            out.append((None, "new"))
    return out


def _similar(entry: ManifestEntry, spare: Sequence[ManifestEntry]) -> ManifestEntry | None:
    """Rule 4: the spare base file in ``entry``'s directory, with its extension and a size within
    :data:`SIMILAR_RATIO`, closest in size (then first); ``None`` if there is none."""
    folder, ext = entry.path.rpartition("/")[0], extension(entry.path)
    fits = [
        e for e in spare
        if e.path.rpartition("/")[0] == folder and extension(e.path) == ext
        and max(e.size, entry.size) <= SIMILAR_RATIO * min(e.size, entry.size)
    ]
    return min(fits, key=lambda e: abs(e.size - entry.size), default=None)


def _preferred(same: Sequence[ManifestEntry], path: str, shape: str) -> ManifestEntry:
    """Among base files with the target's content: the same path, the same versioned path, the first."""
    for e in same:
        if e.path == path:
            return e
    return next((e for e in same if normalise_path(e.path) == shape), same[0])


ZSTD_PATCH_TOTAL_MAX = 64 * MIB
"""Whole-file ``zstd-patch`` only while base + new fit this (window log 26 at most). Measured on
incompressible files with a few 4 KiB edits: at 31 + 31 MiB the level-19 frame is 29 KB, at 33 + 33 MiB
(window log 27) 1.1 MB and at 48 + 48 MiB 16.8 MB, about the whole file: level 19's match tables lose
the prefix once the window outgrows them. ``zstd-segments`` (level 12, 64 MiB regions) gives 29 KB and
31 KB there, in a fifth of the time."""
PLAIN_ZSTD_MAX = 1 * MIB
"""Changed files up to this size also try plain zstd (cheap there, and sometimes smaller)."""


def _encoders(
    entry: ManifestEntry, base: ManifestEntry, match: str, budget: int, segments: SegmentParams = DEFAULT_SEGMENTS
) -> FilePlan:
    """Candidates for patching ``entry`` against ``base`` within ``budget``, cheapest to apply first.

    Plain zstd is tried only for small files, when no patch encoder fits, or when ``base`` is a guess
    (``similar-size``): zstd with the old file as prefix is almost never beaten by it, and level 19 on
    a large file costs most of a publish's time. Large files: :func:`_segmented`. Above
    :data:`ZSTD_PATCH_TOTAL_MAX` zstd-segments takes zstd-patch's place.
    """
    if max(entry.size, base.size) > segments.whole_max:
        return _segmented(entry, base, match, budget, segments)
    candidates = []
    skipped = []
    windows = None
    if base.size >= ZSTD_PREFIX_MIN:
        zstd_kind = OpKind.ZSTD_PATCH if base.size + entry.size <= ZSTD_PATCH_TOTAL_MAX else OpKind.ZSTD_SEGMENTS
        for kind in (zstd_kind, OpKind.BSDIFF_LZMA):
            need = encoder_memory(kind, base.size, entry.size)
            if need <= budget:
                candidates.append(kind)
            else:
                skipped.append(f"{kind.value} needs {need // MIB} MiB > budget {budget // MIB} MiB")
        if OpKind.BSDIFF_LZMA in candidates:
            candidates.append(OpKind.BSDIFF4)  # bsdiff-lzma's matches coded with bz2: it must run after it
        else:
            # both files held (WHOLE_INPUTS), and headroom for what earlier files left resident
            windows = bsdiff_windows(budget - base.size - entry.size - WINDOW_HEADROOM, segments)
            if windows is not None:
                candidates.append(OpKind.BSDIFF_SEGMENTS)
    # bsdiff is never alone: a patch (or a window's) over the format's control bound is not written (nor is
    # bsdiff4 always: only when its blocks are mostly zeros).
    alone = not {OpKind.ZSTD_PATCH, OpKind.ZSTD_SEGMENTS} & set(candidates)
    if alone or entry.size <= PLAIN_ZSTD_MAX or match == "similar-size":
        candidates.insert(0, OpKind.ZSTD)
    return FilePlan(entry, base, match, tuple(candidates), tuple(skipped), windows)


def _segmented(entry: ManifestEntry, base: ManifestEntry, match: str, budget: int, segments: SegmentParams) -> FilePlan:
    """A file over ``segments.whole_max`` (either side): ``zstd-segments`` if it fits ``budget``
    (plain zstd too for a ``similar-size`` guess), else plain zstd; never a whole-file patch."""
    skipped = [f"whole-file patches: a file over {segments.whole_max // MIB} MiB is segmented"]
    need = segments_memory(base.size, entry.size)
    if base.size < ZSTD_PREFIX_MIN or need > budget:
        if base.size >= ZSTD_PREFIX_MIN:
            skipped.append(f"zstd-segments needs {need // MIB} MiB > budget {budget // MIB} MiB")
        return FilePlan(entry, base, match, (OpKind.ZSTD,), tuple(skipped))
    candidates = (OpKind.ZSTD, OpKind.ZSTD_SEGMENTS) if match == "similar-size" else (OpKind.ZSTD_SEGMENTS,)
    return FilePlan(entry, base, match, candidates, tuple(skipped))


__all__ = [
    "ENCODER_MEMORY", "SIDE_BY_SIDE", "SIMILAR_MIN", "SIMILAR_RATIO", "WHOLE_INPUTS", "WINDOW_HEADROOM",
    "WINDOW_MIN", "DeltaPlan", "FilePlan", "PlanError", "bsdiff4_memory", "bsdiff_lzma_memory",
    "bsdiff_segments_memory", "bsdiff_windows", "encoder_memory", "extension", "normalise_path", "plan_delta",
    "segments_memory", "zstd_patch_memory",
]
