"""Delta updates on the client: choose the cheapest way to a release, then rebuild it safely.

Planning (:func:`plan_update`) is pure: from the signed channel index alone (sizes of deltas,
manifests and full artifacts are all signed), it picks the path with the fewest bytes to download:
the full artifact, one delta from the installed release, or a chain of deltas through intermediate
releases (Dijkstra over releases; an edge into release X costs the delta's length: the delta carries
X's manifest, against which the rebuilt tree is verified, as a patch of its base's manifest or, in the
whole-archive kind, as the target tar it rebuilds).

Before a delta is applied, the manifest it carries is rebuilt (:func:`manifest_from_delta`: from the
patch, or read from the target tar the whole-archive frame rebuilds in memory) and compressed again;
it is used only when that is byte for byte the signed manifest target of the release (length and
sha256 from the signed channel index), so nothing is trusted that the full path would not trust.

Applying (:func:`apply_delta`) writes one release tree into an *empty* directory from a delta
container (``client.delta_format``, see docs/ARCHITECTURE.md "Deltas") and the base release's
tree: file by file (the per-file kind), or by rebuilding the base's canonical tar from the verified
base tree and streaming the patched target tar through the strict extraction of a full artifact
(the whole-archive kind, :func:`_apply_archive`). Nothing in the delta is trusted beyond being a
signed blob: sizes, modes and hashes come from the signed target manifest; every base file is hashed
against the base release's manifest before its bytes are used (a locally edited file is never
patched); every output is bounded by the signed size while it is produced, so a malicious patch
cannot write or allocate more. Any failure is a :class:`DeltaError`, one line naming the file and
cause; the installer then falls back to the full artifact.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import heapq
import io
import itertools
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

import bsdiff4.core
import pyzstd
from packaging.version import Version

from pinnacle_updates.client.errors import InstallError
from pinnacle_updates.formats import bsdiff_lzma, delta_format, delta_segments, lzma_dict
from pinnacle_updates.formats.archive import (
    CHUNK_SIZE,
    ArchiveError,
    TreeChanged,
    copy_hashed,
    manifest_problems,
    open_beneath,
    read_canonical_tar,
    release_compressor,
    show_path,
    write_canonical_tar,
    write_files,
)
from pinnacle_updates.formats.index import (
    DeltaRef,
    Digest,
    EntryType,
    FormatError,
    Manifest,
    ManifestEntry,
    Release,
    parse_version,
)
from pinnacle_updates.formats.tree import (
    create_entry,
    extract_canonical,
    finish_tree,
    verify_tree,
    write_file,
)

_Node = tuple[Version, str]
"""A release as a planning node: (version, content sha256)."""

Op = delta_format.DeltaOp
_SHORT = re.compile(r"payload should be (?P<should>\d+) bytes, the file holds (?P<holds>-?\d+)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
ZSTD_WINDOW_LOG = 27
"""Largest window a plain ``zstd`` op may use (zstd's own default limit, 128 MiB)."""
MAX_CHAIN = 8
"""Deltas applied in one update at most: each step rebuilds a whole tree on disk."""


class DeltaError(InstallError):
    """A delta could not be used (bad patch, hash mismatch, truncated, missing, edited base)."""


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`manifest_from_delta` decoded in memory to rebuild the manifest, kept for
    :func:`apply_delta`: the target's canonical tar (``kind`` ``tar``, the whole-archive kind) or the
    bytes of the files the solid stream rebuilds (``solid``)."""

    kind: Literal["tar", "solid"]
    data: bytes | bytearray

    @property
    def tar(self) -> bytes | None:
        """The target's canonical tar, if that is what this is (the base of a next whole-archive step)."""
        return self.data if self.kind == "tar" and isinstance(self.data, bytes) else None


# -- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaStep:
    """Apply ``delta`` to the tree of release ``base`` (a version) to rebuild ``release``."""

    base: str
    release: Release
    delta: DeltaRef

    @property
    def bytes(self) -> int:
        """Signed bytes this step downloads: the delta (which carries the rebuilt release's manifest)."""
        return self.delta.target.length


@dataclass(frozen=True)
class UpdatePath:
    """How to get ``target``: ``steps`` empty means the full artifact. ``total_bytes`` is what the
    path downloads (signed sizes), ``full_bytes`` what the full artifact and manifest would cost,
    ``note`` why no delta path was taken (empty when one was, or when nothing better exists)."""

    target: Release
    steps: tuple[DeltaStep, ...]
    total_bytes: int
    full_bytes: int
    note: str = ""

    @classmethod
    def full(cls, target: Release, note: str = "") -> UpdatePath:
        cost = full_cost(target)
        return cls(target, (), cost, cost, note)

    @property
    def kind(self) -> str:
        """``full``, ``delta`` (one step) or ``chain`` (several)."""
        return "full" if not self.steps else ("delta" if len(self.steps) == 1 else "chain")

    @property
    def saved(self) -> int:
        """Signed bytes this path saves against the full artifact."""
        return self.full_bytes - self.total_bytes

    def describe(self) -> str:
        """``full``, ``delta:1.0.0->1.1.0`` or ``chain:1.0.0->1.1.0->1.2.0``."""
        if not self.steps:
            return "full"
        versions = [self.steps[0].base, *(s.release.version for s in self.steps)]
        return f"{self.kind}:{'->'.join(versions)}"


def full_cost(release: Release) -> int:
    """Signed bytes of the full path: the artifact and the manifest."""
    return release.full.length + release.manifest.length


def plan_update(
    releases: Sequence[Release],
    installed: tuple[str, str] | None,
    target: Release,
    *,
    max_steps: int = MAX_CHAIN,
) -> UpdatePath:
    """The cheapest way from ``installed`` (version, content sha256) to ``target`` by signed bytes.

    ``releases`` are the channel's releases usable on this platform (``ChannelIndex.for_platform``);
    intermediate releases of a chain must be among them. A delta is usable only when its base is
    exactly a release the client holds or rebuilds on the way (same version *and* content sha256),
    so a re-published or locally different base is never patched. A delta path is chosen only when
    it is strictly smaller than the full artifact; ties between delta paths go to fewer steps.
    """
    if installed is None:
        return UpdatePath.full(target, "nothing is installed")
    version, content = installed
    start = (parse_version(version), content)
    goal = (target.parsed_version, target.content.sha256)
    if start == goal:
        return UpdatePath.full(target, f"{target.version} is the installed release")
    # edges[node] = steps whose base is ``node``; nodes are (version, content sha256)
    edges: dict[_Node, list[DeltaStep]] = {}
    unique = {(r.parsed_version, r.content.sha256): r for r in (*releases, target)}
    for release in unique.values():
        for delta in release.deltas:
            edges.setdefault((parse_version(delta.base), delta.base_content), []).append(
                DeltaStep(delta.base, release, delta)
            )
    if not any(s.release.content.sha256 == target.content.sha256 for s in _all(edges)):
        return UpdatePath.full(target, f"{target.version} has no delta to rebuild it from")
    best = _cheapest(edges, start, goal, max_steps)
    full = UpdatePath.full(target)
    if best is None:
        return UpdatePath.full(target, f"no delta path from {version} to {target.version}")
    cost = sum(s.bytes for s in best)
    if cost >= full.total_bytes:
        return UpdatePath.full(target, f"deltas from {version} ({cost} bytes) are not smaller than the full artifact")
    return UpdatePath(target, best, cost, full.full_bytes)


def _all(edges: dict[_Node, list[DeltaStep]]) -> list[DeltaStep]:
    return [s for steps in edges.values() for s in steps]


def _cheapest(
    edges: dict[_Node, list[DeltaStep]],
    start: _Node,
    goal: _Node,
    max_steps: int,
) -> tuple[DeltaStep, ...] | None:
    """Dijkstra over (node, depth): the cheapest step sequence from ``start`` to ``goal`` using at
    most ``max_steps`` steps; ties go to fewer steps."""
    tie = itertools.count()
    queue: list[tuple[int, int, int, _Node, tuple[DeltaStep, ...]]] = [(0, 0, next(tie), start, ())]
    settled: set[tuple[_Node, int]] = set()
    while queue:
        cost, depth, _, node, path = heapq.heappop(queue)
        if node == goal:
            return path
        if (node, depth) in settled or depth >= max_steps:
            continue
        settled.add((node, depth))
        for step in edges.get(node, ()):
            nxt = (step.release.parsed_version, step.release.content.sha256)
            if any(nxt == (s.release.parsed_version, s.release.content.sha256) for s in path) or nxt == start:
                continue  # never revisit a release: a cycle only adds bytes
            heapq.heappush(queue, (cost + step.bytes, depth + 1, next(tie), nxt, (*path, step)))
    return None


# -- applying ------------------------------------------------------------------------------------


def base_problem(base_root: Path, base_manifest: Manifest, skip: Iterable[str] = ()) -> str | None:
    """Why the installed tree at ``base_root`` cannot serve as the base of a delta (a file edited,
    missing or replaced locally), or None. Checked before any delta is downloaded; files the user
    added and changed modes do not matter (the delta never reads them)."""
    for problem in verify_tree(base_root, base_manifest, skip=skip):
        kind, _, path = problem.partition(": ")
        if kind == "modified":
            return f"base file {path} was modified locally"
        if kind not in ("unexpected",) and not kind.startswith("mode changed"):
            return f"base of {base_manifest.version} is damaged ({problem})"
    return None


def apply_delta(
    delta_file: Path,
    base_root: Path,
    base_manifest: Manifest,
    target_manifest: Manifest,
    dest: Path,
    *,
    skip: Iterable[str] = (),
    rebuilt: Rebuilt | None = None,
) -> None:
    """Rebuild ``target_manifest``'s tree in the empty directory ``dest`` from the delta container
    ``delta_file`` and the tree of ``base_manifest`` at ``base_root`` (read only, never written).

    Directories and symlinks come from the target manifest; each file from its op: ``copy`` (a
    base file with the same sha256), ``bsdiff-lzma``, ``bsdiff4``, ``zstd-patch`` or
    ``zstd-segments`` (a base file patched) or ``zstd`` (a new file); in the whole-archive kind from
    the target tar, in the solid kind from the base file with the same sha256 or the LZMA stream
    (:func:`_apply_solid`). Base files are opened below
    ``base_root`` without following symlinks and hashed against ``base_manifest`` before their
    bytes are used. Outputs are created
    ``O_EXCL|O_NOFOLLOW`` with the manifest's mode, bounded by and compared with the manifest's
    size and sha256 while written (no second hashing pass here: the installer verifies the finished
    slot, and a chain's next step hashes every base file it reads); at the end the tree is made
    durable (:func:`pinnacle_updates.formats.tree.finish_tree`).

    ``skip`` names top-level persistent paths (``logs``...) whose shipped content the installer
    drops anyway: they are neither read nor written. ``rebuilt``: what :func:`manifest_from_delta`
    already decoded from this delta to derive ``target_manifest``; it is used as is. Raises
    :class:`DeltaError` (one line) on any failure; ``dest`` then holds partial output the caller
    discards.
    """
    label = f"delta from {base_manifest.version}"
    skipped = frozenset(s.strip("/") for s in skip)
    wanted = Manifest(
        target_manifest.version,
        target_manifest.content,
        tuple(e for e in target_manifest.entries if not _under(e.path, skipped)),
    )
    problems = manifest_problems(target_manifest.entries)
    if problems:
        raise DeltaError(f"{label}: target manifest {target_manifest.version} rejected: {problems[0]}")
    try:
        with contextlib.ExitStack() as stack:
            delta = stack.enter_context(open(delta_file, "rb"))
            header = _read_checked_header(delta, label, base_manifest, target_manifest)
            ops, payload = {op.path: op for op in header.ops}, header.payload_start
            base_fd = os.open(base_root, _DIR_FLAGS)
            stack.callback(os.close, base_fd)
            dest_fd = os.open(dest, _DIR_FLAGS)
            stack.callback(os.close, dest_fd)
            if os.listdir(dest_fd):
                raise DeltaError(f"{label}: {dest} is not empty")
            source = _Sources(delta, payload, base_fd, base_manifest.by_path(), label)
            if header.archive is not None:
                _apply_archive(source, header, base_manifest, target_manifest, dest_fd, skipped,
                               rebuilt.tar if rebuilt is not None else None)
            elif header.solid is not None:
                _apply_solid(source, header, base_manifest, target_manifest, dest_fd, skipped,
                             rebuilt.data if rebuilt is not None and rebuilt.kind == "solid" else None)
            shared = _Shared(source, header, target_manifest) if header.shared is not None else None
            for entry in wanted.entries if header.archive is None and header.solid is None else ():
                if entry.type is not EntryType.FILE:
                    create_entry(dest_fd, entry)
                    continue
                op = ops.get(entry.path)
                if op is None:
                    raise DeltaError(f"{label}: no op rebuilds {show_path(entry.path)}")
                _write_output(dest_fd, entry, source, op, label, shared)
            if shared is not None:
                shared.finish()
            finish_tree(dest_fd, wanted)
    except DeltaError:
        raise
    except ArchiveError as exc:  # the tree rules refused an entry: not a delta problem, the install fails
        raise InstallError(f"{label}: {exc}") from exc
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise DeltaError(f"{label}: {exc.strerror or exc}{where}") from exc


def apply_chain(
    steps: Sequence[tuple[Path, Manifest]],
    base_root: Path,
    base_manifest: Manifest,
    dest: Path,
    scratch: Path,
    *,
    skip: Iterable[str] = (),
    rebuilt: Rebuilt | None = None,
) -> None:
    """Apply ``steps`` (delta file, manifest of the release it rebuilds) in order, starting from the
    tree at ``base_root``: every intermediate release is rebuilt (and verified) in a directory under
    ``scratch``, never in a slot; the last one goes into the empty ``dest`` (with ``rebuilt``, what
    :func:`manifest_from_delta` decoded from the last delta). ``scratch`` is removed
    afterwards, whatever happened. Raises :class:`DeltaError` like :func:`apply_delta`."""
    if not steps:
        raise DeltaError("no delta to apply")
    root, manifest = base_root, base_manifest
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        for i, (delta_file, target) in enumerate(steps):
            out = dest
            if i < len(steps) - 1:
                out = scratch / f"{i}-{target.version}"
                out.mkdir(parents=True)
            apply_delta(delta_file, root, manifest, target, out, skip=skip, rebuilt=rebuilt if out == dest else None)
            if root != base_root:
                shutil.rmtree(root)  # the previous intermediate tree is no longer needed
            root, manifest = out, target
    except OSError as exc:
        raise DeltaError(f"cannot use the delta work directory {scratch}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _under(path: str, names: frozenset[str]) -> bool:
    return any(path == n or path.startswith(n + "/") for n in names)


def _holes(base: Manifest, skip: Iterable[str]) -> frozenset[str]:
    """The persistent paths ``skip`` that ``base`` ships: the slot links them away, so their files
    are not there to read (empty when there are none)."""
    skipped = frozenset(s.strip("/") for s in skip)
    return skipped if any(_under(e.path, skipped) for e in base.entries) else frozenset()


class _Sources:
    """Where op bytes come from: the delta's payload (bounded, truncation is an error) and the
    base tree (every base file verified against the base manifest before its bytes are used)."""

    def __init__(
        self, delta: BinaryIO, payload: int, base_fd: int, base: dict[str, ManifestEntry], label: str
    ) -> None:
        self._delta = delta
        self._payload = payload
        self._size = os.fstat(delta.fileno()).st_size
        self.base_fd = base_fd
        self._base = base
        self.label = label

    def payload_reader(self, op: Op) -> Callable[[int], bytes]:
        """A reader over the op's bytes of the payload; ``delta truncated`` if the file ends early."""
        start = self._payload + op.offset
        return self.payload_reader_range(start, start + op.length, show_path(op.path))

    def payload_reader_range(self, start: int, end: int, what: str) -> Callable[[int], bytes]:
        """A reader over the file bytes ``start``..``end`` (for ``what``); truncation is an error. It
        reads at its own offset (``pread``), so readers of one delta may be interleaved (the shared
        streams are read alongside each op's data)."""
        if end > self._size:
            raise DeltaError(
                f"{self.label}: delta truncated ({what} needs payload bytes up to {end}, the file has {self._size})"
            )
        fd, pos = self._delta.fileno(), start

        def read(n: int) -> bytes:
            nonlocal pos
            data = os.pread(fd, min(n, end - pos), pos)
            if len(data) < min(n, end - pos):
                raise DeltaError(f"{self.label}: delta truncated while reading {what}")
            pos += len(data)
            return data

        return read

    def payload_range_bytes(self, start: int, end: int, what: str) -> bytes:
        return self.payload_reader_range(start, end, what)(end - start)

    def payload_bytes(self, op: Op) -> bytes:
        return self.payload_reader(op)(op.length)

    def base_entry(self, op: Op) -> ManifestEntry:
        name = op.base or ""
        entry = self._base.get(name)
        if entry is None or entry.type is not EntryType.FILE:
            raise DeltaError(f"{self.label}: {show_path(op.path)}: base {show_path(name)} is not a file of the base")
        return entry

    def open_base(self, op: Op) -> int:
        """Descriptor of the base file of ``op`` (no symlink followed); must be a regular file."""
        name = self.base_entry(op).path
        try:
            fd = open_beneath(self.base_fd, name, os.O_RDONLY)
        except OSError as exc:
            raise DeltaError(f"{self.label}: base file {show_path(name)} is unreadable ({exc.strerror})") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DeltaError(f"{self.label}: base file {show_path(name)} is no longer a regular file")
        return fd

    def base_bytes(self, op: Op) -> bytes:
        """The whole base file of ``op``, verified against the base manifest."""
        entry = self.base_entry(op)
        fd = self.open_base(op)
        out = bytearray()
        try:
            got, overflow = copy_hashed(lambda n: os.read(fd, n), out.extend, entry.size)
        finally:
            os.close(fd)
        if overflow or got != Digest(entry.size, entry.sha256):
            raise self.modified(entry, got, overflow)
        return bytes(out)

    def modified(self, entry: ManifestEntry, got: Digest, overflow: bool) -> DeltaError:
        what = f"larger than its {entry.size} bytes" if overflow else f"sha256 {got.sha256[:16]}..."
        return DeltaError(f"{self.label}: base file {show_path(entry.path)} was modified locally ({what})")


def _write_output(
    dest_fd: int, entry: ManifestEntry, source: _Sources, op: Op, label: str, shared: _Shared | None = None
) -> None:
    """Create ``entry`` from ``op``; its bytes bounded by and checked against the manifest."""
    name = show_path(entry.path)
    if op.op == "copy":
        base = source.base_entry(op)
        if (base.size, base.sha256) != (entry.size, entry.sha256):
            raise DeltaError(f"{label}: {name}: copy of {show_path(base.path)}, whose signed sha256 differs")
        fd = source.open_base(op)
        try:
            got, overflow = _create_file(dest_fd, entry, lambda n: os.read(fd, n))
        finally:
            os.close(fd)
        if overflow or got != Digest(entry.size, entry.sha256):
            raise source.modified(base, got, overflow)
        return
    if op.op in ("bsdiff-lzma", "bsdiff4", "bsdiff-shared", "zstd-patch"):
        _check_whole_patch(source, op, entry, label)
    if op.op == "bsdiff-shared" and shared is not None:
        data = shared.patch(source.base_bytes(op), op, entry)
        got, overflow = _create_file(dest_fd, entry, io.BytesIO(data).read)
        what = "patched"
    elif op.op in ("bsdiff-lzma", "bsdiff4"):
        patcher = _bspatch if op.op == "bsdiff4" else _bsl_patch
        data = patcher(source.base_bytes(op), source.payload_bytes(op), entry, label)
        got, overflow = _create_file(dest_fd, entry, io.BytesIO(data).read)
        what = "patched"
    elif op.op in ("zstd", "zstd-patch"):
        prefix = source.base_bytes(op) if op.op == "zstd-patch" else None
        stream = _ZstdStream(source.payload_reader(op), prefix, entry.size, f"{label}: {name}")
        got, overflow = _create_file(dest_fd, entry, stream.read)
        if not overflow:
            stream.finish()
        what = "patched" if prefix is not None else "decompressed"
    elif op.op == "zstd-segments":
        got, overflow = _write_segments(dest_fd, entry, source, op, label)
        what = "patched"
    else:
        raise DeltaError(f"{label}: {name}: unknown op {op.op!r}")
    if overflow:
        raise DeltaError(f"{label}: {name}: {what} output exceeds the signed size of {entry.size} bytes")
    if got != Digest(entry.size, entry.sha256):
        raise DeltaError(
            f"{label}: {name}: {what} output has sha256 {got.sha256[:16]}... ({got.length} bytes), "
            f"expected {entry.sha256[:16]}... ({entry.size} bytes)"
        )


class _Shared:
    """The shared bsdiff streams of a per-file delta (``client.bsdiff_lzma.SharedStream``). Every
    ``bsdiff-shared`` op's lengths are read and bounded by its signed size first, which fixes each
    stream's total; ops then take their blocks in op order, and blocks of ops not written (below a
    persistent path) are skipped over, so every op gets its own."""

    def __init__(self, source: _Sources, header: delta_format.DeltaHeader, target: Manifest) -> None:
        self.label = source.label
        sizes = {e.path: e.size for e in target.entries}
        self.lengths: dict[str, tuple[int, int, int]] = {}
        try:
            for op in header.ops:
                if op.op is not delta_format.OpKind.BSDIFF_SHARED:
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


def _create_file(dest_fd: int, entry: ManifestEntry, read: Callable[[int], bytes]) -> tuple[Digest, bool]:
    """Write ``entry`` new (``O_EXCL``, no symlink followed) with its mode; at most its size."""
    fd = open_beneath(dest_fd, entry.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), entry.mode)
        return copy_hashed(read, out.write, entry.size)


def _bspatch(base: bytes, patch: bytes, entry: ManifestEntry, label: str) -> bytes:
    """bsdiff4 ``patch`` applied to ``base``, refusing before any allocation a patch that declares
    another output size than the manifest, and bounding each decompressed block by that size."""
    name = show_path(entry.path)
    if len(patch) < 32 or patch[:8] != b"BSDIFF40":
        raise DeltaError(f"{label}: {name}: not a bsdiff4 patch")
    len_control, len_diff, len_new = (bsdiff4.core.decode_int64(patch[i : i + 8]) for i in (8, 16, 24))
    if len_new != entry.size:
        raise DeltaError(
            f"{label}: {name}: patch declares {len_new} output bytes, the signed size is {entry.size}"
        )
    if len_control < 0 or len_diff < 0 or 32 + len_control + len_diff > len(patch):
        raise DeltaError(f"{label}: {name}: bsdiff4 patch is truncated or malformed")
    blocks = (patch[32 : 32 + len_control], patch[32 + len_control : 32 + len_control + len_diff],
              patch[32 + len_control + len_diff :])  # fmt: skip
    limits = (24 * (entry.size + 1), entry.size, entry.size)
    try:
        control, diff, extra = (_bunzip_bounded(b, n, f"{label}: {name}") for b, n in zip(blocks, limits, strict=True))
        if len(control) % 24:
            raise DeltaError(f"{label}: {name}: bsdiff4 control block is malformed")
        out: bytes = bsdiff4.core.patch(base, len_new, control, diff, extra)
    except (ValueError, OSError, MemoryError) as exc:
        raise DeltaError(f"{label}: {name}: bad bsdiff4 patch ({exc})") from exc
    return out


def _bsl_patch(base: bytes, patch: bytes, entry: ManifestEntry, label: str) -> bytes:
    """A ``bsdiff-lzma`` patch applied to ``base``: blocks bounded by the signed size (client.bsdiff_lzma)."""
    try:
        return bsdiff_lzma.patch(base, patch, entry.size)
    except delta_format.DeltaFormatError as exc:
        raise DeltaError(f"{label}: {show_path(entry.path)}: {exc}") from None


def _bunzip_bounded(data: bytes, limit: int, where: str) -> bytes:
    decomp = bz2.BZ2Decompressor()
    out = decomp.decompress(data, limit + 1)
    if len(out) > limit:
        raise DeltaError(f"{where}: a bsdiff4 block decompresses to more than the signed size allows")
    if not decomp.eof:
        raise DeltaError(f"{where}: a bsdiff4 block is truncated")
    return out


# -- large files: whole-file patch limit and segments (client.delta_segments) ----------------------


def _check_whole_patch(source: _Sources, op: Op, entry: ManifestEntry, label: str) -> None:
    """A whole-file patch holds the base file and the output in memory: refuse one over
    ``WHOLE_PATCH_MAX`` on either side (the publisher segments such files), so that no delta can
    make the client allocate more than that bound."""
    size, limit = max(entry.size, source.base_entry(op).size), delta_segments.WHOLE_PATCH_MAX
    if size > limit:
        raise DeltaError(
            f"{label}: {show_path(entry.path)}: a whole-file {op.op} patch of a {size}-byte file is over the "
            f"{limit}-byte limit (larger files come as zstd-segments)"
        )


def _write_segments(dest_fd: int, entry: ManifestEntry, source: _Sources, op: Op, label: str) -> tuple[Digest, bool]:
    """Create ``entry`` from a ``zstd-segments`` op: the base file is hashed against the base
    manifest first (streamed), then each segment is decoded with its base region (``pread``) as
    prefix. Memory: one region and one segment at a time, whatever the file sizes."""
    base = source.base_entry(op)
    fd = source.open_base(op)
    try:
        got, overflow = copy_hashed(lambda n: os.read(fd, n), None, base.size)
        if overflow or got != Digest(base.size, base.sha256):
            raise source.modified(base, got, overflow)
        where = f"{label}: {show_path(entry.path)}"
        stream = _SegmentStream(source.payload_reader(op), op.length, fd, base.size, entry.size, where)
        got, overflow = _create_file(dest_fd, entry, stream.read)
        if not overflow:
            stream.finish()
    finally:
        os.close(fd)
    return got, overflow


class _SegmentStream:
    """The output of a ``zstd-segments`` op, segment after segment. Each record is checked
    (``delta_segments.parse_record``: sizes, base range, the signed size not exceeded) before its
    frame is read; each frame must decode to exactly its declared size."""

    def __init__(
        self, data: Callable[[int], bytes], length: int, base_fd: int, base_size: int, size: int, where: str
    ) -> None:
        self._data = data
        self._left = length  # op data bytes not taken yet
        self._base_fd = base_fd
        self._base_size = base_size
        self._undeclared = size  # output bytes no record has declared yet
        self._where = where
        self._count = 0
        self._frame: _ZstdStream | None = None
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
        self._left -= seg.length
        self._undeclared -= seg.size
        prefix = delta_segments.read_region(self._base_fd, seg) if seg.base_length else None
        if prefix is not None and len(prefix) != seg.base_length:
            raise DeltaError(f"{where}: the base file shrank while being read")
        self._frame = _ZstdStream(_limited(self._data, seg.length), prefix, seg.size, where)
        self._due = seg.size


def _limited(read: Callable[[int], bytes], length: int) -> Callable[[int], bytes]:
    """``read`` cut off after ``length`` bytes (then it returns ``b""``)."""
    left = length

    def take(n: int) -> bytes:
        nonlocal left
        data = read(min(n, left)) if left else b""
        left -= len(data)
        return data

    return take


class _ZstdStream:
    """Bounded streaming zstd decompression of one op (``prefix``: the base for patch-from).

    The decoder's window is capped by what base and output need, so a frame cannot make the
    client allocate more than the signed sizes justify."""

    def __init__(
        self, compressed: Callable[[int], bytes], prefix: bytes | bytearray | None, size: int, where: str
    ) -> None:
        window = delta_format.patch_window_log(len(prefix), size) if prefix else ZSTD_WINDOW_LOG
        try:
            zdict = pyzstd.ZstdDict(prefix, is_raw=True).as_prefix if prefix else None
            self._d = pyzstd.ZstdDecompressor(zstd_dict=zdict, option={pyzstd.DParameter.windowLogMax: window})
        except pyzstd.ZstdError as exc:
            raise DeltaError(f"{where}: cannot set up zstd ({exc})") from exc
        self._src = compressed
        self._where = where

    def read(self, n: int) -> bytes:
        try:
            while not self._d.eof:
                data = b""
                if self._d.needs_input:
                    data = self._src(CHUNK_SIZE)
                    if not data:
                        raise DeltaError(f"{self._where}: zstd data ends early (delta truncated)")
                out: bytes = self._d.decompress(data, n)
                if out:
                    return out
        except pyzstd.ZstdError as exc:
            raise DeltaError(f"{self._where}: bad zstd data ({exc})") from exc
        return b""

    def finish(self) -> None:
        """The op's bytes must be exactly one frame."""
        if not self._d.eof or self._d.unused_data or self._src(1):
            raise DeltaError(f"{self._where}: zstd data does not end with the output")


def _read_checked_header(
    delta: BinaryIO, label: str, base: Manifest, target: Manifest | None
) -> delta_format.DeltaHeader:
    """The validated header, checked against the manifests (``target`` None: only against ``base``).
    A file shorter than its header describes is reported as truncated."""
    try:
        header = delta_format.read_header(delta)
        if target is not None:
            header.check_against(target, base)
        elif parse_version(header.base_version) != parse_version(base.version) or header.base_content != base.content:
            raise delta_format.DeltaFormatError(f"delta is not from the installed {base.version}")
    except delta_format.DeltaFormatError as exc:
        text = str(exc)
        m = _SHORT.search(text)
        if "truncated" in text or "past the end" in text or (m is not None and int(m["holds"]) < int(m["should"])):
            raise DeltaError(f"{label}: delta truncated ({exc})") from exc
        raise DeltaError(f"{label}: {exc}") from exc
    return header


# -- the manifest inside a delta -------------------------------------------------------------------


def manifest_from_delta(
    delta_file: Path, base: Manifest, release: Release, base_tar: bytes | Path | None = None, skip: Iterable[str] = ()
) -> tuple[Manifest | None, Rebuilt | None]:
    """The manifest of ``release`` carried by the delta ``delta_file`` (built on ``base``) and, when
    it was derived from output decoded in memory (the whole-archive and solid kinds), that output
    (for :func:`apply_delta`); ``(None, None)`` if the delta carries none or it cannot be had here
    (the caller then downloads the signed manifest).

    A manifest patch is decoded with ``base``'s canonical JSON as prefix, bounded by the size its
    frame declares (at most ``MANIFEST_MAX``). Without one, a whole-archive frame is decoded in
    memory, at most ``release``'s signed content length (within ``ARCHIVE_MAX`` with the base's),
    with ``base_tar`` as prefix: the base's canonical tar, or the directory of its verified tree to
    rebuild it from, unless ``base`` ships files below the persistent paths ``skip`` (the slot links
    them away); the manifest is then the tar's entries, read by its exact canonical layout
    (``formats.archive.read_canonical_tar``), with ``release``'s version and content digest. A solid
    delta's skeleton comes as a patch; its stream is decoded with the base files of the tree
    ``base_tar`` as dictionary (a base that ships files below the persistent paths ``skip`` refuses
    it: LZMA needs every dictionary byte), and the hashes of the files it rebuilds complete the
    skeleton. Either way the JSON is compressed again at the level the header
    names and must then be exactly the signed manifest target ``release.manifest`` (length and
    sha256), and describe ``release`` (version, content digest). Raises :class:`DeltaError` (one
    line) otherwise: the caller falls back to the full artifact.
    """
    label = f"delta from {base.version}"
    rebuilt = None
    try:
        with open(delta_file, "rb") as f:
            header = _read_checked_header(f, label, base, None)
            if header.manifest is None:
                return None, None
            if header.manifest.length is None:  # the whole-archive kind: from the target tar
                tar = _archive_tar(f, header, base, release.content, base_tar, skip)
                if tar is None:
                    return None, None
                rebuilt = Rebuilt("tar", tar)
                data = Manifest(release.version, release.content, tuple(read_canonical_tar(tar))).to_bytes()
            elif header.solid is not None:  # the skeleton, completed with the hashes of the rebuilt files
                if not isinstance(base_tar, Path):
                    return None, None
                start, end = header.manifest_range()
                f.seek(start)
                skeleton = _parse_manifest(_manifest_json(f.read(end - start), base.to_bytes(), label), release, label)
                solid = _solid_from_dir(f, header, base, skeleton, base_tar, _holes(base, skip), label)
                rebuilt = Rebuilt("solid", solid)
                data = _complete_skeleton(skeleton, base, solid, label).to_bytes()
            else:
                start, end = header.manifest_range()
                f.seek(start)
                data = _manifest_json(f.read(end - start), base.to_bytes(), label)
    except OSError as exc:
        raise DeltaError(f"{label}: cannot read {delta_file.name} ({exc.strerror or exc})") from exc
    except DeltaError:
        raise
    except (InstallError, ArchiveError) as exc:
        raise DeltaError(f"{label}: {exc}") from exc
    signed = release.manifest
    again = release_compressor(header.manifest.level).compress(data)
    if len(again) != signed.length or hashlib.sha256(again).hexdigest() != signed.sha256:
        raise DeltaError(
            f"{label}: the manifest rebuilt from the delta is not the signed manifest of {release.version} "
            f"(sha256 {hashlib.sha256(again).hexdigest()[:16]}..., {len(again)} bytes; "
            f"signed {signed.sha256[:16]}..., {signed.length} bytes)"
        )
    return _parse_manifest(data, release, label), rebuilt


def _parse_manifest(data: bytes, release: Release, label: str) -> Manifest:
    """``data`` as the manifest of ``release`` (version and content digest)."""
    try:
        manifest = Manifest.from_bytes(data)
    except FormatError as exc:
        raise DeltaError(f"{label}: manifest of {release.version} is unusable: {exc}") from exc
    if manifest.version != release.version or manifest.content != release.content:
        raise DeltaError(f"{label}: the manifest in the delta does not describe {release.version}")
    return manifest


def _manifest_json(frame: bytes, prefix: bytes, label: str) -> bytes:
    """Decode the manifest patch: one zstd frame declaring its size (at most ``MANIFEST_MAX``), with
    ``prefix`` as raw prefix; exactly the declared bytes, nothing after the frame."""
    try:
        declared = pyzstd.get_frame_info(frame).decompressed_size
    except pyzstd.ZstdError:
        raise DeltaError(f"{label}: the manifest patch is not a zstd frame") from None
    if declared is None or declared > delta_format.MANIFEST_MAX:
        raise DeltaError(f"{label}: the manifest patch declares no size or more than {delta_format.MANIFEST_MAX} bytes")
    return _decode(_ZstdStream(io.BytesIO(frame).read, prefix, declared, f"{label}: manifest patch"), declared,
                   f"{label}: the manifest patch")


def _decode(stream: _ZstdStream, size: int, what: str) -> bytes:
    """The whole output of ``stream`` in memory: exactly ``size`` bytes (never more read), then the
    end of its frame and of its data."""
    chunks, left = [], size + 1
    while left and (chunk := stream.read(left)):
        chunks.append(chunk)
        left -= len(chunk)
    if left != 1:
        raise DeltaError(f"{what} does not decode to exactly {size} bytes")
    stream.finish()
    return b"".join(chunks)


# -- the whole-archive kind ------------------------------------------------------------------------


def _apply_archive(
    source: _Sources, header: delta_format.DeltaHeader, base: Manifest, target: Manifest, dest_fd: int,
    skip: frozenset[str], tar: bytes | None = None,
) -> None:
    """Rebuild ``target`` into ``dest_fd`` from a whole-archive delta: the base's canonical tar is
    written again from the base tree (every file checked against ``base``: a locally edited file
    stops it), used as the zstd prefix of the frame, whose output (at most the signed
    ``target.content`` length is read) is extracted by its canonical layout; or ``tar``, that
    output already rebuilt and read by :func:`manifest_from_delta` (every file hashed there, and
    the manifest built from them is the signed one), is extracted the same way, without hashing
    its files a second time.
    Memory: the base tar (held twice while zstd takes its copy) and a decoder window of
    ``patch_window_log`` of both sizes, all bounded by ``ARCHIVE_MAX`` of signed sizes.

    Neither tar is hashed as a whole (each would be one more pass over every byte): the base tar is
    exact once each base file matched its sha256, and the output is checked by its known layout
    (:func:`pinnacle_updates.formats.tree.extract_canonical`: every header and padding byte equal to the canonical
    one, every file's sha256), which proves the same as its digest would.

    Persistent paths ``skip`` that the base shipped are no longer in the slot (they link to
    ``data/``): their file bytes are zeros in the rebuilt base tar, and the target's are not
    written; an output byte that depended on a zero is in a file not written, or fails its hash."""
    label = source.label
    if tar is None:
        _check_archive_size(base, target.content, label)
        old = _base_tar(source.base_fd, base, _holes(base, skip), label)
        zstd = _ZstdStream(source.payload_reader_range(*header.archive_range(), "the archive"), old,
                           target.content.length, f"{label}: archive")
        del old
        read: Callable[[int], bytes] = zstd.read
    else:
        zstd, read = None, io.BytesIO(tar).read
    try:
        extract_canonical(read, dest_fd, target, skip, hashed=tar is None)  # ``tar``'s files are hashed
        if zstd is not None:
            zstd.finish()
    except DeltaError:
        raise
    except (InstallError, ArchiveError) as exc:
        raise DeltaError(f"{label}: {exc}") from exc


def _check_archive_size(base: Manifest, content: Digest, label: str) -> None:
    if base.content.length + content.length > delta_format.ARCHIVE_MAX:
        raise DeltaError(
            f"{label}: whole-archive delta over {base.content.length + content.length} bytes of tars "
            f"(limit {delta_format.ARCHIVE_MAX})"
        )


def _base_tar(base_fd: int, base: Manifest, holes: frozenset[str], label: str, check_files: bool = True) -> bytearray:
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


def _archive_tar(
    f: BinaryIO, header: delta_format.DeltaHeader, base: Manifest, content: Digest, base_tar: bytes | Path | None,
    skip: Iterable[str],
) -> bytes | None:
    """The target tar of the whole-archive delta ``f`` decoded in memory (:func:`manifest_from_delta`),
    or None when no base tar is to be had."""
    label = f"delta from {base.version}"
    _check_archive_size(base, content, label)
    old: bytes | bytearray | None = None if isinstance(base_tar, Path) else base_tar
    if isinstance(base_tar, Path) and not _holes(base, skip):
        fd = os.open(base_tar, _DIR_FLAGS)
        try:  # not hashed again: the installer checked the tree (base_problem) before the download, and
            # a file changed since makes a tar whose manifest is not the signed one (the delta is refused)
            old = _base_tar(fd, base, frozenset(), label, check_files=False)
        finally:
            os.close(fd)
    if old is None:
        return None
    start, end = header.archive_range()
    f.seek(start)
    stream = _ZstdStream(_limited(f.read, end - start), old, content.length, f"{label}: archive")
    del old
    return _decode(stream, content.length, f"{label}: the archive")



# -- the solid kind --------------------------------------------------------------------------------


def _solid_data(
    source: _Sources, header: delta_format.DeltaHeader, base: Manifest, target: Manifest, holes: frozenset[str],
    check_files: bool,
) -> bytearray:
    """The bytes of the files a solid delta's stream rebuilds (``delta_format.solid_layout`` of
    ``base`` and ``target``'s entries: the signed manifest's or the skeleton's), decoded with the base
    files below ``source.base_fd`` as the dictionary (zeros below ``holes``; with ``check_files``
    every one hashed against ``base``, else only its size checked). Memory: the dictionary and the
    output, bounded like a whole-archive delta by ``ARCHIVE_MAX`` of signed tar lengths, the output
    also by ``target``'s signed content length."""
    label = source.label
    _check_archive_size(base, target.content, label)
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


def _check_no_holes(base: Manifest, holes: frozenset[str], label: str) -> None:
    """A solid stream cannot be decoded with bytes of its dictionary missing: unlike a zstd frame,
    whose matches would only copy wrong bytes, LZMA's model depends on every byte it has seen, so
    the whole output would be garbage. Refused at once (the installer falls back to the full
    artifact) when the base shipped a non-empty file below a persistent path, which the slot links away."""
    for e in base.entries:
        if e.type is EntryType.FILE and e.size and _under(e.path, holes):
            raise DeltaError(f"{label}: a solid delta needs the base file {show_path(e.path)}, which is below a "
                             "persistent path and not in the slot")


def _solid_from_dir(
    f: BinaryIO, header: delta_format.DeltaHeader, base: Manifest, skeleton: Manifest, base_root: Path,
    holes: frozenset[str], label: str,
) -> bytearray:
    """:func:`_solid_data` for :func:`manifest_from_delta`, from the verified tree at ``base_root``.
    Base files are not hashed again: the installer checked the tree before the download, and a file
    changed since makes output whose manifest is not the signed one (the delta is refused)."""
    fd = os.open(base_root, _DIR_FLAGS)
    try:
        source = _Sources(f, header.payload_start, fd, base.by_path(), label)
        return _solid_data(source, header, base, skeleton, holes, check_files=False)
    finally:
        os.close(fd)


def _complete_skeleton(skeleton: Manifest, base: Manifest, solid: bytes | bytearray, label: str) -> Manifest:
    """``skeleton`` with the sha256 of each file the solid stream rebuilt (``solid``, in layout order).
    A rebuilt file may not have a base file's sha256 (the publisher copies those): the completed
    manifest then gives :func:`_apply_solid` exactly the skeleton's layout, so the bytes hashed here
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


def _apply_solid(
    source: _Sources, header: delta_format.DeltaHeader, base: Manifest, target: Manifest, dest_fd: int,
    skip: frozenset[str], solid: bytes | bytearray | None,
) -> None:
    """Rebuild ``target`` but its persistent paths ``skip`` (decoded, never written) into ``dest_fd``
    from a solid delta: each file from the base file with its sha256 (hashed while copied) or from
    the stream's output: ``solid``, when :func:`manifest_from_delta` decoded it and hashed every file
    (:func:`_complete_skeleton`), written as is; else decoded here, with every dictionary file
    hashed against ``base`` and every output hashed while written."""
    label = source.label
    layout = delta_format.solid_layout(base, target.entries)
    hashed = solid is None
    if solid is None:
        solid = _solid_data(source, header, base, target, _holes(base, skip), check_files=True)
    if len(solid) < layout.size:
        raise DeltaError(f"{label}: the solid stream holds {len(solid)} bytes, the files need {layout.size}")
    view, offset, ranges = memoryview(solid), 0, {}
    for entry in layout.solid:
        ranges[entry.path] = view[offset : offset + entry.size]
        offset += entry.size
    for entry in target.entries:
        if _under(entry.path, skip):
            continue
        if entry.type is not EntryType.FILE:
            create_entry(dest_fd, entry)
        elif entry.path in layout.copies:
            _write_output(dest_fd, entry, source, Op(entry.path, delta_format.OpKind.COPY,
                                                     layout.copies[entry.path].path), label)
        else:
            try:
                write_file(dest_fd, entry, io.BytesIO(ranges[entry.path]).read, hashed)
            except (InstallError, ArchiveError) as exc:
                raise DeltaError(f"{label}: the solid stream rebuilt other bytes: {exc}") from None
