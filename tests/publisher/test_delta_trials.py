"""Issue 23, item 4: the publisher skips the slow zstd candidates of large inputs (a file's level-19 patch, the
whole-archive level-22 frame) where a cheap trial frame says they cannot win, and the delta is the same bytes
as when it builds them all; where the whole kinds may win it still tries them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pinnacle_updates.client.delta import apply_delta
from pinnacle_updates.formats.delta_format import read_header
from pinnacle_updates.formats.delta_kinds import ContainerKind
from pinnacle_updates.repo_tools import delta as rdelta
from pinnacle_updates.repo_tools.artifact import build_artifact
from pinnacle_updates.repo_tools.profiling import Profile, recording
from tests.conftest import tree_digest, write_tree
from tests.publisher.test_delta_publish import _blob, _edit

MIB = 1 << 20
SCALE = 8


def _relocated(data: bytes, seed: int) -> bytes:
    """One byte moved by one in every 512 (addresses shifted through an executable): bsdiff's diff block is
    almost all zeros, where zstd pays a match for every change."""
    rnd = random.Random(seed)
    out = bytearray(data)
    for at in range(0, len(out) - 512, 512):
        j = at + rnd.randrange(512)
        out[j] = (out[j] + 1) & 0xFF
    return bytes(out)


def _build(tmp: Path, v1: Path, v2: Path, name: str, jobs: int = 2) -> tuple[bytes, list[tuple[int, int]]]:
    """The delta v1 -> v2 and the (base length, level) of every zstd patch built for it. The trials start at
    1/8 of their sizes (:data:`SCALE`: the same code paths in an eighth of the time)."""
    base, target = (build_artifact(v, tmp / f"a-{name}-{v.name}", v.name).manifest for v in (v1, v2))
    calls: list[tuple[int, int]] = []
    real = rdelta.zstd_patch

    def spy(old: bytes, new: bytes, level: int = rdelta.PATCH_LEVEL) -> bytes:
        calls.append((len(old), level))
        return real(old, new, level)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rdelta, "zstd_patch", spy)
        mp.setattr(rdelta, "PATCH_TRIAL_MIN", min(rdelta.PATCH_TRIAL_MIN, rdelta.PATCH_TRIAL_MIN // SCALE))
        mp.setattr(rdelta, "ARCHIVE_TRIAL_MIN", min(rdelta.ARCHIVE_TRIAL_MIN, rdelta.ARCHIVE_TRIAL_MIN // SCALE))
        work = tmp / f"work-{name}"
        work.mkdir()
        out = tmp / f"{name}.pdelta"
        rdelta.build_delta(v1, base, v2, target, out, work, whole_archive=True, jobs=jobs)
    return out.read_bytes(), calls


def _slow(calls: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The level-19/22 patches of inputs of at least 1/8 MiB (not the manifest's)."""
    return [(size, level) for size, level in calls if size >= MIB // SCALE and level > rdelta.TRIAL_LEVEL]


def _everything(mp: pytest.MonkeyPatch) -> None:
    """The publisher as before the trials: every candidate built."""
    mp.setattr(rdelta, "PATCH_TRIAL_MIN", 1 << 62)
    mp.setattr(rdelta, "ARCHIVE_TRIAL_MIN", 1 << 62)


def test_trials_skip_the_slow_zstd_candidates_with_the_same_bytes(tmp_path: Path) -> None:
    """A binary with relocated addresses (bsdiff's case, like ruff's executable): neither its level-19 zstd
    patch nor the level-22 frame of the tars is built, on one job or two, and the delta is byte for
    byte the one built with every candidate; the client rebuilds the release from it."""
    old = _blob(41, 600 << 10)
    v1 = write_tree(tmp_path / "1.0.0", {"lib/core.so": old, "VERSION": "1"})
    v2 = write_tree(tmp_path / "1.0.1", {"lib/core.so": _relocated(old, 42), "VERSION": "2"})
    gated, calls = _build(tmp_path, v1, v2, "gated")
    one_job, calls_one = _build(tmp_path, v1, v2, "one-job", jobs=1)
    assert _slow(calls) == _slow(calls_one) == []
    assert [level for _, level in calls].count(rdelta.TRIAL_LEVEL) == 2  # the file's trial and the archive's
    with pytest.MonkeyPatch.context() as mp:
        _everything(mp)
        full, full_calls = _build(tmp_path, v1, v2, "full")
    assert {level for _, level in _slow(full_calls)} == {rdelta.PATCH_LEVEL, rdelta.ARCHIVE_LEVEL}
    assert gated == one_job == full
    delta = tmp_path / "gated.pdelta"
    base = build_artifact(v1, tmp_path / "m1", "1.0.0").manifest
    target = build_artifact(v2, tmp_path / "m2", "1.0.1").manifest
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(delta, v1, base, target, dest)
    assert tree_digest(dest) == tree_digest(v2)


def _translations(tmp: Path) -> tuple[Path, Path]:
    """Six 100 KiB message catalogues that all gain the same new messages (typescript's
    diagnosticMessages files): a change that repeats across files, which only the whole kinds code once."""
    messages = _blob(51, 100 << 10)
    added = _blob(52, 8 << 10)
    old_files: dict[str, bytes | str] = {
        f"locale/{n:02d}/messages.json": _edit(messages, n, edits=5) for n in range(6)}
    new_files: dict[str, bytes | str] = {
        path: bytes(data[:50_000]) + added + bytes(data[50_000:])
        for path, data in old_files.items() if isinstance(data, bytes)
    }
    return write_tree(tmp / "2.0.0", old_files), write_tree(tmp / "2.0.1", new_files)


def test_where_the_whole_kinds_may_win_they_are_still_built(tmp_path: Path) -> None:
    """The same 8 KiB added to six files: the trial says a whole kind may win, solid is
    built and wins, as it does with every candidate built (same bytes)."""
    v1, v2 = _translations(tmp_path)
    gated, calls = _build(tmp_path, v1, v2, "gated")
    # the whole-archive trial decided (the base tar holds the six files)
    assert any(level == rdelta.TRIAL_LEVEL and size > 6 * (100 << 10) for size, level in calls)
    with pytest.MonkeyPatch.context() as mp:
        _everything(mp)
        full, _ = _build(tmp_path, v1, v2, "full")
    assert gated == full
    with open(tmp_path / "gated.pdelta", "rb") as f:
        assert read_header(f).kind in (ContainerKind.SOLID, ContainerKind.WHOLE_ARCHIVE)


def test_profile_names_the_trials(tmp_path: Path) -> None:
    """The trials are parts of their own in ``publish --profile`` (so a profile shows what they cost)."""
    old = _blob(43, 600 << 10)
    v1 = write_tree(tmp_path / "1.0.0", {"lib/core.so": old})
    v2 = write_tree(tmp_path / "1.0.1", {"lib/core.so": _relocated(old, 44)})
    profile = Profile()
    with recording(profile):
        _build(tmp_path, v1, v2, "profiled")
    assert {"zstd-patch-trial", "archive-trial", "bsdiff-matches"} <= set(profile.parts)
    assert "zstd-patch" not in profile.parts and "archive" not in profile.parts

