"""The public client API (docs/API.md): ``AutoUpdater`` over one install directory.

    from pinnacle_updates.client import AutoUpdater, UpdateConfig, UpdateType

    updater = AutoUpdater("/opt/myapp")
    if updater.check().update_available:
        updater.install()
    asyncio.run(updater.run_continuous_updates())

The CLI (``client.cli``), the agent (``client.agent``) and embedding applications all go through
this class; it delegates each operation to ``client.installer.Installer`` and adds the continuous
loop and the config setters. Every answer about what to install comes from one policy path
(``client.checking``): rollout holds, A/B groups, required versions, yanks and the versions this
machine rolled back from all apply, whoever asks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pinnacle_updates.formats.index import Release

from . import config as config_mod
from . import fleet_state, results, seed_compat
from .activation import cached_releases
from .backups import Backup
from .config import ClientConfig, Value
from .errors import ConfigError, UpdateError
from .hooks import HealthResult
from .installer import Installer
from .policy import UpdateConfig, jittered_interval

log = logging.getLogger("pinnacle.updater")

__all__ = ["AutoUpdater"]


class AutoUpdater:
    """Check, install and roll back one install directory; optionally on a schedule.

    ``on_event`` receives every step, state save, hook, progress and recovery action of the
    operations this object runs (the agent's live progress is built from it)."""

    def __init__(self, install_dir: str | Path | UpdateConfig | Mapping[str, Any] | None = None, *,
                 config: UpdateConfig | Mapping[str, Any] | str | Path | None = None,
                 on_event: results.EventSink | None = None) -> None:
        """``AutoUpdater("/opt/myapp")``; the seed's ``AutoUpdater(config)`` and ``AutoUpdater()`` take the
        install directory from ``PINNACLE_INSTALL_DIR``. A seed configuration (its ``UpdateConfig``, its
        JSON file's dict, or that file's path as ``config=``) is written into config.toml through the one
        mapping of ``client.seed_compat`` (warnings for keys that mean nothing here)."""
        if isinstance(install_dir, UpdateConfig | Mapping):
            install_dir, config = None, install_dir
        if install_dir is None:
            install_dir = config_mod.env_install_dir()
            if install_dir is None:
                raise ConfigError("no install directory: pass AutoUpdater(install_dir) or set PINNACLE_INSTALL_DIR")
        self.installer = Installer(Path(install_dir), on_event=on_event)
        """The engine behind this API (for tests and tools; its interface may change)."""
        if config is not None:
            seed_compat.apply(self.install_dir, config)

    @property
    def install_dir(self) -> Path:
        """The install directory, absolute."""
        return self.installer.layout.root

    # -- config --------------------------------------------------------------------------------
    @property
    def config(self) -> UpdateConfig:
        """The update policy settings of ``config.toml``."""
        return self.installer.config().to_update_config()

    def settings(self) -> ClientConfig:
        """Every setting of ``config.toml``, validated (``ConfigError`` when it is not)."""
        return self.installer.config()

    def configure(self, changes: Mapping[str, Any]) -> ClientConfig:
        """Change settings (typed values, as from JSON): all validated together and written in one
        atomic rewrite, or ``ConfigError`` names the first bad one and nothing changes."""
        return config_mod.update_values(self.install_dir, changes)

    def set_setting(self, key: str, text: str) -> Value:
        """Change one setting from text (lists space- or comma-separated); returns the stored value."""
        return config_mod.set_value(self.install_dir, key, text)

    def init(self, repo_url: str, root_json: Path, channel: str = config_mod.DEFAULT_CHANNEL, platform: str = "auto",
             **settings: Value) -> ClientConfig:
        """Create the install directory: config (with a new client id), trusted root, slots, state."""
        return config_mod.init(self.install_dir, repo_url, root_json, channel, platform, **settings)

    # -- updates -------------------------------------------------------------------------------
    def check(self, version: str | None = None, *, current_version: str | None = None,
              confirm_major: bool = False, force: bool = False, wait: bool = False,
              record: bool = True) -> results.CheckResult:
        """Refresh signed metadata and say what ``install(version)`` would do; nothing changes.

        ``current_version``: the answer for a client running that version (an application asking
        for itself) instead of the installed one. ``record``: log an ``op: check`` history record."""
        return self.installer.check(version, force=force, confirm_major=confirm_major, wait=wait,
                                    current_version=current_version, record=record)

    def releases(self) -> list[Release]:
        """This platform's releases in the configured channel, verified (oldest first)."""
        return self.installer.releases()

    def channels(self) -> list[str]:
        """The channels the repository offers, custom names included (verified, sorted)."""
        return self.installer.channels()

    def install(self, version: str | None = None, *, confirm_major: bool = False, force: bool = False,
                wait: bool = False, progress: results.Progress | None = None,
                auto_only: bool = False) -> results.InstallResult:
        """Install ``version`` (None: what policy picks) into the inactive slot, switch, health-check,
        commit or roll back. ``auto_only``: only what policy allows unattended."""
        return self.installer.install(version, confirm_major=confirm_major, force=force, wait=wait,
                                      progress=progress, auto_only=auto_only)

    def rollback(self, *, force: bool = False, wait: bool = False, keep_data: bool = False,
                 reason: str = "manual rollback", mark_bad: bool = False) -> results.RollbackResult:
        """Switch back to the version in the other slot, instantly; the version left is recorded as
        rolled back by the operator (skipped by automatic updates, installable by name), or as bad
        with ``mark_bad`` (installed again only with ``force``).
        The persistent data goes back to its snapshot from before the running version was installed
        (the data it replaces is kept as a backup) unless ``keep_data``."""
        return self.installer.rollback(force=force, wait=wait, keep_data=keep_data, reason=reason, mark_bad=mark_bad)

    def rollback_target(self) -> results.RollbackTarget | None:
        """What ``rollback`` would switch to and whether it may without ``force`` (None: nothing)."""
        return self.installer.rollback_target()

    def switch_channel(self, channel: str, *, allow_downgrade: bool = False, wait: bool = False,
                       progress: results.Progress | None = None) -> dict[str, Any]:
        """Follow ``channel`` from now on (never a downgrade unless ``allow_downgrade``)."""
        return self.installer.switch_channel(channel, allow_downgrade=allow_downgrade, wait=wait, progress=progress)

    # -- state ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Installed version and slot, channel, state, previous version, bad versions, fleet view."""
        return self.installer.status()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """``history.jsonl`` records, oldest first (``limit``: only the newest N)."""
        return self.installer.history(limit)

    def ab_groups(self) -> dict[str, str]:
        """This machine's A/B group per release that has an A/B test, as last verified from the
        signed fleet fields (no network; {} when none)."""
        groups = fleet_state.load(self.install_dir).get("groups")
        return {str(k): str(v) for k, v in groups.items()} if isinstance(groups, dict) else {}

    def record_metric(self, name: str, value: float) -> bool:
        """Keep one value of an application metric (``^[a-z][a-z0-9_.]{0,47}$``, a finite number) for
        the next outcome report about the running version (a heartbeat, a committed install), which
        carries each name's mean; the collector compares A/B groups by it (docs/API.md). No network,
        no lock on the install. False when reporting is off (nothing kept); ``ConfigError`` for a bad
        name or value, or a 17th name pending."""
        from . import reporting  # the sender's module loads httpx: only for applications that report

        return reporting.record_metric(self.install_dir, name, value)

    def cached_releases(self) -> list[dict[str, Any]]:
        """Release artifacts in the verified download cache within ``max_rollback_days``."""
        return cached_releases(self.installer.layout, self.settings().integer("max_rollback_days"))

    def entry_point(self) -> Path | None:
        """The active release's entry point (None: the release names none)."""
        return self.installer.entry_point()

    # -- data backups ----------------------------------------------------------------------------
    def backups(self) -> list[Backup]:
        """Every data backup (snapshots taken before updates, data replaced by restores), oldest first."""
        return self.installer.backups()

    def backup(self, backup_id: str) -> Backup:
        """One backup with its manifest entries; ``BackupError`` when there is none of that id."""
        return self.installer.backup(backup_id)

    def verify_backup(self, backup_id: str) -> list[str]:
        """Problems of one backup against its manifest (empty list: intact)."""
        return self.installer.verify_backup(backup_id)

    def restore_backup(self, backup_id: str, *, wait: bool = False) -> results.RestoreReport:
        """Put a backup's data in place under the running version (stop, restore, start); the data
        it replaces is kept as a new backup."""
        return self.installer.restore_backup(backup_id, wait=wait)

    def prune_backups(self, *, wait: bool = False) -> list[str]:
        """Remove backups beyond ``max_rollback_days`` and ``max_backups`` now; the removed ids."""
        return self.installer.prune_backups(wait=wait)

    # -- maintenance ---------------------------------------------------------------------------
    def recover(self, *, wait: bool = False) -> results.RecoveryReport:
        """Resolve an interrupted install or rollback now (every changing operation does it first)."""
        return self.installer.recover(wait=wait)

    def verify(self, all_slots: bool = False, *, wait: bool = False) -> results.VerifyReport:
        """Re-hash installed files against their signed manifest."""
        return self.installer.verify(all_slots, wait=wait)

    def repair(self, *, wait: bool = False, progress: results.Progress | None = None) -> results.InstallResult:
        """Reinstall the active version into the other slot from the repository and switch to it."""
        return self.installer.repair(wait=wait, progress=progress)

    def health_check(self) -> HealthResult:
        """Run the configured health check against the active version now."""
        return self.installer.health_check()

    def doctor(self) -> list[results.DoctorCheck]:
        """Free space, permissions, clock, repository, config and the lock."""
        return self.installer.doctor()

    # -- the continuous loop ---------------------------------------------------------------------
    async def run_continuous_updates(self, iterations: int | None = None, rng: random.Random | None = None) -> None:
        """Every ``check_interval`` seconds (with jitter), install what policy allows unattended.

        Failures are logged and the loop goes on: a failed install has already rolled back or left
        the running slot untouched. ``iterations`` bounds the loop (tests, one-shot cron runs).
        """
        rng = rng or random.Random()
        done = 0
        while iterations is None or done < iterations:
            config = self.config
            if config.enabled:
                try:
                    result = await asyncio.to_thread(self.installer.install, auto_only=True, wait=True)
                    if result.outcome != "up_to_date":
                        log.info("installed %s (was %s)", result.version, result.previous_version)
                except UpdateError as exc:
                    log.warning("update failed: %s", exc)
            done += 1
            if iterations is not None and done >= iterations:
                break
            await asyncio.sleep(jittered_interval(config.check_interval, rng))
