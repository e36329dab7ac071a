"""Hooks and health checks: the commands around a swap and the judgement "is the new version healthy".

Every hook and health command runs through ``sh -c`` with the slot being activated as working
directory and ``PINNACLE_VERSION``, ``PINNACLE_SLOT``, ``PINNACLE_INSTALL_DIR`` (plus
``PINNACLE_PREVIOUS_VERSION`` / ``PINNACLE_PREVIOUS_SLOT`` when there is one) in its environment.
Output goes to ``DIR/hooks.log``, never to a pipe: a ``start_command`` that leaves a daemon
running in the background would otherwise hold the pipe open and hang the update. A command that
exceeds its timeout is killed with its whole process group and counts as failed.

Hooks may run more than once for one update (recovery resumes an interrupted trial from the
swap), so they must be idempotent: ``stop`` of a stopped service and a migration already applied
must succeed.

Nothing here raises for a failing command: results are data, and the installer decides whether a
failure aborts (before the swap) or rolls back (after it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from tuf.api.exceptions import DownloadError

from pinnacle_updates.client.transport import verify_context
from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.redact import redact_text

HIDDEN_FROM_HOOKS = frozenset({"PINNACLE_SMTP_PASSWORD"})


@dataclass(frozen=True)
class HookContext:
    """Which slot and version a command acts for."""

    install_dir: Path
    slot: str
    slot_dir: Path
    version: str
    previous_version: str | None = None
    previous_slot: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        # The agent's secrets stay with the agent: a hook that prints its environment must not leak them.
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN_FROM_HOOKS}
        env.update(
            PINNACLE_VERSION=self.version,
            PINNACLE_SLOT=self.slot,
            PINNACLE_INSTALL_DIR=str(self.install_dir),
        )
        if self.previous_version is not None:
            env["PINNACLE_PREVIOUS_VERSION"] = self.previous_version
        if self.previous_slot is not None:
            env["PINNACLE_PREVIOUS_SLOT"] = self.previous_slot
        env.update(self.extra_env)
        return env


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command. ``ok`` also for an empty (unconfigured) command."""

    name: str
    command: str
    returncode: int | None
    timed_out: bool
    duration: float
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line for an error message."""
        if self.timed_out:
            what = f"timed out after {self.duration:.1f}s"
        elif self.returncode is not None and self.returncode < 0:
            what = f"killed by signal {-self.returncode}"
        else:
            what = f"exited {self.returncode}"
        tail = self.output_tail.strip().splitlines()[-1:] if self.output_tail.strip() else []
        said = f": {_one_line(tail[0])[:200]}" if tail else ""
        return f"{self.name} `{_one_line(self.command)[:200]}` {what}{said}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "duration": round(self.duration, 3),
        }


def _one_line(text: str) -> str:
    """``text`` for a one-line message: whitespace runs collapsed, other control characters escaped
    (a multi-line command or a NUL must not break the line, nor reach a terminal raw)."""
    text = redact_text(" ".join(text.split()))  # a command or its output may name a URL with credentials
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def run_command(name: str, command: str, ctx: HookContext, timeout: float, log: Path | None = None) -> CommandResult:
    """Run ``command`` for ``ctx``; never raises for the command's own failure."""
    if not command.strip():
        return CommandResult(name, command, 0, False, 0.0)
    start = time.monotonic()
    log_path = log or (ctx.install_dir / "hooks.log")
    offset = 0
    out = _open_log(log_path)
    with out:
        with contextlib.suppress(OSError):
            offset = out.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            out.write(f"--- {stamp} {name} v{ctx.version} slot {ctx.slot}: {_one_line(command)}\n".encode())
            out.flush()
            offset = out.tell()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=ctx.slot_dir,
                env=ctx.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:  # ValueError: a NUL in the command
            return CommandResult(name, command, 127, False, time.monotonic() - start, f"cannot run: {exc}")
        timed_out = False
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        tail = _tail(out, offset)
    return CommandResult(name, command, code, timed_out, time.monotonic() - start, tail)


_LOG_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT


def _open_log(path: Path) -> IO[bytes]:
    """``hooks.log`` for appending, never through a link planted at its path (that would append
    command output to a file outside the install directory): a symlink there is removed as the
    entry itself and the log started anew; a FIFO or other non-regular file there is left alone
    and the output dropped (``/dev/null``), so a hook never blocks or fails on its log."""
    for _attempt in range(2):
        try:
            return os.fdopen(fsutil.open_regular(path, _LOG_FLAGS), "r+b")
        except fsutil.NotRegularFile:
            if not os.path.islink(path):
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
        except OSError:
            break
    return open(os.devnull, "r+b")  # handed to the child, closed by the caller


def _tail(f: IO[bytes], offset: int, limit: int = 2000) -> str:
    """What the command wrote after ``offset`` (its last ``limit`` bytes), read from the open log."""
    try:
        end = os.fstat(f.fileno()).st_size
        start = max(offset, end - limit)
        return os.pread(f.fileno(), max(0, end - start), start).decode("utf-8", "replace")
    except OSError:
        return ""


# ----- health --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthSettings:
    command: str = ""
    url: str = ""
    timeout: float = 10.0
    retries: int = 3
    interval: float = 1.0
    grace_period: float = 0.0
    max_latency_ms: int = 0

    @property
    def configured(self) -> bool:
        return bool(self.command.strip() or self.url.strip())

    @classmethod
    def from_config(cls, cfg: Any) -> HealthSettings:
        """From a ``client.config.ClientConfig``."""
        return cls(
            command=cfg.text("health_command"),
            url=cfg.text("health_url"),
            timeout=cfg.number("health_timeout"),
            retries=cfg.integer("health_retries"),
            interval=cfg.number("health_interval"),
            grace_period=cfg.number("health_grace_period"),
            max_latency_ms=cfg.integer("max_latency_ms"),
        )


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    reason: str
    attempts: int
    duration: float
    latency_ms: float | None = None
    baseline_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "attempts": self.attempts,
            "duration": round(self.duration, 3),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "baseline_ms": None if self.baseline_ms is None else round(self.baseline_ms, 1),
        }


def probe_url(url: str, timeout: float) -> tuple[bool, str, float]:
    """One GET: (2xx?, reason, latency in ms). The reason reaches status, history and notifications:
    credentials in the URL (here or in an httpx message) are redacted."""
    healthy, reason, ms = _probe(url, timeout)
    return healthy, redact_text(reason), ms


def _probe(url: str, timeout: float) -> tuple[bool, str, float]:
    start = time.monotonic()
    try:  # no redirect followed and no proxy: a plain http probe loads no CA bundle (verify_context)
        verify = verify_context(url)
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
            response = client.get(url)
    except DownloadError as exc:  # the CA bundle (SSL_CERT_FILE/_DIR) cannot be loaded
        return False, f"{url}: {exc}", (time.monotonic() - start) * 1000
    except httpx.TimeoutException:
        return False, f"{url} timed out after {timeout:g}s", (time.monotonic() - start) * 1000
    except httpx.HTTPError as exc:
        return False, f"{url} unreachable ({type(exc).__name__}: {exc})", (time.monotonic() - start) * 1000
    except (httpx.InvalidURL, ValueError, OverflowError) as exc:  # a URL or timeout the config check missed
        return False, f"{url} cannot be probed ({type(exc).__name__}: {exc})", (time.monotonic() - start) * 1000
    ms = (time.monotonic() - start) * 1000
    if 200 <= response.status_code < 300:
        return True, f"{url} answered {response.status_code}", ms
    return False, f"{url} answered HTTP {response.status_code}", ms


def measure_latency(url: str, timeout: float, samples: int = 3) -> float | None:
    """Median latency (ms) of ``samples`` successful GETs of ``url``; ``None`` if it does not answer 2xx."""
    if not url:
        return None
    found = []
    for _ in range(samples):
        ok, _reason, ms = probe_url(url, timeout)
        if not ok:
            return None
        found.append(ms)
    import statistics  # only here: its import (fractions, decimal) is a cost every command would pay

    return statistics.median(found)


def check_health(
    settings: HealthSettings,
    ctx: HookContext,
    baseline_ms: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Path | None = None,
) -> HealthResult:
    """Grace period, then up to ``retries`` attempts ``interval`` apart; each attempt runs the
    health command (exit 0 within ``timeout``) and/or GETs the health URL (2xx within ``timeout``).

    With ``max_latency_ms`` set and a URL configured, a healthy version is then judged on latency:
    the median of three GETs may exceed ``baseline_ms`` (the previous version's median, measured
    before the swap) by at most ``max_latency_ms``; without a baseline the median itself may not
    exceed ``max_latency_ms``.
    """
    start = time.monotonic()
    if not settings.configured:
        return HealthResult(True, "no health check configured", 0, 0.0)
    if settings.grace_period > 0:
        sleep(settings.grace_period)
    reason = ""
    attempts = 0
    for attempt in range(1, settings.retries + 1):
        attempts = attempt
        ok = True
        if settings.command.strip():
            result = run_command("health_command", settings.command, ctx, settings.timeout, log)
            if not result.ok:
                ok, reason = False, result.describe()
        if ok and settings.url.strip():
            ok, reason, _ms = probe_url(settings.url, settings.timeout)
        if ok:
            break
        if attempt < settings.retries and settings.interval > 0:
            sleep(settings.interval)
    else:
        return HealthResult(
            False, f"unhealthy after {attempts} attempt(s): {reason}", attempts, time.monotonic() - start
        )
    latency: float | None = None
    if settings.max_latency_ms > 0 and settings.url.strip():
        latency = measure_latency(settings.url, settings.timeout)
        if latency is None:
            return HealthResult(
                False,
                f"{settings.url} stopped answering while measuring latency",
                attempts,
                time.monotonic() - start,
            )
        limit = (baseline_ms or 0.0) + settings.max_latency_ms
        if latency > limit:
            base = f"{baseline_ms:.0f} ms before" if baseline_ms is not None else "no baseline"
            return HealthResult(
                False,
                f"performance degraded: {settings.url} median {latency:.0f} ms ({base}; "
                f"max_latency_ms {settings.max_latency_ms})",
                attempts,
                time.monotonic() - start,
                latency,
                baseline_ms,
            )
    return HealthResult(True, "healthy", attempts, time.monotonic() - start, latency, baseline_ms)
