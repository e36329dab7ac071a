"""Building deltas at publish time: the I/O half of ``core.delta_plan``.

For each earlier release chosen as a base, the base's full artifact is extracted from the
repository into staging with :func:`formats.tree.extract_release` (which verifies every file and
the whole content digest against the signed manifest), then one delta container
(``formats.delta_format``) is written file by file:

* the plan (pure) picks a base file and the encoders the memory budget allows;
* each candidate encoder writes its output into a scratch file, the smallest is appended to the
  payload spool, the others are dropped: at most one file's inputs and outputs are in memory, and
  only for files of at most 64 MiB: larger ones are encoded segment by segment
  (:func:`write_segments`, ``zstd-segments``), one 64 MiB base region and 32 MiB segment at a time;
* the container (header, then the payload copied in ``CHUNK_SIZE`` pieces) is written last, since
  the header holds every offset.

Every per-file delta also carries the target manifest as a zstd patch against the base manifest
(:func:`manifest_patch`), so the client does not download it separately. When both canonical tars
together fit :data:`formats.delta_format.ARCHIVE_MAX` and the memory budget, a whole-archive
candidate (one zstd patch-from frame of the target tar with the base tar as prefix,
:func:`archive_patch`) is built too, and the smaller container of the two is kept: it wins where a
change repeats across files (translations, bundles sharing code) or the files are tiny. It carries
no manifest patch: the client reads the manifest from the target tar it rebuilds. Where it wins, a
solid candidate is built as well (:func:`solid_patch`: the changed files as one LZMA stream with
every base file as its dictionary, and a skeleton manifest), and kept when smaller still: LZMA codes
such text about 6% smaller than zstd's highest level.

Candidates that need nothing from each other (the whole-archive frame and the per-file container; a
file's zstd patch and its bsdiff) run on two threads when ``jobs`` allows and the memory budget covers
their estimates together: zstd, bsdiff4 and LZMA release the GIL, so two cores halve the wait. Only the
timing changes, never the bytes.

The slow zstd candidates of large inputs (the whole-archive frame of tars of :data:`ARCHIVE_TRIAL_MIN`, the
zstd patch of a file of :data:`PATCH_TRIAL_MIN`) are built only where a trial frame at :data:`TRIAL_LEVEL`,
about 20 times cheaper, says they may win (:data:`TRIAL_BOUND`); the trial runs beside the per-file work
instead. Where the frame may win, solid is tried first and the frame only where solid leaves it a chance
(:data:`SOLID_TRIAL_BOUND`). ruff 0.6.8 -> 0.6.9 and numpy 2.0.2 -> 2.1.0 build neither their whole-archive
frame nor the executables' zstd patches any more, with the same bytes (``publish --profile`` shows the parts).

Each op kind's encoder and each container kind's builder, with its memory estimate, is one entry of
:data:`PUBLISHER_KINDS` at the end of this module (``formats.delta_kinds`` says where else a new kind goes).

Files of the new release are read from the source tree below a directory descriptor with
``open_beneath`` and must still have the sha256 ``scan_tree`` recorded. Everything is
deterministic: the same base and target give the same delta bytes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import lzma
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import bsdiff4.core
import bsdiff4.format
import pyzstd
import zstandard

from pinnacle_updates.formats import bsdiff_lzma, lzma_dict
from pinnacle_updates.formats.archive import (
    CHUNK_SIZE,
    ArchiveError,
    TreeChanged,
    copy_hashed,
    open_beneath,
    show_path,
    write_canonical_tar,
)
from pinnacle_updates.formats.delta_format import (
    ARCHIVE_MAX,
    SHARED_STREAMS,
    SOLID_SHA256,
    DeltaFormatError,
    DeltaHeader,
    DeltaOp,
    ManifestPatch,
    delta_path,
    patch_window_log,
    solid_layout,
    write_delta,
)
from pinnacle_updates.formats.delta_kinds import ContainerKind, DeltaKind, OpKind
from pinnacle_updates.formats.delta_segments import (
    DEFAULT_SEGMENTS,
    Segment,
    SegmentParams,
    bsdiff_data_max,
    matched_regions,
    read_region,
    regions,
)
from pinnacle_updates.formats.index import DeltaRef, Digest, FormatError, Manifest, ManifestEntry, Release, TargetRef
from pinnacle_updates.formats.progress import NULL, Progress
from pinnacle_updates.formats.tree import extract_release

from .artifact import DEFAULT_LEVEL
from .audit import MAX_MANIFEST_BYTES
from .core.delta_plan import (
    ENCODER_MEMORY,
    SIDE_BY_SIDE,
    WHOLE_INPUTS,
    FilePlan,
    PlanError,
    bsdiff4_memory,
    plan_delta,
    zstd_patch_memory,
)
from .errors import PublishRefused, RepositoryStateError, UnsafeInputError
from .profiling import part
from .store import Repository
from .tar_bsdiff import composed_memory, composed_patch, remember

DELTA_MAX_RATIO = 0.8
"""A delta is published only if it is at most this fraction of the full artifact. Above it the
client saves under 20% of the download yet pays for reading base files and applying patches, and
has one more way to fail; it is also the point where tufup gives up on patches."""
PATCH_LEVEL = 19
"""zstd level of ``zstd`` and ``zstd-patch`` ops: bytes on the wire are what every device pays."""
DEFAULT_MEMORY_BUDGET = 2 << 30
DEFAULT_JOBS = 2
"""Encoder threads: with two, the whole-archive candidate and each file's zstd patch are built
beside bsdiff (all three release the GIL) when the memory budget covers them at once; ruff 0.6.8 ->
0.6.9 publishes in 36 s instead of 73 s on two cores. One: everything in turn. Same bytes either way."""
SEGMENT_LEVEL = 12
"""zstd level of ``zstd-segments`` frames. Measured on 32 MiB segments against 64 MiB regions with
long-distance matching: levels 16-19 miss most matches a region offers unless their hash and chain
tables grow far past the memory bound (11.5 MB instead of 8 KB for a segment with one 4 KiB
insertion); level 12 is within 10% of the best level-19 size found, at about 1 s per segment."""
SEGMENTS = DEFAULT_SEGMENTS
"""Which files are segmented and how (``formats.delta_segments``); tests lower it to small sizes."""


@dataclass
class DeltaResult:
    """One base release: the delta built against it, its size and whether it is published."""

    base: Release
    path: Path
    length: int
    sha256: str
    full_length: int
    ops: dict[str, int] = field(default_factory=dict)
    op_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss: int = 0

    @property
    def published(self) -> bool:
        return self.length <= DELTA_MAX_RATIO * self.full_length

    def ref(self, channel: str, platform: str, version: str) -> DeltaRef:
        target = TargetRef(delta_path(channel, platform, version, self.base.version), self.length, self.sha256)
        return DeltaRef(base=self.base.version, base_content=self.base.content.sha256, target=target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.base.version, "length": self.length, "full_length": self.full_length,
            "ratio": round(self.length / self.full_length, 4) if self.full_length else None,
            "published": self.published, "ops": self.ops, "op_bytes": self.op_bytes,
            "seconds": round(self.seconds, 3), "peak_rss": self.peak_rss,
        }


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``64K``, ``1.5G`` or a plain number of bytes (binary units)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(value[-1:], 1)
    number = value[:-1] if scale > 1 else value
    try:
        size = int(float(number) * scale)
    except (ValueError, OverflowError):
        raise PublishRefused(f"not a size: {text!r} (e.g. 2G, 512M)") from None
    if size <= 0:
        raise PublishRefused(f"size must be positive: {text!r}")
    return size


def current_rss() -> int:
    """This process's resident set size now (Linux ``/proc``), else its peak so far."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- several bases -------------------------------------------------------------------------------

def build_deltas(
    repo: Repository,
    bases: Sequence[Release],
    source: Path,
    manifest: Manifest,
    full_length: int,
    staging: Path,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    jobs: int = DEFAULT_JOBS,
    progress: Progress = NULL,
) -> list[DeltaResult]:
    """Build one delta per release in ``bases`` (stored in ``repo``) to the release ``manifest``
    whose files are in ``source``. Each base is extracted into ``staging`` and removed after use,
    so disk use is one base tree at a time. Every result is returned; ``published`` says which
    pass the :data:`DELTA_MAX_RATIO` test. ``progress`` gets one phase ``delta`` per base (the target's
    file bytes, counted as each file is encoded)."""
    results = []
    total = sum(e.size for e in manifest.entries)
    level = repo.config().compression_level  # the level the new manifest target was compressed at
    for base in bases:
        started = time.monotonic()
        progress.start("delta", total, "bytes", f"from {base.version}")
        base_manifest = load_manifest(repo, base)
        base_dir = staging / f"base-{base.version}"
        base_dir.mkdir()
        try:
            with part("extract"):
                extract_release(repo.target_location(base.full.path, base.full.sha256), base_dir, base_manifest)
        except ArchiveError as exc:
            raise RepositoryStateError(f"cannot use release {base.version} as a delta base: {exc}") from exc
        out = staging / f"from-{base.version}.pdelta"
        header, digest = build_delta(base_dir, base_manifest, source, manifest, out, staging, memory_budget,
                                     manifest_level=level, whole_archive=True, jobs=jobs, progress=progress)
        shutil.rmtree(base_dir)
        result = DeltaResult(base, out, digest.length, digest.sha256, full_length,
                             seconds=time.monotonic() - started, peak_rss=peak_rss())
        for op in header.ops:
            result.ops[op.op.value] = result.ops.get(op.op.value, 0) + 1
            result.op_bytes[op.op.value] = result.op_bytes.get(op.op.value, 0) + op.length
        _count_whole_parts(result, header)
        results.append(result)
    progress.end()
    return results


def load_manifest(repo: Repository, release: Release) -> Manifest:
    """The stored manifest of ``release``, which must agree with the index's content digest."""
    location = repo.target_location(release.manifest.path, release.manifest.sha256)
    try:
        with open(location, "rb") as f:
            manifest = Manifest.from_bytes(zstandard.ZstdDecompressor().stream_reader(f).read(MAX_MANIFEST_BYTES + 1))
    except (OSError, zstandard.ZstdError, FormatError) as exc:
        raise RepositoryStateError(f"manifest of {release.version} unreadable ({exc})") from exc
    if manifest.content != release.content:
        raise RepositoryStateError(f"manifest of {release.version} disagrees with the channel index")
    return manifest


# -- one pair ------------------------------------------------------------------------------------

def build_delta(
    base_root: Path,
    base: Manifest,
    source: Path,
    target: Manifest,
    out: Path,
    work: Path,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    *,
    manifest_level: int = DEFAULT_LEVEL,
    whole_archive: bool = False,
    jobs: int = DEFAULT_JOBS,
    progress: Progress = NULL,
) -> tuple[DeltaHeader, Digest]:
    """Write the delta rebuilding ``target`` (files below ``source``) from ``base`` (files below
    ``base_root``, already verified) into ``out``; scratch files go to ``work``.

    ``memory_budget`` bounds the whole process: the plan gets what is left above the current
    resident size. ``manifest_level`` is the zstd level the target's signed manifest was compressed
    at (the client compresses the manifest it rebuilds again and compares). With ``whole_archive``
    (as :func:`build_deltas` publishes), the per-file container is compared with the whole-archive
    one (when :func:`archive_patch` builds it) and the smaller is written. With ``jobs`` over one,
    independent candidates run side by side where the budget covers them at once
    (:data:`DEFAULT_JOBS`). Returns the header and the digest of the written file. Each file's
    bytes are ``progress.advance``d once it is encoded (the open phase is the caller's).
    """
    available = memory_budget - current_rss()
    try:
        plan = plan_delta(base, target, available, SEGMENTS)
    except PlanError as exc:
        raise PublishRefused(f"--memory-budget too small: {exc}") from None
    spool = work / f"{out.name}.payload"
    mpatch = manifest_patch(base, target)
    manifest = ManifestPatch(len(mpatch), manifest_level)
    ops: list[DeltaOp] = []
    offset = len(mpatch)  # the op data follows the manifest patch
    with (ThreadPoolExecutor(max_workers=2, thread_name_prefix="delta") as side,
          _Tree(base_root) as old_tree, _Tree(source) as new_tree, open(spool, "w+b") as payload,
          _SharedSpool(work) as shared):
        # The whole-archive candidate needs nothing from the per-file one: when the budget covers both
        # at once it is built on another core meanwhile (zstd releases the GIL). Only the wait changes,
        # never the bytes: the level is the one archive_patch picks anyway when the budget allows it.
        # Large tars: a cheap trial frame runs there instead, and the frame itself is built only where the
        # trial says it may win (TRIAL_BOUND).
        archive_job: Future[bytes | None] | None = None
        trial_job: Future[int | None] | None = None
        reserve = 0
        trial = whole_archive and base.content.length + target.content.length >= ARCHIVE_TRIAL_MIN
        need = archive_memory(base, target, PATCH_LEVEL if trial else ARCHIVE_LEVEL)
        if jobs > 1 and whole_archive and archive_possible(base, target) and plan.memory + need <= available:
            if trial:
                trial_job = side.submit(archive_trial, base_root, base, source, target, need)
            else:
                archive_job = side.submit(archive_patch, base_root, base, source, target, need)
            reserve = need
        for item in plan.files:
            if item.is_copy:
                assert item.base is not None
                ops.append(DeltaOp(item.entry.path, OpKind.COPY, item.base.path))
                progress.advance(item.entry.size)
                continue
            beside = side if jobs > 1 and item.memory_side_by_side + reserve <= available else None
            kind, length = _encode_best(item, old_tree, new_tree, work, payload, shared, beside)
            ops.append(DeltaOp(item.entry.path, kind, item.base.path if kind.has_base and item.base else None,
                               offset, length))
            offset += length
            progress.advance(item.entry.size)
        header = DeltaHeader(base.version, target.version, base.content, target.content, tuple(ops),
                             manifest=manifest)
        header.check_against(target, base)
        whole: tuple[DeltaHeader, Iterable[bytes]] | None = None
        # what the loop left resident counts too (the allocator keeps freed pages); so does the archive's
        # reserve, in full while it may still run
        with part(ContainerKind.SHARED.value):
            with_shared = shared.variant(header, min(available - reserve, memory_budget - current_rss()))
        if with_shared is not None:
            header, streams = with_shared
            whole = header, _shared_payload(mpatch, payload, header, shared, streams)
        if whole_archive:
            estimate = None
            if trial:
                estimate = (trial_job.result() if trial_job is not None else
                            archive_trial(base_root, base, source, target, memory_budget - current_rss()))
            if estimate is None:  # small tars: the frame, and where it beats per-file, solid
                frame = (archive_job.result() if archive_job is not None else
                         archive_patch(base_root, base, source, target, memory_budget - current_rss()))
                if (archive := _smaller_whole_archive(header, frame)) is not None:
                    # changes repeat across files: the solid kind may code them smaller still
                    whole = _smaller_solid(archive, base_root, base, source, target, memory_budget) or archive
            elif estimate * TRIAL_BOUND < _length(header):  # else neither whole kind can beat per-file
                whole = _whole_kinds(header, estimate, base_root, base, source, target, memory_budget) or whole
            whole = _smaller_archive_bsdiff4(whole[0] if whole else header, base_root, base, source, target,
                                             memory_budget) or whole
        payload.seek(0)
        with part("container"), open(out, "wb") as f:
            if whole is not None:
                header = whole[0]
                write_delta(f, header, whole[1])
            else:
                write_delta(f, header, itertools.chain([mpatch], chunks(payload)))
    spool.unlink()
    with open(out, "rb") as f:
        digest, _ = copy_hashed(f.read)
    return header, digest


@part("manifest-patch")
def manifest_patch(base: Manifest, target: Manifest) -> bytes:
    """The target manifest's canonical JSON as one zstd patch-from frame against the base
    manifest's (:func:`zstd_patch`: its size declared, which the client bounds before decoding)."""
    return zstd_patch(base.to_bytes(), target.to_bytes())


ARCHIVE_LEVEL = 22
"""zstd level of the whole-archive frame when the budget allows it (:data:`ARCHIVE_LEVEL_MEMORY`
more than level 19, whatever the input size, measured; the decoder's memory is the same): 6% fewer
bytes than level 19 on typescript 5.5.4 -> 5.6.2, in the same time."""
ARCHIVE_LEVEL_MEMORY = 640 << 20


def archive_memory(base: Manifest, target: Manifest, level: int = PATCH_LEVEL) -> int:
    """Peak bytes :func:`archive_patch` adds at ``level`` (19 or :data:`ARCHIVE_LEVEL`): zstd
    patch-from over both tars, plus the tars held (and the copy of the base tar zstd's prefix keeps)."""
    old, new = base.content.length, target.content.length
    return zstd_patch_memory(old, new) + 2 * old + new + (ARCHIVE_LEVEL_MEMORY if level > PATCH_LEVEL else 0)


def archive_possible(base: Manifest, target: Manifest) -> bool:
    """Whether both canonical tars together are within :data:`~formats.delta_format.ARCHIVE_MAX`, the
    client's bound for whole-archive and solid deltas."""
    return base.content.length + target.content.length <= ARCHIVE_MAX


@part(ContainerKind.WHOLE_ARCHIVE.value)
def archive_patch(
    base_root: Path, base: Manifest, source: Path, target: Manifest, memory_budget: int
) -> bytes | None:
    """The whole-archive candidate: one zstd patch-from frame (:func:`zstd_patch`, at
    :data:`ARCHIVE_LEVEL` when :func:`archive_memory` at that level fits ``memory_budget``, else at
    level 19) of the target's canonical tar with the base's canonical tar as prefix, both rebuilt
    from the trees (every file checked against its manifest). ``None`` when the two tars together
    exceed :data:`~formats.delta_format.ARCHIVE_MAX` (the client's memory bound) or no level fits."""
    if not archive_possible(base, target):
        return None
    level = next((lv for lv in (ARCHIVE_LEVEL, PATCH_LEVEL) if archive_memory(base, target, lv) <= memory_budget), 0)
    if not level:
        return None
    old = _canonical_tar(base_root, base, RepositoryStateError, "the extracted base")
    new = _canonical_tar(source, target, UnsafeInputError, "the source")
    return zstd_patch(old, new, level)


TRIAL_LEVEL = 12
"""zstd level of the trial frames that decide whether a slow zstd candidate is built at all: about 20x faster
than level 19 on these inputs (typescript's tars: 0.3 s against 8.7 s; ruff's: 1.8 s against 51 s for level 22)."""
TRIAL_BOUND = 0.7
"""A zstd patch at level 19 or 22 is taken to be at least this fraction of the trial frame at :data:`TRIAL_LEVEL`
of the same inputs: measured 0.79 (typescript 5.5.4 -> 5.6.2, level 22) and 0.76 (ruff 0.6.8 -> 0.6.9, level 22)
for the whole archive, and 0.84 at level 19. Where the trial times this is not smaller than the best other
candidate, the slow one is not built; it could only have won below this bound."""
ARCHIVE_TRIAL_MIN = 8 << 20
"""Both tars together at least this many bytes: the whole-archive frame is built only where its trial says it may
win. Below it the frame costs little (and the smallest pairs are where it wins)."""


@part("archive-trial")
def archive_trial(base_root: Path, base: Manifest, source: Path, target: Manifest, memory_budget: int) -> int | None:
    """The length of the whole-archive frame at :data:`TRIAL_LEVEL` (:func:`archive_patch`'s inputs and
    window); ``None`` where :func:`archive_patch` would build nothing at level 19 either."""
    if not archive_possible(base, target) or archive_memory(base, target, PATCH_LEVEL) > memory_budget:
        return None
    old = _canonical_tar(base_root, base, RepositoryStateError, "the extracted base")
    new = _canonical_tar(source, target, UnsafeInputError, "the source")
    return len(zstd_patch(old, new, TRIAL_LEVEL))


@part("tar")
def _canonical_tar(root: Path, manifest: Manifest, error: type[Exception], what: str) -> bytes:
    """The canonical tar of the tree at ``root``, which must be exactly ``manifest``."""
    out = bytearray()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        digest = write_canonical_tar(fd, manifest.entries, out.extend)
    except TreeChanged as exc:
        raise error(f"{what} changed while building the delta: {exc}") from exc
    finally:
        os.close(fd)
    if digest != manifest.content:
        raise error(f"{what} ({root}) does not rebuild the canonical archive of {manifest.version}")
    return bytes(out)


@part(ContainerKind.SOLID.value)
def solid_patch(
    base_root: Path, base: Manifest, source: Path, target: Manifest, memory_budget: int
) -> tuple[bytes, bytes] | None:
    """The solid candidate (``formats.delta_format.solid_layout``): the skeleton manifest (the target's,
    with :data:`~formats.delta_format.SOLID_SHA256` for every file the stream rebuilds) as a zstd patch
    against the base manifest, and the raw LZMA2 stream of those files with the base files as preset
    dictionary (:func:`formats.lzma_dict.compress`). ``None`` when liblzma is not available here, the
    tars exceed :data:`~formats.delta_format.ARCHIVE_MAX` (the client's bound) or the encoder does not
    fit ``memory_budget``."""
    if not lzma_dict.available() or not archive_possible(base, target):
        return None
    if solid_memory(base, target) > memory_budget:
        return None
    layout = solid_layout(base, target.entries)
    with _Tree(base_root) as old_tree, _Tree(source) as new_tree:
        dictionary = b"".join([old_tree.read(e) for e in layout.dictionary])
        data = b"".join([new_tree.read(e) for e in layout.solid])
    rebuilt = {e.path for e in layout.solid}
    skeleton = Manifest(target.version, target.content, tuple(
        replace(e, sha256=SOLID_SHA256) if e.path in rebuilt else e for e in target.entries
    ))
    return zstd_patch(base.to_bytes(), skeleton.to_bytes()), lzma_dict.compress(data, dictionary)


def solid_memory(base: Manifest, target: Manifest) -> int:
    """Peak bytes :func:`solid_patch` adds (liblzma must be available): LZMA's encoder with the base
    files as dictionary (the coder, the dictionary, the data and the output), plus the dictionary once
    more: joining its files holds the parts and the whole for a moment."""
    layout = solid_layout(base, target.entries)
    return lzma_dict.encoder_memory(layout.dictionary_size, layout.size) + layout.dictionary_size


def _length(header: DeltaHeader) -> int:
    """Bytes of the container ``header`` describes: the header as written and its payload (what candidates compare)."""
    return len(header.encode()) + header.payload_length


def _smaller_solid(
    best: tuple[DeltaHeader, Iterable[bytes]], base_root: Path, base: Manifest, source: Path, target: Manifest,
    memory_budget: int,
) -> tuple[DeltaHeader, list[bytes]] | None:
    """The solid header and payload when that container is smaller than ``best`` (ties: ``best``)."""
    parts = solid_patch(base_root, base, source, target, memory_budget - current_rss())
    if parts is None:
        return None
    header = best[0]
    level = header.manifest.level if header.manifest is not None else DEFAULT_LEVEL
    solid = DeltaHeader(header.base_version, header.version, header.base_content, header.content, (),
                        manifest=ManifestPatch(len(parts[0]), level), solid=len(parts[1]))
    if _length(solid) >= _length(header):
        return None
    return solid, list(parts)


ARCHIVE_BSDIFF4_TRY_MAX = 64 << 10
"""The whole-archive bsdiff4 candidate is built only when the smallest container so far is at most this
many bytes: a small change, where bsdiff's diff block is almost all zeros, which bz2 codes in a few
bytes, and where a per-file header (one op per file) outweighs the data (typescript 5.6.2 -> 5.6.3:
551 B of patch against a 1,878 B per-file delta). On larger changes LZMA and zstd code the same matches
smaller, and building it (a suffix sort of small tars, :data:`ARCHIVE_BSDIFF4_SORT_MAX`; the tar's layout
and each changed file's bsdiff4 on larger ones) would be spent for nothing."""


ARCHIVE_BSDIFF4_SORT_MAX = 1 << 20
"""Tars up to this many bytes (base and target each) get the whole-tar suffix sort (under a second and 40 MiB
there), which also finds matches across files (the vector's trees: 289 B against 328 B composed; idna 3.9 ->
3.10: 2,317 B against 2,426 B). Larger ones get the patch composed from per-file matches
(``repo_tools.tar_bsdiff``): typescript 5.6.2 -> 5.6.3 566 B against 551 B, in 0.2 s of CPU instead of 16 s
(the per-file candidates' bsdiff4 blocks reused; 5 s when each changed file is sorted again) and bounded by the
largest changed file instead of 17x the tar."""


def archive_bsdiff4_memory(base: Manifest, target: Manifest) -> int:
    """Peak bytes :func:`archive_bsdiff4_patch` adds: small tars, bsdiff4 over both tars (its suffix array),
    the tars held, and the blocks and patch (at most the target tar each); else the composed patch's."""
    old, new = base.content.length, target.content.length
    if max(old, new) > ARCHIVE_BSDIFF4_SORT_MAX:
        return composed_memory(base, target)
    return bsdiff4_memory(old, new) + old + 4 * new


@part(ContainerKind.WHOLE_ARCHIVE_BSDIFF4.value)
def archive_bsdiff4_patch(
    base_root: Path, base: Manifest, source: Path, target: Manifest, memory_budget: int
) -> bytes | None:
    """The whole-archive bsdiff4 candidate: one stock ``BSDIFF40`` patch (bz2 blocks) of the target's
    canonical tar against the base's, both rebuilt from the trees (above :data:`ARCHIVE_BSDIFF4_SORT_MAX`,
    composed from per-file matches without building them). ``None`` when the tars exceed
    :data:`~formats.delta_format.ARCHIVE_MAX`, the encoder does not fit ``memory_budget``, or the
    control block is longer than clients accept (``bsdiff_lzma.control_max`` of the target tar)."""
    if not archive_possible(base, target) or archive_bsdiff4_memory(base, target) > memory_budget:
        return None
    if max(base.content.length, target.content.length) > ARCHIVE_BSDIFF4_SORT_MAX:
        with _Tree(base_root) as old_tree, _Tree(source) as new_tree:
            return composed_patch(base, target, old_tree.read, new_tree.read)
    old = _canonical_tar(base_root, base, RepositoryStateError, "the extracted base")
    new = _canonical_tar(source, target, UnsafeInputError, "the source")
    control, diff, extra = bsdiff4.core.diff(old, new)
    del old
    if len(control) > bsdiff_lzma.control_max(len(new)):
        return None
    out = io.BytesIO()
    bsdiff4.format.write_patch(out, len(new), control, diff, extra)
    return out.getvalue()


def _smaller_archive_bsdiff4(
    best: DeltaHeader, base_root: Path, base: Manifest, source: Path, target: Manifest, memory_budget: int
) -> tuple[DeltaHeader, list[bytes]] | None:
    """The ``archive-bsdiff4`` header and patch when ``best`` (the smallest container so far) is at
    most :data:`ARCHIVE_BSDIFF4_TRY_MAX` bytes and this container is smaller still (ties: ``best``).
    Like the zstd whole-archive kind it carries no manifest patch (same ``level``)."""
    size = _length(best)
    if size > ARCHIVE_BSDIFF4_TRY_MAX:
        return None
    patch = archive_bsdiff4_patch(base_root, base, source, target, memory_budget - current_rss())
    if patch is None:
        return None
    manifest = replace(best.manifest, length=None) if best.manifest is not None else None
    whole = DeltaHeader(best.base_version, best.version, best.base_content, best.content, (),
                        manifest=manifest, archive_bsdiff4=len(patch))
    if _length(whole) >= size:
        return None
    return whole, [patch]


SOLID_TRIAL_BOUND = 0.75
"""Where solid is smaller than this fraction of the whole-archive trial frame, the level-22 frame is not built:
it was 0.79 (typescript 5.5.4 -> 5.6.2) and 0.76 (ruff 0.6.8 -> 0.6.9) of the trial. Thinner than
:data:`TRIAL_BOUND`, which also covers level 19; the frame costs as much as the trial is cheap (11 s of CPU on
typescript, where solid wins by 6%)."""


def _whole_kinds(
    header: DeltaHeader, estimate: int, base_root: Path, base: Manifest, source: Path, target: Manifest,
    memory_budget: int,
) -> tuple[DeltaHeader, list[bytes]] | None:
    """Where the whole-archive trial (``estimate`` bytes) says a whole kind may beat the per-file container
    ``header``: solid first (LZMA codes such changes smaller than zstd), then the zstd frame unless solid is
    below :data:`SOLID_TRIAL_BOUND` of the trial; the smallest of them when smaller than ``header``."""
    solid = _smaller_solid((header, ()), base_root, base, source, target, memory_budget)
    best = solid[0] if solid is not None else header
    if solid is not None and estimate * SOLID_TRIAL_BOUND >= _length(best):
        return solid
    frame = archive_patch(base_root, base, source, target, memory_budget - current_rss())
    return _smaller_whole_archive(best, frame) or solid


def _smaller_whole_archive(header: DeltaHeader, frame: bytes | None) -> tuple[DeltaHeader, list[bytes]] | None:
    """The whole-archive header and ``frame`` (:func:`archive_patch`) when that container is smaller
    than the per-file one ``header`` describes (ties: per-file), else ``None``. It carries no manifest
    patch: the client derives the manifest from the target tar the frame rebuilds (same ``level``)."""
    if frame is None:
        return None
    manifest = replace(header.manifest, length=None) if header.manifest is not None else None
    whole = DeltaHeader(header.base_version, header.version, header.base_content, header.content, (),
                        manifest=manifest, archive=len(frame))
    if _length(whole) >= _length(header):
        return None
    return whole, [frame]


def _count_whole_parts(result: DeltaResult, header: DeltaHeader) -> None:
    """Report the manifest patch and a whole-archive frame like ops (``to_dict``'s ops/op_bytes)."""
    parts = (("manifest", header.manifest_length), (ContainerKind.WHOLE_ARCHIVE.value, header.archive),
             (ContainerKind.WHOLE_ARCHIVE_BSDIFF4.value, header.archive_bsdiff4),
             (ContainerKind.SOLID.value, header.solid), (ContainerKind.SHARED.value, sum(header.shared or ())))
    for name, length in parts:
        if length:
            result.ops[name] = 1
            result.op_bytes[name] = length


class _Tree:
    """A release tree opened once as a directory descriptor; files are read with ``open_beneath``
    (never through a symlink) and checked against their manifest entry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = -1

    def __enter__(self) -> _Tree:
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def _changed(self, entry: ManifestEntry) -> UnsafeInputError:
        return UnsafeInputError(f"{self.root} changed while building the delta: {show_path(entry.path)}")

    @part("read")
    def read(self, entry: ManifestEntry) -> bytes:
        """The whole file, which must have ``entry``'s size and sha256."""
        with os.fdopen(open_beneath(self.fd, entry.path, os.O_RDONLY), "rb", buffering=0) as f:
            data = f.readall()
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise self._changed(entry)
        return data

    def zstd(self, entry: ManifestEntry, out: BinaryIO) -> None:
        """Stream the file into one plain zstd frame on ``out``, checking size and sha256 on the way."""
        with os.fdopen(open_beneath(self.fd, entry.path, os.O_RDONLY), "rb", buffering=0) as f:
            if not _zstd_stream(f.read, out, entry):
                raise self._changed(entry)


def _zstd_stream(read: Callable[[int], bytes], out: BinaryIO, entry: ManifestEntry) -> bool:
    """One zstd frame (content size recorded, no checksum: the manifest's sha256 is the check) of
    what ``read`` yields; True if that was exactly ``entry``'s bytes."""
    cctx = zstandard.ZstdCompressor(level=PATCH_LEVEL, threads=0, write_content_size=True, write_checksum=False)
    writer = cctx.stream_writer(out, size=entry.size, closefd=False)
    digest, overflow = copy_hashed(read, writer.write, entry.size)
    if overflow or digest != Digest(entry.size, entry.sha256):
        return False
    writer.flush(zstandard.FLUSH_FRAME)
    return True


def zstd_patch(old: bytes, new: bytes, level: int = PATCH_LEVEL) -> bytes:
    """zstd "patch-from": one frame of ``new`` compressed with ``old`` as a raw prefix, a window
    covering both (``patch_window_log``), long-distance matching, ``level`` (19). pyzstd exposes the
    prefix (python-zstandard's raw-content dictionary barely uses a large reference)."""
    option: dict[int, int] = {
        pyzstd.CParameter.compressionLevel: level,
        pyzstd.CParameter.windowLog: patch_window_log(len(old), len(new)),
        pyzstd.CParameter.enableLongDistanceMatching: 1,
        pyzstd.CParameter.checksumFlag: 0,
    }
    compressor = pyzstd.ZstdCompressor(option, pyzstd.ZstdDict(old, is_raw=True).as_prefix)
    return compressor.compress(new, pyzstd.ZstdCompressor.FLUSH_FRAME)


@dataclass(frozen=True)
class _FileInputs:
    """What one file's candidate encoders read: the two trees and, when a whole-file patch is among the
    candidates, both files whole (at most WHOLE_PATCH_MAX each)."""

    item: FilePlan
    old_tree: _Tree
    new_tree: _Tree
    old: bytes = b""
    new: bytes = b""
    raw: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    """bsdiff4's raw blocks once the ``bsdiff-lzma`` candidate found them: the ``bsdiff4`` candidate codes the
    same matches (bsdiff's suffix sort is most of either's time, and is run once)."""


Blocks = tuple[bytes, bytes, bytes]
"""bsdiff's raw blocks (control as planes, diff, extra), kept for the shared streams."""


def _encode_best(
    item: FilePlan, old_tree: _Tree, new_tree: _Tree, work: Path, payload: BinaryIO, shared: _SharedSpool,
    side: Executor | None = None,
) -> tuple[OpKind, int]:
    """Run every candidate of ``item`` (its encoder in :data:`PUBLISHER_KINDS`) into its own scratch
    file, append the smallest to ``payload`` and return its kind and length (ties: the earlier
    candidate). When bsdiff-lzma wins, its raw blocks also go to ``shared``. With ``side``, the zstd
    patch runs there while bsdiff runs here (the caller checked the budget covers both at once); the
    choice and bytes are the same."""
    blocks: Blocks | None = None
    inputs = _FileInputs(item, old_tree, new_tree)
    if item.base is not None and WHOLE_INPUTS & set(item.candidates):
        inputs = replace(inputs, old=old_tree.read(item.base), new=new_tree.read(item.entry))
    scratch = {kind: work / f"candidate.{kind.value}" for kind in item.candidates}
    job: Future[Blocks | None] | None = None
    # a large file's zstd patch is built only where a trial frame says it may beat the others (TRIAL_BOUND);
    # the trial runs beside bsdiff instead of the patch
    gated = len(item.candidates) > 1 and OpKind.ZSTD_PATCH in item.candidates and len(inputs.new) >= PATCH_TRIAL_MIN
    trial: Future[int] | None = None
    if side is not None and gated:
        trial = side.submit(_patch_trial, inputs)
    elif side is not None and set(item.candidates) >= SIDE_BY_SIDE:
        job = side.submit(_encode_candidate, OpKind.ZSTD_PATCH, scratch[OpKind.ZSTD_PATCH], inputs)
    try:
        for kind in item.candidates:
            if (job is not None or gated) and kind is OpKind.ZSTD_PATCH:
                continue
            blocks = _encode_candidate(kind, scratch[kind], inputs) or blocks
    finally:
        # never leave one writing a scratch file; its own error is raised below
        running: list[Future[Any]] = [f for f in (job, trial) if f is not None]
        wait(running)
    if job is not None:
        job.result()
    if gated:
        estimate = trial.result() if trial is not None else _patch_trial(inputs)
        others = [size for kind, path in scratch.items() if kind is not OpKind.ZSTD_PATCH
                  and (size := path.stat().st_size)]
        if others and estimate * TRIAL_BOUND >= min(others):
            scratch[OpKind.ZSTD_PATCH].touch()  # empty: not a candidate
        else:
            _encode_candidate(OpKind.ZSTD_PATCH, scratch[OpKind.ZSTD_PATCH], inputs)
    del inputs
    best: tuple[int, OpKind, Path] | None = None
    for kind, path in scratch.items():
        size = path.stat().st_size
        if size and (best is None or size < best[0]):  # no encoder writes an empty op
            if best is not None:
                best[2].unlink()
            best = (size, kind, path)
        else:
            path.unlink()
    assert best is not None
    size, kind, path = best
    if kind is OpKind.BSDIFF_LZMA and blocks is not None:
        shared.add(item.entry, blocks, path)
    del blocks
    with open(path, "rb") as f:
        shutil.copyfileobj(f, payload, CHUNK_SIZE)
    path.unlink()
    return kind, size


def _encode_candidate(kind: OpKind, path: Path, inputs: _FileInputs) -> Blocks | None:
    """Write ``kind``'s encoding of ``inputs`` into the scratch file ``path`` (empty: no output)."""
    encode = OP_ENCODERS[kind].encode
    assert encode is not None, f"the plan lists {kind}, which has no encoder"
    with part(kind.value), open(path, "wb") as f:
        return encode(inputs, f)


def _encode_zstd(inputs: _FileInputs, out: BinaryIO) -> None:
    inputs.new_tree.zstd(inputs.item.entry, out)  # streamed from the source, never held in memory


def _encode_zstd_patch(inputs: _FileInputs, out: BinaryIO) -> None:
    out.write(zstd_patch(inputs.old, inputs.new))


PATCH_TRIAL_MIN = 256 << 10
"""Files of at least this many bytes get their ``zstd-patch`` candidate only where its trial frame may win
(:data:`TRIAL_BOUND`); on smaller ones it costs little. From 1 MiB down to 256 KiB: scipy 1.14.0 -> 1.14.1's
delta CPU 64 -> 56 s for 27 more bytes (1,228,603 -> 1,228,630); numpy's delta the same bytes."""


@part("zstd-patch-trial")
def _patch_trial(inputs: _FileInputs) -> int:
    """The length of the file's zstd patch at :data:`TRIAL_LEVEL` (its window, long-distance matching)."""
    return len(zstd_patch(inputs.old, inputs.new, TRIAL_LEVEL))


def _encode_bsdiff_lzma(inputs: _FileInputs, out: BinaryIO) -> Blocks | None:
    with part("bsdiff-matches"):  # the suffix sort and matching: most of bsdiff's time
        control, diff, extra = bsdiff4.core.diff(inputs.old, inputs.new)
    inputs.raw.append((control, diff, extra))
    try:
        out.write(bsdiff_lzma.pack(control, diff, extra, len(inputs.new)))
    except DeltaFormatError:  # more control tuples than clients accept (never the only candidate)
        out.truncate(0)
        return None
    return bsdiff_lzma.to_planes(control), diff, extra


BSDIFF4_TRY_MAX = 1 << 20
"""The ``bsdiff4`` candidate (bz2 coding) is written only when bsdiff's diff and extra blocks hold at most this many
non-zero bytes. It wins where a few bytes changed in a large file: bz2's run-length stage codes the diff block's
long zero runs in a few bytes where raw LZMA2 pays about one match per 273 bytes (typescript 5.6.2 -> 5.6.3:
``lib/typescript.js`` 312 B against 1,535 B for ``bsdiff-lzma`` and 995 B for ``zstd-patch``). On real changes
``bsdiff-lzma`` codes the blocks about 21% smaller (ruff) and bz2 would cost seconds of CPU for nothing."""


def _encode_bsdiff4(inputs: _FileInputs, out: BinaryIO) -> None:
    """Stock ``BSDIFF40`` (bz2 blocks) of the matches the ``bsdiff-lzma`` candidate found (that candidate runs
    first: the plan lists ``bsdiff4`` only after it); nothing when the blocks are not mostly zeros
    (:data:`BSDIFF4_TRY_MAX`)."""
    if not inputs.raw:
        return  # the bsdiff-lzma candidate did not run (no whole files in memory)
    control, diff, extra = inputs.raw[0]
    if len(diff) - diff.count(0) + len(extra) - extra.count(0) > BSDIFF4_TRY_MAX:
        return
    assert inputs.item.base is not None
    remember(inputs.item.base.sha256, inputs.item.entry.sha256, control, diff, extra)  # the composed archive-bsdiff4
    bsdiff4.format.write_patch(out, len(inputs.new), control, diff, extra)


def _encode_segments(inputs: _FileInputs, out: BinaryIO) -> None:
    assert inputs.item.base is not None
    write_segments(inputs.old_tree, inputs.item.base, inputs.new_tree, inputs.item.entry, out, SEGMENTS)


def _encode_bsdiff_segments(inputs: _FileInputs, out: BinaryIO) -> None:
    """bsdiff-lzma window by window, at the plan's windows (the largest its budget allows); nothing when a
    window's patch breaks the format's bounds (never the only candidate)."""
    assert inputs.item.base is not None and inputs.item.windows is not None
    segs = matched_regions(inputs.old, inputs.new, inputs.item.windows)  # both files held: WHOLE_INPUTS
    try:
        write_segments(inputs.old_tree, inputs.item.base, inputs.new_tree, inputs.item.entry, out,
                       inputs.item.windows, bsdiff_segment, segs)
    except DeltaFormatError:
        out.truncate(0)


def bsdiff_segment(region: bytes, data: bytes) -> bytes:
    """One ``bsdiff-segments`` segment: the ``bsdiff-lzma`` patch of ``data`` against ``region``, within the
    length a reader accepts (``formats.delta_segments.bsdiff_data_max``)."""
    patch = bsdiff_lzma.encode(region, data)
    if len(patch) > bsdiff_data_max(len(data)):
        raise DeltaFormatError(f"a {len(patch)}-byte bsdiff patch of a {len(data)}-byte segment is over the bound")
    return patch


class _SharedSpool:
    """The raw bsdiff blocks (control as planes, diff, extra) of every op kept as ``bsdiff-lzma``, in
    op order, spooled to three scratch files: coded at the end as the delta's shared streams
    (``formats.bsdiff_lzma.SharedStream``), they make the ``bsdiff-shared`` variant of the container,
    kept when smaller (one LZMA model per block kind instead of three per file)."""

    def __init__(self, work: Path) -> None:
        self.paths = [work / f"shared.{name}" for name in SHARED_STREAMS]
        self.files: list[BinaryIO] = []
        self.lengths: dict[str, tuple[int, int, int]] = {}
        self.packed: dict[str, int] = {}  # the length of each op's bsdiff-lzma data in the per-file payload
        self.first: list[bytes] = []  # the first op's coded blocks, reused when it is the only op

    def __enter__(self) -> _SharedSpool:
        self.files = [open(p, "w+b") for p in self.paths]  # noqa: SIM115 (closed in __exit__)
        return self

    def __exit__(self, *exc: object) -> None:
        for f, p in zip(self.files, self.paths, strict=True):
            f.close()
            p.unlink(missing_ok=True)

    def add(self, entry: ManifestEntry, blocks: tuple[bytes, bytes, bytes], packed: Path) -> None:
        """Spool the raw ``blocks`` of ``entry``'s op, whose per-file ``bsdiff-lzma`` data is ``packed``."""
        for f, block in zip(self.files, blocks, strict=True):
            f.write(block)
        self.lengths[entry.path] = (len(blocks[0]), len(blocks[1]), len(blocks[2]))
        self.packed[entry.path] = packed.stat().st_size
        if len(self.lengths) == 1 and all(bsdiff_lzma.codes_alike(len(b), entry.size) for b in blocks):
            self.first = bsdiff_lzma.packed_blocks(packed.read_bytes(), entry.size)

    def variant(self, header: DeltaHeader, memory_budget: int) -> tuple[DeltaHeader, list[bytes]] | None:
        """The header of the per-file container ``header`` with its ``bsdiff-lzma`` ops as
        ``bsdiff-shared`` ones, and the three streams, when that container is smaller (ties: ``header``)
        and LZMA's encoder fits ``memory_budget``; else None."""
        totals = [sum(lengths[i] for lengths in self.lengths.values()) for i in range(3)]
        if not self.lengths or bsdiff_lzma.lzma_memory(max(totals)) > memory_budget:
            return None
        # one op alone: its streams are its per-file blocks, already coded (codes_alike)
        streams = self.first if len(self.lengths) == 1 and self.first else [
            self._code(f, total) for f, total in zip(self.files, totals, strict=True)]
        ops, offset = [], header.manifest_length
        for op in header.ops:
            if op.path in self.lengths:
                record = bsdiff_lzma.lengths_record(*self.lengths[op.path])
                op = replace(op, op=OpKind.BSDIFF_SHARED, length=len(record))
            ops.append(replace(op, offset=offset) if op.op.has_data else op)
            offset += op.length if op.op.has_data else 0
        shared = replace(header, ops=tuple(ops), shared=(len(streams[0]), len(streams[1]), len(streams[2])))
        if _length(shared) >= _length(header):
            return None
        return shared, streams

    @staticmethod
    def _code(f: BinaryIO, total: int) -> bytes:
        """The spooled blocks of ``f`` as one raw LZMA2 stream (read in chunks: memory is LZMA's)."""
        f.seek(0)
        filters = bsdiff_lzma.shared_filters(total, bsdiff_lzma.PRESET)
        coder = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=filters)
        out = [coder.compress(chunk) for chunk in chunks(f)]
        out.append(coder.flush())
        return b"".join(out)


def _shared_payload(
    mpatch: bytes, payload: BinaryIO, header: DeltaHeader, shared: _SharedSpool, streams: list[bytes]
) -> Iterator[bytes]:
    """The payload of the ``bsdiff-shared`` variant: the manifest patch, each op's data (copied from
    the per-file ``payload`` spool, or the lengths of a shared op), then the streams."""
    yield mpatch
    position = 0  # in ``payload``, which holds the per-file ops' data back to back, in op order
    for op in header.ops:
        if op.op is OpKind.BSDIFF_SHARED:
            position += shared.packed[op.path]  # the per-file op's bytes, not needed here
            yield bsdiff_lzma.lengths_record(*shared.lengths[op.path])
        elif op.op.has_data:
            payload.seek(position)
            left = op.length
            while left:
                chunk = payload.read(min(CHUNK_SIZE, left))
                left -= len(chunk)
                yield chunk
            position += op.length
    yield from streams


def chunks(f: BinaryIO) -> Iterator[bytes]:
    """The rest of ``f`` in ``CHUNK_SIZE`` pieces."""
    return iter(lambda: f.read(CHUNK_SIZE), b"")


# -- large files: zstd-segments (formats.delta_segments) ------------------------------------------


def write_segments(
    old_tree: _Tree, base: ManifestEntry, new_tree: _Tree, entry: ManifestEntry, out: BinaryIO,
    params: SegmentParams = DEFAULT_SEGMENTS, code: Callable[[bytes, bytes], bytes] | None = None,
    segs: Sequence[Segment] | None = None,
) -> None:
    """Write the ``zstd-segments`` data rebuilding ``entry`` from ``base``: for each of ``segs`` (by default
    :func:`~formats.delta_segments.regions`), its record and one frame (``code``, by default
    :func:`segment_frame`; :func:`bsdiff_segment` for ``bsdiff-segments``) of the segment with its base
    region, read with ``pread``, as prefix. One region and one segment are in memory at a time. The base
    file is hashed first and the new file while it is read: either not matching its entry raises like
    :meth:`_Tree.read`."""
    old_fd = open_beneath(old_tree.fd, base.path, os.O_RDONLY)
    try:
        got, overflow = copy_hashed(lambda n: os.read(old_fd, n), None, base.size)
        if overflow or got != Digest(base.size, base.sha256):
            raise old_tree._changed(base)
        digest = hashlib.sha256()
        with os.fdopen(open_beneath(new_tree.fd, entry.path, os.O_RDONLY), "rb") as new:
            for seg in regions(base.size, entry.size, params) if segs is None else segs:
                data = new.read(seg.size)
                region = read_region(old_fd, seg)
                if len(data) != seg.size or len(region) != seg.base_length:
                    raise (new_tree._changed(entry) if len(data) != seg.size else old_tree._changed(base))
                digest.update(data)
                frame = (code or segment_frame)(region, data)
                del region, data
                out.write(replace(seg, length=len(frame)).record())
                out.write(frame)
            if new.read(1) or digest.hexdigest() != entry.sha256:
                raise new_tree._changed(entry)
    finally:
        os.close(old_fd)


def segment_frame(region: bytes, data: bytes) -> bytes:
    """One ``zstd-segments`` frame: ``data`` at :data:`SEGMENT_LEVEL` with ``region`` as raw prefix
    (:func:`zstd_patch`), or a plain frame (content size declared, no checksum) without one."""
    if region:
        return zstd_patch(region, data, SEGMENT_LEVEL)
    option: dict[int, int] = {pyzstd.CParameter.compressionLevel: SEGMENT_LEVEL, pyzstd.CParameter.checksumFlag: 0}
    return pyzstd.compress(data, option)


# -- the publisher's registry of delta kinds (formats.delta_kinds) ----------------------------------


@dataclass(frozen=True)
class OpEncoder:
    """How the publisher encodes one op kind as a file's candidate: ``encode`` writes the op's data for
    one file (None: not a candidate of its own, ``note`` says where the op comes from), ``memory``
    estimates the encoder's peak from the base and target file sizes (``core.delta_plan``, which the
    planner budgets with)."""

    encode: Callable[[_FileInputs, BinaryIO], Blocks | None] | None
    memory: Callable[[int, int], int]
    note: str = ""


@dataclass(frozen=True)
class ContainerEncoder:
    """How the publisher builds one container kind: ``build`` is the function that makes it
    (:func:`build_delta` tries them in this order: per-file, its shared variant, whole-archive, and
    solid where whole-archive won; the smallest container is written), ``memory`` estimates its peak
    from the base and target manifests."""

    build: Callable[..., object]
    memory: Callable[[Manifest, Manifest], int]


OP_ENCODERS: dict[OpKind, OpEncoder] = {
    OpKind.COPY: OpEncoder(None, ENCODER_MEMORY[OpKind.COPY], "no data: the plan found a base file with its sha256"),
    OpKind.BSDIFF4: OpEncoder(_encode_bsdiff4, ENCODER_MEMORY[OpKind.BSDIFF4]),
    OpKind.BSDIFF_LZMA: OpEncoder(_encode_bsdiff_lzma, ENCODER_MEMORY[OpKind.BSDIFF_LZMA]),
    OpKind.BSDIFF_SHARED: OpEncoder(None, ENCODER_MEMORY[OpKind.BSDIFF_SHARED],
                                    "the bsdiff-lzma candidates' blocks, moved by the shared container"),
    OpKind.ZSTD_PATCH: OpEncoder(_encode_zstd_patch, ENCODER_MEMORY[OpKind.ZSTD_PATCH]),
    OpKind.ZSTD: OpEncoder(_encode_zstd, ENCODER_MEMORY[OpKind.ZSTD]),
    OpKind.ZSTD_SEGMENTS: OpEncoder(_encode_segments, ENCODER_MEMORY[OpKind.ZSTD_SEGMENTS]),
    OpKind.BSDIFF_SEGMENTS: OpEncoder(_encode_bsdiff_segments, ENCODER_MEMORY[OpKind.BSDIFF_SEGMENTS]),
}

UNLIMITED = 1 << 62


def _per_file_memory(base: Manifest, target: Manifest) -> int:
    """The most demanding file's candidates, every encoder allowed."""
    return plan_delta(base, target, UNLIMITED, SEGMENTS).memory


def _shared_memory(base: Manifest, target: Manifest) -> int:
    """Per-file, then LZMA coding the longest stream (the diff blocks: at most the target's bytes)."""
    return max(_per_file_memory(base, target), bsdiff_lzma.lzma_memory(target.content.length))


CONTAINER_ENCODERS: dict[ContainerKind, ContainerEncoder] = {
    ContainerKind.PER_FILE: ContainerEncoder(build_delta, _per_file_memory),
    ContainerKind.SHARED: ContainerEncoder(_SharedSpool.variant, _shared_memory),
    ContainerKind.WHOLE_ARCHIVE: ContainerEncoder(archive_patch, lambda b, t: archive_memory(b, t, ARCHIVE_LEVEL)),
    ContainerKind.WHOLE_ARCHIVE_BSDIFF4: ContainerEncoder(archive_bsdiff4_patch, archive_bsdiff4_memory),
    ContainerKind.SOLID: ContainerEncoder(solid_patch, solid_memory),
}

PUBLISHER_KINDS: dict[DeltaKind, OpEncoder | ContainerEncoder] = dict(
    [*OP_ENCODERS.items(), *CONTAINER_ENCODERS.items()]
)
"""Every kind the publisher knows (``formats.delta_kinds`` names the other places a new kind goes);
``tests/formats/test_delta_kinds.py`` checks it is every kind, like the client's ``CLIENT_KINDS``."""
