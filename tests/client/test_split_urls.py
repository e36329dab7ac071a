"""Metadata from one place, artifacts from another (issue 17, class 11).

python-tuf's ``Updater`` takes a metadata base URL and a targets base URL; the client config has
``metadata_url`` and ``targets_url`` for them (empty: ``repo_url`` + ``metadata/`` and ``targets/``).
Here a repository published by the real publisher is split in two real servers on 127.0.0.1, each
holding only its half (an origin with ``metadata/``'s files at its root, a "CDN" with ``targets/``
under a prefix); ``repo_url`` names a port nothing listens on, so nothing can come from there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pinnacle_updates.client import AutoUpdater
from pinnacle_updates.client.errors import ConfigError, TrustError
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.client.repo_edits import CHANNEL, publish_versions
from tests.conftest import ServedRepo, run_cli, tree_digest
from tests.fixtures_repo import free_port
from tests.nginx_server import NginxServer


def _split(repository: Repository, origin: Path, cdn: Path) -> None:
    """Copy the repository into its two halves in upload order: targets first, timestamp last."""
    shutil.copytree(repository.targets_dir, cdn / "app" / "targets", dirs_exist_ok=True)
    names = sorted(p.name for p in repository.metadata_dir.iterdir())
    for name in [n for n in names if n != "timestamp.json"] + ["timestamp.json"]:
        origin.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repository.metadata_dir / name, origin / name)


def _cli(install_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("pinnacle-update", "--install-dir", str(install_dir), *args, check=False)


def _uris(server: ServedRepo) -> set[str]:
    return {r.uri for r in server.requests()} if isinstance(server, NginxServer) else set()


def test_metadata_from_one_server_and_artifacts_from_another(
    tmp_path: Path, repo: Repository, keystore: KeyStore, serve: Callable[[Path], ServedRepo],
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    origin_dir, cdn_dir = tmp_path / "origin", tmp_path / "cdn"
    _split(repo, origin_dir, cdn_dir)
    origin, cdn = serve(origin_dir), serve(cdn_dir)
    nowhere = f"http://127.0.0.1:{free_port()}/"
    install_dir = tmp_path / "client"

    init = _cli(install_dir, "init", "--repo", nowhere, "--root", str(repo.metadata_dir / "1.root.json"),
                "--platform", "any", "--metadata-url", origin.url, "--targets-url", f"{cdn.url}app/targets")
    assert init.returncode == 0, init.stderr
    assert (install_dir / "config.toml").read_text().count(f'targets_url = "{cdn.url}app/targets"') == 1

    first = _cli(install_dir, "install")
    assert first.returncode == 0, first.stderr
    assert (install_dir / "current" / "VERSION").read_text() == "1.0.0\n"

    # A new release reaches both halves; the update is a delta fetched from the CDN.
    publish_versions(repo, keystore, tmp_path, "1.1.0")
    _split(repo, origin_dir, cdn_dir)
    updater = AutoUpdater(install_dir)  # the Python API, as the agent drives it
    found = updater.check()
    assert (found.version, found.path) == ("1.1.0", "delta:1.0.0->1.1.0")
    result = updater.install()
    assert (result.outcome, result.version, result.route["path"]) == ("committed", "1.1.0", "delta")
    assert updater.verify().ok
    repository = next(c for c in updater.doctor() if c.name == "repository")
    assert repository.ok, repository
    reached = f"metadata {origin.url} and targets {cdn.url}app/targets/ reachable; 2 release(s)"
    assert repository.detail.startswith(reached), repository.detail

    if isinstance(origin, NginxServer) and isinstance(cdn, NginxServer):
        origin.wait_for(lambda rs: any(r.uri == "/timestamp.json" for r in rs))
        cdn.wait_for(lambda rs: any(r.uri.endswith(".pdelta") for r in rs))
        assert all(u.endswith(".json") and "/" not in u[1:] for u in _uris(origin)), _uris(origin)
        assert all(u.startswith("/app/targets/stable/") for u in _uris(cdn)), _uris(cdn)


@pytest.mark.parametrize("local_metadata", [False, True], ids=["two-servers", "metadata-from-a-directory"])
def test_a_targets_server_serving_other_bytes_is_refused_in_one_line(
    tmp_path: Path, repo: Repository, keystore: KeyStore, serve: Callable[[Path], ServedRepo], local_metadata: bool,
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    origin_dir, cdn_dir = tmp_path / "origin", tmp_path / "cdn"
    _split(repo, origin_dir, cdn_dir)
    metadata_url = str(origin_dir) if local_metadata else serve(origin_dir).url
    cdn = serve(cdn_dir)
    install_dir = tmp_path / "client"
    updater = AutoUpdater(install_dir)
    updater.init(f"http://127.0.0.1:{free_port()}/", repo.metadata_dir / "1.root.json", CHANNEL, "any",
                 metadata_url=metadata_url, targets_url=f"{cdn.url}app/targets/", health_command="true")
    assert updater.install().version == "1.0.0"
    running = tree_digest(install_dir / "current")

    publish_versions(repo, keystore, tmp_path, "1.1.0")
    _split(repo, origin_dir, cdn_dir)
    for served in (cdn_dir / "app" / "targets" / CHANNEL / "any" / "1.1.0").iterdir():  # the CDN serves other bytes
        data = bytearray(served.read_bytes())
        data[len(data) // 2] ^= 0xFF
        served.write_bytes(bytes(data))
    proc = _cli(install_dir, "install")
    assert proc.returncode == TrustError.exit_code, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("pinnacle-update: error: target stable/any/1.1.0/"), line
    assert "failed verification: sha256 hash " in line and "(tampered or corrupted)" in line
    assert tree_digest(install_dir / "current") == running
    assert _cli(install_dir, "status").returncode == 0


@pytest.mark.parametrize("value", ["http://cdn example/", "ftp://cdn.example/", "http://cdn.example:99999/",
                                   "https://-bad-.example/", "file:///dir\x07"])
def test_bad_split_urls_are_refused_when_set(tmp_path: Path, repo: Repository, value: str) -> None:
    install_dir = tmp_path / "client"
    updater = AutoUpdater(install_dir)
    updater.init(str(repo.path), repo.metadata_dir / "1.root.json", CHANNEL, "any")
    for key in ("metadata_url", "targets_url"):
        with pytest.raises(ConfigError, match=rf"^config key '{key}': ") as caught:
            updater.configure({key: value})
        assert "\n" not in str(caught.value)
        proc = _cli(install_dir, "config", "set", key, value)
        assert proc.returncode == ConfigError.exit_code and proc.stderr.count("\n") == 1, proc.stderr
    with pytest.raises(ConfigError, match=r"^config key 'targets_url': "):
        AutoUpdater(tmp_path / "other").init(str(repo.path), repo.metadata_dir / "1.root.json", CHANNEL, "any",
                                             targets_url=value)
    assert not (tmp_path / "other" / "config.toml").exists()


def test_an_archived_release_installs_from_the_split_repository(
    tmp_path: Path, keystore: KeyStore, serve: Callable[[Path], ServedRepo],
) -> None:
    """An old release out of the live window: its archive record (through the channel's hashed bins,
    from the metadata server) and its files (from the CDN) are found the same way."""
    repository = Repository(tmp_path / "repo")
    ops.init_repository(repository, keystore, live_window=1, archive_bits=1)
    publish_versions(repository, keystore, tmp_path, "1.0.0", "1.1.0")
    origin_dir, cdn_dir = tmp_path / "origin", tmp_path / "cdn"
    _split(repository, origin_dir, cdn_dir)
    origin, cdn = serve(origin_dir), serve(cdn_dir)
    install_dir = tmp_path / "client"
    updater = AutoUpdater(install_dir)
    updater.init(f"http://127.0.0.1:{free_port()}/", repository.metadata_dir / "1.root.json", CHANNEL, "any",
                 metadata_url=origin.url, targets_url=f"{cdn.url}app/targets", health_command="true")
    assert [r.version for r in updater.releases()] == ["1.1.0"]  # 1.0.0 is archived
    assert updater.install().version == "1.1.0"
    old = updater.install("1.0.0", force=True)
    assert (old.outcome, old.version) == ("committed", "1.0.0")
    assert (install_dir / "current" / "VERSION").read_text() == "1.0.0\n"
    if isinstance(cdn, NginxServer):
        cdn.wait_for(lambda rs: any("/1.0.0/" in r.uri for r in rs))
        assert any(r.uri.endswith(".release.json") for r in cdn.requests())  # the record came from the CDN
