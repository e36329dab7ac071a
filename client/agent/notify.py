"""Notifications of update outcomes: a webhook POST (JSON) and, optionally, an e-mail over SMTP.

What is sent (``Notification.payload``)::

    {"event": "success" | "failure" | "rollback", "versions": {"from": "1.0.0", "to": "1.1.0"},
     "outcome": "committed" | "failed" | "rolled_back", "reason": "...", "client_id": "...",
     "group": null, "ts": "2026-11-26T22:00:00Z"}

Which outcomes notify is the config's ``notify_on``; where to is ``webhook_url`` and the
``smtp_*`` keys (the SMTP password only from ``PINNACLE_SMTP_PASSWORD``: config.toml is
world-readable). ``group`` is the machine's A/B test group for the release it moved to
(``test``/``control`` from ``DIR/fleet.json``; null when that release has no A/B test).

The agent (``serve``) and the CLI (``install``, ``rollback``) both report their outcomes
(:func:`outcome`, :func:`notification`); the CLI then waits a bounded time for delivery
(:meth:`Notifier.flush`) before it exits.

Delivery never blocks or fails an update: ``Notifier.notify`` only queues; one background thread
delivers, retrying each channel ``webhook_retries`` times with exponential backoff (1 s, 2 s, 4 s,
... capped at 60 s; a 4xx other than 408/429 is final). Outcomes are logged and counted
(``Notifier.stats``) so a dead receiver is visible on the dashboard instead of silent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pinnacle_updates.client import (
    AutoUpdater,
    BusyError,
    ClientConfig,
    ConfigError,
    HealthCheckError,
    InstallRefused,
    UpdateError,
)
from pinnacle_updates.formats.redact import redact_text
from pinnacle_updates.formats.rollout import format_time

log = logging.getLogger("pinnacle.agent.notify")

EVENTS = ("success", "failure", "rollback")
MAX_BACKOFF = 60.0



def now() -> str:
    """UTC now as the history and state files stamp it (the rollout format's time)."""
    return format_time(datetime.now(UTC))

@dataclass(frozen=True)
class Notification:
    """One update outcome to report."""

    event: str
    from_version: str | None
    to_version: str | None
    outcome: str
    reason: str
    client_id: str
    group: str | None = None
    ts: str = field(default_factory=now)

    def payload(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "versions": {"from": self.from_version, "to": self.to_version},
            "outcome": self.outcome,
            "reason": self.reason,
            "client_id": self.client_id,
            "group": self.group,
            "ts": self.ts,
        }

    def subject(self) -> str:
        return (
            f"[pinnacle-update] {self.event}: {self.from_version or 'nothing'} -> {self.to_version or 'nothing'} "
            f"on {self.client_id[:12]}"
        )


Outcome = tuple[str, str | None, str | None, str, str]
"""(event, from version, to version, outcome, reason) of one finished update."""


def outcome(previous: str | None, version: str | None, result_outcome: str | None = None, reason: str = "",
            error: UpdateError | None = None) -> Outcome | None:
    """What an install reports: ``error`` (a failed health check rolled it back, or it failed), or its
    result's outcome (``committed``; ``rolled_back``, leaving a yanked release); None for nothing
    installed (up to date), and for a request refused or never started (policy, config, busy lock)."""
    if isinstance(error, (InstallRefused, ConfigError, BusyError)):
        return None
    if error is not None:
        event, outcome_name = ("rollback", "rolled_back") if isinstance(error, HealthCheckError) else ("failure",
                                                                                                     "failed")
        return event, previous, version, outcome_name, str(error)
    if result_outcome == "rolled_back":
        return "rollback", previous, version, "rolled_back", reason
    if result_outcome == "committed":
        return "success", previous, version, "committed", ""
    return None


def notification(root: Path, what: Outcome, client_id: str) -> Notification:
    """``what`` as a notification from the install directory ``root``, with the machine's A/B group
    for the release it moved to (from ``DIR/fleet.json``), if that release has an A/B test."""
    event, from_v, to_v, outcome_name, reason = what
    groups = AutoUpdater(root).ab_groups()
    return Notification(event, from_v, to_v, outcome_name, reason, client_id, groups.get(to_v or ""))


CLI_WAIT = 10.0
"""Seconds a CLI command waits for its notifications before it exits (the agent keeps retrying as
long as it runs; a one-shot command cannot)."""


def report(root: Path, cfg: ClientConfig, what: Outcome | None, wait: float = CLI_WAIT) -> str | None:
    """Send the notifications ``what`` asks for by ``cfg`` from a short-lived process and wait up to
    ``wait`` seconds for them: None when they were delivered or none is configured, else a one-line
    warning for the caller to print (the update itself stands either way)."""
    if what is None:
        return None
    try:
        settings = NotifySettings.from_config(cfg)
        client_id = cfg.text("client_id")
    except Exception as exc:  # a broken config must not turn a finished update into an error
        return f"notification not sent: cannot read the settings: {exc}"
    if not settings.wants(what[0]):
        return None
    notifier = Notifier(lambda: settings)
    try:
        notifier.notify(notification(root, what, client_id))
        if not notifier.flush(wait):
            return f"the {what[0]} notification was not delivered within {wait:.0f} s (given up)"
        stats = notifier.stats()
        return f"the {what[0]} notification failed: {stats['last_error']}" if stats["failed"] else None
    finally:
        notifier.close(0)


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go; read from the config at each notification (it may change)."""

    notify_on: frozenset[str] = frozenset()
    webhook_url: str = ""
    retries: int = 1
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_to: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: ClientConfig) -> NotifySettings:
        return cls(
            notify_on=frozenset(cfg.names("notify_on")),
            webhook_url=cfg.text("webhook_url"),
            retries=cfg.integer("webhook_retries"),
            smtp_host=cfg.text("smtp_host"),
            smtp_port=cfg.integer("smtp_port"),
            smtp_starttls=cfg.flag("smtp_starttls"),
            smtp_user=cfg.text("smtp_user"),
            smtp_password=os.environ.get("PINNACLE_SMTP_PASSWORD", ""),
            smtp_from=cfg.text("smtp_from") or f"pinnacle-update@{_hostname()}",
            smtp_to=tuple(cfg.names("smtp_to")),
        )

    @property
    def email(self) -> bool:
        return bool(self.smtp_host and self.smtp_to)

    def wants(self, event: str) -> bool:
        return event in self.notify_on and bool(self.webhook_url or self.email)


class _PermanentFailure(Exception):
    """Retrying cannot help (e.g. the receiver answered 404)."""


class Notifier:
    """Queues notifications and delivers them from one daemon thread (see the module doc)."""

    def __init__(
        self,
        settings: Callable[[], NotifySettings],
        *,
        backoff: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self._settings = settings
        self._backoff = backoff
        self._timeout = timeout
        self._queue: queue.Queue[tuple[Notification, NotifySettings] | None] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0  # queued and not yet delivered or given up
        self._stats: dict[str, Any] = {
            "queued": 0,
            "delivered": 0,
            "failed": 0,
            "attempts": 0,
            "last_error": None,
            "last_delivered": None,
        }
        self._thread = threading.Thread(target=self._run, name="pinnacle-notify", daemon=True)
        self._thread.start()

    def notify(self, n: Notification) -> bool:
        """Queue ``n`` if the settings want its event; never raises, never blocks on the network."""
        try:
            settings = self._settings()
        except Exception as exc:  # a broken config must not break the update that is reporting
            log.warning("notification of %s not sent: cannot read the settings: %s", n.event, exc)
            return False
        if not settings.wants(n.event):
            return False
        with self._lock:
            self._stats["queued"] += 1
            self._unfinished += 1
        self._queue.put((n, settings))
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued notification was delivered or given up
        (True), as a short-lived process must before it exits."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._stats, "pending": self._queue.qsize()}

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the notification being delivered (queued ones are dropped and logged)."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stop.is_set():
                if item is not None:
                    log.warning("notifier stopped: %s notification dropped", item[0].event)
                return
            n, settings = item
            try:
                if settings.webhook_url:
                    self._deliver("webhook", settings.retries, functools.partial(self._post, n, settings))
                if settings.email:
                    self._deliver("e-mail", settings.retries, functools.partial(self._mail, n, settings))
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()

    def _deliver(self, channel: str, retries: int, send: Callable[[], None]) -> None:
        error = ""
        for attempt in range(1, max(1, retries) + 1):
            with self._lock:
                self._stats["attempts"] += 1
            try:
                send()
            except _PermanentFailure as exc:
                error = str(exc)
                break
            except Exception as exc:  # network, SMTP and OS errors alike: retry
                error = redact_text(f"{type(exc).__name__}: {exc}")  # shown in the unauthenticated status
                log.info("%s attempt %d failed: %s", channel, attempt, error)
                if attempt < retries and self._stop.wait(min(self._backoff * 2 ** (attempt - 1), MAX_BACKOFF)):
                    break
            else:
                with self._lock:
                    self._stats["delivered"] += 1
                    self._stats["last_delivered"] = now()
                log.info("%s notification delivered", channel)
                return
        log.warning("%s notification failed: %s", channel, error)  # logged before the status shows it
        with self._lock:
            self._stats["failed"] += 1
            self._stats["last_error"] = f"{channel}: {error}"

    def _post(self, n: Notification, s: NotifySettings) -> None:
        body = json.dumps(n.payload(), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "pinnacle-update-agent"}
        with httpx.Client(timeout=self._timeout, trust_env=False, follow_redirects=False) as client:
            response = client.post(s.webhook_url, content=body, headers=headers)
        code = response.status_code
        if 200 <= code < 300:
            return
        if 400 <= code < 500 and code not in (408, 429):
            raise _PermanentFailure(f"the webhook answered {code}")  # its URL may be the credential
        raise RuntimeError(f"the webhook answered {code}")

    def _mail(self, n: Notification, s: NotifySettings) -> None:
        import smtplib  # here: the CLI imports this module on every install, and most never send mail
        from email.message import EmailMessage

        msg = EmailMessage()
        msg["Subject"] = n.subject()
        msg["From"] = s.smtp_from
        msg["To"] = ", ".join(s.smtp_to)
        p = n.payload()
        lines = [
            f"event:    {p['event']}",
            f"versions: {p['versions']['from'] or 'nothing'} -> {p['versions']['to'] or 'nothing'}",
            f"outcome:  {p['outcome']}",
            f"reason:   {p['reason'] or '-'}",
            f"client:   {p['client_id']}",
            f"group:    {p['group'] or 'n/a'}",
            f"time:     {p['ts']}",
            "",
            json.dumps(p, sort_keys=True),
        ]
        msg.set_content("\n".join(lines) + "\n")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self._timeout) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(msg)


def _hostname() -> str:
    with contextlib.suppress(OSError):
        return os.uname().nodename or "localhost"
    return "localhost"
