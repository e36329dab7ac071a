"""The agent's bearer token: ``DIR/agent.token``, 0600, created on first use.

Every mutating API call must carry ``Authorization: Bearer <token>``. The token is a random
256-bit value kept beside the install's config so that whoever may read it (the install's owner
and root) may steer updates, and nobody else: other local users and web pages can reach
127.0.0.1 too, so the loopback address alone proves nothing.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.formats import fsutil

TOKEN_FILE = "agent.token"


def token_path(install_dir: Path) -> Path:
    return Path(install_dir) / TOKEN_FILE


def load_or_create(install_dir: Path, *, rotate: bool = False) -> str:
    """The token of ``install_dir``; a new one is written (0600, atomically) when there is none,
    when the file is unusable, or when ``rotate`` asks for it. A file readable by others is
    refused: its token may have leaked."""
    path = token_path(install_dir)
    if not rotate:
        try:
            st = path.stat()
            if problem := fsutil.open_to_others(st.st_mode):
                raise ConfigError(f"{path} {problem}; rotate it with `pinnacle-update token --rotate`")
            token = fsutil.read_regular(path, 4096).decode("ascii").strip()  # a planted FIFO must not hang
            if len(token) >= 32:
                return token
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    token = secrets.token_urlsafe(32)
    try:
        fsutil.atomic_write(path, (token + "\n").encode("ascii"), 0o600)
        os.chmod(path, 0o600)  # atomic_write honours the umask
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return token


def matches(expected: str, header: str | None) -> bool:
    """``header`` is ``Bearer <expected>`` (constant-time comparison)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())


class TokenFile:
    """The current token of ``install_dir``, re-read when the file changes, so that
    ``pinnacle-update token --rotate`` takes effect in a running agent at once."""

    def __init__(self, install_dir: Path) -> None:
        self.path = token_path(install_dir)
        self._seen: tuple[int, int] | None = None
        self._token = load_or_create(install_dir)
        self._install_dir = install_dir
        self._mark()

    def _mark(self) -> None:
        try:
            st = self.path.stat()
            self._seen = (st.st_mtime_ns, st.st_ino)
        except OSError:
            self._seen = None

    def current(self) -> str:
        """The token; a file that disappeared or became unusable keeps the last good one."""
        try:
            st = self.path.stat()
            if (st.st_mtime_ns, st.st_ino) != self._seen:
                self._token = load_or_create(self._install_dir)
                self._mark()
        except (OSError, ConfigError):
            pass
        return self._token
