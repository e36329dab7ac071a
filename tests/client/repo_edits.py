"""A published repository edited by hand as other TUF tooling could have written it, re-signed with the
repository's real keys (tests/client/test_target_hashes.py, test_split_urls.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuf.api.metadata import TargetFile

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.core import metadata as meta
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.helpers_client import app_files, write_tree

CHANNEL = "stable"


def publish_versions(repository: Repository, keystore: KeyStore, tmp_path: Path, *versions: str) -> None:
    for version in versions:
        src = tmp_path / f"src-{version}"
        # the same large files in every version (a delta beats the full artifact), a new VERSION
        write_tree(src, {**app_files("1.0.0", n_files=8, size=4000), "VERSION": f"{version}\n"})
        ops.publish(repository, keystore, ops.PublishRequest(channel=CHANNEL, version=version, type="patch",
                                                             platform="any", source=src))


def stored(repository: Repository, info: TargetFile) -> Path:
    """Where a target is stored under consistent snapshots: named by the first hash listed (python-tuf's rule)."""
    directory, _, name = info.path.rpartition("/")
    return repository.targets_dir / directory / f"{next(iter(info.hashes.values()))}.{name}"


def resign(repository: Repository, keystore: KeyStore, edit: Callable[[dict[str, TargetFile]], None]) -> None:
    """Edit the channel role's targets in place, then re-sign the role, snapshot and timestamp with
    the repository's own keys (what a publisher using other tooling would commit)."""
    state = repository.load()
    now = ops.utcnow()
    role = state.channels[CHANNEL]
    edit(role.signed.targets)
    meta.bump(role, meta.expiry(now, 30))
    role_bytes = repository.write_metadata(CHANNEL, meta.sign(role, keystore.signers(CHANNEL)))
    snapshot = meta.snapshot_of(state.snapshot, {CHANNEL: (role.signed.version, role_bytes)}, meta.expiry(now, 7))
    snapshot_bytes = repository.write_metadata("snapshot", meta.sign(snapshot, keystore.signers("snapshot")))
    timestamp = meta.timestamp_of(state.timestamp, snapshot.signed.version, snapshot_bytes, meta.expiry(now, 1), now)
    repository.write_metadata("timestamp", meta.sign(timestamp, keystore.signers("timestamp")), versioned=False)


def sign_target(repository: Repository, keystore: KeyStore, target_path: str, data: bytes) -> None:
    """Store ``data`` and list it as ``target_path`` in the channel role, re-signed with the repository's
    own keys (a publisher's bug or a stolen channel key: the signature is valid)."""
    info = TargetFile.from_data(target_path, data, ["sha256"])
    stored(repository, info).write_bytes(data)

    def edit(targets: dict[str, TargetFile]) -> None:
        targets[target_path] = info

    resign(repository, keystore, edit)
