"""Recovery: bring an install directory back to rest after a crash, from its saved state alone.

Run first by every operation that changes anything, and by ``recover``:

* downloading, staging, staged: the target slot is discarded and FAILED saved;
* trial (never committed): resumed from the swap, then committed or rolled back;
* rolling back: the rollback is finished;
* at rest, slots the state lists as complete must exist and ``current`` must point at the active
  slot (the state wins);
* data: an interrupted restore is finished from its journal, half-written snapshots are removed;
* a corrupt state file is rebuilt by hashing the slots against the cached manifests (bad versions
  recovered from history).

The running slot is never touched: only a target slot is ever wiped (``InstallDir.wipe_slot``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pinnacle_updates.client import backups
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import history as history_mod
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.activation import Activation
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import HealthCheckError, StateError
from pinnacle_updates.client.install_dir import InstallDir, Part, read_manifest
from pinnacle_updates.client.results import RecoveryReport
from pinnacle_updates.client.slots import Layout, SlotContent, SlotState, State
from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.index import FormatError, Manifest
from pinnacle_updates.formats.tree import verify_tree


class Recovery(Part):
    """Resolves interrupted states of ``site`` (the caller holds the lock)."""

    def __init__(self, site: InstallDir, activation: Activation) -> None:
        super().__init__(site)
        self.activation = activation

    def recover(self) -> RecoveryReport:
        site = self.site
        actions: list[str] = []
        for directory in (self.layout.root, self.layout.slots_dir, self.layout.manifests):
            fsutil.remove_stale_temps(directory)
        # whatever config.toml says now: an interrupted trial or rollback must still be finished
        cfg, config_problems = config_mod.load_for_recovery(self.layout.root)
        s = self.load_or_rebuild(actions)
        # Data first: a restore whose journal is complete is finished, half-written snapshots and
        # clones are removed (client.backups). A restore interrupted at rest (`backups restore`)
        # stopped the application: it is started again once its data is whole.
        data_actions = backups.finish_pending(self.layout)
        actions.extend(data_actions)
        if data_actions and s.resting and s.active is not None and s.active_version is not None:
            start = site.hook("start_command", cfg, site.hook_context(s, s.active, s.active_version))
            if not start.ok:
                actions.append(f"start_command after the restore: {start.describe()}")

        if s.state is State.DOWNLOADING:
            s = site.save(sm.abort(s, "interrupted while downloading"))
            actions.append("discarded an interrupted download")
        elif s.state in (State.STAGING, State.STAGED):
            assert s.op is not None and s.op.slot is not None
            site.wipe_slot(s, s.op.slot)
            s = site.save(sm.abort(s, f"interrupted while {s.state.value}"))
            actions.append(f"discarded the partly staged slot {s.next_slot}")
        elif s.state is State.TRIAL:
            s, action = self._resume_trial(cfg, s, config_problems)
            actions.append(action)
        elif s.state is State.ROLLING_BACK:
            op = s.op
            assert op is not None
            self.activation.finish_rollback(cfg, s, time.monotonic())
            s = site.load()
            actions.append(f"finished the interrupted rollback to {op.version}")

        s, more = self._check_slots_and_link(cfg, s)
        actions.extend(more)
        if actions:
            site.record({"op": "recover", "actions": actions, "state": s.state.value, "version": s.active_version})
            for a in actions:
                site.emit("recovery", action=a)
        return RecoveryReport(tuple(actions), s.state.value, s.active_version, s.active)

    def _resume_trial(self, cfg: ClientConfig, s: SlotState, config_problems: list[str]) -> tuple[SlotState, str]:
        """A trial that was never committed: its slot was verified before TRIAL was saved, so the
        trial resumes from the swap (hooks are idempotent) and commits or rolls back. With a config
        that cannot be used as it is, the new version cannot be judged: it is rolled back (not
        marked bad: nothing was found wrong with it), the hooks run with the usable values."""
        op = s.op
        assert op is not None and op.slot is not None
        slot_ok = self.layout.slot(op.slot).is_dir()
        if not slot_ok:
            self.activation.rollback(cfg, s, f"slot {op.slot} of the interrupted trial is missing", mark_bad=False)
            return self.site.load(), f"rolled back an interrupted trial of {op.version}: its slot is missing"
        if config_problems:
            why = f"the config cannot be used to health-check it ({config_problems[0]})"
            self.activation.rollback(cfg, s, why, mark_bad=False)
            return self.site.load(), f"rolled back the interrupted trial of {op.version}: {why}"
        try:
            self.activation.activate(cfg, s, time.monotonic(), 0, None)
        except HealthCheckError as exc:
            return self.site.load(), f"rolled back the interrupted trial of {op.version}: {exc}"
        return self.site.load(), f"finished the interrupted trial of {op.version}: healthy, committed"

    def _check_slots_and_link(self, cfg: ClientConfig, s: SlotState) -> tuple[SlotState, list[str]]:
        """In a resting state: slots listed as complete must exist, ``current`` must point at
        ``active``. The state wins; a missing active slot falls back to the other slot."""
        site = self.site
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
                s = site.save(sm.forget_slot(s, name))
                actions.append(f"slot {name} was missing: recreated empty (no rollback version there)")
            elif name == s.active:
                lost = s.active_version
                other = s.other_content
                if other is not None and self.layout.slot(s.next_slot).is_dir():
                    s = site.save(
                        sm.begin_rollback(s, f"active slot {name} ({lost}) is missing", False, allow_bad=True)
                    )
                    self.activation.finish_rollback(cfg, s, time.monotonic())
                    s = site.load()
                    actions.append(f"active slot {name} ({lost}) was missing: switched to {other.version}")
                else:
                    bad = dict(s.bad_versions)
                    s = site.save(sm.rebuilt(None, dict.fromkeys(sm.SLOT_NAMES), bad, f"slot {name} was missing"))
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

    def load_or_rebuild(self, actions: list[str]) -> SlotState:
        """The saved state; an unusable one is rebuilt from the slots (and the action noted)."""
        try:
            return self.site.load()
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
        cfg, _problems = config_mod.load_for_recovery(self.layout.root)
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
        records = history_mod.read(self.layout.history)
        bad, rolled_back = (history_mod.bad_versions(records, key) for key in ("bad_version", "rolled_back_version"))
        s = sm.rebuilt(linked, found, bad, f"state rebuilt from the slots ({why})", rolled_back)
        if self.layout.state.exists():
            with contextlib.suppress(OSError):
                os.replace(self.layout.state, self.layout.state.with_name("state.json.corrupt"))
        return self.site.save(s)

    def _cached_manifests(self) -> list[Manifest]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.layout.manifests.iterdir()):
                if entry.suffix != ".json":
                    continue
                with contextlib.suppress(OSError, FormatError):
                    m = read_manifest(entry)
                    if entry.stem == m.content.sha256:
                        out.append(m)
        return out


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
