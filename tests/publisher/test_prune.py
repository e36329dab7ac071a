"""``prune``: only metadata versions that no unexpired snapshot needs are deleted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.prune import prune
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import ServedRepo, run_cli, tree_digest
from tests.helpers_client import app_files, write_tree


def _grow(tmp_path: Path, keystore: KeyStore, days: int) -> Repository:
    """A repository that archives on every publish, one publish a day (snapshots last 7 days)."""
    repository = Repository(tmp_path / "repo")
    start = ops.utcnow()
    ops.init_repository(repository, keystore, now=start, live_window=2, archive_bits=1)
    for day in range(days):
        src = tmp_path / f"src-{day}"
        write_tree(src, app_files(f"1.{day}.0"))
        ops.publish(repository, keystore, ops.PublishRequest("stable", f"1.{day}.0", "patch", "any", src, deltas=1),
                    now=start + timedelta(days=day))
    return repository


def _listed_by_kept_snapshots(repository: Repository) -> set[str]:
    names = set()
    for path in repository.metadata_dir.glob("*.snapshot.json"):
        snapshot = Metadata.from_bytes(path.read_bytes())
        names.add(path.name)
        names.update(f"{info.version}.{name}" for name, info in snapshot.signed.meta.items())
    return names


def test_prune_deletes_what_only_expired_snapshots_list(
    tmp_path: Path, keystore: KeyStore, serve: Callable[[Path], ServedRepo]
) -> None:
    repository = _grow(tmp_path, keystore, days=12)
    url = serve(repository.path).url
    root = (repository.metadata_dir / "1.root.json").read_bytes()
    stale = tmp_path / "stale-client"
    stale.mkdir()
    Updater(str(stale), url + "metadata/", None, url + "targets/", bootstrap=root).refresh()  # trusts today's state

    later = ops.utcnow() + timedelta(days=11, hours=1)  # snapshots of days 0..4 (signed for 7 days) have expired
    before = tree_digest(repository.path)
    dry = prune(repository, later, dry_run=True)
    assert tree_digest(repository.path) == before
    assert dry["files"] > 0

    result = prune(repository, later)
    assert result["deleted"] == dry["would_delete"]
    deleted = {Path(p).name for p in result["deleted"]}
    assert {f"{n}.snapshot.json" for n in range(1, 7)} <= deleted  # init's and days 0..4
    assert {"2.stable.json", "3.stable.json"} <= deleted  # role versions only expired snapshots list
    assert not any(name.endswith(".root.json") for name in deleted)
    assert result["kept_snapshots"] == list(range(7, 14))  # days 5..11, the last one current
    present = {p.name for p in repository.metadata_dir.iterdir()}
    assert _listed_by_kept_snapshots(repository) <= present  # a client mid-update finds every file it may ask for
    assert verify_repository(repository.path, ops.utcnow() + timedelta(days=11)).problems == []
    assert prune(repository, later)["files"] == 0

    fresh = tmp_path / "fresh-client"
    fresh.mkdir()
    updater = Updater(str(fresh), url + "metadata/", None, url + "targets/", bootstrap=root)
    updater.refresh()
    assert updater.get_targetinfo("stable/index.json") is not None
    again = Updater(str(stale), url + "metadata/", None, url + "targets/", bootstrap=root)
    again.refresh()  # a client whose local state is from before the prune moves on
    assert again.get_targetinfo("stable/any/1.0.0/release.json") is not None


def test_prune_cli_dry_run_and_json(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _grow(tmp_path, keystore, days=2)
    out = run_cli("pinnacle-release", "prune", str(repository.path), "--dry-run")
    assert out.stdout.startswith("would delete 0 metadata file(s)")
    out = run_cli("pinnacle-release", "prune", str(tmp_path / "nowhere"), check=False)
    assert out.returncode != 0 and out.stderr.count("\n") == 1
