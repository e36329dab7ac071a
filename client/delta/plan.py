"""Planning a delta update on the client: the cheapest way to a release, by signed bytes.

:func:`plan_update` is pure: from the signed channel index alone (sizes of deltas, manifests and
full artifacts are all signed), it picks the path with the fewest bytes to download: the full
artifact, one delta from the installed release, or a chain of deltas through intermediate releases
(Dijkstra over releases; an edge into release X costs the delta's length: the delta carries X's
manifest, against which the rebuilt tree is verified, as a patch of its base's manifest or, in the
whole-archive kind, as the target tar it rebuilds). :func:`base_problem` says, before any download,
whether the installed tree can serve as a base at all.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from pinnacle_updates.formats.index import DeltaRef, Manifest, Release, parse_version
from pinnacle_updates.formats.tree import verify_tree

_Node = tuple[Version, str]
"""A release as a planning node: (version, content sha256)."""

MAX_CHAIN = 8
"""Deltas applied in one update at most: each step rebuilds a whole tree on disk."""


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


__all__ = ["MAX_CHAIN", "DeltaStep", "UpdatePath", "base_problem", "full_cost", "plan_update"]
