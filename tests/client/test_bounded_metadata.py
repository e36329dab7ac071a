"""Bounded channel metadata: a live window in the index and channel role, older releases in
hashed-bin archive roles that clients still reach by version (issue 8)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from pinnacle_updates.client.errors import UpdateError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats.fsutil import TEMP_PREFIX
from pinnacle_updates.formats.index import ChannelIndex, compressed_index_path, index_path
from pinnacle_updates.repo_tools import fleet, rotate
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.archive import Archive
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.errors import PublishRefused
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import DIRTY_FILE, Repository
from tests.conftest import ServedRepo, tree_digest
from tests.helpers_client import Repo, app_files, init_client, write_tree

WINDOW = 3


def _repo(tmp_path: Path, keystore: KeyStore, window: int = WINDOW, bits: int = 2) -> Repository:
    repository = Repository(tmp_path / "repo")
    ops.init_repository(repository, keystore, live_window=window, archive_bits=bits)
    return repository


def _publish(repository: Repository, keystore: KeyStore, tmp_path: Path, version: str, channel: str = "stable",
             deltas: int = 1) -> None:
    src = tmp_path / f"src-{channel}-{version}"
    write_tree(src, app_files(version))
    ops.publish(repository, keystore, ops.PublishRequest(channel=channel, version=version, type="patch",
                                                         platform="any", source=src, deltas=deltas))


def _publish_many(repository: Repository, keystore: KeyStore, tmp_path: Path, count: int) -> list[str]:
    versions = [f"1.{i}.0" for i in range(count)]
    for v in versions:
        _publish(repository, keystore, tmp_path, v)
    return versions


def _index(repository: Repository, channel: str = "stable") -> ChannelIndex:
    return repository.channel_index(repository.load(), channel)


def _update_metadata_bytes(repository: Repository, channel: str = "stable") -> int:
    """What a client that already trusts the previous state downloads to update: timestamp,
    snapshot, the channel role and the channel index (compressed)."""
    state = repository.load()
    md = repository.metadata_dir
    snapshot = md / f"{state.timestamp.signed.snapshot_meta.version}.snapshot.json"
    role = md / f"{state.channels[channel].signed.version}.{channel}.json"
    info = state.channels[channel].signed.targets[compressed_index_path(channel)]
    return sum(p.stat().st_size for p in (md / "timestamp.json", snapshot, role)) + info.length


def _installed(tmp_path: Path, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo],
               count: int) -> tuple[Repository, list[str], Installer]:
    """A windowed repository with ``count`` releases, served, and a client that installed the newest."""
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, count)
    installer = init_client(tmp_path / "client", serve(repository.path).url, Repo(repository.path, keys_dir))
    installer.install()
    return repository, versions, installer


def _refused_and_untouched(installer: Installer, version: str, slot: Path) -> None:
    """Installing ``version`` fails with one line and leaves the running slot as it was."""
    before = tree_digest(slot)
    with pytest.raises(UpdateError) as caught:
        installer.install(version, force=True)
    assert "\n" not in str(caught.value)
    assert tree_digest(slot) == before


def test_the_index_and_channel_role_keep_only_the_live_window(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, 7)
    state = repository.load()
    index = _index(repository)
    assert [r.version for r in index.releases] == versions[-WINDOW:]
    live_targets = {ref.path for r in index.releases for ref in r.targets()} | {index_path("stable"),
                                                                                 compressed_index_path("stable")}
    assert set(state.channels["stable"].signed.targets) == live_targets
    archive = Archive(repository, state, "stable", state.channels["stable"])
    assert [r.version for r in archive.records()] == versions[:-WINDOW]
    assert len(archive.names()) == 4  # 2**bits bins, all listed in the snapshot
    for name in archive.names():
        entry = state.snapshot.signed.meta[f"{name}.json"]
        assert entry.hashes is None and entry.length  # version and length only: a small snapshot
    for deep in (False, True):
        report = verify_repository(repository.path, ops.utcnow(), deep=deep)
        assert report.problems == []
        assert (report.releases, report.archived) == (WINDOW, 7 - WINDOW)
    assert ops.status(repository)["archived"]["stable"] == 7 - WINDOW


def test_metadata_per_update_does_not_grow_with_history(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    sizes = {}
    for n in range(1, 31):
        _publish(repository, keystore, tmp_path, f"2.{n}.0", deltas=0)
        if n in (WINDOW + 1, 30):
            sizes[n] = _update_metadata_bytes(repository)
    # Version numbers and time strings grow by a few bytes; nothing grows per release.
    assert sizes[30] <= sizes[WINDOW + 1] * 1.1, sizes


def test_a_client_installs_an_archived_release_and_repairs_it(
    tmp_path: Path, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo]
) -> None:
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, 6)
    url = serve(repository.path).url
    installer = init_client(tmp_path / "client", url, Repo(repository.path, keys_dir))
    assert installer.install().version == versions[-1]
    old = versions[0]
    assert installer.check(old, force=True).version == old
    result = installer.install(old, force=True)
    assert result.version == old
    assert installer.status()["version"] == old
    active = tmp_path / "client" / "current"
    (active / "VERSION").write_text("edited locally\n")
    installer.repair()
    assert (active / "VERSION").read_text() == f"{old}\n"


def test_an_unknown_old_version_is_a_clear_refusal(
    tmp_path: Path, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo]
) -> None:
    _, _, installer = _installed(tmp_path, keystore, keys_dir, serve, 5)
    result = installer.check("0.9.0", force=True)
    assert result.version is None and "not published" in result.reason


def test_a_tampered_archive_bin_is_refused_and_the_slot_is_untouched(
    tmp_path: Path, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo]
) -> None:
    repository, versions, installer = _installed(tmp_path, keystore, keys_dir, serve, 6)
    state = repository.load()
    archive = Archive(repository, state, "stable", state.channels["stable"])
    for name in archive.names():
        path = repository.metadata_dir / f"{state.snapshot.signed.meta[f'{name}.json'].version}.{name}.json"
        doc = json.loads(path.read_bytes())
        for info in doc["signed"]["targets"].values():
            info["length"] += 1  # a bigger artifact than was signed
        path.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
    problems = verify_repository(repository.path, ops.utcnow()).problems
    assert any("archive" in p for p in problems)
    _refused_and_untouched(installer, versions[0], tmp_path / "client" / "current")
    assert installer.status()["version"] == versions[-1]


def test_yanking_an_archived_release_brings_it_back_into_the_index(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, 6)
    fleet.yank(repository, keystore, "stable", versions[1], "data loss")
    index = _index(repository)
    assert [r.version for r in index.releases] == [versions[1], *versions[-WINDOW:]]
    assert index.find(versions[1], "any").yanked.reason == "data loss"
    state = repository.load()
    assert versions[1] not in [r.version for r in Archive(repository, state, "stable",
                                                           state.channels["stable"]).records()]
    assert verify_repository(repository.path, ops.utcnow()).problems == []
    # A later publish keeps the yanked release listed: clients running it must keep seeing the yank.
    _publish(repository, keystore, tmp_path, "9.0.0")
    assert _index(repository).find(versions[1], "any") is not None
    assert verify_repository(repository.path, ops.utcnow()).problems == []


def test_a_rollout_edit_of_an_archived_release_stays_in_the_archive(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, 5)
    with pytest.raises(PublishRefused, match=r"has no release 0\.0\.1"):
        fleet.yank(repository, keystore, "stable", "0.0.1", "nope")
    fleet.rollout(repository, keystore, "stable", versions[0], schedule=fleet.schedule_option(None, 50.0))
    assert [r.version for r in _index(repository).releases] == versions[-WINDOW:]
    state = repository.load()
    [record] = Archive(repository, state, "stable", state.channels["stable"]).records(versions[0])
    assert record.rollout is not None
    assert verify_repository(repository.path, ops.utcnow()).problems == []


def test_an_archived_release_can_be_promoted(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, 5)
    ops.promote(repository, keystore, "stable", "beta", versions[0])
    assert [r.version for r in _index(repository, "beta").releases] == [versions[0]]
    assert verify_repository(repository.path, ops.utcnow(), deep=True).problems == []


def test_refresh_renews_archive_bins_before_they_expire(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    _publish_many(repository, keystore, tmp_path, 5)
    later = ops.utcnow() + timedelta(days=60)  # past half of the channel roles' 90 days
    result = ops.refresh(repository, keystore, now=later)
    assert {"stable-archive-0", "stable-archive-3"} <= set(result["renewed"])
    state = repository.load()
    for _, md in Archive(repository, state, "stable", state.channels["stable"]).bins():
        assert md.signed.expires > later + timedelta(days=80)


def test_rotating_the_channel_key_re_signs_its_archive(
    tmp_path: Path, keys_dir: Path, serve: Callable[[Path], ServedRepo]
) -> None:
    own = tmp_path / "own-keys"
    shutil.copytree(keys_dir, own)
    keystore = KeyStore(own)
    repository = _repo(tmp_path, keystore)
    versions = _publish_many(repository, keystore, tmp_path, 5)
    installer = init_client(tmp_path / "client", serve(repository.path).url, Repo(repository.path, own))
    installer.install()  # trusts the old channel key from here on
    result = rotate.rotate_key(repository, keystore, "stable")
    assert result["published"]
    assert verify_repository(repository.path, ops.utcnow()).problems == []
    state = repository.load()
    succinct = state.channels["stable"].signed.delegations.succinct_roles
    assert succinct.keyids == [result["new_keyid"]]
    _publish(repository, KeyStore(own), tmp_path, "5.0.0")  # a fresh view holds the new key
    assert installer.install(versions[0], force=True).version == versions[0]


def test_temp_files_a_killed_publish_left_are_cleaned_from_its_journal(tmp_path: Path, keystore: KeyStore) -> None:
    repository = _repo(tmp_path, keystore)
    _publish_many(repository, keystore, tmp_path, 2)
    release_dir = next((repository.targets_dir / "stable" / "any").iterdir())
    torn = release_dir / f"{TEMP_PREFIX}999-full.tar.zst"
    torn.write_bytes(b"half a file")
    (repository.path / DIRTY_FILE).write_text(f"{release_dir.relative_to(repository.path).as_posix()}\n")
    _publish(repository, keystore, tmp_path, "7.0.0")
    assert not torn.exists()
    assert not (repository.path / DIRTY_FILE).exists()
    assert verify_repository(repository.path, ops.utcnow()).problems == []


def test_a_tampered_file_of_an_archived_release_is_refused(
    tmp_path: Path, keystore: KeyStore, keys_dir: Path, serve: Callable[[Path], ServedRepo]
) -> None:
    repository, versions, installer = _installed(tmp_path, keystore, keys_dir, serve, 6)
    [full] = (repository.targets_dir / "stable" / "any" / versions[0]).glob("*.full.tar.zst")
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0xFF
    full.write_bytes(bytes(data))
    assert any(versions[0] in p and "differs" in p for p in verify_repository(repository.path, ops.utcnow()).problems)
    _refused_and_untouched(installer, versions[0], tmp_path / "client" / "current")


def test_a_version_live_on_one_platform_and_archived_on_another_is_edited_on_both(
    tmp_path: Path, keystore: KeyStore
) -> None:
    repository = _repo(tmp_path, keystore, window=2)
    for version, platforms in (("1.0.0", ("linux-x86_64", "macos-arm64")), ("1.1.0", ("linux-x86_64", "macos-arm64")),
                               ("1.2.0", ("macos-arm64",))):
        for platform in platforms:
            src = tmp_path / f"src-{platform}-{version}"
            write_tree(src, app_files(f"{platform}/{version}"))
            ops.publish(repository, keystore, ops.PublishRequest("stable", version, "patch", platform, src, deltas=0))
    state = repository.load()
    [archived] = Archive(repository, state, "stable", state.channels["stable"]).records()
    assert (archived.platform, archived.version) == ("macos-arm64", "1.0.0")

    promoted = ops.promote(repository, keystore, "stable", "beta", "1.0.0")
    assert sorted(r["platform"] for r in promoted["releases"]) == ["linux-x86_64", "macos-arm64"]
    result = fleet.yank(repository, keystore, "stable", "1.0.0", "bad build")
    assert sorted(r["platform"] for r in result["releases"]) == ["linux-x86_64", "macos-arm64"]
    yanked = {(r.platform, r.version) for r in _index(repository).releases if r.yanked is not None}
    assert yanked == {("linux-x86_64", "1.0.0"), ("macos-arm64", "1.0.0")}
    assert verify_repository(repository.path, ops.utcnow()).problems == []
