"""The client configuration: ``DIR/config.toml``, its schema, and ``init`` of an install directory.

Read with ``tomllib``; written by a tiny deterministic writer (flat keys; strings, ints, floats,
bools and lists of those) so that no TOML dependency is needed and the same settings always give
the same bytes. Every write is atomic (``fsutil.atomic_write``). Every key is declared once in
``KEYS`` with its type, default, validation and a one-line description; unknown keys are refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import secrets
import shlex
import tomllib
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.policy import UpdateConfig
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.index import (
    CHANNELS,
    DEFAULT_SKIP_RAMP_TYPES,
    FormatError,
    UpdateType,
    check_channel,
    check_platform,
    feedback_url_problem,
)
from pinnacle_updates.formats.logs import LOG_FORMATS
from pinnacle_updates.formats.redact import redact_text

Value = str | int | float | bool | list[str]

_PERSISTENT_RE = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._ -]{0,254}")


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, validation (raises ``ValueError`` with a reason), help."""

    type: type
    default: Value
    help: str
    check: Callable[[Any], None] | None = None


DAY = 86400
MAX_CHECK_INTERVAL = 30 * DAY
"""The longest ``check_interval``: beyond it the loop's sleep and the jitter stop meaning anything
(and a huge value overflows the timers that take it)."""
MAX_TIMEOUT = DAY
"""The longest hook/health timeout, interval or grace period, in seconds."""
MAX_COUNT = 1000
"""The most retries or attempts any counting key allows."""


def _between(low: float, high: float, unit: str = "", *, above: bool = False) -> Callable[[float], None]:
    """A range check (``above``: ``low`` itself excluded); its message says what is allowed."""
    allowed = f"{'greater than' if above else 'at least'} {_number(low)} and at most {_number(high)}{unit}"

    def check(v: float) -> None:
        if v < low or (above and v == low) or v > high:
            raise ValueError(f"must be {allowed}")

    return check


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


_positive_count = _between(0, MAX_COUNT, above=True)
_seconds = _between(0, MAX_TIMEOUT, " seconds", above=True)
_seconds_or_zero = _between(0, MAX_TIMEOUT, " seconds")


def _channel(v: str) -> None:
    try:
        check_channel(v)
    except FormatError as exc:
        raise ValueError(str(exc)) from None


def _platform(v: str) -> None:
    try:
        check_platform(v)
    except FormatError as exc:
        raise ValueError(str(exc)) from None


# ----- URLs and hosts: the one rule every URL key goes through -----------------------------------
URL_MAX = 2048
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def _plain_text(v: str, what: str) -> None:
    """No whitespace, control or format character (bidi overrides included) anywhere in ``v``."""
    for ch in v:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"):
            raise ValueError(f"{what} contains whitespace or a control character ({ch!r}); allowed: printable text")


def check_host(host: str) -> None:
    """A DNS name (ASCII labels of 1-63 letters, digits, ``-`` or ``_``, not starting or ending with
    ``-``; 253 characters at most) or an IP literal. ``ValueError`` says which rule failed."""
    if not host:
        raise ValueError("has no host")
    _plain_text(host, "the host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise ValueError(f"host {host!r} is not a valid IPv6 address") from None
        return
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if labels[-1].isdigit():  # no top-level domain is numeric: this is meant as an IPv4 address
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise ValueError(f"host {host!r} is not a valid IPv4 address") from None
        return
    if not name.isascii():
        raise ValueError(f"host {host!r} is not ASCII; write an international name in its xn-- form")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(
            f"host {host!r} is not a valid DNS name (labels of 1-63 letters, digits, '-' or '_', "
            "not starting or ending with '-'; 253 characters at most) or IP address"
        )


def check_http_url(v: str) -> None:
    """The one rule for every http(s) URL key (``repo_url``, ``health_url``, ``webhook_url`` and the
    like): parsed by ``urllib.parse``; scheme http or https; a host (``check_host``); a port, when
    given, an integer 1-65535; no whitespace, control character or backslash; at most ``URL_MAX``
    characters. ``ValueError`` names the rule that failed."""
    if len(v) > URL_MAX:
        raise ValueError(f"is longer than {URL_MAX} characters")
    _plain_text(v, "the URL")
    if "\\" in v:
        raise ValueError("contains a backslash (parsers disagree on what it means)")
    try:
        parts = urlsplit(v)
    except ValueError as exc:
        raise ValueError(f"is not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    hostport = parts.netloc.rpartition("@")[2]
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"has text after the IPv6 address: {rest!r}")
        port = rest[1:]
        if not host:
            raise ValueError("has no host")
        if ":" not in host:
            raise ValueError(f"host [{host}] is not an IPv6 address")
    elif ":" in hostport:
        host, _, port = hostport.partition(":")
    if port and (not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536):
        raise ValueError(f"port {port!r} is not allowed (an integer 1-65535)")
    check_host(host)


def check_repo_url(v: str) -> None:
    """A repository location: an http(s) URL by ``check_http_url``, a ``file://`` URL or a local
    path (no control characters, at most ``URL_MAX`` characters)."""
    if not v:
        raise ValueError("must not be empty")
    if len(v) > URL_MAX:
        raise ValueError(f"is longer than {URL_MAX} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in v):
        raise ValueError("contains a control character; allowed: printable text")
    scheme = v.partition(":")[0].lower() if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", v) else ""
    if scheme in ("http", "https"):
        check_http_url(v)
    elif scheme == "file":
        if not v[5:].lstrip("/"):
            raise ValueError("a file:// URL needs a path")
    elif scheme and "://" in v:
        raise ValueError(f"unsupported scheme {scheme!r} (allowed: http, https, file or a local path)")


def _persistent(v: list[str]) -> None:
    for p in v:
        if p in (".", "..") or not _PERSISTENT_RE.fullmatch(p):
            raise ValueError(f"{p!r} is not a top-level name (no '/', no '..')")
    if len(set(v)) != len(v):
        raise ValueError("names repeat")


def _type_names(types: Collection[UpdateType]) -> list[str]:
    """Plain strings in ``UpdateType``'s declaration order (whatever the order of ``types``): what
    config.toml holds, the same bytes for the same settings."""
    return [t.value for t in UpdateType if t in types]


def _update_types(v: list[str]) -> None:
    known = _type_names(frozenset(UpdateType))
    for t in v:
        if t not in known:
            raise ValueError(f"unknown update type {t!r} (known: {', '.join(known)})")


# for auto_install's help line (written into every config.toml), so that it names today's types
_AUTO_TYPES = "/".join(t for t in UpdateType if t.auto_installs and not t.urgent)
_URGENT_TYPES = "/".join(t for t in UpdateType if t.urgent)


COMMAND_MAX = 64 * 1024
"""The longest hook or health command (the kernel refuses one argument beyond 128 KiB)."""


def _command(v: str) -> None:
    if "\x00" in v:
        raise ValueError("contains a NUL character, which no command can (allowed: a shell command line)")
    if len(v) > COMMAND_MAX:
        raise ValueError(f"is longer than {COMMAND_MAX} characters")
    if v:
        try:
            shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"not a valid shell command ({exc})") from None


def _optional_url(v: str) -> None:
    if v:
        check_http_url(v)


def _optional_location(v: str) -> None:
    if v:
        check_repo_url(v)


_LOCATION_KEYS = ("repo_url", "metadata_url", "targets_url")
"""Keys naming where the repository is: a local path among them is stored absolute (init)."""


_NOTIFY_EVENTS = ("success", "failure", "rollback")
_ADDRESS_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


def _notify_on(v: list[str]) -> None:
    for name in v:
        if name not in _NOTIFY_EVENTS:
            raise ValueError(f"unknown event {name!r} (known: {', '.join(_NOTIFY_EVENTS)})")


def _host(v: str) -> None:
    if v:
        check_host(v)


def _port(v: int) -> None:
    if not 0 < v < 65536:
        raise ValueError("must be a TCP port (1-65535)")


def _address(v: str) -> None:
    if v and not _ADDRESS_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not an e-mail address")


def _addresses(v: list[str]) -> None:
    for address in v:
        _address(address)
        if not address:
            raise ValueError("an empty recipient is not an e-mail address")


def _client_id(v: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{32}", v):
        raise ValueError("must be 32 lowercase hex digits")


REPORT_MODES = ("auto", "on", "off")
"""``report``: auto = to the collector the signed channel names; on = to ``report_url`` (without
one nothing is sent, and ``status`` says why); off = never."""


def _report_mode(v: str) -> None:
    if v not in REPORT_MODES:
        raise ValueError(f"must be one of {', '.join(REPORT_MODES)}")


def _report_url(v: str) -> None:
    if v:
        check_http_url(v)
        problem = feedback_url_problem(v)  # the same rule as the channel's signed collector_url
        if problem:
            raise ValueError(problem)


def _log_format(v: str) -> None:
    if v not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")


def _user_name(v: str) -> None:
    """HTTP basic auth: a ':' would end the user name early (RFC 7617); one line of printable text."""
    if len(v) > 256 or ":" in v or not v.isprintable():
        raise ValueError("must be printable text without ':' (at most 256 characters)")


def _optional_file(v: str) -> None:
    if len(v) > 4096 or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in v):
        raise ValueError("must be a file path of at most 4096 characters without control characters")


_POLICY = UpdateConfig()
DEFAULT_CHANNEL = _POLICY.channel
"""The channel a new install directory follows unless told otherwise."""
"""The policy's defaults, as the Python API's ``UpdateConfig()`` has them: config.toml starts from
the same values, stated once (in ``client.policy``, which is pure and cannot import this module)."""

KEYS: Mapping[str, Key] = {
    # where updates come from
    "repo_url": Key(str, "", "repository URL: http(s)://, file:// or a local path", check_repo_url),
    "metadata_url": Key(str, "", "where the repository's metadata/ directory is served, if not under repo_url "
                        "(empty = repo_url + metadata/)", _optional_location),
    "targets_url": Key(str, "", "where the repository's targets/ directory is served, e.g. a CDN "
                       "(empty = repo_url + targets/)", _optional_location),
    "channel": Key(str, _POLICY.channel, f"release channel (e.g. {', '.join(CHANNELS)})", _channel),
    "platform": Key(str, "any", "platform tag of this machine, e.g. linux-x86_64", _platform),
    "client_id": Key(str, "", "random id of this install (used for staged rollouts)", _client_id),
    # a private repository (client.repo_access; each also from a PINNACLE_REPO_* variable; secrets only in files)
    "repo_token_file": Key(str, "", "file holding a bearer token for the repository (mode 600; or "
                           "PINNACLE_REPO_TOKEN)", _optional_file),
    "repo_username": Key(str, "", "basic-auth user name for the repository (or PINNACLE_REPO_USERNAME)",
                         _user_name),
    "repo_password_file": Key(str, "", "file holding the basic-auth password (mode 600; or PINNACLE_REPO_PASSWORD)",
                              _optional_file),
    "repo_headers_file": Key(str, "", "file of extra 'Name: value' headers for the repository (mode 600; or "
                             "PINNACLE_REPO_HEADERS)", _optional_file),
    "repo_client_cert": Key(str, "", "PEM client certificate for mutual TLS with the repository", _optional_file),
    "repo_client_key": Key(str, "", "PEM private key of repo_client_cert (mode 600; empty = in the certificate "
                           "file)", _optional_file),
    "repo_ca_bundle": Key(str, "", "PEM CA certificates that verify the repository's https server (empty = the "
                          "system's)", _optional_file),
    # policy (the seed's UpdateConfig)
    "enabled": Key(bool, _POLICY.enabled, "whether automatic update checks run"),
    "auto_install": Key(bool, _POLICY.auto_install,
                        f"install {_AUTO_TYPES} releases by themselves ({_URGENT_TYPES} always)"),
    "check_interval": Key(int, _POLICY.check_interval, "seconds between automatic checks",
                          _between(0, MAX_CHECK_INTERVAL, " seconds (30 days)", above=True)),
    "backup_before_update": Key(bool, _POLICY.backup_before_update, "snapshot the persistent data before each "
                                "update (application stopped, before the swap) and restore it on rollback"),
    "backup_update_types": Key(list, _type_names(tuple(UpdateType)), "update types whose installs take the data "
                               "snapshot (with backup_before_update)", _update_types),
    "backup_required": Key(bool, True, "stop an update whose data snapshot cannot be taken (false: update "
                           "without one, said in the history)"),
    "max_backups": Key(int, 5, "data backups kept (snapshots and rejected data; 0 = no count limit; "
                       "max_rollback_days also applies)", _between(0, MAX_COUNT)),
    "allowed_update_types": Key(list, _type_names(_POLICY.allowed_update_types), "update types allowed",
                                _update_types),
    "max_rollback_attempts": Key(int, _POLICY.max_rollback_attempts,
                                 "rollbacks after which a version is refused even with --force",
                                 _between(0, 1_000_000, above=True)),
    "max_rollback_days": Key(int, _POLICY.max_rollback_days, "days a previous version stays eligible for rollback",
                             _between(0, 36500, " days")),
    "skip_ramp_types": Key(list, _type_names(DEFAULT_SKIP_RAMP_TYPES), "update types that skip staged rollouts "
                           "unless the release says otherwise", _update_types),
    "max_clock_skew": Key(int, 86400, "seconds the clock may run ahead of the newest signed time before "
                          "rollouts stop advancing with it", _between(0, 365 * DAY, " seconds", above=True)),
    "persistent_paths": Key(
        list, [p.rstrip("/") for p in _POLICY.excluded_paths], "top-level paths shared by every slot (kept in data/)",
        _persistent,
    ),
    # hooks (shell commands; cwd = the slot being activated; empty = none)
    "stop_command": Key(str, "", "stops the running service before the swap", _command),
    "start_command": Key(str, "", "starts the service after the swap", _command),
    "pre_install": Key(str, "", "runs in the new slot before the swap; failure aborts the install", _command),
    "post_swap": Key(str, "", "runs after the swap (migrations); failure rolls back", _command),
    "on_rollback": Key(str, "", "runs after swapping back to the previous version", _command),
    "hook_timeout": Key(float, 300.0, "seconds a hook may run before it is killed (fails)", _seconds),
    "migration_timeout": Key(float, 600.0, "seconds a release's migration step may run before it is killed "
                             "(the update rolls back)", _seconds),
    # health check
    "health_command": Key(str, "", "health check command: healthy when it exits 0", _command),
    "health_url": Key(str, "", "health check URL: healthy when it answers 2xx", _optional_url),
    "health_timeout": Key(float, 10.0, "seconds one health check attempt may take", _seconds),
    "health_retries": Key(int, 3, "health check attempts before the version counts as unhealthy",
                          _positive_count),
    "health_interval": Key(float, 1.0, "seconds between health check attempts", _seconds_or_zero),
    "health_grace_period": Key(float, 0.0, "seconds to wait after start before checking",
                               _seconds_or_zero),
    "max_latency_ms": Key(int, 0, "allowed increase of health_url latency after the update (0 = off)",
                          _between(0, MAX_TIMEOUT * 1000, " ms")),
    # notifications and logging of the local agent (`pinnacle-update serve`)
    "webhook_url": Key(str, "", "URL that gets a JSON POST after each update outcome (empty = none)",
                       _optional_url),
    "notify_on": Key(list, list(_NOTIFY_EVENTS), "update outcomes that notify: success, failure, rollback", _notify_on),
    "webhook_retries": Key(int, 5, "delivery attempts per notification (backoff doubles from 1 s)",
                           _between(0, 100, above=True)),
    "smtp_host": Key(str, "", "SMTP server for e-mail notifications (empty = no e-mail)", _host),
    "smtp_port": Key(int, 25, "SMTP server port", _port),
    "smtp_starttls": Key(bool, False, "upgrade the SMTP connection with STARTTLS"),
    "smtp_user": Key(str, "", "SMTP login (password from PINNACLE_SMTP_PASSWORD; empty = no login)"),
    "smtp_from": Key(str, "", "sender address of notification e-mails", _address),
    "smtp_to": Key(list, [], "recipients of notification e-mails", _addresses),
    "max_log_bytes": Key(int, 1_000_000, "size at which logs/auto_updater.log is rotated",
                         _between(0, 1 << 40, " bytes", above=True)),
    "log_backups": Key(int, 5, "rotated log files kept", _between(0, MAX_COUNT)),
    "log_format": Key(str, "text", "stderr log lines: text (journald's form under systemd) or json (one object "
                      "a line); PINNACLE_LOG_FORMAT or --log-format override it", _log_format),
    # fleet feedback (client.reporting): outcome reports to a collector; no user data
    "report": Key(str, "auto", "outcome reports: auto (to the collector the signed channel names, if any), "
                  "on (to report_url), off (never: nothing is kept or sent)", _report_mode),
    "report_url": Key(str, "", "collector URL for outcome reports, used instead of the channel's "
                      "(empty = the channel's)", _report_url),
    "report_key_file": Key(str, "", "file holding the collector's ingest key, used instead of the "
                           "channel's (empty = the channel's)", _optional_file),
}


@dataclass(frozen=True)
class ClientConfig:
    """Validated settings of one install directory (every key of ``KEYS``)."""

    values: Mapping[str, Value]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def text(self, key: str) -> str:
        v = self.values[key]
        assert isinstance(v, str)
        return v

    def integer(self, key: str) -> int:
        v = self.values[key]
        assert isinstance(v, int) and not isinstance(v, bool)
        return v

    def number(self, key: str) -> float:
        v = self.values[key]
        assert isinstance(v, int | float) and not isinstance(v, bool)
        return float(v)

    def flag(self, key: str) -> bool:
        v = self.values[key]
        assert isinstance(v, bool)
        return v

    def names(self, key: str) -> list[str]:
        v = self.values[key]
        assert isinstance(v, list)
        return list(v)

    @property
    def persistent_paths(self) -> tuple[str, ...]:
        return tuple(self.names("persistent_paths"))

    def to_update_config(self) -> UpdateConfig:
        """The policy's ``UpdateConfig`` built from these settings."""
        return UpdateConfig(
            enabled=self.flag("enabled"),
            check_interval=self.integer("check_interval"),
            auto_install=self.flag("auto_install"),
            backup_before_update=self.flag("backup_before_update"),
            max_rollback_days=self.integer("max_rollback_days"),
            allowed_update_types=frozenset(UpdateType(t) for t in self.names("allowed_update_types")),
            excluded_paths=tuple(f"{p}/" for p in self.persistent_paths),
            channel=self.text("channel"),
            platform=self.text("platform"),
            max_rollback_attempts=self.integer("max_rollback_attempts"),
        )


# ----- parsing and validation -------------------------------------------------------------------
LIST_MAX = 100
"""The most names a list key holds."""


def _coerce(key: str, spec: Key, value: Any) -> Value:
    """Check ``value`` against ``spec``; ``ConfigError`` naming the key, the value (any URL password
    hidden) and what is allowed."""
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an integer beyond any float: refused below
            value = float(value)
    ok = isinstance(value, spec.type) and not (spec.type is int and isinstance(value, bool))
    if spec.type is list:
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    if spec.type is float and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise ConfigError(f"config key {key!r}: expected {_type_name(spec)}, got {shown(value)}")
    try:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                _encodable(text)
        if isinstance(value, list) and len(value) > LIST_MAX:
            raise ValueError(f"has {len(value)} entries, at most {LIST_MAX} allowed")
        if spec.check is not None:
            spec.check(value)
    except ValueError as exc:
        what = "the value" if key in _UNSHOWN else shown(value)
        raise ConfigError(f"config key {key!r}: {what} {_reason(exc)}") from None
    return value  # type: ignore[no-any-return]


_UNSHOWN = frozenset({"repo_username"})
"""Keys whose refused value is not repeated: 'user:password' typed by mistake must not reach a terminal log."""


def _encodable(text: str) -> None:
    """Every string key: no NUL (no file, URL or command can hold one) and valid Unicode (a lone
    surrogate, from undecodable command-line bytes, cannot be written to config.toml)."""
    if "\x00" in text:
        raise ValueError("contains a NUL character (allowed: text without NUL)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (undecodable bytes)") from None


def _reason(exc: ValueError) -> str:
    """The check's reason read after the value: ``'x' must be ...``, ``'x' is not ...``."""
    text = " ".join(str(exc).split())
    return text if text.split(" ", 1)[0] in ("must", "is", "has", "contains", "names") else f"is refused: {text}"


def shown(value: Any, limit: int = 120) -> str:
    """``value`` for an error message: one line (``repr`` escapes control characters), a URL's
    password replaced by ``***``, cut at ``limit`` characters."""
    if isinstance(value, str):
        value = redact_text(value)
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def _type_name(spec: Key) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(spec.type, "a list of strings")


def validate(raw: Mapping[str, Any]) -> ClientConfig:
    """Defaults filled in, every value checked, unknown keys refused."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (known keys: {', '.join(KEYS)})")
    values: dict[str, Value] = {}
    for key, spec in KEYS.items():
        values[key] = _coerce(key, spec, raw[key]) if key in raw else _default(spec)
    if not values["repo_url"]:
        raise ConfigError("config key 'repo_url' is not set")
    if not values["client_id"]:
        raise ConfigError("config key 'client_id' is not set")
    return ClientConfig(values)


def _default(spec: Key) -> Value:
    return list(spec.default) if isinstance(spec.default, list) else spec.default


CONFIG_MAX = 1 << 20
"""Bytes of ``config.toml`` read at most (a real one is about 4 KiB)."""


def load(install_dir: Path) -> ClientConfig:
    """Read and validate ``DIR/config.toml``."""
    return validate(_read(Path(install_dir)))


def _read(install_dir: Path) -> dict[str, Any]:
    path = install_dir / "config.toml"
    try:
        raw = tomllib.loads(fsutil.read_regular(path, CONFIG_MAX, follow=True).decode("utf-8"))  # never a FIFO
    except FileNotFoundError:
        raise ConfigError(
            f"no config at {path}; run `pinnacle-update --install-dir {install_dir} init ...` first"
        ) from None
    except OSError as exc:  # strerror alone: the message names the path once
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except (ValueError, RecursionError) as exc:  # also an integer of thousands of digits; arrays nested deep
        raise ConfigError(f"{path} is not valid TOML ({type(exc).__name__}: {exc})") from exc
    return raw


def load_for_recovery(install_dir: Path) -> tuple[ClientConfig, list[str]]:
    """The config as far as it is usable, for finishing an interrupted trial or rollback whatever
    the file says: each value that fails its check (or the whole file, when it cannot be read) is
    replaced by its default, and named in the returned problems. Never raises ``ConfigError``:
    recovery must not depend on the file a person may have broken by hand."""
    problems: list[str] = []
    try:
        raw = _read(Path(install_dir))
    except ConfigError as exc:
        raw, problems = {}, [str(exc)]
    values: dict[str, Value] = {}
    for key, spec in KEYS.items():
        values[key] = _default(spec)
        if key in raw:
            try:
                values[key] = _coerce(key, spec, raw[key])
            except ConfigError as exc:
                problems.append(str(exc))
    problems += [f"unknown config key {k!r}" for k in sorted(set(raw) - set(KEYS))]
    return ClientConfig(values), problems


def parse_value(key: str, text: str) -> Value:
    """Turn the command-line text for ``key`` into a checked value."""
    spec = KEYS.get(key)
    if spec is None:
        raise ConfigError(f"unknown config key {key!r} (known keys: {', '.join(KEYS)})")
    value: Any
    if spec.type is str:
        value = text
    elif spec.type is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            value = True
        elif lowered in ("false", "no", "off", "0"):
            value = False
        else:
            raise ConfigError(f"config key {key!r}: expected true or false, got {shown(text)}")
    elif spec.type in (int, float):
        try:
            value = spec.type(text.strip())
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected {_type_name(spec)}, got {shown(text)}") from None
    else:  # list of strings: a TOML array, or names separated by commas and/or spaces
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                value = tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config key {key!r}: not a valid list ({exc})") from None
        else:
            value = [p for p in re.split(r"[,\s]+", stripped) if p]
        if key == "persistent_paths":
            value = [str(p).rstrip("/") for p in value]
    return _coerce(key, spec, value)


def set_value(install_dir: Path, key: str, value_text: str) -> Value:
    """Change one key safely: parse and validate the value, then rewrite the config atomically."""
    if key == "client_id":
        raise ConfigError("config key 'client_id' is created by init and cannot be changed")
    _read(Path(install_dir))  # a missing or unreadable config is reported as such, before the value
    value = parse_value(key, value_text)
    update_values(install_dir, {key: value})
    return value


def update_values(install_dir: Path, changes: Mapping[str, Any]) -> ClientConfig:
    """Change several keys at once (values already typed, e.g. from JSON): all are validated
    together and written in one atomic rewrite, or ``ConfigError`` names the first bad one and
    nothing changes.

    The file is read as written, not validated first, so that a config broken by hand can be
    repaired key by key: when other keys (not changed here) fail their checks, the valid change is
    still written, those keys are kept as they are, and the usable config is returned
    (``load_for_recovery``); loading names the next broken key until all are fixed."""
    if "client_id" in changes:
        raise ConfigError("config key 'client_id' is created by init and cannot be changed")
    unknown = sorted(set(changes) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (known keys: {', '.join(KEYS)})")
    values: dict[str, Any] = _read(Path(install_dir))
    for key, value in changes.items():
        if key == "persistent_paths" and isinstance(value, list):
            value = [p.rstrip("/") if isinstance(p, str) else p for p in value]
        values[key] = _coerce(key, KEYS[key], value)
    try:
        cfg = validate(values)
    except ConfigError:
        _write_text(Path(install_dir), dumps(values))  # others broken by hand: kept as written
        return load_for_recovery(Path(install_dir))[0]
    write(install_dir, cfg)
    return cfg


def write(install_dir: Path, cfg: ClientConfig) -> None:
    _write_text(Path(install_dir), dumps(cfg.values))


def _write_text(install_dir: Path, text: str) -> None:
    path = install_dir / "config.toml"
    try:
        fsutil.atomic_write(path, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ----- the writer -------------------------------------------------------------------------------
def dumps(values: Mapping[str, Value]) -> str:
    """Deterministic TOML for flat keys, in ``KEYS`` order, each preceded by its help line."""
    lines = [
        "# pinnacle-update client configuration",
        "# change with: pinnacle-update config set KEY VALUE",
        "",
    ]
    for key, spec in KEYS.items():
        if key not in values:
            continue
        lines.append(f"# {spec.help}")
        lines.append(f"{key} = {_toml_value(values[key])}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"cannot write non-finite number {v!r}")
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# ----- init ------------------------------------------------------------------------------------
def init(
    install_dir: Path,
    repo_url: str,
    root_json_path: Path,
    channel: str = DEFAULT_CHANNEL,
    platform: str = "auto",
    **settings: Value,
) -> ClientConfig:
    """Create an install directory: config (with a new client id), trusted root, layout, state.

    Refuses a directory that is already initialised (its trusted root must not be replaced
    silently). ``settings`` are further config keys (validated like ``config set``).
    """
    from pinnacle_updates.client import slots

    install_dir = Path(install_dir)
    layout = slots.Layout(install_dir)
    if layout.config.exists():
        raise ConfigError(f"{install_dir} is already initialised ({layout.config} exists)")
    try:
        root_bytes = fsutil.read_regular(Path(root_json_path), boundedjson.DOCUMENT_MAX, follow=True)
    except OSError as exc:
        raise ConfigError(f"cannot read trusted root {root_json_path}: {exc.strerror or exc}") from exc
    _check_root(root_bytes, Path(root_json_path))
    if platform == "auto":
        platform = _detect_platform()
    raw: dict[str, Any] = {**settings, "repo_url": repo_url}
    for key in _LOCATION_KEYS:  # a local path must name the same directory from any working directory
        value = raw.get(key)
        if isinstance(value, str) and value and "://" not in value:
            _coerce(key, KEYS[key], value)  # a bad value is named before it is used as a path
            raw[key] = str(Path(value).resolve())
    raw.update(channel=channel, platform=platform, client_id=secrets.token_hex(16))
    cfg = validate(raw)
    try:
        install_dir.mkdir(parents=True, exist_ok=True)
        layout.create_dirs()  # data/NAME appears at the first install (seeded from the release if it ships NAME)
        fsutil.atomic_write(layout.trusted_root, root_bytes, 0o644)
        if not layout.state.exists():
            slots.save(layout.state, slots.SlotState(updated=slots.now()))
        layout.lock.touch(exist_ok=True)
        write(install_dir, cfg)  # last: its presence means "initialised"
    except OSError as exc:
        raise ConfigError(f"cannot initialise {install_dir}: {exc.strerror or exc}") from exc
    return cfg


def _check_root(data: bytes, path: Path) -> None:
    try:
        doc = boundedjson.loads(data, str(path))
        kind = doc["signed"]["_type"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not TUF root metadata") from None
    if kind != "root":
        raise ConfigError(f"{path} is TUF {kind!r} metadata, not root")


def _detect_platform() -> str:
    from pinnacle_updates.client.platform_tag import detect_platform

    return detect_platform()


def env_install_dir() -> Path | None:
    value = os.environ.get("PINNACLE_INSTALL_DIR")
    return Path(value) if value else None
