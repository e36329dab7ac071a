"""The Windows switch (a pointer file replaced atomically) exercised on this platform.

Windows itself cannot run here; the pointer-file code path is the same on every OS, so it is
selected by hand and driven through real installs, an automatic rollback and a manual one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import slots
from pinnacle_updates.client.errors import HealthCheckError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository


def test_pointer_file_switches_slots(monkeypatch: pytest.MonkeyPatch, repo: Repository, keystore: KeyStore,
                                     source, tmp_path: Path) -> None:
    monkeypatch.setattr(slots, "USE_POINTER", True)
    for version, extra in (("1.0.0", {}), ("1.1.0", {}), ("1.2.0", {"BROKEN": "yes"})):
        ops.publish(repo, keystore, ops.PublishRequest("stable", version, "patch", "any", source(version, extra),
                                                       entry_point="bin/app"))
    install_dir = tmp_path / "install"
    config_mod.init(install_dir, str(repo.path), repo.metadata_dir / "1.root.json", "stable", "any",
                    health_command="test ! -e BROKEN", health_retries=1, health_interval=0.0)
    installer = Installer(install_dir)
    assert installer.layout.pointer

    installer.install("1.0.0")
    pointer = install_dir / slots.POINTER_FILE
    assert pointer.read_text().strip() == "slots/a"
    assert not (install_dir / "current").exists()
    installer.install("1.1.0")
    assert pointer.read_text().strip() == "slots/b"
    assert installer.entry_point() == (install_dir / "slots" / "b" / "bin" / "app").resolve()

    with pytest.raises(HealthCheckError):
        installer.install("1.2.0")
    assert pointer.read_text().strip() == "slots/b"
    assert installer.status()["version"] == "1.1.0"

    installer.install("1.0.0", force=True)
    installer.rollback()
    assert pointer.read_text().strip() == "slots/b" and installer.status()["version"] == "1.1.0"
    assert installer.verify().ok
