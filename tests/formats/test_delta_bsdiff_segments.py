"""``bsdiff-segments`` ops (issue 23, item 5): where whole-file bsdiff does not fit the publisher's memory
budget, bsdiff runs window by window (the ``zstd-segments`` framing, ``bsdiff-lzma`` per segment against its
base region), and the client applies it window by window in bounded memory. Proven on small files with the
segmenting parameters lowered and whole-file bsdiff priced out of the budget, as a 512 MiB budget prices it
out of a 30 MB executable."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client.delta import apply_delta
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.delta_apply import kinds as client_kinds
from pinnacle_updates.formats.delta_format import DeltaHeader, OpKind, read_header
from pinnacle_updates.formats.delta_segments import (
    SEGMENT_BASE_MAX,
    SEGMENT_MAX,
    Segment,
    SegmentParams,
    bsdiff_data_max,
    matched_regions,
    regions,
)
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry
from pinnacle_updates.formats.tree import verify_tree
from pinnacle_updates.repo_tools import delta as rdelta
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.core import delta_plan
from pinnacle_updates.repo_tools.core.delta_plan import (
    WINDOW_HEADROOM,
    ZSTD_MEMORY,
    bsdiff_lzma_memory,
    bsdiff_segments_memory,
    bsdiff_windows,
    plan_delta,
    zstd_patch_memory,
)
from pinnacle_updates.repo_tools.delta import bsdiff_segment, build_delta
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests import helpers_client as hc
from tests.client.test_delta_client import delta_file, forge_delta, manifest_of, noise
from tests.conftest import tree_digest, write_tree
from tests.formats.test_delta_segments import Trees, big_v1, big_v2, segments_of, with_segments
from tests.formats.test_delta_segments import refused as segments_refused

MIB = 1 << 20
SMALL = SegmentParams(whole_max=1 * MIB, size=16 << 10, margin=8 << 10)
"""Files up to 1 MiB are patched whole (when the budget allows), windows of 16 KiB against 32 KiB regions."""
PATH = "data/big.pack"

# -- the plan (pure) ---------------------------------------------------------------------------------


def _manifest(version: str, sizes: dict[str, int]) -> Manifest:
    sha = {"1": "a", "2": "b"}[version] * 64
    entries = tuple(ManifestEntry(p, EntryType.FILE, 0o644, size=n, sha256=sha) for p, n in sorted(sizes.items()))
    return Manifest(version, Digest(1, "0" * 64), entries)


@pytest.mark.parametrize("budget", [ZSTD_MEMORY, 256 * MIB, 400 * MIB, 512 * MIB, 1024 * MIB])
def test_windows_are_the_largest_the_budget_allows(budget: int) -> None:
    windows = bsdiff_windows(budget)
    assert windows is not None
    region = windows.size + 2 * windows.margin
    assert windows.margin == windows.size // 2 and region <= SEGMENT_BASE_MAX and windows.size <= SEGMENT_MAX
    assert bsdiff_segments_memory(region, windows.size, windows) <= budget
    if windows.size < SEGMENT_MAX:  # one MiB more would not fit
        bigger = SegmentParams(windows.whole_max, windows.size + MIB, (windows.size + MIB) // 2)
        assert bsdiff_segments_memory(2 * bigger.size, bigger.size, bigger) > budget
    assert bsdiff_windows(64 * MIB) is None  # not even 1 MiB windows


def test_a_file_whole_bsdiff_does_not_fit_gets_bsdiff_segments_beside_zstd_patch() -> None:
    base, target = _manifest("1", {"ruff": 30 * MIB}), _manifest("2", {"ruff": 30 * MIB})
    budget = 430 * MIB  # what a 512 MiB publisher has left: bsdiff-lzma needs 17 x 30 MiB
    [item] = plan_delta(base, target, budget).files
    assert bsdiff_lzma_memory(30 * MIB, 30 * MIB) > budget
    assert item.candidates == (OpKind.ZSTD_PATCH, OpKind.BSDIFF_SEGMENTS)
    assert item.windows == bsdiff_windows(budget - 60 * MIB - WINDOW_HEADROOM)  # both files held, and headroom
    assert item.memory <= budget and item.need(OpKind.BSDIFF_SEGMENTS) <= budget
    # without zstd-patch (it does not fit either) plain zstd is the candidate that always writes something
    [low] = plan_delta(base, target, zstd_patch_memory(30 * MIB, 30 * MIB) - 1).files
    assert low.candidates == (OpKind.ZSTD, OpKind.BSDIFF_SEGMENTS) and low.memory <= zstd_patch_memory(30 * MIB,
                                                                                                        30 * MIB)


def test_where_whole_file_bsdiff_fits_or_files_are_segmented_nothing_changes() -> None:
    base = _manifest("1", {"big.pack": 100 * MIB, "mid.so": 20 * MIB})
    target = _manifest("2", {"big.pack": 101 * MIB, "mid.so": 20 * MIB})
    plan = {f.entry.path: f for f in plan_delta(base, target, 2 << 30).files}
    assert plan["mid.so"].candidates == (OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA, OpKind.BSDIFF4)
    assert plan["big.pack"].candidates == (OpKind.ZSTD_SEGMENTS,) and plan["big.pack"].windows is None


def test_matched_regions_follow_content_moved_past_the_margin() -> None:
    old = noise("lib", 200_000)
    new = old[120_000:] + noise("added", 3000) + old[:120_000]  # a rebuilt library: its halves swapped
    plain, matched = regions(len(old), len(new), SMALL), matched_regions(old, new, SMALL)
    assert [(s.base_length, s.size) for s in matched] == [(s.base_length, s.size) for s in plain]
    start = 0
    for seg in matched:  # each segment's content lies inside its region, 8 KiB of margin on each side
        content = new[start : start + seg.size]
        if noise("added", 3000) not in content and start + seg.size <= 80_000:
            at = old.find(content)
            assert seg.base_offset <= at and at + seg.size <= seg.base_offset + seg.base_length, (start, seg)
        start += seg.size
    assert matched[0].base_offset == 120_000 - SMALL.margin and plain[0].base_offset == 0
    assert matched_regions(old, old, SMALL) == regions(len(old), len(old), SMALL)  # nothing moved
    zeros = bytes(100_000)  # no sample with 8 distinct bytes: the same offsets
    assert matched_regions(zeros, zeros[:50_000], SMALL) == regions(100_000, 50_000, SMALL)

    def patched(segs: list[Segment]) -> int:
        return sum(len(bsdiff_segment(old[s.base_offset : s.base_offset + s.base_length],
                                      new[i * SMALL.size : i * SMALL.size + s.size])) for i, s in enumerate(segs))

    assert patched(matched) < 12_000 < 100_000 < patched(plain)  # 3,000 new bytes and 13 windows; most of 203 KB


# -- publisher and client on real trees ------------------------------------------------------------------


app_v1, app_v2 = big_v1, big_v2  # an overwrite, an insertion (later bytes move by 1000) and an append


@pytest.fixture
def no_whole_bsdiff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small windows, and whole-file bsdiff and zstd-patch priced out of any budget (as 512 MiB prices them
    out of a 30 MB file): bsdiff-segments against plain zstd."""
    monkeypatch.setattr(rdelta, "SEGMENTS", SMALL)
    monkeypatch.setattr(rdelta, "ARCHIVE_MAX", 0, raising=False)  # per-file ops
    for kind in (OpKind.BSDIFF_LZMA, OpKind.ZSTD_PATCH):
        monkeypatch.setitem(delta_plan.ENCODER_MEMORY, kind, lambda old, new: 1 << 60)  # type: ignore[misc]


@pytest.fixture
def trees(tmp_path: Path) -> Trees:
    base = write_tree(tmp_path / "base", {PATH: app_v1(), "VERSION": "1\n"})
    new = write_tree(tmp_path / "new", {PATH: app_v2(), "VERSION": "2\n"})
    return (base, manifest_of(base, "1.0.0")), (new, manifest_of(new, "1.1.0"))


def built(tmp_path: Path, trees: Trees) -> tuple[bytes, DeltaHeader]:
    (base_root, base_m), (root, target_m) = trees
    out, work = tmp_path / "d.pdelta", tmp_path / "work"
    work.mkdir(exist_ok=True)
    build_delta(base_root, base_m, root, target_m, out, work)
    data = out.read_bytes()
    return data, read_header(io.BytesIO(data))  # as a reader parses it (payload offsets included)


def refused(tmp_path: Path, trees: Trees, data: bytes, match: str) -> None:
    """``data`` is refused in one line matching ``match``, nothing over the signed size written
    (``test_delta_segments.refused``), and the base tree (the running slot) is only read."""
    before = tree_digest(trees[0][0])
    segments_refused(tmp_path, trees, data, match)
    assert tree_digest(trees[0][0]) == before


@pytest.mark.usefixtures("no_whole_bsdiff")
def test_bsdiff_segments_round_trip(tmp_path: Path, trees: Trees) -> None:
    data, header = built(tmp_path, trees)
    op = {o.path: o for o in header.ops}[PATH]
    assert op.op is OpKind.BSDIFF_SEGMENTS and op.base == PATH
    segs = segments_of(data, header, PATH)
    assert len(segs) == 19 and sum(s.size for s, _ in segs) == len(app_v2())  # 306,000 bytes in 16 KiB windows
    assert op.length < 12_000  # the 6,100 new bytes and 19 small patches (plain zstd: the whole 306 KB)
    before = tree_digest(trees[0][0])
    dest = tmp_path / "slot"
    dest.mkdir()
    (tmp_path / "d.pdelta").write_bytes(data)
    apply_delta(tmp_path / "d.pdelta", trees[0][0], trees[0][1], trees[1][1], dest)
    assert verify_tree(dest, trees[1][1]) == [] and tree_digest(dest) == tree_digest(trees[1][0])
    assert tree_digest(trees[0][0]) == before
    assert built(tmp_path, trees)[0] == data  # deterministic


@pytest.mark.usefixtures("no_whole_bsdiff")
@pytest.mark.parametrize(("change", "match"), [
    ("record-cut", r"segment #19: segment record truncated"),
    ("oversized", r"segment #19: a \d+-byte bsdiff patch for 11088 bytes is over the \d+-byte bound"),
    ("past-the-op", r"segment #19: a 1000000-byte frame runs past the op's data"),
    ("outside", r"segment #1: base region 299000\+32768 outside the 300000-byte base file"),
    ("more", r"segment #20: segments declare more than the signed size \(10 > 0 left\)"),
    ("fewer", r"segments end 5000 bytes short of the signed size"),
    ("size-mismatch", r"segment #19: bad bsdiff-lzma patch"),
    ("control-over-bound", r"segment #19: bsdiff-lzma blocks declare more than an output of 11088 bytes allows"),
    # bsdiff-lzma has no checksum of its own: a flipped byte in the extra block decodes, the file's signed sha256
    # refuses it
    ("corrupt", r"data/big\.pack: patched output has sha256 [0-9a-f]{16}\.\.\. \(306000 bytes\), expected"),
    ("not-bsl1", r"segment #19: not a bsdiff-lzma patch"),
    ("trailing", r"segment #19: .*bsdiff-lzma"),
])  # fmt: skip
def test_malformed_bsdiff_segments_are_refused(tmp_path: Path, trees: Trees, change: str, match: str) -> None:
    data, header = built(tmp_path, trees)
    segs = segments_of(data, header, PATH)
    last, patch = segs[-1]
    assert last.size == 11_088
    region = app_v1()[last.base_offset : last.base_offset + last.base_length]
    tail = b""
    if change == "record-cut":
        segs.pop()
        tail = last.record()[:20]
    elif change == "oversized":  # refused from the record, before the patch is read
        segs[-1] = (last, patch + b"\0" * (bsdiff_data_max(last.size) + 1 - len(patch)))
    elif change == "past-the-op":
        segs.pop()
        tail = replace(last, length=10**6).record() + patch
    elif change == "outside":
        segs[0] = (Segment(299_000, 32 << 10, segs[0][0].size), segs[0][1])
    elif change == "more":
        segs.append((Segment(0, 0, 10), bsdiff_segment(b"", b"x" * 10)))
    elif change == "fewer":
        segs[-1] = (replace(last, size=last.size - 5000), bsdiff_segment(region, app_v2()[-last.size:-5000]))
    elif change == "size-mismatch":  # a valid patch of one byte less than the record declares
        segs[-1] = (last, bsdiff_segment(region, app_v2()[-last.size:-1]))
    elif change == "control-over-bound":
        fields = bsdiff_lzma.lengths_record(24 * 2000, 0, 0) + bsdiff_lzma.lengths_record(0, 0, 0)[:2]
        segs[-1] = (last, bsdiff_lzma.MAGIC + fields + patch[12:])  # 2,000 tuples: control_max(11088) is 1,370
    elif change == "corrupt":
        bad = bytearray(patch)
        bad[len(bad) // 2] ^= 0xFF
        segs[-1] = (last, bytes(bad))
    elif change == "not-bsl1":
        segs[-1] = (last, b"BSDIFF40" + patch[8:])
    else:
        segs[-1] = (last, patch + b"\0" * 7)
    refused(tmp_path, trees, with_segments(data, header, PATH, segs, tail), match)


@pytest.mark.usefixtures("no_whole_bsdiff")
def test_locally_edited_base_is_never_patched(tmp_path: Path, trees: Trees) -> None:
    data, _ = built(tmp_path, trees)
    edited = bytearray(app_v1())
    edited[250_000] ^= 1
    (trees[0][0] / PATH).write_bytes(bytes(edited))
    refused(tmp_path, trees, data, rf"base file {re.escape(PATH)} was modified locally")


def test_client_memory_is_bounded_whatever_the_file_sizes() -> None:
    bound = client_kinds.OP_APPLIERS[OpKind.BSDIFF_SEGMENTS].decode_memory
    assert bound(1 << 40, 1 << 40) == bound(SEGMENT_BASE_MAX, SEGMENT_MAX) < 512 * MIB
    assert bound(1 << 40, 1 << 40) >= SEGMENT_BASE_MAX + bsdiff_data_max(SEGMENT_MAX) + 2 * SEGMENT_MAX


# -- end to end: publish, install, update, a corrupted window falls back to the full artifact -----------------


@pytest.fixture
def published(tmp_path: Path, no_whole_bsdiff: None) -> hc.Repo:
    """1.0.0 and 1.1.0 published (with a delta) by the publish command's code, in this process."""
    repo = hc.make_repo(tmp_path / "pub")
    for version, app in (("1.0.0", app_v1), ("1.1.0", app_v2)):
        hc.write_tree(tmp_path / version, {"bin/app": f"#!/bin/sh\necho {version}\n", "healthy": "ok\n", PATH: app()})
        ops.publish(Repository(repo.dir), KeyStore(repo.keys),
                    ops.PublishRequest("stable", version, "patch", "any", tmp_path / version, deltas=1))
    return repo


def test_installs_by_bsdiff_segments_and_a_corrupted_window_falls_back(tmp_path: Path, published: hc.Repo) -> None:
    header = read_header(io.BytesIO(delta_file(published, "1.1.0", "1.0.0").read_bytes()))
    assert {op.path: op.op for op in header.ops}[PATH] is OpKind.BSDIFF_SEGMENTS

    record = _update(tmp_path / "good", published)
    assert (record["outcome"], record["path"]) == ("committed", "delta"), record.get("fallback_reason")
    assert (tmp_path / "good/current" / PATH).read_bytes() == app_v2()

    def wrong_window(data: bytes) -> bytes:
        """Window #10 a valid patch of other bytes: only the file's signed sha256 can tell."""
        h = read_header(io.BytesIO(data))
        segs = segments_of(data, h, PATH)
        segs[9] = (segs[9][0], bsdiff_segment(b"", noise("other", segs[9][0].size)))
        return with_segments(data, h, PATH, segs)

    forge_delta(published, "1.1.0", "1.0.0", wrong_window)
    record = _update(tmp_path / "bad", published)
    assert (record["outcome"], record["path"]) == ("committed", "full"), record
    assert re.search(rf"^delta from 1\.0\.0: {re.escape(PATH)}: patched output has sha256 ", record["fallback_reason"])
    assert (tmp_path / "bad/current" / PATH).read_bytes() == app_v2()
    assert Installer(tmp_path / "bad").verify().ok


def _update(root: Path, repo: hc.Repo) -> dict[str, Any]:
    """A new client at ``root`` installs 1.0.0, then updates to 1.1.0; the update's history record."""
    ins = hc.init_client(root, str(repo.dir), repo)
    for version in ("1.0.0", "1.1.0"):
        ins.install(version)
    record: dict[str, Any] = ins.history()[-1]
    return record
