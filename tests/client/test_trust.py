"""client.trust against real TUF repositories on disk, served by a real HTTP server process
(``repo_tools.serve``) or read as a directory, with the attacks TUF exists to stop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard
from securesystemslib.signer import CryptoSigner

from pinnacle_updates.client import trust
from pinnacle_updates.client.errors import ConfigError, RepositoryError, StateError, TrustError
from pinnacle_updates.client.transport import TransportSettings
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats.fsutil import TEMP_PREFIX
from pinnacle_updates.formats.index import ChannelIndex, TargetRef, UpdateType
from tests.fixtures_repo import (
    ROOT_DIR,
    FixtureRepo,
    Script,
    ScriptedServer,
    StaticServer,
    flip_byte,
    free_port,
    start_static_server,
)

FAST = TransportSettings(connect_timeout=2, read_timeout=2, retries=2, backoff_initial=0.001, backoff_max=0.002)
PLATFORM = "linux-x86_64"


@pytest.fixture
def repo(tmp_path: Path) -> FixtureRepo:
    r = FixtureRepo(tmp_path / "repo")
    r.publish("stable", "1.0.0", UpdateType.PATCH)
    return r


@pytest.fixture
def server(repo: FixtureRepo) -> Iterator[StaticServer]:
    s = start_static_server(repo.path)
    yield s
    s.stop()


ClientFactory = Callable[..., RepositoryClient]


@pytest.fixture
def make_client(tmp_path: Path, repo: FixtureRepo) -> Iterator[ClientFactory]:
    """``make_client(url)``: a client with its own metadata dir and cache under tmp_path (the
    same dirs on every call, as one installed machine would have)."""
    made: list[RepositoryClient] = []

    def make(url: str, settings: TransportSettings = FAST, root: bytes | None = None) -> RepositoryClient:
        c = RepositoryClient(
            url, tmp_path / "client" / "metadata", tmp_path / "client" / "cache", root or repo.root_bytes, settings
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def cache_files(tmp_path: Path) -> list[str]:
    cache = tmp_path / "client" / "cache"
    return sorted(os.listdir(cache)) if cache.exists() else []


# -- the happy path, three ways ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "path", "file-url"])
def test_refresh_index_and_fetch(kind: str, repo: FixtureRepo, make_client: ClientFactory) -> None:
    served = start_static_server(repo.path) if kind == "http" else None
    try:
        url = {"http": served.url if served else "", "path": str(repo.path), "file-url": repo.path.as_uri()}[kind]
        client = make_client(url)
        client.refresh()
        index = client.channel_index("stable")
        release = index.latest(PLATFORM)
        assert release is not None and release.version == "1.0.0"

        seen: list[tuple[int, int]] = []
        path = client.fetch_target(release.full, lambda done, total: seen.append((done, total)))
        assert path.read_bytes() == repo.target_file(release.full.path).read_bytes()
        assert seen and seen[-1] == (release.full.length, release.full.length)
        assert all(done <= total for done, total in seen)

        manifest = client.fetch_manifest(release)
        assert manifest.version == "1.0.0" and {e.path for e in manifest.entries} == {"README", "bin/app"}
        assert client.stats.requests > 0 and client.stats.bytes > release.full.length

        # a second fetch is served from the verified cache: no new request
        before = client.stats.requests
        assert client.fetch_target(release.full) == path
        assert client.stats.requests == before
    finally:
        if served:
            served.stop()


def test_new_release_is_seen_after_refresh(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    client = make_client(server.url)
    client.refresh()
    assert [r.version for r in client.channel_index("stable").releases] == ["1.0.0"]
    repo.publish("stable", "1.1.0", UpdateType.MINOR)
    client.refresh()
    assert client.channel_index("stable").latest(PLATFORM).version == "1.1.0"  # type: ignore[union-attr]


def test_channel_index_refreshes_implicitly(repo: FixtureRepo, make_client: ClientFactory) -> None:
    assert make_client(str(repo.path)).channel_index("stable").channel == "stable"


def test_root_rotation_is_followed(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    make_client(server.url).refresh()
    repo.rotate_root(CryptoSigner.generate_ed25519())
    client = make_client(server.url)  # still bootstrapped from the shipped v1 root
    client.refresh()
    assert client.channel_index("stable").latest(PLATFORM) is not None
    assert (Path(client.metadata_dir) / "root_history" / "2.root.json").exists()


# -- tampered and wrong targets ----------------------------------------------------------------


def test_tampered_target_is_refused_and_not_cached(
    repo: FixtureRepo, server: StaticServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(server.url)
    release = client.channel_index("stable").releases[0]
    flip_byte(repo.target_file(release.full.path), 10)
    with pytest.raises(TrustError) as err:
        client.fetch_target(release.full)
    signed = release.full.sha256
    assert re.fullmatch(  # the algorithm, what was received and what is signed (abbreviated: still distinct)
        rf"target stable/linux-x86_64/1\.0\.0/full\.tar\.zst failed verification: "
        rf"sha256 hash (?!{signed[:16]})[0-9a-f]{{16}}\.\.\. instead of the signed {signed[:16]}\.\.\. "
        r"\(tampered or corrupted\)",
        str(err.value),
    ), err.value
    assert not any("full.tar.zst" in name for name in cache_files(tmp_path))


def test_tampered_cached_target_is_downloaded_again(
    repo: FixtureRepo, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(str(repo.path))
    release = client.channel_index("stable").releases[0]
    path = client.fetch_target(release.full)
    flip_byte(path)
    assert client.fetch_target(release.full).read_bytes() == repo.target_file(release.full.path).read_bytes()


def test_longer_target_is_refused(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    client = make_client(server.url)
    release = client.channel_index("stable").releases[0]
    with open(repo.target_file(release.full.path), "ab") as f:
        f.write(b"x")
    with pytest.raises(
        TrustError, match=r"full.tar.zst failed verification: longer than the \d+ bytes expected \(tampered"
    ):
        client.fetch_target(release.full)


def test_shorter_target_is_refused(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    client = make_client(server.url)
    release = client.channel_index("stable").releases[0]
    stored = repo.target_file(release.full.path)
    stored.write_bytes(stored.read_bytes()[:-1])
    n = release.full.length
    with pytest.raises(TrustError, match=rf"failed verification: length {n - 1} instead of the signed {n} "):
        client.fetch_target(release.full)


def test_target_not_in_signed_metadata(repo: FixtureRepo, make_client: ClientFactory) -> None:
    client = make_client(str(repo.path))
    ref = TargetRef("stable/linux-x86_64/9.9/full.tar.zst", 10, "0" * 64)
    with pytest.raises(TrustError, match=r"^stable/linux-x86_64/9.9/full.tar.zst is not listed in signed metadata$"):
        client.fetch_target(ref)


def test_ref_disagreeing_with_signed_metadata(repo: FixtureRepo, make_client: ClientFactory) -> None:
    client = make_client(str(repo.path))
    real = client.channel_index("stable").releases[0].full
    where = rf"^{real.path} \(as referenced\): {real.path} does not match its signed target metadata"
    with pytest.raises(TrustError, match=rf"{where} \(length {real.length + 1} referenced, {real.length} signed\)"):
        client.fetch_target(TargetRef(real.path, real.length + 1, real.sha256))
    digests = rf"f{{16}}\.\.\. referenced, {real.sha256[:16]}\.\.\. signed"
    with pytest.raises(TrustError, match=rf"{where} \(sha256 {digests}\): refused$"):
        client.fetch_target(TargetRef(real.path, real.length, "f" * 64))


def test_missing_target_is_a_repository_error(
    repo: FixtureRepo, server: StaticServer, make_client: ClientFactory
) -> None:
    client = make_client(server.url)
    release = client.channel_index("stable").releases[0]
    repo.target_file(release.full.path).unlink()
    with pytest.raises(RepositoryError) as err:
        client.fetch_target(release.full)
    assert not isinstance(err.value, TrustError)
    assert str(err.value).startswith("target stable/linux-x86_64/1.0.0/full.tar.zst is not on the repository (")
    assert "HTTP 404" in str(err.value)


# -- the channel index -------------------------------------------------------------------------


def test_index_altered_after_signing(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    stored = repo.target_file("stable/index.json")
    stored.write_bytes(stored.read_bytes().replace(b'"patch"', b'"major"'))
    with pytest.raises(TrustError, match=r"^target stable/index.json failed verification: sha256 hash \w{16}\.\.\. "):
        make_client(server.url).channel_index("stable")


def test_index_naming_an_unsigned_artifact(repo: FixtureRepo, make_client: ClientFactory) -> None:
    release = repo.build_release("stable", "1.1.0")
    del repo.roles["stable"].signed.targets[release.full.path]  # index names it, role does not sign it
    repo.set_index("stable", repo.indexes["stable"].with_release(release, "now"))
    repo.commit("stable")
    with pytest.raises(TrustError, match=r"1.1.0/full.tar.zst is not listed in signed metadata"):
        make_client(str(repo.path)).channel_index("stable")


def test_index_pointing_into_another_channel(repo: FixtureRepo, make_client: ClientFactory) -> None:
    beta = repo.publish("beta", "2.0.0")
    repo.set_index("stable", repo.indexes["stable"].with_release(beta, "now"))
    repo.commit("stable")
    with pytest.raises(TrustError, match=r"release 2.0.0 \(linux-x86_64\) in stable/index.json points outside"):
        make_client(str(repo.path)).channel_index("stable")


def test_index_claiming_another_channel(repo: FixtureRepo, make_client: ClientFactory) -> None:
    repo.set_index("stable", ChannelIndex(channel="beta"))
    repo.commit("stable")
    with pytest.raises(TrustError, match=r"claims to be channel 'beta'"):
        make_client(str(repo.path)).channel_index("stable")


def test_unpublished_channel_has_no_index(repo: FixtureRepo, make_client: ClientFactory) -> None:
    with pytest.raises(TrustError, match=r"^alpha/index.json is not listed in signed metadata$"):
        make_client(str(repo.path)).channel_index("alpha")


def test_bad_channel_name(repo: FixtureRepo, make_client: ClientFactory) -> None:
    with pytest.raises(RepositoryError, match=r"bad channel name"):
        make_client(str(repo.path)).channel_index("../etc")


# -- manifests ---------------------------------------------------------------------------------


def test_manifest_for_another_version_is_refused(repo: FixtureRepo, make_client: ClientFactory) -> None:
    release = repo.build_release("stable", "1.1.0", manifest_version="1.0.0")
    repo.set_index("stable", repo.indexes["stable"].with_release(release, "now"))
    repo.commit("stable")
    client = make_client(str(repo.path))
    bad = client.channel_index("stable").find("1.1.0", PLATFORM)
    assert bad is not None
    with pytest.raises(TrustError, match=r"describes version 1.0.0"):
        client.fetch_manifest(bad)


def test_manifest_decompression_is_bounded(
    repo: FixtureRepo, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(str(repo.path))
    release = client.channel_index("stable").releases[0]
    monkeypatch.setattr(trust, "MANIFEST_MAX_BYTES", 100)
    with pytest.raises(RepositoryError, match=r"decompresses to more than"):
        client.fetch_manifest(release)


def test_manifest_that_is_not_zstd(repo: FixtureRepo, make_client: ClientFactory) -> None:
    release = repo.build_release("stable", "1.1.0")
    bad = repo.add_target(release.manifest.path, b"not zstd at all")
    release = replace(release, manifest=bad)
    repo.set_index("stable", repo.indexes["stable"].with_release(release, "now"))
    repo.commit("stable")
    client = make_client(str(repo.path))
    with pytest.raises(RepositoryError, match=r"is not valid zstd data"):
        client.fetch_manifest(client.channel_index("stable").releases[-1])


# -- metadata attacks --------------------------------------------------------------------------


def test_expired_timestamp(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    expired = datetime(2020, 11, 20, tzinfo=UTC)
    repo.write_timestamp(expires=expired)
    with pytest.raises(TrustError) as err:
        make_client(server.url).refresh()
    message = str(err.value)
    assert message.startswith(
        "timestamp metadata has expired (2020-11-20T00:00:00Z); the repository must be refreshed by its publisher"
    )
    assert "\n" not in message


def test_expired_timestamp_after_a_good_one(
    repo: FixtureRepo, server: StaticServer, make_client: ClientFactory
) -> None:
    make_client(server.url).refresh()
    repo.commit(timestamp_expires=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(TrustError, match=r"^timestamp metadata has expired"):
        make_client(server.url).refresh()


def test_expired_channel_role(repo: FixtureRepo, make_client: ClientFactory) -> None:
    repo.roles["stable"].signed.expires = datetime(2021, 1, 1, tzinfo=UTC)
    repo.commit("stable")
    with pytest.raises(TrustError, match=r"^stable metadata has expired"):
        make_client(str(repo.path)).channel_index("stable")


def test_rolled_back_timestamp(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    old = repo.metadata_bytes("timestamp.json")
    old_version = repo.timestamp.signed.version
    repo.publish("stable", "1.1.0")
    make_client(server.url).refresh()  # the client now trusts the newer timestamp
    (repo.metadata_dir / "timestamp.json").write_bytes(old)  # an attacker replays the old one
    with pytest.raises(TrustError) as err:
        make_client(server.url).refresh()
    assert str(err.value) == (
        f"timestamp version {old_version} is older than the trusted version {old_version + 1}: rollback attack refused"
    )


def test_rolled_back_snapshot(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    old_snapshot = repo.snapshot.signed.version
    repo.publish("stable", "1.1.0")
    make_client(server.url).refresh()
    # a (stolen) timestamp key signs a newer timestamp that points at the older snapshot
    repo.write_timestamp(snapshot_version=old_snapshot)
    with pytest.raises(TrustError) as err:
        make_client(server.url).refresh()
    assert str(err.value) == (
        f"snapshot version {old_snapshot} is older than the trusted version {old_snapshot + 1}: rollback attack refused"
    )


def test_timestamp_signed_by_the_wrong_key(repo: FixtureRepo, server: StaticServer, make_client: ClientFactory) -> None:
    repo.write_timestamp(signer=CryptoSigner.generate_ed25519())
    with pytest.raises(TrustError) as err:
        make_client(server.url).refresh()
    assert str(err.value) == (
        "timestamp metadata is not signed by the trusted keys (0 of 1 required signatures valid): refused"
    )


def test_channel_role_signed_by_another_channel_key(repo: FixtureRepo, make_client: ClientFactory) -> None:
    repo.resign_role("stable", repo.signers["beta"])
    version = repo.roles["stable"].signed.version
    with pytest.raises(TrustError) as err:
        make_client(str(repo.path)).channel_index("stable")
    assert str(err.value) == (
        f"stable metadata v{version} is not signed by the trusted keys (0 of 1 required signatures valid): refused"
    )


def test_tampered_snapshot(repo: FixtureRepo, make_client: ClientFactory) -> None:
    name = f"{repo.snapshot.signed.version}.snapshot.json"
    flip_byte(repo.metadata_dir / name, 40)
    with pytest.raises(TrustError, match=rf"^snapshot metadata v{repo.snapshot.signed.version} failed verification"):
        make_client(str(repo.path)).refresh()


def test_garbage_timestamp(repo: FixtureRepo, make_client: ClientFactory) -> None:
    (repo.metadata_dir / "timestamp.json").write_bytes(b"<html>captive portal</html>")
    with pytest.raises(TrustError, match=r"^timestamp metadata is not valid TUF metadata"):
        make_client(str(repo.path)).refresh()


def test_invalid_shipped_root(repo: FixtureRepo, make_client: ClientFactory) -> None:
    with pytest.raises(TrustError, match=r"^the shipped root metadata is not valid TUF metadata"):
        make_client(str(repo.path), root=b"{}").refresh()


# -- network failures --------------------------------------------------------------------------


def test_repository_missing(tmp_path: Path, make_client: ClientFactory) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError) as err:
        make_client(str(tmp_path / "empty")).refresh()
    assert str(err.value).startswith("timestamp metadata is not on the repository (file://")


def test_server_down(make_client: ClientFactory) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(RepositoryError) as err:
        client.refresh()
    assert not isinstance(err.value, TrustError)
    assert "after 3 attempt(s)" in str(err.value)
    assert client.stats.requests == 3 and client.stats.retries == 2  # root probe: first, and 2 retries


def test_server_errors_are_retried_until_success(repo: FixtureRepo, make_client: ClientFactory) -> None:
    with ScriptedServer(repo.path, Script(failures=2, status=500)) as srv:
        client = make_client(srv.url)
        client.refresh()
        assert client.channel_index("stable").releases
        assert srv.hits["/metadata/timestamp.json"] == 3
        assert client.stats.retries >= 2


def test_persistent_server_error(repo: FixtureRepo, make_client: ClientFactory) -> None:
    with ScriptedServer(repo.path, Script(failures=100, status=503)) as srv:
        client = make_client(srv.url)
        with pytest.raises(RepositoryError) as err:
            client.refresh()
        assert "HTTP 503" in str(err.value) and "after 3 attempt(s)" in str(err.value)
        assert srv.hits["/metadata/2.root.json"] == 3


def test_forbidden_is_not_retried(repo: FixtureRepo, make_client: ClientFactory) -> None:
    with ScriptedServer(repo.path, Script(failures=100, status=403)) as srv:
        client = make_client(srv.url)
        with pytest.raises(RepositoryError, match=r"^timestamp metadata is not on the repository \(.*HTTP 403"):
            client.refresh()
        # the root probe treats 403 as "no newer root" (ngclient), the timestamp fails at once
        assert srv.hits == {"/metadata/2.root.json": 1, "/metadata/timestamp.json": 1}


def test_stalled_body_is_a_slow_retrieval(repo: FixtureRepo, make_client: ClientFactory) -> None:
    slow = TransportSettings(connect_timeout=2, read_timeout=0.2, retries=0)
    with (
        ScriptedServer(repo.path, Script(stall=3)) as srv,
        pytest.raises(RepositoryError, match=r"^the repository is too slow or unreachable: "),
    ):
        make_client(srv.url, settings=slow).refresh()


# -- cache -------------------------------------------------------------------------------------


def test_prune_cache(repo: FixtureRepo, make_client: ClientFactory, tmp_path: Path) -> None:
    repo.publish("stable", "1.1.0")
    client = make_client(str(repo.path))
    old, new = client.channel_index("stable").releases
    for ref in (*old.targets(), *new.targets()):
        client.fetch_target(ref)
    (tmp_path / "client" / "cache" / f"{TEMP_PREFIX}123-stale").write_bytes(b"torn")
    removed = client.prune_cache({new.full.path, new.manifest.path})
    assert removed == sorted([old.full.path, old.manifest.path])
    remaining = {p.replace("%2F", "/") for p in cache_files(tmp_path)}
    assert remaining == {new.full.path, new.manifest.path, "stable/index.json"}


def test_prune_without_cache(repo: FixtureRepo, make_client: ClientFactory) -> None:
    assert make_client(str(repo.path)).prune_cache(set()) == []


def test_unwritable_metadata_dir(repo: FixtureRepo, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    client = RepositoryClient(str(repo.path), blocker / "metadata", tmp_path / "cache", repo.root_bytes)
    with pytest.raises(StateError, match=r"cannot create the metadata directory"):
        client.refresh()


def test_bad_repository_url(tmp_path: Path, repo: FixtureRepo) -> None:
    with pytest.raises(ConfigError, match=r"^bad repository URL: ftp://example.com/: unsupported URL scheme"):
        RepositoryClient("ftp://example.com/", tmp_path / "m", tmp_path / "c", repo.root_bytes)


# -- against the real publisher ----------------------------------------------------------------


def _release_cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pinnacle_updates.repo_tools", *args],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR,
        env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
        timeout=120,
    )
    assert proc.returncode == 0, f"pinnacle-release {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_repository_made_by_pinnacle_release(tmp_path: Path) -> None:
    """keys init, init, publish twice, serve (all the real CLI), then the client over HTTP."""
    keys, repo_dir, src = tmp_path / "keys", tmp_path / "repo", tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    _release_cli("keys", "init", str(keys), "--insecure-plaintext")
    _release_cli("init", str(repo_dir), "--keys", str(keys))
    for version, kind in (("1.0.0", "patch"), ("1.1.0", "minor")):
        (src / "bin" / "app").write_text(f"#!/bin/sh\necho {version}\n")
        _release_cli(
            "publish", str(repo_dir), "--keys", str(keys), "--channel", "beta", "--version", version,
            "--type", kind, "--platform", PLATFORM, str(src), "--entry-point", "bin/app",
        )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinnacle_updates.repo_tools", "serve", str(repo_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT_DIR,
        env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[1]
        root = (repo_dir / "metadata" / "1.root.json").read_bytes()
        with RepositoryClient(url, tmp_path / "m", tmp_path / "c", root, FAST) as client:
            client.refresh()
            index = client.channel_index("beta")
            assert [r.version for r in index.for_platform(PLATFORM)] == ["1.0.0", "1.1.0"]
            newest = index.latest(PLATFORM)
            assert newest is not None and newest.type is UpdateType.MINOR
            manifest = client.fetch_manifest(newest)
            assert manifest.by_path()["bin/app"].size == len(b"#!/bin/sh\necho 1.1.0\n")
            assert zstandard.ZstdDecompressor().decompress(
                client.fetch_target(newest.full).read_bytes(), max_output_size=newest.content.length
            )
            assert client.channel_index("stable").releases == ()
    finally:
        proc.kill()
        proc.wait()
