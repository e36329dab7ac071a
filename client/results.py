"""What the client's operations return: plain, frozen records with a ``to_dict`` for JSON.

``CheckResult`` (what an install would do), ``InstallResult``, ``RollbackResult``,
``RollbackTarget`` (what a manual rollback would reach, and whether it may), ``RecoveryReport``,
``VerifyReport``/``SlotReport`` and ``DoctorCheck``; ``Progress`` and ``EventSink`` are the two
callbacks an operation reports through. The records history keeps are written by the operations
themselves (``client.history``); these are what a caller gets back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pinnacle_updates.formats.index import Release

Progress = Callable[[int, int], None]
"""Download progress: ``(bytes done, bytes total)``."""
EventSink = Callable[[dict[str, Any]], None]
"""Every step, state save, hook, progress and recovery action as ``{"event": ..., ...}``."""


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
    """What the fleet controls say for this client (``formats.fleet.FleetView.to_dict``)."""

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
    data_restored: str | None = None  # the backup whose data was put back (None: data kept as it was)
    data_rejected: str | None = None  # the backup now holding the data it replaced

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "slot": self.slot,
            "from_version": self.from_version,
            "from_slot": self.from_slot,
            "reason": self.reason,
            "duration": round(self.duration, 6),
            "notes": list(self.notes),
            "data_restored": self.data_restored,
            "data_rejected": self.data_rejected,
        }


@dataclass(frozen=True)
class RestoreReport:
    """``backups restore``: which backup's data is in place now and where the replaced data went."""

    backup: str
    rejected: str | None  # the backup holding what the data was (None: there was none)
    version: str  # the version running on it
    duration: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"backup": self.backup, "data_rejected": self.rejected, "version": self.version,
                "duration": round(self.duration, 3), "notes": list(self.notes)}


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
    note: str = ""
    """Set when less than asked was verified (another process is in the middle of an operation)."""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.slots)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "slots": [r.to_dict() for r in self.slots], "note": self.note}


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    ok: bool
    detail: str
    warning: bool = False

    def to_dict(self) -> dict[str, Any]:
        status = "ok" if self.ok else ("warn" if self.warning else "fail")
        return {"name": self.name, "status": status, "detail": self.detail}


@dataclass(frozen=True)
class RollbackTarget:
    """What a manual rollback would switch to: the release in the inactive slot, and whether the
    rule lets it (``client.activation.rollback_target`` is the one place that rule lives)."""

    version: str
    slot: str
    installed: str | None
    age_days: float | None
    max_days: int
    bad: bool
    """This machine rolled back from it (a rollback onto it needs ``force``)."""

    @property
    def too_old(self) -> bool:
        """Installed longer ago than ``max_rollback_days`` (0: no limit) allows without ``force``."""
        return self.max_days > 0 and self.age_days is not None and self.age_days > self.max_days

    @property
    def eligible(self) -> bool:
        """A rollback without ``force`` may switch to it."""
        return not self.too_old and not self.bad

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "slot": self.slot,
            "installed": self.installed,
            "age_days": None if self.age_days is None else round(self.age_days, 2),
            "eligible": self.eligible,
            "bad": self.bad,
        }


__all__ = [
    "CheckResult",
    "DoctorCheck",
    "EventSink",
    "InstallResult",
    "Progress",
    "RecoveryReport",
    "RollbackResult",
    "RollbackTarget",
    "SlotReport",
    "VerifyReport",
]
