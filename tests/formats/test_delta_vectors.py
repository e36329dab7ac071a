"""The delta test vectors (tests/data/delta_vectors, docs/DELTA-FORMAT.md "Test vectors"):

(a) every vector applies with the real apply code (the manifest read from the delta and checked
    against the signed manifest target, then the tree) and gives exactly the expected digests;
(b) the publisher still writes byte-identical deltas for the same trees (when the encoder libraries
    are the versions the vectors were made with: other versions may code the same data otherwise);
(c) a small decoder written here from docs/DELTA-FORMAT.md alone, importing nothing of
    ``pinnacle_updates``' delta code (only the codecs: zstd, raw LZMA2, the tar module), applies
    every vector but the solid one (Python's lzma module has no preset dictionary; our client calls
    liblzma for it): the spec is complete enough to implement.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import io
import json
import lzma
import os
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pyzstd

from pinnacle_updates.formats.delta_apply import apply_delta, manifest_from_delta
from pinnacle_updates.formats.index import Digest, Manifest, Release, TargetRef, UpdateType
from pinnacle_updates.formats.tree import verify_tree

VECTORS = Path(__file__).resolve().parents[1] / "data" / "delta_vectors"
NAMES = sorted(p.name for p in VECTORS.iterdir() if (p / "vector.json").is_file())


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / name / "vector.json").read_text())
    return doc


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifest(doc: dict[str, Any]) -> Manifest:
    return Manifest.from_bytes(json.dumps(doc).encode())


def release(doc: dict[str, Any]) -> Release:
    target, signed = doc["target_manifest"], doc["signed_manifest"]
    content = Digest.from_dict(target["content"], "content")
    where = f"stable/any/{target['version']}"
    return Release(target["version"], "any", UpdateType.MINOR, "2026-01-01T00:00:00Z", content,
                   TargetRef(f"{where}/full.tar.zst", 1, "0" * 64),
                   TargetRef(f"{where}/manifest.json.zst", signed["length"], signed["sha256"]))


def files_of(root: Path) -> dict[str, str]:
    """sha256 of every regular file below ``root`` (symlinks not followed)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_there_are_vectors_of_every_container_kind() -> None:
    kinds = {load(name)["kind"] for name in NAMES}
    assert kinds == {"ops", "shared", "archive", "archive-bsdiff4", "solid"}
    ops = {op["op"] for name in NAMES for op in load(name)["header_json"].get("ops", [])}
    assert ops >= {"copy", "zstd", "zstd-patch", "bsdiff-lzma", "bsdiff-shared", "zstd-segments", "bsdiff-segments"}


MIB = 1 << 20
SPEC = Path(__file__).resolve().parents[2] / "docs" / "DELTA-FORMAT.md"


def test_the_spec_states_the_limits_the_code_enforces() -> None:
    """Each limit docs/DELTA-FORMAT.md states, next to the constant the code enforces it with: a change
    of either fails here until the other follows."""
    from pinnacle_updates.client.delta.plan import MAX_CHAIN
    from pinnacle_updates.formats import bsdiff_lzma, delta_format, delta_segments, lzma_dict
    from pinnacle_updates.formats.delta_apply.streams import ZSTD_WINDOW_LOG

    text = " ".join(SPEC.read_text().split())
    stated = [
        (delta_format.MAGIC, b"PDELTA3\n", '"PDELTA3\\n"'),
        (delta_format.DELTA_FORMAT, 3, "MUST be `3`"),
        (delta_format.MAX_HEADER, 64 * MIB, "`H ≤ MAX_HEADER` (64 MiB)"),
        (delta_format.MANIFEST_MAX, 64 * MIB, "at most 64 MiB, checked before decoding"),
        (delta_format.ZSTD_LEVEL_MAX, 22, "`1 ≤ L ≤ 22`"),
        (delta_format.ARCHIVE_MAX, 128 * MIB, "`ARCHIVE_MAX` = 128 MiB"),
        ((delta_format.ZSTD_WINDOWLOG_MIN, delta_format.ZSTD_WINDOWLOG_MAX), (10, 31), "min(31, max(10,"),
        (delta_format.patch_window_log(1000, 24), 10, "bitlen(p + n - 1)"),
        (ZSTD_WINDOW_LOG, 27, "window log at most 27"),
        (delta_segments.WHOLE_PATCH_MAX, 64 * MIB, "`WHOLE_PATCH_MAX` = 64 MiB"),
        (delta_segments.SEGMENT_MAX, 32 * MIB, "≤ SEGMENT_MAX` (32 MiB)"),
        ((delta_segments.PREFIX_MIN, delta_segments.SEGMENT_BASE_MAX), (8, 64 * MIB),
         "`PREFIX_MIN (8) ≤ base_length ≤ SEGMENT_BASE_MAX (64 MiB)`"),
        (delta_segments.RECORD.format, ">QQQQ", "u64 BE base_offset, u64 BE base_length, u64 BE size, u64 BE length"),
        (delta_segments.bsdiff_data_max(1000), bsdiff_lzma.control_max(1000) + 2000,
         "`bsdiff_data_max(size) = control_max(size) + 2 \u00d7 size`"),
        (bsdiff_lzma.MAGIC, b"BSL1", '"BSL1"'),
        (bsdiff_lzma.control_max(3200), 24 * (100 + 1024), "24 \u00d7 (size \u00f7 32 + 1024)"),
        ((bsdiff_lzma.DICT_MIN, bsdiff_lzma.DICT_MAX), (64 << 10, 64 * MIB), "min(64 MiB, max(64 KiB,"),
        ((lzma_dict.DICT_MIN, lzma_dict.DICT_MAX), (4 << 10, 1536 * MIB), "min(1536 MiB, max(4 KiB, D + S))"),
        (delta_format.SOLID_SHA256, "0" * 64, '"sha256": "000…0"` (64 zeros)'),
        (MAX_CHAIN, 8, "a chain of at most 8"),
    ]
    for code, spec_value, words in stated:
        assert code == spec_value, (code, spec_value, words)
        assert words in text, f"docs/DELTA-FORMAT.md no longer says {words!r}"


# -- (a) the real apply code ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_vector_applies_to_the_expected_digests(tmp_path: Path, name: str) -> None:
    doc, here = load(name), VECTORS / name
    delta = here / doc["delta"]["path"]
    data = delta.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (doc["delta"]["length"], doc["delta"]["sha256"])
    base, target = manifest(doc["base_manifest"]), manifest(doc["target_manifest"])
    carried, rebuilt = manifest_from_delta(delta, base, release(doc), here / "base")
    assert carried == target  # rebuilt, compressed again, byte for byte the signed manifest target
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(delta, here / "base", base, target, dest, rebuilt=rebuilt)
    assert verify_tree(dest, target) == []
    assert files_of(dest) == doc["target_files"]
    # and without what the manifest reader decoded: the applier decodes the delta itself
    again = tmp_path / "again"
    again.mkdir()
    apply_delta(delta, here / "base", base, target, again)
    assert files_of(again) == doc["target_files"]


# -- (b) the publisher still writes them ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_publisher_regenerates_the_vector_byte_for_byte(tmp_path: Path, name: str) -> None:
    make = generator()
    doc = load(name)
    make.make_vector(name, tmp_path / name)
    fresh = json.loads((tmp_path / name / "vector.json").read_text())
    # the trees and manifests do not depend on any encoder
    assert files_of(tmp_path / name / "base") == files_of(VECTORS / name / "base")
    assert fresh["target_manifest"] == doc["target_manifest"] and fresh["base_manifest"] == doc["base_manifest"]
    if fresh["encoders"] != doc["encoders"]:
        pytest.skip(f"encoders {fresh['encoders']} differ from the vectors' {doc['encoders']}: "
                    "the bytes may differ and still be valid (test (a) applies them)")
    assert fresh == doc, "the publisher now writes other bytes: if intended, rerun make_vectors.py"
    assert (tmp_path / name / doc["delta"]["path"]).read_bytes() == (VECTORS / name / doc["delta"]["path"]).read_bytes()


# -- (c) an independent decoder, from docs/DELTA-FORMAT.md only -----------------------------------

MAGIC = b"PDELTA3\n"


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def window_log(prefix: int, size: int) -> int:
    return min(31, max(10, (prefix + size - 1).bit_length()))


def zstd_frame(frame: bytes, prefix: bytes, size: int) -> bytes:
    """One zstd frame of exactly ``size`` bytes, ``prefix`` as raw prefix (spec: "Codecs")."""
    zdict = pyzstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None
    d = pyzstd.ZstdDecompressor(zstd_dict=zdict, option={pyzstd.DParameter.windowLogMax: max(
        window_log(len(prefix), size), 27 if not prefix else 10)})
    out = d.decompress(frame, size + 1)
    assert len(out) == size and d.eof and not d.unused_data
    return out


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    """Unsigned LEB128 at ``pos``: 7 bits a byte, least significant group first, high bit "more"."""
    end = pos
    while data[end] & 0x80:
        end += 1
    return sum((b & 0x7F) << (7 * i) for i, b in enumerate(data[pos : end + 1])), end + 1


def raw_lzma2(data: bytes, length: int, size: int) -> bytes:
    """A bsdiff-lzma block: raw LZMA2, dictionary the next power of two of min(length, size)
    within 64 KiB..64 MiB."""
    dict_size = min(64 << 20, max(1 << 16, 1 << max(0, min(length, size) - 1).bit_length()))
    d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}])
    out = d.decompress(data, length + 1)
    assert len(out) == length and d.eof and not d.unused_data
    return out


def offtin(b: bytes) -> int:
    value = int.from_bytes(b, "little") & ~(1 << 63)
    return -value if b[7] & 0x80 else value


def bspatch(old: bytes, control: bytes, diff: bytes, extra: bytes, size: int) -> bytes:
    new, oldpos, di, ei = bytearray(), 0, 0, 0
    for t in range(0, len(control), 24):
        x, y, z = (offtin(control[t + k : t + k + 8]) for k in (0, 8, 16))
        for j in range(x):
            o = oldpos + j
            new.append((diff[di + j] + (old[o] if 0 <= o < len(old) else 0)) & 0xFF)
        di += x
        oldpos += x
        new += extra[ei : ei + y]
        ei += y
        oldpos += z
    assert len(new) == size
    return bytes(new)


def bsdiff40(old: bytes, patch: bytes, size: int) -> bytes:
    """Stock bsdiff4 (spec: "BSDIFF40"): 32-byte header, then three bzip2 streams."""
    assert patch[:8] == b"BSDIFF40"
    len_control, len_diff, len_new = (offtin(patch[k : k + 8]) for k in (8, 16, 24))
    assert len_new == size
    cut = (32, 32 + len_control, 32 + len_control + len_diff, len(patch))
    control, diff, extra = (bz2.decompress(patch[cut[i] : cut[i + 1]]) for i in range(3))
    return bspatch(old, control, diff, extra, size)


def bsdiff_lzma(old: bytes, patch: bytes, size: int) -> bytes:
    assert patch[:4] == b"BSL1"
    pos, fields = 4, []
    for _ in range(5):
        value, pos = uleb(patch, pos)
        fields.append(value)
    control_n, control_packed, diff_n, diff_packed, extra_n = fields
    cut = (pos, pos + control_packed, pos + control_packed + diff_packed, len(patch))
    planes = raw_lzma2(patch[cut[0] : cut[1]], control_n, size)
    diff = raw_lzma2(patch[cut[1] : cut[2]], diff_n, size)
    extra = raw_lzma2(patch[cut[2] : cut[3]], extra_n, size)
    return bspatch(old, from_planes(planes), diff, extra, size)


def segments(old: bytes, data: bytes, size: int, patch: Callable[[bytes, bytes, int], bytes] | None = None) -> bytes:
    """zstd-segments, or with ``patch`` (a BSL1 patch of the region) bsdiff-segments."""
    out, pos = bytearray(), 0
    while pos < len(data):
        base_offset, base_length, n, length = struct.unpack(">QQQQ", data[pos : pos + 32])
        pos += 32
        region = old[base_offset : base_offset + base_length]
        out += patch(region, data[pos : pos + length], n) if patch else zstd_frame(data[pos : pos + length], region, n)
        pos += length
    assert len(out) == size
    return bytes(out)


def canonical_tar(root: Path, entries: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e["path"])
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", e["mode"]
            if e["type"] == "file":
                info.size = e["size"]
                tar.addfile(info, io.BytesIO((root / e["path"]).read_bytes()))
            else:
                info.type = tarfile.DIRTYPE if e["type"] == "dir" else tarfile.SYMTYPE
                info.linkname = e.get("link", "")
                tar.addfile(info)
    return buf.getvalue()


def decode_op(kind: str, old: bytes, data: bytes, size: int) -> bytes:
    """One per-file op's output (spec: "Ops")."""
    if kind == "copy":
        return old
    if kind in ("zstd", "zstd-patch"):
        return zstd_frame(data, old, size)  # ``old`` is empty for zstd
    if kind == "bsdiff-lzma":
        return bsdiff_lzma(old, data, size)
    if kind == "bsdiff4":
        return bsdiff40(old, data, size)
    if kind == "bsdiff-segments":
        return segments(old, data, size, bsdiff_lzma)
    assert kind == "zstd-segments", kind
    return segments(old, data, size)


def decode(delta: bytes, base_root: Path, base_manifest: dict[str, Any], content_length: int) -> dict[str, bytes]:
    """Every target file's bytes rebuilt from ``delta`` (per-file and whole-archive kinds)."""
    assert delta[:8] == MAGIC
    (h,) = struct.unpack(">Q", delta[8:16])
    frame = delta[16 : 16 + h]
    header = json.loads(zstd_frame(frame, b"", pyzstd.get_frame_info(frame).decompressed_size))
    assert header["format"] == 3
    payload = 16 + h
    for kind in ("archive", "archive-bsdiff4"):
        if kind not in header:
            continue
        old_tar = canonical_tar(base_root, base_manifest["entries"])
        end = payload + header[kind]["length"]
        assert end == len(delta)
        patch = delta[payload:end]
        new_tar = (zstd_frame(patch, old_tar, content_length) if kind == "archive"
                   else bsdiff40(old_tar, patch, content_length))
        with tarfile.open(fileobj=io.BytesIO(new_tar)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    m_len = header["manifest"]["length"]
    m_frame = delta[payload : payload + m_len]
    target = json.loads(zstd_frame(m_frame, canonical(base_manifest), pyzstd.get_frame_info(m_frame).decompressed_size))
    sizes = {e["path"]: e["size"] for e in target["entries"] if e["type"] == "file"}
    data, pos = {}, payload + m_len
    for op in header["ops"]:
        data[op["path"]] = delta[pos : pos + op.get("length", 0)]
        pos += op.get("length", 0)
    shared = shared_blocks(header, data, delta, pos, sizes)
    out = {}
    for op in header["ops"]:
        kind, path = op["op"], op["path"]
        old = (base_root / op.get("base", path)).read_bytes() if kind != "zstd" else b""
        if kind == "bsdiff-shared":
            planes, diff, extra = shared[path]
            out[path] = bspatch(old, from_planes(planes), diff, extra, sizes[path])
        else:
            out[path] = decode_op(kind, old, data[path], sizes[path])
    return out


def shared_blocks(header: dict[str, Any], data: dict[str, bytes], delta: bytes, pos: int,
                  sizes: dict[str, int]) -> dict[str, list[bytes]]:
    """Each bsdiff-shared op's (planes, diff, extra), taken in op order from the three shared streams
    after the ops' data (spec: "bsdiff-shared and the shared streams")."""
    lengths = {}
    for op in header["ops"]:
        if op["op"] == "bsdiff-shared":
            raw, at = data[op["path"]], 0
            fields = []
            for _ in range(3):
                value, at = uleb(raw, at)
                fields.append(value)
            assert at == len(raw)
            lengths[op["path"]] = fields
    out: dict[str, list[bytes]] = {path: [] for path in lengths}
    for s, name in enumerate(("control", "diff", "extra")):
        n = header.get("shared", {}).get(name, 0)
        total = sum(fields[s] for fields in lengths.values())
        stream = raw_lzma2(delta[pos : pos + n], total, total) if lengths else b""
        pos += n
        at = 0
        for path, fields in lengths.items():
            out[path].append(stream[at : at + fields[s]])
            at += fields[s]
    assert pos == len(delta)
    return out


def from_planes(planes: bytes) -> bytes:
    """Tuple ``i``'s byte ``k`` is ``planes[k * t + i]`` (``t`` tuples)."""
    t = len(planes) // 24
    return bytes(planes[k * t + i] for i in range(t) for k in range(24))


@pytest.mark.parametrize("name", [n for n in NAMES if load(n)["kind"] != "solid"])
def test_an_independent_decoder_written_from_the_spec_applies_the_vector(name: str) -> None:
    doc = load(name)
    delta = (VECTORS / name / doc["delta"]["path"]).read_bytes()
    out = decode(delta, VECTORS / name / "base", doc["base_manifest"], doc["target_manifest"]["content"]["length"])
    assert {path: hashlib.sha256(data).hexdigest() for path, data in out.items()} == doc["target_files"]
