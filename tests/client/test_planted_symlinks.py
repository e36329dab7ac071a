"""Issue 17, class 5: links and stray entries planted at the client's own working paths.

Every path the client creates or removes in the install directory (the slots' trash paths, the
inactive slot itself, partial downloads, the target cache and its entries, the delta scratch
directory, cached manifests, hooks.log) is handled by the entry itself (``lstat``): a planted
symlink is never followed to write or delete outside the directory, and neither it nor a FIFO, file
or directory in its place blocks a later install. The targets of the links (a directory outside
with canary files) stay byte for byte as they were; the installs are real (nginx on 127.0.0.1 for
the partial-download path, a delta chain for the scratch directory)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinnacle_updates.client.installer import Installer
from pinnacle_updates.client.trust import cache_name
from tests.client.test_delta_client import publish_with
from tests.helpers_client import Repo, app_files, init_client, make_repo, publish, serve, tree_digest


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = make_repo(tmp_path_factory.mktemp("pub"))
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        publish(r, v, app_files(v))
    return r


@pytest.fixture(scope="module")
def url(repo: Repo) -> Iterator[str]:
    with serve(repo.dir) as base:
        yield base


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """What the planted links point at: a directory outside the install directory, with canaries."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    for name in ("canary.txt", "dir/canary.txt", "full.tar.zst", "index.json", "manifest.json", "hooks.log"):
        (out / name).write_text(f"canary {name}\n")
    return out


def _plant(d: Path, outside: Path, names: dict[str, str]) -> dict[str, str]:
    """Plant each ``path (relative to d) -> kind``: ``dir`` (a link to the outside directory), a file
    name under ``outside`` (a link to it), ``fifo``, ``file`` or ``directory`` (stray entries)."""
    for rel, kind in names.items():
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # cache/partial, made by earlier downloads
        elif os.path.lexists(path):
            path.unlink()  # hooks.log, written by earlier hooks
        if kind == "dir":
            path.symlink_to(outside / "dir", target_is_directory=True)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "file":
            path.write_text("stray\n")
        elif kind == "directory":
            (path / "inside").mkdir(parents=True)
        else:
            path.symlink_to(outside / kind)
    return names


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def expired(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _target_names(ins: Installer, version: str) -> tuple[str, str]:
    """The cache names of ``version``'s full artifact and manifest (where ngclient writes them)."""
    with ins.site.repository(ins.config()) as client:
        client.refresh()
        release = client.channel_index("stable").find(version, "any")
        assert release is not None
        return cache_name(release.full.path), cache_name(release.manifest.path)


def test_links_and_stray_entries_at_every_working_path_neither_escape_nor_block(tmp_path: Path, repo: Repo,
                                                                              url: str, outside: Path) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, url, repo, post_swap="echo migrated")
    ins.install("1.0.0")
    ins.install("1.1.0")  # running in slot b; slot a holds 1.0.0 and is the target of the next install
    full, manifest = _target_names(ins, "1.2.0")
    (d / "cache" / full).unlink(missing_ok=True)
    (d / "cache" / manifest).unlink(missing_ok=True)
    before = tree_digest(outside)
    planted = _plant(d, outside, {
        "slots/.trash-a": "dir",
        "slots/.trash-b": "canary.txt",
        "cache/partial": "dir",
        f"cache/{full}": "full.tar.zst",  # ngclient's open(path, "wb") would truncate the link's target
        f"cache/{manifest}": "fifo",  # opened to check a cached copy: a FIFO would hang
        "cache/stable%2Findex.json.tmp": "directory",
        "cache/delta-work": "file",
        "manifests/" + "0" * 64 + ".json": "manifest.json",
        "hooks.log": "hooks.log",
    })

    with _deadline(120):  # a FIFO opened for reading would block: fail instead of hanging the suite
        result = ins.install("1.2.0")
    assert result.outcome == "committed" and (d / "current/VERSION").read_text() == "1.2.0\n"
    assert tree_digest(outside) == before  # nothing outside was written, truncated or deleted
    for rel in planted:
        path = d / rel
        assert not path.is_symlink() and not (path.exists() and not (path.is_file() or path.is_dir())), rel
    assert not os.path.lexists(d / "slots/.trash-a") and not os.path.lexists(d / "cache/delta-work")
    assert (d / "cache/partial").is_dir() and "migrated" in (d / "hooks.log").read_text()
    assert ins.rollback().version == "1.1.0" and tree_digest(outside) == before


def test_a_link_planted_as_the_inactive_slot_is_replaced_not_followed(tmp_path: Path, repo: Repo,
                                                                      outside: Path) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    ins.install("1.1.0")
    before = tree_digest(outside)
    os.rename(d / "slots/a", d / "slots/a.real")
    _plant(d, outside, {"slots/a": "dir", "slots/.trash-a": "canary.txt"})
    result = ins.install("1.2.0")
    assert result.outcome == "committed" and result.slot == "a"
    assert not (d / "slots/a").is_symlink() and (d / "current/VERSION").read_text() == "1.2.0\n"
    assert tree_digest(outside) == before
    assert ins.verify(all_slots=True).ok


@pytest.fixture(scope="module")
def chain_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """1.0.0 -> 1.2.0 is a chain of two deltas: the intermediate release is built in cache/delta-work."""
    r = make_repo(tmp_path_factory.mktemp("chain-pub"))
    for i, v in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        publish_with(r, v, i, deltas=1)
    return r


def test_a_link_planted_as_the_delta_scratch_directory_is_not_written_through(tmp_path: Path, chain_repo: Repo,
                                                                               outside: Path) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(chain_repo.dir), chain_repo)
    ins.install("1.0.0")
    before = tree_digest(outside)
    _plant(d, outside, {"cache/delta-work": "dir"})
    result = ins.install("1.2.0")
    assert result.outcome == "committed" and result.route["path"] == "chain", result.route
    assert tree_digest(outside) == before and not os.path.lexists(d / "cache/delta-work")


def test_a_directory_planted_at_current_is_moved_aside_not_deleted_and_the_swap_works(tmp_path: Path,
                                                                                    repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    (d / "current").unlink()
    (d / "current").mkdir()
    (d / "current/notes.txt").write_text("someone's notes\n")
    assert ins.install("1.1.0").outcome == "committed"
    assert os.readlink(d / "current") == "slots/b" and (d / "current/VERSION").read_text() == "1.1.0\n"
    moved = [p for p in d.iterdir() if p.name.startswith("current.moved-")]
    assert len(moved) == 1 and (moved[0] / "notes.txt").read_text() == "someone's notes\n"
    assert ins.rollback().version == "1.0.0"
