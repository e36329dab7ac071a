"""``DIR/history.jsonl``: an append-only log of every check, install, rollback, repair and recovery.

One JSON object per line, appended with ``O_APPEND`` and fsync'd before the call returns, so a
record that was reported is on disk. A kill mid-append can leave at most a torn last line; readers
skip lines that do not parse (and the next append starts on a fresh line).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from pinnacle_updates.client.errors import StateError
from pinnacle_updates.client.slots import BadVersion, now
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.redact import redact_data

READ_MAX = 64 << 20
"""Bytes of the log's end that readers decode (about 200,000 records; older ones are not read)."""
LINE_MAX = 1 << 20
"""Bytes of one record (a real one is under 2 KiB)."""


def append(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append ``record`` (with a ``ts`` added when missing) durably; return what was written."""
    # Redacted: the history is shown by `history`, the agent's API and dashboard, analytics, notifications.
    rec: dict[str, Any] = redact_data({"ts": now(), **record})
    line = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    fsutil.append_line(path, line.encode("utf-8"))
    return rec


def read(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Records oldest first (the last ``limit`` when given); torn or damaged lines are skipped.

    Bounded: only the last ``READ_MAX`` bytes are read, and each line is decoded within
    ``LINE_MAX`` bytes and the bounds of ``formats.boundedjson``."""
    try:
        lines = fsutil.tail_lines(path, READ_MAX)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    out: list[dict[str, Any]] = []
    for line in lines:
        if not line.strip():
            continue
        with contextlib.suppress(boundedjson.FormatError):
            rec = boundedjson.loads(line, "history record", max_bytes=LINE_MAX)
            if isinstance(rec, dict):
                out.append(rec)
    return out[-limit:] if limit else out


def bad_versions(records: list[dict[str, Any]], key: str = "bad_version") -> dict[str, BadVersion]:
    """Rebuild the bad-version list from the log (used when the state file was lost): every
    record naming a ``bad_version`` counts one rollback; a later commit of that version clears it.
    ``key="rolled_back_version"``: the versions a person rolled back from without marking them bad."""
    bad: dict[str, BadVersion] = {}
    for rec in records:
        marked = rec.get(key)
        if isinstance(marked, str):
            prev = bad.get(marked)
            count = (prev.rollbacks if prev else 0) + 1
            bad[marked] = BadVersion(count, str(rec.get("reason", "")), str(rec.get("ts", "")))
        elif rec.get("outcome") == "committed" and isinstance(rec.get("version"), str):
            bad.pop(rec["version"], None)
    return bad
