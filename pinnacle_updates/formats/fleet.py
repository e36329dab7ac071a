"""Fleet control for one client: which releases the signed rollout fields hold back from it,
which it must take, and where it goes when its installed release is yanked. Pure.

``evaluate`` turns a channel's releases (this platform's), the installed version and the client's
identity and rollout time into a ``FleetView``; ``client.policy.decide`` then applies the usual
policy to what is left (``held`` are skipped, ``required`` install unattended). Rules:

* **Yanked** releases are never offered (except to an explicit request with force).
* **Rollout**: a release with ``rollout`` is offered when ``bucket < percent`` at the rollout time
  (``formats.rollout``; with a gated schedule the percent is at most the approved step's, from the
  signed ``approved_step``). Releases whose type is in ``skip_ramp_types`` (default: the types whose
  ``UpdateType.skips_ramp``, security and hotfix) skip the rollout unless the publisher set
  ``"ramp": true``; ``"ramp": false`` skips it for every type. **A/B tests**: the clients with
  ``bucket < test_group_percentage`` form the test group and are offered the release; the control
  group stays (the publisher ends the test with ``rollout --complete`` or ``yank``). ``"ramp":
  false`` also ends the A/B gate.
* **Required** (``min_version``): a client whose installed version is below a release's
  ``min_version`` must update: that release ignores rollout, A/B group and ``auto_install``
  (``decide`` treats the jump as urgent; still health-gated, and a major still needs a person).
* **Yanked installed version**: any newer release the client may have is taken unattended (the
  jump off a yanked release is urgent); otherwise ``rollback_to`` is the newest older release
  that is not yanked, not bad on this machine, and either in this client's rollout or the
  version its other slot holds (so it returns instantly when that is the newest).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from packaging.version import Version

from .index import DEFAULT_SKIP_RAMP_TYPES, Release, UpdateType, parse_version
from .rollout import ClockReading, Yank, bucket

__all__ = [
    "FleetView",
    "Standing",
    "SwitchPlan",
    "controls_summary",
    "describe_controls",
    "evaluate",
    "switch_channel_plan",
]


@dataclass(frozen=True)
class Standing:
    """One release as this client sees it through the fleet controls."""

    version: str
    bucket: float
    percent: float | None = None
    """The rollout's current percent (None: no rollout gate applies to this client)."""
    group: str | None = None
    """``test`` or ``control`` for an A/B release (None otherwise)."""
    required: bool = False
    held: str = ""
    """Why the release is held back from this client (empty: it is not)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "bucket": round(self.bucket, 4), "eligible": not self.held}
        if self.percent is not None:
            out["percent"] = round(self.percent, 4)
        if self.group is not None:
            out["group"] = self.group
        if self.required:
            out["required"] = True
        if self.held:
            out["held"] = self.held
        return out


@dataclass(frozen=True)
class FleetView:
    """What the fleet controls say for one client at one rollout time."""

    held: Mapping[str, str] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    rollback_to: Release | None = None
    installed_yank: Yank | None = None
    standings: tuple[Standing, ...] = ()
    clock_note: str = ""
    now: datetime | None = None

    @property
    def groups(self) -> dict[str, str]:
        """A/B group per release version (only releases with an A/B test)."""
        return {s.version: s.group for s in self.standings if s.group is not None}

    def note(self) -> str:
        """One line of what a person should know (yank, required update, clock), or ''."""
        parts = []
        if self.installed_yank is not None:
            parts.append(f"the installed release was yanked: {self.installed_yank.reason}")
        if self.required:
            parts.append(f"required update (min_version): {', '.join(sorted(self.required, key=parse_version))}")
        if self.clock_note:
            parts.append(self.clock_note)
        return "; ".join(parts)

    def to_dict_if_any(self) -> dict[str, Any]:
        """``to_dict`` when any fleet control applies to this client (else {}: nothing to show)."""
        applies = any(s.percent is not None or s.group or s.held or s.required for s in self.standings)
        return self.to_dict() if applies or self.installed_yank or self.clock_note else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_time": self.now.strftime("%Y-%m-%dT%H:%M:%SZ") if self.now else None,
            "clock_note": self.clock_note,
            "installed_yanked": self.installed_yank.to_dict() if self.installed_yank else None,
            "rollback_to": self.rollback_to.version if self.rollback_to else None,
            "groups": self.groups,
            "releases": [s.to_dict() for s in self.standings],
        }


def evaluate(
    releases: Sequence[Release],
    installed: str | None,
    client_id: str,
    channel: str,
    clock: ClockReading,
    *,
    skip_ramp_types: Collection[UpdateType] = DEFAULT_SKIP_RAMP_TYPES,
    other_slot_version: str | None = None,
    bad_versions: Collection[str] = (),
) -> FleetView:
    """The fleet controls of ``releases`` (one platform's, any order) for this client at ``clock``."""
    ordered = sorted(releases, key=lambda r: r.parsed_version)
    current = parse_version(installed) if installed is not None else None
    standings: list[Standing] = []
    for r in ordered:
        standings.append(_standing(r, current, client_id, channel, clock.now, skip_ramp_types))
    by_version = {s.version: s for s in standings}
    installed_release = next((r for r in ordered if current is not None and r.parsed_version == current), None)
    yank = installed_release.yanked if installed_release is not None else None
    newer = [s for s in standings if current is None or parse_version(s.version) > current]
    held = {s.version: s.held for s in newer if s.held}
    required = {s.version for s in newer if s.required and not s.held}
    rollback_to = None
    if yank is not None:
        required |= {s.version for s in newer if not s.held}  # leaving a yanked release is urgent
        rollback_to = _return_target(ordered, current, by_version, other_slot_version, bad_versions)
    return FleetView(held, frozenset(required), rollback_to, yank, tuple(standings), clock.note, clock.now)


def _standing(
    r: Release,
    current: Version | None,
    client_id: str,
    channel: str,
    now: datetime,
    skip_ramp_types: Collection[UpdateType],
) -> Standing:
    b = bucket(client_id, channel, r.version)
    if r.yanked is not None:
        return Standing(r.version, b, held=f"yanked: {r.yanked.reason}")
    required = (
        r.min_version is not None and current is not None and current < parse_version(r.min_version)
    )
    if required:
        return Standing(r.version, b, required=True)
    group = None
    if r.ab_testing is not None and r.ramp is not False:
        group = "test" if b < r.ab_testing.test_group_percentage else "control"
    gated = r.ramp if r.ramp is not None else r.type not in skip_ramp_types
    percent = r.rollout.percent_at(now) if r.rollout is not None and gated else None
    held = ""
    if group == "control":
        assert r.ab_testing is not None
        held = f"A/B test: this client is in the control group (test group {r.ab_testing.test_group_percentage:g}%)"
    elif percent is not None and b >= percent:
        held = f"staged rollout at {percent:g}%: this client (bucket {b:.2f}) is not in it yet"
    return Standing(r.version, b, percent, group, False, held)


def _return_target(
    ordered: Sequence[Release],
    current: Version | None,
    standings: Mapping[str, Standing],
    other_slot_version: str | None,
    bad_versions: Collection[str],
) -> Release | None:
    other = parse_version(other_slot_version) if other_slot_version else None
    bad = {parse_version(v) for v in bad_versions}
    for r in reversed(ordered):
        if current is None or r.parsed_version >= current or r.yanked is not None or r.parsed_version in bad:
            continue
        if r.parsed_version == other or not standings[r.version].held:
            return r
    return None


@dataclass(frozen=True)
class SwitchPlan:
    """What ``pinnacle-update channel NAME`` does: ``install`` (a downgrade) or nothing, and why."""

    install: Release | None
    reason: str


def switch_channel_plan(
    releases: Sequence[Release], installed: str | None, channel: str, allow_downgrade: bool
) -> SwitchPlan:
    """Moving to ``channel``: never a downgrade unless ``allow_downgrade`` (then to the newest
    non-yanked release there). Updates on the new channel come through the normal policy."""
    usable = sorted((r for r in releases if r.yanked is None), key=lambda r: r.parsed_version)
    if not usable:
        return SwitchPlan(None, f"{channel} has no release for this platform yet; nothing changes until it has")
    newest = usable[-1]
    if installed is None or newest.parsed_version >= parse_version(installed):
        return SwitchPlan(None, f"{channel}'s newest release is {newest.version}; updates follow policy")
    if not allow_downgrade:
        return SwitchPlan(
            None,
            f"{channel}'s newest release {newest.version} is older than the installed {installed}: "
            f"staying on {installed} until {channel} has a newer one (--allow-downgrade to move now)",
        )
    return SwitchPlan(newest, f"downgrading from {installed} to {channel}'s newest release {newest.version}")


def controls_summary(r: Release, now: datetime) -> dict[str, Any]:
    """The fleet fields of one release for a publisher's ``status``: rollout state and the percent
    reached at ``now``, yank, min_version, ramp override, A/B test group."""
    out: dict[str, Any] = {}
    if r.rollout is not None:
        out["rollout"] = {**r.rollout.to_dict(), "percent_now": round(r.rollout.percent_at(now), 4)}
    if r.yanked is not None:
        out["yanked"] = r.yanked.to_dict()
    if r.min_version is not None:
        out["min_version"] = r.min_version
    if r.ramp is not None:
        out["ramp"] = r.ramp
    if r.ab_testing is not None:
        out["ab_testing"] = r.ab_testing.to_dict()
    return out


def describe_controls(summary: Mapping[str, Any]) -> str:
    """``controls_summary`` as a few words for a status line ('' when the release has none)."""
    words = []
    rollout = summary.get("rollout")
    if rollout:
        words.append(f"rollout {rollout['state']} {rollout['percent_now']:g}%")
        if "approved_step" in rollout:
            words.append(f"gate approved up to step {rollout['approved_step'] + 1} ({rollout['approved_percent']:g}%)")
    if summary.get("yanked"):
        words.append(f"YANKED ({summary['yanked']['reason']})")
    if summary.get("min_version"):
        words.append(f"min_version {summary['min_version']}")
    if "ramp" in summary:
        words.append("ramp" if summary["ramp"] else "no-ramp")
    if summary.get("ab_testing"):
        words.append(f"A/B test {summary['ab_testing']['test_group_percentage']:g}%")
    return ", ".join(words)
