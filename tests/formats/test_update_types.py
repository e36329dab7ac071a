"""Update types are one enum carrying their policy; the fleet controls take their default from it.
(The config schema's and the publisher CLI's lists are pinned in tests/client/test_policy.py and
tests/publisher/test_publish.py.)"""

from __future__ import annotations

import inspect

from pinnacle_updates.formats import fleet
from pinnacle_updates.formats.index import DEFAULT_SKIP_RAMP_TYPES, UpdateType

T = UpdateType


def test_each_type_carries_its_policy() -> None:
    assert [t.value for t in UpdateType] == ["patch", "minor", "major", "security", "hotfix"]
    assert {t for t in UpdateType if t.urgent} == {T.SECURITY, T.HOTFIX}
    assert {t for t in UpdateType if t.auto_installs} == {T.PATCH, T.SECURITY, T.HOTFIX}
    assert {t for t in UpdateType if t.needs_confirmation} == {T.MAJOR}
    assert DEFAULT_SKIP_RAMP_TYPES == (T.SECURITY, T.HOTFIX)  # declaration order: config.toml writes it so
    assert all(t.auto_installs for t in UpdateType if t.urgent)  # urgent is auto-install whatever the setting


def test_the_fleet_default_is_the_enum_default() -> None:
    default = inspect.signature(fleet.evaluate).parameters["skip_ramp_types"].default
    assert default is DEFAULT_SKIP_RAMP_TYPES
