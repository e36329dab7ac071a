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
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pinnacle_updates.client import (
    AutoUpdater,
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
from pinnacle_updates.client.agent import analytics
from pinnacle_updates.client.agent.notify import Notifier, NotifySettings, Outcome, notification, now, outcome
from pinnacle_updates.formats.index import CHANNELS, FormatError, Release, parse_version

log = logging.getLogger("pinnacle.agent")

MANUAL_ROLLBACK_REASON = f"{analytics.MANUAL_ROLLBACK_PREFIX} via the agent API"
LOG_FILE = Path("logs") / "auto_updater.log"

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


class AgentError(Exception):
    """An API-level refusal: HTTP ``status``, a stable machine ``code`` and a one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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
        self._loop_info: dict[str, Any] = {"last_round": None, "last_result": None, "next_round": None}
        self._started = time.monotonic()
        self._started_at = now()
        self._thread: threading.Thread | None = None
        self.notifier = Notifier(lambda: NotifySettings.from_config(self.updater.settings()), backoff=notify_backoff)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous run left half done, then start the continuous update loop (a
        daemon thread). Called before the server answers, so no request races the recovery."""
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="pinnacle-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.notifier.close(timeout=2.0)

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                cfg = self.updater.settings()
                interval = float(cfg.integer("check_interval"))
                enabled = cfg.flag("enabled")
            except UpdateError as exc:
                log.error("update loop: %s", exc)
                interval, enabled = 60.0, False
            # The first round comes soon after start, jittered over a tenth of the interval.
            delay = self._rng.uniform(0, min(interval, 600) / 10) if first else jittered_interval(interval, self._rng)
            first = False
            with self._state_lock:
                self._loop_info["next_round"] = _iso_in(delay)
            if self._wake.wait(delay):
                self._wake.clear()
            if self._stop.is_set():
                return
            if enabled:
                self.run_round()
            self._record_health()

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
        """This install's check (recorded in history) plus the channel's releases for the dashboard."""
        result = self.updater.check()
        releases = self.updater.releases()
        with self._state_lock:
            self._releases = releases
            self._available = {**result.to_dict(), "checked": now()}
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
        out["releases"] = self._release_list(current_version or installed)
        return out

    def _release_list(self, current: str | None) -> list[dict[str, Any]]:
        with self._state_lock:
            releases = list(self._releases)
        cur = parse_version(current) if current else None
        return [
            {
                "version": r.version,
                "type": r.type.value,
                "notes": r.notes,
                "published": r.published,
                "download_bytes": r.full.length + r.manifest.length,
                "newer": cur is None or r.parsed_version > cur,
                "installed": cur is not None and r.parsed_version == cur,
            }
            for r in reversed(releases)
        ]

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
            self.progress.finish(job, "failed", error=f"internal error: {type(exc).__name__}: {exc}")
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
    def rollback(self, *, force: bool = False) -> dict[str, Any]:
        if not self._op.acquire(blocking=False):
            raise AgentError(409, "busy", "an install or rollback is already running")
        try:
            job = self.progress.begin(Job("rollback", None, None))
            try:
                result = self.updater.rollback(force=force, reason=MANUAL_ROLLBACK_REASON)
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
        try:
            installed: dict[str, Any] = self.updater.status()
        except UpdateError as exc:
            installed = {"version": None, "error": str(exc)}
        with self._state_lock:
            check = dict(self._available) if self._available else None
            health = dict(self._health) if self._health else None
            loop = dict(self._loop_info)
        releases = self._release_list(installed.get("version"))
        newer = [r for r in releases if r["newer"]]
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
            "available": {"last_check": check, "releases": newer, "latest": newer[0] if newer else None},
            "job": self.progress.snapshot(),
            "busy": self._op.locked(),
            "health": health,
            # Fleet features (staged rollouts, A/B groups) fill these in; until then they are unknown.
            "rollout": {"position": None, "group": None},
            "loop": loop,
            "settings": settings,
            "notifications": self.notifier.stats(),
        }

    def history(self, limit: int = 100, op: str | None = None) -> dict[str, Any]:
        records = self.updater.history()
        if op:
            records = [r for r in records if r.get("op") == op]
        newest = list(reversed(records))
        return {"total": len(records), "records": newest[:limit]}

    def analytics(self) -> dict[str, Any]:
        return analytics.compute(self.updater.history()).to_dict()

    def backups(self) -> dict[str, Any]:
        """What rollback can reach: the other slot, and cached release artifacts, within max_rollback_days."""
        try:
            days = self.updater.settings().integer("max_rollback_days")
            target = self.updater.rollback_target()
            cached = self.updater.cached_releases()
        except UpdateError as exc:
            raise error_for(exc) from exc
        previous = target.to_dict() if target is not None else None
        return {"max_rollback_days": days, "previous_slot": previous, "cached_releases": cached}

    def channels(self) -> dict[str, Any]:
        try:
            current = self.updater.settings().text("channel")
        except UpdateError as exc:
            raise error_for(exc) from exc
        names = list(CHANNELS) + ([current] if current not in CHANNELS else [])
        return {"current": current, "channels": [{"name": n, "current": n == current} for n in names]}

    def update_config(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate every change with ``client.config`` and write them at once, or refuse them all."""
        if not changes:
            raise AgentError(422, "invalid_config", "no settings given")
        try:
            cfg = self.updater.configure(changes)
        except ConfigError as exc:
            raise AgentError(422, "invalid_config", str(exc)) from None
        log.info("config changed: %s", ", ".join(sorted(changes)))
        self.wake()  # the loop picks up a new interval or channel at once
        return {"changed": sorted(changes), "config": {k: cfg[k] for k in changes}}

    def health(self) -> dict[str, Any]:
        with self._state_lock:
            app = dict(self._health) if self._health else None
            loop = dict(self._loop_info)
        return {
            "status": "ok" if app is None or app.get("healthy") else "unhealthy",
            "agent": {
                "version": _package_version(),
                "pid": os.getpid(),
                "started": self._started_at,
                "uptime_seconds": round(time.monotonic() - self._started, 1),
                "loop_alive": self._thread is not None and self._thread.is_alive(),
            },
            "app": app,
            "loop": loop,
        }


# ----- logging ----------------------------------------------------------------------------------
class RedactFilter(logging.Filter):
    """Replaces the current ``secret()`` in every record (defence in depth: the token is never logged on purpose)."""

    def __init__(self, secret: Callable[[], str]) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        secret = self.secret()
        if secret:
            message = record.getMessage()
            if secret in message:
                record.msg = message.replace(secret, "[redacted]")
                record.args = None
        return True


def configure_logging(install_dir: Path, *, debug: bool, secret: Callable[[], str]) -> Path:
    """``DIR/logs/auto_updater.log`` rotated at ``max_log_bytes`` (``log_backups`` kept), and
    warnings on stderr; ``debug`` logs detail. Returns the log path."""
    cfg = AutoUpdater(install_dir).settings()
    path = Path(install_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=cfg.integer("max_log_bytes"), backupCount=cfg.integer("log_backups"), encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if debug else logging.WARNING)
    console.setFormatter(logging.Formatter("pinnacle-update serve: %(levelname)s %(message)s"))
    redact = RedactFilter(secret)
    for h in (handler, console):
        h.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler, console]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "urllib3", "tuf", "securesystemslib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    return path


# ----- helpers ----------------------------------------------------------------------------------
def _iso_in(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def _package_version() -> str:
    try:
        return importlib_metadata.version("pinnacle-updates")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["AgentError", "AgentService", "Job", "Progress", "configure_logging", "error_for"]
