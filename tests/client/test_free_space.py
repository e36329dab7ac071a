"""Issue 17, class 4: the free-space check follows the order in which an install uses the disk.

The download lands while the inactive slot still holds the previous release (the instant-rollback
target, which is not wiped before the download succeeded), so it must fit in the space free as it
is; only the writing of the new slot may count the inactive slot as reclaimable. Checked before
anything is downloaded: on the delta path before the deltas too. The free space comes from one
seam (``Stager.free_bytes``), since no small file system can be mounted in every test environment;
the installs around it are real (repository by ``pinnacle-release``, real downloads and slots)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pinnacle_updates.client.errors import InstallError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.client.staging import SPACE_SLACK, _disk_size, space_problem
from pinnacle_updates.formats.tree import tree_size
from tests.client.test_delta_client import app, publish_with
from tests.helpers_client import Repo, app_files, init_client, make_repo, publish, tree_digest

MIB = 1024 * 1024


def test_the_rule_counts_the_inactive_slot_only_after_the_download() -> None:
    # fits: download now, then the release where the old slot was
    assert space_problem(free=10 * MIB, reclaim=50 * MIB, download=8 * MIB, tree=50 * MIB) is None
    # the old rule (free + reclaim >= download + tree) said yes; the download alone does not fit now
    problem = space_problem(free=5 * MIB, reclaim=100 * MIB, download=8 * MIB, tree=20 * MIB)
    assert problem == "needs 9.0 MiB free for its download before the inactive slot can be emptied, 5.0 MiB free"
    # the download fits, the release does not, even with the inactive slot emptied
    problem = space_problem(free=10 * MIB, reclaim=2 * MIB, download=8 * MIB, tree=20 * MIB)
    assert problem == ("needs 21.0 MiB for the new slot, 4.0 MiB available once it is downloaded and the inactive "
                       "slot (2.0 MiB) is emptied")
    # exact boundaries
    assert space_problem(free=8 * MIB + SPACE_SLACK, reclaim=0, download=8 * MIB, tree=0) is None
    assert space_problem(free=8 * MIB + SPACE_SLACK - 1, reclaim=0, download=8 * MIB, tree=0) is not None
    assert space_problem(free=SPACE_SLACK + 3, reclaim=7, download=3, tree=7) is None
    assert space_problem(free=SPACE_SLACK + 3, reclaim=6, download=3, tree=7) is not None
    # a cached download (0 bytes to fetch) still needs its slot
    assert space_problem(free=SPACE_SLACK, reclaim=MIB, download=0, tree=MIB) is None


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """1.0.0 and 1.1.0 small, 1.2.0 four times as large (it cannot fit where 1.0.0 was)."""
    r = make_repo(tmp_path_factory.mktemp("pub"))
    publish(r, "1.0.0", app_files("1.0.0"))
    publish(r, "1.1.0", app_files("1.1.0"))
    publish(r, "1.2.0", app_files("1.2.0", n_files=20, size=4000))
    return r


def _running_1_1(tmp_path: Path, repo: Repo) -> tuple[Path, Installer]:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    ins.install("1.1.0")
    return d, ins


def _sizes(ins: Installer, version: str) -> tuple[int, int]:
    """(download bytes, tree bytes) of ``version``'s full artifact, from the signed metadata."""
    cfg = ins.config()
    with ins.site.repository(cfg) as client:
        client.refresh()
        release = client.channel_index("stable").find(version, "any")
        assert release is not None
        return release.full.length, tree_size(client.fetch_manifest(release))


def _snapshot(d: Path) -> tuple[dict[str, str], dict[str, str], bytes, list[str]]:
    return (tree_digest(d / "slots/a"), tree_digest(d / "slots/b"), (d / "state.json").read_bytes(),
            sorted(os.listdir(d / "cache")))


def test_a_download_that_does_not_fit_is_refused_before_anything_changes(tmp_path: Path, repo: Repo) -> None:
    d, ins = _running_1_1(tmp_path, repo)
    download, _tree = _sizes(ins, "1.2.0")
    before = _snapshot(d)
    reclaim = _disk_size(d / "slots/a")
    ins.stager.free_bytes = lambda path: download + SPACE_SLACK - 1  # type: ignore[method-assign]
    with pytest.raises(InstallError) as err:
        ins.install("1.2.0")
    assert str(err.value).startswith(f"not enough free space in {d}: 1.2.0 needs ")
    assert "free for its download before the inactive slot can be emptied" in str(err.value)
    assert str(err.value).endswith("; nothing was changed") and reclaim > 0
    assert _snapshot(d) == before  # slot a (the rollback target) and the cache untouched, state as it was
    assert ins.rollback().version == "1.0.0"  # instant rollback still there


def test_a_release_that_does_not_fit_in_the_emptied_slot_is_refused_before_the_download(tmp_path: Path,
                                                                                        repo: Repo) -> None:
    d, ins = _running_1_1(tmp_path, repo)
    download, tree = _sizes(ins, "1.2.0")
    reclaim = _disk_size(d / "slots/a")
    assert tree > reclaim
    before = _snapshot(d)
    ins.stager.free_bytes = lambda path: download + SPACE_SLACK  # type: ignore[method-assign]
    with pytest.raises(InstallError, match=r"needs [\d.]+ MiB for the new slot, [\d.]+ MiB available once it is "
                                           r"downloaded and the inactive slot \([\d.]+ MiB\) is emptied"):
        ins.install("1.2.0")
    assert _snapshot(d) == before
    # exactly enough for both phases: the install goes through
    ins.stager.free_bytes = lambda path: download + SPACE_SLACK + tree - reclaim  # type: ignore[method-assign]
    assert ins.install("1.2.0").outcome == "committed"
    assert (d / "current/VERSION").read_text() == "1.2.0\n"


@pytest.fixture(scope="module")
def delta_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = make_repo(tmp_path_factory.mktemp("delta-pub"))
    for i, v in enumerate(("1.0.0", "1.1.0")):
        publish_with(r, v, i, deltas=1)
    return r


def test_the_delta_path_is_checked_before_its_deltas_are_downloaded(tmp_path: Path, delta_repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(delta_repo.dir), delta_repo)
    ins.install("1.0.0")
    found = ins.check("1.1.0")
    assert found.path != "full" and 0 < found.download_bytes < 100_000, found  # a small delta, not the artifact
    before = _snapshot(d)
    ins.stager.free_bytes = lambda path: found.download_bytes  # type: ignore[method-assign]
    with pytest.raises(InstallError, match="free for its download before the inactive slot can be emptied"):
        ins.install("1.1.0")
    assert _snapshot(d) == before  # no delta was downloaded
    del ins.stager.free_bytes
    result = ins.install("1.1.0")
    assert result.outcome == "committed" and result.route["path"] != "full"
    assert (d / "current/VERSION").read_text() == app("1.1.0", 1)["VERSION"]
