"""The agent's engine: the continuous update loop, live progress, and every API operation.

``AgentService`` owns one ``AutoUpdater`` (the public client API, ``client.api``) for the install
directory and is what the HTTP layer (``client.agent.app``) calls; it imports no web framework, so
it is tested and reasoned about on its own. Every answer about what to install (the loop, a check,
a check for an application's own ``current_version``, an install request) comes from the API's one
policy path, with rollout holds, required versions, yanks and locally bad versions applied.
Concurrency rules:

* One agent operation that changes the install (an install job, a rollback, an unattended
  round of the loop) runs at a time: ``_op`` is taken without waiting, so a second request gets
  ``AgentError(409, "busy")`` at once instead of queueing behind a long download. Another
  process (the CLI) is kept out by the installer's own ``DIR/lock`` (``BusyError`` -> 409).
* An install requested over the API is checked synchronously (404 for a version the channel does
  not publish for this platform, 409 for one policy refuses) and then runs on its own thread; its
  progress (``Job``) is read by ``status()``, so the caller polls instead of holding a connection.
* The loop runs on a daemon thread: every ``check_interval`` seconds (with jitter, so machines
  started together do not poll in lock step) it checks, installs what policy allows unattended,
  and runs the configured health check, whose last result the dashboard shows.

Outcomes are reported through ``client.agent.notify`` (never blocking or failing an update) and
are already in ``history.jsonl`` (the client writes it), from which analytics are computed.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pinnacle_updates.client import (
    AutoUpdater,
    Backup,
    BackupError,
    BusyError,
    CheckResult,
    ConfigError,
    HealthCheckError,
    InstallResult,
    RepositoryError,
    TrustError,
    UpdateError,
    jittered_interval,
)
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client.agent import analytics
from pinnacle_updates.client.agent.notify import Notifier, NotifySettings, Outcome, notification, now, outcome
from pinnacle_updates.formats.index import CHANNELS, FormatError, Release, UpdateType, parse_version
from pinnacle_updates.formats.logs import RedactFilter, resolve_format, stderr_handler, under_journald
from pinnacle_updates.formats.redact import redact_text, redact_url
from pinnacle_updates.formats.rollout import bucket, format_time, parse_time, reach

log = logging.getLogger("pinnacle.agent")

MANUAL_ROLLBACK_REASON = f"{analytics.MANUAL_ROLLBACK_PREFIX} via the agent API"
LOG_FILE = Path("logs") / "auto_updater.log"
# A failed loop round is retried after 1 s, doubling to 5 min; a good round resets it.
LOOP_BACKOFF_FIRST = 1.0
LOOP_BACKOFF_MAX = 300.0
# The longest wait between rounds the loop accepts (a year): beyond, threading's timer overflows.
LOOP_DELAY_MAX = 366 * 86400.0

# Share of the progress bar each install step reaches (the download fills 0-80 %).
_STEP_PERCENT = {
    "manifest": 0.0,
    "download": 0.0,
    "staging": 82.0,
    "staged": 88.0,
    "swap": 92.0,
    "health_check": 96.0,
    "committed": 100.0,
}
_DOWNLOAD_SHARE = 80.0

# Seconds the repository's channel list is kept (asking refreshes the metadata under the install lock).
CHANNELS_TTL = 300.0
# The settings the dashboard's form edits, in the form's order (GET /api/updates/config describes
# them from client.config's KEYS: one source for types, defaults and help; the channel has its own
# switch). Only policy keys: no URL, command or address that could carry a credential.
SETTINGS_FORM = (
    "enabled", "auto_install", "check_interval", "allowed_update_types", "backup_before_update",
    "backup_update_types", "max_backups", "max_rollback_days", "max_rollback_attempts",
)  # fmt: skip
_TYPE_LISTS = frozenset({"allowed_update_types", "backup_update_types", "skip_ramp_types"})
# client.config names the refused key in every message ("config key 'x': ...", "unknown config
# key 'x'"): the form shows the message next to that field.
_CONFIG_KEY = re.compile(r"config key '([A-Za-z0-9_]+)'")
# This machine's marks on a release (``AutoUpdater.status()`` key), with what each means here.
_LOCAL_MARKS = (
    ("bad", "bad_versions", "refused unless forced"),
    ("rolled_back", "rolled_back_versions", "automatic updates skip it, installing it by name works"),
)
# Marks that keep a release from being the one offered (the release list still shows it, marked).
_NOT_OFFERED = frozenset({"yanked", "held", "bad", "rolled_back"})


class AgentError(Exception):
    """An API-level refusal: HTTP ``status``, a stable machine ``code`` and a one-line message."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        """The request field the refusal is about (a config key), when there is one."""


def error_for(exc: UpdateError) -> AgentError:
    """The HTTP status and code an installer error maps to (the one place that decides it)."""
    if isinstance(exc, BusyError):
        return AgentError(409, "busy", str(exc))
    if isinstance(exc, ConfigError):
        return AgentError(422, "invalid_config", str(exc))
    if isinstance(exc, TrustError):
        return AgentError(502, "verification_failed", str(exc))
    if isinstance(exc, RepositoryError):
        return AgentError(502, "repository_unavailable", str(exc))
    return AgentError(409, "refused", str(exc))


# ----- progress ---------------------------------------------------------------------------------
@dataclass
class Job:
    """One install or rollback as the dashboard follows it (mutated only under ``Progress.lock``)."""

    kind: str
    version: str | None
    from_version: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "running"
    step: str = "starting"
    bytes: int = 0
    total: int = 0
    percent: float = 0.0
    bytes_per_second: float | None = None
    eta_seconds: float | None = None
    started: str = field(default_factory=now)
    finished: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    steps: list[dict[str, str]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)
    _download_t0: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "step": self.step,
            "version": self.version,
            "from_version": self.from_version,
            "bytes": self.bytes,
            "total": self.total,
            "download_percent": round(100.0 * self.bytes / self.total, 1) if self.total else 0.0,
            "percent": round(self.percent, 1),
            "bytes_per_second": None if self.bytes_per_second is None else round(self.bytes_per_second),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "started": self.started,
            "finished": self.finished,
            "elapsed_seconds": round(time.monotonic() - self._t0, 3) if self.finished is None else None,
            "error": self.error,
            "result": self.result,
            "steps": list(self.steps),
        }


class Progress:
    """The current (or last) job, fed by the installer's ``on_event`` callback."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job: Job | None = None

    def begin(self, job: Job) -> Job:
        with self.lock:
            self.job = job
        return job

    def restore(self, job: Job | None) -> None:
        """Show ``job`` again (an unattended round that found nothing to do leaves no job)."""
        with self.lock:
            self.job = job

    def event(self, event: Mapping[str, Any]) -> None:
        with self.lock:
            job = self.job
            if job is None or job.state != "running":
                return
            kind = event.get("event")
            if kind == "step":
                step = str(event.get("step"))
                job.step = step
                job.steps.append({"step": step, "ts": now()})
                if step == "download":
                    job._download_t0 = time.monotonic()
                    total = event.get("total")
                    if isinstance(total, int):
                        job.total = total
                job.percent = max(job.percent, _STEP_PERCENT.get(step, job.percent))
            elif kind == "progress":
                done, total = event.get("bytes"), event.get("total")
                if isinstance(done, int) and isinstance(total, int):
                    job.bytes, job.total = done, total
                    t0 = job._download_t0 if job._download_t0 is not None else job._t0
                    elapsed = time.monotonic() - t0
                    if elapsed > 0 and done:
                        job.bytes_per_second = done / elapsed
                        job.eta_seconds = max(total - done, 0) / job.bytes_per_second
                    if total:
                        job.percent = max(job.percent, _DOWNLOAD_SHARE * min(done, total) / total)

    def finish(self, job: Job, state: str, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self.lock:
            job.state = state
            job.finished = now()
            job.result = result
            job.error = error
            if state == "succeeded":
                job.percent = 100.0
                job.eta_seconds = 0.0
            job.step = {"succeeded": "done", "up_to_date": "done"}.get(state, job.step)

    def snapshot(self) -> dict[str, Any] | None:
        with self.lock:
            return self.job.to_dict() if self.job else None


# ----- the service ------------------------------------------------------------------------------
class AgentService:
    """Everything the API offers, over one install directory (see the module doc)."""

    def __init__(
        self,
        install_dir: Path,
        *,
        rng: random.Random | None = None,
        notify_backoff: float = 1.0,
    ) -> None:
        self.progress = Progress()
        self.updater = AutoUpdater(Path(install_dir), on_event=self.progress.event)
        self._rng = rng or random.Random()
        self._op = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._state_lock = threading.Lock()
        self._available: dict[str, Any] | None = None
        self._releases: list[Release] = []
        self._health: dict[str, Any] | None = None
        self._loop_info: dict[str, Any] = {
            "state": "running", "error": None, "since": None, "failures": 0, "retry_in_seconds": None,
            "last_failure": None, "last_ok": None, "restarts": 0,
            "last_round": None, "last_result": None, "next_round": None,
        }  # fmt: skip
        self._supervise_lock = threading.Lock()
        self._channel_cache: tuple[float, list[str]] | None = None  # (when, names) from the repository
        self._channel_error: str | None = None
        self._started = time.monotonic()
        self._started_at = now()
        self._thread: threading.Thread | None = None
        self.notifier = Notifier(lambda: NotifySettings.from_config(self.updater.settings()), backoff=notify_backoff)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous run left half done, then start the continuous update loop (a
        daemon thread). Called before the server answers, so no request races the recovery."""
        self._recover()
        self._start_loop()

    def _start_loop(self) -> None:
        self._thread = threading.Thread(target=self._loop_thread, name="pinnacle-loop", daemon=True)
        self._thread.start()

    def ensure_loop(self) -> None:
        """Restart the loop thread if it ended while the agent runs (it catches every ``Exception``
        itself; this covers what it cannot, so the loop never stays dead behind an ``ok``)."""
        with self._supervise_lock:
            if self._thread is None or self._thread.is_alive() or self._stop.is_set():
                return
            with self._state_lock:
                self._loop_info["restarts"] += 1
            log.error("update loop: the thread had ended; restarted")
            self._start_loop()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.notifier.close(timeout=2.0)

    def _loop_thread(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # not an Exception (those are handled per round): record why it ended;
            self._loop_failed(exc, 0.0)  # the thread ends quietly (no traceback on stderr): ensure_loop restarts it

    def _loop(self) -> None:
        """Rounds until stopped. A round that fails in any way (a config that does not load, a value
        that overflows a timer, a bug) is logged with its cause, shown as ``degraded`` in
        ``/api/health``, and retried after a backoff (``LOOP_BACKOFF_FIRST`` doubling to
        ``LOOP_BACKOFF_MAX``; a config change through the API retries at once); a good round
        clears it."""
        first = True
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._one_round(first)
            except Exception as exc:
                backoff = min(max(backoff * 2, LOOP_BACKOFF_FIRST), LOOP_BACKOFF_MAX)
                self._loop_failed(exc, backoff)
                if self._wake.wait(backoff):
                    self._wake.clear()
                first = True  # once the cause is fixed, the good round comes soon, not an interval later
                continue
            first = False
            if not self._stop.is_set():
                backoff = 0.0
                self._loop_ok()

    def _one_round(self, first: bool) -> None:
        """Wait for the next round, then run it; raises whatever stopped it (``_loop`` handles it)."""
        cfg = self.updater.settings()  # a config that does not load fails the round (ConfigError)
        interval = float(cfg.integer("check_interval"))
        enabled = cfg.flag("enabled")
        delay = jittered_interval(interval, self._rng)
        if not 0 <= delay <= LOOP_DELAY_MAX:  # also NaN; a wait this long overflows threading's timer
            raise ConfigError(f"check_interval {cfg['check_interval']!r} is out of range: "
                              f"allowed is 1..{LOOP_DELAY_MAX:.0f} seconds")
        if first:  # the first round (and a retry) comes soon, jittered over a tenth of the interval
            delay = self._rng.uniform(0, min(interval, 600) / 10)
        with self._state_lock:
            self._loop_info["next_round"] = _iso_in(delay)
        if self._wake.wait(delay):
            self._wake.clear()
        if self._stop.is_set():
            return
        if enabled:
            self.run_round()
        self._record_health()

    def _loop_failed(self, exc: BaseException, backoff: float) -> None:
        cause = _cause(exc)
        with self._state_lock:
            info = self._loop_info
            info["failures"] += 1
            if info["state"] != "failing":
                info["since"] = now()
            info.update(state="failing", error=cause, last_failure=now(),
                        retry_in_seconds=backoff, next_round=_iso_in(backoff))
            failures = info["failures"]
        log.error("update loop failed (%d in a row; retrying in %.0f s): %s", failures, backoff, cause)
        log.debug("update loop failure", exc_info=exc)

    def _loop_ok(self) -> None:
        with self._state_lock:
            info = self._loop_info
            was = info["error"] if info["state"] == "failing" else None
            info.update(state="running", error=None, since=None, failures=0, retry_in_seconds=None, last_ok=now())
        if was is not None:
            log.warning("update loop recovered (it had failed: %s)", was)

    def _recover(self) -> None:
        """Finish whatever a previous run left half done (an agent stopped mid-install), before the
        dashboard shows the state; another process holding the lock recovers it itself."""
        try:
            report = self.updater.recover()
        except UpdateError as exc:
            log.warning("recovery at start not run: %s", exc)
            return
        for action in report.actions:
            log.warning("recovered at start: %s", action)

    def wake(self) -> None:
        """Run a loop round now (after a config change, say)."""
        self._wake.set()

    def run_round(self) -> str:
        """One unattended round: check, then install what policy allows without asking."""
        if not self._op.acquire(blocking=False):
            return self._loop_result("skipped: another operation is running")
        try:
            try:
                found = self._check_and_list()
            except ConfigError:
                raise  # not a passing failure of the repository: the loop cannot work (degraded)
            except UpdateError as exc:
                return self._loop_result(f"check failed: {exc}")
            if found.auto_release is None:
                return self._loop_result(f"nothing to install unattended: {found.reason}")
            job = self.progress.begin(Job("auto", found.auto_release.version, found.current_version))
            self._run_install(job, lambda: self.updater.install(auto_only=True))
            return self._loop_result(f"{job.state}: {job.version}" + (f" ({job.error})" if job.error else ""))
        finally:
            self._op.release()

    def _loop_result(self, text: str) -> str:
        with self._state_lock:
            self._loop_info.update(last_round=now(), last_result=text)
        log.info("update loop: %s", text)
        return text

    def _record_health(self) -> None:
        try:
            if self.updater.status()["version"] is None:
                return
            result = self.updater.health_check()
        except ConfigError:
            raise  # a health check that cannot run is the loop failing (degraded), not a quiet skip
        except UpdateError as exc:
            log.debug("health check not run: %s", exc)
            return
        self._set_health({**result.to_dict(), "checked": now(), "source": "loop"})
        if not result.healthy:
            log.warning("health check of the running version failed: %s", result.reason)

    def _set_health(self, health: dict[str, Any]) -> None:
        with self._state_lock:
            self._health = health

    # -- check ----------------------------------------------------------------------------------
    def _check_and_list(self) -> CheckResult:
        """This install's check (recorded in history) plus the channel's releases for the dashboard,
        and the repository's channels when the list is older than ``CHANNELS_TTL``."""
        result = self.updater.check()
        releases = self.updater.releases()
        with self._state_lock:
            self._releases = releases
            self._available = {**result.to_dict(), "checked": now()}
            stale = self._channel_cache is None or time.monotonic() - self._channel_cache[0] >= CHANNELS_TTL
        if stale:
            try:
                names = self.updater.channels()
            except UpdateError as exc:  # the check itself succeeded: the old list (if any) stays
                with self._state_lock:
                    self._channel_error = _cause(exc)
            else:
                with self._state_lock:
                    self._channel_cache, self._channel_error = (time.monotonic(), names), None
        return result

    def check(self, current_version: str | None = None) -> dict[str, Any]:
        """Check now. With ``current_version`` (an app asking for itself), the answer is what the
        same policy path offers a client of this install running that version."""
        if current_version is not None:
            try:
                parse_version(current_version)
            except FormatError as exc:
                raise AgentError(422, "invalid_request", f"current_version: {exc}") from None
        try:
            result = self._check_and_list()
            installed = result.current_version
            if current_version is not None and (installed is None or parse_version(current_version) !=
                                                parse_version(installed)):
                result = self.updater.check(current_version=current_version, record=False)
        except UpdateError as exc:
            raise error_for(exc) from exc
        out = result.to_dict()
        out["installed_version"] = installed
        out["notes"] = next((r.notes for r in self._releases if r.version == out["version"]), "")
        try:
            local = self.updater.status()
        except UpdateError:
            local = {}
        out["releases"] = self._release_list(current_version or installed, local)
        return out

    def _standings(self) -> dict[str, dict[str, Any]]:
        """The fleet controls the last check saw, per release (``formats.fleet.Standing``; empty
        when none applied or nothing was checked yet)."""
        with self._state_lock:
            fleet = (self._available or {}).get("fleet") or {}
        return {s["version"]: s for s in fleet.get("releases", []) if isinstance(s, dict) and "version" in s}

    def _release_list(self, current: str | None, installed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The channel's releases, newest first, each with ``marks``: why it is not (or must be)
        installed here — yanked, held (rollout, A/B group), required (min_version), locally bad, rolled
        back by the operator — each with its reason. Marks come from the signed index, the last
        check's fleet view and this machine's state (``installed``: ``AutoUpdater.status()``);
        nothing is decided here."""
        with self._state_lock:
            releases = list(self._releases)
        standings = self._standings()
        cur = parse_version(current) if current else None
        out = []
        for r in reversed(releases):
            marks: list[dict[str, str]] = []
            standing = standings.get(r.version, {})
            if r.yanked is not None:
                marks.append({"kind": "yanked", "reason": r.yanked.reason})
            elif standing.get("held"):
                marks.append({"kind": "held", "reason": str(standing["held"])})
            if standing.get("required"):
                marks.append({"kind": "required", "reason": f"this machine runs a version below min_version "
                                                            f"{r.min_version}: the update is urgent"})
            for kind, key, effect in _LOCAL_MARKS:
                found = installed.get(key)
                record = next((v for k, v in found.items() if _same(k, r.version)), None) if isinstance(
                    found, dict) else None
                if isinstance(record, dict):
                    marks.append({"kind": kind, "reason": f"{_rollback_reason(record)}; {effect}"})
            out.append({
                "version": r.version,
                "type": r.type.value,
                "notes": r.notes,
                "published": r.published,
                "download_bytes": r.full.length + r.manifest.length,
                "newer": cur is None or r.parsed_version > cur,
                "installed": cur is not None and r.parsed_version == cur,
                "marks": marks,
            })  # fmt: skip
        return out

    def _rollout_card(self, current: str | None, releases: list[dict[str, Any]]) -> dict[str, Any]:
        """This machine and the rollout of the newest release it could move to: its bucket, the
        rollout's percent now, and when this machine gets it (or, in words, why that is unknown)."""
        with self._state_lock:
            checked = dict(self._available) if self._available else None
            by_version = {r.version: r for r in self._releases}
        if checked is None:
            return {"version": None, "why": "not checked yet: this card fills in after the first check "
                                            "(Check for updates, or the next round of the update loop)"}
        try:
            cfg = self.updater.settings()
        except UpdateError as exc:
            return {"version": None, "why": f"the config does not load: {exc}"}
        channel = cfg.text("channel")
        skipped = _NOT_OFFERED - {"held"}  # a held release is the very one whose rollout the card shows
        candidates = [r for r in releases if r["newer"] and not any(m["kind"] in skipped for m in r["marks"])]
        if not candidates:
            return {"version": None, "channel": channel,
                    "why": f"no newer release on {channel} for this machine: nothing is rolling out to it"}
        shown = candidates[0]
        release = by_version[shown["version"]]
        standing = self._standings().get(release.version, {})
        fleet = checked.get("fleet") or {}
        when = _parse_iso(fleet.get("rollout_time")) or datetime.now(UTC)
        card: dict[str, Any] = {
            "version": release.version, "type": release.type.value, "channel": channel,
            "bucket": round(bucket(cfg.text("client_id"), channel, release.version), 4),
            "percent": standing.get("percent"), "group": standing.get("group"),
            "required": bool(standing.get("required")), "held": standing.get("held") or None,
            "rollout_state": release.rollout.state.value if release.rollout is not None else None,
            "schedule": release.rollout.schedule.describe() if release.rollout is not None else None,
            "rollout_start": release.rollout.start if release.rollout is not None else None,
            "rollout_time": format_time(when), "checked": checked.get("checked"),
        }  # fmt: skip
        if standing.get("required"):
            card.update(gets_it_at=format_time(when), why="a required update (min_version): no rollout holds it")
        elif release.rollout is None:
            card.update(gets_it_at=format_time(when), why="no staged rollout: every machine is offered it")
        elif standing.get("percent") is None and standing.get("group") is None:
            card.update(gets_it_at=format_time(when),
                        why=f"{release.type.value} releases skip the staged rollout (skip_ramp_types, or the "
                            f"release says no ramp): every machine is offered it")
        elif standing.get("group") == "control":
            card.update(gets_it_at=None, why=str(standing.get("held")) + ": until the publisher ends the A/B test")
        else:
            got = reach(release.rollout, card["bucket"], when)
            card.update(gets_it_at=format_time(got.at) if got.at is not None else None, why=got.why)
        return card

    # -- install --------------------------------------------------------------------------------
    def start_install(self, version: str, *, confirm_major: bool = False, force: bool = False) -> dict[str, Any]:
        """Validate the request now, then install on a thread; returns the new job."""
        try:
            wanted = parse_version(version)
        except FormatError:
            raise AgentError(404, "unknown_version", f"{version!r} is not a version") from None
        if not self._op.acquire(blocking=False):
            raise AgentError(409, "busy", "an install or rollback is already running")
        try:
            try:
                releases = self.updater.releases()
                current = self.updater.status()["version"]
                cfg = self.updater.settings()
            except UpdateError as exc:
                raise error_for(exc) from exc
            with self._state_lock:
                self._releases = releases
            if not any(r.parsed_version == wanted for r in releases):
                raise AgentError(
                    404,
                    "unknown_version",
                    f"version {version} is not published for {cfg.text('platform')} on channel {cfg.text('channel')}",
                )

            def installable(confirm: bool) -> CheckResult:
                """What an install of ``version`` would do, through the one policy path (not recorded)."""
                try:
                    return self.updater.check(version, confirm_major=confirm, force=force, record=False)
                except UpdateError as exc:
                    raise error_for(exc) from exc

            found = installable(confirm_major)
            if found.release is None:
                if not confirm_major and installable(True).release is not None:
                    raise AgentError(
                        409, "confirmation_required", f"{version} crosses a major update: confirm_major is required"
                    )
                raise AgentError(409, "not_installable", found.reason)
            job = self.progress.begin(Job("install", version, current))
        except BaseException:
            self._op.release()
            raise

        def work() -> None:
            try:
                self._run_install(
                    job, lambda: self.updater.install(version, confirm_major=confirm_major, force=force)
                )
            finally:
                self._op.release()

        threading.Thread(target=work, name=f"pinnacle-install-{job.id}", daemon=True).start()
        return job.to_dict()

    def _run_install(self, job: Job, install: Callable[[], InstallResult]) -> None:
        """Run ``install`` for ``job``: record the outcome, notify, log. Never raises."""
        client_id = self._client_id()
        try:
            result = install()
        except HealthCheckError as exc:
            self.progress.finish(job, "rolled_back", error=str(exc))
            self._notify(outcome(job.from_version, job.version, error=exc), client_id)
            log.warning("%s install of %s rolled back: %s", job.kind, job.version, exc)
            return
        except UpdateError as exc:
            self.progress.finish(job, "failed", error=str(exc))
            self._notify(outcome(job.from_version, job.version, error=exc), client_id)
            log.warning("%s install of %s failed: %s", job.kind, job.version, exc)
            return
        except Exception as exc:  # a bug must not kill the loop thread silently
            log.exception("%s install of %s crashed", job.kind, job.version)
            self.progress.finish(job, "failed", error=f"internal error: {_cause(exc)}")
            return
        if result.outcome == "rolled_back":  # left a release the publisher yanked, through the other slot
            self.progress.finish(job, "succeeded", result=result.to_dict())
            self._notify(outcome(result.previous_version, result.version, result.outcome, result.reason), client_id)
            return
        if result.outcome != "committed":
            self.progress.finish(job, "up_to_date", result=result.to_dict())
            log.info("%s install: nothing to do (%s)", job.kind, result.reason)
            return
        job.version = result.version
        self.progress.finish(job, "succeeded", result=result.to_dict())
        if result.health is not None:
            self._set_health({**result.health, "checked": now(), "source": "install"})
        self._notify(outcome(result.previous_version, result.version, result.outcome), client_id)
        log.info("installed %s (was %s) in %.2fs", result.version, result.previous_version, result.duration)

    def _notify(self, what: Outcome | None, client_id: str) -> None:
        if what is not None:
            self.notifier.notify(notification(self.updater.install_dir, what, client_id))

    def _client_id(self) -> str:
        with contextlib.suppress(UpdateError):
            return self.updater.settings().text("client_id")
        return ""

    # -- rollback -------------------------------------------------------------------------------
    def rollback(self, *, force: bool = False, keep_data: bool = False, mark_bad: bool = False) -> dict[str, Any]:
        """The operator's rollback: the version left is recorded as rolled back (installable by name), or
        bad with ``mark_bad`` (the CLI's ``rollback --mark-bad``)."""
        if not self._op.acquire(blocking=False):
            raise AgentError(409, "busy", "an install or rollback is already running")
        try:
            job = self.progress.begin(Job("rollback", None, None))
            try:
                result = self.updater.rollback(force=force, keep_data=keep_data, reason=MANUAL_ROLLBACK_REASON,
                                               mark_bad=mark_bad)
            except UpdateError as exc:
                self.progress.finish(job, "failed", error=str(exc))
                raise error_for(exc) from exc
            job.version, job.from_version = result.version, result.from_version
            self.progress.finish(job, "succeeded", result=result.to_dict())
            self._notify(("rollback", result.from_version, result.version, "rolled_back", result.reason),
                         self._client_id())
            log.info("rolled back %s -> %s", result.from_version, result.version)
            return result.to_dict()
        finally:
            self._op.release()

    # -- read-only views --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        self.ensure_loop()
        try:
            installed: dict[str, Any] = self.updater.status()
        except UpdateError as exc:
            installed = {"version": None, "error": str(exc)}
        if isinstance(installed.get("repo_url"), str):  # unauthenticated: never a credential
            installed["repo_url"] = redact_url(installed["repo_url"])
        with self._state_lock:
            check = dict(self._available) if self._available else None
            health = dict(self._health) if self._health else None
            loop = dict(self._loop_info)
        releases = self._release_list(installed.get("version"), installed)
        newer = [r for r in releases if r["newer"]]
        # the newest newer release nothing holds back here (a yanked, held or locally bad one is
        # listed with its mark, never shown as the one available)
        offered = [r for r in newer if not any(m["kind"] in _NOT_OFFERED for m in r["marks"])]
        try:
            cfg = self.updater.settings()
            settings = {k: cfg[k] for k in ("enabled", "auto_install", "check_interval", "channel",
                                            "allowed_update_types", "max_rollback_days", "notify_on")}
            settings["webhook"] = bool(cfg.text("webhook_url"))
            settings["email"] = bool(cfg.text("smtp_host") and cfg.names("smtp_to"))
        except UpdateError as exc:
            settings = {"error": str(exc)}
        return {
            "installed": installed,
            "available": {"last_check": check, "releases": newer, "latest": offered[0] if offered else None},
            "releases": releases,
            "job": self.progress.snapshot(),
            "busy": self._op.locked(),
            "health": health,
            "rollout": self._rollout_card(installed.get("version"), releases),
            "loop": loop,
            "settings": settings,
            "notifications": self.notifier.stats(),
        }

    def history(self, limit: int = 100, op: str | None = None, outcome: str | None = None,
                version: str | None = None) -> dict[str, Any]:
        """The newest ``limit`` history records, filtered by kind (``op``), ``outcome`` and
        ``version`` (the version installed or left: either side of the record, PEP 440 equal)."""
        records = self.updater.history()
        if op:
            records = [r for r in records if r.get("op") == op]
        if outcome:
            records = [r for r in records if _outcome(r) == outcome]
        if version:
            sides = ("version", "from_version")
            records = [r for r in records if any(_same(str(r.get(k) or ""), version) for k in sides)]
        newest = list(reversed(records))
        return {"total": len(records), "records": newest[:limit]}

    def analytics(self) -> dict[str, Any]:
        return analytics.compute(self.updater.history()).to_dict()

    def backups(self) -> dict[str, Any]:
        """What rollback can reach: the other slot, and cached release artifacts, within
        max_rollback_days; and the data backups (summaries, oldest first)."""
        try:
            days = self.updater.settings().integer("max_rollback_days")
            target = self.updater.rollback_target()
            cached = self.updater.cached_releases()
            data = [b.summary() for b in self.updater.backups()]
        except UpdateError as exc:
            raise error_for(exc) from exc
        previous = target.to_dict() if target is not None else None
        return {"max_rollback_days": days, "previous_slot": previous, "cached_releases": cached, "backups": data}

    # -- data backups -----------------------------------------------------------------------------
    def data_backups(self) -> dict[str, Any]:
        """Every data backup (summaries, oldest first, as ``backups list``), the retention, and what
        a manual rollback would do: the version it switches to and the snapshot it restores."""
        try:
            cfg = self.updater.settings()
            found = self.updater.backups()
            target = self.updater.rollback_target()
            installed = self.updater.status()
            restores = self._rollback_snapshot(installed)
        except UpdateError as exc:
            raise error_for(exc) from exc
        ids = {b.id for b in found}
        return {
            "backups": [b.summary() for b in found],
            "count": len(found),
            "bytes": sum(b.bytes for b in found),
            "retention": {"max_backups": cfg.integer("max_backups"),
                          "max_rollback_days": cfg.integer("max_rollback_days")},
            "rollback": {
                "target": target.to_dict() if target is not None else None,
                "from_version": installed.get("version"),
                "restores": restores,
                # a pruned snapshot makes a rollback refuse unless it keeps the data
                "restorable": restores is None or restores in ids,
            },
        }

    def _rollback_snapshot(self, installed: Mapping[str, Any]) -> str | None:
        """The snapshot a manual rollback restores: the one taken just before the running release
        went live, named by the history record of that commit (same slot, version and sha256).
        None when nothing is installed or no snapshot was taken for it."""
        if not installed.get("version"):
            return None
        keys = ("slot", "version", "sha256")
        for record in reversed(self.updater.history()):
            if record.get("outcome") == "committed" and all(record.get(k) == installed.get(k) for k in keys):
                found = record.get("data_backup")
                return found if isinstance(found, str) else None
        return None

    def data_backup(self, backup_id: str, max_entries: int = 1000) -> dict[str, Any]:
        """One backup: its summary and its first ``max_entries`` manifest entries (``entry_count``
        says how many there are)."""
        b = self._load_backup(backup_id)
        return {**b.summary(), "entries": [e.to_dict() for e in b.entries[:max_entries]],
                "entry_count": len(b.entries), "entries_truncated": len(b.entries) > max_entries}

    def verify_data_backup(self, backup_id: str) -> dict[str, Any]:
        """Check one backup against its manifest (read-only: no operation lock). 200 either way;
        ``ok`` false with the ``problems`` when it differs."""
        self._load_backup(backup_id)
        try:
            problems = self.updater.verify_backup(backup_id)
        except (UpdateError, OSError) as exc:  # OSError: the backup was pruned while it was read
            raise self._backup_error(backup_id, exc) from exc
        return {"id": backup_id, "ok": not problems, "problems": problems}

    def restore_data_backup(self, backup_id: str) -> dict[str, Any]:
        """Put a backup's data in place under the running version (stop, restore, start), one
        operation like a rollback: 409 while another runs, here or in another process."""
        self._load_backup(backup_id)  # 404 for an unknown backup before any job is shown
        if not self._op.acquire(blocking=False):
            raise AgentError(409, "busy", "an install, rollback or restore is already running")
        try:
            job = self.progress.begin(Job("restore", None, None))
            try:
                report = self.updater.restore_backup(backup_id)
            except UpdateError as exc:
                self.progress.finish(job, "failed", error=str(exc))
                raise self._backup_error(backup_id, exc) from exc
            job.version = report.version
            self.progress.finish(job, "succeeded", result=report.to_dict())
            log.info("restored the data of backup %s under %s (replaced data kept as %s)", backup_id,
                     report.version, report.rejected)
            return report.to_dict()
        finally:
            self._op.release()

    def prune_data_backups(self) -> dict[str, Any]:
        """Apply the retention (``max_rollback_days``, ``max_backups``) now; the removed ids."""
        if not self._op.acquire(blocking=False):
            raise AgentError(409, "busy", "an install, rollback or restore is already running")
        try:
            try:
                removed = self.updater.prune_backups()
            except UpdateError as exc:
                raise error_for(exc) from exc
        finally:
            self._op.release()
        if removed:
            log.info("pruned data backups: %s", ", ".join(removed))
        return {"removed": removed}

    def _load_backup(self, backup_id: str) -> Backup:
        try:
            return self.updater.backup(backup_id)
        except UpdateError as exc:
            raise self._backup_error(backup_id, exc) from exc

    def _backup_error(self, backup_id: str, exc: Exception) -> AgentError:
        """404 for a backup that does not exist; other backup failures (a corrupt manifest, a
        restore that could not finish) are 409 ``backup_error``; the rest as ``error_for``. Where a
        backup lives is the ``path`` its summary gives (``backups/<id>``, under the install dir)."""
        if not os.path.lexists(self.updater.install_dir / "backups" / backup_id):
            return AgentError(404, "unknown_backup", f"no backup {backup_id}")
        if isinstance(exc, BackupError | OSError):
            return AgentError(409, "backup_error", _cause(exc))
        assert isinstance(exc, UpdateError)
        return error_for(exc)

    def channels(self) -> dict[str, Any]:
        """The channels the repository offers (its signed delegations, custom names included), as the
        last check learnt them, and the current one. Reading does no I/O: asking the repository
        refreshes its metadata under the install lock, which a page load must never hold while an
        install or restore wants it. Before any check: the usual names, ``error`` saying why."""
        try:
            current = self.updater.settings().text("channel")
        except UpdateError as exc:
            raise error_for(exc) from exc
        with self._state_lock:
            cached, error = self._channel_cache, self._channel_error
        if cached is None:
            error = error or "not asked yet: the repository's channels are listed by the next check"
        source = "repository" if cached is not None else "defaults"
        names = list(cached[1]) if cached is not None else list(CHANNELS)
        if current not in names:
            names = [*names, current]
        return {"current": current, "source": source, "error": error,
                "channels": [{"name": n, "current": n == current} for n in names]}

    def switch_channel(self, channel: str, *, allow_downgrade: bool = False) -> dict[str, Any]:
        """Follow ``channel`` from now on (``AutoUpdater.switch_channel``: never a downgrade unless
        ``allow_downgrade``), then check it so the release list and rollout card show the new channel."""
        if not self._op.acquire(blocking=False):
            raise AgentError(409, "busy", "an install, rollback or restore is already running")
        try:
            try:
                config_mod.parse_value("channel", channel)
            except ConfigError as exc:
                raise AgentError(422, "invalid_config", str(exc), "channel") from None
            try:
                offered = self.updater.channels()
            except UpdateError as exc:
                raise error_for(exc) from exc
            if channel not in offered:
                raise AgentError(404, "unknown_channel", f"the repository offers no channel {channel!r} "
                                 f"(it offers {', '.join(offered) or 'none'})", "channel")
            job = self.progress.begin(Job("channel", None, None)) if allow_downgrade else None
            try:
                result = self.updater.switch_channel(channel, allow_downgrade=allow_downgrade)
            except UpdateError as exc:
                if job is not None:
                    self.progress.finish(job, "failed", error=str(exc))
                if isinstance(exc, ConfigError):  # "already on channel x"
                    raise AgentError(409, "refused", str(exc), "channel") from None
                raise error_for(exc) from exc
            if job is not None:
                job.version = result["version"]
                self.progress.finish(job, "succeeded", result=result)
            with self._state_lock:
                self._releases, self._available = [], None  # the old channel's: not shown for the new one
                self._channel_cache = None
            with contextlib.suppress(UpdateError):
                self._check_and_list()
        finally:
            self._op.release()
        log.info("channel switched: %s -> %s (%s)", result["previous_channel"], channel, result["reason"])
        self.wake()
        return result

    def settings_form(self) -> dict[str, Any]:
        """The settings the dashboard edits: value, type, default, help and (for update-type lists)
        the choices, from ``client.config`` (the one place that knows them)."""
        try:
            cfg = self.updater.settings()
        except UpdateError as exc:
            raise error_for(exc) from exc
        types = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list"}
        fields = []
        for key in SETTINGS_FORM:
            spec = config_mod.KEYS[key]
            field_: dict[str, Any] = {"key": key, "type": types[spec.type], "value": cfg[key],
                                      "default": spec.default, "help": spec.help}
            if key in _TYPE_LISTS:
                field_["choices"] = [t.value for t in UpdateType]
            fields.append(field_)
        return {"channel": cfg.text("channel"), "fields": fields}

    def update_config(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate every change with ``client.config`` and write them at once, or refuse them all;
        a refusal names the key it is about (``field``) so a form can show it there."""
        if not changes:
            raise AgentError(422, "invalid_config", "no settings given")
        try:
            cfg = self.updater.configure(changes)
        except ConfigError as exc:
            found = _CONFIG_KEY.search(str(exc))
            raise AgentError(422, "invalid_config", str(exc), found.group(1) if found else None) from None
        log.info("config changed: %s", ", ".join(sorted(changes)))
        self.wake()  # the loop picks up a new interval or channel at once
        shown = {k: redact_url(v) if isinstance(v, str) else v for k, v in ((k, cfg[k]) for k in changes)}
        return {"changed": sorted(changes), "config": shown}

    def health(self) -> dict[str, Any]:
        """``ok``; ``degraded`` while the update loop fails (``loop.error`` says why, ``loop.since``
        since when) or is not running; ``unhealthy`` when the running version's last health
        check failed (that outranks the loop)."""
        self.ensure_loop()
        alive = self._thread is not None and self._thread.is_alive()
        with self._state_lock:
            app = dict(self._health) if self._health else None
            loop = dict(self._loop_info)
        if app is not None and not app.get("healthy"):
            status = "unhealthy"
        elif loop["state"] == "failing" or not alive:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "agent": {
                "version": _package_version(),
                "pid": os.getpid(),
                "started": self._started_at,
                "uptime_seconds": round(time.monotonic() - self._started, 1),
                "loop_alive": alive,
            },
            "app": app,
            "loop": loop,
        }


# ----- logging ----------------------------------------------------------------------------------
def configure_logging(install_dir: Path, *, debug: bool, secret: Callable[[], str]) -> Path:
    """``DIR/logs/auto_updater.log`` rotated at ``max_log_bytes`` (``log_backups`` kept), and lines on
    stderr in ``log_format`` (``formats.logs``: text, JSON, journald's form under systemd; warnings
    only on a terminal, everything from INFO as a service); ``debug`` logs detail. Returns the log path."""
    cfg = AutoUpdater(install_dir).settings()
    path = Path(install_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=cfg.integer("max_log_bytes"), backupCount=cfg.integer("log_backups"), encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(secret))
    fmt = resolve_format(cfg.text("log_format"))
    # A service's stderr is its log (the journal, a log shipper reading JSON): what it did belongs
    # there; on a terminal only what needs a person.
    unattended = fmt == "json" or under_journald()
    level = logging.DEBUG if debug else logging.INFO if unattended else logging.WARNING
    console = stderr_handler(fmt, level, secret=secret)
    root = logging.getLogger()
    root.handlers[:] = [handler, console]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "urllib3", "tuf", "securesystemslib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    return path


# ----- helpers ----------------------------------------------------------------------------------
def _cause(exc: BaseException) -> str:
    """One line saying why: the message of an error the client raised on purpose, the type and
    message of anything else (credentials redacted)."""
    text = str(exc) if isinstance(exc, UpdateError) else f"{type(exc).__name__}: {exc}"
    return redact_text(" ".join(text.split()) or type(exc).__name__)


def _same(a: str, b: str) -> bool:
    """Two version strings name the same PEP 440 version (text that is not one: equal as text)."""
    try:
        return parse_version(a) == parse_version(b)
    except FormatError:
        return a == b


def _outcome(record: Mapping[str, Any]) -> str:
    """A history record's outcome as the dashboard shows it (``recover`` records have none)."""
    found = record.get("outcome")
    return str(found) if found else ("recovered" if record.get("op") == "recover" else "")


def _rollback_reason(record: Mapping[str, Any]) -> str:
    """A locally marked version's record (``slots.BadVersion``) in one line."""
    times = record.get("rollbacks")
    count = f"rolled back {times} time{'s' if times != 1 else ''}" if isinstance(times, int) else "rolled back"
    at = f" (last {record['at']})" if record.get("at") else ""
    return f"{count} on this machine{at}: {record.get('reason') or 'no reason recorded'}"


def _parse_iso(text: Any) -> datetime | None:
    """A signed/recorded UTC time (``formats.rollout``'s form), or None."""
    if isinstance(text, str):
        with contextlib.suppress(ValueError):  # ScheduleError is a ValueError
            return parse_time(text)
    return None


def _iso_in(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def _package_version() -> str:
    try:
        return importlib_metadata.version("pinnacle-updates")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["AgentError", "AgentService", "Job", "Progress", "configure_logging", "error_for"]
