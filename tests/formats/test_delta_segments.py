"""Large files in deltas: ``zstd-segments`` ops (bounded memory whatever the file size) and the limit on
whole-file patches, proven on small files by lowering the segmenting parameters."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import pytest

from pinnacle_updates.client.delta import DeltaError, apply_delta
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats import delta_segments
from pinnacle_updates.formats.delta_format import DeltaHeader, OpKind, read_header, write_delta
from pinnacle_updates.formats.delta_segments import (
    PREFIX_MIN,
    RECORD,
    SEGMENT_BASE_MAX,
    SEGMENT_MAX,
    Segment,
    SegmentError,
    SegmentParams,
    parse_record,
    regions,
)
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry
from pinnacle_updates.formats.tree import verify_tree
from pinnacle_updates.repo_tools import delta as rdelta
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.core.delta_plan import ZSTD_MEMORY, bsdiff_lzma_memory, plan_delta, segments_memory
from pinnacle_updates.repo_tools.delta import build_delta, segment_frame
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests import helpers_client as hc
from tests.client.test_delta_client import delta_file, forge_delta, manifest_of, noise
from tests.conftest import tree_digest, write_tree

MIB = 1 << 20
SMALL = SegmentParams(whole_max=64 << 10, size=16 << 10, margin=8 << 10)
"""Segments of 16 KiB against 32 KiB regions for files over 64 KiB: every rule of the large-file path, on
files of a few hundred KB."""

# -- the pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(("base_size", "size"), [(300_000, 310_000), (300_000, 100_000), (20_000, 300_000),
                                                 (5, 100_000), (0, 40_000), (100_000, 0)])  # fmt: skip
def test_regions_cover_the_file_and_stay_in_the_base(base_size: int, size: int) -> None:
    segs = regions(base_size, size, SMALL)
    assert sum(s.size for s in segs) == size
    assert all(1 <= s.size <= SMALL.size for s in segs)
    for i, s in enumerate(segs):
        assert s.base_offset + s.base_length <= base_size and s.base_length <= SMALL.size + 2 * SMALL.margin
        assert s.base_length == 0 or s.base_length >= PREFIX_MIN
        assert s.base_length == min(s.size + 2 * SMALL.margin, base_size) or base_size < PREFIX_MIN
        start = i * SMALL.size
        if SMALL.margin <= start and start + s.size + SMALL.margin <= base_size:
            assert s.base_offset == start - SMALL.margin  # the same offsets, widened by the margin
        parse_record(s.record(), base_size, size - start, "x")  # what the publisher writes, the client takes


def test_regions_of_a_grown_file_end_at_the_end_of_the_base() -> None:
    segs = regions(100_000, 200_000, SMALL)
    region = SMALL.size + 2 * SMALL.margin
    assert all(s.base_offset + s.base_length == 100_000 for s in segs[-3:])  # the end of the base
    assert [s.base_length for s in segs[-3:]] == [region, region, segs[-1].size + 2 * SMALL.margin]
    assert (segs[0].base_offset, segs[0].base_length) == (0, region)


def record(base_offset: int, base_length: int, size: int, length: int = 0) -> bytes:
    return RECORD.pack(base_offset, base_length, size, length)


@pytest.mark.parametrize(("data", "message"), [
    (record(0, 0, 0), "segment of 0 bytes"),
    (record(0, 0, SEGMENT_MAX + 1), f"segment of {SEGMENT_MAX + 1} bytes"),
    (record(0, 0, 1001), r"declare more than the signed size \(1001 > 1000 left\)"),
    (record(0, PREFIX_MIN - 1, 10), "base region of 7 bytes"),
    (record(0, SEGMENT_BASE_MAX + 1, 10), "base region of"),
    (record(4000, 200, 10), "base region 4000\\+200 outside the 4096-byte base file"),
    (record(5, 0, 10), "empty base region must have offset 0"),
    (record(0, 0, 10)[:-1], "truncated"),
])  # fmt: skip
def test_bad_segment_records_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(SegmentError, match=message):
        parse_record(data, 4096, 1000, "f: segment #1")


def test_segment_params_stay_within_the_format_limits() -> None:
    assert delta_segments.DEFAULT_SEGMENTS.size + 2 * delta_segments.DEFAULT_SEGMENTS.margin == SEGMENT_BASE_MAX
    for bad in ({"size": SEGMENT_MAX + 1}, {"size": 0}, {"margin": SEGMENT_BASE_MAX}, {"whole_max": 0},
                {"whole_max": delta_segments.WHOLE_PATCH_MAX + 1}):  # fmt: skip
        with pytest.raises(ValueError, match="outside"):
            SegmentParams(**bad)


# -- the plan ----------------------------------------------------------------------------------------


def _manifest(version: str, files: dict[str, tuple[int, str]]) -> Manifest:
    entries = tuple(ManifestEntry(p, EntryType.FILE, 0o644, size=n, sha256=s) for p, (n, s) in sorted(files.items()))
    return Manifest(version, Digest(1, "0" * 64), entries)


def test_large_files_are_segmented_never_patched_whole() -> None:
    base = _manifest("1", {"big.pack": (100 * MIB, "a" * 64), "mid.so": (40 * MIB, "a" * 64)})
    target = _manifest("2", {"big.pack": (101 * MIB, "b" * 64), "mid.so": (40 * MIB, "b" * 64)})
    plan = {f.entry.path: f for f in plan_delta(base, target, 64 << 30).files}
    assert plan["big.pack"].candidates == (OpKind.ZSTD_SEGMENTS,)  # even with memory to spare
    assert "segmented" in plan["big.pack"].skipped[0]
    assert plan["big.pack"].memory == segments_memory(100 * MIB, 101 * MIB) < 400 * MIB
    # Under WHOLE_PATCH_MAX a file is patched whole by bsdiff-lzma, but zstd patch-from over 64 MiB of window
    # loses its matches at level 19 (ZSTD_PATCH_TOTAL_MAX): segments take its place.
    assert plan["mid.so"].candidates == (OpKind.ZSTD_SEGMENTS, OpKind.BSDIFF_LZMA, OpKind.BSDIFF4)
    assert plan["mid.so"].memory == bsdiff_lzma_memory(40 * MIB, 40 * MIB)
    near = _manifest("2", {"big.pack": (101 * MIB, "b" * 64), "mid.so": (24 * MIB, "b" * 64)})
    near_plan = plan_delta(base, near, 64 << 30).files[1]
    assert near_plan.candidates == (OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA, OpKind.BSDIFF4)
    small = {f.entry.path: f for f in plan_delta(base, target, 64 << 30, SMALL).files}
    assert small["mid.so"].candidates == (OpKind.ZSTD_SEGMENTS,)


def test_segments_over_the_budget_fall_back_to_plain_zstd() -> None:
    base = _manifest("1", {"big.pack": (100 * MIB, "a" * 64)})
    target = _manifest("2", {"big.pack": (100 * MIB, "b" * 64)})
    [item] = plan_delta(base, target, ZSTD_MEMORY).files
    assert item.candidates == (OpKind.ZSTD,) and "zstd-segments needs" in item.skipped[-1]


def test_a_guessed_base_keeps_plain_zstd_next_to_segments() -> None:
    base = _manifest("1", {"d/old.pack": (300_000, "a" * 64)})
    target = _manifest("2", {"d/new.pack": (310_000, "b" * 64)})
    [item] = plan_delta(base, target, 2 << 30, SMALL).files
    assert (item.match, item.candidates) == ("similar-size", (OpKind.ZSTD, OpKind.ZSTD_SEGMENTS))


# -- publisher and client, on real trees -----------------------------------------------------------


def big_v1() -> bytes:
    return noise("big", 300_000)


def big_v2() -> bytes:
    """An overwrite in the middle, an insertion after it and an append: the shapes of a real big file's edits."""
    data = bytearray(big_v1())
    data[150_000:150_100] = noise("edit", 100)
    data[200_000:200_000] = noise("insert", 1000)
    return bytes(data) + noise("append", 5000)


Trees = tuple[tuple[Path, Manifest], tuple[Path, Manifest]]


@pytest.fixture
def trees(tmp_path: Path) -> Trees:
    same = noise("same", 9000)
    base = write_tree(tmp_path / "base", {"data/big.pack": big_v1(), "VERSION": "1\n", "lib/same.dat": same})
    new = write_tree(tmp_path / "new", {"data/big.pack": big_v2(), "VERSION": "2\n", "lib/same.dat": same})
    return (base, manifest_of(base, "1.0.0")), (new, manifest_of(new, "1.1.0"))


def built(tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, DeltaHeader]:
    (base_root, base_m), (root, target_m) = trees
    monkeypatch.setattr(rdelta, "SEGMENTS", SMALL)
    monkeypatch.setattr(rdelta, "ARCHIVE_MAX", 0, raising=False)  # per-file ops, also where a whole-archive kind exists
    out, work = tmp_path / "d.pdelta", tmp_path / "work"
    work.mkdir(exist_ok=True)
    header, digest = build_delta(base_root, base_m, root, target_m, out, work)
    assert digest.length == out.stat().st_size
    return out, header


def apply_to(tmp_path: Path, trees: Trees, delta: Path) -> Path:
    (base_root, base_m), (_, target_m) = trees
    dest = tmp_path / "slot"
    dest.mkdir(exist_ok=True)
    apply_delta(delta, base_root, base_m, target_m, dest)
    return dest


def test_segmented_delta_round_trip(tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch) -> None:
    delta, header = built(tmp_path, trees, monkeypatch)
    ops_by_path = {op.path: op for op in header.ops}
    big = ops_by_path["data/big.pack"]
    assert big.op is OpKind.ZSTD_SEGMENTS and big.base == "data/big.pack"
    assert big.length < 12_000  # the 1000 inserted, 100 edited and 5000 appended bytes, and 20 small frames
    before = tree_digest(trees[0][0])
    dest = apply_to(tmp_path, trees, delta)
    assert verify_tree(dest, trees[1][1]) == [] and tree_digest(dest) == tree_digest(trees[1][0])
    assert tree_digest(trees[0][0]) == before  # the base is only read


def test_segment_encoding_is_deterministic(tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch) -> None:
    first = built(tmp_path, trees, monkeypatch)[0].read_bytes()
    assert built(tmp_path, trees, monkeypatch)[0].read_bytes() == first


def segments_of(data: bytes, header: DeltaHeader, path: str) -> list[tuple[Segment, bytes]]:
    """The records and frames of ``path``'s op in the delta ``data``."""
    op = next(o for o in header.ops if o.path == path)
    start, end = header.data_range(op)
    out, at = [], start
    while at < end:
        seg = Segment(*RECORD.unpack(data[at : at + RECORD.size]))
        at += RECORD.size
        out.append((seg, data[at : at + seg.length]))
        at += seg.length
    return out


def with_segments(
    data: bytes, header: DeltaHeader, path: str, segs: list[tuple[Segment, bytes]], tail: bytes = b""
) -> bytes:
    """``data`` with the op of ``path`` made of ``segs`` (records rewritten with each frame's length), then
    ``tail`` (raw bytes); every other byte of the container is kept, later ops move."""
    op = next(o for o in header.ops if o.path == path)
    start, end = header.data_range(op)
    new = b"".join(Segment(s.base_offset, s.base_length, s.size, len(f)).record() + f for s, f in segs) + tail
    moved = len(new) - op.length
    ops_out = tuple(
        replace(o, length=len(new)) if o is op
        else replace(o, offset=o.offset + moved) if o.op.has_data and o.offset > op.offset else o
        for o in header.ops
    )
    out = io.BytesIO()
    write_delta(out, replace(header, ops=ops_out), [data[header.payload_start : start], new, data[end:]])
    return out.getvalue()


def refused(tmp_path: Path, trees: Trees, data: bytes, match: str) -> None:
    bad = tmp_path / "bad.pdelta"
    bad.write_bytes(data)
    dest = tmp_path / "bad-slot"
    dest.mkdir()
    with pytest.raises(DeltaError, match=match) as info:
        apply_delta(bad, trees[0][0], trees[0][1], trees[1][1], dest)
    assert "\n" not in str(info.value) and str(info.value).startswith("delta from 1.0.0: ")
    out = dest / "data/big.pack"
    assert not out.exists() or out.stat().st_size <= len(big_v2())  # never more than the signed size


def _tampered(
    tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, DeltaHeader, list[tuple[Segment, bytes]]]:
    delta, _ = built(tmp_path, trees, monkeypatch)
    data = delta.read_bytes()
    header = read_header(io.BytesIO(data))
    return data, header, segments_of(data, header, "data/big.pack")


def test_corrupted_segment_frame_is_refused(tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch) -> None:
    data, header, segs = _tampered(tmp_path, trees, monkeypatch)
    seg, frame = segs[9]  # the segment holding the overwrite in the middle
    bad = bytearray(frame)
    bad[len(bad) // 2] ^= 0xFF
    segs[9] = (seg, bytes(bad))
    refused(tmp_path, trees, with_segments(data, header, "data/big.pack", segs), r"data/big\.pack")


@pytest.mark.parametrize(("change", "match"), [
    ("more", r"segment #20: segments declare more than the signed size \(10 > 0 left\)"),
    ("fewer", r"segments end 5000 bytes short of the signed size"),
    ("outside", r"segment #1: base region 299000\+16384 outside the 300000-byte base file"),
    ("trailing", r"segment #19: zstd data does not end with the output"),
    ("short-frame", r"segment #19 decodes to fewer bytes than declared"),
    ("long-frame", r"segment #19: zstd data does not end with the output"),
    ("frame-past-the-op", r"segment #19: a 1000000-byte frame runs past the op's data"),
    ("record-cut", r"segment #19: segment record truncated"),
])  # fmt: skip
def test_malformed_segments_are_refused(
    tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch, change: str, match: str
) -> None:
    data, header, segs = _tampered(tmp_path, trees, monkeypatch)
    assert len(segs) == 19  # 306,000 bytes in 16 KiB segments
    last, frame = segs[-1]
    tail = b""
    if change == "more":
        segs.append((Segment(0, 0, 10), segment_frame(b"", b"x" * 10)))
    elif change == "fewer":
        segs[-1] = (replace(last, size=last.size - 5000), segment_frame(b"", b"y" * (last.size - 5000)))
    elif change == "outside":
        segs[0] = (Segment(299_000, 16 << 10, segs[0][0].size), segs[0][1])
    elif change == "trailing":
        segs[-1] = (last, frame + b"\0" * 7)
    elif change == "short-frame":
        segs[-1] = (last, segment_frame(b"", b"z" * (last.size - 1)))
    elif change == "long-frame":
        segs[-1] = (last, segment_frame(b"", b"z" * (last.size + 1)))
    elif change == "frame-past-the-op":
        segs.pop()
        tail = replace(last, length=10**6).record() + frame
    else:
        segs.pop()
        tail = last.record()[:20]
    refused(tmp_path, trees, with_segments(data, header, "data/big.pack", segs, tail), match)


def test_locally_edited_base_of_a_segmented_file_is_never_patched(
    tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    delta, _ = built(tmp_path, trees, monkeypatch)
    edited = bytearray(big_v1())
    edited[250_000] ^= 1
    (trees[0][0] / "data/big.pack").write_bytes(bytes(edited))
    refused(tmp_path, trees, delta.read_bytes(), r"base file data/big\.pack was modified locally")


def test_whole_file_patch_over_the_limit_is_refused(
    tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta from an older publisher (or a buggy one) patching a large file whole would make the client
    hold both files: it is refused (and the installer takes the full artifact)."""
    (base_root, base_m), (root, target_m) = trees
    out, work = tmp_path / "whole.pdelta", tmp_path / "work-whole"
    work.mkdir()
    build_delta(base_root, base_m, root, target_m, out, work)  # default parameters: a whole-file patch
    assert {op.op for op in read_header(io.BytesIO(out.read_bytes())).ops} & {OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA}
    apply_to(tmp_path, trees, out)  # fine under the limit
    monkeypatch.setattr(delta_segments, "WHOLE_PATCH_MAX", 305_000)
    over = r"data/big\.pack: a whole-file (bsdiff-lzma|zstd-patch) patch of a 306000-byte file is over the 305000"
    refused(tmp_path, trees, out.read_bytes(), over)


# -- end to end: publish (in process, small segments), install, update, corrupted segment -------------


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> hc.Repo:
    repo = hc.make_repo(tmp_path / "pub")
    monkeypatch.setattr(rdelta, "SEGMENTS", SMALL)
    monkeypatch.setattr(rdelta, "ARCHIVE_MAX", 0, raising=False)
    store, keys = Repository(repo.dir), KeyStore(repo.keys)
    for version, big in (("1.0.0", big_v1()), ("1.1.0", big_v2())):
        src = tmp_path / f"src-{version}"
        hc.write_tree(src, {"bin/app": f"#!/bin/sh\necho {version}\n", "VERSION": f"{version}\n", "healthy": "ok\n",
                            "data/big.pack": big})
        ops.publish(store, keys, ops.PublishRequest("stable", version, "patch", "any", src, deltas=1))
    return repo


def test_segmented_delta_installs_and_a_corrupted_segment_falls_back(tmp_path: Path, published: hc.Repo) -> None:
    path = delta_file(published, "1.1.0", "1.0.0")
    header = read_header(io.BytesIO(path.read_bytes()))
    assert {op.path: op.op for op in header.ops}["data/big.pack"] is OpKind.ZSTD_SEGMENTS

    good = tmp_path / "good"
    ins = hc.init_client(good, str(published.dir), published)
    ins.install("1.0.0")
    ins.install("1.1.0")
    record = ins.history()[-1]
    assert (record["outcome"], record["path"]) == ("committed", "delta"), record.get("fallback_reason")
    assert (good / "current/data/big.pack").read_bytes() == big_v2()

    def corrupt(data: bytes) -> bytes:
        h = read_header(io.BytesIO(data))
        segs = segments_of(data, h, "data/big.pack")
        seg, frame = segs[9]
        bad = bytearray(frame)
        bad[len(bad) // 2] ^= 0xFF
        segs[9] = (seg, bytes(bad))
        return with_segments(data, h, "data/big.pack", segs)

    forge_delta(published, "1.1.0", "1.0.0", corrupt)
    bad = tmp_path / "bad"
    ins = hc.init_client(bad, str(published.dir), published)
    ins.install("1.0.0")
    ins.install("1.1.0")
    record = ins.history()[-1]
    assert (record["outcome"], record["path"]) == ("committed", "full"), record
    assert re.search(r"^delta from 1\.0\.0: data/big\.pack: ", record["fallback_reason"]), record["fallback_reason"]
    assert (bad / "current/data/big.pack").read_bytes() == big_v2()
    assert Installer(bad).verify().ok
