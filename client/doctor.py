"""Verify and doctor: what is installed against what was signed, and what the machine needs.

``verify`` re-hashes slots against their signed manifests (cached under ``manifests/``, fetched
again through TUF when missing or not describing the expected release) and checks the persistent
path links. ``doctor`` checks requirements and conflicts: config, state, permissions, free space,
the lock, the repository and the clock. ``repair`` (reinstalling what verify finds damaged) is an
install (``client.installer``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from datetime import UTC, datetime

from pinnacle_updates.client import fleet_state
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import BusyError, ConfigError, StateError, TrustError, UpdateError
from pinnacle_updates.client.install_dir import Part, lock_holder, mib
from pinnacle_updates.client.results import DoctorCheck, SlotReport, VerifyReport
from pinnacle_updates.client.slots import SlotContent, SlotState
from pinnacle_updates.client.staging import SPACE_SLACK
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.index import Manifest
from pinnacle_updates.formats.redact import redact_url
from pinnacle_updates.formats.tree import tree_size, verify_tree

TIMESTAMP_MAX = 1 << 20
"""Bytes of the trusted ``timestamp.json`` read for the clock check (ngclient's own bound is 16 KiB)."""
VERIFY_ATTEMPTS = 3
"""Passes of a verify without the lock before it gives up on a directory that keeps changing."""


class Doctor(Part):
    """Read-mostly checks of ``site`` (``verify`` records its result in the history)."""

    # -- verify ----------------------------------------------------------------------------------------
    def verify(self, all_slots: bool = False, *, wait: bool = False) -> VerifyReport:
        """Re-hash the active slot (``all_slots``: both) against its signed manifest.

        Read-only, so without ``wait`` it takes no lock and works while another process holds it
        (an install, the agent), and never makes an install wait. It verifies the slots against a
        snapshot of ``state.json`` (one read of a file only ever replaced whole), and the result
        stands only if the state read again afterwards lists the same contents in those slots, none
        of them the target of an operation (``SlotContent`` carries its install time, so a slot
        wiped and refilled meanwhile shows). While an operation is in progress (or was interrupted)
        only the active slot, which no operation writes, is verified, and the report's ``note`` says
        so. A manifest missing from the cache is fetched through TUF under the lock (that writes the
        trusted metadata). With ``wait`` the lock is held throughout, as for operations that write."""
        site = self.site
        cfg = site.config()
        with contextlib.ExitStack() as stack:
            if wait:
                stack.enter_context(site.locked(True))
            for _ in range(VERIFY_ATTEMPTS):
                s = site.load()
                report = self._verify_slots(cfg, s, all_slots, locked=wait)
                if wait or _still_there(s, site.load(), report):
                    break
            else:
                raise BusyError("the install directory kept changing while it was verified (an install is "
                                "running); run verify again when it finishes, or with --wait")
            site.record(
                {
                    "op": "verify",
                    "all": all_slots,
                    "ok": report.ok,
                    "slots": {r.slot: len(r.problems) for r in report.slots if r.version},
                    **({"note": report.note} if report.note else {}),
                }
            )
            return report

    def _verify_slots(self, cfg: ClientConfig, s: SlotState, all_slots: bool, *, locked: bool) -> VerifyReport:
        """One pass over the slots ``s`` lists (``locked``: the caller holds the install lock)."""
        site = self.site
        note = ""
        names = list(sm.SLOT_NAMES) if all_slots else ([s.active] if s.active else [])
        if not s.resting and not locked:
            note = (f"state {s.state.value}: an operation is in progress (or was interrupted: run recover), "
                    "so only the active slot was verified")
            names = [s.active] if s.active else []
        if not names:
            if note:
                return VerifyReport((), note)
            raise StateError("nothing is installed, so there is nothing to verify")
        reports = []
        for name in names:
            content = s.slots.get(name)
            if content is None:
                if name != s.active:
                    reports.append(SlotReport(name, None, False, ()))
                continue
            manifest = site.manifest_for(content, cfg, None) or self._fetch_manifest(cfg, content, locked)
            problems = verify_tree(self.layout.slot(name), manifest, skip=cfg.persistent_paths)
            problems += self._persistent_problems(name, cfg.persistent_paths)
            reports.append(SlotReport(name, content.version, name == s.active, tuple(problems)))
        return VerifyReport(tuple(reports), note)

    def _fetch_manifest(self, cfg: ClientConfig, content: SlotContent, locked: bool) -> Manifest:
        """The manifest of ``content`` through TUF (it was not cached), under the install lock."""
        site = self.site
        with contextlib.ExitStack() as stack:
            if not locked:
                try:
                    stack.enter_context(site.locked(False))
                except BusyError as exc:
                    raise BusyError(f"the manifest of {content.version} is not cached, and fetching it needs "
                                    f"the install lock: {exc}") from None
            with site.repository(cfg) as client:
                manifest = site.manifest_for(content, cfg, client)
        assert manifest is not None
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
                where = _where(cfg, client)
            checks.append(
                DoctorCheck(
                    "repository",
                    True,
                    f"{where} reachable; {n} release(s) for {cfg.text('platform')} "
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
            signed = boundedjson.load_object(fsutil.read_regular(path, TIMESTAMP_MAX), path.name,
                                             max_bytes=TIMESTAMP_MAX)["signed"]
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


def _still_there(before: SlotState, after: SlotState, report: VerifyReport) -> bool:
    """Whether every slot ``report`` verified from ``before`` holds the same content in ``after``
    and is not the target of an operation there (so nothing wrote it while it was hashed)."""
    target = after.op.slot if after.op is not None else None
    return all(after.slots.get(r.slot) == before.slots.get(r.slot) and r.slot != target
               for r in report.slots if r.version)


def _where(cfg: ClientConfig, client: RepositoryClient) -> str:
    """What the repository check reached: ``repo_url``, or the metadata and targets URLs when the
    config sets either apart from it."""
    if not (cfg.text("metadata_url") or cfg.text("targets_url")):
        return redact_url(cfg.text("repo_url"))
    return f"metadata {redact_url(client.metadata_url)} and targets {redact_url(client.targets_url)}"
