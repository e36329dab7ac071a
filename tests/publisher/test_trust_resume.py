"""A partial download damaged on disk costs one fresh download, not a failed install."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pinnacle_updates.client.transport import HttpxFetcher
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository


def test_damaged_partial_is_discarded_and_fetched_again(repo: Repository, keystore: KeyStore, source, serve,
                                                        tmp_path: Path) -> None:
    rel = ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0.0", "patch", "any", source("1.0.0")))
    full = rel["release"]["full"]
    served = serve(repo.path)
    partial_dir = tmp_path / "partial"
    fetcher = HttpxFetcher(partial_dir=partial_dir)
    client = RepositoryClient(served.url, tmp_path / "tuf", tmp_path / "cache",
                              (repo.metadata_dir / "1.root.json").read_bytes(), fetcher=fetcher)
    client.refresh()
    release = client.channel_index("stable").latest("any")
    assert release is not None

    # What an earlier, interrupted download would have kept, but with one byte rotted on disk.
    stored = repo.target_location(full["path"], full["sha256"])
    directory, _, name = full["path"].rpartition("/")
    url = f"{served.url}targets/{directory}/{full['sha256']}.{name}"
    half = bytearray(stored.read_bytes()[: full["length"] // 2])
    half[10] ^= 0xFF
    partial_dir.mkdir(exist_ok=True)
    (partial_dir / hashlib.sha256(url.encode()).hexdigest()).write_bytes(bytes(half))

    path = client.fetch_target(release.full)
    assert path.read_bytes() == stored.read_bytes()
    assert fetcher.stats.resumed == 1
    client.close()
