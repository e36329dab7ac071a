"""``pinnacle-release sync``: upload order, skipping unchanged files, refusals, and the property
that matters: a sync SIGKILLed anywhere leaves DEST in a state stock ngclient accepts.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools import rotate
from pinnacle_updates.repo_tools.errors import RepositoryStateError
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from pinnacle_updates.repo_tools.sync import ROLES, ROOTS, SNAPSHOTS, TARGETS, TIMESTAMP, plan, sync
from tests.conftest import ROOT, run_cli, tree_digest
from tests.kill_loop import kill_after_lines, ngclient_accepts


@pytest.fixture
def keystore(keys_dir: Path, tmp_path: Path) -> KeyStore:
    """A private copy of the session keys: these tests rotate keys."""
    own = tmp_path / "own-keys"
    shutil.copytree(keys_dir, own)
    return KeyStore(own)


def _publish(repo: Repository, keystore: KeyStore, source, version: str, size: int = 0) -> None:  # type: ignore[no-untyped-def]
    files = {"lib/blob.bin": os.urandom(size)} if size else None
    ops.publish(repo, keystore, ops.PublishRequest("stable", version, "patch", "any", source(version, files)))


def _servable(path: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(path).items() if not Path(k).name.startswith(".") and v != "dir"}


def test_plan_puts_targets_first_and_timestamp_last(repo: Repository, keystore: KeyStore, source) -> None:  # type: ignore[no-untyped-def]
    _publish(repo, keystore, source, "1.0.0")
    rotate.rotate_key(repo, keystore, "snapshot")  # a second root version
    items = plan(repo.path)
    ranks = [i.rank for i in items]
    assert ranks == sorted(ranks)
    assert items[-1].relative == "metadata/timestamp.json"
    names = [i.relative for i in items]
    assert [n for n in names if n.endswith(".root.json")] == ["metadata/1.root.json", "metadata/2.root.json"]
    assert {i.rank for i in items if i.relative.startswith("targets/")} == {TARGETS}
    assert {i.rank for i in items if ".snapshot." in i.relative} == {SNAPSHOTS}
    assert {i.rank for i in items if i.relative.endswith((".stable.json", ".targets.json"))} == {ROLES}
    assert {i.rank for i in items if ".root." in i.relative} == {ROOTS}
    assert TIMESTAMP not in ranks[:-1]
    assert not any(Path(n).name.startswith(".") for n in names)  # lock, staging, temp files stay home


def test_sync_copies_then_skips_unchanged_and_rewrites_changed(repo: Repository, keystore: KeyStore, source,
                                                              tmp_path: Path) -> None:
    _publish(repo, keystore, source, "1.0.0")
    dest = tmp_path / "bucket"
    first = sync(repo.path, dest)
    assert first["skipped"] == 0 and _servable(dest) == _servable(repo.path)
    again = sync(repo.path, dest)
    assert again["copied"] == 0 and again["skipped"] == first["copied"]
    # An orphan a killed publish left (same name, other bytes later) is compared by content.
    orphan = dest / "metadata" / "1.stable.json"
    orphan.write_bytes(orphan.read_bytes()[:-1] + b" ")
    _publish(repo, keystore, source, "1.1.0")
    third = sync(repo.path, dest)
    # Every earlier file is skipped except the changed timestamp and the damaged orphan.
    assert third["skipped"] == first["copied"] - 2 and third["copied"] >= 7
    assert _servable(dest) == _servable(repo.path)


def test_root_rotation_uploads_the_dual_signed_timestamp_before_the_new_root(repo: Repository, keystore: KeyStore,
                                                                            tmp_path: Path) -> None:
    """A client fetches N+1.root.json first: serving a new root whose timestamp key changed next to
    the old timestamp would break it, so the (dual-signed) timestamp goes first."""
    dest = tmp_path / "bucket"
    sync(repo.path, dest)
    rotate.rotate_key(repo, keystore, "timestamp")
    assert sync(repo.path, dest, dry_run=True)["copied"] == 3 and not (dest / "metadata" / "2.root.json").exists()
    order: list[str] = []
    sync(repo.path, dest, lambda action, path: order.append(path) if action == "copied" else None)
    assert order == ["metadata/2.snapshot.json", "metadata/timestamp.json", "metadata/2.root.json"]
    # Without a key change, new roots keep their place before the snapshot and timestamp.
    rotate.rotate_key(repo, KeyStore(keystore.directory), "root")
    order.clear()
    sync(repo.path, dest, lambda action, path: order.append(path) if action == "copied" else None)
    assert order == ["metadata/3.root.json"]


def test_sync_refusals(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(RepositoryStateError, match="overlap"):
        sync(repo.path, repo.path / "public")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryStateError, match="not an initialised repository"):
        sync(tmp_path / "empty", tmp_path / "out")
    proc = run_cli("pinnacle-release", "sync", str(tmp_path / "empty"), str(tmp_path / "out"), check=False)
    assert proc.returncode == RepositoryStateError.exit_code and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sync_killed_at_random_points_never_breaks_ngclient(repo: Repository, keystore: KeyStore, source, serve,
                                                            tmp_path: Path) -> None:
    rng = random.Random(7)
    dest = tmp_path / "bucket"
    _publish(repo, keystore, source, "1.0.0", size=64 << 10)
    sync(repo.path, dest)
    url = serve(dest).url
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    long_lived = tmp_path / "client-metadata"  # one client that keeps its trusted metadata across kills
    long_lived.mkdir()
    ngclient_accepts(url, root, long_lived)

    kills = behind = 0
    for n in range(30):
        version = f"1.0.{n + 1}"
        _publish(repo, keystore, source, version, size=64 << 10)
        rotated = n % 7 == 6
        if rotated:
            rotate.rotate_key(repo, keystore, "timestamp")  # new root versions in the mix too
            keystore = KeyStore(keystore.directory)
        pending = sync(repo.path, dest, dry_run=True)["copied"]
        proc = subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", "sync", str(repo.path),
                                 str(dest), "--verbose"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        wanted = rng.randrange(pending)  # kill after this many copied files, anywhere up to the last one
        kills += kill_after_lines(proc, "copied ", wanted, rng, jitter=0.004)
        behind += (dest / "metadata" / "timestamp.json").read_bytes() != (
            repo.metadata_dir / "timestamp.json").read_bytes()
        # Whatever the kill left, both a fresh client and the long-lived one accept DEST.
        for metadata_dir in (tmp_path / f"fresh-{n}", long_lived):
            metadata_dir.mkdir(exist_ok=True)
            assert '"channel":"stable"' in ngclient_accepts(url, root, metadata_dir)
        # Half the time the operator reruns the sync to the end; always after a key rotation: a sync
        # interrupted then must finish before the next publish (docs/OPERATIONS.md, upload order).
        if rotated or rng.random() < 0.5:
            sync(repo.path, dest)
            assert '"channel":"stable"' in ngclient_accepts(url, root, long_lived)
    assert kills >= 20
    assert behind >= 10, "the kills never landed before the commit point: the test would prove nothing"

    sync(repo.path, dest)
    assert _servable(dest) == _servable(repo.path)
    assert not [p for p in dest.rglob(".tmp-*")]
    assert '"version":"1.0.30"' in ngclient_accepts(url, root, long_lived)
