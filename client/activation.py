"""Activation: from a saved TRIAL to COMMITTED, or back; and every rollback.

The state machine is ``client.slots`` (states, events, the transition table, pure transitions);
this module drives it, saving each state *before* the step it guards::

    TRIAL -> stop_command -> swap ``current`` -> post_swap -> start_command -> health check
          -> save COMMITTED                  (any failure after TRIAL: automatic rollback)

    rollback (automatic or manual): save ROLLING_BACK -> stop_command -> swap ``current`` back
          -> on_rollback -> start_command -> save ROLLED_BACK (version marked bad)

Recovery (``client.recovery``) resumes both from the saved state, which is why hooks must be
idempotent. ``rollback_target`` is the one rule for what a manual rollback may switch to (the
CLI, the API and the agent's backups view all read it).
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import HealthCheckError, StateError, UpdateError
from pinnacle_updates.client.hooks import HealthResult, HealthSettings, HookContext, check_health
from pinnacle_updates.client.install_dir import Part, one_line
from pinnacle_updates.client.results import InstallResult, RollbackResult, RollbackTarget
from pinnacle_updates.client.slots import Layout, SlotState


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
        """From a saved TRIAL: stop, swap, post_swap, start, health check; commit or roll back.
        ``route`` (how the slot was staged: path, bytes saved, fallback) goes into the history."""
        site = self.site
        op = s.op
        assert op is not None and op.slot is not None and op.version is not None
        ctx = site.hook_context(s, op.slot, op.version)
        previous = s.active_version
        failure = ""
        health: HealthResult | None = None
        try:
            stop = site.hook("stop_command", cfg, ctx)
            if not stop.ok:
                failure = stop.describe()
            else:
                site.emit("step", step="swap", slot=op.slot, version=op.version)
                self.layout.point_current(op.slot)
                for name in ("post_swap", "start_command"):
                    result = site.hook(name, cfg, ctx)
                    if not result.ok:
                        failure = result.describe()
                        break
                else:
                    site.emit("step", step="health_check", version=op.version)
                    health = check_health(HealthSettings.from_config(cfg), ctx, baseline, log=self.layout.hooks_log)
                    if not health.healthy:
                        failure = f"health check failed: {health.reason}"
        except Exception as exc:  # defence in depth: whatever a check missed still rolls back
            failure = _describe(exc)
        if not failure:
            try:
                s = site.save(sm.commit(s))
            except StateError as exc:
                failure = f"cannot commit: {exc}"
        if failure:
            try:
                back = self.rollback(cfg, s, failure, mark_bad=True)
            except Exception as exc:  # the saved TRIAL/ROLLING_BACK lets recover finish it
                raise StateError(
                    f"{op.version} failed after the swap ({failure}) and the rollback did not finish "
                    f"({_describe(exc)}); run `pinnacle-update recover` to finish it"
                ) from exc
            where = (
                f"rolled back to {back.version}" if back.version else "nothing to roll back to; no version is active"
            )
            raise HealthCheckError(f"{op.version} failed after the swap ({failure}); {where}")
        other = s.other_content
        if other is not None and other.version == op.version:
            # A repair leaves the damaged copy of the same version behind: never roll back onto it.
            s = site.save(sm.forget_slot(s, s.next_slot))
        duration = time.monotonic() - started
        self.prune_cache(cfg, op.version)
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
                **(route or {}),
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
            route=dict(route or {}),
        )

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
        self, cfg: ClientConfig, s: SlotState, reason: str, *, mark_bad: bool, allow_bad: bool = False
    ) -> RollbackResult:
        """Save ROLLING_BACK (the table refuses what may not roll back), then finish it."""
        started = time.monotonic()
        s = self.site.save(sm.begin_rollback(s, reason, mark_bad, allow_bad=allow_bad))
        return self.finish_rollback(cfg, s, started)

    def finish_rollback(self, cfg: ClientConfig, s: SlotState, started: float) -> RollbackResult:
        """From a saved ROLLING_BACK: stop, swap back, on_rollback, start; save ROLLED_BACK.
        Hook failures here are recorded, not fatal: going back must not get stuck."""
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
        site.emit("step", step="swap_back", slot=op.slot, version=op.version)
        self.layout.point_current(op.slot)
        for name in ("on_rollback", "start_command") if op.slot is not None else ("on_rollback",):
            self._noted_hook(name, cfg, ctx, notes)
        s = site.save(sm.finish_rollback(s))
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
        site.record(record)
        site.emit("step", step="rolled_back", version=op.version, slot=op.slot, reason=op.reason)
        return RollbackResult(op.version, op.slot, op.leaving_version, op.leaving, op.reason, duration, tuple(notes))

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


def age_days(stamp: str) -> float:
    """Days since ``stamp`` (``%Y-%m-%dT%H:%M:%SZ``); 0 for a stamp that does not parse."""
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - when).total_seconds() / 86400


__all__ = ["Activation", "age_days", "cached_releases", "refuse_too_old", "rollback_target"]
