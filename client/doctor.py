"""Verify and doctor: what is installed against what was signed, and what the machine needs.

``verify`` re-hashes slots against their signed manifests (cached under ``manifests/``, fetched
again through TUF when missing or not describing the expected release) and checks the persistent
path links. ``doctor`` checks requirements and conflicts: config, state, permissions, free space,
the lock, the repository and the clock. ``repair`` (reinstalling what verify finds damaged) is an
install (``client.installer``).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime

from pinnacle_updates.client import fleet_state
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import ConfigError, StateError, TrustError, UpdateError
from pinnacle_updates.client.install_dir import Part, lock_holder, mib
from pinnacle_updates.client.results import DoctorCheck, SlotReport, VerifyReport
from pinnacle_updates.client.slots import SlotState
from pinnacle_updates.client.staging import SPACE_SLACK
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.redact import redact_url
from pinnacle_updates.formats.tree import tree_size, verify_tree


class Doctor(Part):
    """Read-mostly checks of ``site`` (``verify`` records its result in the history)."""

    # -- verify ----------------------------------------------------------------------------------------
    def verify(self, all_slots: bool = False, *, wait: bool = False) -> VerifyReport:
        """Re-hash the active slot (``all_slots``: both) against its signed manifest."""
        site = self.site
        with site.locked(wait):
            cfg = site.config()
            s = site.load()
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
                    manifest = site.manifest_for(content, cfg, client)
                    if manifest is None:
                        client = client or site.repository(cfg)
                        manifest = site.manifest_for(content, cfg, client)
                    assert manifest is not None
                    problems = verify_tree(self.layout.slot(name), manifest, skip=cfg.persistent_paths)
                    problems += self._persistent_problems(name, cfg.persistent_paths)
                    reports.append(SlotReport(name, content.version, name == s.active, tuple(problems)))
            finally:
                if client is not None:
                    client.close()
            report = VerifyReport(tuple(reports))
            site.record(
                {
                    "op": "verify",
                    "all": all_slots,
                    "ok": report.ok,
                    "slots": {r.slot: len(r.problems) for r in reports if r.version},
                }
            )
            return report

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

    # -- doctor ----------------------------------------------------------------------------------------
    def doctor(self) -> list[DoctorCheck]:
        """Requirements and conflicts: config, state, permissions, free space, lock, repository, clock."""
        site = self.site
        checks: list[DoctorCheck] = []
        try:
            cfg: ClientConfig | None = site.config()
            checks.append(DoctorCheck("config", True, f"{self.layout.config} is valid"))
        except ConfigError as exc:
            cfg = None
            checks.append(DoctorCheck("config", False, str(exc)))
        s: SlotState | None = None
        try:
            s = site.load()
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
            m = site.manifest_for(s.active_content, cfg, None) if cfg else None
            if m is not None:
                need += 2 * tree_size(m)  # a slot of the same size plus its download, roughly
        checks.append(
            DoctorCheck(
                "free space",
                usage.free >= need,
                f"{mib(usage.free)} free; a slot like the active one needs about {mib(need)}",
            )
        )
        holder = None
        try:
            with fsutil.exclusive_lock(self.layout.lock, wait=False, record_pid=False):
                pass
        except fsutil.LockBusyError:
            holder = lock_holder(self.layout.lock) or "?"
        except OSError as exc:
            checks.append(DoctorCheck("lock", False, f"cannot open {self.layout.lock}: {exc.strerror}"))
        else:
            checks.append(DoctorCheck("lock", True, "no other update process is running"))
        if holder is not None:
            checks.append(
                DoctorCheck("lock", False, f"another pinnacle-update process (pid {holder}) holds the lock", True)
            )
        if cfg is not None and holder is None:
            checks.extend(self._repository(cfg))
        return checks

    def _repository(self, cfg: ClientConfig) -> list[DoctorCheck]:
        checks = []
        signed: tuple[str | None, ...] = ()
        try:
            with self.site.locked(False), self.site.repository(cfg) as client:
                client.refresh()
                index = client.channel_index(cfg.text("channel"))
                n = len(index.for_platform(cfg.text("platform")))
                signed = (client.signed_time(), index.updated)
            checks.append(
                DoctorCheck(
                    "repository",
                    True,
                    f"{redact_url(cfg.text('repo_url'))} reachable; {n} release(s) for {cfg.text('platform')} "
                    f"on {cfg.text('channel')}",
                )
            )
        except TrustError as exc:
            checks.append(DoctorCheck("repository", False, f"metadata refused: {exc}"))
        except UpdateError as exc:
            checks.append(DoctorCheck("repository", False, str(exc)))
        clock = fleet_state.reading(self.layout.root, cfg, signed)[0]
        checks.append(DoctorCheck("clock", False, clock.note, warning=True) if clock.note else self._clock())
        return checks

    def _clock(self) -> DoctorCheck:
        """The local clock against the signed timestamp's expiry (a clock far ahead makes fresh
        metadata look expired; one far behind accepts stale metadata)."""
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
