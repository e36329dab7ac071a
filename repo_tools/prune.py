"""``prune``: delete metadata versions that no client can use any more.

Consistent snapshots keep every version of every role (``N.stable.json``, ``N.snapshot.json``, ...)
so that a client in the middle of a refresh finds the files the snapshot it read names. A
snapshot stops being usable when it expires: ngclient refuses an expired snapshot, whatever
timestamp points at it. So the versions to keep are those of every snapshot that has not
expired, plus every role version such a snapshot lists; all other non-root versions can go.
Root versions always stay (clients walk the chain from the root they ship), as do targets (an
archived release's files are reached through its record, and content-addressed files are small
next to what they would save only for killed publishes).

The decision (:func:`plan`) reads only signed metadata; :func:`prune` runs it under the publisher
lock, so a publish cannot add a snapshot between the plan and the deletion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Snapshot
from tuf.api.serialization import DeserializationError

from pinnacle_updates.formats.fsutil import fsync_dir

from .store import Repository

_VERSIONED = re.compile(r"^(?P<version>\d+)\.(?P<role>.+)\.json$")


@dataclass
class PrunePlan:
    delete: list[Path] = field(default_factory=list)
    kept_snapshots: list[int] = field(default_factory=list)
    freed: int = 0

    def to_dict(self, root: Path, done: bool) -> dict[str, Any]:
        return {"deleted" if done else "would_delete": [str(p.relative_to(root)) for p in self.delete],
                "files": len(self.delete), "bytes": self.freed, "kept_snapshots": self.kept_snapshots}


def plan(repo: Repository, now: datetime) -> PrunePlan:
    """What to delete: non-root metadata versions that no unexpired snapshot needs."""
    state = repo.load()
    result = PrunePlan()

    def load(name: str) -> bytes | None:
        try:
            return (repo.metadata_dir / name).read_bytes()
        except OSError:
            return None

    names = [path.name for path in repo.metadata_dir.iterdir()]
    delete, result.kept_snapshots = retention(state.snapshot.signed, names, load, now)
    for name in delete:
        path = repo.metadata_dir / name
        result.delete.append(path)
        result.freed += path.stat().st_size
    return result


def retention(current: Snapshot, names: Iterable[str], load: Callable[[str], bytes | None],
              now: datetime) -> tuple[list[str], list[int]]:
    """The retention rule, for any copy of ``metadata/`` (the publisher's directory, a bucket):
    which of ``names`` to delete, and the snapshot versions kept. ``current`` is the snapshot
    being served; ``load(name)`` returns a snapshot file's bytes (None: unreadable or gone)."""
    keep: set[tuple[str, int]] = {("snapshot", current.version)}
    keep.update((name.removesuffix(".json"), info.version) for name, info in current.meta.items())
    found: list[tuple[str, str, int]] = []
    for name in names:
        m = _VERSIONED.match(name)
        if m is None or m["role"] == "root":
            continue
        role, version = m["role"], int(m["version"])
        found.append((name, role, version))
        if role != "snapshot" or version == current.version:
            continue
        data = load(name)
        try:
            snapshot = Metadata.from_bytes(data) if data is not None else None
        except DeserializationError:
            snapshot = None  # unreadable: no client can use it either
        signed = snapshot.signed if snapshot is not None else None
        if isinstance(signed, Snapshot) and not signed.is_expired(now):
            keep.add(("snapshot", version))
            keep.update((name.removesuffix(".json"), info.version) for name, info in signed.meta.items())
    delete: list[str] = []
    kept: list[int] = []
    for name, role, version in sorted(found):
        if (role, version) in keep:
            if role == "snapshot":
                kept.append(version)
            continue
        if role == "snapshot" or version < _current_version(current, role):
            delete.append(name)
    return delete, sorted(kept)


def _current_version(current: Snapshot, role: str) -> int:
    """The committed version of ``role`` (a file newer than it is a killed publish's orphan: the
    next publish overwrites it, so it is left alone)."""
    info = current.meta.get(f"{role}.json")
    return int(info.version) if info is not None else 1 << 62


def prune(repo: Repository, now: datetime, dry_run: bool = False) -> dict[str, Any]:
    with repo.locked():
        result = plan(repo, now)
        if not dry_run:
            for path in result.delete:
                path.unlink(missing_ok=True)
            fsync_dir(repo.metadata_dir)
    return result.to_dict(repo.path, done=not dry_run)


__all__ = ["PrunePlan", "plan", "prune", "retention"]
