"""Fleet feedback reports: the wire format clients send to a collector. Pure.

A client appends one report after every install attempt (committed, rolled back, failed), manual
rollback, failed check, and a daily heartbeat, and sends them in batches::

    POST {collector_url}/v1/reports          Content-Type: application/json
    Authorization: Bearer <ingest key>       (only when the collector requires one)

    {"schema": 1, "reports": [{...}, ...]}   1..MAX_BATCH reports, at most MAX_BATCH_BYTES

One report is an object with exactly these keys (unknown keys are refused, types are strict:
``true`` is not an integer, ``1`` is a valid float)::

    schema            1
    report_id         32 lowercase hex, random per report (``secrets.token_hex(16)``): the dedupe key
    install_id        32 lowercase hex, random per install directory; never the rollout client id,
                      never derived from hardware
    at                event time, "%Y-%m-%dT%H:%M:%SZ" (``formats.rollout.format_time``)
    kind              install | rollback | check | heartbeat
    outcome           committed | rolled_back | failed | ok
    cause             "" | download | verify | delta_fallback | space | stop | migration | start |
                      health_check | manual | other
    cause_text        one line, <= 200 characters, already redacted (``clean_cause_text``)
    channel           a channel name (``formats.index.check_channel``), <= 128 characters
    platform          a platform tag (``formats.index.check_platform``), <= 128 characters
    from_version      PEP 440 or "" (the version before the attempt)
    to_version        PEP 440 or "" (the version attempted)
    update_type       a ``formats.index.UpdateType`` value or ""
    bucket            0..9999, the rollout bucket (``formats.rollout.bucket`` // 10_000), -1 unknown
    ab_group          <= 64 characters, "" when none
    durations         {"download"?, "apply"?, "health"?, "total"?}: seconds, finite, 0..86400
    bytes_downloaded  0..2**53
    bytes_saved       0..2**53 (bytes a delta saved against the full artifact)
    client_version    <= 64 characters, the reporting client's own version
    current_version   PEP 440 or "", the version running now (heartbeats carry it)
    metrics           optional: {name: number}, the application's own numeric metrics (``record_metric``):
                      at most MAX_METRICS (16) names, each ``^[a-z][a-z0-9_.]{0,47}$``, values finite
                      numbers within +-1e15 (``true`` is not a number); left out when empty, so a
                      report without metrics is what collectors before this field accept. They
                      describe the version running now (``current_version``).

Which ``(kind, outcome, cause)`` combinations exist is ``ALLOWED``: a heartbeat is ``ok`` with no
cause; a committed install has no cause or ``delta_fallback`` (the delta failed and the full
artifact was installed: a fallback, not a failure); an automatic rollback after the swap is an
``install`` ``rolled_back`` by stop, migration, start, health_check or other; a failure before the
swap is an ``install`` ``failed`` by download, verify, space or other; a manual rollback is
``rollback`` ``rolled_back`` ``manual``; a check is ``ok``, or ``failed`` by download, verify or other.

Strings hold no control characters (each report is shown on one line). Everything here raises
``formats.boundedjson.FormatError`` with a one-line message naming the field.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from .boundedjson import FormatError, load_object
from .index import UpdateType, check_channel, check_platform, parse_version
from .redact import redact_text
from .rollout import format_time

__all__ = [
    "ALLOWED",
    "CAUSES",
    "DURATION_KEYS",
    "KINDS",
    "MAX_AGE",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "MAX_FUTURE",
    "MAX_METRICS",
    "OUTCOMES",
    "REPORT_SCHEMA",
    "FormatError",
    "Report",
    "check_metrics",
    "clean_cause_text",
    "encode_batch",
    "encode_batches",
    "parse_batch",
]

REPORT_SCHEMA = 1
KINDS = ("install", "rollback", "check", "heartbeat")
OUTCOMES = ("committed", "rolled_back", "failed", "ok")
CAUSES = ("", "download", "verify", "delta_fallback", "space", "stop", "migration", "start", "health_check",
          "manual", "other")
DURATION_KEYS = ("download", "apply", "health", "total")
ALLOWED: Mapping[tuple[str, str], frozenset[str]] = {
    ("heartbeat", "ok"): frozenset({""}),
    ("install", "committed"): frozenset({"", "delta_fallback"}),
    ("install", "rolled_back"): frozenset({"stop", "migration", "start", "health_check", "other"}),
    ("install", "failed"): frozenset({"download", "verify", "space", "other"}),
    ("rollback", "rolled_back"): frozenset({"manual"}),
    ("check", "ok"): frozenset({""}),
    ("check", "failed"): frozenset({"download", "verify", "other"}),
}
"""Every valid ``(kind, outcome)`` pair and the causes it may carry."""

MAX_BATCH = 500
MAX_BATCH_BYTES = 512 * 1024
MAX_FUTURE = timedelta(hours=1)
"""A report dated further ahead of the collector's clock than this is refused (a broken clock)."""
MAX_AGE = timedelta(days=30)
"""A report older than this is refused: aggregates per hour are not reopened for ancient history."""
MAX_CAUSE_TEXT = 200
MAX_SHORT = 64
MAX_NAME = 128
MAX_DURATION = 86400.0
MAX_BYTES = 2**53
BUCKETS = 10_000
MAX_METRICS = 16
MAX_METRIC_VALUE = 1e15
"""Bound on a metric's magnitude: the collector keeps sums of squares, which stay finite and exact
enough far beyond any counter or duration an application reports."""
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,47}\Z")

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_KEYS = frozenset(("schema", "report_id", "install_id", "at", "kind", "outcome", "cause", "cause_text", "channel",
                   "platform", "from_version", "to_version", "update_type", "bucket", "ab_group", "durations",
                   "bytes_downloaded", "bytes_saved", "client_version", "current_version"))
_OPTIONAL = frozenset(("metrics",))
_UPDATE_TYPES = frozenset(t.value for t in UpdateType)
_SPACE = re.compile(r"\s+")
# Unicode categories Cc (C0, DEL, C1) and Cs (surrogates), as one character class: a regex scan is
# several times faster than a category lookup per character, and every report has eight strings.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TIME = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z\Z")


def _fail(name: str, problem: str) -> FormatError:
    return FormatError(f"report field {name}: {problem}")


def _string(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"expected a string, not {_type_name(value)}")
    if len(value) > limit:
        raise _fail(name, f"{len(value)} characters, at most {limit}")
    if _CONTROL.search(value):
        raise _fail(name, "holds a control character")
    return value


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass; JSON true is not
        raise _fail(name, f"expected an integer, not {_type_name(value)}")
    if not low <= value <= high:
        raise _fail(name, f"{value} is outside {low}..{high}")
    return value


def _choice(name: str, value: object, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        shown = repr(value)[:40] if isinstance(value, str) else _type_name(value)
        raise _fail(name, f"{shown} is not one of {', '.join(repr(o) for o in options)}")
    return value


@functools.lru_cache(maxsize=4096)
def _is_version(text: str) -> bool:
    # Cached: a fleet reports few distinct versions, and parsing one is a quarter of a report's
    # validation on the collector's hot path (bounded: a flood of new strings only evicts).
    try:
        parse_version(text)
    except FormatError:
        return False
    return True


def _version(name: str, value: object) -> str:
    text = _string(name, value, MAX_SHORT)
    if text and not _is_version(text):
        raise _fail(name, f"not a PEP 440 version: {text[:40]!r}")
    return text


def _type_name(value: object) -> str:
    return {bool: "a boolean", type(None): "null", str: "a string", list: "an array", dict: "an object",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _durations(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise _fail("durations", f"expected an object, not {_type_name(value)}")
    out: dict[str, float] = {}
    for key, seconds in value.items():
        if key not in DURATION_KEYS:
            raise _fail("durations", f"unknown key {str(key)[:40]!r} (known: {', '.join(DURATION_KEYS)})")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise _fail(f"durations.{key}", f"expected a number, not {_type_name(seconds)}")
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
            raise _fail(f"durations.{key}", f"{seconds} is outside 0..{MAX_DURATION:g} seconds")
        out[key] = float(seconds)
    return out


def check_metrics(value: object) -> dict[str, float]:
    """``metrics`` checked: an object of at most ``MAX_METRICS`` names (``METRIC_NAME``) to finite
    numbers within +-``MAX_METRIC_VALUE``; ``FormatError`` naming the metric otherwise."""
    if not isinstance(value, Mapping):
        raise _fail("metrics", f"expected an object, not {_type_name(value)}")
    if len(value) > MAX_METRICS:
        raise _fail("metrics", f"{len(value)} metrics, at most {MAX_METRICS}")
    out: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str) or not METRIC_NAME.match(name):
            raise _fail("metrics", f"name {str(name)[:40]!r} is not like ^[a-z][a-z0-9_.]{{0,47}}$")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _fail(f"metrics.{name}", f"expected a number, not {_type_name(number)}")
        if not math.isfinite(number) or abs(number) > MAX_METRIC_VALUE:
            raise _fail(f"metrics.{name}", f"{str(number)[:40]} is not a finite number within "
                                           f"+-{MAX_METRIC_VALUE:g}")
        out[name] = float(number)
    return out


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise _fail("at", f"expected a time string, not {_type_name(value)}")
    # formats.rollout.TIME_FORMAT exactly, zero-padded (strptime would also take "2026-1-2T3:4:5Z", and is slower).
    m = _TIME.match(value)
    try:
        if m is None:
            raise ValueError(value)
        year, month, day, hour, minute, second = map(int, m.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise _fail("at", f"not a UTC time like 2026-01-31T12:00:00Z: {value[:40]!r}") from None


def clean_cause_text(text: str) -> str:
    """A free-text cause made fit for ``cause_text``: credentials redacted, control characters and
    runs of white space turned into one space, cut to 200 characters."""
    printable = _CONTROL.sub(" ", redact_text(text))
    return _SPACE.sub(" ", printable).strip()[:MAX_CAUSE_TEXT]


@dataclass(frozen=True)
class Report:
    """One outcome report; constructing one validates it (``FormatError`` naming the field)."""

    report_id: str
    install_id: str
    at: datetime
    kind: str
    outcome: str
    channel: str
    platform: str
    cause: str = ""
    cause_text: str = ""
    from_version: str = ""
    to_version: str = ""
    update_type: str = ""
    bucket: int = -1
    ab_group: str = ""
    durations: Mapping[str, float] = field(default_factory=dict)
    bytes_downloaded: int = 0
    bytes_saved: int = 0
    client_version: str = ""
    current_version: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    schema: int = REPORT_SCHEMA

    def __post_init__(self) -> None:
        if isinstance(self.schema, bool) or self.schema != REPORT_SCHEMA:
            raise _fail("schema", f"{str(self.schema)[:20]} is not {REPORT_SCHEMA}")
        for name in ("report_id", "install_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _HEX32.match(value):
                raise _fail(name, "expected 32 lowercase hexadecimal digits")
        if not isinstance(self.at, datetime) or self.at.tzinfo is None:
            raise _fail("at", "expected a UTC time")
        # Times travel with whole seconds; keeping them so makes to_dict/from_dict a round trip.
        object.__setattr__(self, "at", self.at.astimezone(UTC).replace(microsecond=0))
        _choice("kind", self.kind, KINDS)
        _choice("outcome", self.outcome, OUTCOMES)
        _choice("cause", self.cause, CAUSES)
        causes = ALLOWED.get((self.kind, self.outcome))
        if causes is None:
            raise _fail("outcome", f"a {self.kind} report cannot be {self.outcome!r}")
        if self.cause not in causes:
            raise _fail("cause", f"a {self.kind} {self.outcome} report takes "
                                 f"{' or '.join(repr(c) for c in sorted(causes))}, not {self.cause!r}")
        _string("cause_text", self.cause_text, MAX_CAUSE_TEXT)
        for name, check in (("channel", check_channel), ("platform", check_platform)):
            text = _string(name, getattr(self, name), MAX_NAME)
            try:
                check(text)
            except FormatError as exc:
                raise _fail(name, str(exc)) from None
        for name in ("from_version", "to_version", "current_version"):
            _version(name, getattr(self, name))
        _choice("update_type", self.update_type, ("", *sorted(_UPDATE_TYPES)))
        _integer("bucket", self.bucket, -1, BUCKETS - 1)
        _string("ab_group", self.ab_group, MAX_SHORT)
        object.__setattr__(self, "durations", _durations(self.durations))
        _integer("bytes_downloaded", self.bytes_downloaded, 0, MAX_BYTES)
        _integer("bytes_saved", self.bytes_saved, 0, MAX_BYTES)
        _string("client_version", self.client_version, MAX_SHORT)
        object.__setattr__(self, "metrics", check_metrics(self.metrics))

    @classmethod
    def from_dict(cls, data: object) -> Report:
        """A report from its decoded JSON object: exactly the documented keys, strict types."""
        if not isinstance(data, Mapping):
            raise FormatError(f"a report must be a JSON object, not {_type_name(data)}")
        keys = set(data)
        unknown = sorted(str(k) for k in keys - _KEYS - _OPTIONAL)
        if unknown:
            raise FormatError(f"report: unknown field {unknown[0][:40]!r}")
        missing = sorted(_KEYS - keys)
        if missing:
            raise FormatError(f"report: missing field {missing[0]!r}")
        values = {name: data[name] for name in _FIELD_NAMES if name in data}
        values["at"] = _time(data["at"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON object (``from_dict`` of it gives an equal report)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["at"] = format_time(self.at)
        out["durations"] = dict(self.durations)
        if self.metrics:
            out["metrics"] = dict(self.metrics)
        else:  # left out: collectors from before the field refuse unknown keys
            del out["metrics"]
        return out


_FIELD_NAMES = tuple(f.name for f in fields(Report))  # once: ``fields()`` per report costs as much as a check


def parse_batch(body: bytes, now: datetime) -> list[Report]:
    """The reports of one HTTP body, or ``FormatError`` (one line; ``reports[i]`` names the report).

    Refuses a report dated more than ``MAX_FUTURE`` after ``now`` or more than ``MAX_AGE`` before."""
    doc = load_object(body, "report batch", max_bytes=MAX_BATCH_BYTES)
    unknown = sorted(set(doc) - {"schema", "reports"})
    if unknown:
        raise FormatError(f"report batch: unknown field {unknown[0][:40]!r}")
    schema = doc.get("schema")
    if isinstance(schema, bool) or schema != REPORT_SCHEMA:
        raise FormatError(f"report batch: schema must be {REPORT_SCHEMA}")
    items = doc.get("reports")
    if not isinstance(items, list):
        raise FormatError(f"report batch: reports must be an array, not {_type_name(items)}")
    if not 1 <= len(items) <= MAX_BATCH:
        raise FormatError(f"report batch: {len(items)} reports, expected 1..{MAX_BATCH}")
    latest, earliest = now + MAX_FUTURE, now - MAX_AGE
    reports = []
    for i, item in enumerate(items):
        try:
            report = Report.from_dict(item)
        except FormatError as exc:
            raise FormatError(f"reports[{i}]: {exc}") from None
        if report.at > latest:
            raise FormatError(f"reports[{i}]: report field at: {format_time(report.at)} is more than "
                              f"{MAX_FUTURE.seconds // 3600} h ahead of the collector's clock")
        if report.at < earliest:
            raise FormatError(f"reports[{i}]: report field at: {format_time(report.at)} is more than "
                              f"{MAX_AGE.days} days old")
        reports.append(report)
    return reports


def encode_batch(reports: Sequence[Report]) -> bytes:
    """One HTTP body; ``FormatError`` when it would break the batch limits (see ``encode_batches``)."""
    if not 1 <= len(reports) <= MAX_BATCH:
        raise FormatError(f"report batch: {len(reports)} reports, expected 1..{MAX_BATCH}")
    body = _encode(reports)
    if len(body) > MAX_BATCH_BYTES:
        raise FormatError(f"report batch: {len(body)} bytes, more than the {MAX_BATCH_BYTES}-byte limit")
    return body


def encode_batches(reports: Sequence[Report]) -> Iterator[tuple[int, bytes]]:
    """Bodies for all ``reports`` in order, each within the limits: ``(number of reports, body)``.

    A report is at most a few KiB, so every body holds at least one report."""
    start = 0
    while start < len(reports):
        count = min(MAX_BATCH, len(reports) - start)
        body = _encode(reports[start:start + count])
        while len(body) > MAX_BATCH_BYTES and count > 1:
            count = max(1, count * MAX_BATCH_BYTES // len(body) - 1)
            body = _encode(reports[start:start + count])
        yield count, body
        start += count


def _encode(reports: Sequence[Report]) -> bytes:
    doc = {"schema": REPORT_SCHEMA, "reports": [r.to_dict() for r in reports]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("ascii")
