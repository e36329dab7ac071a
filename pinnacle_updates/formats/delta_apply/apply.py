"""Applying deltas: rebuild a release safely, from one delta or a chain of them (the client, to
install; the publisher's ``verify --deep``, to check every delta it serves against its signed manifest).

Before a delta is applied, the manifest it carries is rebuilt (:func:`manifest_from_delta`: from the
patch, or read from the target tar the whole-archive frame rebuilds in memory, or the solid kind's
skeleton completed from its stream) and compressed again; it is used only when that is byte for
byte the signed manifest target of the release (length and sha256 from the signed channel index), so
nothing is trusted that the full path would not trust.

Applying (:func:`apply_delta`) writes one release tree into an *empty* directory from a delta
container (``formats.delta_format``, see docs/ARCHITECTURE.md "Deltas") and the base release's tree,
through the applier :mod:`.kinds` registers for the container's kind: file by file (the per-file
kinds), by rebuilding the base's canonical tar from the verified base tree and streaming the patched
target tar through the strict extraction of a full artifact (the whole-archive kind), or from one
LZMA stream with the base files as dictionary (the solid kind). Nothing in the delta is trusted
beyond being a signed blob: sizes, modes and hashes come from the signed target manifest; every base
file is hashed against the base release's manifest before its bytes are used (a locally edited file
is never patched); every output is bounded by the signed size while it is produced, so a malicious
patch cannot write or allocate more. Any failure is a :class:`DeltaError`, one line naming the file
and cause (the client then falls back to the full artifact), or an ``ArchiveError`` when the tree
rules refuse the target manifest itself (no fallback helps).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from pinnacle_updates.formats.archive import ArchiveError, manifest_problems, release_compressor
from pinnacle_updates.formats.index import Manifest, Release
from pinnacle_updates.formats.tree import finish_tree

from .errors import DeltaError
from .jobs import ApplyJob, ManifestJob, Rebuilt
from .kinds import CONTAINER_APPLIERS
from .manifest import parse_manifest
from .streams import DIR_FLAGS, Sources, read_checked_header, under


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
    base file with the same sha256), ``bsdiff-lzma``, ``bsdiff-shared``, ``bsdiff4``, ``zstd-patch`` or
    ``zstd-segments`` (a base file patched) or ``zstd`` (a new file); in the whole-archive kind from
    the target tar, in the solid kind from the base file with the same sha256 or the LZMA stream
    (:mod:`.kinds` names the applier of each). Base files are opened below
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
        tuple(e for e in target_manifest.entries if not under(e.path, skipped)),
    )
    problems = manifest_problems(target_manifest.entries)
    if problems:
        raise DeltaError(f"{label}: target manifest {target_manifest.version} rejected: {problems[0]}")
    try:
        with contextlib.ExitStack() as stack:
            delta = stack.enter_context(open(delta_file, "rb"))
            header = read_checked_header(delta, label, base_manifest, target_manifest)
            base_fd = os.open(base_root, DIR_FLAGS)
            stack.callback(os.close, base_fd)
            dest_fd = os.open(dest, DIR_FLAGS)
            stack.callback(os.close, dest_fd)
            if os.listdir(dest_fd):
                raise DeltaError(f"{label}: {dest} is not empty")
            source = Sources(delta, header.payload_start, base_fd, base_manifest.by_path(), label)
            job = ApplyJob(source, header, base_manifest, target_manifest, wanted, dest_fd, skipped, rebuilt)
            CONTAINER_APPLIERS[header.kind].apply(job)
            finish_tree(dest_fd, wanted)
    except DeltaError:
        raise
    except ArchiveError as exc:  # the tree rules refused an entry: not a delta problem (no fallback helps)
        raise ArchiveError(f"{label}: {exc}") from exc
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
    try:
        with open(delta_file, "rb") as f:
            header = read_checked_header(f, label, base, None)
            if header.manifest is None:
                return None, None
            job = ManifestJob(f, header, base, release, base_tar, skip, label)
            read = CONTAINER_APPLIERS[header.kind].manifest(job)
            if read is None:
                return None, None
            data, rebuilt = read
    except OSError as exc:
        raise DeltaError(f"{label}: cannot read {delta_file.name} ({exc.strerror or exc})") from exc
    except DeltaError:
        raise
    except ArchiveError as exc:
        raise DeltaError(f"{label}: {exc}") from exc
    signed = release.manifest
    again = release_compressor(header.manifest.level).compress(data)
    if len(again) != signed.length or hashlib.sha256(again).hexdigest() != signed.sha256:
        raise DeltaError(
            f"{label}: the manifest rebuilt from the delta is not the signed manifest of {release.version} "
            f"(sha256 {hashlib.sha256(again).hexdigest()[:16]}..., {len(again)} bytes; "
            f"signed {signed.sha256[:16]}..., {signed.length} bytes)"
        )
    return parse_manifest(data, release, label), rebuilt


__all__ = ["apply_chain", "apply_delta", "manifest_from_delta"]
