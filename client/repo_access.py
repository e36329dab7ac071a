"""A private repository's credentials, from ``config.toml`` and the environment, for the one fetcher.

What a repository may ask (each from the environment, else from the config key):

==========================  ==========================  ==================================================
environment variable        config key                  what
==========================  ==========================  ==================================================
``PINNACLE_REPO_TOKEN``     ``repo_token_file``         bearer token: ``Authorization: Bearer TOKEN``
``PINNACLE_REPO_USERNAME``  ``repo_username``           HTTP basic auth user name
``PINNACLE_REPO_PASSWORD``  ``repo_password_file``      HTTP basic auth password
``PINNACLE_REPO_HEADERS``   ``repo_headers_file``       more headers, ``Name: value`` one per line
``PINNACLE_REPO_CLIENT_CERT`` ``repo_client_cert``      PEM client certificate (mutual TLS)
``PINNACLE_REPO_CLIENT_KEY``  ``repo_client_key``       its PEM private key (empty: in the certificate file)
``PINNACLE_REPO_CA_BUNDLE``   ``repo_ca_bundle``        PEM CA certificates for the repository's https
==========================  ==========================  ==================================================

Secrets never sit in ``config.toml`` (it is 0644 and ``config show`` prints it): the config names a
*file* holding them, and a secret file (token, password, headers, client key) that other users may
read (any group/other mode bit) is refused, as the collector refuses its token file. Relative paths
are relative to the install directory. The environment's values are used as they are (a service
manager's credential store, CI secrets).

Credentials go only where the repository is: the origins (scheme, host, port) of ``repo_url``,
``metadata_url`` and ``targets_url`` (``transport.RepoAccess``), and over plain http only to a
loopback address; anywhere else http would show them to the network, so it is refused. Every
failure here is a ``ConfigError`` that names the key or variable and the file, never a value.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.transport import RepoAccess
from pinnacle_updates.formats import fsutil

ENV = {
    "token": "PINNACLE_REPO_TOKEN",
    "username": "PINNACLE_REPO_USERNAME",
    "password": "PINNACLE_REPO_PASSWORD",
    "headers": "PINNACLE_REPO_HEADERS",
    "client_cert": "PINNACLE_REPO_CLIENT_CERT",
    "client_key": "PINNACLE_REPO_CLIENT_KEY",
    "ca_bundle": "PINNACLE_REPO_CA_BUNDLE",
}
"""Each credential's environment variable (it wins over the config key)."""

SECRET_MAX = 64 * 1024
"""Bytes of a secret file read at most (a header file of a few long tokens fits many times)."""

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # RFC 9110 token
_FORBIDDEN = frozenset({"host", "content-length", "transfer-encoding", "connection", "range", "user-agent"})
"""Headers the fetcher itself sets (or that would break framing): not settable."""
_LOOPBACK_NAMES = ("localhost",)


def load(cfg: ClientConfig, install_dir: Path, environ: Mapping[str, str] | None = None) -> RepoAccess | None:
    """The credentials this install sends to its repository, or None when it needs none."""
    env = os.environ if environ is None else environ
    base = Path(install_dir)
    headers: list[tuple[str, str]] = []

    token = _secret(env, "token", cfg, "repo_token_file", base)
    username = env.get(ENV["username"]) or cfg.text("repo_username")
    password = _secret(env, "password", cfg, "repo_password_file", base)
    if token is not None:
        if username or password is not None:
            raise ConfigError("a bearer token and basic auth are both set for the repository; keep one "
                              f"({ENV['token']}/repo_token_file or repo_username and a password)")
        _visible(token, _named(env, "token", "repo_token_file"))
        headers.append(("Authorization", f"Bearer {token}"))
    elif username or password is not None:
        if not username or password is None:
            missing = (f"{ENV['password']} or repo_password_file" if username
                       else f"{ENV['username']} or repo_username")
            raise ConfigError(f"basic auth for the repository needs a user name and a password: set {missing}")
        if ":" in username or not username.isprintable():  # from the environment (config.toml's is checked there)
            raise ConfigError(f"{ENV['username']} must be printable text without ':'")
        pair = f"{username}:{password}".encode()
        headers.append(("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")))

    extra = _secret(env, "headers", cfg, "repo_headers_file", base)
    if extra is not None:
        headers += _parse_headers(extra, _named(env, "headers", "repo_headers_file"), {n.lower() for n, _ in headers})

    cert = _path(env, "client_cert", cfg, "repo_client_cert", base)
    key = _path(env, "client_key", cfg, "repo_client_key", base)
    ca = _path(env, "ca_bundle", cfg, "repo_ca_bundle", base)
    if key is not None and cert is None:
        raise ConfigError("repo_client_key is set without repo_client_cert (the certificate it belongs to)")
    if cert is not None:
        _private(key or cert, "the client key" if key else "the client certificate (it holds the key)")
    for path, what in ((cert, "client certificate"), (key, "client key"), (ca, "CA bundle")):
        if path is not None:
            _readable(path, what)
    _loads(cert, key, ca)

    if not headers and cert is None and ca is None:
        return None
    urls = [u for u in (cfg.text("repo_url"), cfg.text("metadata_url"), cfg.text("targets_url")) if u]
    if headers:
        for url in urls:
            _safe_for_credentials(url)
    return RepoAccess.for_urls(urls, headers=tuple(headers), client_cert=cert, client_key=key, ca_bundle=ca)


def _named(env: Mapping[str, str], what: str, key: str) -> str:
    return ENV[what] if env.get(ENV[what]) else key


def _secret(env: Mapping[str, str], what: str, cfg: ClientConfig, key: str, base: Path) -> str | None:
    """The secret from its environment variable, else from the file the config key names, else None."""
    value = env.get(ENV[what])
    if value:
        return value
    name = cfg.text(key)
    if not name:
        return None
    path = _resolve(name, base)
    _private(path, f"{key}")
    try:
        text = fsutil.read_regular(path, SECRET_MAX, follow=True).decode("utf-8")  # a planted FIFO never hangs
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {key} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    text = text.strip("\r\n") if what == "headers" else text.strip()
    if not text:
        raise ConfigError(f"{key} {path} is empty")
    return text


def _path(env: Mapping[str, str], what: str, cfg: ClientConfig, key: str, base: Path) -> Path | None:
    name = env.get(ENV[what]) or cfg.text(key)
    return _resolve(name, base) if name else None


def _resolve(name: str, base: Path) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _private(path: Path, what: str) -> None:
    """Refuse a secret file other users may read: its secret may already have leaked."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if problem := fsutil.open_to_others(mode):
        raise ConfigError(f"{what} {path} {problem}: chmod 600 it")


def _readable(path: Path, what: str) -> None:
    try:
        fsutil.read_regular(path, SECRET_MAX, follow=True)
    except OSError as exc:
        raise ConfigError(f"cannot read the repository's {what} {path}: {exc.strerror or exc}") from None


def _loads(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """The TLS files as the fetcher will load them (only these files, no system CA store: cheap), so that
    a key that does not belong to its certificate, or a CA file that holds no certificate, is a
    configuration error now and not a network error at the first https request."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cert is not None:
            what = "repo_client_cert and repo_client_key" if key is not None else "repo_client_cert (with its key)"
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
        if ca is not None:
            what = "repo_ca_bundle"
            context.load_verify_locations(cafile=str(ca))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{what} cannot be used for TLS: {reason}") from None


def _visible(value: str, where: str) -> None:
    if any(not 0x21 <= ord(c) <= 0x7E for c in value):
        raise ConfigError(f"the token in {where} must be one word of visible ASCII characters")


def _parse_headers(text: str, where: str, taken: set[str]) -> list[tuple[str, str]]:
    """``Name: value`` lines (blank lines and ``#`` comments skipped); the message names the line, not the value."""
    out: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not _HEADER_NAME.fullmatch(name) or not value:
            raise ConfigError(f"{where} line {number} is not 'Name: value'")
        if any(not (0x20 <= ord(c) <= 0x7E or c == "\t") for c in value):
            raise ConfigError(f"{where} line {number}: the value of {name} must be printable ASCII")
        lowered = name.lower()
        if lowered in _FORBIDDEN or lowered in taken:
            raise ConfigError(f"{where} line {number}: header {name} is set by the client itself or twice")
        taken.add(lowered)
        out.append((name, value))
    return out


def _safe_for_credentials(url: str) -> None:
    """Credentials over plain http only to this machine: anything else shows them to the network."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    if not loopback:
        raise ConfigError(f"repository credentials are set but {host or url} is plain http: they would cross "
                          "the network unencrypted; use https")
