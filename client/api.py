"""The Python API: ``AutoUpdater`` over one install directory.

    from pinnacle_updates.client import AutoUpdater, UpdateConfig, UpdateType

    updater = AutoUpdater("/opt/myapp")
    if updater.check().update_available:
        updater.install()
    asyncio.run(updater.run_continuous_updates())

Everything is delegated to ``client.installer.Installer``; this class adds the continuous loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from .errors import UpdateError
from .installer import CheckResult, Installer, InstallResult, Progress, RollbackResult
from .policy import UpdateConfig, jittered_interval

log = logging.getLogger("pinnacle.updater")


class AutoUpdater:
    """Check, install and roll back one install directory; optionally on a schedule."""

    def __init__(self, install_dir: str | Path) -> None:
        self.installer = Installer(Path(install_dir))

    @property
    def config(self) -> UpdateConfig:
        return self.installer.config().to_update_config()

    def check(self, version: str | None = None) -> CheckResult:
        return self.installer.check(version)

    def install(self, version: str | None = None, *, confirm_major: bool = False, force: bool = False,
                progress: Progress | None = None) -> InstallResult:
        return self.installer.install(version, confirm_major=confirm_major, force=force, progress=progress)

    def rollback(self) -> RollbackResult:
        return self.installer.rollback()

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
