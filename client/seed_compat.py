"""The seed's configuration, loaded as written: ``AutoUpdater(config)`` with the seed's ``UpdateConfig``, and
its JSON configuration file (``config/update_config.json``: ``update_channels``, ``rollback_policy``,
``notification_settings``, ``rollout_strategy``, ``ab_testing``, and the ``UpdateConfig`` keys).

``MAPPING`` is the one table from a seed key to ours (docs/API.md prints it). Every seed key either
becomes a ``config.toml`` value, or is something this product always does (no change), or means
nothing on a client: then one warning line goes to the ``pinnacle.updater`` log (stderr when the
application configured no logging) naming the key and where its meaning went, and the key is
ignored. A key the table does not know is warned about the same way. The values are validated by
``config.update_values`` all together: a bad one is a ``ConfigError`` and nothing changes.

Two seed keys are deliberately not applied: the channel (``UpdateConfig.channel`` or the one enabled
``update_channels`` entry) goes through ``AutoUpdater.switch_channel`` (which never downgrades silently),
so a differing channel is a warning that says so; and ``platform`` stays what ``init`` detected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pinnacle_updates.formats import boundedjson, fsutil

from .config import ClientConfig
from .errors import ConfigError
from .policy import UpdateConfig

log = logging.getLogger("pinnacle.updater")

Changes = dict[str, Any]
Convert = Callable[[str, Any, Changes, ClientConfig], "str | None"]
"""Applies one seed value (at its dotted path) to ``changes`` (our keys); returns a warning line, or None."""


@dataclass(frozen=True)
class Rule:
    """One row of the mapping: ``seed`` (a dotted path; ``*`` = any channel name), ``ours`` (the
    config key or what happens instead, for the documentation), ``convert``."""

    seed: str
    ours: str
    convert: Convert


def _same(key: str) -> Convert:
    def convert(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> None:
        changes[key] = value

    return convert


def _types(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> None:
    changes["allowed_update_types"] = [str(getattr(t, "value", t)) for t in value]


def _paths(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> None:
    changes["persistent_paths"] = [str(p).rstrip("/") for p in value]  # 'logs/' -> 'logs'


def _notify(event: str) -> Convert:
    def convert(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> None:
        events = changes.get("notify_on", cfg.names("notify_on"))
        events = [e for e in events if e != event] + ([event] if value else [])
        changes["notify_on"] = [e for e in ("success", "failure", "rollback") if e in events]

    return convert


def _channel(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> str | None:
    if value == cfg.text("channel"):
        return None
    return (f"channel {value!r} is not applied (this install follows {cfg.text('channel')!r}): switch with "
            f"AutoUpdater.switch_channel({value!r}) or `pinnacle-update channel {value}`, which never downgrades")


def _enabled_channel(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> str | None:
    """``update_channels.NAME.enabled: true``: NAME is the channel (``enabled: false`` says nothing)."""
    return _channel(path, path.split(".")[1], changes, cfg) if value is True else None


def _always(what: str) -> Convert:
    """A seed switch for something this product always does: true is a no-op, false is warned about."""
    def convert(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> str | None:
        return None if value is True else f"is {value!r}, but {what} always (ignored)"

    return convert


def _ignored(why: str) -> Convert:
    def convert(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> str:
        return f"means nothing here: {why} (ignored)"

    return convert


def _email(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> str | None:
    if not value or (changes.get("smtp_host") or cfg.text("smtp_host")):
        return None
    return "is true, but e-mail goes out only with smtp_host and smtp_to set (config set smtp_host ...)"


def _platform(path: str, value: Any, changes: Changes, cfg: ClientConfig) -> str | None:
    if not value or value == cfg.text("platform"):
        return None
    return f"platform {value!r} is not applied: this install's platform is {cfg.text('platform')!r} (from init)"


_PUBLISHER = "a publisher setting, signed into the release"
MAPPING: tuple[Rule, ...] = (
    # UpdateConfig(...) and the same keys at the top of the JSON file
    Rule("enabled", "enabled", _same("enabled")),
    Rule("check_interval", "check_interval", _same("check_interval")),
    Rule("auto_install", "auto_install", _same("auto_install")),
    Rule("backup_before_update", "backup_before_update", _same("backup_before_update")),
    Rule("max_rollback_days", "max_rollback_days", _same("max_rollback_days")),
    Rule("allowed_update_types", "allowed_update_types", _types),
    Rule("excluded_paths", "persistent_paths (trailing '/' dropped)", _paths),
    Rule("max_rollback_attempts", "max_rollback_attempts", _same("max_rollback_attempts")),
    Rule("channel", "channel: warned about when it differs; switch_channel applies it", _channel),
    Rule("platform", "platform: kept from init; warned about when it differs", _platform),
    # update_channels: one repository serves every channel here
    Rule("update_channels.*.enabled", "channel (the enabled one): as channel above", _enabled_channel),
    Rule("update_channels.*.url", "ignored with a warning: repo_url (set at init) serves every channel",
         _ignored("one repository, repo_url (set at init), serves every channel")),
    Rule("update_channels.*.verify_signatures", "nothing: TUF signatures are always verified",
         _always("every download is verified against signed TUF metadata")),
    # rollback_policy
    Rule("rollback_policy.auto_rollback", "nothing: a failed health check always rolls back",
         _always("a failed start or health check rolls back")),
    Rule("rollback_policy.rollback_timeout", "health_timeout (seconds the new version has to answer healthy)",
         _same("health_timeout")),
    Rule("rollback_policy.max_rollback_attempts", "max_rollback_attempts", _same("max_rollback_attempts")),
    Rule("rollback_policy.notify_on_rollback", "notify_on: 'rollback' added or removed", _notify("rollback")),
    # notification_settings
    Rule("notification_settings.email_notifications", "nothing: e-mail is on when smtp_host is set (warned)",
         _email),
    Rule("notification_settings.webhook_url", "webhook_url", _same("webhook_url")),
    Rule("notification_settings.notify_on_success", "notify_on: 'success'", _notify("success")),
    Rule("notification_settings.notify_on_failure", "notify_on: 'failure'", _notify("failure")),
    # publisher-side settings: a client cannot set them
    Rule("rollout_strategy.*", "ignored with a warning: pinnacle-release publish --rollout/--percent; "
         "health_check_interval is pinnacle-release watch --interval",
         _ignored(f"{_PUBLISHER} (pinnacle-release publish --rollout; health_check_interval is "
                  "pinnacle-release watch --interval)")),
    Rule("ab_testing.*", "ignored with a warning: pinnacle-release publish --ab-test-percentage",
         _ignored(f"{_PUBLISHER} (pinnacle-release publish --ab-test-percentage)")),
)
_RULES = {rule.seed: rule for rule in MAPPING}
_SECTIONS = {"update_channels", "rollback_policy", "notification_settings", "rollout_strategy", "ab_testing"}

SEED_FILE_MAX = 1 << 20
"""Bytes of a seed configuration file read at most."""


def _rule(path: str) -> Rule | None:
    parts = path.split(".")
    candidates = [path, ".".join([parts[0], "*", *parts[2:]]) if len(parts) > 2 else "", f"{parts[0]}.*"]
    return next((_RULES[c] for c in candidates if c in _RULES), None)


def _flatten(seed: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(dotted path, value)`` for every leaf the table may know; sections one or two levels deep."""
    out: list[tuple[str, Any]] = []
    for key, value in seed.items():
        if key in _SECTIONS and isinstance(value, Mapping):
            for sub, inner in value.items():
                if key == "update_channels" and isinstance(inner, Mapping):
                    out += [(f"{key}.{sub}.{leaf}", v) for leaf, v in inner.items()]
                else:
                    out.append((f"{key}.{sub}", inner))
        else:
            out.append((str(key), value))
    return out


def translate(seed: UpdateConfig | Mapping[str, Any], cfg: ClientConfig) -> tuple[Changes, list[str]]:
    """Our config changes and the warning lines for the seed's settings (nothing is written)."""
    items = ([(f.name, getattr(seed, f.name)) for f in fields(seed)] if isinstance(seed, UpdateConfig)
             else _flatten(seed))
    changes: Changes = {}
    warnings: list[str] = []
    for path, value in items:
        rule = _rule(path)
        if rule is None:
            warnings.append(f"seed config key {path!r} means nothing here and is ignored (docs/API.md lists the "
                            "keys that map)")
            continue
        warning = rule.convert(path, value, changes, cfg)
        if warning:
            warnings.append(f"seed config key {path!r}: {warning}")
    return changes, warnings


def read_file(path: Path) -> dict[str, Any]:
    """The seed's JSON configuration file (``config/update_config.json``), parsed by the one bounded decoder."""
    try:
        data = fsutil.read_regular(Path(path), SEED_FILE_MAX, follow=True)
        return boundedjson.load_object(data, str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the seed configuration {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # FormatError: not JSON, not an object, too deep, ...
        raise ConfigError(f"the seed configuration {path} is not usable JSON: {exc}") from None


def apply(install_dir: Path, seed: UpdateConfig | Mapping[str, Any] | str | Path) -> list[str]:
    """Write the seed's settings into ``install_dir``'s config.toml (all validated together, or a
    ``ConfigError`` and nothing changes); log and return the warning lines. A ``str``/``Path`` is
    the seed's JSON file."""
    from . import config as config_mod

    if isinstance(seed, str | Path):
        seed = read_file(Path(seed))
    changes, warnings = translate(seed, config_mod.load(install_dir))
    if changes:
        config_mod.update_values(install_dir, changes)
    for line in warnings:
        log.warning("%s", line)
    return warnings
