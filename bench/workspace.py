"""What several benchmarks set up first: a key directory without passphrases and an initialised repository."""

from __future__ import annotations

from pathlib import Path

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys
from pinnacle_updates.repo_tools.store import Repository


def fresh_repository(base: Path) -> tuple[Repository, KeyStore]:
    """``base/keys`` (new keys, plaintext: a benchmark's throwaway) and ``base/repo`` initialised with them."""
    create_keys(base / "keys", passphrase=None)
    keys = KeyStore(base / "keys")
    repo = Repository(base / "repo")
    ops.init_repository(repo, keys)
    return repo, keys
