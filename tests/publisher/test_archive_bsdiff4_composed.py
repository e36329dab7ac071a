"""Issue 23 (second round): the ``archive-bsdiff4`` patch composed from per-file matches
(``repo_tools.tar_bsdiff``) instead of one suffix sort of the whole base tar. It must be a stock ``BSDIFF40``
patch that rebuilds exactly the target's canonical tar from the base's, on trees with every kind of change,
and the publisher must choose it at ``--memory-budget 512M`` on a small change of a large tree, where the
whole-tar sort does not fit."""

from __future__ import annotations

import bz2
import os
import random
import time
import zlib
from pathlib import Path

import bsdiff4
import pytest

from pinnacle_updates.client.delta import apply_delta
from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.delta_format import read_header
from pinnacle_updates.formats.delta_kinds import ContainerKind
from pinnacle_updates.formats.index import Manifest
from pinnacle_updates.repo_tools import delta as publisher
from pinnacle_updates.repo_tools import tar_bsdiff
from pinnacle_updates.repo_tools.artifact import build_artifact
from pinnacle_updates.repo_tools.core.delta_plan import bsdiff4_memory
from pinnacle_updates.repo_tools.errors import UnsafeInputError
from pinnacle_updates.repo_tools.tar_bsdiff import composed_patch
from tests.conftest import tree_digest, write_tree
from tests.publisher.test_delta_publish import _blob

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_kept_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no per-file results kept: a kept result spares composing from reading a file,
    and one test's publish must not decide what another reads."""
    monkeypatch.setattr(tar_bsdiff, "_known", tar_bsdiff._Kept())


def manifests(tmp: Path, v1: Path, v2: Path) -> tuple[Manifest, Manifest]:
    return build_artifact(v1, tmp / "a1", "1.0.0").manifest, build_artifact(v2, tmp / "a2", "1.0.1").manifest


def composed(v1: Path, base: Manifest, v2: Path, target: Manifest) -> bytes:
    with publisher._Tree(v1) as old, publisher._Tree(v2) as new:
        patch = composed_patch(base, target, old.read, new.read)
    assert patch is not None
    return patch


def assert_rebuilds(tmp: Path, v1: Path, v2: Path) -> bytes:
    """The composed patch, after checking stock bsdiff4 turns the base tar into exactly the target tar."""
    base, target = manifests(tmp, v1, v2)
    patch = composed(v1, base, v2, target)
    assert patch.startswith(b"BSDIFF40")
    old = publisher._canonical_tar(v1, base, AssertionError, "base")
    new = publisher._canonical_tar(v2, target, AssertionError, "target")
    assert bsdiff4.patch(old, patch) == new
    return patch


def every_change(tmp: Path) -> tuple[Path, Path]:
    """Unchanged, changed (same and other size), renamed, moved to a new directory, new, deleted, emptied,
    made executable; symlinks kept, retargeted, added and removed; directories added and removed; a path long
    enough for a pax header on both sides."""
    big = _blob(1, 300_000)
    edited = bytearray(big)
    edited[1000:1005] = b"5.6.3"
    edited[200_000:200_000] = b"inserted words"
    long_dir = "deep/" + "d" * 90 + "/" + "e" * 60
    v1 = write_tree(tmp / "v1", {
        "same.txt": "unchanged\n", "lib/bundle.js": big, "lib/small.js": "a = 1;\n", "old/name.bin": _blob(2, 5000),
        "gone.txt": "deleted\n", "empty-soon.txt": "x" * 700, "run.sh": "echo one\n",
        f"{long_dir}/file.txt": "long path v1\n", "olddir/only.txt": "dir goes\n"})
    v2 = write_tree(tmp / "v2", {
        "same.txt": "unchanged\n", "lib/bundle.js": bytes(edited), "lib/small.js": "a = 22;\n",
        "new/place/name.bin": _blob(2, 5000), "added.txt": "brand new\n", "empty-soon.txt": "",
        "run.sh": "#!/bin/sh\necho two\n", f"{long_dir}/file.txt": "long path v2, longer\n",
        "newdir/sub/f.txt": "new dir\n"})
    (v1 / "emptydir").mkdir()
    (v2 / "emptydir2").mkdir()
    for root, links in ((v1, {"link": "same.txt", "link2": "lib/small.js", "gone-link": "same.txt"}),
                        (v2, {"link": "same.txt", "link2": "lib/bundle.js", "new-link": "added.txt"})):
        for name, to in links.items():
            os.symlink(to, root / name)
    return v1, v2


def test_composed_patch_rebuilds_the_target_tar_with_every_kind_of_change(tmp_path: Path) -> None:
    v1, v2 = every_change(tmp_path)
    assert_rebuilds(tmp_path, v1, v2)


def test_composed_patch_of_identical_trees_is_one_tuple(tmp_path: Path) -> None:
    """Nothing changed: one run copies the whole tar (all zeros in the diff block)."""
    v1, _ = every_change(tmp_path)
    base, _ = manifests(tmp_path, v1, v1)
    patch = composed(v1, base, v1, base)
    control, diff, extra = _blocks(patch)
    assert len(control) == bsdiff_lzma.TUPLE and diff == bytes(base.content.length) and extra == b""
    tar = publisher._canonical_tar(v1, base, AssertionError, "base")
    assert bsdiff4.patch(tar, patch) == tar


def _blocks(patch: bytes) -> tuple[bytes, bytes, bytes]:
    """The raw control, diff and extra blocks of a ``BSDIFF40`` patch."""
    control_len = bsdiff4.core.decode_int64(patch[8:16])
    diff_len = bsdiff4.core.decode_int64(patch[16:24])
    body = patch[32:]
    return (bz2.decompress(body[:control_len]), bz2.decompress(body[control_len:control_len + diff_len]),
            bz2.decompress(body[control_len + diff_len:]))


def test_composed_patch_on_random_trees(tmp_path: Path) -> None:
    """Seeded random pairs of trees (files kept, edited, resized, renamed, added, deleted, reordered by name),
    for at most 10 s: stock bsdiff4 rebuilds the target tar every time."""
    rnd = random.Random(23)
    deadline = time.monotonic() + 10
    for i in range(40):
        if time.monotonic() > deadline:
            break
        names = [f"{rnd.choice('abc')}/{rnd.randrange(1000)}.bin" for _ in range(rnd.randint(1, 12))]
        old = {n: _blob(rnd.randrange(1 << 30), rnd.choice([0, 1, 511, 512, 513, 4000, 70_000])) for n in names}
        new: dict[str, bytes | str] = {}
        for n, data in old.items():
            roll = rnd.random()
            if roll < 0.3:
                new[n] = data
            elif roll < 0.5:
                cut = rnd.randrange(len(data) + 1)
                new[n] = data[:cut] + rnd.randbytes(rnd.randint(0, 600)) + data[cut + rnd.randint(0, 300):]
            elif roll < 0.7:
                new[f"z/{rnd.randrange(1000)}-{n.replace('/', '_')}"] = data
            elif roll < 0.85:
                new[f"{rnd.choice('abd')}/{rnd.randrange(1000)}.new"] = rnd.randbytes(rnd.randint(0, 3000))
        case = tmp_path / str(i)
        # a release is never empty (the publisher refuses one)
        v1 = write_tree(case / "v1", {**old, "VERSION": "1\n"})
        v2 = write_tree(case / "v2", {**new, "VERSION": "2\n"})
        assert_rebuilds(case, v1, v2)


def large_tree_pair(tmp: Path) -> tuple[Path, Path]:
    """A tree of 26 MiB (two unchanged 12 MiB data files, a 1 MiB bundle and 400 small modules) where a
    release bumps a version string in the bundle and two modules: the change typescript 5.6.2 -> 5.6.3 is,
    on a tar too large for the whole-tar suffix sort within 512 MiB."""
    rnd = random.Random(5)
    modules: dict[str, bytes | str] = {f"lib/m{i:03d}.js": f"export const m{i} = {i};\n" * (i % 40 + 1)
                                       for i in range(400)}
    modules.update({"data/a.bin": rnd.randbytes(12 * MIB), "data/b.bin": rnd.randbytes(12 * MIB)})
    big = _blob(7, MIB)
    bumped = bytearray(big)
    for at in (1000, 500_000, 1_000_000):
        bumped[at:at + 5] = b"5.6.3"
    v1 = write_tree(tmp / "v1", {**modules, "lib/bundle.js": big, "package.json": '{"version": "5.6.2"}\n'})
    modules.update({"lib/m007.js": "export const m7 = '5.6.3';\n", "lib/m123.js": "export const v = '5.6.3';\n"})
    v2 = write_tree(tmp / "v2", {**modules, "lib/bundle.js": bytes(bumped), "package.json": '{"version": "5.6.3"}\n'})
    return v1, v2


def test_publisher_picks_composed_archive_bsdiff4_at_512m_and_the_client_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1, v2 = large_tree_pair(tmp_path)
    base, target = manifests(tmp_path, v1, v2)
    assert target.content.length > publisher.ARCHIVE_BSDIFF4_SORT_MAX
    need = publisher.archive_bsdiff4_memory(base, target)
    # bounded by the changed bundle, not the tar: the whole-tar suffix sort and the base tar would not fit 512 MiB
    assert bsdiff4_memory(base.content.length, target.content.length) + base.content.length > 512 * MIB > 2 * need
    (tmp_path / "work").mkdir()
    out = tmp_path / "d.pdelta"
    header, _ = publisher.build_delta(v1, base, v2, target, out, tmp_path / "work", 512 * MIB,
                                      whole_archive=True, jobs=1)
    assert header.kind is ContainerKind.WHOLE_ARCHIVE_BSDIFF4
    with open(out, "rb") as f:
        written = read_header(f)
    assert written.kind is ContainerKind.WHOLE_ARCHIVE_BSDIFF4
    assert header.archive_bsdiff4 is not None and header.archive_bsdiff4 < 1000
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(out, v1, base, target, dest)
    assert tree_digest(dest) == tree_digest(v2)
    # the per-file bsdiff4 candidate's blocks of the bundle were kept for the composed patch (not sorted twice)
    bundle = {e.path: e for e in base.entries}["lib/bundle.js"], {e.path: e for e in target.entries}["lib/bundle.js"]
    assert tar_bsdiff._known.get((bundle[0].sha256, bundle[1].sha256)) is not None
    # the same bytes as composing afresh (sorting every changed file again): the publisher did not fall back to
    # the whole-tar sort, and the kept blocks are bsdiff4's own
    monkeypatch.setattr(tar_bsdiff, "_known", tar_bsdiff._Kept())
    start, end = written.archive_range()
    assert out.read_bytes()[start:end] == composed(v1, base, v2, target)


def test_a_source_file_changed_after_its_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    v1, v2 = large_tree_pair(tmp_path)
    base, target = manifests(tmp_path, v1, v2)
    (v2 / "lib" / "bundle.js").write_bytes(b"tampered")
    with pytest.raises(UnsafeInputError, match=r"changed while building the delta: lib/bundle\.js") as info:
        publisher.archive_bsdiff4_patch(v1, base, v2, target, 512 * MIB)
    assert "\n" not in str(info.value)


def test_the_composed_patch_is_not_built_beyond_the_memory_budget(tmp_path: Path) -> None:
    v1, v2 = large_tree_pair(tmp_path)
    base, target = manifests(tmp_path, v1, v2)
    need = publisher.archive_bsdiff4_memory(base, target)
    assert publisher.archive_bsdiff4_patch(v1, base, v2, target, need - 1) is None
    assert publisher.archive_bsdiff4_patch(v1, base, v2, target, need) == composed(v1, base, v2, target)


def test_kept_per_file_blocks_are_bounded_and_returned_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-file results kept for the composed patch never hold more than ``KNOWN_BYTES_MAX`` packed bytes
    (the oldest go first), and what comes back is exactly what was kept."""
    monkeypatch.setattr(tar_bsdiff, "KNOWN_BYTES_MAX", 10_000)
    rnd = random.Random(1)
    kept = [(f"old{i}", f"new{i}", rnd.randbytes(24), bytes(5000), rnd.randbytes(4000)) for i in range(5)]
    for blocks in kept:
        tar_bsdiff.remember(*blocks)
    assert tar_bsdiff._known.packed_bytes() <= 10_000

    def packed_survivors() -> int:  # a fresh sum over what is kept now
        return sum(len(b[2]) + len(zlib.compress(b[3], 1)) + len(zlib.compress(b[4], 1))
                   for b in kept if tar_bsdiff._known.get((b[0], b[1])) is not None)

    assert tar_bsdiff._known.packed_bytes() == packed_survivors() > 0  # the count kept beside them is theirs
    tar_bsdiff.remember(*kept[4])  # remembered again: counted once, nothing else evicted
    assert tar_bsdiff._known.packed_bytes() == packed_survivors()
    assert tar_bsdiff._known.get(("old3", "new3")) is not None
    assert tar_bsdiff._recall("old0", "new0") is None
    assert tar_bsdiff._recall("old4", "new4") == kept[4][2:]
