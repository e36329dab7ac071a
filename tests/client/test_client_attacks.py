"""Attacks on a client that is running v1: each is refused with one line, the running slot untouched.

A real publisher repository served by a real HTTP server process; the client is the real
``pinnacle-update`` CLI in a child process. Each test installs 1.0.0, lets the repository publish
1.1.0, then tampers with what is served the way an attacker (or a broken mirror) would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import zstandard

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.core import metadata as meta
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import run_cli, tree_digest


class Client:
    def __init__(self, install_dir: Path) -> None:
        self.dir = install_dir

    def __call__(self, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        return run_cli("pinnacle-update", "--install-dir", str(self.dir), *args, check=check)

    def status(self) -> dict:
        return json.loads(self("status", "--json").stdout)


@pytest.fixture
def running_v1(repo: Repository, keystore: KeyStore, source, serve, tmp_path: Path):  # type: ignore[no-untyped-def]
    ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0.0", "patch", "any", source("1.0.0")))
    served = serve(repo.path)
    client = Client(tmp_path / "install")
    client("init", "--repo", served.url, "--root", str(repo.metadata_dir / "1.root.json"))
    client("install", "1.0.0")
    (client.dir / "current" / "logs").mkdir(exist_ok=True)
    (client.dir / "current" / "logs" / "app.log").write_text("precious\n")
    return client


def _publish_v2(repo: Repository, keystore: KeyStore, source) -> dict:  # type: ignore[no-untyped-def]
    """v1.1.0 without deltas, so that the client downloads (and these attacks reach) the full artifact;
    attacks on deltas are in test_delta_client.py."""
    request = ops.PublishRequest("stable", "1.1.0", "patch", "any", source("1.1.0"), deltas=0)
    return ops.publish(repo, keystore, request)


def _assert_refused(client: Client, *needles: str) -> int:
    """``install`` fails with one line naming the problem and the running v1 is untouched; its exit code."""
    status = client.status()
    slot = client.dir / "slots" / status["slot"]
    before = tree_digest(slot), tree_digest(client.dir / "data")
    proc = client("install", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = client.status()
    assert after["version"] == "1.0.0" and after["slot"] == status["slot"]
    assert (tree_digest(slot), tree_digest(client.dir / "data")) == before
    assert (client.dir / "current").resolve() == slot.resolve()
    verify = client("verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return proc.returncode


def _target_file(repo: Repository, target_path: str) -> Path:
    info = repo.load().channels["stable"].signed.targets[target_path]
    return repo.target_location(target_path, info.hashes["sha256"])


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_target(running_v1: Client, repo: Repository, keystore: KeyStore, source) -> None:
    release = _publish_v2(repo, keystore, source)["release"]
    path = _target_file(repo, release["full"]["path"])
    _flip(path, path.stat().st_size // 2)
    _assert_refused(running_v1, "hash", "1.1.0")


def test_wrong_length_target(running_v1: Client, repo: Repository, keystore: KeyStore, source) -> None:
    release = _publish_v2(repo, keystore, source)["release"]
    path = _target_file(repo, release["full"]["path"])
    path.write_bytes(path.read_bytes() + b"\0" * 100)
    _assert_refused(running_v1, "1.1.0")


def test_tampered_manifest(running_v1: Client, repo: Repository, keystore: KeyStore, source) -> None:
    release = _publish_v2(repo, keystore, source)["release"]
    _flip(_target_file(repo, release["manifest"]["path"]), 10)
    _assert_refused(running_v1, "manifest")


def test_channel_index_altered_after_signing(running_v1: Client, repo: Repository, keystore: KeyStore,
                                             source) -> None:
    _publish_v2(repo, keystore, source)
    # The client reads the compressed index (tests/client/test_compressed_index.py has the JSON-only repository).
    altered = _target_file(repo, "stable/index.json").read_bytes().replace(b'"type":"patch"', b'"type":"hotfix"')
    _target_file(repo, "stable/index.json.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(altered))
    _assert_refused(running_v1, "target stable/index.json.zst failed verification")


def _resign_timestamp(repo: Repository, keystore: KeyStore, expires_in: timedelta,
                      signer_role: str = "timestamp") -> None:
    state = repo.load()
    snapshot_name = f"{state.snapshot.signed.version}.snapshot.json"
    snapshot_bytes = (repo.metadata_dir / snapshot_name).read_bytes()
    timestamp = meta.timestamp_of(state.timestamp, state.snapshot.signed.version, snapshot_bytes,
                                  (ops.utcnow() + expires_in).replace(microsecond=0))
    meta.sign(timestamp, keystore.signers(signer_role))
    repo.write_metadata("timestamp", timestamp, versioned=False)


def test_expired_timestamp(running_v1: Client, repo: Repository, keystore: KeyStore, source) -> None:
    _publish_v2(repo, keystore, source)
    _resign_timestamp(repo, keystore, timedelta(hours=-1))
    _assert_refused(running_v1, "expired")


def test_timestamp_signed_by_the_wrong_key(running_v1: Client, repo: Repository, keystore: KeyStore,
                                           source) -> None:
    _publish_v2(repo, keystore, source)
    _resign_timestamp(repo, keystore, timedelta(days=1), signer_role="snapshot")
    _assert_refused(running_v1, "timestamp", "sign")


def test_channel_role_signed_by_another_channels_key(running_v1: Client, repo: Repository, keystore: KeyStore,
                                                     source) -> None:
    _publish_v2(repo, keystore, source)
    state = repo.load()
    stable = state.channels["stable"]
    meta.sign(stable, keystore.signers("beta"))
    data = repo.write_metadata("stable", stable)
    snapshot = meta.snapshot_of(state.snapshot, {"stable": (stable.signed.version, data)},
                                meta.expiry(ops.utcnow(), 7))
    snapshot_bytes = repo.write_metadata("snapshot", meta.sign(snapshot, keystore.signers("snapshot")))
    timestamp = meta.timestamp_of(state.timestamp, snapshot.signed.version, snapshot_bytes,
                                  meta.expiry(ops.utcnow(), 1))
    repo.write_metadata("timestamp", meta.sign(timestamp, keystore.signers("timestamp")), versioned=False)
    _assert_refused(running_v1, "stable")


@pytest.mark.parametrize("replayed", ["timestamp", "snapshot"])
def test_older_metadata_served_after_newer(running_v1: Client, repo: Repository, keystore: KeyStore, source,
                                           tmp_path: Path, replayed: str) -> None:
    saved = tmp_path / "old-metadata"
    shutil.copytree(repo.metadata_dir, saved)
    _publish_v2(repo, keystore, source)
    check = json.loads(running_v1("check", "--json").stdout)  # the client now trusts the newer metadata
    assert check["version"] == "1.1.0"
    if replayed == "timestamp":
        shutil.copyfile(saved / "timestamp.json", repo.metadata_dir / "timestamp.json")
    else:
        # A freshly signed timestamp that points at the older snapshot: the snapshot version goes backwards.
        state = repo.load()
        old_version = state.snapshot.signed.version - 1
        old_bytes = (repo.metadata_dir / f"{old_version}.snapshot.json").read_bytes()
        timestamp = meta.timestamp_of(state.timestamp, old_version, old_bytes, meta.expiry(ops.utcnow(), 1))
        repo.write_metadata("timestamp", meta.sign(timestamp, keystore.signers("timestamp")), versioned=False)
    _assert_refused(running_v1, replayed, "older")


def test_missing_target_is_a_clear_repository_error(running_v1: Client, repo: Repository, keystore: KeyStore,
                                                     source) -> None:
    release = _publish_v2(repo, keystore, source)["release"]
    _target_file(repo, release["full"]["path"]).unlink()
    _assert_refused(running_v1, "1.1.0")


def test_unreachable_repository(running_v1: Client, serve: Callable[[Path], object]) -> None:
    # The fixture's server is killed at teardown; stop the client's one now by pointing it elsewhere.
    running_v1("config", "set", "repo_url", "http://127.0.0.1:9/")
    _assert_refused(running_v1, "127.0.0.1:9")
