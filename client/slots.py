"""The A/B slot state machine: the one module that owns slot state.

Shape (after Mender's transition table, Bottlerocket signpost's pure transitions and RAUC's
"mark the target bad before writing it"):

* ``State`` and ``Event`` are explicit enums and ``TRANSITIONS`` is the declarative table
  ``(state, event) -> state``. Nothing else decides what may follow what.
* Every transition is a pure function ``SlotState -> SlotState`` that checks its preconditions
  and raises ``StateError`` (one line) when they do not hold. None of them touches the disk.
* ``save()`` is the one write. It persists atomically (temp file, fsync, rename, fsync dir) and
  RAISES when it cannot: the state file is the switch, so a write that silently failed would let
  the link and the state disagree in a way no recovery could resolve.
* The next slot is computed (``next_slot``), never stored.

Write-ahead discipline used by the installer (each save happens *before* the risky step):

====================  ==========================================================================
saved state           what it promises about the disk
====================  ==========================================================================
idle/committed/...    ``current`` points at ``active`` (or is absent when nothing is installed);
                      every slot listed in ``slots`` holds exactly that verified release.
downloading           as above; only ``cache/`` is being written.
staging               the target slot is being written and is listed as empty (``slots[t] = None``)
                      *before* its first byte changes. The active slot is untouched.
staged                the target slot holds the verified release ``op.version``.
trial                 saved *before* ``current`` is swapped: the link points at the active slot or
                      at the target slot; recovery finishes the trial (health check) or rolls back.
rolling_back          saved *before* the link is swapped back: the link points at either slot;
                      recovery finishes the rollback.
====================  ==========================================================================

So the state always wins: in every state but ``trial`` and ``rolling_back`` the link must point at
``active``; in those two it is driven to the slot the operation is moving to.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from packaging.version import Version

from pinnacle_updates.client.errors import StateError
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.index import _sha256
from pinnacle_updates.formats.rollout import format_time

SCHEMA_VERSION = 1
STATE_MAX = 1 << 20
"""Bytes of ``state.json`` read at most (a real one is under 4 KiB, even with many bad versions)."""
SLOT_NAMES = ("a", "b")


class State(StrEnum):
    """Where the install directory is. Resting states have no operation in progress."""

    IDLE = "idle"  # nothing installed yet
    DOWNLOADING = "downloading"  # fetching the target's artifact into cache/
    STAGING = "staging"  # writing the inactive slot
    STAGED = "staged"  # inactive slot holds the verified target
    TRIAL = "trial"  # switching to the target; hooks and health check pending
    COMMITTED = "committed"  # the last operation activated the active version
    ROLLING_BACK = "rolling_back"  # switching back to a previous slot
    ROLLED_BACK = "rolled_back"  # the last operation was a rollback
    FAILED = "failed"  # the last operation failed before the swap; active untouched


RESTING = frozenset({State.IDLE, State.COMMITTED, State.ROLLED_BACK, State.FAILED})
IN_PROGRESS = frozenset(State) - RESTING


class Event(StrEnum):
    BEGIN = "begin"  # an install/repair starts (download)
    STAGE = "stage"  # start writing the target slot
    STAGED = "staged"  # target slot extracted and verified
    SWAP = "swap"  # about to point ``current`` at the target
    COMMIT = "commit"  # hooks and health check passed
    ABORT = "abort"  # failure before the swap
    ROLLBACK = "rollback"  # failure after the swap, or a manual rollback
    FINISH_ROLLBACK = "finish_rollback"


def _table() -> dict[tuple[State, Event], State]:
    table: dict[tuple[State, Event], State] = {}
    for resting in RESTING:
        table[(resting, Event.BEGIN)] = State.DOWNLOADING
    for resting in RESTING - {State.IDLE}:
        table[(resting, Event.ROLLBACK)] = State.ROLLING_BACK  # manual rollback
    table[(State.DOWNLOADING, Event.STAGE)] = State.STAGING
    table[(State.STAGING, Event.STAGED)] = State.STAGED
    table[(State.STAGED, Event.SWAP)] = State.TRIAL
    table[(State.TRIAL, Event.COMMIT)] = State.COMMITTED
    for early in (State.DOWNLOADING, State.STAGING, State.STAGED):
        table[(early, Event.ABORT)] = State.FAILED
    # A trial is aborted only before its swap, when the data snapshot cannot be taken (see ``abort``).
    table[(State.TRIAL, Event.ABORT)] = State.FAILED
    table[(State.TRIAL, Event.ROLLBACK)] = State.ROLLING_BACK  # automatic rollback
    table[(State.ROLLING_BACK, Event.FINISH_ROLLBACK)] = State.ROLLED_BACK
    return table


TRANSITIONS: Mapping[tuple[State, Event], State] = _table()


def transition(state: State, event: Event) -> State:
    """The table lookup; ``StateError`` for a pair the table does not allow."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise StateError(f"cannot {event.value} while {state.value}") from None


def other_slot(slot: str) -> str:
    if slot not in SLOT_NAMES:
        raise StateError(f"unknown slot {slot!r}")
    return "b" if slot == "a" else "a"


def now() -> str:
    """UTC now as the state and history files stamp it (the rollout format's time)."""
    return format_time(datetime.now(UTC))


def age_days(stamp: str) -> float:
    """Days since ``stamp`` (``%Y-%m-%dT%H:%M:%SZ``, as ``now`` writes it); 0 for a stamp that does not parse."""
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - when).total_seconds() / 86400


@dataclass(frozen=True)
class SlotContent:
    """A complete, verified release in a slot: its version and the sha256 of its canonical content."""

    version: str
    sha256: str
    installed: str = ""  # when it was staged (UTC, ISO 8601); empty when rebuilt from the slots
    entry_point: str | None = None  # what ``pinnacle-update run`` executes, from the signed release
    data_backup: str | None = None  # the data snapshot taken just before this release went live
    # (``client.backups``): what a manual rollback from it restores

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "installed": self.installed,
            "entry_point": self.entry_point,
            "data_backup": self.data_backup,
        }


@dataclass(frozen=True)
class Operation:
    """The operation in progress.

    ``slot``/``version``/``sha256`` name where the operation is going (the slot being written and
    activated by an install; the slot being returned to by a rollback, ``None`` when a first
    install fails and there is nothing to return to). ``leaving``/``leaving_version`` name the
    slot and version being abandoned by a rollback, and ``mark_bad`` whether that version is to be
    recorded as bad; ``operator``: a rollback a person asked for, which records the version left as
    rolled back (not offered automatically again, still installable by name) when it is not marked bad.
    """

    kind: str  # install | repair | rollback
    slot: str | None
    version: str | None
    sha256: str | None
    started: str
    reason: str = ""
    leaving: str | None = None
    leaving_version: str | None = None
    mark_bad: bool = False
    operator: bool = False
    entry_point: str | None = None
    # Data safety (``client.backups``). An install: ``snapshot`` says a snapshot of the persistent
    # data is wanted before the swap, ``data_backup`` names it once it is complete (saved before
    # the swap). A rollback: ``data_backup`` is the snapshot to restore (None: the data stays as it
    # is) and ``data_rejected`` the id the replaced data is kept under, chosen before anything moves.
    snapshot: bool = False
    data_backup: str | None = None
    data_rejected: str | None = None
    migration: str | None = None  # an install: the release's signed migration step (a path in its slot)

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "snapshot": self.snapshot,
            "data_backup": self.data_backup,
            "data_rejected": self.data_rejected,
            "entry_point": self.entry_point,
            "kind": self.kind,
            "slot": self.slot,
            "version": self.version,
            "sha256": self.sha256,
            "started": self.started,
            "reason": self.reason,
            "leaving": self.leaving,
            "leaving_version": self.leaving_version,
            "mark_bad": self.mark_bad,
            "operator": self.operator,
        }


@dataclass(frozen=True)
class BadVersion:
    """A version that was rolled back: not installed again automatically."""

    rollbacks: int
    reason: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class SlotState:
    """The whole persisted state. Immutable; transitions return a new value."""

    state: State = State.IDLE
    active: str | None = None
    slots: Mapping[str, SlotContent | None] = field(default_factory=lambda: dict.fromkeys(SLOT_NAMES))
    op: Operation | None = None
    bad_versions: Mapping[str, BadVersion] = field(default_factory=dict)
    rolled_back_versions: Mapping[str, BadVersion] = field(default_factory=dict)
    """Versions a person rolled back from without ``--mark-bad``: skipped by automatic updates,
    installable by name (a later release is offered as usual)."""
    last_error: str = ""
    updated: str = ""
    schema: int = SCHEMA_VERSION

    # ----- derived views -------------------------------------------------------------------
    @property
    def active_content(self) -> SlotContent | None:
        return self.slots.get(self.active) if self.active else None

    @property
    def active_version(self) -> str | None:
        content = self.active_content
        return content.version if content else None

    @property
    def next_slot(self) -> str:
        """The slot an install writes: the one that is not active (``a`` when nothing is)."""
        return other_slot(self.active) if self.active else SLOT_NAMES[0]

    @property
    def other_content(self) -> SlotContent | None:
        """The complete version in the inactive slot, if any (what an instant rollback returns to)."""
        return self.slots.get(self.next_slot) if self.active else None

    @property
    def resting(self) -> bool:
        return self.state in RESTING

    def link_target(self) -> str | None:
        """The slot ``current`` must point at once recovery has resolved this state."""
        if self.state in (State.TRIAL, State.ROLLING_BACK) and self.op is not None:
            return self.op.slot
        return self.active

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "state": self.state.value,
            "active": self.active,
            "slots": {n: (c.to_dict() if c else None) for n, c in sorted(self.slots.items())},
            "op": self.op.to_dict() if self.op else None,
            "bad_versions": {v: b.to_dict() for v, b in sorted(self.bad_versions.items())},
            "rolled_back_versions": {v: b.to_dict() for v, b in sorted(self.rolled_back_versions.items())},
            "last_error": self.last_error,
            "updated": self.updated,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SlotState:
        """Parse and validate a state file; ``StateError`` naming what is wrong."""
        try:
            doc = boundedjson.load_object(data, "state", max_bytes=STATE_MAX)
        except boundedjson.FormatError as exc:
            raise StateError(str(exc)) from exc
        if doc.get("schema") != SCHEMA_VERSION:
            raise StateError(f"unsupported state schema {doc.get('schema')!r} (this client reads {SCHEMA_VERSION})")
        try:
            state = State(doc["state"])
            active = _opt_slot(doc.get("active"))
            raw_slots = doc["slots"]
            if not isinstance(raw_slots, dict) or set(raw_slots) != set(SLOT_NAMES):
                raise StateError("'slots' must name exactly a and b")
            slots = {n: _content(raw_slots[n]) for n in SLOT_NAMES}
            op = _operation(doc.get("op"))
            bad, rolled_back = (_marks(doc, key) for key in ("bad_versions", "rolled_back_versions"))
            result = cls(
                state=state,
                active=active,
                slots=slots,
                op=op,
                bad_versions=bad,
                rolled_back_versions=rolled_back,
                last_error=str(doc.get("last_error", "")),
                updated=str(doc.get("updated", "")),
            )
        except StateError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed state ({type(exc).__name__}: {exc})") from exc
        result.check()
        return result

    def check(self) -> None:
        """Invariants every saved state satisfies; ``StateError`` when one does not."""
        if self.active is not None and self.slots.get(self.active) is None:
            raise StateError(f"active slot {self.active} is listed as empty")
        if self.resting and self.op is not None:
            raise StateError(f"state {self.state.value} with an operation in progress")
        if not self.resting and self.op is None:
            raise StateError(f"state {self.state.value} without an operation")
        if self.state is State.IDLE and self.active is not None:
            raise StateError("idle with an active slot")
        if self.state is State.COMMITTED and self.active is None:  # a commit always names the slot it activated
            raise StateError("committed without an active slot")
        if (
            self.op is not None
            and self.state is not State.ROLLING_BACK
            and (self.op.slot is None or self.op.slot == self.active)
        ):
            raise StateError(f"{self.state.value}: an install must target the inactive slot")


def _opt_slot(value: Any) -> str | None:
    if value is None:
        return None
    if value not in SLOT_NAMES:
        raise StateError(f"unknown slot {value!r}")
    return str(value)


def _content(value: Any) -> SlotContent | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateError("slot content must be an object or null")
    entry = value.get("entry_point")
    return SlotContent(
        version=_version(value["version"]),
        sha256=_sha256(value, "sha256", "slot content"),  # it names files under manifests/: hex only
        installed=str(value.get("installed", "")),
        entry_point=None if entry is None else str(entry),
        data_backup=None if value.get("data_backup") is None else str(value["data_backup"]),
    )


def _version(value: Any) -> str:
    if not isinstance(value, str):
        raise StateError(f"version {value!r} is not a string")
    Version(value)  # InvalidVersion is a ValueError: reported as a malformed state
    return value


def _operation(value: Any) -> Operation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateError("'op' must be an object or null")

    def opt(key: str) -> str | None:
        v = value.get(key)
        return None if v is None else str(v)

    sha256 = None if value.get("sha256") is None else _sha256(value, "sha256", "operation")

    return Operation(
        kind=str(value["kind"]),
        slot=_opt_slot(value.get("slot")),
        version=None if value.get("version") is None else _version(value["version"]),
        sha256=sha256,
        started=str(value["started"]),
        reason=str(value.get("reason", "")),
        leaving=_opt_slot(value.get("leaving")),
        leaving_version=None if value.get("leaving_version") is None else _version(value["leaving_version"]),
        mark_bad=bool(value.get("mark_bad", False)),
        operator=bool(value.get("operator", False)),
        entry_point=opt("entry_point"),
        snapshot=bool(value.get("snapshot", False)),
        data_backup=opt("data_backup"),
        data_rejected=opt("data_rejected"),
        migration=opt("migration"),
    )


# ----- pure transitions ----------------------------------------------------------------------
def _moved(s: SlotState, event: Event, **changes: Any) -> SlotState:
    new = replace(s, state=transition(s.state, event), updated=now(), **changes)
    new.check()
    return new


def _slots_with(s: SlotState, slot: str, content: SlotContent | None) -> dict[str, SlotContent | None]:
    slots = dict(s.slots)
    slots[slot] = content
    return slots


def begin_install(
    s: SlotState, version: str, sha256: str, kind: str = "install", entry_point: str | None = None,
    snapshot: bool = False, migration: str | None = None,
) -> SlotState:
    """BEGIN: an install (or repair) of ``version`` into the inactive slot starts downloading;
    ``snapshot``: the persistent data is to be snapshotted before the swap; ``migration``: the
    release's migration step, run after the swap."""
    if kind not in ("install", "repair"):
        raise StateError(f"unknown install kind {kind!r}")
    op = Operation(kind=kind, slot=s.next_slot, version=version, sha256=sha256, started=now(),
                   entry_point=entry_point, snapshot=snapshot, migration=migration)
    return _moved(s, Event.BEGIN, op=op, last_error="")


def begin_staging(s: SlotState) -> SlotState:
    """STAGE: the target slot is about to be written, so it is listed as empty first (write-ahead)."""
    op = _need_op(s)
    assert op.slot is not None  # guaranteed by check()
    return _moved(s, Event.STAGE, slots=_slots_with(s, op.slot, None))


def mark_staged(s: SlotState) -> SlotState:
    """STAGED: the target slot now holds exactly the verified target release."""
    op = _need_op(s)
    assert op.slot is not None and op.version is not None and op.sha256 is not None
    content = SlotContent(op.version, op.sha256, now(), op.entry_point)
    return _moved(s, Event.STAGED, slots=_slots_with(s, op.slot, content))


def begin_trial(s: SlotState) -> SlotState:
    """SWAP: saved before ``current`` moves to the target slot."""
    _need_op(s)
    return _moved(s, Event.SWAP)


def with_data_backup(s: SlotState, backup_id: str) -> SlotState:
    """The trial's data snapshot is complete (no transition: saved before the swap, so that a
    rollback of this trial, even one recovery finishes, restores it)."""
    op = _need_op(s)
    if s.state is not State.TRIAL:
        raise StateError(f"a data snapshot belongs to a trial, not to {s.state.value}")
    new = replace(s, op=replace(op, data_backup=backup_id), updated=now())
    new.check()
    return new


def commit(s: SlotState) -> SlotState:
    """COMMIT: the target passed hooks and health checks and becomes the active slot, remembering
    the data snapshot taken before it went live (what a manual rollback restores).

    A version committed after a forced retry is no longer bad (nor rolled back).
    """
    op = _need_op(s)
    assert op.slot is not None
    bad = {v: b for v, b in s.bad_versions.items() if v != op.version}
    rolled_back = {v: b for v, b in s.rolled_back_versions.items() if v != op.version}
    content = s.slots.get(op.slot)
    slots = dict(s.slots)
    if content is not None:
        slots[op.slot] = replace(content, data_backup=op.data_backup)
    return _moved(s, Event.COMMIT, active=op.slot, op=None, bad_versions=bad, rolled_back_versions=rolled_back,
                  slots=slots, last_error="")


def abort(s: SlotState, reason: str) -> SlotState:
    """ABORT: failure before the swap. A partly or fully written target slot is discarded
    (listed empty): only a slot that went through a committed or rolled-back operation counts.
    From TRIAL only before ``current`` moved (the data snapshot failed): the caller guarantees it."""
    op = _need_op(s)
    slots = dict(s.slots)
    if s.state in (State.STAGING, State.STAGED, State.TRIAL) and op.slot is not None:
        slots[op.slot] = None
    return _moved(s, Event.ABORT, op=None, slots=slots, last_error=reason)


def begin_rollback(
    s: SlotState, reason: str, mark_bad: bool = True, *, allow_bad: bool = False,
    restore: str | None = None, rejected: str | None = None, operator: bool = False,
) -> SlotState:
    """ROLLBACK: saved before ``current`` is swapped back.

    From ``trial`` (automatic): go back to the active slot (``None`` when this was the first
    install), abandoning the trial target. From a resting state (manual): switch to the inactive
    slot, which must hold a complete version that is not marked bad (unless ``allow_bad``).
    ``restore``: the data snapshot to put back (None: keep the data), the replaced data kept as
    backup ``rejected``.
    """
    rejected = rejected if restore else None
    if s.state is State.TRIAL:
        op = _need_op(s)
        back = Operation(
            kind="rollback",
            slot=s.active,
            version=s.active_version,
            sha256=s.active_content.sha256 if s.active_content else None,
            started=now(),
            reason=reason,
            leaving=op.slot,
            leaving_version=op.version,
            mark_bad=mark_bad,
            data_backup=restore,
            data_rejected=rejected,
        )
        return _moved(s, Event.ROLLBACK, op=back)
    if s.active is None:
        raise StateError("nothing is installed, so there is nothing to roll back")
    transition(s.state, Event.ROLLBACK)  # the table first: no manual rollback mid-operation
    other = s.other_content
    if other is None:
        raise StateError(f"no previous version to roll back to: slot {s.next_slot} holds no complete release")
    if other.version in s.bad_versions and not allow_bad:
        raise StateError(
            f"the previous slot holds {other.version}, which was rolled back as bad "
            f"({s.bad_versions[other.version].reason}); use --force to switch to it anyway"
        )
    manual = Operation(
        kind="rollback",
        slot=s.next_slot,
        version=other.version,
        sha256=other.sha256,
        started=now(),
        reason=reason,
        leaving=s.active,
        leaving_version=s.active_version,
        mark_bad=mark_bad,
        operator=operator,
        data_backup=restore,
        data_rejected=rejected,
    )
    return _moved(s, Event.ROLLBACK, op=manual)


def finish_rollback(s: SlotState) -> SlotState:
    """FINISH_ROLLBACK: ``current`` points at the rollback target; record the abandoned version as
    bad (``mark_bad``) or as rolled back by a person (``operator``)."""
    op = _need_op(s)
    bad, rolled_back = dict(s.bad_versions), dict(s.rolled_back_versions)
    marks = bad if op.mark_bad else rolled_back if op.operator else None
    if marks is not None and op.leaving_version is not None:
        prev = marks.get(op.leaving_version)
        marks[op.leaving_version] = BadVersion((prev.rollbacks if prev else 0) + 1, op.reason, now())
        if op.mark_bad:  # bad now, whatever a person decided of it before
            rolled_back.pop(op.leaving_version, None)
    new = replace(
        s,
        state=transition(s.state, Event.FINISH_ROLLBACK),
        active=op.slot,
        op=None,
        bad_versions=bad,
        rolled_back_versions=rolled_back,
        last_error=op.reason,
        updated=now(),
    )
    new.check()
    return new


def forget_slot(s: SlotState, slot: str) -> SlotState:
    """The inactive ``slot`` is missing or damaged: list it as empty (no transition; resting only)."""
    if not s.resting:
        raise StateError(f"cannot forget a slot while {s.state.value}")
    if slot == s.active:
        raise StateError(f"slot {slot} is active; it cannot be forgotten")
    new = replace(s, slots=_slots_with(s, slot, None), updated=now())
    new.check()
    return new


def rebuilt(
    active: str | None,
    slots: Mapping[str, SlotContent | None],
    bad_versions: Mapping[str, BadVersion],
    note: str,
    rolled_back_versions: Mapping[str, BadVersion] | None = None,
) -> SlotState:
    """A fresh resting state reconstructed from what is on disk (after the state file was lost)."""
    new = SlotState(
        state=State.COMMITTED if active else State.IDLE,
        active=active,
        slots=dict(slots),
        bad_versions=dict(bad_versions),
        rolled_back_versions=dict(rolled_back_versions or {}),
        last_error=note,
        updated=now(),
    )
    new.check()
    return new


def _marks(doc: Mapping[str, Any], key: str) -> dict[str, BadVersion]:
    """``bad_versions`` or ``rolled_back_versions`` of a state file (absent: none)."""
    raw = doc.get(key, {})
    if not isinstance(raw, dict):
        raise StateError(f"'{key}' must be an object")
    return {str(v): BadVersion(int(b["rollbacks"]), str(b["reason"]), str(b["at"])) for v, b in raw.items()}


def _need_op(s: SlotState) -> Operation:
    if s.op is None:
        raise StateError(f"no operation in progress (state {s.state.value})")
    return s.op


# ----- the one write and its read --------------------------------------------------------------
def save(path: Path, s: SlotState) -> None:
    """Persist ``s`` atomically and durably. Raises ``StateError`` when that is impossible."""
    s.check()
    try:
        fsutil.atomic_write(path, s.to_bytes(), 0o644)
    except OSError as exc:
        raise StateError(f"cannot save install state to {path}: {exc.strerror or exc}") from exc


def load(path: Path) -> SlotState:
    """Read the state file; ``StateError`` with a recovery hint when it is missing or unreadable."""
    try:
        data = fsutil.read_regular(path, STATE_MAX)  # one read of one inode: saves rename a whole new file in
    except FileNotFoundError:
        raise StateError(f"no state file at {path}; is this an initialised install directory?") from None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    try:
        return SlotState.from_bytes(data)
    except StateError as exc:
        raise StateError(
            f"state file {path} is corrupt ({exc}); run `pinnacle-update recover` to rebuild it from the slots"
        ) from exc


POINTER_FILE = "current.slot"
USE_POINTER = os.name == "nt"
"""Windows needs privileges for symlinks; there ``current.slot`` (a pointer file replaced atomically
with ``os.replace``) is the switch instead, and apps start through ``pinnacle-update run``."""


@dataclass(frozen=True)
class Layout:
    """Where everything lives under an install directory.

    ``pointer``: switch slots with the pointer file instead of the ``current`` symlink (the default
    on Windows; selectable anywhere so that the code path is tested on every platform).
    """

    root: Path
    pointer: bool = field(default_factory=lambda: USE_POINTER)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def trusted_root(self) -> Path:
        return self.root / "root.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    def slot(self, name: str) -> Path:
        if name not in SLOT_NAMES:
            raise StateError(f"unknown slot {name!r}")
        return self.slots_dir / name

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def metadata(self) -> Path:
        return self.root / "tuf"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def manifest(self, sha256: str) -> Path:
        return self.manifests / f"{sha256}.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def hooks_log(self) -> Path:
        return self.root / "hooks.log"

    def link_value(self, slot: str) -> str:
        """The relative text of the ``current`` link for ``slot``."""
        return f"slots/{self.slot(slot).name}"

    @property
    def pointer_file(self) -> Path:
        return self.root / POINTER_FILE

    def point_current(self, slot: str | None) -> None:
        """Make ``slot`` the active one in a single atomic rename (``None``: nothing is active)."""
        if slot is None:
            for path in (self.current, self.pointer_file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fsutil.fsync_dir(self.root)
        elif self.pointer:
            fsutil.atomic_write(self.pointer_file, (self.link_value(slot) + "\n").encode())
        else:
            fsutil.atomic_symlink(self.link_value(slot), self.current)

    def linked_slot(self) -> str | None:
        """The slot ``current`` points at, ``None`` when the link is absent or points elsewhere."""
        try:
            target = (fsutil.read_regular(self.pointer_file, 4096).decode().strip() if self.pointer
                      else os.readlink(self.current))
        except (FileNotFoundError, OSError, UnicodeDecodeError):
            return None
        for name in SLOT_NAMES:
            if target.rstrip("/") == self.link_value(name):
                return name
        return None

    def create_dirs(self, persistent: tuple[str, ...] = ()) -> None:
        """Create the fixed directories (idempotent)."""
        for d in (self.slots_dir, self.cache, self.metadata, self.manifests, self.data):
            d.mkdir(parents=True, exist_ok=True)
        for name in SLOT_NAMES:
            self.slot(name).mkdir(exist_ok=True)
        for p in persistent:
            (self.data / p).mkdir(parents=True, exist_ok=True)
        fsutil.fsync_dir(self.slots_dir)
        fsutil.fsync_dir(self.root)
