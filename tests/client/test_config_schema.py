"""client/config.py is the one config schema: the policy defaults, the update types and every
settings read in the client come from it (or from what it derives from), never from a copy."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from pinnacle_updates.client import config
from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.policy import UpdateConfig
from pinnacle_updates.formats.index import DEFAULT_SKIP_RAMP_TYPES, UpdateType

CLIENT = Path(config.__file__).resolve().parent
ACCESSORS = {"text": (str,), "integer": (int,), "number": (int, float), "flag": (bool,), "names": (list,)}


def test_an_untouched_config_gives_the_python_api_default_policy() -> None:
    cfg = config.validate({"repo_url": "https://updates.example", "client_id": "0" * 32})
    assert cfg.to_update_config() == replace(UpdateConfig(), platform="any")


def test_update_type_lists_and_validation_come_from_the_enum() -> None:
    assert config.KEYS["allowed_update_types"].default == [t.value for t in UpdateType]
    assert config.KEYS["skip_ramp_types"].default == [t.value for t in DEFAULT_SKIP_RAMP_TYPES]
    assert config.KEYS["auto_install"].help == "install patch releases by themselves (security/hotfix always)"
    for key in ("allowed_update_types", "skip_ramp_types"):
        assert config.parse_value(key, ", ".join(UpdateType)) == [t.value for t in UpdateType]
        with pytest.raises(ConfigError, match=r"unknown update type 'huge' \(known: patch, minor, major, security"):
            config.parse_value(key, "patch, huge")


def test_every_settings_read_names_a_schema_key_of_its_type() -> None:
    """``cfg.text("channel")`` and its kin anywhere in the client: the key exists in ``KEYS`` and the
    accessor matches its type, so a misspelt or retyped key fails here rather than at run time."""
    reads = []
    for path in sorted(CLIENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ACCESSORS
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                reads.append((f"{path.relative_to(CLIENT)}:{node.lineno}", node.func.attr, node.args[0].value))
    assert len(reads) > 20  # the scan finds the reads (installer, hooks, agent, ...)
    wrong = [(where, accessor, key) for where, accessor, key in reads
             if key not in config.KEYS or config.KEYS[key].type not in ACCESSORS[accessor]]
    assert wrong == []
