"""The seed's configuration loads as written (client.seed_compat): its ``UpdateConfig(...)`` sample passed
as ``AutoUpdater(config)``, and its sample JSON configuration file (tests/data/seed_update_config.json,
copied verbatim from the seed's README), drive a real install from a real repository served on
127.0.0.1. Keys that mean nothing here give one warning line each; bad values change nothing."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pinnacle_updates.client import AutoUpdater, UpdateConfig, UpdateType, config
from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.client.seed_compat import MAPPING, read_file, translate
from tests.helpers_client import ROOT, Repo, app_files, env, make_repo, publish, serve

SEED_FILE = Path(__file__).resolve().parents[1] / "data" / "seed_update_config.json"

# the seed README's "Staged Rollouts" and "A/B Testing" samples, as written there
SEED_ROLLOUT = {
    "rollout_strategy": {
        "type": "percentage",
        "initial_percentage": 10,
        "increase_percentage": 25,
        "increase_interval": 3600,
        "health_check_interval": 300,
    }
}
SEED_AB = {"ab_testing": {"enabled": True, "test_group_percentage": 20, "control_group_percentage": 80,
                          "metrics": ["performance", "stability", "user_satisfaction"]}}


def _seed_update_config() -> UpdateConfig:
    """The seed README's "Update Policies" sample, as written there (but the import line)."""
    config = UpdateConfig(
        enabled=True,                    # Enable automatic updates
        check_interval=3600,            # Check every hour
        auto_install=False,             # Require confirmation
        backup_before_update=True,      # Create backup before updates
        max_rollback_days=7,           # Keep backups for 7 days
        allowed_update_types=[
            UpdateType.PATCH,          # Allow patch updates
            UpdateType.SECURITY,       # Allow security updates
            UpdateType.HOTFIX          # Allow hotfix updates
        ],
        excluded_paths=[
            'logs/',                   # Don't update logs
            'uploads/',               # Don't update uploads
            'temp/'                   # Don't update temp files
        ]
    )  # fmt: skip
    return config


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """One repository for the module (only the install test adds a release to it, at its end)."""
    repo = make_repo(tmp_path_factory.mktemp("publisher"))
    publish(repo, "1.0.0", {**app_files("1.0.0"), "logs/README": "shipped\n"})
    return repo


def _init(tmp_path: Path, url: str, repo: Repo) -> Path:
    install = tmp_path / "install"
    config.init(install, url, repo.root_json, "stable", "any", health_command="test -f healthy",
                health_interval=0.0, health_retries=1)
    return install


def test_the_seed_config_drives_a_real_install(tmp_path: Path, repo: Repo, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with serve(repo.dir) as url:
        install = _init(tmp_path, url, repo)
        monkeypatch.setenv("PINNACLE_INSTALL_DIR", str(install))
        seed_config = _seed_update_config()
        with caplog.at_level(logging.WARNING, logger="pinnacle.updater"):
            updater = AutoUpdater(seed_config)  # the seed's call, as written
        assert caplog.records == []  # every UpdateConfig field means something here
        settings = updater.settings()
        assert settings["auto_install"] is False and settings["max_rollback_days"] == 7
        assert settings["allowed_update_types"] == ["patch", "security", "hotfix"]
        assert settings["persistent_paths"] == ["logs", "uploads", "temp"]

        with caplog.at_level(logging.WARNING, logger="pinnacle.updater"):
            updater = AutoUpdater(json.loads(SEED_FILE.read_text()))  # the seed's file, as loaded by json
        warned = [r.getMessage() for r in caplog.records]
        assert all("\n" not in w for w in warned)
        assert sorted(w.split("'")[1] for w in warned) == [
            "notification_settings.email_notifications", "update_channels.beta.url", "update_channels.stable.url"]
        settings = updater.settings()
        assert settings["health_timeout"] == 300.0 and settings["max_rollback_attempts"] == 3
        assert settings["notify_on"] == ["failure", "rollback"] and settings["webhook_url"] == ""

        assert updater.check().version == "1.0.0"
        result = updater.install()
        assert result.version == "1.0.0"
        assert (install / "current" / "VERSION").read_text() == "1.0.0\n"
        assert (install / "current" / "logs").is_symlink()  # excluded_paths became persistent paths
        assert (install / "data" / "logs" / "README").read_text() == "shipped\n"

        # the seed's allowed_update_types rule this install: a minor release is not offered
        publish(repo, "1.1.0", app_files("1.1.0"), type="minor")
        check = updater.check()
        assert not check.update_available and "minor" in check.reason


def test_the_seed_file_path_and_publisher_keys(tmp_path: Path, repo: Repo,
                                               caplog: pytest.LogCaptureFixture) -> None:
    install = _init(tmp_path, str(repo.dir), repo)
    cfg = config.load(install)
    changes, warnings = translate({**SEED_ROLLOUT, **SEED_AB, "channel": "beta", "no_such_key": 1}, cfg)
    assert changes == {}
    assert any("'rollout_strategy.health_check_interval'" in w and "watch --interval" in w for w in warnings)
    assert any("'ab_testing.test_group_percentage'" in w and "--ab-test-percentage" in w for w in warnings)
    assert any("'channel'" in w and "switch_channel('beta')" in w for w in warnings)
    assert any("'no_such_key' means nothing here" in w for w in warnings)
    assert len(warnings) == len(SEED_ROLLOUT["rollout_strategy"]) + len(SEED_AB["ab_testing"]) + 2
    with caplog.at_level(logging.WARNING, logger="pinnacle.updater"):
        AutoUpdater(install, config=SEED_FILE)  # the file's path
    assert config.load(install)["health_timeout"] == 300.0 and len(caplog.records) == 3


def test_the_warning_reaches_stderr_as_one_line(tmp_path: Path, repo: Repo) -> None:
    """An application that configured no logging still sees each warning, one line each, on stderr."""
    install = _init(tmp_path, str(repo.dir), repo)
    code = ("from pinnacle_updates.client import AutoUpdater\n"
            "AutoUpdater({'update_channels': {'stable': {'url': 'https://x.example/stable', 'enabled': True}},"
            " 'rollout_strategy': {'health_check_interval': 300}}, )\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**env(), "PINNACLE_INSTALL_DIR": str(install)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "update_channels.stable.url" in lines[0] and "watch --interval" in lines[1]


@pytest.mark.parametrize(("seed", "expected"), [
    ({"check_interval": -5}, "check_interval"),
    ({"rollback_policy": {"rollback_timeout": "soon"}}, "health_timeout"),
    ({"excluded_paths": ["../etc/"]}, "persistent_paths"),
    ({"notification_settings": {"webhook_url": "ftp://x"}}, "webhook_url"),
])
def test_bad_seed_values_change_nothing(tmp_path: Path, repo: Repo, seed: dict[str, object], expected: str) -> None:
    install = _init(tmp_path, str(repo.dir), repo)
    before = (install / "config.toml").read_bytes()
    with pytest.raises(ConfigError, match=expected) as caught:
        AutoUpdater(install, config=seed)
    assert "\n" not in str(caught.value) and (install / "config.toml").read_bytes() == before


def test_without_an_install_dir_it_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, repo: Repo) -> None:
    monkeypatch.delenv("PINNACLE_INSTALL_DIR", raising=False)
    with pytest.raises(ConfigError, match="PINNACLE_INSTALL_DIR"):
        AutoUpdater(_seed_update_config())
    with pytest.raises(ConfigError, match="PINNACLE_INSTALL_DIR"):
        AutoUpdater()
    monkeypatch.setenv("PINNACLE_INSTALL_DIR", str(_init(tmp_path, str(repo.dir), repo)))
    assert AutoUpdater().settings()["channel"] == "stable"  # the seed's `updater = AutoUpdater()`
    with pytest.raises(ConfigError, match="not usable JSON"):
        read_file(_bad_json(tmp_path))


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "update_config.json"
    path.write_text('{"enabled": true,}')
    return path


def test_every_mapping_row_is_documented() -> None:
    api = (ROOT / "docs" / "API.md").read_text()
    for rule in MAPPING:
        assert f"`{rule.seed}`" in api, rule.seed
