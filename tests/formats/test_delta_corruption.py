"""Corrupted deltas on the apply side, systematically, on the test vectors (tests/data/delta_vectors,
docs/DELTA-FORMAT.md): truncations at every field boundary, flipped bytes in the header, the manifest
patch, the ops' data and the streams, lengths pointing past the end, huge declared sizes, ops naming
paths outside the trees, and streams that decode to more than declared.

Each goes through what the client does (``manifest_from_delta`` with the base tree, then ``apply_delta``
into an empty staging directory) and must end in the apply side's one error, ``DeltaError``, in one
line, with nothing written outside the staging directory and the base tree untouched. A corrupted
delta may only be accepted when it rebuilds the exact target tree (zstd and LZMA have a few bits that
change nothing: that is harmless, the output is checked byte for byte; in the real client TUF's sha256
of the delta refuses even those). The cases that existed before (tests/client/test_delta_client.py:
10 MB zstd bombs, edited or symlinked base files, a non-empty staging directory; tests/formats/
test_bsdiff_lzma.py, test_lzma_dict.py, test_delta_segments.py: each codec's own bounds) are not
repeated here.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pyzstd

from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.delta_apply import DeltaError, apply_delta, manifest_from_delta
from pinnacle_updates.formats.delta_format import read_header
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry, Release, TargetRef, UpdateType
from tests.conftest import tree_digest

VECTORS = Path(__file__).resolve().parents[1] / "data" / "delta_vectors"
NAMES = sorted(p.name for p in VECTORS.iterdir() if (p / "vector.json").is_file())
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Vector:
    name: str
    doc: dict[str, Any]
    data: bytes
    base: Manifest
    target: Manifest

    @property
    def root(self) -> Path:
        return VECTORS / self.name

    @property
    def release(self) -> Release:
        signed, where = self.doc["signed_manifest"], f"stable/any/{self.target.version}"
        return Release(self.target.version, "any", UpdateType.MINOR, "2026-01-01T00:00:00Z", self.target.content,
                       TargetRef(f"{where}/full.tar.zst", 1, "0" * 64),
                       TargetRef(f"{where}/manifest.json.zst", signed["length"], signed["sha256"]))

    def boundaries(self) -> list[int]:
        """Every field boundary of the file (docs/DELTA-FORMAT.md §2-§3)."""
        header = read_header(io.BytesIO(self.data))
        start = header.payload_start
        cuts = {0, 4, 8, 12, 16, (16 + start) // 2, start, start + header.manifest_length, len(self.data)}
        cuts.update(end for op in header.ops if op.length for _, end in [header.data_range(op)])
        cuts.update(edge for r in (header.archive_range(), header.solid_range(), *header.shared_ranges()) for edge in r)
        return sorted(cuts)


def vector(name: str) -> Vector:
    doc = json.loads((VECTORS / name / "vector.json").read_text())
    data = (VECTORS / name / doc["delta"]["path"]).read_bytes()
    return Vector(name, doc, data, Manifest.from_bytes(json.dumps(doc["base_manifest"]).encode()),
                  Manifest.from_bytes(json.dumps(doc["target_manifest"]).encode()))


class Client:
    """Applies deltas the way the client does, in a work directory whose other contents are checked."""

    def __init__(self, tmp: Path, vec: Vector) -> None:
        self.tmp, self.vec = tmp, vec
        self.outside = tmp / "outside"  # stands for everything outside the staging directory
        self.outside.mkdir(exist_ok=True)
        (self.outside / "keep.txt").write_text("untouched\n")
        self.base_before = tree_digest(vec.root / "base")
        self.count = 0

    def attempt(self, data: bytes, target: Manifest | None = None) -> str | None:
        """None when ``data`` rebuilt the exact target tree, else the one-line ``DeltaError``."""
        self.count += 1
        delta = self.tmp / f"try-{self.count}.pdelta"
        delta.write_bytes(data)
        dest = self.tmp / f"slot-{self.count}"
        dest.mkdir()
        before = tree_digest(self.outside)
        target = target or self.vec.target
        try:
            carried, rebuilt = manifest_from_delta(delta, self.vec.base, self.vec.release, self.vec.root / "base")
            apply_delta(delta, self.vec.root / "base", self.vec.base, carried or target, dest, rebuilt=rebuilt)
        except DeltaError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(f"delta from {self.vec.base.version}")
            return message
        finally:
            assert tree_digest(self.outside) == before
            assert tree_digest(self.vec.root / "base") == self.base_before
            assert {p.name for p in self.tmp.iterdir()} <= {"outside", *(f"try-{i}.pdelta" for i in range(
                1, self.count + 1)), *(f"slot-{i}" for i in range(1, self.count + 1))}
            delta.unlink()
        got = {p: h for p, h in tree_digest(dest).items() if not h.startswith(("dir", "link:"))}
        assert got == self.vec.doc["target_files"], "a corrupted delta was accepted with other output"
        return None


# -- truncations and flipped bytes ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_truncation_at_every_field_boundary_is_refused(tmp_path: Path, name: str) -> None:
    vec = vector(name)
    client = Client(tmp_path, vec)
    assert client.attempt(vec.data) is None  # the intact vector applies
    cuts = sorted({c + d for c in vec.boundaries() for d in (-1, 0, 1)} & set(range(len(vec.data))))
    assert len(cuts) >= 12
    for cut in cuts:
        message = client.attempt(vec.data[:cut])
        assert message is not None, f"{name} cut at {cut} was accepted"
        if cut >= 16:  # past the magic and the header length: it reads as truncated
            assert "truncated" in message, (cut, message)


FLIP_STRIDE = 7
"""Flip every byte of the prefix and the stored header, and every 7th byte after it (with its offset
varied per vector): about 1,100 applies in all, a few seconds; the whole file was flipped byte by byte
while writing this test (about 6,400 applies, 95 s) with the same outcome."""


@pytest.mark.parametrize("name", NAMES)
def test_flipped_bytes_are_refused_or_change_nothing(tmp_path: Path, name: str) -> None:
    vec = vector(name)
    client = Client(tmp_path, vec)
    start = read_header(io.BytesIO(vec.data)).payload_start
    offsets = [*range(start), *range(start + NAMES.index(name) % FLIP_STRIDE, len(vec.data), FLIP_STRIDE)]
    refused, harmless = 0, []
    for at in offsets:
        bad = bytearray(vec.data)
        bad[at] ^= 0x01
        if client.attempt(bytes(bad)) is None:
            harmless.append(at)
        else:
            refused += 1
    # The 16-byte prefix is never harmless; a few bits of a zstd/LZMA stream can be (same output).
    assert not [at for at in harmless if at < 16]
    assert refused >= 0.9 * len(offsets), f"{name}: {len(harmless)} of {len(offsets)} flips changed nothing"


# -- lengths and sizes ----------------------------------------------------------------------------


def rebuild(vec: Vector, edit: Any, payload: bytes | None = None) -> bytes:
    """``vec``'s delta with its header JSON changed by ``edit`` (a function of the dict) and the
    payload kept (or replaced)."""
    header = read_header(io.BytesIO(vec.data))
    doc = header.to_dict()
    edit(doc)
    frame = pyzstd.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), 19)
    return vec.data[:8] + struct.pack(">Q", len(frame)) + frame + (
        vec.data[header.payload_start:] if payload is None else payload)


def set_op(field: str, value: Any, kind: str = "zstd") -> Any:
    def edit(doc: dict[str, Any]) -> None:
        next(op for op in doc["ops"] if op["op"] == kind)[field] = value
    return edit


def set_path(*keys: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


BIG = 1 << 62
CASES = [
    # (vector, what, delta bytes from the vector, expected message)
    ("per-file", "header length 2**64-1", lambda v: v.data[:8] + b"\xff" * 8 + v.data[16:],
     r"exceeds the 67108864-byte"),
    ("per-file", "header length over 64 MiB", lambda v: v.data[:8] + struct.pack(">Q", (64 << 20) + 1) + v.data[16:],
     r"exceeds the 67108864-byte"),
    ("per-file", "header length past the end", lambda v: v.data[:8] + struct.pack(">Q", len(v.data)) + v.data[16:],
     r"truncated"),
    ("per-file", "header frame declares 64 MiB + 1", lambda v: v.data[:8] + struct.pack(">Q", len(BOMB_HEADER))
     + BOMB_HEADER, r"delta header of 67108865 bytes \(decompressed\) exceeds"),
    ("per-file", "op length one past the end", lambda v: rebuild(v, set_op("length", 3011)), r"truncated"),
    ("per-file", "op length 2**62", lambda v: rebuild(v, set_op("length", BIG)), r"truncated"),
    ("per-file", "op length one short", lambda v: rebuild(v, set_op("length", 3009)), r"payload should be"),
    ("per-file", "manifest length past the end", lambda v: rebuild(v, set_path("manifest", "length", value=10**9)),
     r"out of range"),
    ("whole-archive", "archive length 2**62", lambda v: rebuild(v, set_path("archive", "length", value=BIG)),
     r"truncated"),
    ("solid", "solid length past the end", lambda v: rebuild(v, set_path("solid", "length", value=571)), r"truncated"),
    ("per-file", "negative length", lambda v: rebuild(v, set_op("length", -1)), r"non-negative integer"),
    ("per-file", "length as a string", lambda v: rebuild(v, set_op("length", "3010")), r"non-negative integer"),
    ("per-file", "unknown op", lambda v: rebuild(v, set_op("op", "xdelta")), r"unknown op 'xdelta'"),
    ("per-file", "unknown header field", lambda v: rebuild(v, set_path("extra", value=1)), r"unexpected field"),
    ("per-file", "format 4", lambda v: rebuild(v, set_path("format", value=4)), r"unsupported format 4"),
    ("per-file", "format 3.0", lambda v: rebuild(v, set_path("format", value=3.0)), r"unsupported format 3\.0"),
    ("per-file", "format true", lambda v: rebuild(v, set_path("format", value=True)), r"unsupported format True"),
    ("per-file", "container PDELTA4", lambda v: b"PDELTA4\n" + v.data[8:], r"unsupported delta container"),
    ("per-file", "base equal to path", lambda v: rebuild(v, set_op("base", "bin/app", "zstd-patch")),
     r"'base' equal to 'path' must be omitted"),
    ("per-file", "manifest level 0", lambda v: rebuild(v, set_path("manifest", "level", value=0)), r"out of range"),
    ("per-file", "archive and ops", lambda v: rebuild(v, set_path("archive", value={"length": 1})),
     r"exactly one of 'ops'"),
    ("per-file", "an op too many", lambda v: rebuild(v, lambda d: d["ops"].append({"op": "copy", "path": "zz"})),
     r"6 ops for the 5 files"),
    ("per-file", "ops out of order", lambda v: rebuild(v, lambda d: d["ops"].reverse()), r"is for 'share/new-name"),
    ("per-file", "wrong target content", lambda v: rebuild(v, set_path("to_content", "sha256", value="0" * 64)),
     r"target content digest differs"),
    ("per-file", "wrong target version", lambda v: rebuild(v, set_path("to", value="1.2.0")), r"target version 1.2.0"),
]
BOMB_HEADER = pyzstd.compress(bytes((64 << 20) + 1), 1)


@pytest.mark.parametrize(("name", "what", "make", "match"), CASES, ids=[c[1] for c in CASES])
def test_forged_lengths_and_fields_are_refused(tmp_path: Path, name: str, what: str, make: Any, match: str) -> None:
    vec = vector(name)
    message = Client(tmp_path, vec).attempt(make(vec))
    assert message is not None and re.search(match, message), message


# -- paths outside the trees ----------------------------------------------------------------------

OUTSIDE = [
    ("op path ../", set_op("path", "../lib/new.dat"), r"delta op #2 is for '../lib/new.dat'"),
    ("op path absolute", set_op("path", "/tmp/new.dat"), r"delta op #2 is for '/tmp/new.dat'"),
    ("op base ../", set_op("base", "../../../../etc/passwd", "zstd-patch"), r"is not a file of 1\.0\.0"),
    ("op base absolute", set_op("base", "/etc/passwd", "zstd-patch"), r"is not a file of 1\.0\.0"),
    ("op base a directory", set_op("base", "lib", "zstd-patch"), r"base 'lib' is not a file of 1\.0\.0"),
    ("copy base ../", set_op("base", "../base/lib/same.dat", "copy"), r"is not a file of 1\.0\.0"),
]


@pytest.mark.parametrize(("what", "edit", "match"), OUTSIDE, ids=[c[0] for c in OUTSIDE])
def test_ops_naming_paths_outside_the_trees_are_refused(tmp_path: Path, what: str, edit: Any, match: str) -> None:
    """Output paths come from the signed manifest only; an op's ``path`` must be the manifest's and its
    ``base`` a file of the base manifest: a delta cannot name anything else to read or write."""
    vec = vector("per-file")
    message = Client(tmp_path, vec).attempt(rebuild(vec, edit))
    assert message is not None and re.search(match, message), message


ESCAPING = {
    "../": (ManifestEntry("../escape", EntryType.FILE, 0o644, 3, "0" * 64), "segment '..' is not allowed"),
    "absolute": (ManifestEntry("/tmp/escape", EntryType.FILE, 0o644, 3, "0" * 64), "absolute path"),
    "inner ..": (ManifestEntry("lib/../../escape", EntryType.FILE, 0o644, 3, "0" * 64), "segment '..'"),
    "symlink out": (ManifestEntry("zz", EntryType.SYMLINK, 0o777, link="../../outside"), "points outside the tree"),
    "symlink absolute": (ManifestEntry("zz", EntryType.SYMLINK, 0o777, link="/etc"), "target is absolute"),
    "file below a symlink": (ManifestEntry("lib/link/x", EntryType.FILE, 0o644, 3, "0" * 64),
                             "parent lib/link is not a directory"),
}


@pytest.mark.parametrize("what", ESCAPING)
def test_a_target_manifest_with_an_escaping_path_writes_nothing(tmp_path: Path, what: str) -> None:
    """The target manifest is signed; should one still name a path outside the tree (directly, or
    through a symlink), the tree rules refuse it before anything is written."""
    vec = vector("per-file")
    forged = Manifest(vec.target.version, vec.target.content, tuple(sorted(
        (*vec.target.entries, ESCAPING[what][0]), key=lambda e: e.path.encode())))
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(vec.data)
    dest = tmp_path / "slot"
    dest.mkdir()
    with pytest.raises(DeltaError, match=r"^delta from 1\.0\.0: target manifest 1\.1\.0 rejected: ") as info:
        apply_delta(delta, vec.root / "base", vec.base, forged, dest)
    assert "\n" not in str(info.value) and ESCAPING[what][1] in str(info.value)
    assert os.listdir(dest) == [] and sorted(os.listdir(tmp_path)) == ["d.pdelta", "slot"]


# -- streams that decode to more than declared ------------------------------------------------------


def zstd_zeros(n: int, chunk: int = 16 << 20) -> bytes:
    """One zstd frame of ``n`` zero bytes, made without holding them."""
    c = pyzstd.ZstdCompressor(1)
    zeros = bytes(chunk)
    parts = [c.compress(zeros[: min(chunk, n - i)]) for i in range(0, n, chunk)]
    return b"".join(parts) + c.flush()


def test_a_one_gib_zstd_bomb_is_refused_in_bounded_memory_and_time(tmp_path: Path) -> None:
    """A new file's op (3,000 signed bytes) whose frame holds 1 GiB: refused after size + 1 bytes, in
    a fresh process whose peak memory stays far below the bomb's size."""
    vec = vector("per-file")
    frame = zstd_zeros(1 << 30)
    header = read_header(io.BytesIO(vec.data))
    new = next(op for op in header.ops if op.path == "lib/new.dat")
    start, end = header.data_range(new)
    bomb = rebuild(vec, set_op("length", len(frame)), vec.data[header.payload_start:start] + frame + vec.data[end:])
    delta = tmp_path / "bomb.pdelta"
    delta.write_bytes(bomb)
    dest = tmp_path / "slot"
    dest.mkdir()
    script = f"""
import json, resource, sys
from pathlib import Path
from pinnacle_updates.formats.delta_apply import DeltaError, apply_delta
from pinnacle_updates.formats.index import Manifest
doc = json.loads(Path({str(VECTORS / 'per-file' / 'vector.json')!r}).read_text())
m = lambda d: Manifest.from_bytes(json.dumps(d).encode())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    apply_delta(Path({str(delta)!r}), Path({str(vec.root / 'base')!r}), m(doc["base_manifest"]),
                m(doc["target_manifest"]), Path({str(dest)!r}))
    print("accepted")
except DeltaError as exc:
    print(json.dumps([str(exc), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    message, before, after = json.loads(out.stdout)
    assert "lib/new.dat: decompressed output exceeds the signed size of 3000 bytes" in message
    assert after - before < 64 << 10, f"peak grew by {(after - before) >> 10} MiB"  # ru_maxrss is in KiB
    assert elapsed < 20


def test_bsdiff_lzma_block_holding_more_than_declared_is_refused(tmp_path: Path) -> None:
    """The executable vector's ``extra`` block replaced by an LZMA2 stream of 8 MiB: its declared raw
    length stays, the decoder stops one byte past it."""
    vec = vector("executable")
    header = read_header(io.BytesIO(vec.data))
    (op,) = header.ops
    start, end = header.data_range(op)
    patch = vec.data[start:end]
    size = vec.target.by_path()["bin/tool"].size
    old = (vec.root / "base" / "bin/tool").read_bytes()
    _, _, extra = bsdiff_lzma.unpack(patch, size)
    assert bsdiff_lzma.patch(old, patch, size) == (vec.root / "target" / "bin/tool").read_bytes()
    blocks = bsdiff_lzma.packed_blocks(patch, size)
    bomb = lzma.compress(bytes(8 << 20), format=lzma.FORMAT_RAW,
                         filters=[{"id": lzma.FILTER_LZMA2, "dict_size": bsdiff_lzma.dict_size(len(extra))}])
    fields = patch[: len(patch) - sum(map(len, blocks))]  # magic and the five lengths, as they were
    forged = fields + blocks[0] + blocks[1] + bomb
    payload = vec.data[header.payload_start:start] + forged
    started = time.monotonic()
    message = Client(tmp_path, vec).attempt(rebuild(vec, set_op("length", len(forged), "bsdiff-lzma"), payload))
    assert message is not None and "does not hold exactly its declared" in message, message
    assert time.monotonic() - started < 5


def test_solid_stream_holding_more_than_declared_is_refused(tmp_path: Path) -> None:
    """The solid vector's stream replaced by one that rebuilds its files and then 8 MiB more."""
    from pinnacle_updates.formats import lzma_dict
    from pinnacle_updates.formats.delta_format import solid_layout

    vec = vector("solid")
    layout = solid_layout(vec.base, vec.target.entries)
    dictionary = b"".join((vec.root / "base" / e.path).read_bytes() for e in layout.dictionary)
    data = b"".join((vec.root / "target" / e.path).read_bytes() for e in layout.solid)
    stream = lzma_dict.compress(data + bytes(8 << 20), dictionary)
    header = read_header(io.BytesIO(vec.data))
    start, _ = header.solid_range()
    forged = rebuild(vec, set_path("solid", "length", value=len(stream)), vec.data[header.payload_start:start] + stream)
    message = Client(tmp_path, vec).attempt(forged)
    assert message is not None and "does not hold exactly its" in message, message


def test_every_vector_payload_digest_is_the_signed_one() -> None:
    """The inputs the tests above corrupt are the intact vectors (guards against editing them)."""
    for name in NAMES:
        vec = vector(name)
        assert Digest(len(vec.data), hashlib.sha256(vec.data).hexdigest()).to_dict() == {
            "length": vec.doc["delta"]["length"], "sha256": vec.doc["delta"]["sha256"]}
