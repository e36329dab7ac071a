"""Issue 23, item 1: the publisher writes stock ``bsdiff4`` ops again where they are smallest (a few bytes changed
in a large file: bz2 codes bsdiff's zero runs in a few bytes, raw LZMA2 pays about one match per 273 of them), the
client rebuilds them, and a corrupt one is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinnacle_updates.client.delta import apply_delta
from pinnacle_updates.client.delta.errors import DeltaError
from pinnacle_updates.formats.delta_format import read_header
from pinnacle_updates.formats.delta_kinds import OpKind
from pinnacle_updates.formats.index import Manifest
from pinnacle_updates.repo_tools.artifact import build_artifact
from pinnacle_updates.repo_tools.core.delta_plan import plan_delta
from pinnacle_updates.repo_tools.delta import BSDIFF4_TRY_MAX, build_delta
from tests.conftest import tree_digest, write_tree
from tests.publisher.test_delta_publish import _blob


def _manifest(root: Path, out: Path, version: str) -> Manifest:
    return build_artifact(root, out, version).manifest


def _pair(tmp: Path, changed: dict[int, bytes], rewrite: bytes | None = None) -> tuple[Path, Path]:
    """Two trees with one 3 MB file: ``changed`` bytes replaced at their offsets (a version string bumped in a
    bundle), or the file replaced by ``rewrite``."""
    big = _blob(1, 3 << 20)
    new = bytearray(big)
    for at, data in changed.items():
        new[at:at + len(data)] = data
    v1 = write_tree(tmp / "v1", {"lib/bundle.js": big, "VERSION": "1"})
    v2 = write_tree(tmp / "v2", {"lib/bundle.js": rewrite if rewrite is not None else bytes(new), "VERSION": "2"})
    return v1, v2


def _build(tmp: Path, v1: Path, v2: Path) -> tuple[Path, Manifest, Manifest]:
    base, target = _manifest(v1, tmp / "a1", "1.0.0"), _manifest(v2, tmp / "a2", "1.0.1")
    out = tmp / "d.pdelta"
    (tmp / "work").mkdir()
    build_delta(v1, base, v2, target, out, tmp / "work")
    return out, base, target


def test_small_change_in_a_large_file_is_a_bsdiff4_op_the_client_applies(tmp_path: Path) -> None:
    v1, v2 = _pair(tmp_path, {1000: b"5.6.3", 2_000_000: b"5.6.3", 3_000_000: b"x"})
    delta, base, target = _build(tmp_path, v1, v2)
    plan = plan_delta(base, target, 2 << 30)
    assert {p.entry.path: p.candidates[-1] for p in plan.files}["lib/bundle.js"] is OpKind.BSDIFF4
    with open(delta, "rb") as f:
        header = read_header(f)
    ops = {op.path: op for op in header.ops}
    assert ops["lib/bundle.js"].op is OpKind.BSDIFF4
    assert ops["lib/bundle.js"].length < 400  # bsdiff-lzma and zstd-patch need several times more here
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(delta, v1, base, target, dest)
    assert tree_digest(dest) == tree_digest(v2)


def test_rewritten_file_gets_no_bsdiff4(tmp_path: Path) -> None:
    """Blocks that are not mostly zeros: bz2 is not even run (bsdiff-lzma codes them smaller)."""
    v1, v2 = _pair(tmp_path, {}, rewrite=_blob(2, 3 << 20))
    delta, _, _ = _build(tmp_path, v1, v2)
    assert BSDIFF4_TRY_MAX < 3 << 20
    with open(delta, "rb") as f:
        header = read_header(f)
    assert OpKind.BSDIFF4 not in {op.op for op in header.ops}


def test_corrupt_bsdiff4_op_is_refused(tmp_path: Path) -> None:
    v1, v2 = _pair(tmp_path, {500: b"abc"})
    delta, base, target = _build(tmp_path, v1, v2)
    with open(delta, "rb") as f:
        header = read_header(f)
        start = f.tell()
    op = {op.path: op for op in header.ops}["lib/bundle.js"]
    assert op.op is OpKind.BSDIFF4
    data = bytearray(delta.read_bytes())
    at = start + op.offset + op.length - 4  # inside the bz2 extra block
    data[at] ^= 0xFF
    delta.write_bytes(bytes(data))
    dest = tmp_path / "slot"
    dest.mkdir()
    with pytest.raises(DeltaError) as err:
        apply_delta(delta, v1, base, target, dest)
    assert "\n" not in str(err.value) and "lib/bundle.js" in str(err.value)
