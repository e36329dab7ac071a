"""Pure planning of a delta: per target file, which base file to use and which encoders may run.

Matching (first rule that applies):

1. ``copy``: some base file has the same sha256 (renames included, such as ``pkg-1.2.dist-info/``
   becoming ``pkg-1.3.dist-info/``); the same path is preferred, then the same versioned path,
   then the first such base file in manifest order.
2. a patch against the base file at the same path;
3. else against a base file whose path is the same once version-like runs (digits and dots
   between digits) are normalised in every segment (``pkg-1.2.dist-info/RECORD`` ~
   ``pkg-1.3.dist-info/RECORD``, ``lib/libfoo.so.1.2`` ~ ``lib/libfoo.so.1.3``); among several,
   the closest in size, then the first in manifest order;
4. else ``zstd`` (a new file).

Encoders, by a memory budget in bytes (what the process may still add to its resident size):
``zstd`` is always a candidate (a patch does not always beat plain compression, e.g. on small or
rewritten files); ``zstd-patch`` when :func:`zstd_patch_memory` fits; ``bsdiff4`` when
:func:`bsdiff4_memory` (about 17x the old file, measured) fits. The I/O layer runs every candidate
and keeps the smallest output; ties go to the earlier candidate (cheaper to apply).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from client.delta_format import OpKind
from client.index import EntryType, Manifest, ManifestEntry

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


class PlanError(ValueError):
    """No encoder fits the memory budget."""


@dataclass(frozen=True)
class FilePlan:
    """What to do for one target file: ``copy`` from ``base``, or run ``candidates`` (smallest wins).

    ``base`` is ``None`` for a new file; ``match`` says why the base was chosen ("sha256", "path",
    "versioned-path" or "new"); ``skipped`` names encoders the budget ruled out, with the need.
    """

    entry: ManifestEntry
    base: ManifestEntry | None
    match: str
    candidates: tuple[OpKind, ...]
    skipped: tuple[str, ...] = ()

    @property
    def is_copy(self) -> bool:
        return self.candidates == (OpKind.COPY,)

    @property
    def memory(self) -> int:
        """Estimated peak bytes of the most demanding candidate."""
        old = self.base.size if self.base else 0
        return max((encoder_memory(kind, old, self.entry.size) for kind in self.candidates), default=0)


@dataclass(frozen=True)
class DeltaPlan:
    """One :class:`FilePlan` per file entry of the target manifest, in manifest order."""

    files: tuple[FilePlan, ...]

    @property
    def memory(self) -> int:
        return max((f.memory for f in self.files), default=0)


def bsdiff4_memory(old: int, new: int) -> int:
    return BSDIFF4_PER_OLD_BYTE * old + new + BSDIFF4_SLACK


def zstd_patch_memory(old: int, new: int) -> int:
    return int(ZSTD_PATCH_PER_BYTE * (old + new)) + ZSTD_PATCH_FIXED


def encoder_memory(kind: OpKind, old: int, new: int) -> int:
    """Estimated peak resident bytes an encoder adds (inputs and output included)."""
    if kind is OpKind.BSDIFF4:
        return bsdiff4_memory(old, new)
    if kind is OpKind.ZSTD_PATCH:
        return zstd_patch_memory(old, new)
    if kind is OpKind.ZSTD:
        return ZSTD_MEMORY
    return 0


_VERSION_RUN = re.compile(r"\d+(?:\.\d+)*")


def normalise_path(path: str) -> str:
    """``path`` with every run of digits (and dots between digits) replaced by ``#``, per segment."""
    return _VERSION_RUN.sub("#", path)


def plan_delta(base: Manifest, target: Manifest, memory_budget: int) -> DeltaPlan:
    """Plan every file of ``target`` against ``base`` (see the module docstring for the rules).

    Raises :class:`PlanError` when ``memory_budget`` is below what plain zstd needs.
    """
    if memory_budget < ZSTD_MEMORY:
        raise PlanError(
            f"a memory budget of {memory_budget // MIB} MiB is below the {ZSTD_MEMORY // MIB} MiB zstd needs"
        )
    base_files = [e for e in base.entries if e.type is EntryType.FILE]
    by_path = {e.path: e for e in base_files}
    by_sha: dict[str, list[ManifestEntry]] = {}
    by_shape: dict[str, list[ManifestEntry]] = {}
    for e in base_files:
        by_sha.setdefault(e.sha256, []).append(e)
        by_shape.setdefault(normalise_path(e.path), []).append(e)
    plans = []
    for entry in target.entries:
        if entry.type is not EntryType.FILE:
            continue
        shape = normalise_path(entry.path)
        same = by_sha.get(entry.sha256)
        if same:
            plans.append(FilePlan(entry, _preferred(same, entry.path, shape), "sha256", (OpKind.COPY,)))
            continue
        if entry.path in by_path:
            chosen, match = by_path[entry.path], "path"
        elif shape in by_shape:
            chosen, match = min(by_shape[shape], key=lambda e: abs(e.size - entry.size)), "versioned-path"
        else:
            plans.append(FilePlan(entry, None, "new", (OpKind.ZSTD,)))
            continue
        plans.append(_encoders(entry, chosen, match, memory_budget))
    return DeltaPlan(tuple(plans))


def _preferred(same: Sequence[ManifestEntry], path: str, shape: str) -> ManifestEntry:
    """Among base files with the target's content: the same path, the same versioned path, the first."""
    for e in same:
        if e.path == path:
            return e
    return next((e for e in same if normalise_path(e.path) == shape), same[0])


PLAIN_ZSTD_MAX = 1 * MIB
"""Changed files up to this size also try plain zstd (cheap there, and sometimes smaller)."""


def _encoders(entry: ManifestEntry, base: ManifestEntry, match: str, budget: int) -> FilePlan:
    """Candidates for patching ``entry`` against ``base`` within ``budget``, cheapest to apply first.

    Plain zstd is tried only for small files or when no patch encoder fits: zstd with the old file as
    prefix is almost never beaten by it, and level 19 on a large file costs most of a publish's time.
    """
    candidates = []
    skipped = []
    if base.size >= ZSTD_PREFIX_MIN:
        for kind in (OpKind.ZSTD_PATCH, OpKind.BSDIFF4):
            need = encoder_memory(kind, base.size, entry.size)
            if need <= budget:
                candidates.append(kind)
            else:
                skipped.append(f"{kind.value} needs {need // MIB} MiB > budget {budget // MIB} MiB")
    if not candidates or entry.size <= PLAIN_ZSTD_MAX:
        candidates.insert(0, OpKind.ZSTD)
    return FilePlan(entry, base, match, tuple(candidates), tuple(skipped))


__all__ = [
    "DeltaPlan", "FilePlan", "PlanError", "bsdiff4_memory", "encoder_memory", "normalise_path", "plan_delta",
    "zstd_patch_memory",
]
