"""Log lines on stderr: plain text with levels, one JSON object per line, or journald's own form.

Both the ``pinnacle-update`` commands and the agent (``pinnacle-update serve``) log to stderr through
:func:`stderr_handler`, so a line looks the same whoever wrote it:

* ``text``: ``2026-12-04T16:00:00Z WARNING pinnacle.updater: update failed: ...``;
* ``json``: ``{"ts": "2026-12-04T16:00:00.123Z", "level": "warning", "logger": "pinnacle.updater",
  "message": "..."}`` (and ``"exc"`` with a traceback's text when there is one): one object a line, for
  log shippers;
* under systemd (``JOURNAL_STREAM`` names the stream stderr is), text lines carry no time (the journal
  stamps every line itself) and start with the syslog priority ``<N>``, which journald turns into
  the entry's priority (``journalctl -p warning`` works).

Every handler carries a :class:`RedactFilter`: credentials in URLs (``formats.redact``) and an optional
live secret (the agent's token) never reach a log line. Where the format comes from (flag, environment,
config) is :func:`resolve_format`'s one rule.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .redact import redact_text

LOG_FORMATS = ("text", "json")
"""The values of ``--log-format``, ``PINNACLE_LOG_FORMAT`` and the config key ``log_format``."""

ENV_FORMAT = "PINNACLE_LOG_FORMAT"

# syslog priorities (sd-daemon(3)) for journald's "<N>" line prefix
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def resolve_format(configured: str | None = None) -> str:
    """The format to use: ``PINNACLE_LOG_FORMAT`` (which ``--log-format`` sets) wins over the config
    key's value ``configured``; anything else is ``text``."""
    for candidate in (os.environ.get(ENV_FORMAT, ""), configured or ""):
        if candidate in LOG_FORMATS:
            return candidate
    return "text"


def under_journald(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream systemd connected: ``JOURNAL_STREAM``
    is ``DEV:INODE`` of that stream (a child that redirected its stderr elsewhere is not logging to the
    journal even though it inherited the variable)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _utc(created: float, millis: bool) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{base}.{int(created % 1 * 1000):03d}Z" if millis else base + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ms), ``level``, ``logger``, ``message`` and ``exc``
    when a traceback is attached. Newlines stay inside the JSON string, so a record is one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record.created, millis=True),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message``; with ``journal``, ``<N>logger: message`` (no time: the journal
    has it). A traceback's lines follow, each with the same prefix under journald, so no line of it is
    stored without a priority."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if self.journal:
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            return "\n".join(f"{prefix}{record.name}: {line}" for line in text.splitlines() or [""])
        return f"{_utc(record.created, millis=False)} {record.levelname} {record.name}: {text}"


class RedactFilter(logging.Filter):
    """Removes secrets from every record: the current ``secret()`` if given (the agent's token is never
    logged on purpose: defence in depth) and credentials in URLs (``formats.redact``), in the message
    and in a traceback."""

    def __init__(self, secret: Callable[[], str] | None = None) -> None:
        super().__init__()
        self.secret = secret

    def _clean(self, text: str) -> str:
        secret = self.secret() if self.secret else ""
        if secret and secret in text:
            text = text.replace(secret, "[redacted]")
        return redact_text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted here so the formatter prints the cleaned text (it reuses ``exc_text``).
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when the handler was made
    (a command run in-process by a test, with stderr captured, leaves no handler on a closed stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit runs under the handler's lock
        super().emit(record)


def stderr_handler(fmt: str, level: int, *, secret: Callable[[], str] | None = None,
                   stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` lines (``text`` or ``json``) at ``level`` and above to ``stream``
    (default: stderr)."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setLevel(level)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journal=under_journald(stream)))
    handler.addFilter(RedactFilter(secret))
    return handler


def configure_stderr(fmt: str, level: int = logging.WARNING) -> logging.Handler:
    """Install the commands' stderr handler on the root logger, replacing one installed before (other
    handlers, such as a test runner's, stay)."""
    handler = stderr_handler(fmt, level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "pinnacle_stderr", False)]:
        root.removeHandler(old)
    handler.pinnacle_stderr = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.level > level:
        root.setLevel(level)
    return handler


__all__ = ["ENV_FORMAT", "LOG_FORMATS", "JsonFormatter", "RedactFilter", "TextFormatter", "configure_stderr",
           "resolve_format", "stderr_handler", "under_journald"]
