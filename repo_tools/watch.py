"""``pinnacle-release watch``: releases that stop themselves. At every look (``--interval``, the seed's
``health_check_interval``; ``--once`` for cron and CI), for each release whose rollout is active, the
collector's counts go through the canary rule (``core.canary.decide``) and its decision is applied as a
signed metadata change with the online keys only, committed like any other edit (``repo_tools.fleet``):

* ``advance``: approve the next step of a gated rollout (``rollout --advance`` from the approved step
  watch read: a step approved since is refused, never skipped over);
* ``halt``: pause the rollout (its percent freezes; a person resumes it with ``rollout --resume``);
* ``yank`` (``--auto-yank``): yank it with a reason naming the evidence; clients that took it return
  to the last good release with their data restored. When a yank is refused (no other release left
  for the platform) the rollout is halted instead;
* ``hold`` / ``none``: nothing is signed.

What a look reads. The release's cumulative counts since it was published (every report naming it),
and the baseline: the newest older release of the same channel and platform that is neither yanked nor
still rolling, over the same period (reports since the rollout's start); without one, the
``--max-failure-rate`` alone.

The audit log ``REPO_DIR/.pinnacle/decisions.jsonl`` (never served or synced: hosting, ``serve`` and
``sync`` leave dot paths out) records every decision that signs something, with its evidence (counts,
rates, statistic, threshold, rule), write-ahead: an ``intent`` line, fsynced, before the commit, and a
``done`` line after it. A ``watch`` killed between the two leaves a repository as valid as any
interrupted publish (``store``'s order: timestamp last), and the next look settles the intent first:
when the signed state already shows it, only the ``done`` line is written; otherwise it is
``abandoned`` and the look decides afresh (the same data gives the same decision, applied once). The
log also keeps, per release, when the rule's answer changed (``observe``: a hold starts or ends),
which is how a gate's hold is timed across looks and ``--once`` runs, and the install ids a release
had when its current step was approved. One look at a time per repository (``.pinnacle/watch.lock``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.index import ChannelIndex, Release
from pinnacle_updates.formats.redact import redact_data
from pinnacle_updates.formats.rollout import Rollout, RolloutState, format_time, parse_time

from . import fleet
from .collector.storage import Filters, Storage
from .core import canary
from .errors import PublishRefused, RepositoryStateError
from .keys import KeyStore
from .publish import utcnow
from .store import Repository

__all__ = ["LOG_DIR", "DecisionLog", "Look", "Verdict", "decisions", "look"]

LOG_DIR = ".pinnacle"
LOG_FILE = "decisions.jsonl"
LOCK_FILE = "watch.lock"
READ_MAX = 64 << 20
"""Bytes of the log's end a look reads (about 100,000 decisions; older ones are history only)."""
REASON_MAX = 300
"""Characters of a decision's reason put into a yank's signed reason (clients show it)."""


# ----- the audit log --------------------------------------------------------------------------------
class DecisionLog:
    """``REPO_DIR/.pinnacle/decisions.jsonl``: one JSON object per line, appended with ``O_APPEND`` and
    fsynced before the call returns; a torn last line (a kill mid-append) is skipped by readers."""

    def __init__(self, repo_dir: Path) -> None:
        self.dir = Path(repo_dir) / LOG_DIR
        self.path = self.dir / LOG_FILE

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        rec: dict[str, Any] = redact_data(dict(record))
        line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            if not self.dir.is_dir():
                self.dir.mkdir(mode=0o755, exist_ok=True)
                fsutil.fsync_dir(self.dir.parent)
            new = not self.path.exists()
            fsutil.append_line(self.path, line)
            if new:
                fsutil.fsync_dir(self.dir)
        except OSError as exc:
            raise RepositoryStateError(f"cannot write the decision log {self.path}: {exc.strerror or exc}") from None
        return rec

    def read(self) -> list[dict[str, Any]]:
        try:
            lines = fsutil.tail_lines(self.path, READ_MAX)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RepositoryStateError(f"cannot read the decision log {self.path}: {exc.strerror or exc}") from None
        out = []
        for line in lines:
            with contextlib.suppress(boundedjson.FormatError):
                rec = boundedjson.loads(line, "decision", max_bytes=1 << 20) if line.strip() else None
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One look at a time on this repository (the kernel drops the lock of a killed watch)."""
        try:
            self.dir.mkdir(mode=0o755, exist_ok=True)
            with fsutil.exclusive_lock(self.dir / LOCK_FILE, wait=True, record_pid=False):
                yield
        except OSError as exc:
            raise RepositoryStateError(f"cannot lock {self.dir / LOCK_FILE}: {exc.strerror or exc}") from None


# ----- one look -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What one look decided for one release, and what was signed."""

    channel: str
    platform: str
    version: str
    decision: canary.Decision
    step: canary.Step
    baseline: str | None
    applied: str = ""
    """What was signed (``advanced to step N (P%)``, ``paused at P%``, ``yanked``), or why not; '' if nothing."""
    comparisons: tuple[Mapping[str, Any], ...] = ()
    """The release's A/B groups compared (``collector.summary.compare_groups``): shown, never decided on."""

    @property
    def target(self) -> str:
        return f"{self.channel}/{self.platform}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "platform": self.platform, "version": self.version,
                "baseline": self.baseline, "step": self.step.index, "percent": self.step.percent,
                "applied": self.applied, **self.decision.to_dict(), "comparisons": list(self.comparisons)}

    def line(self) -> str:
        done = f" -> {self.applied}" if self.applied else ""
        ab = "".join(f"\n  A/B {canary.comparison_line(c)}" for c in self.comparisons)
        return f"{self.target}: {self.decision.action.value}: {self.decision.reason}{done}{ab}"


@dataclass(frozen=True)
class Look:
    at: str
    verdicts: tuple[Verdict, ...]
    settled: tuple[str, ...]
    """Intents an interrupted watch left, settled by this look (one line each)."""

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "settled": list(self.settled), "releases": [v.to_dict() for v in self.verdicts]}


def look(repo: Repository, keys: KeyStore, storage: Storage, options: canary.Options, *,
         channels: Sequence[str] = (), now: datetime | None = None,
         on_intent: Callable[[Verdict], None] | None = None) -> Look:
    """One look at every rolling release (of ``channels``, or all); decisions applied. ``on_intent``
    is called after an intent is logged and before it is committed (the command prints it)."""
    problem = options.problem()
    if problem:
        raise PublishRefused(problem)
    now = now or utcnow()
    if not repo.is_initialised():
        repo.load()  # its one line: not an initialised repository
    log = DecisionLog(repo.path)
    with log.locked():
        records = log.read()
        state = repo.load()
        wanted = list(channels) or sorted(state.channels)
        for name in wanted:
            state.channel(name)  # an unknown channel: one line naming the known ones
        indexes = {name: repo.channel_index(state, name) for name in wanted}
        settled = _settle(log, records, indexes, now)
        if settled:
            records = log.read()
        verdicts = []
        for name in wanted:
            for release in indexes[name].releases:
                if _rolling(release):
                    verdict = _decide(name, release, indexes[name], storage, records, options, now)
                    verdicts.append(_apply(repo, keys, log, records, verdict, now, on_intent))
    return Look(format_time(now), tuple(verdicts), tuple(settled))


def _rolling(r: Release) -> bool:
    return r.rollout is not None and r.yanked is None and r.rollout.state is RolloutState.ACTIVE


def _key(channel: str, platform: str, version: str) -> str:
    return f"{channel}/{platform}/{version}"


def _entry(storage: Storage, channel: str, platform: str, version: str, since: datetime | None,
           now: datetime) -> dict[str, Any]:
    """The release's fleet report entry ({} when nothing was reported)."""
    document = storage.fleet_report(Filters(channel, version, since), now)
    for entry in document["releases"]:
        if entry["platform"] == platform and entry["version"] == version:
            return dict(entry)
    return {}


def baseline_of(index: ChannelIndex, release: Release) -> Release | None:
    """The previous good release: the newest older one of the platform, neither yanked nor rolling."""
    older = [r for r in index.for_platform(release.platform)
             if r.parsed_version < release.parsed_version and r.yanked is None
             and (r.rollout is None or r.rollout.state is RolloutState.COMPLETE)]
    return older[-1] if older else None


def _decide(channel: str, release: Release, index: ChannelIndex, storage: Storage,
            records: Sequence[Mapping[str, Any]], options: canary.Options, now: datetime) -> Verdict:
    rollout = release.rollout
    assert rollout is not None
    entry = _entry(storage, channel, release.platform, release.version, None, now)
    counts = canary.Counts.from_entry(entry)
    base = baseline_of(index, release)
    base_entry = (_entry(storage, channel, release.platform, base.version, parse_time(rollout.start), now)
                  if base is not None else {})
    base_counts = canary.Counts.from_entry(base_entry) if base_entry else None
    key = _key(channel, release.platform, release.version)
    step = step_of(rollout, [r for r in records if r.get("target") == key], now)
    gated = replace(options, gate=options.gate and rollout.schedule.gate)
    decision = canary.decide(counts, base_counts, step, gated)
    return Verdict(channel, release.platform, release.version, decision, step,
                   base.version if base is not None else None, comparisons=tuple(entry.get("comparisons", ())))


def step_of(rollout: Rollout, records: Sequence[Mapping[str, Any]], now: datetime) -> canary.Step:
    """Where ``rollout`` stands at ``now`` (``canary.Step``), with this release's log ``records``
    for what the signed index does not say: install ids when the step was approved, and how long a
    gate has held it on evidence."""
    schedule = rollout.schedule
    if schedule.gate:
        index = rollout.approved_step
    else:
        elapsed = (now - parse_time(rollout.start)).total_seconds()
        index = max((i for i in range(schedule.step_count()) if schedule.step(i).after <= elapsed), default=0)
    nxt = schedule.step(index + 1).percent if index + 1 < schedule.step_count() else None
    due = nxt is not None and rollout.timetable_percent(now) >= nxt
    installs_at_start = 0
    held_since: str | None = None
    for rec in records:
        if rec.get("event") == "done" and rec.get("action") == "advance" and rec.get("to_step") == index:
            installs_at_start = int(rec.get("installs", 0))
        if rec.get("event") == "observe":
            held = rec.get("action") == "hold" and rec.get("hold") == "evidence" and rec.get("step") == index
            held_since = str(rec.get("at")) if held else None
    held_for = max(0.0, (now - parse_time(held_since)).total_seconds()) if held_since else 0.0
    return canary.Step(index, rollout.percent_at(now), nxt, due, installs_at_start, rollout.state.value, held_for)


# ----- applying a decision --------------------------------------------------------------------------
def _apply(repo: Repository, keys: KeyStore, log: DecisionLog, records: Sequence[Mapping[str, Any]],
           verdict: Verdict, now: datetime, on_intent: Callable[[Verdict], None] | None) -> Verdict:
    d = verdict.decision
    _observe(log, records, verdict, now)
    if d.action is canary.Action.ADVANCE:
        return _signed(repo, keys, log, verdict, now, on_intent, "advance",
                       {"from_step": verdict.step.index, "to_step": verdict.step.index + 1})
    if d.action is canary.Action.YANK:
        yanked = _signed(repo, keys, log, verdict, now, on_intent, "yank", {})
        if yanked.applied == "yanked":
            return yanked
        verdict = replace(verdict, applied=yanked.applied)  # refused (nothing else to return to): halt
    if d.action in (canary.Action.HALT, canary.Action.YANK):
        halted = _signed(repo, keys, log, verdict, now, on_intent, "halt", {})
        if verdict.applied:
            return replace(halted, applied=f"{verdict.applied}; {halted.applied}")
        return halted
    return verdict


def _observe(log: DecisionLog, records: Sequence[Mapping[str, Any]], verdict: Verdict, now: datetime) -> None:
    """Log the rule's answer when it changed for this release (a hold starting or ending), so holds
    are timed across looks. Looks that change nothing write nothing."""
    d = verdict.decision
    mark = {"action": d.action.value, "hold": d.hold, "step": verdict.step.index}
    last = next((r for r in reversed(records) if r.get("target") == verdict.target and r.get("event") == "observe"),
                None)
    if last is not None and {k: last.get(k) for k in mark} == mark:
        return
    if last is None and d.action is canary.Action.NONE:
        return
    # percent and evidence only for the record (the fleet page's timeline shows a hold with its counts)
    log.append({"event": "observe", "at": format_time(now), "target": verdict.target, **mark,
                "reason": d.reason, "percent": verdict.step.percent, "evidence": d.to_dict()})


def _signed(repo: Repository, keys: KeyStore, log: DecisionLog, verdict: Verdict, now: datetime,
            on_intent: Callable[[Verdict], None] | None, action: str, extra: dict[str, Any]) -> Verdict:
    d = verdict.decision
    intent_id = secrets.token_hex(8)
    base = {"id": intent_id, "target": verdict.target, "channel": verdict.channel, "platform": verdict.platform,
            "version": verdict.version, "action": action, **extra}
    log.append({"event": "intent", "at": format_time(now), **base, "reason": d.reason,
                "baseline": verdict.baseline, "percent": verdict.step.percent, "evidence": d.to_dict()})
    if on_intent is not None:
        on_intent(replace(verdict, applied=f"publishing {action}"))
    try:
        result = _commit_change(repo, keys, verdict, action, now)
    except PublishRefused as exc:
        log.append({"event": "done", "at": format_time(now), **base, "outcome": "refused", "message": str(exc),
                    "installs": d.installs})
        return replace(verdict, applied=f"{action} refused: {exc}")
    log.append({"event": "done", "at": format_time(now), **base, "outcome": "applied", "installs": d.installs,
                "metadata_versions": result.get("metadata_versions", {})})
    return replace(verdict, applied=_applied_text(action, verdict))


def _applied_text(action: str, verdict: Verdict) -> str:
    if action == "advance":
        nxt = verdict.step.next_percent
        return f"advanced to step {verdict.step.index + 2} ({nxt:g}%)" if nxt is not None else "advanced"
    if action == "halt":
        return f"paused at {verdict.step.percent:g}%"
    return "yanked"


def yank_reason(decision: canary.Decision) -> str:
    """The signed reason of an automatic yank (clients show it): the rule's one line, bounded."""
    reason = f"halted automatically by pinnacle-release watch: {decision.reason}"
    return reason if len(reason) <= REASON_MAX else reason[:REASON_MAX - 3] + "..."


def _commit_change(repo: Repository, keys: KeyStore, verdict: Verdict, action: str,
                   now: datetime) -> dict[str, Any]:
    channel, version, platform = verdict.channel, verdict.version, verdict.platform
    if action == "advance":
        return fleet.rollout(repo, keys, channel, version, advance=True, expected_step=verdict.step.index,
                             platform=platform, now=now)
    if action == "halt":
        return fleet.rollout(repo, keys, channel, version, pause=True, platform=platform, now=now)
    return fleet.yank(repo, keys, channel, version, yank_reason(verdict.decision), platform=platform, now=now)


# ----- settling what a killed watch left ------------------------------------------------------------
def _settle(log: DecisionLog, records: Sequence[Mapping[str, Any]], indexes: Mapping[str, ChannelIndex],
            now: datetime) -> list[str]:
    closed = {r.get("id") for r in records if r.get("event") in ("done", "abandoned")}
    out = []
    for rec in records:
        if rec.get("event") != "intent" or rec.get("id") in closed or rec.get("channel") not in indexes:
            continue
        release = indexes[str(rec["channel"])].find(str(rec.get("version")), str(rec.get("platform")))
        base = {k: rec.get(k) for k in ("id", "target", "channel", "platform", "version", "action", "from_step",
                                        "to_step") if k in rec}
        installs = rec.get("evidence", {}).get("installs", 0) if isinstance(rec.get("evidence"), dict) else 0
        if release is not None and _shows(release, rec):
            log.append({"event": "done", "at": format_time(now), **base, "outcome": "applied",
                        "installs": installs, "note": "committed by an interrupted watch; log completed"})
            out.append(f"{rec.get('target')}: {rec.get('action')} was committed before an interruption; "
                       f"log completed")
        else:
            log.append({"event": "abandoned", "at": format_time(now), **base,
                        "note": "not committed before an interruption; decided again"})
            out.append(f"{rec.get('target')}: {rec.get('action')} was not committed before an interruption; "
                       f"deciding again")
    return out


def _shows(release: Release, intent: Mapping[str, Any]) -> bool:
    """Whether the signed ``release`` already carries the change ``intent`` was about to commit."""
    action = intent.get("action")
    if action == "yank":
        return release.yanked is not None
    rollout = release.rollout
    if action == "halt":
        return release.yanked is not None or (rollout is not None and rollout.state is not RolloutState.ACTIVE)
    to_step = intent.get("to_step")
    return rollout is not None and isinstance(to_step, int) and rollout.approved_step >= to_step


# ----- reading the log back -------------------------------------------------------------------------
def decisions(repo_dir: Path, *, channel: str | None = None, version: str | None = None,
              limit: int = 200, holds: bool = False) -> list[dict[str, Any]]:
    """The signed decisions, newest last (``fleet report --repo``): each intent with how it ended
    (``applied``, ``refused``, ``abandoned`` or ``pending``) and its evidence. ``holds``: also each
    hold a gate started (``observe`` records; status ``observed``): the fleet page's timeline."""
    records = DecisionLog(repo_dir).read()
    ended = {r.get("id"): r for r in records if r.get("event") in ("done", "abandoned")}
    out = []
    for rec in records:
        if holds and rec.get("event") == "observe" and rec.get("action") == "hold":
            parts = str(rec.get("target", "")).split("/", 2)
            if len(parts) == 3 and channel in (None, parts[0]) and version in (None, parts[2]):
                out.append({k: rec[k] for k in ("at", "reason", "hold", "step", "percent", "evidence") if k in rec}
                           | {"channel": parts[0], "platform": parts[1], "version": parts[2], "action": "hold",
                              "status": "observed"})
            continue
        if rec.get("event") != "intent":
            continue
        if (channel is not None and rec.get("channel") != channel) or (
                version is not None and rec.get("version") != version):
            continue
        end = ended.get(rec.get("id"))
        status = "pending" if end is None else "abandoned" if end.get("event") == "abandoned" else end.get("outcome")
        out.append({k: rec.get(k) for k in ("at", "channel", "platform", "version", "action", "reason", "baseline",
                                            "percent", "from_step", "to_step", "evidence") if k in rec}
                   | {"status": status, **({"message": end["message"]} if end and "message" in end else {})})
    return out[-limit:]
