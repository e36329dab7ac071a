"""``sync REPO_DIR DEST``: copy a repository to another directory or a mounted bucket in the
order that keeps DEST valid for clients at every instant.

A client reads ``timestamp.json`` first and follows it down (snapshot, roles, targets), so DEST
must never hold a timestamp naming files it does not have yet. Files go in this order:

1. targets (content-addressed names: nothing served refers to them yet),
2. targets-role metadata (``N.targets.json``, ``N.<channel>.json``),
3. root versions, oldest first (a client walks ``N+1.root.json`` before anything else),
4. snapshots,
5. ``timestamp.json`` last: the commit point, exactly as on the publishing machine.

One exception keeps key rotations safe: a client fetches ``N+1.root.json`` before the timestamp,
so a new root that changes the timestamp, snapshot or targets keys must not be served next to a
timestamp signed only by the old keys. When the new timestamp (with the snapshot and targets it
names) also verifies under every root a client may hold meanwhile (``root publish`` dual-signs
it for this), the new root versions go *after* the timestamp; otherwise in the order above, and
the few renames between the last root and the timestamp are the only unsafe instant.

``timestamp.json`` is read *before* the source tree is listed, so a publish running at the same
time cannot make this sync install a timestamp whose files were not copied. Each file is written
to a temporary name at DEST and renamed into place, so a sync killed at any point leaves DEST
serving the previous consistent state; running it again finishes the job. Unchanged files are
skipped: content-addressed targets by name and size, metadata by content (a killed publish may
leave an orphan ``N.<role>.json`` that the next publish rewrites with other bytes).

Nothing is deleted at DEST: old versions stay valid for clients that are mid-update.

The order is defined here once (:func:`upload_order`, :func:`stages`, :func:`content_addressed`);
:mod:`repo_tools.objectstore` uploads to an S3 bucket with the same functions.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Snapshot, Timestamp

from pinnacle_updates.formats.fsutil import TEMP_PREFIX, atomic_write, atomic_writer, remove_stale_temps
from pinnacle_updates.formats.progress import Progress

from .errors import RepositoryStateError

_CONTENT_ADDRESSED = re.compile(r"^[0-9a-f]{64}\.")
_VERSIONED = re.compile(r"^(?P<version>\d+)\.(?P<role>.+)\.json$")
_SKIP_PREFIXES = (".", TEMP_PREFIX)

# The order of the copy, lowest first; see the module docstring.
TARGETS, ROLES, ROOTS, SNAPSHOTS, TIMESTAMP = range(5)


@dataclass(frozen=True)
class SyncItem:
    relative: str
    rank: int
    version: int = 0


def plan(source: Path) -> list[SyncItem]:
    """Every file to publish from ``source``, in upload order (timestamp last)."""
    items: list[SyncItem] = []
    for relative in _walk(source):
        items.append(_classify(relative))
    return sorted(items, key=lambda i: (i.rank, i.version, i.relative))


def upload_order(source: Path, timestamp: bytes, served: Callable[[str], bool],
                 read_served: Callable[[str], bytes]) -> list[SyncItem]:
    """Every file of ``source`` in the order it must reach a destination: :func:`plan`, with the
    key-rotation exception of the module docstring applied. ``served(relative)`` says whether the
    destination has that file, ``read_served(relative)`` returns its bytes there (asked only for
    the newest root it serves). The one definition of the order, for every kind of destination."""
    items = plan(source)
    if _timestamp_before_roots(source, items, timestamp, served, read_served):
        items = [i for i in items if i.rank != ROOTS] + [i for i in items if i.rank == ROOTS]
    return items


def stages(items: list[SyncItem]) -> list[list[SyncItem]]:
    """``items`` (in :func:`upload_order`) cut into the steps a destination that uploads in parallel
    takes one after another, each only once every upload of the one before is confirmed: a run of
    files of the same rank is one step, except root versions, one per step (oldest first), and
    ``timestamp.json``, always a step of its own."""
    out: list[list[SyncItem]] = []
    for item in items:
        if out and out[-1][0].rank == item.rank and item.rank not in (ROOTS, TIMESTAMP):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def content_addressed(item: SyncItem) -> bool:
    """A target whose name starts with the sha256 of its content: same name and size, same file."""
    return item.rank == TARGETS and _CONTENT_ADDRESSED.match(item.relative.rpartition("/")[2]) is not None


def _walk(source: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(_SKIP_PREFIXES))
        for name in sorted(filenames):
            if not name.startswith(_SKIP_PREFIXES):
                yield str((Path(dirpath) / name).relative_to(source))


def _classify(relative: str) -> SyncItem:
    directory, _, name = relative.rpartition("/")
    if directory != "metadata":
        return SyncItem(relative, TARGETS)
    if name == "timestamp.json":
        return SyncItem(relative, TIMESTAMP)
    m = _VERSIONED.match(name)
    if m is None:
        return SyncItem(relative, ROLES)
    rank = {"root": ROOTS, "snapshot": SNAPSHOTS}.get(m["role"], ROLES)
    return SyncItem(relative, rank, int(m["version"]))


def _unchanged(src: Path, dest: Path, item: SyncItem) -> bool:
    try:
        size = dest.stat().st_size
    except FileNotFoundError:
        return False
    if size != src.stat().st_size:
        return False
    if content_addressed(item):
        return True  # the name is the sha256 of the content, and DEST only ever gets whole files
    return _sha256(src) == _sha256(dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _timestamp_before_roots(source: Path, items: list[SyncItem], timestamp: bytes, is_served: Callable[[str], bool],
                            read_served: Callable[[str], bytes]) -> bool:
    """Whether the new timestamp chain is valid under DEST's root and every new root but the last."""
    new = [i for i in items if i.rank == ROOTS and not is_served(i.relative)]
    served = [i for i in items if i.rank == ROOTS and is_served(i.relative)]
    if not new or not served:
        return False  # no root change, or a fresh DEST that serves nothing yet
    try:
        ts = Metadata[Timestamp].from_bytes(timestamp)
        snap = Metadata[Snapshot].from_bytes((source / "metadata" / f"{ts.signed.snapshot_meta.version}.snapshot.json")
                                   .read_bytes())
        top = Metadata.from_bytes((source / "metadata" / f"{snap.signed.meta['targets.json'].version}.targets.json")
                                  .read_bytes())
        for item in [served[-1], *new[:-1]]:
            root = Metadata.from_bytes(read_served(item.relative) if item in served
                                       else source.joinpath(item.relative).read_bytes())
            for role, md in (("timestamp", ts), ("snapshot", snap), ("targets", top)):
                root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
    except Exception:
        return False
    return True


def file_progress(source: Path, progress: Progress,
                  also: Callable[[str, str], None] | None = None) -> Callable[[str, str], None]:
    """A per-file callback for ``sync`` and ``objectstore.sync_s3`` that reports phase ``sync`` (files,
    out of every file of ``source``) to ``progress``, then calls ``also`` (e.g. ``--verbose`` lines)."""
    progress.start("sync", len(plan(Path(source))), "files")

    def on_file(action: str, relative: str) -> None:
        if action in ("copied", "skipped"):  # not multipart parts or pruned files: those are no upload
            progress.advance()
        if also is not None:
            also(action, relative)

    return on_file


def sync(source: Path, dest: Path, progress: Callable[[str, str], None] | None = None,
         dry_run: bool = False) -> dict[str, Any]:
    """Copy ``source`` (a repository) to ``dest`` in upload order; return counts.

    ``progress(action, relative_path)`` is called after each file ("copied"/"skipped"; with
    ``dry_run`` nothing is written and "copied" means "would be copied")."""
    source, dest = Path(source).resolve(), Path(dest).resolve()
    if dest == source or source in dest.parents or dest in source.parents:
        raise RepositoryStateError(f"{dest} and {source} overlap: sync needs two separate directories")
    try:
        timestamp = (source / "metadata" / "timestamp.json").read_bytes()
    except FileNotFoundError:
        raise RepositoryStateError(f"{source} is not an initialised repository (no metadata/timestamp.json)") from None
    items = upload_order(source, timestamp, lambda relative: (dest / relative).exists(),
                         lambda relative: (dest / relative).read_bytes())
    copied = skipped = copied_bytes = 0
    try:
        for item in items:
            src, out = source / item.relative, dest / item.relative
            if item.rank == TIMESTAMP:
                changed = not out.exists() or out.read_bytes() != timestamp
            else:
                changed = not _unchanged(src, out, item)
            if changed and not dry_run:
                out.parent.mkdir(parents=True, exist_ok=True)
                if item.rank == TIMESTAMP:
                    atomic_write(out, timestamp)  # the bytes read before listing, see the docstring
                else:
                    with open(src, "rb") as f, atomic_writer(out) as w:
                        shutil.copyfileobj(f, w, 1 << 20)
            if changed:
                copied += 1
                copied_bytes += (len(timestamp) if item.rank == TIMESTAMP else src.stat().st_size)
            else:
                skipped += 1
            if progress is not None:
                progress("copied" if changed else "skipped", item.relative)
    except OSError as exc:
        raise RepositoryStateError(f"sync to {dest} failed: {exc.strerror or exc} ({exc.filename or ''}); "
                                   "DEST still serves its previous state, run sync again") from exc
    for directory in {(dest / i.relative).parent for i in items} if not dry_run else ():
        remove_stale_temps(directory)  # what an earlier, killed sync left (one sync at a time per DEST)
    return {"source": str(source), "dest": str(dest), "copied": copied, "skipped": skipped,
            "copied_bytes": copied_bytes, "dry_run": dry_run}
