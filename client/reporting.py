"""Fleet feedback, the client's side: outcome reports kept in a crash-safe spool and sent to a collector.

After every install attempt (committed; rolled back automatically, with its cause class; failed
before the swap), every manual rollback, a failed check and once a day (a heartbeat), the client
builds one report (``formats.report``: the wire format, no user data, no paths, no host names)
from the history record it has just written, and spools it. A background thread sends the spool
oldest first in batches; a file is deleted only after the collector answered 2xx, and the
collector dedupes by ``report_id``, so a resend after a lost answer lands exactly once.

Where reports go (``destination``): the client's config wins over the channel.

* ``report = "off"``: nothing is built, kept or sent; no request is ever made.
* ``report = "on"``: to ``report_url`` only (unset: nothing is sent, ``status`` says so).
* ``report = "auto"`` (default): to ``report_url`` if set, else to the collector the *signed*
  channel index names (``feedback.collector_url``, noted at each check in ``channel.json``);
  no collector named, no report.

The ingest key: ``report_key_file`` when set, else the channel's (only when reporting to the
channel's own collector: a key is never sent to another server). It is never logged or shown.

Files (``DIR/reports/``, created on the first report)::

    install_id     32 random hex digits (``secrets``), 0644, made once: never the rollout
                   client id, never derived from the hardware
    spool/         one report per file, <20-digit time in ns>-<report_id>.json, written temp +
                   fsync + rename + fsync dir; at most SPOOL_MAX_REPORTS files or SPOOL_MAX_BYTES,
                   the oldest dropped first (counted in state.json's ``dropped``)
    state.json     counters and times: dropped, sent, refused, last_sent, last_error, failures,
                   next_attempt, last_heartbeat, last_check_failure (shown by ``status``)
    channel.json   the channel's signed feedback setting and its releases' update types, as last
                   verified (a cache: reports are built without network)
    metrics.json   the application's metrics not yet reported (``record_metric``): per name the
                   count and sum of the values recorded; the next report about the running version
                   (a heartbeat, a committed install, a failed check) carries each one's mean in
                   ``metrics`` and empties the file. Recorded at most once: a kill between the two
                   loses those values, never reports them twice
    lock           serialises writers of the spool and state.json (never held over the network)

Sending never delays an install and never blocks a caller: ``kick`` starts (at most) one daemon
thread per install directory; at exit a process waits at most ``EXIT_WAIT`` seconds for it (a CLI
command therefore sends right after it printed its result). A failed send backs off
(``BACKOFF_FIRST`` doubling to ``BACKOFF_MAX``, jittered) across runs; the spool waits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import fleet_state
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import ConfigError, RepositoryError, TrustError, UpdateError
from pinnacle_updates.client.transport import (  # the one set of connection and retry rules
    USER_AGENT,
    TransportSettings,
    _client_version,
    _connection_options,
    _retry_after,
)
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.index import ChannelIndex, Feedback, FormatError
from pinnacle_updates.formats.redact import redact_text, redact_url
from pinnacle_updates.formats.report import (
    ALLOWED,
    MAX_AGE,
    MAX_BATCH,
    MAX_METRICS,
    Report,
    check_metrics,
    clean_cause_text,
    encode_batches,
)
from pinnacle_updates.formats.rollout import bucket, format_time

log = logging.getLogger("pinnacle.reports")

__all__ = [
    "Destination",
    "FlushResult",
    "Reports",
    "after_refresh",
    "destination",
    "flush",
    "kick",
    "on_failed_check",
    "on_record",
    "on_unrecorded_failure",
    "record_metric",
    "report_from_record",
    "scrub",
    "summary",
    "wait",
]

DIR_NAME = "reports"
SPOOL_MAX_REPORTS = 1000
SPOOL_MAX_BYTES = 1 << 20
REPORT_FILE_MAX = 64 * 1024
"""Bytes of one spooled report read at most (a real one is under 1 KiB)."""
STATE_MAX = 64 * 1024
HEARTBEAT_INTERVAL = 86400.0
CHECK_FAILURE_INTERVAL = 3600.0
"""At most one failed-check report an hour: an offline agent checking often must not flood its spool."""
LOCAL_MAX_AGE = MAX_AGE - timedelta(days=1)
"""Reports older than this are dropped before sending: the collector refuses what is over MAX_AGE."""
BACKOFF_FIRST = 30.0
BACKOFF_MAX = 3600.0
BACKGROUND_SECONDS = 30.0
"""Time one background flush may take (retries included)."""
EXIT_WAIT = 3.0
"""Seconds a process waits at exit for a flush in progress (the CLI's bound)."""
RETRY_AFTER_MAX = 60.0
SEND_SETTINGS = TransportSettings(connect_timeout=5.0, read_timeout=15.0, retries=2, backoff_initial=0.5,
                                  backoff_max=4.0)
_SPOOL_NAME = re.compile(r"^[0-9]{20}-[0-9a-f]{32}\.json$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
CLIENT_VERSION = _client_version()[:64]


# ----- where reports go ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    """The collector reports go to: base ``url`` (POST ``url/v1/reports``), ingest ``key`` ("" none)
    and where the URL came from (``config`` or ``channel``)."""

    url: str
    key: str = field(repr=False)
    source: str

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/v1/reports"

    def shown(self) -> str:
        return redact_url(self.url)


def destination(root: Path, cfg: ClientConfig) -> Destination | None:
    """Where this install's reports go now (None: reporting is off or no collector is named).
    ``ConfigError`` when ``report_key_file`` cannot be read."""
    mode = cfg.text("report")
    if mode == "off":
        return None
    key_file = cfg.text("report_key_file")
    key = _read_key(Path(root), key_file) if key_file else ""
    if cfg.text("report_url"):
        return Destination(cfg.text("report_url"), key, "config")
    if mode == "on":  # without report_url: never guess a server (status names the problem)
        return None
    setting = _channel_feedback(Reports(root).channel_cache(), cfg.text("channel"))
    if setting is None:
        return None
    return Destination(setting.collector_url, key or setting.ingest_key, "channel")


def _read_key(root: Path, name: str) -> str:
    path = Path(name) if os.path.isabs(name) else root / name
    try:
        text = fsutil.read_regular(path, 4096, follow=True).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read report_key_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text or any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise ConfigError(f"report_key_file {path} must hold one ingest key of visible ASCII characters")
    return text


def _channel_feedback(cache: Mapping[str, Any], channel: str) -> Feedback | None:
    if cache.get("channel") != channel or not isinstance(cache.get("feedback"), dict):
        return None
    try:
        return Feedback.from_dict(cache["feedback"])
    except FormatError:
        return None


# ----- the reports directory ------------------------------------------------------------------------
class Reports:
    """``DIR/reports/``: the install id, the spool, the counters and the channel cache."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / DIR_NAME
        self.spool = self.dir / "spool"
        self.state_file = self.dir / "state.json"
        self.channel_file = self.dir / "channel.json"
        self.metrics_file = self.dir / "metrics.json"
        self.id_file = self.dir / "install_id"
        self.lock_file = self.dir / "lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``reports/lock`` (briefly: never over the network), creating the directories."""
        self.spool.mkdir(parents=True, exist_ok=True)
        with fsutil.exclusive_lock(self.lock_file, wait=True, record_pid=False):
            yield

    # -- small JSON files ---------------------------------------------------------------------------
    def _read_json(self, path: Path) -> dict[str, Any]:
        with contextlib.suppress(OSError, FormatError):
            data = boundedjson.load_object(fsutil.read_regular(path, STATE_MAX), path.name, max_bytes=STATE_MAX)
            return dict(data)
        return {}

    def state(self) -> dict[str, Any]:
        """The counters and times ({} before the first report; a damaged file reads as {})."""
        return self._read_json(self.state_file)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` (callables get the old value) to state.json; the caller holds the lock."""
        state = self.state()
        for key, value in changes.items():
            state[key] = value(state.get(key)) if callable(value) else value
        fsutil.atomic_write(self.state_file, json.dumps(state, sort_keys=True, indent=1).encode())
        return state

    def channel_cache(self) -> dict[str, Any]:
        return self._read_json(self.channel_file)

    # -- the application's metrics ----------------------------------------------------------------------
    def pending_metrics(self) -> dict[str, tuple[int, float]]:
        """name -> (count, sum) recorded since the last report that carried them; damaged entries dropped."""
        out = {}
        for name, value in self._read_json(self.metrics_file).items():
            if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and value[0] > 0
                    and isinstance(value[1], int | float) and not isinstance(value[1], bool)):
                out[name] = (value[0], float(value[1]))
        return out

    def take_metrics(self) -> dict[str, float]:
        """The pending metrics' means, valid for ``metrics`` (others dropped), and none left pending."""
        with self.locked():
            pending = self.pending_metrics()
            if not pending:
                return {}
            fsutil.atomic_write(self.metrics_file, b"{}")
        means = {}
        for name, (count, total) in sorted(pending.items())[:MAX_METRICS]:
            with contextlib.suppress(FormatError):
                means.update(check_metrics({name: total / count}))
        return means

    # -- the install id ---------------------------------------------------------------------------------
    def install_id(self) -> str:
        """The random id of this install directory, made once (``os.link``: two racing processes
        agree on one). A damaged file is replaced."""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = fsutil.read_regular(self.id_file, 256).decode().strip()
            if _HEX32.match(text):
                return text
        self.dir.mkdir(parents=True, exist_ok=True)
        new = secrets.token_hex(16)
        tmp = self.dir / f"{fsutil.TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-install_id"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, f"{new}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # not secret, and the umask must not decide
        try:
            try:
                os.link(tmp, self.id_file)
            except FileExistsError:  # another process made one first, or the old one was damaged
                existing = fsutil.read_regular(self.id_file, 256).decode(errors="replace").strip()
                if _HEX32.match(existing):
                    return existing
                os.replace(tmp, self.id_file)
            fsutil.fsync_dir(self.dir)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return new

    # -- the spool ----------------------------------------------------------------------------------------
    def add(self, report: Report) -> int:
        """Spool ``report`` crash-safely, then drop the oldest beyond the bounds; how many were dropped."""
        data = json.dumps(report.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        with self.locked():
            fsutil.remove_stale_temps(self.spool)  # writers hold the lock: a temp seen here was left by a kill
            fsutil.atomic_write(self.spool / f"{time.time_ns():020d}-{report.report_id}.json", data)
            files = self._files()
            total = sum(size for _, size in files)
            dropped = 0
            while files and (len(files) > SPOOL_MAX_REPORTS or total > SPOOL_MAX_BYTES):
                path, size = files.pop(0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                total -= size
                dropped += 1
            if dropped:
                self.update_state(dropped=lambda n: (n or 0) + dropped)
        return dropped

    def _files(self) -> list[tuple[Path, int]]:
        """Spooled report files, oldest first, with their sizes."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.spool):
                if _SPOOL_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        out.append((Path(entry.path), entry.stat(follow_symlinks=False).st_size))
        return sorted(out)

    def count(self) -> int:
        return len(self._files())

    def pending(self, now: datetime | None = None) -> list[tuple[Path, Report]]:
        """Spooled reports, oldest first. A damaged file, or a report too old for the collector,
        is removed and counted as dropped."""
        cutoff = (now or datetime.now(UTC)) - LOCAL_MAX_AGE
        out: list[tuple[Path, Report]] = []
        bad: list[Path] = []
        for path, _ in self._files():
            try:
                report = Report.from_dict(boundedjson.load_object(
                    fsutil.read_regular(path, REPORT_FILE_MAX), "spooled report", max_bytes=REPORT_FILE_MAX))
            except FileNotFoundError:
                continue  # sent and removed by another sender meanwhile
            except (OSError, FormatError):
                bad.append(path)
                continue
            if report.at < cutoff:
                bad.append(path)
            else:
                out.append((path, report))
        if bad:
            with self.locked():
                removed = sum(_unlink(p) for p in bad)
                self.update_state(dropped=lambda n: (n or 0) + removed)
        return out


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return 1


# ----- building reports ---------------------------------------------------------------------------------
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>]*")
_PATH_IN_TEXT = re.compile(r"(?<![\w.~-])(?:~|\.{1,2})?/[^\s'\"`,;:()<>]+")
_HOST_PORT_IN_TEXT = re.compile(  # a.b.c names, name:port and IPv4; not after "/" (a release's own file names)
    r"(?<![/\w.-])(?:(?:[A-Za-z0-9-]+\.){2,}[A-Za-z]{2,63}(?::\d{1,5})?|[A-Za-z0-9.-]+:\d{1,5}"
    r"|\d{1,3}(?:\.\d{1,3}){3})\b")


def scrub(text: str) -> str:
    """``cause_text`` without what could name a person or a machine: URLs (credentials and host),
    file paths (user names live in them) and host names or addresses become ``<url>``, ``<path>``,
    ``<host>``; then ``clean_cause_text`` (redacted, one line, 200 characters)."""
    text = _URL_IN_TEXT.sub("<url>", redact_text(text))
    text = _PATH_IN_TEXT.sub("<path>", text)
    return clean_cause_text(_HOST_PORT_IN_TEXT.sub("<host>", text))


@dataclass(frozen=True)
class Context:
    """What every report of one install directory carries besides its event."""

    install_id: str
    channel: str
    platform: str
    client_id: str
    groups: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, root: Path, cfg: ClientConfig, reports: Reports) -> Context:
        groups = fleet_state.load(root).get("groups")
        cache = reports.channel_cache()
        types = cache.get("types") if cache.get("channel") == cfg.text("channel") else None
        return cls(reports.install_id(), cfg.text("channel"), cfg.text("platform"), cfg.text("client_id"),
                   {str(k): str(v) for k, v in groups.items()} if isinstance(groups, dict) else {},
                   {str(k): str(v) for k, v in types.items()} if isinstance(types, dict) else {})

    def report(self, kind: str, outcome: str, *, cause: str = "", cause_text: str = "", from_version: str = "",
               to_version: str = "", current_version: str = "", durations: Mapping[str, float] | None = None,
               bytes_downloaded: int = 0, bytes_saved: int = 0, at: datetime | None = None) -> Report:
        about = to_version or current_version  # the release the bucket, group and type describe
        return Report(
            report_id=secrets.token_hex(16),
            install_id=self.install_id,
            at=at or datetime.now(UTC),
            kind=kind,
            outcome=outcome,
            cause=cause,
            cause_text=scrub(cause_text),
            channel=self.channel,
            platform=self.platform,
            from_version=from_version,
            to_version=to_version,
            update_type=self.types.get(about, "") if about else "",
            bucket=min(9999, int(bucket(self.client_id, self.channel, about) * 100)) if about else -1,
            ab_group=self.groups.get(about, "")[:64] if about else "",
            durations=dict(durations or {}),
            bytes_downloaded=bytes_downloaded,
            bytes_saved=bytes_saved,
            client_version=CLIENT_VERSION,
            current_version=current_version,
        )


def classify_failure(text: str) -> str:
    """The cause class of a failure before the swap from its message, when the record names none:
    ``space``, ``verify``, ``download`` or, when unsure, ``other``."""
    t = text.lower()
    if "free space" in t or "no space left" in t or "disk quota" in t:
        return "space"
    if any(w in t for w in ("does not match", "mismatch", "hash", "sha256", "signature", "verif", "expired",
                            "untrusted", "trust")):
        return "verify"
    if any(w in t for w in ("download", "http", "connect", "timed out", "timeout", "network", "unreachable",
                            "repository")):
        return "download"
    return "other"


def _text(rec: Mapping[str, Any], key: str) -> str:
    value = rec.get(key)
    return value if isinstance(value, str) else ""


def _count(value: Any) -> int:
    return min(max(value, 0), 2**53) if isinstance(value, int) and not isinstance(value, bool) else 0


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 86400:
        return float(value)
    return None


def _cause(rec: Mapping[str, Any], kind: str, outcome: str, fallback: str) -> str:
    """The record's own ``cause`` when the contract allows it for (kind, outcome), else ``fallback``."""
    cause = rec.get("cause")
    return cause if isinstance(cause, str) and cause in ALLOWED[(kind, outcome)] else fallback


def report_from_record(rec: Mapping[str, Any], ctx: Context) -> Report | None:
    """The report of one history record (None: a record that reports nothing, such as a check
    that worked, a verify or a channel switch). Versions, cause, durations and bytes come from the
    record; a record's free text only reaches ``cause_text`` (``scrub``: no URL, path or host; redacted,
    one line, 200 characters)."""
    op, outcome = rec.get("op"), rec.get("outcome")
    if op in ("install", "repair") and outcome == "committed":
        fallback = _text(rec, "fallback_reason")
        health = rec.get("health")
        durations = {"total": _seconds(rec.get("duration")),
                     "download": _seconds(rec.get("download_seconds")), "apply": _seconds(rec.get("apply_seconds")),
                     "health": _seconds(health.get("duration")) if isinstance(health, dict) else None}
        return ctx.report("install", "committed", cause="delta_fallback" if fallback else "", cause_text=fallback,
                          from_version=_text(rec, "from_version"), to_version=_text(rec, "version"),
                          current_version=_text(rec, "version"),
                          durations={k: v for k, v in durations.items() if v is not None},
                          bytes_downloaded=_count(rec.get("bytes_downloaded", rec.get("bytes"))),
                          bytes_saved=_count(rec.get("bytes_saved")))
    if op in ("install", "repair") and outcome == "failed":
        reason = _text(rec, "reason")
        total = _seconds(rec.get("duration"))
        return ctx.report("install", "failed", cause=_cause(rec, "install", "failed", classify_failure(reason)),
                          cause_text=reason, from_version=_text(rec, "from_version"),
                          to_version=_text(rec, "version"), current_version=_text(rec, "from_version"),
                          durations={"total": total} if total is not None else {})
    if op == "rollback" and outcome == "rolled_back":
        reason = _text(rec, "reason")
        if rec.get("cause") == "manual":  # from the running version back to the other slot's
            return ctx.report("rollback", "rolled_back", cause="manual", cause_text=reason,
                              from_version=_text(rec, "from_version"), to_version=_text(rec, "version"),
                              current_version=_text(rec, "version"))
        # automatic, after the swap: the install of ``from_version`` (the version left) failed
        return ctx.report("install", "rolled_back", cause=_cause(rec, "install", "rolled_back", "other"),
                          cause_text=reason, from_version=_text(rec, "version"),
                          to_version=_text(rec, "from_version"), current_version=_text(rec, "version"))
    return None


# ----- the hooks the installer calls (never raise: reporting must not fail an operation) -------------
def _enabled(root: Path) -> tuple[ClientConfig, Destination] | None:
    try:
        cfg = config_mod.load(root)
        dest = destination(root, cfg)
    except UpdateError:
        return None
    return (cfg, dest) if dest is not None else None


def _spool(root: Path, cfg: ClientConfig, build: Any) -> bool:
    """Build (``build(context) -> Report | None``) and spool one report; False when none. A report
    about the version running now also carries the application's pending metrics."""
    reports = Reports(root)
    report = build(Context.of(root, cfg, reports))
    if report is None:
        return False
    if report.current_version and report.to_version in ("", report.current_version):
        metrics = reports.take_metrics()
        if metrics:
            report = replace(report, metrics=metrics)
    reports.add(report)
    return True


def record_metric(root: Path, name: str, value: float) -> bool:
    """Keep one value of an application metric for the next report about the running version
    (``AutoUpdater.record_metric``). False when reporting is off or has nowhere to go (nothing is
    kept then). ``ConfigError`` for a name not like ``^[a-z][a-z0-9_.]{0,47}$``, a value that is not
    a finite number within +-1e15, or a 17th name pending at once."""
    try:
        check_metrics({name: value})
    except FormatError as exc:
        raise ConfigError(f"cannot record metric: {exc}".replace("report field ", "")) from None
    if _enabled(root) is None:
        return False
    reports = Reports(root)
    with reports.locked():
        pending = reports.pending_metrics()
        if name not in pending and len(pending) >= MAX_METRICS:
            raise ConfigError(f"cannot record metric {name!r}: {MAX_METRICS} other metrics are waiting for the next "
                              f"report (at most {MAX_METRICS} per report)")
        count, total = pending.get(name, (0, 0.0))
        pending[name] = (count + 1, total + float(value))
        fsutil.atomic_write(reports.metrics_file, json.dumps({k: list(v) for k, v in pending.items()},
                                                             sort_keys=True).encode())
    return True


def on_record(root: Path, rec: Mapping[str, Any]) -> None:
    """After a history record: spool its report (if it makes one and reporting is on), then send."""
    try:
        enabled = _enabled(root)
        if enabled is not None and _spool(root, enabled[0], lambda ctx: report_from_record(rec, ctx)):
            kick(root)
    except Exception as exc:  # a full disk, a damaged file, a bug: never the install's problem
        log.warning("outcome report not spooled: %s", _one_line(exc))


def on_failed_check(root: Path, exc: BaseException) -> None:
    """A check that could not reach or verify the repository: one report an hour at most."""
    try:
        enabled = _enabled(root)
        if enabled is None:
            return
        cfg = enabled[0]
        reports = Reports(root)
        if _since(reports.state().get("last_check_failure")) < CHECK_FAILURE_INTERVAL:
            return
        cause = "verify" if isinstance(exc, TrustError) else "download" if isinstance(exc, RepositoryError) else "other"
        current = _current_version(root)
        if _spool(root, cfg, lambda ctx: ctx.report("check", "failed", cause=cause, cause_text=str(exc),
                                                    current_version=current)):
            with reports.locked():
                reports.update_state(last_check_failure=format_time(datetime.now(UTC)))
            kick(root)
    except Exception as err:
        log.warning("failed-check report not spooled: %s", _one_line(err))


def on_unrecorded_failure(root: Path, version: str, exc: BaseException) -> None:
    """An install of ``version`` refused by a pre-check (free space, permissions) before anything
    was saved, so before any history record: reported as failed, cause ``space`` or ``other``."""
    try:
        enabled = _enabled(root)
        current = _current_version(root)
        cause = "space" if classify_failure(str(exc)) == "space" else "other"
        if enabled is not None and _spool(root, enabled[0], lambda ctx: ctx.report(
                "install", "failed", cause=cause, cause_text=str(exc), from_version=current, to_version=version,
                current_version=current)):
            kick(root)
    except Exception as err:
        log.warning("outcome report not spooled: %s", _one_line(err))


def after_refresh(root: Path, cfg: ClientConfig, index: ChannelIndex) -> None:
    """After a verified refresh: note the channel's signed feedback setting and its releases'
    update types, spool the daily heartbeat when due, and send what is spooled."""
    try:
        if cfg.text("report") == "off":
            return
        reports = Reports(root)
        platform = cfg.text("platform")
        noted = {"channel": index.channel,
                 "feedback": index.feedback.to_dict() if index.feedback is not None else None,
                 "types": {r.version: r.type.value for r in index.for_platform(platform)}}
        if reports.channel_cache() != noted and (index.feedback is not None or reports.dir.exists()):
            with reports.locked():
                fsutil.atomic_write(reports.channel_file, json.dumps(noted, sort_keys=True).encode())
        enabled = _enabled(root)
        if enabled is None:
            return
        if _since(reports.state().get("last_heartbeat")) >= HEARTBEAT_INTERVAL:
            current = _current_version(root)
            _spool(root, cfg, lambda ctx: ctx.report("heartbeat", "ok", current_version=current))
            with reports.locked():
                reports.update_state(last_heartbeat=format_time(datetime.now(UTC)))
        if reports.count():
            kick(root)
    except Exception as exc:
        log.warning("reports not noted: %s", _one_line(exc))


def _current_version(root: Path) -> str:
    with contextlib.suppress(UpdateError, OSError):
        return sm.load(sm.Layout(root).state).active_version or ""
    return ""


def _parse(stamp: Any) -> datetime | None:
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return None


def _since(stamp: Any) -> float:
    """Seconds since a ``format_time`` stamp (infinite when there is none or it does not parse;
    a stamp in the future counts as long ago, so a clock set back cannot silence reports)."""
    when = _parse(stamp)
    elapsed = (datetime.now(UTC) - when).total_seconds() if when is not None else -1.0
    return elapsed if elapsed >= 0 else float("inf")


def _until(stamp: Any) -> float:
    """Seconds until a ``format_time`` stamp (0 when there is none or it is past)."""
    when = _parse(stamp)
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when is not None else 0.0


def _one_line(exc: BaseException) -> str:
    return redact_text(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]


# ----- sending ---------------------------------------------------------------------------------------------
@dataclass
class FlushResult:
    """What one flush did: reports ``sent`` (accepted + duplicates, deleted from the spool),
    ``refused`` (one report the collector called invalid, dropped), ``left`` in the spool,
    ``requests`` made, and ``error``/``skipped`` saying why it stopped early."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    left: int = 0
    requests: int = 0
    error: str = ""
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Stop(Exception):
    """Sending stops for this flush (the spool stays): the message says why."""


def flush(root: Path, max_seconds: float = BACKGROUND_SECONDS, *, force: bool = False,
          rng: random.Random | None = None) -> FlushResult:
    """Send the spool oldest first within ``max_seconds`` (``force``: even while backing off after
    a failure). Never raises for a network or collector problem: ``FlushResult.error`` says it."""
    root = Path(root)
    deadline = time.monotonic() + max_seconds
    rng = rng or random.Random()
    result = FlushResult()
    try:
        cfg = config_mod.load(root)
        dest = destination(root, cfg)
    except UpdateError as exc:
        result.skipped = str(exc)
        return result
    if dest is None:
        result.skipped = "reporting is off" if cfg.text("report") == "off" else "no collector is named"
        return result
    reports = Reports(root)
    if not force and _until(reports.state().get("next_attempt")) > 0:
        result.skipped = "backing off after a failed send"
        result.left = reports.count()
        return result
    pending = reports.pending()
    try:
        if pending:
            with httpx.Client(timeout=httpx.Timeout(SEND_SETTINGS.read_timeout,
                                                    connect=SEND_SETTINGS.connect_timeout),
                              headers=_headers(dest), follow_redirects=False, **_connection_options()) as http:
                _send_all(http, dest, reports, pending, deadline, rng, result)
    except _Stop as stop:
        result.error = str(stop)
    result.left = reports.count()
    _note(reports, result, rng)
    return result


def _headers(dest: Destination) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if dest.key:
        headers["Authorization"] = f"Bearer {dest.key}"
    return headers


def _send_all(http: httpx.Client, dest: Destination, reports: Reports, pending: Sequence[tuple[Path, Report]],
              deadline: float, rng: random.Random, result: FlushResult) -> None:
    """Send ``pending`` in batches; a batch the collector calls invalid is split until the one bad
    report is found and dropped (one broken report must not hold the spool forever)."""
    queue: list[Sequence[tuple[Path, Report]]] = []
    start = 0
    while start < len(pending):
        for count, _ in encode_batches([r for _, r in pending[start:start + MAX_BATCH]]):
            queue.append(pending[start:start + count])
            start += count
    while queue:
        batch = queue.pop(0)
        body = next(encode_batches([r for _, r in batch]))[1]
        response = _post(http, dest, body, deadline, rng, result)
        status = response.status_code
        if 200 <= status < 300:
            answer = _answer(response)
            with reports.locked():
                for path, _ in batch:
                    _unlink(path)
            result.sent += len(batch)
            result.accepted += answer.get("accepted", 0)
            result.duplicates += answer.get("duplicates", 0)
        elif status in (400, 413, 422) and len(batch) > 1:
            half = len(batch) // 2
            queue[:0] = [batch[:half], batch[half:]]
        elif status in (400, 413, 422):
            with reports.locked():
                _unlink(batch[0][0])
                reports.update_state(refused=lambda n: (n or 0) + 1)
            result.refused += 1
            log.warning("the collector refused a report (HTTP %d: %s); dropped", status, _error_text(response))
        elif status in (401, 403):
            raise _Stop(f"the collector at {dest.shown()} refused the ingest key (HTTP {status})")
        else:
            raise _Stop(f"the collector at {dest.shown()} answered HTTP {status}: {_error_text(response)}")


def _post(http: httpx.Client, dest: Destination, body: bytes, deadline: float, rng: random.Random,
          result: FlushResult) -> httpx.Response:
    """One batch with bounded retries (408/429/5xx and network errors), exponential backoff with
    jitter, ``Retry-After`` honoured; ``_Stop`` when out of attempts or time."""
    attempt = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Stop("out of time; the rest stays spooled")
        why = ""
        delay = SEND_SETTINGS.backoff(attempt, rng)
        try:
            result.requests += 1
            response = http.post(dest.endpoint, content=body, timeout=min(left, SEND_SETTINGS.read_timeout))
        except httpx.HTTPError as exc:
            why = f"cannot reach the collector at {dest.shown()}: {type(exc).__name__}"
        else:
            if response.status_code not in (408, 429, 500, 502, 503, 504):
                return response
            why = f"the collector at {dest.shown()} answered HTTP {response.status_code}"
            after = _retry_after(response.headers.get("Retry-After"))
            if after is not None:
                delay = min(after, RETRY_AFTER_MAX)
        if attempt >= SEND_SETTINGS.retries or time.monotonic() + delay >= deadline:
            raise _Stop(why)
        time.sleep(delay)
        attempt += 1


def _answer(response: httpx.Response) -> dict[str, int]:
    with contextlib.suppress(FormatError):
        data = boundedjson.load_object(response.content, "collector answer", max_bytes=64 * 1024)
        return {k: v for k in ("accepted", "duplicates") if isinstance(v := data.get(k), int)}
    return {}


def _error_text(response: httpx.Response) -> str:
    with contextlib.suppress(FormatError):
        data = boundedjson.load_object(response.content, "collector answer", max_bytes=64 * 1024)
        return clean_cause_text(str(data.get("error", "")))[:200] or "no error text"
    return "no error text"


def _note(reports: Reports, result: FlushResult, rng: random.Random) -> None:
    """Counters after a flush; a failure schedules the next attempt (backoff doubling, jittered)."""
    now = datetime.now(UTC)
    with reports.locked():
        if result.error:
            failures = int(reports.state().get("failures") or 0) + 1
            wait_s = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 20)) * (0.5 + rng.random() / 2)
            reports.update_state(failures=failures, last_error=result.error,
                                 next_attempt=format_time(now + timedelta(seconds=wait_s)),
                                 sent=lambda n: (n or 0) + result.sent)
        elif result.sent or result.refused:
            reports.update_state(failures=0, last_error="", next_attempt=None, last_sent=format_time(now),
                                 sent=lambda n: (n or 0) + result.sent)


# ----- the background sender ---------------------------------------------------------------------------
_senders: dict[Path, threading.Thread] = {}
_again: set[Path] = set()
_senders_lock = threading.Lock()
_exit_hook: list[bool] = []


def kick(root: Path) -> None:
    """Send the spool from a daemon thread (one per install directory; a kick while it runs makes
    it go round once more). Returns at once."""
    root = Path(root).absolute()
    with _senders_lock:
        running = _senders.get(root)
        if running is not None and running.is_alive():
            _again.add(root)
            return
        thread = threading.Thread(target=_send_loop, args=(root,), name="pinnacle-reports", daemon=True)
        _senders[root] = thread
        if not _exit_hook:
            atexit.register(wait, EXIT_WAIT)
            _exit_hook.append(True)
    thread.start()


def _send_loop(root: Path) -> None:
    while True:
        try:
            done = flush(root)
            if done.error:
                log.info("reports not sent: %s", done.error)
        except Exception as exc:  # never a traceback on a user's terminal from a background thread
            log.warning("sending reports failed: %s", _one_line(exc))
        with _senders_lock:
            if root in _again:
                _again.discard(root)
                continue
            if _senders.get(root) is threading.current_thread():
                del _senders[root]
            return


def wait(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the background senders; True when none is left running."""
    deadline = time.monotonic() + timeout
    while True:
        with _senders_lock:
            running = [t for t in _senders.values() if t.is_alive()]
        if not running:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        running[0].join(left)


# ----- what status shows ----------------------------------------------------------------------------------
def summary(root: Path, cfg: ClientConfig) -> dict[str, Any]:
    """Reporting as ``status`` shows it: mode, destination (redacted, never the key), spool and counters."""
    reports = Reports(root)
    state = reports.state()
    try:
        dest = destination(root, cfg)
        problem = ""
    except UpdateError as exc:
        dest, problem = None, str(exc)
    if cfg.text("report") == "on" and not cfg.text("report_url"):
        problem = "report is 'on' but report_url is not set: nothing is sent"
    return {
        "mode": cfg.text("report"),
        "collector": dest.shown() if dest is not None else None,
        "source": dest.source if dest is not None else None,
        "ingest_key": bool(dest.key) if dest is not None else False,
        "problem": problem,
        "install_id": _peek_id(reports),
        "pending": reports.count(),
        "dropped": int(state.get("dropped") or 0),
        "refused": int(state.get("refused") or 0),
        "sent": int(state.get("sent") or 0),
        "last_sent": state.get("last_sent"),
        "last_error": state.get("last_error") or "",
        "next_attempt": state.get("next_attempt"),
        "last_heartbeat": state.get("last_heartbeat"),
    }


def _peek_id(reports: Reports) -> str | None:
    """The install id if one was made (status never creates it)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = fsutil.read_regular(reports.id_file, 256).decode().strip()
        if _HEX32.match(text):
            return text
    return None
