"""``bsdiff-shared`` ops: the bsdiff blocks of every patched file of a per-file delta in three shared
LZMA streams (one model per block kind instead of three per file)."""

from __future__ import annotations

import io
import lzma
from dataclasses import replace
from pathlib import Path

import pytest

from pinnacle_updates.client.delta import DeltaError, apply_delta
from pinnacle_updates.formats import bsdiff_lzma, delta_segments
from pinnacle_updates.formats.delta_format import DeltaHeader, OpKind, read_header, write_delta
from pinnacle_updates.formats.index import Manifest
from pinnacle_updates.formats.tree import verify_tree
from pinnacle_updates.repo_tools.delta import build_delta
from tests.client.test_delta_client import manifest_of, noise
from tests.conftest import tree_digest, write_tree

Trees = tuple[tuple[Path, Manifest], tuple[Path, Manifest]]


def edited(seed: str, size: int, at: int) -> bytes:
    data = bytearray(noise(seed, size))
    for i in range(at, size, 48):  # an address moved every 48 bytes, as in a rebuilt library
        data[i] = (data[i] + 0x40) & 0xFF
    return bytes(data)


@pytest.fixture
def libs(tmp_path: Path) -> Trees:
    """Four libraries changed the same way, and an unchanged file: the shared streams win."""
    names = ["lib/lib0.so", "lib/lib1.so", "plugins/p0.so", "plugins/p1.so"]
    base = write_tree(tmp_path / "base", {**{n: noise(n, 60_000) for n in names}, "share/same.txt": "same\n"})
    new = write_tree(tmp_path / "new", {**{n: edited(n, 60_000, 100) for n in names}, "share/same.txt": "same\n"})
    return (base, manifest_of(base, "1.0.0")), (new, manifest_of(new, "1.1.0"))


def build(tmp_path: Path, trees: Trees) -> bytes:
    (base_root, base_m), (root, target_m) = trees
    out, work = tmp_path / "d.pdelta", tmp_path / "work"
    work.mkdir(exist_ok=True)
    build_delta(base_root, base_m, root, target_m, out, work, manifest_level=10)
    return out.read_bytes()


def parts(data: bytes) -> tuple[DeltaHeader, list[bytes], list[bytes], bytes]:
    """The header, each op's data (in op order), the three shared streams and the manifest patch."""
    header = read_header(io.BytesIO(data))
    ops = [data[slice(*header.data_range(op))] for op in header.ops if op.op.has_data]
    streams = [data[start:end] for start, end in header.shared_ranges()]
    return header, ops, streams, data[slice(*header.manifest_range())]


def assemble(header: DeltaHeader, op_data: list[bytes], streams: list[bytes], manifest: bytes) -> bytes:
    """A well-formed container from parts (offsets and lengths recomputed)."""
    ops, offset, it = [], header.manifest_length, iter(op_data)
    payloads = []
    for op in header.ops:
        if op.op.has_data:
            chunk = next(it)
            ops.append(replace(op, offset=offset, length=len(chunk)))
            offset += len(chunk)
            payloads.append(chunk)
        else:
            ops.append(op)
    new = replace(header, ops=tuple(ops), shared=(len(streams[0]), len(streams[1]), len(streams[2])), payload_start=0)
    out = io.BytesIO()
    write_delta(out, new, [manifest, *payloads, *streams])
    return out.getvalue()


def apply_to(tmp_path: Path, trees: Trees, data: bytes, name: str = "slot", skip: tuple[str, ...] = ()) -> Path:
    (base_root, base_m), (_, target_m) = trees
    delta, dest = tmp_path / f"{name}.pdelta", tmp_path / name
    delta.write_bytes(data)
    dest.mkdir()
    apply_delta(delta, base_root, base_m, target_m, dest, skip=skip)
    return dest


def test_patched_files_share_three_streams(tmp_path: Path, libs: Trees) -> None:
    data = build(tmp_path, libs)
    header, op_data, _, _ = parts(data)
    kinds = [op.op for op in header.ops]
    assert kinds.count(OpKind.BSDIFF_SHARED) == 4 and OpKind.BSDIFF_LZMA not in kinds
    assert header.shared is not None and all(len(d) <= 6 for d in op_data)  # each op: three lengths
    per_file = sum(len(bsdiff_lzma.encode((libs[0][0] / p).read_bytes(), (libs[1][0] / p).read_bytes()))
                   for p in ("lib/lib0.so", "lib/lib1.so", "plugins/p0.so", "plugins/p1.so"))
    assert sum(header.shared) < per_file  # one model per block kind: the repeated change is learnt once
    assert tree_digest(apply_to(tmp_path, libs, data)) == tree_digest(libs[1][0])


def test_blocks_of_files_not_written_are_skipped(tmp_path: Path, libs: Trees) -> None:
    dest = apply_to(tmp_path, libs, build(tmp_path, libs), skip=("lib",))  # a persistent path: not written
    assert not (dest / "lib").exists() and (dest / "share/same.txt").read_text() == "same\n"
    for name in ("plugins/p0.so", "plugins/p1.so"):  # after the skipped ops: their own blocks, not lib's
        assert (dest / name).read_bytes() == (libs[1][0] / name).read_bytes()


def fails(tmp_path: Path, libs: Trees, data: bytes, match: str, name: str = "bad") -> None:
    with pytest.raises(DeltaError, match=match) as info:
        apply_to(tmp_path, libs, data, name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("stream", [0, 1, 2])
def test_a_corrupted_stream_is_refused(tmp_path: Path, libs: Trees, stream: int) -> None:
    header, op_data, streams, manifest = parts(build(tmp_path, libs))
    broken = bytearray(streams[stream])
    broken[len(broken) // 2] ^= 0x55
    streams[stream] = bytes(broken)
    fails(tmp_path, libs, assemble(header, op_data, streams, manifest), r"shared \w+ stream|sha256|bsdiff")


def test_a_truncated_delta_is_refused(tmp_path: Path, libs: Trees) -> None:
    fails(tmp_path, libs, build(tmp_path, libs)[:-5], "delta truncated")


def recoded(blocks: bytes) -> bytes:
    return lzma.compress(blocks, format=lzma.FORMAT_RAW, filters=bsdiff_lzma.shared_filters(len(blocks)))


def test_a_stream_holding_more_than_its_ops_take_is_refused(tmp_path: Path, libs: Trees) -> None:
    header, op_data, streams, manifest = parts(build(tmp_path, libs))
    assert header.shared is not None
    total = sum(bsdiff_lzma.parse_lengths(d, 60_000)[2] for d in op_data)
    extra = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=bsdiff_lzma.shared_filters(total))
    streams[2] = recoded(extra.decompress(streams[2]) + b"hidden bytes")
    bad = assemble(header, op_data, streams, manifest)
    fails(tmp_path, libs, bad, r"the shared extra stream (holds more|does not end)")


def test_lengths_beyond_the_signed_size_are_refused(tmp_path: Path, libs: Trees) -> None:
    header, op_data, streams, manifest = parts(build(tmp_path, libs))
    op_data[0] = bsdiff_lzma.lengths_record(0, 60_000, 1)  # diff + extra: one byte more than the file
    bad = assemble(header, op_data, streams, manifest)
    fails(tmp_path, libs, bad, "declare more than an output of 60000 bytes allows")
    op_data[0] = bsdiff_lzma.lengths_record(0, 1, 2) + b"\0"
    fails(tmp_path, libs, assemble(header, op_data, streams, manifest), "bytes after its three lengths", "bad2")


def test_shared_streams_need_shared_ops(tmp_path: Path, libs: Trees) -> None:
    header, op_data, streams, manifest = parts(build(tmp_path, libs))
    with pytest.raises(Exception, match="shared streams come with bsdiff-shared ops"):
        assemble(replace(header, ops=tuple(replace(op, op=OpKind.BSDIFF_LZMA) if op.op is OpKind.BSDIFF_SHARED
                                           else op for op in header.ops)), op_data, streams, manifest)


def test_the_real_tree_verifies(tmp_path: Path, libs: Trees) -> None:
    assert verify_tree(apply_to(tmp_path, libs, build(tmp_path, libs)), libs[1][1]) == []


def test_a_shared_op_over_the_whole_patch_limit_is_refused_even_when_skipped(
    tmp_path: Path, libs: Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = build(tmp_path, libs)
    monkeypatch.setattr(delta_segments, "WHOLE_PATCH_MAX", 50_000)  # the libraries are 60,000 bytes
    fails(tmp_path, libs, data, r"lib/lib0\.so: a bsdiff-shared op for a 60000-byte file is over the 50000-byte limit")
    with pytest.raises(DeltaError, match="over the 50000-byte limit"):
        apply_to(tmp_path, libs, data, "skipped", skip=("lib",))  # not written, but its blocks would be decoded
