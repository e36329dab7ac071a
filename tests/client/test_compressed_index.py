"""The compressed channel index (``<channel>/index.json.zst``, issue 23) on the client side.

A repository written by the real publisher lists the index twice; a client fetches only the
compressed one (counted in nginx's access log), decompresses it within ``INDEX_MAX_BYTES`` and
checks the result against the signed ``index.json`` before it parses it. A repository whose role
lists no ``.zst`` (an older publisher, simulated by removing it from the role with the
repository's own metadata code and re-signing) is read as before. Bad ``.zst`` files are refused
with one line and the client's exit code, the running slot untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from pinnacle_updates.client import trust
from pinnacle_updates.client.errors import RepositoryError, TrustError
from pinnacle_updates.client.trust import RepositoryClient, cache_name
from pinnacle_updates.formats.index import ChannelIndex, compressed_index_path, index_path
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.client.repo_edits import CHANNEL, publish_versions, resign, sign_target
from tests.client.test_client_attacks import Client, _assert_refused, _publish_v2, _target_file
from tests.client.test_client_attacks import running_v1 as running_v1  # the fixture: v1 installed and served
from tests.nginx_server import NginxServer

JSON, PACKED = index_path(CHANNEL), compressed_index_path(CHANNEL)


def _install(tmp_path: Path, repository: Repository, url: str, *versions: str) -> Client:
    client = Client(tmp_path / "install")
    client("init", "--repo", url, "--root", str(repository.metadata_dir / "1.root.json"), "--platform", "any")
    for version in versions:
        client("install", version)
    return client


def _index_requests(server: NginxServer) -> list[str]:
    """Paths of the channel index files the server was asked for (stored as ``<hash>.index.json[.zst]``)."""
    return [r.path for r in server.requests() if r.path.endswith((".index.json", ".index.json.zst"))]


def _drop_packed(repository: Repository, keystore: KeyStore) -> None:
    """What an older publisher commits: a channel role listing only ``index.json``."""
    resign(repository, keystore, lambda targets: targets.pop(PACKED))


def _sign_packed(repository: Repository, keystore: KeyStore, packed: bytes) -> None:
    sign_target(repository, keystore, PACKED, packed)


# -- a new repository: the compressed index only ------------------------------------------------


def test_client_fetches_the_compressed_index_and_never_the_json(
    tmp_path: Path, repo: Repository, keystore: KeyStore,
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    with NginxServer(repo.path) as server:
        client = _install(tmp_path, repo, server.url, "1.0.0")
        publish_versions(repo, keystore, tmp_path, "1.1.0")
        client("install")  # the update: check, delta, swap, health, commit
        assert client.status()["version"] == "1.1.0"
        server.wait_for(lambda logged: len([r for r in logged if r.path.endswith(".index.json.zst")]) >= 2)
        asked = _index_requests(server)
    assert asked and all(p.endswith(".index.json.zst") for p in asked), asked
    # the newest .zst is exactly the compressed form of the signed JSON the client never fetched
    state = repo.load()
    targets = state.channel(CHANNEL).signed.targets
    packed = _target_file(repo, PACKED).read_bytes()
    assert asked[-1].endswith(f"{targets[PACKED].hashes['sha256']}.index.json.zst")
    assert zstandard.decompress(packed) == _target_file(repo, JSON).read_bytes()
    # pruning the cache after the commit keeps the index the next check starts from
    cached = os.listdir(client.dir / "cache")
    assert cache_name(PACKED) in cached and cache_name(JSON) not in cached, cached


def test_the_client_reads_the_same_index_either_way(tmp_path: Path, repo: Repository, keystore: KeyStore) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0", "1.1.0")
    json_index = ChannelIndex.from_bytes(_target_file(repo, JSON).read_bytes())
    with RepositoryClient(str(repo.path), tmp_path / "c1" / "metadata", tmp_path / "c1" / "cache",
                          (repo.metadata_dir / "1.root.json").read_bytes()) as client:
        assert client.channel_index(CHANNEL) == json_index
        assert os.listdir(tmp_path / "c1" / "cache") == [cache_name(PACKED)]
        assert client.prune_cache(set()) == []  # the compressed index stays, like the JSON one did


# -- an older repository: no .zst in the role --------------------------------------------------


def test_repository_without_the_compressed_index_still_works(
    tmp_path: Path, repo: Repository, keystore: KeyStore,
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    _drop_packed(repo, keystore)
    with NginxServer(repo.path) as server:
        client = _install(tmp_path, repo, server.url, "1.0.0")
        publish_versions(repo, keystore, tmp_path, "1.1.0")
        _drop_packed(repo, keystore)
        client("install")
        assert client.status()["version"] == "1.1.0"
        server.wait_for(lambda logged: len([r for r in logged if r.path.endswith(".index.json")]) >= 2)
        asked = _index_requests(server)
    assert asked and all(p.endswith(".index.json") for p in asked), asked
    assert cache_name(JSON) in os.listdir(client.dir / "cache")


# -- bad .zst files: refused, one line, the running slot untouched -------------------------------


def test_bad_compressed_indexes_are_refused_and_the_running_slot_untouched(
    running_v1: Client, repo: Repository, keystore: KeyStore, source,  # type: ignore[no-untyped-def]
) -> None:
    """Three bad .zst files in turn against one client running v1 (one install: the test stays short)."""
    _publish_v2(repo, keystore, source)
    json_bytes = _target_file(repo, JSON).read_bytes()
    # What TUF signed, not what is served: a mirror's .zst of the same (valid) index, compressed otherwise.
    stored = _target_file(repo, PACKED)
    served = zstandard.ZstdCompressor(level=3).compress(json_bytes)
    assert served != stored.read_bytes()
    stored.write_bytes(served)
    assert _assert_refused(running_v1, f"target {PACKED} failed verification") == TrustError.exit_code
    # A real zstd bomb, validly signed: 65 MiB of zeros in a few KiB (the limit holds for a signed file too).
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(trust.INDEX_MAX_BYTES + (1 << 20)))
    assert len(bomb) < 64 << 10
    _sign_packed(repo, keystore, bomb)
    code = _assert_refused(running_v1, f"channel index {PACKED} decompresses to more than 64 MiB: refused")
    assert code == RepositoryError.exit_code
    # A validly signed .zst of another index than the signed JSON (same length): a client must not see
    # another channel than older clients reading index.json do.
    other = json_bytes.replace(b'"type":"patch"', b'"type":"major"')
    _sign_packed(repo, keystore, zstandard.ZstdCompressor(level=19).compress(other))
    code = _assert_refused(running_v1, f"channel index {PACKED} decompresses to other bytes than the signed "
                                       f"{JSON} (another hash): refused")
    assert code == TrustError.exit_code


@pytest.mark.parametrize(("packed", "message", "error"), [
    (b"not zstd at all", f"channel index {PACKED} is not valid zstd data", RepositoryError),
    (zstandard.compress(b'{"format": 1, "channel": "beta", "releases": []}'),
     f"channel index {PACKED} decompresses to other bytes than the signed {JSON} (", TrustError),
])
def test_bad_compressed_index_in_process(
    tmp_path: Path, repo: Repository, keystore: KeyStore, packed: bytes, message: str, error: type[Exception],
) -> None:
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    _sign_packed(repo, keystore, packed)
    with RepositoryClient(str(repo.path), tmp_path / "c" / "metadata", tmp_path / "c" / "cache",
                          (repo.metadata_dir / "1.root.json").read_bytes()) as client, pytest.raises(error) as caught:
        client.channel_index(CHANNEL)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text, text


def test_compressed_index_alone_is_read(tmp_path: Path, repo: Repository, keystore: KeyStore) -> None:
    """A role listing the .zst but no JSON (a publisher that stopped writing it): the .zst is signed,
    so it is read as it is."""
    publish_versions(repo, keystore, tmp_path, "1.0.0")
    json_index = ChannelIndex.from_bytes(_target_file(repo, JSON).read_bytes())
    resign(repo, keystore, lambda targets: targets.pop(JSON))
    with RepositoryClient(str(repo.path), tmp_path / "c" / "metadata", tmp_path / "c" / "cache",
                          (repo.metadata_dir / "1.root.json").read_bytes()) as client:
        assert client.channel_index(CHANNEL) == json_index
