"""Install, roll back, recover, verify and repair an install directory: the write-ahead steps.

The state machine (``client.slots``) says what may follow what; this module does the I/O around
it, saving the state *before* each risky step (see the table in ``client.slots``):

install::

    lock -> recover -> refresh -> channel index -> policy -> manifest -> pre-checks (space, perms)
    -> save DOWNLOADING -> download (progress) -> save STAGING (target slot listed empty)
    -> wipe + extract into the inactive slot -> verify the slot against the manifest
    -> link persistent paths -> save STAGED -> pre_install -> [baseline latency]
    -> save TRIAL -> stop_command -> swap ``current`` -> post_swap -> start_command -> health check
    -> save COMMITTED                       (any failure after TRIAL: automatic rollback)

rollback (automatic or manual)::

    save ROLLING_BACK -> stop_command -> swap ``current`` back -> on_rollback -> start_command
    -> save ROLLED_BACK (version marked bad)

The running slot is never written: the only slot ever wiped or extracted into is the target of
an install, which ``SlotState.check`` guarantees is not the active one, and ``_wipe_slot`` refuses
a slot ``current`` points at. Every failure raises one ``client.errors`` line.

Persistent paths: each top-level name in ``persistent_paths`` (default ``logs uploads temp``) is,
in every slot, a symlink ``NAME -> ../../data/NAME``, so all slots see the same files and an update
never overwrites them. A release that ships content under such a name seeds ``data/NAME`` with it
only when ``data/NAME`` does not exist yet; otherwise the shipped copy is dropped.

Cached manifests: ``manifests/<content sha256>.json`` holds the manifest of every release that was
staged, written after it was verified through TUF; ``verify`` and state rebuilds use it and fetch
it again through TUF when it is missing or does not describe the expected release.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import fleet_state
from pinnacle_updates.client import history as history_mod
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.delta import (
    DeltaError,
    Rebuilt,
    UpdatePath,
    apply_chain,
    base_problem,
    manifest_from_delta,
    plan_update,
)
from pinnacle_updates.client.errors import (
    BusyError,
    ConfigError,
    HealthCheckError,
    InstallError,
    InstallRefused,
    RepositoryError,
    StateError,
    TrustError,
    UpdateError,
)
from pinnacle_updates.client.hooks import (
    CommandResult,
    HealthResult,
    HealthSettings,
    HookContext,
    check_health,
    measure_latency,
)
from pinnacle_updates.client.hooks import run_command as _run_command
from pinnacle_updates.client.policy import decide
from pinnacle_updates.client.slots import Layout, SlotContent, SlotState, State
from pinnacle_updates.client.transport import HttpxFetcher
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.archive import ArchiveError
from pinnacle_updates.formats.fleet import switch_channel_plan
from pinnacle_updates.formats.index import FormatError, Manifest, Release
from pinnacle_updates.formats.tree import extract_release, tree_size, verify_tree

Progress = Callable[[int, int], None]
EventSink = Callable[[dict[str, Any]], None]

SPACE_SLACK = 1024 * 1024
"""Bytes kept free beyond the estimate (metadata, state file, history)."""


# ----- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    current_version: str | None
    update_available: bool
    version: str | None
    type: str | None
    download_bytes: int
    path: str | None
    auto: bool
    reason: str
    release: Release | None = field(default=None, repr=False)
    auto_release: Release | None = field(default=None, repr=False)
    """What may install unattended; older than ``release`` when, e.g., a patch precedes an optional minor."""
    releases: tuple[Release, ...] = field(default=(), repr=False)
    """The channel's releases for this platform: what delta paths are planned over."""
    return_to: Release | None = field(default=None, repr=False)
    """Where the client goes because its installed release was yanked (a downgrade)."""
    fleet: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the fleet controls say for this client (``client.fleet.FleetView.to_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        """``downgrade`` and ``fleet`` appear only when fleet controls apply to this client."""
        extra: dict[str, Any] = {"fleet": self.fleet} if self.fleet else {}
        if self.return_to is not None and self.release is self.return_to:
            extra["downgrade"] = True
        return {
            **extra,
            "current_version": self.current_version,
            "update_available": self.update_available,
            "version": self.version,
            "type": self.type,
            "download_bytes": self.download_bytes,
            "path": self.path,
            "auto": self.auto,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class InstallResult:
    """``outcome``: ``committed`` or ``up_to_date`` (nothing to install; ``reason`` says why)."""

    outcome: str
    version: str | None
    previous_version: str | None
    slot: str | None
    bytes_downloaded: int = 0
    duration: float = 0.0
    reason: str = ""
    health: dict[str, Any] | None = None
    route: dict[str, Any] = field(default_factory=dict)
    """How the slot was staged: ``path`` (delta, chain, full), ``update_path``, ``bytes_saved``
    against the full artifact and, when a delta failed, ``fallback_reason``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "version": self.version,
            "previous_version": self.previous_version,
            "slot": self.slot,
            "bytes_downloaded": self.bytes_downloaded,
            "duration": round(self.duration, 3),
            "reason": self.reason,
            "health": self.health,
            **{k: v for k, v in self.route.items() if k != "bytes_downloaded"},
        }


@dataclass(frozen=True)
class RollbackResult:
    version: str | None
    slot: str | None
    from_version: str | None
    from_slot: str | None
    reason: str
    duration: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "slot": self.slot,
            "from_version": self.from_version,
            "from_slot": self.from_slot,
            "reason": self.reason,
            "duration": round(self.duration, 6),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery found and did; ``actions`` empty means everything already agreed."""

    actions: tuple[str, ...]
    state: str
    version: str | None
    slot: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "state": self.state, "version": self.version, "slot": self.slot}


@dataclass(frozen=True)
class SlotReport:
    slot: str
    version: str | None
    active: bool
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "version": self.version,
            "active": self.active,
            "ok": self.ok,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class VerifyReport:
    slots: tuple[SlotReport, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.slots)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "slots": [r.to_dict() for r in self.slots]}


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    ok: bool
    detail: str
    warning: bool = False

    def to_dict(self) -> dict[str, Any]:
        status = "ok" if self.ok else ("warn" if self.warning else "fail")
        return {"name": self.name, "status": status, "detail": self.detail}


# ----- the installer ------------------------------------------------------------------------------
class Installer:
    """All operations on one install directory. Each public method takes the lock itself (except
    the read-only ``status``, ``history`` and ``health_check``), runs recovery first when it
    changes anything, returns data and raises ``client.errors`` types."""

    def __init__(
        self,
        install_dir: Path,
        *,
        on_event: EventSink | None = None,
        client_factory: Callable[[ClientConfig, Layout], RepositoryClient] | None = None,
    ) -> None:
        self.layout = Layout(Path(install_dir).absolute())
        self._on_event = on_event
        self._client_factory = client_factory or _default_client

    # -- small helpers ------------------------------------------------------------------------
    def _emit(self, event: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event({"event": event, **fields})

    def config(self) -> ClientConfig:
        return config_mod.load(self.layout.root)

    def _load(self) -> SlotState:
        return sm.load(self.layout.state)

    def _save(self, s: SlotState) -> SlotState:
        sm.save(self.layout.state, s)
        self._emit("state", state=s.state.value)
        return s

    def _history(self, record: dict[str, Any]) -> None:
        try:
            history_mod.append(self.layout.history, record)
        except OSError as exc:
            raise StateError(f"cannot append to {self.layout.history}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def locked(self, wait: bool = False) -> Iterator[None]:
        """Hold ``DIR/lock``; ``BusyError`` naming the holder when another process has it."""
        if not self.layout.config.exists():
            raise ConfigError(f"{self.layout.root} is not an initialised install directory (no config.toml)")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(fsutil.exclusive_lock(self.layout.lock, wait=wait))
            except fsutil.LockBusyError:
                pid = _lock_holder(self.layout.lock)
                who = f" (pid {pid})" if pid else ""
                raise BusyError(f"another pinnacle-update process{who} is installing; use --wait to queue") from None
            except OSError as exc:
                raise StateError(f"cannot lock {self.layout.lock}: {exc.strerror or exc}") from exc
            yield

    def _ctx(self, s: SlotState, slot: str, version: str, **extra: str) -> HookContext:
        prev_slot = s.active if s.active != slot else None
        prev_version = s.active_version if prev_slot else None
        return HookContext(
            install_dir=self.layout.root,
            slot=slot,
            slot_dir=self.layout.slot(slot),
            version=version,
            previous_version=prev_version,
            previous_slot=prev_slot,
            extra_env=extra,
        )

    def _hook(self, name: str, cfg: ClientConfig, ctx: HookContext) -> CommandResult:
        result = _run_command(name, cfg.text(name), ctx, cfg.number("hook_timeout"), self.layout.hooks_log)
        if cfg.text(name).strip():
            self._emit("hook", name=name, ok=result.ok, duration=round(result.duration, 3))
        return result

    # -- read-only ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The state for people and machines (``version``, ``slot``, ``channel``, ``state``, ...).
        Raises ``StateError`` for a corrupt state file (``recover`` rebuilds it)."""
        cfg = self.config()
        s = self._load()
        other = s.other_content
        linked = self.layout.linked_slot()
        return {
            "version": s.active_version,
            "slot": s.active,
            "channel": cfg.text("channel"),
            "platform": cfg.text("platform"),
            "state": s.state.value,
            "sha256": s.active_content.sha256 if s.active_content else None,
            "entry_point": s.active_content.entry_point if s.active_content else None,
            "installed": s.active_content.installed if s.active_content else None,
            "previous_version": other.version if other else None,
            "previous_slot": s.next_slot if other else None,
            "operation": s.op.to_dict() if s.op else None,
            "bad_versions": {v: b.to_dict() for v, b in s.bad_versions.items()},
            "last_error": s.last_error,
            "current": str(self.layout.current),
            "current_slot": linked,
            "needs_recovery": not s.resting or linked != s.link_target(),
            "fleet": fleet_state.summary(self.layout.root),
            "repo_url": cfg.text("repo_url"),
            "client_id": cfg.text("client_id"),
            "install_dir": str(self.layout.root),
            "updated": s.updated,
        }

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        return history_mod.read(self.layout.history, limit)

    def entry_point(self) -> Path | None:
        """The active release's entry point inside its slot (``None`` when the release names none),
        for ``pinnacle-update run``. Raises ``StateError`` when nothing is installed."""
        s = self._load()
        content = s.active_content
        if s.active is None or content is None:
            raise StateError("nothing is installed, so there is nothing to run")
        if not content.entry_point:
            return None
        slot_dir = self.layout.slot(s.active)
        path = (slot_dir / content.entry_point).resolve()
        if not path.is_relative_to(slot_dir.resolve()):
            raise StateError(f"entry point {content.entry_point!r} leaves slot {s.active}: refused")
        return path

    def health_check(self) -> HealthResult:
        """Run the configured health check against the active slot now (no state change)."""
        cfg = self.config()
        s = self._load()
        if s.active is None or s.active_version is None:
            raise StateError("nothing is installed, so there is nothing to health-check")
        return check_health(
            HealthSettings.from_config(cfg), self._ctx(s, s.active, s.active_version), log=self.layout.hooks_log
        )

    # -- check -------------------------------------------------------------------------------
    def check(
        self,
        version: str | None = None,
        *,
        force: bool = False,
        confirm_major: bool = False,
        wait: bool = False,
    ) -> CheckResult:
        """Refresh trusted metadata and say what ``install`` would do (nothing is installed)."""
        started = time.monotonic()
        with self.locked(wait):
            cfg = self.config()
            s = self._load_or_rebuild([])
            with self._client(cfg) as client:
                result = self._check(client, cfg, s, version, force, confirm_major)
                stats = client.stats
                self._history(
                    {
                        "op": "check",
                        "current_version": result.current_version,
                        "update_available": result.update_available,
                        "version": result.version,
                        "reason": result.reason,
                        "requests": stats.requests,
                        "bytes": stats.bytes,
                        "duration": round(time.monotonic() - started, 3),
                    }
                )
        return result

    def _check(
        self,
        client: RepositoryClient,
        cfg: ClientConfig,
        s: SlotState,
        version: str | None,
        force: bool,
        confirm_major: bool,
    ) -> CheckResult:
        client.refresh()
        index = client.channel_index(cfg.text("channel"))
        releases = index.for_platform(cfg.text("platform"))
        current = s.active_version
        attempts = cfg.integer("max_rollback_attempts")
        view = fleet_state.view_for(self.layout, cfg, s, index, releases, client.signed_time())
        try:
            wanted = index.find(version, cfg.text("platform")) if version is not None else None
        except FormatError as exc:
            raise InstallError(str(exc)) from exc
        if version is not None and wanted is None:  # older than the index's live window?
            wanted = client.archived_release(cfg.text("channel"), cfg.text("platform"), version)
            if wanted is not None:
                releases = sorted([*releases, wanted], key=lambda r: r.parsed_version)
        if wanted is not None and wanted.yanked is not None and not force:
            return CheckResult(current, False, None, None, 0, None, False,
                               f"{wanted.version} is yanked ({wanted.yanked.reason}); force to install it anyway")
        try:
            decision = decide(
                releases,
                current,
                cfg.to_update_config(),
                frozenset(s.bad_versions),
                requested_version=version,
                confirm_major=confirm_major,
                force=force,
                held=view.held,
                required=view.required,
            )
        except FormatError as exc:
            raise InstallError(str(exc)) from exc
        release, auto_release, reason = decision.release, decision.auto_release, decision.reason
        back = view.rollback_to if version is None and auto_release is None else None
        if back is not None:  # the installed release was yanked and nothing newer may be taken: go back
            auto_release = back if cfg.flag("enabled") else None
            if release is None:
                release, reason = back, f"returns to {back.version}"
        if view.note():
            reason = f"{reason}; {view.note()}"
        if release is not None:
            bad = s.bad_versions.get(release.version)
            if bad is not None and bad.rollbacks >= attempts:
                reason = (
                    f"{release.version} was rolled back {bad.rollbacks} times (max_rollback_attempts "
                    f"{attempts}); refused even with --force"
                )
                release = None
        if release is None:
            return CheckResult(current, False, None, None, 0, None, False, reason, fleet=view.to_dict_if_any())
        plan = plan_update(releases, _installed(s), release)
        return CheckResult(
            current_version=current,
            update_available=True,
            version=release.version,
            type=release.type.value,
            download_bytes=plan.total_bytes,
            path=plan.describe(),
            auto=release is auto_release,
            reason=reason,
            release=release,
            auto_release=auto_release,
            releases=tuple(releases),
            return_to=back,
            fleet=view.to_dict_if_any(),
        )

    # -- install -------------------------------------------------------------------------------
    def install(
        self,
        version: str | None = None,
        *,
        force: bool = False,
        confirm_major: bool = False,
        wait: bool = False,
        progress: Progress | None = None,
        auto_only: bool = False,
    ) -> InstallResult:
        """Install ``version`` (or what policy picks) into the inactive slot and switch to it.

        ``auto_only``: install only what policy allows unattended (the continuous updater).
        Raises ``InstallError`` (nothing changed), ``HealthCheckError`` (rolled back), and the
        repository/trust/state errors of the steps.
        """
        started = time.monotonic()
        with self.locked(wait):
            self._recover_locked()
            cfg = self.config()
            s = self._load()
            with self._client(cfg) as client:
                found = self._check(client, cfg, s, version, force, confirm_major)
                if found.release is None and version is not None:
                    raise InstallRefused(f"not installing {version}: {found.reason}")
                target = found.auto_release if auto_only else found.release
                if target is None:
                    reason = found.reason if found.release is None else f"not automatic: {found.reason}"
                    return InstallResult("up_to_date", s.active_version, s.active_version, s.active, reason=reason)
                if target is found.return_to:
                    return self._leave_yanked(client, cfg, s, found, started, progress)
                plan = plan_update(found.releases, _installed(s), target)
                return self._install_release(client, cfg, s, target, "install", started, progress, plan)

    def _leave_yanked(
        self, client: RepositoryClient, cfg: ClientConfig, s: SlotState, found: CheckResult, started: float,
        progress: Progress | None,
    ) -> InstallResult:
        """The installed release was yanked: switch to ``found.return_to`` instantly when the other
        slot holds exactly it (the rollback machinery), otherwise install it (a downgrade, health-gated)."""
        back, yanked = found.return_to, s.active_version
        assert back is not None
        why = f"yanked by the publisher: {(found.fleet.get('installed_yanked') or {}).get('reason', '')}"
        other = s.other_content
        instant = other is not None and (other.version, other.sha256) == (back.version, back.content.sha256)
        self._history({"op": "yank", "version": yanked, "reason": why, "to_version": back.version,
                       "via": "rollback" if instant else "install"})
        if instant:
            rb = self._rollback_locked(cfg, s, why, mark_bad=False)
            return InstallResult("rolled_back", rb.version, rb.from_version, rb.slot, 0,
                                 time.monotonic() - started, reason=why)
        result = self._install_release(client, cfg, s, back, "install", started, progress)
        return replace(result, reason=why)

    def switch_channel(
        self, channel: str, *, allow_downgrade: bool = False, wait: bool = False, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Follow ``channel`` from now on. Never a downgrade unless ``allow_downgrade`` (then its newest
        release is installed first, and the config changes only once that succeeded)."""
        started = time.monotonic()
        with self.locked(wait):
            self._recover_locked()
            cfg = self.config()
            previous = cfg.text("channel")
            if channel == previous:
                raise ConfigError(f"already on channel {channel}")
            config_mod.parse_value("channel", channel)
            s = self._load()
            with self._client(cfg) as client:
                client.refresh()
                index = client.channel_index(channel)
                plan = switch_channel_plan(index.for_platform(cfg.text("platform")), s.active_version, channel,
                                           allow_downgrade)
                installed = None
                if plan.install is not None:
                    installed = self._install_release(client, cfg, s, plan.install, "install", started, progress)
            config_mod.update_values(self.layout.root, {"channel": channel})
            self._history({"op": "channel", "from_channel": previous, "channel": channel, "reason": plan.reason})
        return {"channel": channel, "previous_channel": previous, "version": self._load().active_version,
                "reason": plan.reason, "install": installed.to_dict() if installed else None}

    def repair(self, *, wait: bool = False, progress: Progress | None = None) -> InstallResult:
        """Reinstall the active version into the inactive slot from the repository and switch to it."""
        started = time.monotonic()
        with self.locked(wait):
            self._recover_locked()
            cfg = self.config()
            s = self._load()
            active = s.active_content
            if active is None:
                raise StateError("nothing is installed, so there is nothing to repair; use install")
            with self._client(cfg) as client:
                client.refresh()
                release = self._find_release(client, cfg, active)
                return self._install_release(client, cfg, s, release, "repair", started, progress)

    def _find_release(self, client: RepositoryClient, cfg: ClientConfig, content: SlotContent) -> Release:
        index = client.channel_index(cfg.text("channel"))
        release = index.find(content.version, cfg.text("platform")) or client.archived_release(
            cfg.text("channel"), cfg.text("platform"), content.version)
        if release is None or release.content.sha256 != content.sha256:
            raise RepositoryError(
                f"the repository no longer serves {content.version} with content sha256 "
                f"{content.sha256[:12]}... on channel {cfg.text('channel')}"
            )
        return release

    def _install_release(
        self,
        client: RepositoryClient,
        cfg: ClientConfig,
        s: SlotState,
        release: Release,
        kind: str,
        started: float,
        progress: Progress | None,
        plan: UpdatePath | None = None,
    ) -> InstallResult:
        """Download and stage ``release`` in the inactive slot (by ``plan``'s deltas when it has
        any, else or on any delta failure the full artifact), verify it, then activate it. On the
        delta path the deltas come first: they carry the manifest (checked against the signed one)."""
        bytes_before = client.stats.bytes
        self._emit("step", step="manifest", version=release.version)
        fetched = self._download_deltas(client, cfg, s, release, plan, self._progress(progress))
        manifest = fetched.steps[-1][1] if fetched.steps else client.fetch_manifest(release)
        target = s.next_slot
        self._precheck(cfg, s, release, manifest, target)
        s = self._save(sm.begin_install(s, release.version, release.content.sha256, kind, release.entry_point))
        baseline: float | None = None
        try:
            on_progress = self._progress(progress)
            if not fetched.steps:
                self._emit("step", step="download", version=release.version, total=release.full.length, path="full")
                fetched.artifact = client.fetch_target(release.full, on_progress)
            s = self._save(sm.begin_staging(s))  # write-ahead: the slot is listed empty first
            self._emit("step", step="staging", slot=target)
            slot_dir = self._wipe_slot(s, target)
            route = self._write_slot(client, cfg, s, release, manifest, fetched, on_progress)
            problems = verify_tree(slot_dir, manifest, skip=route.pop("skip"))
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise InstallError(f"slot {target} does not match release {release.version}: {problems[0]}{more}")
            self._link_persistent(slot_dir, cfg.persistent_paths)
            self._store_manifest(manifest)
            s = self._save(sm.mark_staged(s))
            self._emit("step", step="staged", slot=target, version=release.version)
            pre = self._hook("pre_install", cfg, self._ctx(s, target, release.version))
            if not pre.ok:
                raise InstallError(f"{pre.describe()}; nothing was changed")
            if cfg.integer("max_latency_ms") > 0 and cfg.text("health_url"):
                baseline = measure_latency(cfg.text("health_url"), cfg.number("health_timeout"))
            s = self._save(sm.begin_trial(s))  # write-ahead: saved before the link moves
        except (UpdateError, OSError) as exc:
            reason = _one_line(exc)
            self._abort(s, reason, kind, release, started)
            if isinstance(exc, OSError):
                raise InstallError(f"install of {release.version} failed: {reason}; nothing was changed") from exc
            raise
        downloaded = client.stats.bytes - bytes_before
        full_bytes = plan.full_bytes if plan is not None else release.full.length + release.manifest.length
        route.update(bytes_downloaded=downloaded, bytes_saved=full_bytes - downloaded)
        return self._activate(cfg, s, started, downloaded, baseline, route)

    def _progress(self, progress: Progress | None) -> Progress:
        def on_progress(done: int, total: int) -> None:
            self._emit("progress", bytes=done, total=total)
            if progress is not None:
                progress(done, total)

        return on_progress

    def _download_deltas(
        self,
        client: RepositoryClient,
        cfg: ClientConfig,
        s: SlotState,
        release: Release,
        plan: UpdatePath | None,
        on_progress: Progress,
    ) -> _Fetched:
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
        fetched = _Fetched(plan)
        if plan is None or not plan.steps or s.active is None or s.active_content is None:
            return fetched
        self._emit("step", step="download", version=release.version, total=plan.total_bytes, path=plan.describe())
        try:
            base_manifest = self._manifest_for(s.active_content, cfg, None) or client.fetch_manifest(
                self._find_release(client, cfg, s.active_content)
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
            fetched.fallback = _one_line(exc)
        except (UpdateError, OSError) as exc:
            fetched.fallback = f"delta download failed: {_one_line(exc)}"
        if fetched.fallback:
            fetched.steps, fetched.rebuilt = [], None
            self._emit("delta_fallback", reason=fetched.fallback)
        return fetched

    def _write_slot(
        self,
        client: RepositoryClient,
        cfg: ClientConfig,
        s: SlotState,
        release: Release,
        manifest: Manifest,
        fetched: _Fetched,
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
                apply_chain(fetched.steps, *fetched.base, slot_dir, self.layout.cache / "delta-work",
                            skip=skip, rebuilt=rebuilt)
                return {"path": plan.kind, "update_path": plan.describe(), "skip": skip}
            except DeltaError as exc:
                rebuilt, fetched.fallback = None, _one_line(exc)
                self._emit("delta_fallback", reason=fetched.fallback)
                self._wipe_slot(s, s.next_slot)
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

    def _precheck(self, cfg: ClientConfig, s: SlotState, release: Release, manifest: Manifest, target: str) -> None:
        """Refuse, before touching anything, an install that cannot finish."""
        root = self.layout.root
        for path in (root, self.layout.slots_dir, self.layout.cache, self.layout.manifests, self.layout.data):
            if not os.access(path, os.W_OK | os.X_OK):
                raise InstallError(f"cannot write {path} (permission denied); nothing was changed")
        need = tree_size(manifest) + SPACE_SLACK
        cached = self.layout.cache / _cache_name_guess(release.full.path)
        if not cached.exists():
            need += release.full.length
        usage = shutil.disk_usage(root)
        reclaim = _disk_size(self.layout.slot(target)) if target != s.active else 0
        have = usage.free + reclaim
        if have < need:
            raise InstallError(
                f"not enough free space in {root}: {release.version} needs {_mb(need)} for slot {target} "
                f"and its download, {_mb(have)} available; nothing was changed"
            )

    def _wipe_slot(self, s: SlotState, slot: str) -> Path:
        """Empty ``slot`` for writing. Refuses the active slot and the slot ``current`` points at."""
        if slot == s.active or self.layout.linked_slot() == slot:
            raise StateError(f"refusing to write slot {slot}: it is the running slot")
        path = self.layout.slot(slot)
        trash = self.layout.slots_dir / f".trash-{slot}"
        if trash.exists():
            shutil.rmtree(trash)
        if path.exists() or path.is_symlink():
            os.rename(path, trash)
        path.mkdir()
        fsutil.fsync_dir(self.layout.slots_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return path

    def _link_persistent(self, slot_dir: Path, names: tuple[str, ...]) -> None:
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

    def _store_manifest(self, manifest: Manifest) -> None:
        dest = self.layout.manifest(manifest.content.sha256)
        if not dest.exists():
            try:
                self.layout.manifests.mkdir(exist_ok=True)
                fsutil.atomic_write(dest, manifest.to_bytes())
            except OSError as exc:
                raise StateError(f"cannot store the manifest in {self.layout.manifests}: {_one_line(exc)}") from exc

    def _abort(self, s: SlotState, reason: str, kind: str, release: Release, started: float) -> None:
        """Failure before the swap: discard the target slot's partial content, save FAILED."""
        note = ""
        try:
            if s.state in (State.STAGING, State.STAGED) and s.op is not None and s.op.slot is not None:
                with contextlib.suppress(OSError, StateError):
                    self._wipe_slot(s, s.op.slot)  # frees the space a full disk needs for the save
            s = self._save(sm.abort(s, reason))
        except StateError as exc:
            note = f"; {exc} (the next run recovers)"
        self._emit("step", step="failed", reason=reason + note)
        with contextlib.suppress(StateError):
            self._history(
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

    # -- after the swap ----------------------------------------------------------------------------
    def _activate(
        self,
        cfg: ClientConfig,
        s: SlotState,
        started: float,
        downloaded: int,
        baseline: float | None,
        route: dict[str, Any] | None = None,
    ) -> InstallResult:
        """From a saved TRIAL: stop, swap, post_swap, start, health check; commit or roll back.
        ``route`` (how the slot was staged: path, bytes saved, fallback) goes into the history."""
        op = s.op
        assert op is not None and op.slot is not None and op.version is not None
        ctx = self._ctx(s, op.slot, op.version)
        previous = s.active_version
        failure = ""
        health: HealthResult | None = None
        try:
            stop = self._hook("stop_command", cfg, ctx)
            if not stop.ok:
                failure = stop.describe()
            else:
                self._emit("step", step="swap", slot=op.slot, version=op.version)
                self.layout.point_current(op.slot)
                for name in ("post_swap", "start_command"):
                    result = self._hook(name, cfg, ctx)
                    if not result.ok:
                        failure = result.describe()
                        break
                else:
                    self._emit("step", step="health_check", version=op.version)
                    health = check_health(HealthSettings.from_config(cfg), ctx, baseline, log=self.layout.hooks_log)
                    if not health.healthy:
                        failure = f"health check failed: {health.reason}"
        except (UpdateError, OSError) as exc:
            failure = _one_line(exc)
        if failure:
            back = self._rollback_locked(cfg, s, failure, mark_bad=True)
            where = (
                f"rolled back to {back.version}" if back.version else "nothing to roll back to; no version is active"
            )
            raise HealthCheckError(f"{op.version} failed after the swap ({failure}); {where}")
        s = self._save(sm.commit(s))
        other = s.other_content
        if other is not None and other.version == op.version:
            # A repair leaves the damaged copy of the same version behind: never roll back onto it.
            s = self._save(sm.forget_slot(s, s.next_slot))
        duration = time.monotonic() - started
        self._prune_cache(cfg, op.version)
        self._history(
            {
                "op": op.kind,
                "from_version": previous,
                "version": op.version,
                "sha256": op.sha256,
                "slot": op.slot,
                "bytes": downloaded,
                "duration": round(duration, 3),
                "outcome": "committed",
                "health": health.to_dict() if health else None,
                **(route or {}),
            }
        )
        self._emit("step", step="committed", version=op.version, slot=op.slot)
        return InstallResult(
            "committed",
            op.version,
            previous,
            op.slot,
            downloaded,
            duration,
            health=health.to_dict() if health else None,
            route=dict(route or {}),
        )

    def _prune_cache(self, cfg: ClientConfig, version: str) -> None:
        """Drop cached artifacts of other releases (best effort; the slots hold what rollback needs)."""
        with contextlib.suppress(UpdateError, OSError), self._client(cfg) as client:
            keep = set()
            for name in os.listdir(self.layout.cache):
                target = unquote(name)
                if target.split("/")[2:3] == [version]:  # <channel>/<platform>/<version>/...
                    keep.add(target)
            client.prune_cache(keep)

    # -- rollback ---------------------------------------------------------------------------------
    def rollback(self, *, wait: bool = False, force: bool = False, reason: str = "manual rollback") -> RollbackResult:
        """Instant switch to the version in the inactive slot; the version left is marked bad.
        Refuses when the inactive slot holds no complete version (or a bad one, unless ``force``)."""
        with self.locked(wait):
            self._recover_locked()
            cfg = self.config()
            s = self._load()
            other = s.other_content
            days = cfg.integer("max_rollback_days")
            if other is not None and other.installed and days > 0 and not force:
                age = _age_days(other.installed)
                if age > days:
                    raise StateError(
                        f"the previous version {other.version} was installed {age:.0f} days ago, more than "
                        f"max_rollback_days ({days}); use --force to switch to it anyway"
                    )
            return self._rollback_locked(cfg, s, reason, mark_bad=True, allow_bad=force)

    def _rollback_locked(
        self, cfg: ClientConfig, s: SlotState, reason: str, *, mark_bad: bool, allow_bad: bool = False
    ) -> RollbackResult:
        started = time.monotonic()
        s = self._save(sm.begin_rollback(s, reason, mark_bad, allow_bad=allow_bad))
        return self._finish_rollback(cfg, s, started)

    def _finish_rollback(self, cfg: ClientConfig, s: SlotState, started: float) -> RollbackResult:
        """From a saved ROLLING_BACK: stop, swap back, on_rollback, start; save ROLLED_BACK.
        Hook failures here are recorded, not fatal: going back must not get stuck."""
        op = s.op
        assert op is not None
        notes: list[str] = []
        leaving = op.leaving_version or ""
        # hooks act for the slot being returned to (or, when there is none, the slot being left)
        slot = op.slot if op.slot is not None else (op.leaving or s.next_slot)
        ctx = HookContext(
            install_dir=self.layout.root,
            slot=slot,
            slot_dir=self.layout.slot(slot),
            version=op.version if op.version is not None else leaving,
            previous_version=op.leaving_version,
            previous_slot=op.leaving,
            extra_env={"PINNACLE_FAILED_VERSION": leaving},
        )
        stop = self._hook("stop_command", cfg, ctx)
        if not stop.ok:
            notes.append(stop.describe())
        self._emit("step", step="swap_back", slot=op.slot, version=op.version)
        self.layout.point_current(op.slot)
        for name in ("on_rollback", "start_command") if op.slot is not None else ("on_rollback",):
            result = self._hook(name, cfg, ctx)
            if not result.ok:
                notes.append(result.describe())
        s = self._save(sm.finish_rollback(s))
        duration = time.monotonic() - started
        record: dict[str, Any] = {
            "op": "rollback",
            "from_version": op.leaving_version,
            "from_slot": op.leaving,
            "version": op.version,
            "slot": op.slot,
            "reason": op.reason,
            "outcome": "rolled_back",
            "duration": round(duration, 6),
            "notes": notes,
        }
        if op.mark_bad and op.leaving_version:
            record["bad_version"] = op.leaving_version
        self._history(record)
        self._emit("step", step="rolled_back", version=op.version, slot=op.slot, reason=op.reason)
        return RollbackResult(op.version, op.slot, op.leaving_version, op.leaving, op.reason, duration, tuple(notes))

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, *, wait: bool = False) -> RecoveryReport:
        """Resolve any interrupted state now (also run by every changing operation)."""
        with self.locked(wait):
            return self._recover_locked()

    def _recover_locked(self) -> RecoveryReport:
        actions: list[str] = []
        for directory in (self.layout.root, self.layout.slots_dir, self.layout.manifests):
            fsutil.remove_stale_temps(directory)
        for name in sm.SLOT_NAMES:
            trash = self.layout.slots_dir / f".trash-{name}"
            if trash.exists():
                shutil.rmtree(trash, ignore_errors=True)
        cfg = self.config()
        s = self._load_or_rebuild(actions)

        if s.state is State.DOWNLOADING:
            s = self._save(sm.abort(s, "interrupted while downloading"))
            actions.append("discarded an interrupted download")
        elif s.state in (State.STAGING, State.STAGED):
            assert s.op is not None and s.op.slot is not None
            self._wipe_slot(s, s.op.slot)
            s = self._save(sm.abort(s, f"interrupted while {s.state.value}"))
            actions.append(f"discarded the partly staged slot {s.next_slot}")
        elif s.state is State.TRIAL:
            s, action = self._resume_trial(cfg, s)
            actions.append(action)
        elif s.state is State.ROLLING_BACK:
            op = s.op
            assert op is not None
            self._finish_rollback(cfg, s, time.monotonic())
            s = self._load()
            actions.append(f"finished the interrupted rollback to {op.version}")

        s, more = self._check_slots_and_link(cfg, s)
        actions.extend(more)
        if actions:
            self._history({"op": "recover", "actions": actions, "state": s.state.value, "version": s.active_version})
            for a in actions:
                self._emit("recovery", action=a)
        return RecoveryReport(tuple(actions), s.state.value, s.active_version, s.active)

    def _resume_trial(self, cfg: ClientConfig, s: SlotState) -> tuple[SlotState, str]:
        """A trial that was never committed: its slot was verified before TRIAL was saved, so the
        trial resumes from the swap (hooks are idempotent) and commits or rolls back."""
        op = s.op
        assert op is not None and op.slot is not None
        slot_ok = self.layout.slot(op.slot).is_dir()
        if not slot_ok:
            self._rollback_locked(cfg, s, f"slot {op.slot} of the interrupted trial is missing", mark_bad=False)
            return self._load(), f"rolled back an interrupted trial of {op.version}: its slot is missing"
        try:
            self._activate(cfg, s, time.monotonic(), 0, None)
        except HealthCheckError as exc:
            return self._load(), f"rolled back the interrupted trial of {op.version}: {exc}"
        return self._load(), f"finished the interrupted trial of {op.version}: healthy, committed"

    def _check_slots_and_link(self, cfg: ClientConfig, s: SlotState) -> tuple[SlotState, list[str]]:
        """In a resting state: slots listed as complete must exist, ``current`` must point at
        ``active``. The state wins; a missing active slot falls back to the other slot."""
        actions: list[str] = []
        for name in sm.SLOT_NAMES:
            path = self.layout.slot(name)
            if path.is_dir() and not path.is_symlink():
                continue
            if path.is_symlink() or path.exists():
                os.unlink(path)
            path.mkdir(parents=True)
            fsutil.fsync_dir(self.layout.slots_dir)
            if name != s.active and s.slots.get(name) is not None:
                s = self._save(sm.forget_slot(s, name))
                actions.append(f"slot {name} was missing: recreated empty (no rollback version there)")
            elif name == s.active:
                lost = s.active_version
                other = s.other_content
                if other is not None and self.layout.slot(s.next_slot).is_dir():
                    s = self._save(
                        sm.begin_rollback(s, f"active slot {name} ({lost}) is missing", False, allow_bad=True)
                    )
                    self._finish_rollback(cfg, s, time.monotonic())
                    s = self._load()
                    actions.append(f"active slot {name} ({lost}) was missing: switched to {other.version}")
                else:
                    bad = dict(s.bad_versions)
                    s = self._save(sm.rebuilt(None, dict.fromkeys(sm.SLOT_NAMES), bad, f"slot {name} was missing"))
                    self.layout.point_current(None)
                    actions.append(
                        f"active slot {name} ({lost}) was missing and no other version is installed: "
                        "nothing is active now; install again"
                    )
        want = s.link_target()
        linked = self.layout.linked_slot()
        if want is not None and linked != want:
            self.layout.point_current(want)
            actions.append(f"current pointed at {linked or 'nothing'}; relinked to slot {want} as the state says")
        elif want is None and linked is not None:
            self.layout.point_current(None)
            actions.append("removed a current link: nothing is installed")
        return s, actions

    def _load_or_rebuild(self, actions: list[str]) -> SlotState:
        try:
            return self._load()
        except StateError as exc:
            if self.layout.state.exists() or _any_slot_content(self.layout):
                s = self.rebuild_state(str(exc))
                actions.append(
                    f"state file was unusable ({exc}); rebuilt from the slots: "
                    f"active {s.active or 'none'} {s.active_version or ''}".rstrip()
                )
                return s
            raise

    def rebuild_state(self, why: str) -> SlotState:
        """Reconstruct the state from the slots: each slot is hashed against the cached manifests;
        ``current`` names the active slot; bad versions come from the history log. The damaged
        state file is kept as ``state.json.corrupt``. Never writes a slot."""
        cfg = self.config()
        manifests = self._cached_manifests()
        found: dict[str, SlotContent | None] = {}
        for name in sm.SLOT_NAMES:
            found[name] = _identify(self.layout.slot(name), manifests, cfg.persistent_paths)
        linked = self.layout.linked_slot()
        if linked is not None and found[linked] is None:
            raise StateError(
                f"cannot rebuild the state: slot {linked} (where current points) matches no cached release "
                f"manifest; remove {self.layout.current} and reinstall with `pinnacle-update install --force VERSION`"
            )
        bad = history_mod.bad_versions(history_mod.read(self.layout.history))
        s = sm.rebuilt(linked, found, bad, f"state rebuilt from the slots ({why})")
        if self.layout.state.exists():
            with contextlib.suppress(OSError):
                os.replace(self.layout.state, self.layout.state.with_name("state.json.corrupt"))
        return self._save(s)

    def _cached_manifests(self) -> list[Manifest]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.layout.manifests.iterdir()):
                if entry.suffix != ".json":
                    continue
                with contextlib.suppress(OSError, FormatError):
                    m = Manifest.from_bytes(entry.read_bytes())
                    if entry.stem == m.content.sha256:
                        out.append(m)
        return out

    # -- verify -------------------------------------------------------------------------------------
    def verify(self, all_slots: bool = False, *, wait: bool = False) -> VerifyReport:
        """Re-hash the active slot (``all_slots``: both) against its signed manifest."""
        with self.locked(wait):
            cfg = self.config()
            s = self._load()
            names = list(sm.SLOT_NAMES) if all_slots else ([s.active] if s.active else [])
            if not names:
                raise StateError("nothing is installed, so there is nothing to verify")
            reports = []
            client: RepositoryClient | None = None
            try:
                for name in names:
                    content = s.slots.get(name)
                    if content is None:
                        if name != s.active:
                            reports.append(SlotReport(name, None, False, ()))
                        continue
                    manifest = self._manifest_for(content, cfg, client)
                    if manifest is None:
                        client = client or self._client(cfg)
                        manifest = self._manifest_for(content, cfg, client)
                    assert manifest is not None
                    problems = verify_tree(self.layout.slot(name), manifest, skip=cfg.persistent_paths)
                    problems += self._persistent_problems(name, cfg.persistent_paths)
                    reports.append(SlotReport(name, content.version, name == s.active, tuple(problems)))
            finally:
                if client is not None:
                    client.close()
            report = VerifyReport(tuple(reports))
            self._history(
                {
                    "op": "verify",
                    "all": all_slots,
                    "ok": report.ok,
                    "slots": {r.slot: len(r.problems) for r in reports if r.version},
                }
            )
            return report

    def _manifest_for(
        self, content: SlotContent, cfg: ClientConfig, client: RepositoryClient | None
    ) -> Manifest | None:
        """The cached manifest of ``content``; with ``client``, fetched again through TUF if needed."""
        path = self.layout.manifest(content.sha256)
        with contextlib.suppress(OSError, FormatError):
            m = Manifest.from_bytes(path.read_bytes())
            if m.content.sha256 == content.sha256 and m.version == content.version:
                return m
        if client is None:
            return None
        client.refresh()
        manifest = client.fetch_manifest(self._find_release(client, cfg, content))
        self._store_manifest(manifest)
        return manifest

    def _persistent_problems(self, slot: str, names: tuple[str, ...]) -> list[str]:
        problems = []
        for name in names:
            path = self.layout.slot(slot) / name
            try:
                ok = os.readlink(path) == f"../../data/{name}"
            except OSError:
                ok = False
            if not ok:
                problems.append(f"persistent path not linked to data/: {name}")
        return problems

    # -- doctor -------------------------------------------------------------------------------------
    def doctor(self) -> list[DoctorCheck]:
        """Requirements and conflicts: config, state, permissions, free space, lock, repository, clock."""
        checks: list[DoctorCheck] = []
        try:
            cfg: ClientConfig | None = self.config()
            checks.append(DoctorCheck("config", True, f"{self.layout.config} is valid"))
        except ConfigError as exc:
            cfg = None
            checks.append(DoctorCheck("config", False, str(exc)))
        s: SlotState | None = None
        try:
            s = self._load()
            linked = self.layout.linked_slot()
            if not s.resting or linked != s.link_target():
                checks.append(
                    DoctorCheck(
                        "state",
                        False,
                        f"state {s.state.value}, current -> {linked}: interrupted; run recover",
                        warning=True,
                    )
                )
            else:
                checks.append(DoctorCheck("state", True, f"{s.state.value}; active {s.active} {s.active_version}"))
        except StateError as exc:
            checks.append(DoctorCheck("state", False, str(exc)))
        denied = [
            str(p)
            for p in (self.layout.root, self.layout.slots_dir, self.layout.cache, self.layout.metadata)
            if p.exists() and not os.access(p, os.W_OK | os.X_OK)
        ]
        checks.append(
            DoctorCheck("permissions", not denied, "writable" if not denied else f"not writable: {', '.join(denied)}")
        )
        usage = shutil.disk_usage(self.layout.root)
        need = SPACE_SLACK
        if s is not None and s.active_content is not None:
            m = self._manifest_for(s.active_content, cfg, None) if cfg else None
            if m is not None:
                need += 2 * tree_size(m)  # a slot of the same size plus its download, roughly
        checks.append(
            DoctorCheck(
                "free space",
                usage.free >= need,
                f"{_mb(usage.free)} free; a slot like the active one needs about {_mb(need)}",
            )
        )
        holder = None
        try:
            with fsutil.exclusive_lock(self.layout.lock, wait=False, record_pid=False):
                pass
        except fsutil.LockBusyError:
            holder = _lock_holder(self.layout.lock) or "?"
        except OSError as exc:
            checks.append(DoctorCheck("lock", False, f"cannot open {self.layout.lock}: {exc.strerror}"))
        else:
            checks.append(DoctorCheck("lock", True, "no other update process is running"))
        if holder is not None:
            checks.append(
                DoctorCheck("lock", False, f"another pinnacle-update process (pid {holder}) holds the lock", True)
            )
        if cfg is not None and holder is None:
            checks.extend(self._doctor_repository(cfg))
        return checks

    def _doctor_repository(self, cfg: ClientConfig) -> list[DoctorCheck]:
        checks = []
        signed: tuple[str | None, ...] = ()
        try:
            with self.locked(False), self._client(cfg) as client:
                client.refresh()
                index = client.channel_index(cfg.text("channel"))
                n = len(index.for_platform(cfg.text("platform")))
                signed = (client.signed_time(), index.updated)
            checks.append(
                DoctorCheck(
                    "repository",
                    True,
                    f"{cfg.text('repo_url')} reachable; {n} release(s) for {cfg.text('platform')} "
                    f"on {cfg.text('channel')}",
                )
            )
        except TrustError as exc:
            checks.append(DoctorCheck("repository", False, f"metadata refused: {exc}"))
        except UpdateError as exc:
            checks.append(DoctorCheck("repository", False, str(exc)))
        clock = fleet_state.reading(self.layout.root, cfg, signed)[0]
        checks.append(DoctorCheck("clock", False, clock.note, warning=True) if clock.note else self._doctor_clock())
        return checks

    def _doctor_clock(self) -> DoctorCheck:
        """The local clock against the signed timestamp's expiry (a clock far ahead makes fresh
        metadata look expired; one far behind accepts stale metadata)."""
        from datetime import UTC, datetime

        path = self.layout.metadata / "timestamp.json"
        try:
            signed = json.loads(path.read_bytes())["signed"]
            expires = datetime.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except (OSError, ValueError, KeyError, TypeError):
            return DoctorCheck("clock", False, "no verified timestamp metadata to compare the clock with", True)
        left = (expires - datetime.now(UTC)).total_seconds()
        if left < 0:
            return DoctorCheck("clock", False, f"signed timestamp expired at {signed['expires']}: clock ahead or stale")
        if left > 400 * 86400:
            return DoctorCheck(
                "clock", False, f"signed timestamp expires {signed['expires']}: is the clock behind?", True
            )
        return DoctorCheck("clock", True, f"signed timestamp valid until {signed['expires']} ({left / 3600:.1f} h)")

    # -- repository client ----------------------------------------------------------------------------
    def _client(self, cfg: ClientConfig) -> RepositoryClient:
        return self._client_factory(cfg, self.layout)


# ----- module helpers ---------------------------------------------------------------------------------
def _default_client(cfg: ClientConfig, layout: Layout) -> RepositoryClient:
    try:
        root = layout.trusted_root.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the trusted root {layout.trusted_root}: {exc.strerror or exc}") from exc
    fetcher = HttpxFetcher(partial_dir=layout.cache / "partial")  # interrupted downloads resume
    return RepositoryClient(cfg.text("repo_url"), layout.metadata, layout.cache, root, fetcher=fetcher)


@dataclass
class _Fetched:
    """What ``Installer._download`` got: delta files with the manifests they rebuild (and the
    base tree they apply to), or the full artifact; ``fallback`` says why deltas were dropped."""

    plan: UpdatePath | None
    steps: list[tuple[Path, Manifest]] = field(default_factory=list)
    base: tuple[Path, Manifest] | None = None
    rebuilt: Rebuilt | None = None  # what manifest_from_delta decoded from the last step, for the apply
    artifact: Path | None = None
    fallback: str = ""


def _installed(s: SlotState) -> tuple[str, str] | None:
    """(version, content sha256) of the active release: the base deltas are planned from."""
    content = s.active_content
    return (content.version, content.sha256) if content is not None else None


def _lock_holder(path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        if text:
            return str(int(text.split()[0]))
    return None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return " ".join(str(exc).split())


def _age_days(stamp: str) -> float:
    from datetime import UTC, datetime

    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - when).total_seconds() / 86400


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _disk_size(path: Path) -> int:
    """Bytes a directory tree occupies (blocks), not following symlinks."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _cache_name_guess(target_path: str) -> str:
    """The cache file name ``client.trust`` uses for a target path."""
    return quote(target_path, safe="")


def _any_slot_content(layout: Layout) -> bool:
    return any(layout.slot(n).is_dir() and any(layout.slot(n).iterdir()) for n in sm.SLOT_NAMES)


def _identify(slot_dir: Path, manifests: list[Manifest], persistent: tuple[str, ...]) -> SlotContent | None:
    """The release ``slot_dir`` holds exactly, among ``manifests`` (cheap size check first)."""
    if not slot_dir.is_dir():
        return None
    for m in manifests:
        if not _sizes_match(slot_dir, m, persistent):
            continue
        if not verify_tree(slot_dir, m, skip=persistent):
            return SlotContent(m.version, m.content.sha256)
    return None


def _sizes_match(slot_dir: Path, m: Manifest, persistent: tuple[str, ...]) -> bool:
    for e in m.entries:
        if e.path.split("/", 1)[0] in persistent or e.type.value != "file":
            continue
        try:
            if os.lstat(slot_dir / e.path).st_size != e.size:
                return False
        except OSError:
            return False
    return True
