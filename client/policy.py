"""Update policy: which release, if any, to install, and whether a person must ask for it. Pure.

Inputs are the signed releases for this platform, the installed version, the config, and the
versions this machine rolled back before; the output is a ``Decision`` the caller acts on.

Rules (``decide``):

* Releases are cumulative: installing version V brings every change published up to V. So the
  *kind* of a jump from the installed version to V is judged on every release in between, not
  only on V.
* A **major** release is a gate: nothing at or past it is chosen without ``confirm_major``
  (and ``major`` in ``allowed_update_types``), and a jump across a major is never automatic.
* ``release`` is the newest *eligible* release: newer than installed, its type allowed, not
  marked bad (unless ``force``), not past an unconfirmed major. It is what a person's
  ``install`` gets.
* ``auto_release`` is the newest eligible release the machine may install **without asking**:
  the jump contains a ``security`` or ``hotfix`` release (always automatic), or consists of
  ``patch`` (and security/hotfix) releases only and ``auto_install`` is on. A jump that brings a
  ``minor`` change without a security fix is only offered. ``enabled=False`` turns automatic
  installs off entirely (explicit requests still work).
* Versions marked bad (this machine rolled back from them after a failure, or a person did with
  ``--mark-bad``) are skipped unless ``force``, and a request for one is refused unless ``force``;
  releases past them are still eligible (a later release is how a bad one gets fixed).
* Versions a person **rolled back** from (``rolled_back``, without ``--mark-bad``) are skipped
  unless ``force`` but stay installable by name: going back was a decision about now, not a verdict.
* ``requested_version`` asks for that exact version, ignoring ``allowed_update_types`` and
  ``enabled`` (a person asked). Still refused: a version not published for this platform,
  a bad version or a downgrade or a reinstall of the installed version without ``force``,
  and a jump across a major without ``confirm_major``. Requests are never automatic.
* With nothing installed (``current_version`` None) there is no jump to judge: the newest
  eligible release is chosen (majors need no confirmation for a first install) and it is
  automatic when ``enabled`` and ``auto_install`` are on.
* Fleet controls (``formats.fleet.evaluate``) come in as ``held`` (version -> why: yanked, not yet
  in this client's rollout, A/B control group; skipped) and ``required`` (versions whose jump is
  urgent: ``min_version``, or leaving a yanked release).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from packaging.version import Version

from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.platform_tag import detect_platform
from pinnacle_updates.formats.index import (
    CHANNELS,
    FormatError,
    Release,
    UpdateType,
    check_channel,
    check_platform,
    parse_version,
)

__all__ = [
    "Decision",
    "Skipped",
    "UpdateConfig",
    "decide",
    "detect_platform",
    "jittered_interval",
]


@dataclass(frozen=True)
class UpdateConfig:
    """What this installation wants from updates.

    ``check_interval`` is in seconds; ``platform`` empty means "this machine's" (the caller fills
    it from ``client.platform_tag.detect_platform``); ``excluded_paths`` are install-relative
    prefixes kept across updates (data, not code); ``max_rollback_attempts`` bounds how many times
    one failing version is retried before it is marked bad.
    """

    enabled: bool = True
    check_interval: int = 3600
    auto_install: bool = True
    backup_before_update: bool = True
    max_rollback_days: int = 30
    allowed_update_types: frozenset[UpdateType] = frozenset(UpdateType)
    excluded_paths: tuple[str, ...] = ("logs/", "uploads/", "temp/")
    channel: str = CHANNELS[0]
    platform: str = ""
    max_rollback_attempts: int = 3

    def __post_init__(self) -> None:
        try:
            check_channel(self.channel)
            if self.platform:
                check_platform(self.platform)
        except FormatError as exc:
            raise ConfigError(f"config: {exc}") from exc
        for name in ("check_interval", "max_rollback_days", "max_rollback_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"config: {name} must be a non-negative integer, got {value!r}")
        if self.check_interval == 0:
            raise ConfigError("config: check_interval must be at least 1 second")
        if not all(isinstance(t, UpdateType) for t in self.allowed_update_types):
            raise ConfigError("config: allowed_update_types must hold UpdateType values")


@dataclass(frozen=True)
class Skipped:
    """A release newer than the installed one that was not chosen, and why."""

    version: str
    why: str


@dataclass(frozen=True)
class Decision:
    """What to do; ``reason`` is one line for a person.

    ``release``: what an explicit install installs (None: nothing to do). ``auto_release``: what
    the machine may install unattended (None: nothing); it may be older than ``release`` when a
    patch precedes an optional minor. ``downgrade``: ``release`` is older than the installed one.
    """

    release: Release | None
    auto_release: Release | None
    reason: str
    skipped: tuple[Skipped, ...] = ()
    downgrade: bool = False

    @property
    def update_available(self) -> bool:
        return self.release is not None

    @property
    def auto(self) -> bool:
        """The newest eligible release installs without asking."""
        return self.release is not None and self.auto_release is self.release


def decide(
    releases: Sequence[Release],
    current_version: str | None,
    config: UpdateConfig,
    bad_versions: set[str] | frozenset[str] = frozenset(),
    requested_version: str | None = None,
    confirm_major: bool = False,
    force: bool = False,
    held: Mapping[str, str] | None = None,
    required: frozenset[str] = frozenset(),
    rolled_back: Collection[str] = frozenset(),
) -> Decision:
    """Apply the module's rules to ``releases`` (this platform's, any order)."""
    held = held or {}
    ordered = sorted(releases, key=lambda r: r.parsed_version)
    current = parse_version(current_version) if current_version is not None else None
    bad = {parse_version(v) for v in bad_versions}
    rolled = {parse_version(v) for v in rolled_back}
    if requested_version is not None:
        return _requested(ordered, current, bad, parse_version(requested_version), confirm_major, force)

    newer = [r for r in ordered if current is None or r.parsed_version > current]
    if not newer:
        newest = ordered[-1].version if ordered else None
        if newest is None:
            return Decision(None, None, "no release is published for this platform in the channel")
        return Decision(None, None, f"up to date: {current_version} is the newest release ({newest})")

    skipped: list[Skipped] = []
    eligible: list[Release] = []
    gated = False
    for r in newer:
        if r.type.needs_confirmation and current is not None and not gated:
            if r.type not in config.allowed_update_types:
                gated = True
                skipped.append(Skipped(r.version, f"{r.type} update: not in allowed_update_types"))
                continue
            if not confirm_major:
                gated = True
                skipped.append(Skipped(r.version, f"{r.type} update: needs explicit confirmation (--yes)"))
                continue
        if gated:
            skipped.append(Skipped(r.version, "comes after an unconfirmed major update"))
        elif r.version in held:
            skipped.append(Skipped(r.version, held[r.version]))
        elif r.type not in config.allowed_update_types:
            skipped.append(Skipped(r.version, f"{r.type.value} updates are not in allowed_update_types"))
        elif r.parsed_version in bad and not force:
            skipped.append(Skipped(r.version, "marked bad: this machine rolled back from it"))
        elif r.parsed_version in rolled and not force:
            skipped.append(Skipped(r.version, f"rolled back by the operator (install {r.version} takes it again)"))
        else:
            eligible.append(r)

    auto_release = _newest_automatic(eligible, newer, current, config, required)
    release = eligible[-1] if eligible else None
    reason = _reason(release, auto_release, skipped, config)
    return Decision(release, auto_release, reason, tuple(skipped))


def _newest_automatic(
    eligible: list[Release], newer: list[Release], current: Version | None, config: UpdateConfig,
    required: frozenset[str],
) -> Release | None:
    """The newest eligible release whose whole jump from ``current`` may install unattended."""
    if not config.enabled:
        return None
    if current is None:
        return eligible[-1] if eligible and config.auto_install else None
    best: Release | None = None
    urgent = False
    auto_kinds_only = True  # every release of the jump so far is of a type that auto-installs
    for r in newer:  # ascending: the jump to r contains every release up to r
        if r.type.needs_confirmation:
            break
        urgent = urgent or r.type.urgent or r.version in required
        auto_kinds_only = auto_kinds_only and r.type.auto_installs
        if r in eligible and (urgent or (auto_kinds_only and config.auto_install)):
            best = r
    return best


def _reason(release: Release | None, auto_release: Release | None, skipped: list[Skipped], config: UpdateConfig) -> str:
    if release is None:
        first = skipped[0] if skipped else None
        detail = f": {first.version} skipped ({first.why})" if first else ""
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        return f"no eligible update{detail}{more}"
    label = f"{release.version} ({release.type.value})"
    if auto_release is release:
        return f"{label} installs automatically"
    if auto_release is not None:
        return (
            f"{auto_release.version} ({auto_release.type.value}) installs automatically; "
            f"{label} is available on request"
        )
    if not config.enabled:
        return f"{label} is available; automatic updates are disabled"
    if release.type.needs_confirmation:
        return f"{label} is available (confirmed {release.type} update; never automatic)"
    why = "automatic installs are off" if not config.auto_install else "it brings a minor change"
    return f"{label} is available on request ({why})"


def _requested(
    ordered: list[Release],
    current: Version | None,
    bad: set[Version],
    wanted: Version,
    confirm_major: bool,
    force: bool,
) -> Decision:
    found = next((r for r in ordered if r.parsed_version == wanted), None)
    if found is None:
        return Decision(None, None, f"version {wanted} is not published for this platform in the channel")
    label = f"{found.version} ({found.type.value})"
    if wanted in bad and not force:
        return Decision(None, None, f"{label} is marked bad (this machine rolled back from it); "
                                    f"'install {found.version} --force' installs it anyway")
    if current is not None and wanted == current and not force:
        return Decision(None, None, f"{label} is already installed; 'install {found.version} --force' reinstalls it")
    if current is not None and wanted < current:
        if not force:
            return Decision(
                None,
                None,
                f"{label} is older than the installed {current}: a downgrade needs --force",
                downgrade=True,
            )
        return Decision(found, None, f"{label}: downgrade from {current} (forced)", downgrade=True)
    crossed = [
        r for r in ordered
        if r.type.needs_confirmation and current is not None and current < r.parsed_version <= wanted
    ]  # fmt: skip
    if crossed and not confirm_major:
        gate = crossed[0]
        why = f"{label} crosses the {gate.type} update {gate.version}: needs explicit confirmation (--yes)"
        return Decision(None, None, why)
    return Decision(found, None, f"{label} as requested")


def jittered_interval(interval: float, rng: random.Random, spread: float = 0.1) -> float:
    """``interval`` scaled by a random factor in [1 - spread, 1 + spread], so a fleet started
    together does not poll the repository in lock step."""
    if not 0 <= spread < 1:
        raise ValueError("spread must be in [0, 1)")
    return interval * (1 - spread + 2 * spread * rng.random())
