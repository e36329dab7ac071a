"""Publisher verbs of fleet control: ``rollout`` (schedule, percent, pause, resume, complete),
``yank`` and ``feedback`` (where the channel's clients send outcome reports). Each edits fields of
a channel's signed index and commits like a publish (new index target, channel role, snapshot,
timestamp last) with the online keys only.

Everything is validated, and every signer loaded, before a byte is written: a refused request
(unknown version, bad schedule, percent outside 0-100, pausing a paused rollout, yanking the last
release a client could return to, ...) leaves the repository exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pinnacle_updates.formats import boundedjson
from pinnacle_updates.formats.fleet import controls_summary
from pinnacle_updates.formats.fsutil import read_regular
from pinnacle_updates.formats.index import ChannelIndex, Feedback, FormatError, Release, parse_version
from pinnacle_updates.formats.rollout import Rollout, Schedule, ScheduleError, Yank, parse_schedule

from .errors import PublishRefused
from .keys import KeyStore
from .publish import _archived, _Change, _commit, _iso, _set_index, _windowed, utcnow
from .store import Repository

__all__ = ["load_schedule", "rollout", "schedule_option", "set_feedback", "yank"]

SCHEDULE_MAX = 1 << 20
"""Bytes of a schedule file read at most."""


def load_schedule(path: Path) -> Schedule:
    """A schedule file: JSON, either ``{"type": "percentage", ...}``, ``{"type": "waves", ...}``
    or a bare list of waves ``[{"after": "1h", "percent": 1}, ...]``."""
    try:
        data = boundedjson.loads(read_regular(Path(path), SCHEDULE_MAX, follow=True), f"schedule {path}")
    except OSError as exc:
        raise PublishRefused(f"cannot read schedule {path}: {exc.strerror or exc}") from exc
    except FormatError as exc:
        raise PublishRefused(str(exc)) from exc
    try:
        return parse_schedule(data, f"schedule {path}")
    except ScheduleError as exc:
        raise PublishRefused(str(exc)) from exc


def schedule_option(schedule_file: Path | None, percent: float | None) -> Schedule | None:
    """The schedule of ``--rollout FILE`` or ``--percent N`` (at most one), or None."""
    if schedule_file is not None and percent is not None:
        raise PublishRefused("give either a schedule file or --percent, not both")
    if schedule_file is not None:
        return load_schedule(schedule_file)
    if percent is not None:
        try:
            return Schedule.fixed(percent, "--percent")
        except ScheduleError as exc:
            raise PublishRefused(str(exc)) from exc
    return None


def rollout(
    repo: Repository,
    keys: KeyStore,
    channel: str,
    version: str,
    *,
    schedule: Schedule | None = None,
    pause: bool = False,
    resume: bool = False,
    complete: bool = False,
    advance: bool = False,
    expected_step: int | None = None,
    platform: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Set (``schedule``: from now), pause, resume, complete or advance (approve the next gated step)
    the rollout of ``version``. ``expected_step``: advance only from that approved step (``watch``
    decides on what it read; a step approved since, by a person or an earlier run, is refused)."""
    chosen = [name for name, on in (("schedule", schedule is not None), ("pause", pause), ("resume", resume),
                                     ("complete", complete), ("advance", advance)) if on]
    if len(chosen) != 1:
        raise PublishRefused("give exactly one of --schedule, --percent, --pause, --resume, --complete, --advance")
    when = now or utcnow()

    def change(r: Release) -> Release:
        if r.yanked is not None:
            raise PublishRefused(f"{channel} {r.version} ({r.platform}) is yanked; its rollout cannot change")
        if schedule is not None:
            return replace(r, rollout=Rollout(schedule, _iso(when)))
        current = r.rollout
        if current is None:
            if complete:
                raise PublishRefused(f"{channel} {r.version} ({r.platform}) has no rollout: it is already complete")
            raise PublishRefused(f"{channel} {r.version} ({r.platform}) has no rollout to {chosen[0]}")
        try:
            if advance:
                if expected_step is not None and current.approved_step != expected_step:
                    raise PublishRefused(f"{channel} {r.version} ({r.platform}): step {current.approved_step + 1} "
                                         f"is approved already, not step {expected_step + 1}; nothing changed")
                return replace(r, rollout=current.advanced())
            if pause:
                return replace(r, rollout=current.paused(when))
            if resume:
                return replace(r, rollout=current.resumed(when))
            return replace(r, rollout=current.completed(), ab_testing=None)
        except ScheduleError as exc:
            raise PublishRefused(f"{channel} {r.version} ({r.platform}): {exc}") from exc

    return _edit(repo, keys, channel, version, platform, when, change, chosen[0])


def yank(
    repo: Repository,
    keys: KeyStore,
    channel: str,
    version: str,
    reason: str,
    *,
    platform: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Withdraw ``version``: clients skip it, clients on it move to the newest release they may have.
    Refused when no other release of the platform would be left to return to."""
    if not reason.strip():
        raise PublishRefused("--reason must say why the release is yanked (clients show it)")
    when = now or utcnow()

    def change(r: Release) -> Release:
        if r.yanked is not None:
            raise PublishRefused(f"{channel} {r.version} ({r.platform}) is already yanked ({r.yanked.reason})")
        return replace(r, yanked=Yank(" ".join(reason.split()), _iso(when)))

    def check(index: ChannelIndex) -> None:
        for r in index.releases:
            if r.yanked is None or r.parsed_version != parse_version(version):
                continue
            left = [o for o in index.releases if o.platform == r.platform and o.yanked is None]
            if not left:
                raise PublishRefused(
                    f"{channel} {version} is the only release for {r.platform} left in the channel: yanking it "
                    f"would leave clients nothing to run; publish a fixed release first"
                )

    return _edit(repo, keys, channel, version, platform, when, change, "yank", check)


def set_feedback(
    repo: Repository,
    keys: KeyStore,
    channel: str,
    feedback: Feedback | None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Name the collector ``channel``'s clients report to (``None``: clear it, clients stop
    reporting unless their own config names a collector). The releases stay as they are."""
    when = now or utcnow()
    with repo.locked():
        state = repo.load()
        md = state.channel(channel)
        index = repo.channel_index(state, channel)
        if index.feedback == feedback:
            what = "names this collector" if feedback is not None else "names no collector"
            raise PublishRefused(f"{channel}: the signed index already {what}; nothing to do")
        live, files, bins = _windowed(repo, state, channel, md, replace(index, feedback=feedback, updated=_iso(when)))
        files.extend(_set_index(md, channel, live))
        versions = _commit(repo, keys, state, _Change(files, {channel: md, **bins}), when)
    return {"channel": channel, "action": "feedback set" if feedback is not None else "feedback cleared",
            # the key is public (it is in the signed index) but still not echoed into CI logs
            "feedback": {"collector_url": feedback.collector_url, "ingest_key": bool(feedback.ingest_key)}
            if feedback is not None else None, "metadata_versions": versions}


def _edit(
    repo: Repository,
    keys: KeyStore,
    channel: str,
    version: str,
    platform: str | None,
    now: datetime,
    change: Callable[[Release], Release],
    what: str,
    check: Callable[[ChannelIndex], None] | None = None,
) -> dict[str, Any]:
    """Apply ``change`` to every release of ``version`` (on ``platform``, or all) and commit."""
    try:
        wanted = parse_version(version)
    except FormatError as exc:
        raise PublishRefused(str(exc)) from exc
    with repo.locked():
        state = repo.load()
        md = state.channel(channel)
        index = repo.channel_index(state, channel)
        positions = [
            i for i, r in enumerate(index.releases)
            if r.parsed_version == wanted and (platform is None or r.platform == platform)
        ]  # fmt: skip
        # A release older than the live window (on some platform) is edited from its archive record;
        # a yank brings it back into the index (clients must see it), other edits go back into the archive.
        unarchived = _archived(repo, state, channel, version, platform)
        if not positions and not unarchived:
            where = f" for {platform}" if platform else ""
            raise PublishRefused(f"{channel} has no release {version}{where}")
        changed = {i: change(index.releases[i]) for i in positions}
        edited = [change(r) for r in unarchived]
        try:
            new_index = index.with_replaced(changed, _iso(now))
        except FormatError as exc:
            raise PublishRefused(str(exc)) from exc
        whole = replace(new_index, releases=(*edited, *new_index.releases))
        if check is not None:
            check(whole)
        live, files, bins = _windowed(repo, state, channel, md, whole, unarchived=edited)
        files.extend(_set_index(md, channel, live))
        versions = _commit(repo, keys, state, _Change(files, {channel: md, **bins}), now)
    releases = [
        {"version": r.version, "platform": r.platform, **controls_summary(r, now)} for r in [*changed.values(), *edited]
    ]
    return {"channel": channel, "version": version, "action": what, "releases": releases,
            "metadata_versions": versions}
