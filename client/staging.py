"""Staging: a release written into the inactive slot and verified, up to the saved TRIAL.

The write-ahead steps (``client.slots`` holds the transition table)::

    manifest (delta path: the deltas, which carry it) -> pre-checks (space, permissions)
    -> save DOWNLOADING -> download (progress) -> save STAGING (target slot listed empty)
    -> wipe + write the inactive slot (deltas, or the full artifact; a failed delta falls back
       to the full artifact once) -> verify the slot against the manifest -> link persistent paths
    -> save STAGED -> pre_install -> [baseline latency] -> save TRIAL

Any failure before TRIAL discards the target slot's partial content and saves FAILED
(``abort``); the running slot is never written (``InstallDir.wipe_slot`` refuses it).
What follows TRIAL (swap, health, commit or rollback) is ``client.activation``.

Persistent paths: each top-level name in ``persistent_paths`` (default ``logs uploads temp``) is,
in every slot, a symlink ``NAME -> ../../data/NAME``, so all slots see the same files and an update
never overwrites them. A release that ships content under such a name seeds ``data/NAME`` with it
only when ``data/NAME`` does not exist yet; otherwise the shipped copy is dropped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinnacle_updates.client import backups
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.delta import (
    DeltaError,
    Rebuilt,
    UpdatePath,
    apply_chain,
    base_problem,
    manifest_from_delta,
)
from pinnacle_updates.client.errors import InstallError, StateError, UpdateError
from pinnacle_updates.client.hooks import measure_latency
from pinnacle_updates.client.install_dir import Part, mib, one_line
from pinnacle_updates.client.results import Progress
from pinnacle_updates.client.slots import SlotState, State
from pinnacle_updates.client.trust import RepositoryClient, cache_name
from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.archive import ArchiveError
from pinnacle_updates.formats.index import Manifest, Release
from pinnacle_updates.formats.tree import extract_release, tree_size, verify_tree

SPACE_SLACK = 1024 * 1024
"""Bytes kept free beyond the estimate (metadata, state file, history)."""


@dataclass(frozen=True)
class StageRequest:
    """What to stage: the release, the operation it is for (``install``, ``repair``; recorded in the
    state), when the operation started, its progress callback and the delta plan (None: full artifact)."""

    release: Release
    kind: str
    started: float
    progress: Progress | None = None
    plan: UpdatePath | None = None


@dataclass(frozen=True)
class Staged:
    """A release staged in the inactive slot, with TRIAL saved: what activation starts from."""

    state: SlotState
    route: dict[str, Any]
    """How the slot was written: ``path``, ``update_path``, ``fallback_reason``, bytes downloaded and saved."""
    downloaded: int
    baseline: float | None
    """The active release's health latency before the swap (None: not measured)."""


@dataclass
class Fetched:
    """What ``Stager`` downloaded: delta files with the manifests they rebuild (and the base tree
    they apply to), or the full artifact; ``fallback`` says why deltas were dropped."""

    plan: UpdatePath | None
    steps: list[tuple[Path, Manifest]] = field(default_factory=list)
    base: tuple[Path, Manifest] | None = None
    rebuilt: Rebuilt | None = None  # what manifest_from_delta decoded from the last step, for the apply
    artifact: Path | None = None
    fallback: str = ""


class Stager(Part):
    """Downloads, writes and verifies a release into the inactive slot of ``site``."""

    def stage(self, client: RepositoryClient, cfg: ClientConfig, s: SlotState, request: StageRequest) -> Staged:
        """Download and stage the release in the inactive slot (by the plan's deltas when it has
        any, else or on any delta failure the full artifact), verify it, and save TRIAL. On the
        delta path the deltas come first: they carry the manifest (checked against the signed one)."""
        release, kind, started, progress, plan = (request.release, request.kind, request.started, request.progress,
                                                  request.plan)
        site = self.site
        bytes_before = client.stats.bytes
        site.emit("step", step="manifest", version=release.version)
        target = s.next_slot
        self.check_writable()
        if plan is not None and plan.steps:  # before the deltas arrive: the tar length stands in for the tree
            self.check_space(s, release, target, download=plan.total_bytes, tree=release.content.length)
        clock = time.monotonic()  # download and apply times go into the history (and fleet reports)
        fetched = self.download_deltas(client, cfg, s, release, plan, site.progress(progress))
        manifest = fetched.steps[-1][1] if fetched.steps else client.fetch_manifest(release)
        cached = fetched.steps or os.path.isfile(self.layout.cache / cache_name(release.full.path))
        self.check_space(s, release, target, download=0 if cached else release.full.length, tree=tree_size(manifest))
        snapshot = wants_snapshot(cfg, release)
        if snapshot:
            self.check_snapshot_space(cfg)
        s = site.save(sm.begin_install(s, release.version, release.content.sha256, kind, release.entry_point,
                                       snapshot=snapshot, migration=release.migration))
        baseline: float | None = None
        try:
            on_progress = site.progress(progress)
            if not fetched.steps:
                site.emit("step", step="download", version=release.version, total=release.full.length, path="full")
                fetched.artifact = client.fetch_target(release.full, on_progress)
            downloaded_at = time.monotonic()
            s = site.save(sm.begin_staging(s))  # write-ahead: the slot is listed empty first
            site.emit("step", step="staging", slot=target)
            slot_dir = site.wipe_slot(s, target)
            route = self.write_slot(client, cfg, s, release, manifest, fetched, on_progress)
            site.emit("step", step="verify", slot=target)
            problems = verify_tree(slot_dir, manifest, skip=route.pop("skip"))
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise InstallError(f"slot {target} does not match release {release.version}: {problems[0]}{more}")
            self.link_persistent(slot_dir, cfg.persistent_paths)
            route.update(download_seconds=round(downloaded_at - clock, 3),
                         apply_seconds=round(time.monotonic() - downloaded_at, 3))
            site.store_manifest(manifest)
            s = site.save(sm.mark_staged(s))
            site.emit("step", step="staged", slot=target, version=release.version)
            pre = site.hook("pre_install", cfg, site.hook_context(s, target, release.version))
            if not pre.ok:
                raise InstallError(f"{pre.describe()}; nothing was changed")
            if cfg.integer("max_latency_ms") > 0 and cfg.text("health_url"):
                baseline = measure_latency(cfg.text("health_url"), cfg.number("health_timeout"))
            s = site.save(sm.begin_trial(s))  # write-ahead: saved before the link moves
        except (UpdateError, OSError) as exc:
            reason = one_line(exc)
            self.abort(s, reason, kind, release, started)
            if isinstance(exc, OSError):
                raise InstallError(f"install of {release.version} failed: {reason}; nothing was changed") from exc
            raise
        downloaded = client.stats.bytes - bytes_before
        full_bytes = plan.full_bytes if plan is not None else release.full.length + release.manifest.length
        route.update(bytes_downloaded=downloaded, bytes_saved=full_bytes - downloaded)
        return Staged(s, route, downloaded, baseline)

    def download_deltas(
        self,
        client: RepositoryClient,
        cfg: ClientConfig,
        s: SlotState,
        release: Release,
        plan: UpdatePath | None,
        on_progress: Progress,
    ) -> Fetched:
        """Download the deltas of ``plan`` (before the pre-checks: they carry the manifests) and
        rebuild from each the manifest of the release it rebuilds, checked against that release's
        signed manifest target (:func:`client.delta.manifest_from_delta`; downloaded only when a
        delta carries none, or is a whole-archive or solid one whose base cannot be had: a base
        that ships persistent paths, or, for a whole-archive step, one a per-file or solid step
        rebuilds, for a solid step, any but the installed tree). What the last step decoded in
        memory for its manifest (a target tar, or a solid stream's files) is kept for the apply.
        Nothing to do without delta steps.

        Deltas are only tried when the active slot still matches its manifest (a locally edited
        base is never patched); any failure to get them (404, verification, network, a manifest
        that does not match) leaves ``steps`` empty and names the cause in ``fallback``."""
        site = self.site
        fetched = Fetched(plan)
        if plan is None or not plan.steps or s.active is None or s.active_content is None:
            return fetched
        site.emit("step", step="download", version=release.version, total=plan.total_bytes, path=plan.describe())
        try:
            base_manifest = site.manifest_for(s.active_content, cfg, None) or client.fetch_manifest(
                site.find_release(client, cfg, s.active_content)
            )
            fetched.base = (self.layout.slot(s.active), base_manifest)
            fetched.fallback = base_problem(fetched.base[0], base_manifest, cfg.persistent_paths) or ""
            previous = base_manifest
            tar: bytes | Path | None = fetched.base[0]  # the canonical tar of ``previous``, or its tree
            for step in [] if fetched.fallback else plan.steps:
                rebuilds = release if step.release.content == release.content else step.release
                delta = client.fetch_target(step.delta.target, on_progress)
                manifest, fetched.rebuilt = manifest_from_delta(delta, previous, rebuilds, tar, cfg.persistent_paths)
                previous = manifest or client.fetch_manifest(rebuilds)
                tar = fetched.rebuilt.tar if fetched.rebuilt is not None else None
                fetched.steps.append((delta, previous))
        except DeltaError as exc:
            fetched.fallback = one_line(exc)
        except (UpdateError, OSError) as exc:
            fetched.fallback = f"delta download failed: {one_line(exc)}"
        if fetched.fallback:
            fetched.steps, fetched.rebuilt = [], None
            site.emit("delta_fallback", reason=fetched.fallback)
        return fetched

    def write_slot(
        self,
        client: RepositoryClient,
        cfg: ClientConfig,
        s: SlotState,
        release: Release,
        manifest: Manifest,
        fetched: Fetched,
        on_progress: Progress,
    ) -> dict[str, Any]:
        """Write ``release`` into the wiped target slot (state STAGING) from what was fetched; a
        delta that fails to apply wipes the slot again and the full artifact is used, once.

        Returns how: ``path`` (delta, chain or full), ``update_path``, ``fallback_reason`` when a
        delta was given up, and ``skip`` (persistent paths left out of the slot) for the caller."""
        slot_dir = self.layout.slot(s.next_slot)
        plan = fetched.plan
        if fetched.steps and fetched.base is not None and plan is not None:
            skip = tuple(n for n in cfg.persistent_paths if os.path.lexists(self.layout.data / n))
            rebuilt, fetched.rebuilt = fetched.rebuilt, None  # held no longer than the apply
            try:
                apply_chain(fetched.steps, *fetched.base, slot_dir, self.site.delta_work,
                            skip=skip, rebuilt=rebuilt)
                return {"path": plan.kind, "update_path": plan.describe(), "skip": skip}
            except DeltaError as exc:
                rebuilt, fetched.fallback = None, one_line(exc)
                self.site.emit("delta_fallback", reason=fetched.fallback)
                self.site.wipe_slot(s, s.next_slot)
                fetched.artifact = client.fetch_target(release.full, on_progress)
        assert fetched.artifact is not None
        try:
            extract_release(fetched.artifact, slot_dir, manifest)
        except ArchiveError as exc:
            raise InstallError(str(exc)) from exc
        route: dict[str, Any] = {"path": "full", "update_path": "full", "skip": ()}
        if fetched.fallback:
            route["fallback_reason"] = fetched.fallback
        return route

    def check_snapshot_space(self, cfg: ClientConfig) -> None:
        """Before the download: the data snapshot must fit (checked again when it is taken). With
        ``backup_required = false`` a snapshot that does not fit is skipped there instead."""
        if cfg.flag("backup_required"):
            backups.check_space(self.layout, cfg.persistent_paths)

    def check_writable(self) -> None:
        """Refuse, before touching anything, an install into directories it cannot write."""
        root = self.layout.root
        for path in (root, self.layout.slots_dir, self.layout.cache, self.layout.manifests, self.layout.data):
            if not os.access(path, os.W_OK | os.X_OK):
                raise InstallError(f"cannot write {path} (permission denied); nothing was changed")

    def check_space(self, s: SlotState, release: Release, target: str, *, download: int, tree: int) -> None:
        """Refuse, before anything is downloaded or wiped, an install the disk cannot hold, by
        ``space_problem`` over ``free_bytes`` (the one seam tests replace) and what the inactive
        slot occupies now."""
        root = self.layout.root
        try:
            free = self.free_bytes(root)
        except OSError as exc:
            raise InstallError(f"cannot read the free space of {root}: {one_line(exc)}; nothing was changed") from exc
        reclaim = _disk_size(self.layout.slot(target)) if target != s.active else 0
        problem = space_problem(free, reclaim, download, tree)
        if problem:
            raise InstallError(
                f"not enough free space in {root}: {release.version} {problem}; nothing was changed"
            )

    @staticmethod
    def free_bytes(path: Path) -> int:
        """Bytes free on the file system of ``path``."""
        return shutil.disk_usage(path).free

    def link_persistent(self, slot_dir: Path, names: tuple[str, ...]) -> None:
        """Make each persistent top-level path of the slot a link into ``data/`` (seeding it once)."""
        for name in names:
            inside = slot_dir / name
            shared = self.layout.data / name
            if os.path.lexists(inside):
                if not os.path.lexists(shared) and not inside.is_symlink():
                    os.rename(inside, shared)  # seed data/ with what the release ships
                elif inside.is_dir() and not inside.is_symlink():
                    shutil.rmtree(inside)
                else:
                    inside.unlink()
            if not os.path.lexists(shared):
                shared.mkdir(parents=True)
            os.symlink(f"../../data/{name}", inside)
        fsutil.fsync_dir(slot_dir)
        fsutil.fsync_dir(self.layout.data)

    def abort(self, s: SlotState, reason: str, kind: str, release: Release, started: float) -> None:
        """Failure before the swap: discard the target slot's partial content, save FAILED."""
        site = self.site
        note = ""
        try:
            if s.state in (State.STAGING, State.STAGED) and s.op is not None and s.op.slot is not None:
                with contextlib.suppress(OSError, StateError):
                    site.wipe_slot(s, s.op.slot)  # frees the space a full disk needs for the save
            s = site.save(sm.abort(s, reason))
        except StateError as exc:
            note = f"; {exc} (the next run recovers)"
        site.emit("step", step="failed", reason=reason + note)
        with contextlib.suppress(StateError):
            site.record(
                {
                    "op": kind,
                    "from_version": s.active_version,
                    "version": release.version,
                    "sha256": release.content.sha256,
                    "outcome": "failed",
                    "reason": reason + note,
                    "duration": round(time.monotonic() - started, 3),
                }
            )


def wants_snapshot(cfg: ClientConfig, release: Release) -> bool:
    """Whether installing ``release`` takes a data snapshot: ``backup_before_update`` for its type."""
    return (cfg.flag("backup_before_update") and bool(cfg.persistent_paths)
            and release.type.value in cfg.names("backup_update_types"))


def space_problem(free: int, reclaim: int, download: int, tree: int) -> str | None:
    """The one free-space rule, in the order an install uses the disk (None: it fits).

    The download lands first, while the inactive slot still holds the previous release, so it
    needs ``download`` bytes free as the disk is now: that slot is the instant-rollback target and
    is not wiped before the download has succeeded. Then the slot is wiped (its ``reclaim`` bytes
    come back) and the release, ``tree`` bytes, is written beside the download, which stays in the
    cache. ``SPACE_SLACK`` stays free in both phases (state, history, metadata)."""
    if free < download + SPACE_SLACK:
        return (f"needs {mib(download + SPACE_SLACK)} free for its download before the inactive slot can be "
                f"emptied, {mib(free)} free")
    after = free - download + reclaim
    if after < tree + SPACE_SLACK:
        return (f"needs {mib(tree + SPACE_SLACK)} for the new slot, {mib(after)} available once it is downloaded "
                f"and the inactive slot ({mib(reclaim)}) is emptied")
    return None


def _disk_size(path: Path) -> int:
    """Bytes a directory tree occupies (blocks), not following symlinks (a slot path that is one
    included: what it points at is not freed by wiping the slot)."""
    total = 0
    if os.path.islink(path):
        return 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total
