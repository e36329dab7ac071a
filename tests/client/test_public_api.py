"""The public client API is what docs/API.md documents: ``pinnacle_updates.client.__all__`` lists
exactly the names documented there, each imports, and ``AutoUpdater``'s documented members are its
public members."""

from __future__ import annotations

import importlib
import inspect
import re

import pinnacle_updates.client as client_pkg
from pinnacle_updates.client import AutoUpdater
from tests.conftest import ROOT

API_MD = (ROOT / "docs" / "API.md").read_text()


def _documented_names() -> list[str]:
    return re.findall(r"^### `(\w+)`$", API_MD, flags=re.MULTILINE)


def _documented_members() -> set[str]:
    """The ``#### `name(...)``` entries of the ``AutoUpdater`` section."""
    section = API_MD.split("### `AutoUpdater`", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^#### `(\w+)", section, flags=re.MULTILINE))


def test_all_is_exactly_what_the_document_lists() -> None:
    documented = _documented_names()
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert sorted(client_pkg.__all__) == sorted(documented)


def test_each_public_name_imports() -> None:
    module = importlib.import_module("pinnacle_updates.client")
    for name in client_pkg.__all__:  # what `from pinnacle_updates.client import NAME` looks up
        assert getattr(module, name, None) is not None, name


def test_auto_updater_members_are_documented() -> None:
    public = {name for name, _ in inspect.getmembers(AutoUpdater) if not name.startswith("_")}
    public.add("installer")  # an instance attribute
    assert public == _documented_members()
