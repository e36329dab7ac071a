"""The client configuration: ``DIR/config.toml``, its schema, and ``init`` of an install directory.

Read with ``tomllib``; written by a tiny deterministic writer (flat keys; strings, ints, floats,
bools and lists of those) so that no TOML dependency is needed and the same settings always give
the same bytes. Every write is atomic (``fsutil.atomic_write``). Every key is declared once in
``KEYS`` with its type, default, validation and a one-line description; unknown keys are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.policy import UpdateConfig
from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.index import (
    CHANNELS,
    DEFAULT_SKIP_RAMP_TYPES,
    FormatError,
    UpdateType,
    check_channel,
    check_platform,
)

Value = str | int | float | bool | list[str]

_PERSISTENT_RE = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._ -]*$")


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, validation (raises ``ValueError`` with a reason), help."""

    type: type
    default: Value
    help: str
    check: Callable[[Any], None] | None = None


def _positive(v: float) -> None:
    if v <= 0:
        raise ValueError("must be greater than 0")


def _non_negative(v: float) -> None:
    if v < 0:
        raise ValueError("must not be negative")


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


def _repo_url(v: str) -> None:
    if not v:
        raise ValueError("must not be empty")
    scheme = urlparse(v).scheme
    if scheme not in ("http", "https", "file", ""):
        raise ValueError(f"unsupported scheme {scheme!r} (http, https, file or a local path)")


def _persistent(v: list[str]) -> None:
    for p in v:
        if p in (".", "..") or not _PERSISTENT_RE.match(p):
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


def _command(v: str) -> None:
    if v:
        try:
            shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"not a valid shell command ({exc})") from None


def _health_url(v: str) -> None:
    if v and urlparse(v).scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL (or empty)")


_NOTIFY_EVENTS = ("success", "failure", "rollback")
_ADDRESS_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:_-]+$")


def _webhook_url(v: str) -> None:
    if v and (urlparse(v).scheme not in ("http", "https") or not urlparse(v).netloc):
        raise ValueError("must be an http:// or https:// URL (or empty)")


def _notify_on(v: list[str]) -> None:
    for name in v:
        if name not in _NOTIFY_EVENTS:
            raise ValueError(f"unknown event {name!r} (known: {', '.join(_NOTIFY_EVENTS)})")


def _host(v: str) -> None:
    if v and not _HOST_RE.match(v):
        raise ValueError("must be a host name or address")


def _port(v: int) -> None:
    if not 0 < v < 65536:
        raise ValueError("must be a TCP port (1-65535)")


def _address(v: str) -> None:
    if v and not _ADDRESS_RE.match(v):
        raise ValueError(f"{v!r} is not an e-mail address")


def _addresses(v: list[str]) -> None:
    for address in v:
        if not _ADDRESS_RE.match(address):
            raise ValueError(f"{address!r} is not an e-mail address")


def _client_id(v: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{32}", v):
        raise ValueError("must be 32 lowercase hex digits")


_POLICY = UpdateConfig()
DEFAULT_CHANNEL = _POLICY.channel
"""The channel a new install directory follows unless told otherwise."""
"""The policy's defaults, as the Python API's ``UpdateConfig()`` has them: config.toml starts from
the same values, stated once (in ``client.policy``, which is pure and cannot import this module)."""

KEYS: Mapping[str, Key] = {
    # where updates come from
    "repo_url": Key(str, "", "repository URL: http(s)://, file:// or a local path", _repo_url),
    "channel": Key(str, _POLICY.channel, f"release channel (e.g. {', '.join(CHANNELS)})", _channel),
    "platform": Key(str, "any", "platform tag of this machine, e.g. linux-x86_64", _platform),
    "client_id": Key(str, "", "random id of this install (used for staged rollouts)", _client_id),
    # policy (the seed's UpdateConfig)
    "enabled": Key(bool, _POLICY.enabled, "whether automatic update checks run"),
    "auto_install": Key(bool, _POLICY.auto_install,
                        f"install {_AUTO_TYPES} releases by themselves ({_URGENT_TYPES} always)"),
    "check_interval": Key(int, _POLICY.check_interval, "seconds between automatic checks", _positive),
    "backup_before_update": Key(bool, _POLICY.backup_before_update, "keep the previous version in the other slot"),
    "allowed_update_types": Key(list, _type_names(_POLICY.allowed_update_types), "update types allowed",
                                _update_types),
    "max_rollback_attempts": Key(int, _POLICY.max_rollback_attempts,
                                 "rollbacks after which a version is refused even with --force", _positive),
    "max_rollback_days": Key(int, _POLICY.max_rollback_days, "days a previous version stays eligible for rollback",
                             _non_negative),
    "skip_ramp_types": Key(list, _type_names(DEFAULT_SKIP_RAMP_TYPES), "update types that skip staged rollouts "
                           "unless the release says otherwise", _update_types),
    "max_clock_skew": Key(int, 86400, "seconds the clock may run ahead of the newest signed time before "
                          "rollouts stop advancing with it", _positive),
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
    "hook_timeout": Key(float, 300.0, "seconds a hook may run before it is killed (fails)", _positive),
    # health check
    "health_command": Key(str, "", "health check command: healthy when it exits 0", _command),
    "health_url": Key(str, "", "health check URL: healthy when it answers 2xx", _health_url),
    "health_timeout": Key(float, 10.0, "seconds one health check attempt may take", _positive),
    "health_retries": Key(int, 3, "health check attempts before the version counts as unhealthy", _positive),
    "health_interval": Key(float, 1.0, "seconds between health check attempts", _non_negative),
    "health_grace_period": Key(float, 0.0, "seconds to wait after start before checking", _non_negative),
    "max_latency_ms": Key(int, 0, "allowed increase of health_url latency after the update (0 = off)", _non_negative),
    # notifications and logging of the local agent (`pinnacle-update serve`)
    "webhook_url": Key(str, "", "URL that gets a JSON POST after each update outcome (empty = none)", _webhook_url),
    "notify_on": Key(list, list(_NOTIFY_EVENTS), "update outcomes that notify: success, failure, rollback", _notify_on),
    "webhook_retries": Key(int, 5, "delivery attempts per notification (backoff doubles from 1 s)", _positive),
    "smtp_host": Key(str, "", "SMTP server for e-mail notifications (empty = no e-mail)", _host),
    "smtp_port": Key(int, 25, "SMTP server port", _port),
    "smtp_starttls": Key(bool, False, "upgrade the SMTP connection with STARTTLS"),
    "smtp_user": Key(str, "", "SMTP login (password from PINNACLE_SMTP_PASSWORD; empty = no login)"),
    "smtp_from": Key(str, "", "sender address of notification e-mails", _address),
    "smtp_to": Key(list, [], "recipients of notification e-mails", _addresses),
    "max_log_bytes": Key(int, 1_000_000, "size at which logs/auto_updater.log is rotated", _positive),
    "log_backups": Key(int, 5, "rotated log files kept", _non_negative),
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
def _coerce(key: str, spec: Key, value: Any) -> Value:
    """Check ``value`` against ``spec``; ``ConfigError`` naming the key and the reason."""
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, spec.type) and not (spec.type is int and isinstance(value, bool))
    if spec.type is list:
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    if spec.type is float and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise ConfigError(f"config key {key!r}: expected {_type_name(spec)}, got {value!r}")
    if spec.check is not None:
        try:
            spec.check(value)
        except ValueError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
    return value  # type: ignore[no-any-return]


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


def load(install_dir: Path) -> ClientConfig:
    """Read and validate ``DIR/config.toml``."""
    path = Path(install_dir) / "config.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no config at {path}; run `pinnacle-update --install-dir {install_dir} init ...` first"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})") from exc
    return validate(raw)


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
            raise ConfigError(f"config key {key!r}: expected true or false, got {text!r}")
    elif spec.type in (int, float):
        try:
            value = spec.type(text.strip())
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected {_type_name(spec)}, got {text!r}") from None
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
    load(install_dir)  # a broken config is reported as such, before the value
    value = parse_value(key, value_text)
    update_values(install_dir, {key: value})
    return value


def update_values(install_dir: Path, changes: Mapping[str, Any]) -> ClientConfig:
    """Change several keys at once (values already typed, e.g. from JSON): all are validated
    together and written in one atomic rewrite, or ``ConfigError`` names the first bad one and
    nothing changes."""
    if "client_id" in changes:
        raise ConfigError("config key 'client_id' is created by init and cannot be changed")
    unknown = sorted(set(changes) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (known keys: {', '.join(KEYS)})")
    values: dict[str, Any] = dict(load(install_dir).values)
    for key, value in changes.items():
        if key == "persistent_paths" and isinstance(value, list):
            value = [p.rstrip("/") if isinstance(p, str) else p for p in value]
        values[key] = value
    cfg = validate(values)
    write(install_dir, cfg)
    return cfg


def write(install_dir: Path, cfg: ClientConfig) -> None:
    path = Path(install_dir) / "config.toml"
    try:
        fsutil.atomic_write(path, dumps(cfg.values).encode("utf-8"), 0o644)
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
        root_bytes = Path(root_json_path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read trusted root {root_json_path}: {exc.strerror or exc}") from exc
    _check_root(root_bytes, Path(root_json_path))
    if platform == "auto":
        platform = _detect_platform()
    if "://" not in repo_url:
        repo_url = str(Path(repo_url).resolve())
    raw: dict[str, Any] = dict(settings)
    raw.update(repo_url=repo_url, channel=channel, platform=platform, client_id=secrets.token_hex(16))
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
        doc = json.loads(data)
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
