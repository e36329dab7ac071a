"""The collector's two secrets: the read token (queries, the fleet page) and the optional ingest key.

The read token lives in a file (``--token-file``), created 0600 with a random 256-bit value when
missing, so that whoever may read that file may read the fleet's health; a file others can read is
refused (its token may have leaked). The ingest key, when set, is shared with the fleet through the
signed channel settings and so is not secret from clients: it keeps strangers' traffic out. It comes
from ``--ingest-key-file`` or the environment variable ``PINNACLE_INGEST_KEY``, never from the
command line (other local users see command lines). Neither is ever logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from pinnacle_updates.formats import fsutil

from ..errors import KeyStoreError

INGEST_KEY_ENV = "PINNACLE_INGEST_KEY"
_MAX = 4096
_MIN_LENGTH = 16


def _read_secret(path: Path, what: str) -> str:
    try:
        mode = path.stat().st_mode
        if problem := fsutil.open_to_others(mode):
            raise KeyStoreError(f"{what} {path} {problem}: chmod 600 it, or delete it for a new one")
        text = fsutil.read_regular(path, _MAX).decode("utf-8").strip()  # a planted FIFO must not hang
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot read the {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(text) < _MIN_LENGTH or any(c.isspace() for c in text):
        raise KeyStoreError(f"the {what} in {path} must be one word of at least {_MIN_LENGTH} characters")
    return text


def read_token(path: Path) -> str:
    """The read token in ``path``, written there first (0600, atomically) when the file is missing."""
    if not path.exists() and not path.is_symlink():
        try:
            fsutil.atomic_write(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"), 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot write the read token {path}: {exc.strerror or exc}") from None
    return _read_secret(path, "read token")


def ingest_key(path: Path | None) -> str | None:
    """The ingest key from ``path``, else from ``PINNACLE_INGEST_KEY``, else None (no key required)."""
    if path is not None:
        return _read_secret(path, "ingest key")
    value = os.environ.get(INGEST_KEY_ENV, "").strip()
    if not value:
        return None
    if len(value) < _MIN_LENGTH or any(c.isspace() for c in value):
        raise KeyStoreError(f"{INGEST_KEY_ENV} must be one word of at least {_MIN_LENGTH} characters")
    return value


def bearer_matches(expected: str, header: str | None) -> bool:
    """``header`` (an ``Authorization`` value) is ``Bearer <expected>``."""
    scheme, _, value = (header or "").partition(" ")
    # Both sides compared in full whatever the scheme, so timing tells nothing about the secret.
    same = hmac.compare_digest(value.strip().encode(), expected.encode())
    return scheme.lower() == "bearer" and same
