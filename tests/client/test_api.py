"""The Python API (`from client import AutoUpdater, UpdateConfig, UpdateType`) and `pinnacle-update run`."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from pinnacle_updates.client import AutoUpdater, UpdateConfig, UpdateType
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import run_cli


def _publish(repo: Repository, keystore: KeyStore, source, version: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    ops.publish(repo, keystore, ops.PublishRequest("stable", version, kind, "any", source(version),
                                                   entry_point="bin/app"))


def test_public_names() -> None:
    assert UpdateType.SECURITY.value == "security"
    assert UpdateConfig().auto_install is True


def test_continuous_loop_installs_what_policy_allows(repo: Repository, keystore: KeyStore, source,
                                                      tmp_path: Path) -> None:
    _publish(repo, keystore, source, "1.0.0", "minor")
    install_dir = tmp_path / "install"
    config_mod.init(install_dir, str(repo.path), repo.metadata_dir / "1.root.json", "stable", "any")
    updater = AutoUpdater(install_dir)
    assert updater.install("1.0.0").version == "1.0.0"

    # A patch, then an optional minor: the loop takes the patch by itself and leaves the minor.
    _publish(repo, keystore, source, "1.0.1", "patch")
    _publish(repo, keystore, source, "1.1.0", "minor")
    check = updater.check()
    assert check.version == "1.1.0" and not check.auto
    asyncio.run(updater.run_continuous_updates(iterations=1, rng=random.Random(1)))
    assert updater.installer.status()["version"] == "1.0.1"

    # With auto_install off, patches wait but a security release still goes in by itself.
    config_mod.set_value(install_dir, "auto_install", "false")
    _publish(repo, keystore, source, "1.1.1", "patch")
    asyncio.run(updater.run_continuous_updates(iterations=1))
    assert updater.installer.status()["version"] == "1.0.1"
    _publish(repo, keystore, source, "1.1.2", "security")
    asyncio.run(updater.run_continuous_updates(iterations=1))
    assert updater.installer.status()["version"] == "1.1.2"

    # Major releases never install unattended.
    _publish(repo, keystore, source, "2.0.0", "major")
    asyncio.run(updater.run_continuous_updates(iterations=1))
    assert updater.installer.status()["version"] == "1.1.2"


def test_run_execs_the_active_entry_point(repo: Repository, keystore: KeyStore, source, tmp_path: Path) -> None:
    _publish(repo, keystore, source, "1.0.0", "patch")
    _publish(repo, keystore, source, "1.1.0", "patch")
    install_dir = str(tmp_path / "install")
    run_cli("pinnacle-update", "--install-dir", install_dir, "init", "--repo", str(repo.path),
            "--root", str(repo.metadata_dir / "1.root.json"), "--platform", "any")
    run_cli("pinnacle-update", "--install-dir", install_dir, "install", "1.0.0")
    assert run_cli("pinnacle-update", "--install-dir", install_dir, "run", "--", "x").stdout == "app 1.0.0\n"
    run_cli("pinnacle-update", "--install-dir", install_dir, "install")
    assert run_cli("pinnacle-update", "--install-dir", install_dir, "run").stdout == "app 1.1.0\n"
