"""Custom channels end to end: `pinnacle-release channel add` creates `nightly` and `lts-2026` (targets
signs the delegation, the channel's new key its first index; also through the offline -o / sign /
publish flow), releases are published into them and promoted between any two channels, and a real
client served by nginx follows them with `pinnacle-update channel NAME`. Bad names are refused in
one line by the publisher and the client, and change nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pinnacle_updates.client.errors import ConfigError
from pinnacle_updates.formats.index import FormatError, check_channel
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools import rootsign
from pinnacle_updates.repo_tools.channels import add_channel
from pinnacle_updates.repo_tools.errors import PublishRefused
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import run_cli
from tests.helpers_client import Repo, app_files, init_client, make_repo, publish, serve, write_tree

BAD_NAMES = ["Nightly", "root", "snapshot", "stable-archive-00", "a/b", "-x", ".hidden", "x" * 65, "lts 2026",
             "nightly\n", "ünïcode", "", "timestamp", "..", "x-archive"]
GOOD_NAMES = ["nightly", "lts-2026", "customer.acme_1", "0", "x" * 64, "archive", "stable2"]
# through the command line (a process each); all of them in process below
CLI_BAD = ["Nightly", "root", "stable-archive-00", "nightly\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_one_rule_refuses(name: str) -> None:
    with pytest.raises(FormatError, match="bad channel name"):
        check_channel(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_the_one_rule_accepts(name: str) -> None:
    assert check_channel(name) == name


def _release(*args: str, ok: bool = True) -> str:
    return run_cli("pinnacle-release", *args, check=ok).stdout


def _metadata(repo: Repo) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((repo.dir / "metadata").iterdir())}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("template")
    publish(make_repo(base), "1.0.0", app_files("1.0.0"))
    return base


@pytest.fixture
def repo(tmp_path: Path, template: Path) -> Repo:
    """A private copy of a repository with stable 1.0.0 (keys in plain files, as the tests' key directories are)."""
    base = tmp_path / "publisher"
    shutil.copytree(template, base)
    return Repo(base / "repo", base / "keys")


def test_bad_channel_names_are_refused_in_one_line(repo: Repo) -> None:
    before = _metadata(repo)
    keys_before = (repo.keys / "keys.json").read_bytes()
    for name in CLI_BAD:
        proc = run_cli("pinnacle-release", "channel", "add", "--keys", str(repo.keys), str(repo.dir), "--", name,
                       check=False)
        assert proc.returncode == PublishRefused.exit_code, (name, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "bad channel name" in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr
    proc = run_cli("pinnacle-release", "channel", "add", str(repo.dir), "stable", "--keys", str(repo.keys), check=False)
    assert proc.returncode == PublishRefused.exit_code and "already exists" in proc.stderr
    proc = run_cli("pinnacle-release", "publish", str(repo.dir), str(repo.dir.parent / "src-stable-1.0.0"), "--keys",
                   str(repo.keys), "--channel", "Nightly", "--version", "2.0.0", "--type", "patch", "--platform", "any",
                   check=False)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "bad channel name" in proc.stderr
    assert _metadata(repo) == before and (repo.keys / "keys.json").read_bytes() == keys_before


def _publish(repo: Repo, channel: str, version: str, type: str = "patch") -> None:
    """In process (the command line is what the other steps test): one release into ``channel``."""
    source = repo.dir.parent / f"src-{channel}-{version}"
    write_tree(source, app_files(version))
    ops.publish(Repository(repo.dir), KeyStore(repo.keys), ops.PublishRequest(channel, version, type, "any", source))


def test_nightly_and_lts_published_promoted_and_followed(tmp_path: Path, repo: Repo) -> None:
    assert "added channel nightly" in _release("channel", "add", str(repo.dir), "nightly", "--keys", str(repo.keys))
    add_channel(Repository(repo.dir), KeyStore(repo.keys), "lts-2026")
    listed = _release("channel", "list", str(repo.dir)).split()
    assert sorted(listed) == ["alpha", "beta", "lts-2026", "nightly", "stable"]
    _publish(repo, "nightly", "1.1.0.dev1")
    _publish(repo, "nightly", "1.2.0.dev1", "minor")
    # promotion between any two channels, in any direction of the usual stable/beta/alpha order
    _release("promote", str(repo.dir), "--keys", str(repo.keys), "--from", "stable", "--to", "lts-2026",
             "--version", "1.0.0")
    for source, dest in (("nightly", "beta"), ("beta", "lts-2026")):
        ops.promote(Repository(repo.dir), KeyStore(repo.keys), source, dest, "1.1.0.dev1")

    install = tmp_path / "install"
    with serve(repo.dir) as url:
        def client(*args: str) -> subprocess.CompletedProcess[str]:
            return run_cli("pinnacle-update", "--install-dir", str(install), *args, check=False)

        updater = init_client(install, url, repo)
        updater.install()
        assert (install / "current" / "VERSION").read_text() == "1.0.0\n"
        switched = client("channel", "nightly", "--json")  # an upgrade: the switch, then an install
        assert switched.returncode == 0 and '"channel":"nightly"' in switched.stdout, switched.stderr
        updater.install()
        assert (install / "current" / "VERSION").read_text() == "1.2.0.dev1\n"
        assert 'channel = "nightly"' in (install / "config.toml").read_text()
        assert client("channel", "lts-2026", "--allow-downgrade").returncode == 0  # its newest is older: installed
        assert (install / "current" / "VERSION").read_text() == "1.1.0.dev1\n"
        assert updater.status()["channel"] == "lts-2026"

        before = (install / "config.toml").read_bytes()
        bad = client("channel", "Nightly")
        assert bad.returncode == ConfigError.exit_code and bad.stderr.count("\n") == 1
        assert "bad channel name" in bad.stderr
        missing = client("channel", "weekly")
        assert missing.returncode == ConfigError.exit_code and missing.stderr.count("\n") == 1
        assert "no channel 'weekly' (it offers alpha, beta, lts-2026, nightly, stable)" in missing.stderr
        assert (install / "config.toml").read_bytes() == before


def test_channel_add_with_offline_targets_keys(tmp_path: Path, repo: Repo) -> None:
    """Without the targets key: -o writes the next targets version; its holder signs; publish adds the channel."""
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.move(repo.keys / "targets-1.pem", offline / "targets-1.pem")
    before = _metadata(repo)
    proc = run_cli("pinnacle-release", "channel", "add", str(repo.dir), "customer-acme", "--keys", str(repo.keys),
                   check=False)
    assert proc.returncode == PublishRefused.exit_code and "pass -o FILE" in proc.stderr
    assert _metadata(repo) == before
    pending = tmp_path / "targets.next.json"
    out = _release("channel", "add", str(repo.dir), "customer-acme", "--keys", str(repo.keys), "-o", str(pending))
    assert "targets sign" in out and _metadata(repo) == before
    _release("targets", "sign", str(pending), "--key", str(offline / "targets-1.pem"))
    # what `targets publish REPO FILE --keys KEYS` runs
    rootsign.publish(Repository(repo.dir), "targets", pending.read_bytes(), KeyStore(repo.keys))
    assert "customer-acme" in _release("channel", "list", str(repo.dir)).split()
    _publish(repo, "customer-acme", "1.0.1")  # with the channel's own key, adopted into keys.json by the publish
    _release("verify", str(repo.dir))


def test_a_new_repository_starts_with_the_channels_named(tmp_path: Path) -> None:
    keys, repo_dir = tmp_path / "keys", tmp_path / "repo"
    bad = run_cli("pinnacle-release", "keys", "init", str(keys), "--insecure-plaintext", "--channel", "Nightly",
                  check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "bad channel name" in bad.stderr
    assert not keys.exists()
    _release("keys", "init", str(keys), "--insecure-plaintext", "--channel", "stable", "--channel", "nightly")
    assert "channels nightly, stable" in _release("init", str(repo_dir), "--keys", str(keys))
