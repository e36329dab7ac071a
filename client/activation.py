"""Activation: from a saved TRIAL to COMMITTED, or back; and every rollback.

The state machine is ``client.slots`` (states, events, the transition table, pure transitions);
this module drives it, saving each state *before* the step it guards::

    TRIAL -> stop_command -> data snapshot (saved with the trial) -> swap ``current`` -> post_swap
          -> the release's migration -> start_command -> health check
          -> save COMMITTED                  (any failure after the snapshot: automatic rollback;
                                              a snapshot that cannot be taken: FAILED, nothing swapped)

    rollback (automatic or manual): save ROLLING_BACK (with the snapshot to restore) -> stop_command
          -> restore the data (``client.backups``, journaled) -> swap ``current`` back
          -> on_rollback -> start_command -> save ROLLED_BACK (automatic: the version left is marked
             bad; manual: recorded as rolled back by the operator, or bad with --mark-bad)

Recovery (``client.recovery``) resumes both from the saved state, which is why hooks must be
idempotent. ``rollback_target`` is the one rule for what a manual rollback may switch to (the
CLI, the API and the agent's backups view all read it).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any
from urllib.parse import unquote

from pinnacle_updates.client import backups
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import (
    BackupError,
    BackupSpaceError,
    HealthCheckError,
    StateError,
    UpdateError,
)
from pinnacle_updates.client.hooks import HealthResult, HealthSettings, HookContext, check_health
from pinnacle_updates.client.install_dir import Part, one_line
from pinnacle_updates.client.results import InstallResult, RollbackResult, RollbackTarget
from pinnacle_updates.client.slots import Layout, SlotState, age_days


class Activation(Part):
    """Swaps, health checks, commits and rollbacks on ``site``."""

    def activate(
        self,
        cfg: ClientConfig,
        s: SlotState,
        started: float,
        downloaded: int,
        baseline: float | None,
        route: dict[str, Any] | None = None,
    ) -> InstallResult:
        """From a saved TRIAL: stop, snapshot the data, swap, post_swap, the release's migration,
        start, health check; commit or roll back (code and data). ``route`` (how the slot was
        staged: path, bytes saved, fallback) goes into the history."""
        site = self.site
        op = s.op
        assert op is not None and op.slot is not None and op.version is not None
        ctx = site.hook_context(s, op.slot, op.version)
        previous = s.active_version
        failure = cause = ""
        health: HealthResult | None = None
        route = dict(route or {})
        try:
            stop = site.hook("stop_command", cfg, ctx)
            if not stop.ok:
                failure, cause = stop.describe(), "stop"
            elif op.snapshot and op.data_backup is None:
                s = self._snapshot(cfg, s, route)
        except BackupError as exc:  # before the swap: nothing changed but the stopped application
            raise self._abort_trial(cfg, s, exc, started) from exc
        except Exception as exc:  # defence in depth: whatever a check missed still rolls back
            failure, cause = _describe(exc), "other"
        if not failure:
            failure, cause, health = self._switch(cfg, s, ctx, baseline)
        if not failure:
            try:
                s = site.save(sm.commit(s))
            except StateError as exc:
                failure, cause = f"cannot commit: {exc}", "other"
        if failure:
            try:
                back = self.rollback(cfg, s, failure, mark_bad=True, cause=cause)
            except Exception as exc:  # the saved TRIAL/ROLLING_BACK lets recover finish it
                raise StateError(
                    f"{op.version} failed after the swap ({failure}) and the rollback did not finish "
                    f"({_describe(exc)}); run `pinnacle-update recover` to finish it"
                ) from exc
            where = (
                f"rolled back to {back.version}" if back.version else "nothing to roll back to; no version is active"
            )
            if back.data_restored:
                where += f", data restored from backup {back.data_restored}"
            raise HealthCheckError(f"{op.version} failed after the swap ({failure}); {where}")
        other = s.other_content
        if other is not None and other.version == op.version:
            # A repair leaves the damaged copy of the same version behind: never roll back onto it.
            s = site.save(sm.forget_slot(s, s.next_slot))
        duration = time.monotonic() - started
        self.prune_cache(cfg, op.version)
        pruned = self.prune_backups(cfg, s)
        if pruned:
            route["backups_pruned"] = pruned
        site.record(
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
                **route,
            }
        )
        site.emit("step", step="committed", version=op.version, slot=op.slot)
        return InstallResult(
            "committed",
            op.version,
            previous,
            op.slot,
            downloaded,
            duration,
            health=health.to_dict() if health else None,
            route=route,
        )

    def _switch(
        self, cfg: ClientConfig, s: SlotState, ctx: HookContext, baseline: float | None
    ) -> tuple[str, str, HealthResult | None]:
        """Swap ``current``, run post_swap, the release's migration and start_command, then the
        health check: ``(failure, cause class, health)``, failure empty when all passed."""
        site = self.site
        op = s.op
        assert op is not None and op.slot is not None
        try:
            site.emit("step", step="swap", slot=op.slot, version=op.version)
            self.layout.point_current(op.slot)
            steps = (("post_swap", "migration"), ("migration", "migration"), ("start_command", "start"))
            for name, cause in steps:
                result = site.migrate(cfg, ctx, op.migration) if name == "migration" else site.hook(name, cfg, ctx)
                if not result.ok:
                    return result.describe(), cause, None
            site.emit("step", step="health_check", version=op.version)
            health = check_health(HealthSettings.from_config(cfg), ctx, baseline, log=self.layout.hooks_log)
            if not health.healthy:
                return f"health check failed: {health.reason}", "health_check", health
            return "", "", health
        except Exception as exc:  # defence in depth: whatever a check missed still rolls back
            return _describe(exc), "other", None

    def _snapshot(self, cfg: ClientConfig, s: SlotState, route: dict[str, Any]) -> SlotState:
        """Snapshot the persistent data (the application is stopped) and save its id with the
        trial, before the swap. ``BackupError`` when it cannot be taken, unless
        ``backup_required = false``: then the update goes on without one, said in the history."""
        op = s.op
        assert op is not None
        self.site.emit("step", step="snapshot", version=s.active_version)
        try:
            backup = backups.snapshot(self.layout, cfg.persistent_paths, version=s.active_version,
                                      for_version=op.version, progress=self.site.progress(None))
        except BackupError as exc:
            if cfg.flag("backup_required"):
                raise
            route["data_backup_skipped"] = one_line(exc)
            return s
        route.update(data_backup=backup.id, data_backup_method=backup.method, data_backup_files=backup.files,
                     data_backup_bytes=backup.bytes, data_backup_seconds=backup.seconds)
        self.site.emit("step", step="snapshotted", backup=backup.id, method=backup.method, files=backup.files,
                       bytes=backup.bytes, seconds=backup.seconds)
        return self.site.save(sm.with_data_backup(s, backup.id))

    def _abort_trial(self, cfg: ClientConfig, s: SlotState, exc: BackupError, started: float) -> BackupError:
        """The snapshot failed before the swap: start the running version again, save FAILED and
        say so. ``current`` never moved, so the running slot and its data are as they were."""
        site = self.site
        op = s.op
        assert op is not None
        reason = one_line(exc)
        notes: list[str] = []
        if s.active is not None and s.active_version is not None:
            self._noted_hook("start_command", cfg, site.hook_context(s, s.active, s.active_version), notes)
        s = site.save(sm.abort(s, reason))  # the staged slot is discarded: the next install stages again
        site.emit("step", step="failed", reason=reason)
        site.record({"op": op.kind, "from_version": s.active_version, "version": op.version, "sha256": op.sha256,
                     "outcome": "failed", "cause": "space" if isinstance(exc, BackupSpaceError) else "other",
                     "reason": reason, "notes": notes, "duration": round(time.monotonic() - started, 3)})
        keeps = f"{s.active_version} keeps running" if s.active_version else "nothing was installed"
        return type(exc)(f"{reason}; nothing was swapped, {keeps}")

    def prune_backups(self, cfg: ClientConfig, s: SlotState) -> list[str]:
        """Retention after a commit: ``max_rollback_days`` and ``max_backups``; the snapshot a
        rollback of the running version would restore is kept while it may be used."""
        keep = s.active_content.data_backup if s.active_content else None
        try:
            return backups.prune(self.layout, max_days=cfg.integer("max_rollback_days"),
                                 max_count=cfg.integer("max_backups"), keep=[keep])
        except (BackupError, OSError):
            return []  # best effort: the next commit or `backups prune` tries again

    def prune_cache(self, cfg: ClientConfig, version: str) -> None:
        """Drop cached artifacts of other releases (best effort; the slots hold what rollback needs)."""
        with contextlib.suppress(UpdateError, OSError), self.site.repository(cfg) as client:
            keep = set()
            for name in os.listdir(self.layout.cache):
                target = unquote(name)
                if target.split("/")[2:3] == [version]:  # <channel>/<platform>/<version>/...
                    keep.add(target)
            client.prune_cache(keep)

    # -- rollback -----------------------------------------------------------------------------------
    def rollback(
        self, cfg: ClientConfig, s: SlotState, reason: str, *, mark_bad: bool, allow_bad: bool = False,
        keep_data: bool = False, cause: str = "", operator: bool = False,
    ) -> RollbackResult:
        """Save ROLLING_BACK (the table refuses what may not roll back), then finish it.

        Data: an automatic rollback restores the trial's snapshot; a manual one the snapshot taken
        before the running version went live, unless ``keep_data``. A snapshot that should be there
        and is not (pruned) refuses the manual rollback rather than start old code on new data."""
        started = time.monotonic()
        restore = data_to_restore(self.layout, s, keep_data)
        rejected = backups.new_id() if restore else None
        s = self.site.save(sm.begin_rollback(s, reason, mark_bad, allow_bad=allow_bad, restore=restore,
                                             rejected=rejected, operator=operator))
        return self.finish_rollback(cfg, s, started, cause=cause)

    def finish_rollback(self, cfg: ClientConfig, s: SlotState, started: float, cause: str = "") -> RollbackResult:
        """From a saved ROLLING_BACK: stop, restore the data, swap back, on_rollback, start; save
        ROLLED_BACK. Hook failures here are recorded, not fatal: going back must not get stuck."""
        site = self.site
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
        self._noted_hook("stop_command", cfg, ctx, notes)
        restored: backups.RestoreResult | None = None
        if op.data_backup is not None and op.data_rejected is not None:
            site.emit("step", step="restore_data", backup=op.data_backup)
            try:  # the application is stopped: data and code go back together
                restored = backups.restore(self.layout, op.data_backup, op.data_rejected, cfg.persistent_paths,
                                           version=op.version, rejected_version=op.leaving_version,
                                           reason=op.reason, progress=site.progress(None))
            except (BackupError, OSError) as exc:
                notes.append(f"data not restored from backup {op.data_backup}: {one_line(exc)}")
        site.emit("step", step="swap_back", slot=op.slot, version=op.version)
        self.layout.point_current(op.slot)
        for name in ("on_rollback", "start_command") if op.slot is not None else ("on_rollback",):
            self._noted_hook(name, cfg, ctx, notes)
        s = site.save(sm.finish_rollback(s))
        pruned = self.prune_backups(cfg, s) if restored and restored.rejected else []
        duration = time.monotonic() - started
        record: dict[str, Any] = {
            "op": "rollback",
            "from_version": op.leaving_version,
            "from_slot": op.leaving,
            "version": op.version,
            "slot": op.slot,
            "reason": op.reason,
            "cause": cause or ("manual" if op.leaving_version and op.slot is not None else "other"),
            "outcome": "rolled_back",
            "duration": round(duration, 6),
            "notes": notes,
            "data_restored": restored.backup if restored else None,
            "data_rejected": restored.rejected if restored else None,
        }
        if pruned:
            record["backups_pruned"] = pruned
        if op.mark_bad and op.leaving_version:
            record["bad_version"] = op.leaving_version
        elif op.operator and op.leaving_version:  # what a lost state file is rebuilt from (history)
            record["rolled_back_version"] = op.leaving_version
        site.record(record)
        site.emit("step", step="rolled_back", version=op.version, slot=op.slot, reason=op.reason)
        return RollbackResult(op.version, op.slot, op.leaving_version, op.leaving, op.reason, duration, tuple(notes),
                              data_restored=restored.backup if restored else None,
                              data_rejected=restored.rejected if restored else None)

    def _noted_hook(self, name: str, cfg: ClientConfig, ctx: HookContext, notes: list[str]) -> None:
        """Run hook ``name`` for a rollback; any failure, even an unexpected exception, is a note."""
        try:
            result = self.site.hook(name, cfg, ctx)
        except Exception as exc:  # going back must not get stuck on a hook
            notes.append(f"{name} could not run ({_describe(exc)})")
            return
        if not result.ok:
            notes.append(result.describe())


def _describe(exc: Exception) -> str:
    """``exc`` as one line; one that no check foresaw (not an ``UpdateError`` or ``OSError``) named
    with its type, since its message may be empty or mean little alone."""
    detail = one_line(exc)
    if isinstance(exc, UpdateError | OSError):
        return detail
    return f"unexpected {type(exc).__name__}" + (f": {detail}" if detail else "")


def data_to_restore(layout: Layout, s: SlotState, keep_data: bool) -> str | None:
    """The data snapshot a rollback from ``s`` restores (None: the data stays as it is).

    From a trial: its snapshot, if one was taken. Manual: the snapshot taken just before the
    running version went live, unless ``keep_data``; ``StateError`` when it was pruned."""
    if s.state is sm.State.TRIAL:
        return s.op.data_backup if s.op is not None else None
    content = s.active_content
    if keep_data or content is None or content.data_backup is None:
        return None
    if data_snapshot_missing(layout, s):
        raise StateError(
            f"the data snapshot {content.data_backup} taken before {content.version} was installed no longer "
            "exists (pruned or removed); use --keep-data to roll back the code and keep the data as it is"
        )
    return content.data_backup


def data_snapshot_missing(layout: Layout, s: SlotState) -> bool:
    """The running version was installed with a data snapshot that no longer exists."""
    content = s.active_content
    return content is not None and content.data_backup is not None and not backups.exists(layout, content.data_backup)


def rollback_target(s: SlotState, cfg: ClientConfig) -> RollbackTarget | None:
    """The release a manual rollback would switch to (the inactive slot's), with what the rule says
    of it: too old for ``max_rollback_days``, or marked bad here. None: nothing to roll back to."""
    other = s.other_content
    if other is None or s.active is None:
        return None
    return RollbackTarget(
        version=other.version,
        slot=s.next_slot,
        installed=other.installed,
        age_days=age_days(other.installed) if other.installed else None,
        max_days=cfg.integer("max_rollback_days"),
        bad=other.version in s.bad_versions,
    )


def refuse_too_old(target: RollbackTarget | None) -> None:
    """``StateError`` when ``target`` is older than ``max_rollback_days`` allows (``force`` skips this)."""
    if target is not None and target.too_old:
        assert target.age_days is not None
        raise StateError(
            f"the previous version {target.version} was installed {target.age_days:.0f} days ago, more than "
            f"max_rollback_days ({target.max_days}); use --force to switch to it anyway"
        )


def cached_releases(layout: Layout, max_days: int) -> list[dict[str, Any]]:
    """Release artifacts in the verified target cache, newer than ``max_days`` (0: any age)."""
    cached = []
    with contextlib.suppress(OSError):
        for entry in sorted(layout.cache.iterdir()):
            parts = unquote(entry.name).split("/")
            if len(parts) < 4 or not entry.is_file():
                continue  # <channel>/<platform>/<version>/<file>
            age = (time.time() - entry.stat().st_mtime) / 86400
            if max_days and age > max_days:
                continue
            cached.append({"channel": parts[0], "platform": parts[1], "version": parts[2],
                           "file": parts[-1], "bytes": entry.stat().st_size, "age_days": round(age, 2)})
    return cached


__all__ = [
    "Activation", "age_days", "cached_releases", "data_snapshot_missing", "data_to_restore", "refuse_too_old",
    "rollback_target",
]
