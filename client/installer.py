"""Every operation on one install directory, each one job from start to end; the parts do the work.

The state machine (``client.slots``) says what may follow what; the parts do the I/O around it,
saving the state *before* each risky step::

    lock -> recover (client.recovery) -> refresh -> channel index -> policy (client.checking)
    -> stage the inactive slot, up to a saved TRIAL (client.staging)
    -> swap, health, commit or automatic rollback (client.activation)

``client.doctor`` verifies slots against their signed manifests and checks the machine;
``client.results`` holds what each operation returns. The running slot is never written: the only
slot ever wiped or extracted into is the target of an install, which ``SlotState.check``
guarantees is not the active one, and ``InstallDir.wipe_slot`` refuses a slot ``current`` points
at. Every failure raises one ``client.errors`` line.

Cached manifests: ``manifests/<content sha256>.json`` holds the manifest of every release that was
staged, written after it was verified through TUF; ``verify`` and state rebuilds use it and fetch
it again through TUF when it is missing or does not describe the expected release.

Applications use ``client.api.AutoUpdater`` (the public API), which delegates here.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pinnacle_updates.client import backups as backups_mod
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import fleet_state, reporting, results
from pinnacle_updates.client import history as history_mod
from pinnacle_updates.client.activation import Activation, data_snapshot_missing, refuse_too_old, rollback_target
from pinnacle_updates.client.checking import evaluate
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.delta import plan_update
from pinnacle_updates.client.doctor import Doctor
from pinnacle_updates.client.errors import ConfigError, InstallRefused, StateError
from pinnacle_updates.client.hooks import HealthResult, HealthSettings, check_health
from pinnacle_updates.client.install_dir import ClientFactory, InstallDir, installed
from pinnacle_updates.client.recovery import Recovery
from pinnacle_updates.client.slots import SlotState
from pinnacle_updates.client.staging import Stager, StageRequest
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats.fleet import switch_channel_plan
from pinnacle_updates.formats.index import Release
from pinnacle_updates.formats.redact import redact_data, redact_url

__all__ = ["Installer"]


class Installer:
    """All operations on one install directory. Each public method takes the lock itself (except
    the read-only ``status``, ``history`` and ``health_check``), runs recovery first when it
    changes anything, returns data and raises ``client.errors`` types."""

    def __init__(
        self,
        install_dir: Path,
        *,
        on_event: results.EventSink | None = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.site = InstallDir(install_dir, on_event=on_event, client_factory=client_factory)
        self.layout = self.site.layout
        self.stager = Stager(self.site)
        self.activation = Activation(self.site)
        self.recovery = Recovery(self.site, self.activation)
        self.inspection = Doctor(self.site)

    def config(self) -> ClientConfig:
        return self.site.config()

    def locked(self, wait: bool = False) -> contextlib.AbstractContextManager[None]:
        """Hold ``DIR/lock``; ``BusyError`` naming the holder when another process has it."""
        return self.site.locked(wait)

    # -- read-only ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The state for people and machines (``version``, ``slot``, ``channel``, ``state``, ...).
        Raises ``StateError`` for a corrupt state file (``recover`` rebuilds it). A config.toml
        that fails its checks is reported in ``config_problems`` (the usable values shown), not raised."""
        config_problems: list[str] = []
        try:
            cfg = self.config()
        except ConfigError:
            if not self.layout.config.exists():
                raise
            cfg, config_problems = config_mod.load_for_recovery(self.layout.root)
        s = self.site.load()
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
            # the data snapshot a rollback would put back (None: the data would stay as it is)
            "rollback_data": s.active_content.data_backup if s.active_content else None,
            "backups": backups_mod.count(self.layout),
            "operation": s.op.to_dict() if s.op else None,
            "bad_versions": {v: b.to_dict() for v, b in s.bad_versions.items()},
            "rolled_back_versions": {v: b.to_dict() for v, b in s.rolled_back_versions.items()},
            "last_error": s.last_error,
            "current": str(self.layout.current),
            "current_slot": linked,
            "needs_recovery": not s.resting or linked != s.link_target(),
            "fleet": fleet_state.summary(self.layout.root),
            "reports": reporting.summary(self.layout.root, cfg),  # fleet feedback: spool, counters, collector
            "repo_url": redact_url(cfg.text("repo_url")),  # status is shown and served: no credentials
            "client_id": cfg.text("client_id"),
            "install_dir": str(self.layout.root),
            "updated": s.updated,
            "config_problems": config_problems,
        }

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        # Redacted on reading too: records written before redaction existed (or by an older client).
        records: list[dict[str, Any]] = redact_data(history_mod.read(self.layout.history, limit))
        return records

    def entry_point(self) -> Path | None:
        """The active release's entry point inside its slot (``None`` when the release names none),
        for ``pinnacle-update run``. Raises ``StateError`` when nothing is installed."""
        s = self.site.load()
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
        s = self.site.load()
        if s.active is None or s.active_version is None:
            raise StateError("nothing is installed, so there is nothing to health-check")
        return check_health(
            HealthSettings.from_config(cfg), self.site.hook_context(s, s.active, s.active_version),
            log=self.layout.hooks_log,
        )

    def rollback_target(self) -> results.RollbackTarget | None:
        """What ``rollback`` would switch to, and whether it may without ``force`` (no lock, no change)."""
        return rollback_target(self.site.load(), self.config())

    # -- check -------------------------------------------------------------------------------
    def check(
        self,
        version: str | None = None,
        *,
        force: bool = False,
        confirm_major: bool = False,
        wait: bool = False,
        current_version: str | None = None,
        record: bool = True,
    ) -> results.CheckResult:
        """Refresh trusted metadata and say what ``install`` would do (nothing is installed).
        ``current_version``: answer for a client running that version (see ``checking.evaluate``).
        ``record``: append an ``op: check`` record to the history."""
        started = time.monotonic()
        with self.locked(wait):
            cfg = self.config()
            s = self.recovery.load_or_rebuild([])
            with self.site.repository(cfg) as client:
                result = evaluate(self.site, client, cfg, s, version, force, confirm_major,
                                  current_version=current_version)
                stats = client.stats
                if record:
                    self.site.record(
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

    def releases(self, *, wait: bool = False) -> list[Release]:
        """This platform's releases in the configured channel, verified through TUF (oldest first)."""
        with self.locked(wait):
            cfg = self.config()
            with self.site.repository(cfg) as client:
                client.refresh()
                return client.channel_index(cfg.text("channel")).for_platform(cfg.text("platform"))

    def channels(self, *, wait: bool = False) -> list[str]:
        """The channels the repository offers (the roles its signed top-level targets delegate)."""
        with self.locked(wait), self.site.repository(self.config()) as client:
            client.refresh()
            return client.channels()

    # -- install -------------------------------------------------------------------------------
    def install(
        self,
        version: str | None = None,
        *,
        force: bool = False,
        confirm_major: bool = False,
        wait: bool = False,
        progress: results.Progress | None = None,
        auto_only: bool = False,
    ) -> results.InstallResult:
        """Install ``version`` (or what policy picks) into the inactive slot and switch to it.

        ``auto_only``: install only what policy allows unattended (the continuous updater).
        Raises ``InstallError`` (nothing changed), ``HealthCheckError`` (rolled back), and the
        repository/trust/state errors of the steps.
        """
        started = time.monotonic()
        with self.locked(wait):
            self.recovery.recover()
            cfg = self.config()
            s = self.site.load()
            with self.site.repository(cfg) as client:
                found = evaluate(self.site, client, cfg, s, version, force, confirm_major)
                if found.release is None and version is not None:
                    raise InstallRefused(f"not installing {version}: {found.reason}")
                target = found.auto_release if auto_only else found.release
                if target is None:
                    reason = found.reason if found.release is None else f"not automatic: {found.reason}"
                    return results.InstallResult("up_to_date", s.active_version, s.active_version, s.active,
                                                 reason=reason)
                if target is found.return_to:
                    return self._leave_yanked(client, cfg, s, found, started, progress)
                plan = plan_update(found.releases, installed(s), target)
                return self._install_release(client, cfg, s, StageRequest(target, "install", started, progress, plan))

    def _install_release(
        self, client: RepositoryClient, cfg: ClientConfig, s: SlotState, request: StageRequest
    ) -> results.InstallResult:
        """Stage the release in the inactive slot (up to a saved TRIAL), then activate it."""
        staged = self.stager.stage(client, cfg, s, request)
        return self.activation.activate(cfg, staged.state, request.started, staged.downloaded, staged.baseline,
                                        staged.route)

    def _leave_yanked(
        self, client: RepositoryClient, cfg: ClientConfig, s: SlotState, found: results.CheckResult, started: float,
        progress: results.Progress | None,
    ) -> results.InstallResult:
        """The installed release was yanked: switch to ``found.return_to`` instantly when the other
        slot holds exactly it (the rollback machinery), otherwise install it (a downgrade, health-gated)."""
        back, yanked = found.return_to, s.active_version
        assert back is not None
        why = f"yanked by the publisher: {(found.fleet.get('installed_yanked') or {}).get('reason', '')}"
        other = s.other_content
        instant = other is not None and (other.version, other.sha256) == (back.version, back.content.sha256)
        self.site.record({"op": "yank", "version": yanked, "reason": why, "to_version": back.version,
                          "via": "rollback" if instant else "install"})
        if instant:
            # leaving a yanked release goes back with its data; if that snapshot is gone, the code
            # still goes back (a yank says the release must not run) and the data stays as it is
            keep = data_snapshot_missing(self.layout, s)
            rb = self.activation.rollback(cfg, s, why, mark_bad=False, keep_data=keep)
            return results.InstallResult("rolled_back", rb.version, rb.from_version, rb.slot, 0,
                                 time.monotonic() - started, reason=why)
        result = self._install_release(client, cfg, s, StageRequest(back, "install", started, progress))
        return replace(result, reason=why)

    def switch_channel(
        self, channel: str, *, allow_downgrade: bool = False, wait: bool = False,
        progress: results.Progress | None = None,
    ) -> dict[str, Any]:
        """Follow ``channel`` from now on. Never a downgrade unless ``allow_downgrade`` (then its newest
        release is installed first, and the config changes only once that succeeded)."""
        started = time.monotonic()
        with self.locked(wait):
            self.recovery.recover()
            cfg = self.config()
            previous = cfg.text("channel")
            if channel == previous:
                raise ConfigError(f"already on channel {channel}")
            config_mod.parse_value("channel", channel)
            s = self.site.load()
            with self.site.repository(cfg) as client:
                client.refresh()
                offered = client.channels()  # a name the repository does not delegate is a typo, not an attack
                if channel not in offered:
                    raise ConfigError(f"the repository has no channel {channel!r} (it offers {', '.join(offered)})")
                index = client.channel_index(channel)
                plan = switch_channel_plan(index.for_platform(cfg.text("platform")), s.active_version, channel,
                                           allow_downgrade)
                done = None
                if plan.install is not None:
                    done = self._install_release(client, cfg, s,
                                                 StageRequest(plan.install, "install", started, progress))
            config_mod.update_values(self.layout.root, {"channel": channel})
            self.site.record({"op": "channel", "from_channel": previous, "channel": channel, "reason": plan.reason})
        return {"channel": channel, "previous_channel": previous, "version": self.site.load().active_version,
                "reason": plan.reason, "install": done.to_dict() if done else None}

    def repair(self, *, wait: bool = False, progress: results.Progress | None = None) -> results.InstallResult:
        """Reinstall the active version into the inactive slot from the repository and switch to it."""
        started = time.monotonic()
        with self.locked(wait):
            self.recovery.recover()
            cfg = self.config()
            s = self.site.load()
            active = s.active_content
            if active is None:
                raise StateError("nothing is installed, so there is nothing to repair; use install")
            with self.site.repository(cfg) as client:
                client.refresh()
                release = self.site.find_release(client, cfg, active)
                return self._install_release(client, cfg, s, StageRequest(release, "repair", started, progress))

    # -- rollback ---------------------------------------------------------------------------------
    def rollback(self, *, wait: bool = False, force: bool = False, keep_data: bool = False,
                 reason: str = "manual rollback", mark_bad: bool = False) -> results.RollbackResult:
        """Instant switch to the version in the inactive slot; the version left is recorded as rolled
        back by the operator (not offered automatically again, installable by name), or as bad with
        ``mark_bad`` (refused unless forced).
        The persistent data goes back to the snapshot taken before the running version went live
        (what it replaces is kept as a backup) unless ``keep_data``. Refuses when the inactive slot
        holds no complete version, one older than ``max_rollback_days`` or a bad one (both unless
        ``force``), or when that snapshot was pruned (unless ``keep_data``)."""
        with self.locked(wait):
            self.recovery.recover()
            cfg = self.config()
            s = self.site.load()
            if not force:
                refuse_too_old(rollback_target(s, cfg))
            return self.activation.rollback(cfg, s, reason, mark_bad=mark_bad, allow_bad=force, keep_data=keep_data,
                                            operator=True)

    # -- data backups -------------------------------------------------------------------------------
    def backups(self) -> list[backups_mod.Backup]:
        """Every complete data backup, oldest first (no lock: backups appear and go by renames)."""
        return backups_mod.list_backups(self.layout)

    def backup(self, backup_id: str) -> backups_mod.Backup:
        """One backup with its entries; ``BackupError`` when there is none of that id."""
        return backups_mod.load(self.layout, backup_id)

    def verify_backup(self, backup_id: str) -> list[str]:
        """Problems of one backup against its manifest (empty: intact)."""
        return backups_mod.verify(self.layout, backup_id)

    def restore_backup(self, backup_id: str, *, wait: bool = False) -> results.RestoreReport:
        """Put backup ``backup_id``'s data in place with the running version (no code change): stop,
        restore (journaled), start. What the data was is kept as a new backup."""
        started = time.monotonic()
        with self.locked(wait):
            self.recovery.recover()
            cfg = self.config()
            s = self.site.load()
            source = backups_mod.load(self.layout, backup_id)
            if s.active is None or s.active_version is None:
                raise StateError("nothing is installed: there is no application to restore data for")
            ctx = self.site.hook_context(s, s.active, s.active_version)
            stop = self.site.hook("stop_command", cfg, ctx)
            if not stop.ok:
                raise StateError(f"{stop.describe()}; nothing was restored")
            notes: list[str] = []
            try:
                self.site.emit("step", step="restore_data", backup=backup_id)
                done = backups_mod.restore(self.layout, backup_id, backups_mod.new_id(), cfg.persistent_paths,
                                           version=source.version, rejected_version=s.active_version,
                                           reason=f"restore of backup {backup_id}", progress=self.site.progress(None))
            finally:
                start = self.site.hook("start_command", cfg, ctx)
                if not start.ok:
                    notes.append(start.describe())
            report = results.RestoreReport(backup_id, done.rejected, s.active_version, time.monotonic() - started,
                                           tuple(notes))
            self.site.record({"op": "restore", **report.to_dict()})
            return report

    def prune_backups(self, *, wait: bool = False) -> list[str]:
        """Apply the retention (``max_rollback_days``, ``max_backups``) now; the removed ids."""
        with self.locked(wait):
            cfg = self.config()
            removed = self.activation.prune_backups(cfg, self.site.load())
            if removed:
                self.site.record({"op": "prune_backups", "removed": removed})
            return removed

    # -- recovery, verify, doctor -------------------------------------------------------------------
    def recover(self, *, wait: bool = False) -> results.RecoveryReport:
        """Resolve any interrupted state now (also run by every changing operation)."""
        with self.locked(wait):
            return self.recovery.recover()

    def rebuild_state(self, why: str) -> SlotState:
        """Reconstruct the state from the slots (see ``Recovery.rebuild_state``)."""
        return self.recovery.rebuild_state(why)

    def verify(self, all_slots: bool = False, *, wait: bool = False) -> results.VerifyReport:
        """Re-hash the active slot (``all_slots``: both) against its signed manifest."""
        return self.inspection.verify(all_slots, wait=wait)

    def doctor(self) -> list[results.DoctorCheck]:
        """Requirements and conflicts: config, state, permissions, free space, lock, repository, clock."""
        return self.inspection.doctor()
