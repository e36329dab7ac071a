"""Deltas at publish time: the container format, the per-file plan, and real publishes into real
repositories whose deltas are applied back (by a small reference applier that decodes ops with
formats.bsdiff_lzma/pyzstd/zstandard directly) and compared with the signed manifest byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import bsdiff4.core
import pytest
import pyzstd
import zstandard

from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.archive import release_compressor
from pinnacle_updates.formats.delta_format import (
    MAGIC,
    DeltaFormatError,
    DeltaHeader,
    DeltaOp,
    OpKind,
    patch_window_log,
    read_header,
    write_delta,
)
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry, Release
from pinnacle_updates.formats.tree import verify_tree
from pinnacle_updates.repo_tools import delta as rdelta
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.core.delta_plan import (
    SIDE_BY_SIDE,
    SIMILAR_MIN,
    ZSTD_MEMORY,
    PlanError,
    bsdiff4_memory,
    bsdiff_lzma_memory,
    extension,
    normalise_path,
    plan_delta,
    zstd_patch_memory,
)
from pinnacle_updates.repo_tools.delta import (
    ARCHIVE_LEVEL,
    ARCHIVE_LEVEL_MEMORY,
    DELTA_MAX_RATIO,
    archive_memory,
    archive_patch,
    build_delta,
    load_manifest,
    parse_size,
)
from pinnacle_updates.repo_tools.errors import PublishRefused
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.client.test_delta_client import tar_of
from tests.conftest import ROOT, result_json, tree_digest, write_tree

MIB = 1 << 20
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


# -- helpers ---------------------------------------------------------------------------------------

def _blob(seed: int, size: int) -> bytes:
    """Compressible pseudo-random bytes (a vocabulary of short random words), like real binaries."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(3, 12)) for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        out += b"".join(rnd.choices(words, k=4096))
    return bytes(out[:size])


def _edit(data: bytes, seed: int, edits: int = 20) -> bytes:
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rnd.randrange(len(out) - 64)
        out[at:at + 16] = rnd.randbytes(16)
    return bytes(out)


def _text(seed: int, lines: int) -> str:
    rnd = random.Random(seed)
    vocab = ["update", "release", "slot", "delta", "manifest", "verify", "install", "channel", "signed", "target"]
    return "".join(f"{i:05d} " + " ".join(rnd.choices(vocab, k=8)) + "\n" for i in range(lines))


def _pair_trees(tmp: Path) -> tuple[Path, Path]:
    """Two releases: unchanged, changed text and binary, renamed versioned folder, versioned .so,
    a new and a removed file, a symlink whose target moves."""
    lib = _blob(1, 300_000)
    text = _text(2, 3000)
    data = _blob(3, 120_000)
    v1 = write_tree(tmp / "v1", {
        "bin/app": "#!/bin/sh\necho app\n",
        "lib/libfoo.so.1.2": lib,
        "pkg-1.2.dist-info/METADATA": "Name: pkg\nSummary: unchanged\n" * 40,
        "pkg-1.2.dist-info/RECORD": "".join(f"pkg/mod{i}.py,sha256=x{i},{i * 7}\n" for i in range(300)),
        "share/text.txt": text,
        "share/data.bin": data,
        "share/removed.txt": "gone in 1.1\n" * 50,
        "share/empty": b"",
    })
    os.symlink("libfoo.so.1.2", v1 / "lib/libfoo.so")
    v2 = write_tree(tmp / "v2", {
        "bin/app": "#!/bin/sh\necho app\n",
        "lib/libfoo.so.1.3": _edit(lib, 4),
        "pkg-1.3.dist-info/METADATA": "Name: pkg\nSummary: unchanged\n" * 40,
        "pkg-1.3.dist-info/RECORD": "".join(f"pkg/mod{i}.py,sha256=y{i},{i * 7}\n" for i in range(300)),
        "share/text.txt": text.replace("00100 ", "00100 changed ").replace("02000 ", "02000 edited "),
        "share/data.bin": _edit(data, 5),
        "share/new.txt": _text(6, 200),
        "share/empty": b"",
    })
    os.symlink("libfoo.so.1.3", v2 / "lib/libfoo.so")
    return v1, v2


def _publish(repo: Repository, keys: KeyStore, source: Path, version: str, channel: str = "beta",
             **kwargs: object) -> dict[str, object]:
    request = ops.PublishRequest(channel, version, "minor", "linux-x86_64", source, **kwargs)  # type: ignore[arg-type]
    return ops.publish(repo, keys, request)


def _release(repo: Repository, channel: str, version: str) -> Release:
    found = repo.channel_index(repo.load(), channel).find(version, "linux-x86_64")
    assert found is not None
    return found


def _delta_location(repo: Repository, release: Release, base: str) -> Path:
    ref = release.delta_from(base)
    assert ref is not None, f"{release.version} has no delta from {base}"
    return repo.target_location(ref.target.path, ref.target.sha256)


def _header(path: Path) -> DeltaHeader:
    with open(path, "rb") as f:
        return read_header(f, path.stat().st_size)


def _unpatch(frame: bytes, old: bytes, size: int) -> bytes:
    window = {pyzstd.DParameter.windowLogMax: patch_window_log(len(old), size)}
    return pyzstd.ZstdDecompressor(pyzstd.ZstdDict(old, is_raw=True).as_prefix, window).decompress(frame)


def reference_manifest(delta: Path, base_root: Path, base: Manifest, target: Manifest) -> bytes | None:
    """The target manifest's JSON carried by ``delta`` (None: none), decoded directly with pyzstd;
    a whole-archive delta's read from the tar it rebuilds with tarfile (version and content: ``target``'s)."""
    header = _header(delta)
    if header.manifest is None:
        return None
    if header.manifest.length is None:
        start, end = header.archive_range()
        tar = reference_unpatch(delta.read_bytes()[start:end], base_root, base, target)
        entries = []
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            for m in archive:
                data = archive.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
                kind = EntryType.FILE if m.isfile() else EntryType.DIR if m.isdir() else EntryType.SYMLINK
                entries.append(ManifestEntry(m.name, kind, m.mode, len(data), hashlib.sha256(data).hexdigest()
                                             if m.isfile() else "", m.linkname))
        return Manifest(target.version, target.content, tuple(entries)).to_bytes()
    start, end = header.manifest_range()
    frame = delta.read_bytes()[start:end]
    size = pyzstd.get_frame_info(frame).decompressed_size
    assert size is not None
    return _unpatch(frame, base.to_bytes(), size)


def apply_reference(delta: Path, base_root: Path, base: Manifest, target: Manifest, dest: Path) -> None:
    """A deliberately simple applier (whole files in memory), independent of the publisher's code."""
    with open(delta, "rb") as f:
        header = read_header(f, delta.stat().st_size)
        header.check_against(target, base)
        if header.archive is not None:  # the whole-archive kind: tar of the base as prefix
            start, end = header.archive_range()
            f.seek(start)
            new = reference_unpatch(f.read(end - start), base_root, base, target)
            dest.mkdir()
            with tarfile.open(fileobj=io.BytesIO(new)) as tar:
                tar.extractall(dest, filter="tar")
            return
        by_path = {op.path: op for op in header.ops}
        dest.mkdir()
        for e in target.entries:
            out = dest / e.path
            if e.type is EntryType.DIR:
                out.mkdir()
                continue
            if e.type is EntryType.SYMLINK:
                os.symlink(e.link, out)
                continue
            op = by_path[e.path]
            start, end = header.data_range(op)
            f.seek(start)
            raw = f.read(end - start)
            old = (base_root / op.base).read_bytes() if op.base else b""
            if op.op is OpKind.COPY:
                data = old
            elif op.op is OpKind.BSDIFF_LZMA:
                data = bsdiff_lzma.patch(old, raw, e.size)
            elif op.op is OpKind.ZSTD_PATCH:
                window = {pyzstd.DParameter.windowLogMax: patch_window_log(len(old), e.size)}
                data = pyzstd.ZstdDecompressor(pyzstd.ZstdDict(old, is_raw=True).as_prefix, window).decompress(raw)
            else:
                data = zstandard.ZstdDecompressor().decompress(raw)
            out.write_bytes(data)
            out.chmod(e.mode)
    for e in target.entries:
        if e.type is EntryType.DIR:
            (dest / e.path).chmod(e.mode)


# -- the container ---------------------------------------------------------------------------------

def _manifest(version: str, files: dict[str, tuple[int, str]], content: str = SHA_C) -> Manifest:
    dirs = sorted({p.rpartition("/")[0] for p in files if "/" in p})
    entries = [ManifestEntry(d, EntryType.DIR, 0o755) for d in dirs]
    entries += [ManifestEntry(p, EntryType.FILE, 0o644, size=s, sha256=h) for p, (s, h) in files.items()]
    entries.sort(key=lambda e: e.path.encode())
    return Manifest(version, Digest(sum(s for s, _ in files.values()), content), tuple(entries))


def _sample_header() -> DeltaHeader:
    return DeltaHeader("1.0", "1.1", Digest(10, SHA_A), Digest(12, SHA_B), (
        DeltaOp("a/x", OpKind.COPY, "a/y"),
        DeltaOp("a/z", OpKind.ZSTD, None, 0, 3),
        DeltaOp("b", OpKind.BSDIFF4, "b", 3, 2),
    ))


def _encoded(header: DeltaHeader, payload: bytes = b"abcde") -> bytes:
    out = io.BytesIO()
    assert write_delta(out, header, [payload[:2], payload[2:]]) == len(out.getvalue())
    return out.getvalue()


def _header_json(data: bytes) -> bytes:
    length = int.from_bytes(data[8:16], "big")
    return pyzstd.decompress(data[16:16 + length])


def _reframe(data: bytes, frame: bytes) -> bytes:
    """``data`` with its stored header replaced by ``frame``, the header length field kept right."""
    length = int.from_bytes(data[8:16], "big")
    return MAGIC + len(frame).to_bytes(8, "big") + frame + data[16 + length:]


def _rehead(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with ``old`` replaced by ``new`` in its header JSON (recompressed)."""
    text = _header_json(data)
    assert old in text
    return _reframe(data, pyzstd.compress(text.replace(old, new)))


def test_container_round_trip() -> None:
    data = _encoded(_sample_header())
    header = read_header(io.BytesIO(data), len(data))
    assert header.ops == _sample_header().ops
    assert [op.offset for op in header.ops] == [0, 0, 3]
    assert data[slice(*header.data_range(header.ops[2]))] == b"de"
    assert data.startswith(MAGIC) and MAGIC == b"PDELTA3\n"
    # compact: offsets are implied by the layout, a base equal to the path is omitted
    assert json.loads(_header_json(data))["ops"] == [
        {"path": "a/x", "op": "copy", "base": "a/y"},
        {"path": "a/z", "op": "zstd", "length": 3},
        {"path": "b", "op": "bsdiff4", "length": 2},
    ]


def test_header_is_compressed() -> None:
    ops = tuple(DeltaOp(f"pkg/module_{i:04d}.py", OpKind.COPY, f"pkg/module_{i:04d}.py") for i in range(2000))
    header = DeltaHeader("1.0", "1.1", Digest(10, SHA_A), Digest(12, SHA_B), ops)
    data = _encoded(header, b"")
    assert len(data) < len(_header_json(data)) // 10
    assert read_header(io.BytesIO(data), len(data)).ops == ops


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda d: b"X" + d[1:], "bad magic"),
    (lambda d: d[:12], "bad magic or truncated"),
    (lambda d: d[:8] + (1 << 40).to_bytes(8, "big") + d[16:], "exceeds the"),
    (lambda d: d[:8] + (10_000).to_bytes(8, "big") + d[16:], "runs past the end"),
    (lambda d: d[:-1], "payload should be 5 bytes"),
    (lambda d: d + b"!", "payload should be 5 bytes"),
    (lambda d: _rehead(d, b'"bsdiff4"', b'"xdelta3"'), "unknown op"),
    (lambda d: _rehead(d, b'"length":2', b'"length":2,"offset":3'), "unexpected field"),
    (lambda d: _rehead(d, b'"op":"bsdiff4"', b'"base":"b","op":"bsdiff4"'), "equal to 'path' must be omitted"),
    (lambda d: _rehead(d, b'"format":3', b'"format":2'), "unsupported format"),
    (lambda d: _rehead(d, b'"from":"1.0"', b'"from":"one"'), "PEP 440"),
    (lambda d: _rehead(d, b'"base":"a/y"', b'"base":"a/y","offset":0'), "unexpected field"),
    (lambda d: _rehead(d, b'"ops":[', b'"extra":1,"ops":['), "unexpected field"),
    (lambda d: _rehead(d, b'"length":3', b'"length":-3'), "non-negative integer"),
    (lambda d: _rehead(d, b'{"format"', b'[{"format"') + b"]", "not valid JSON|expected a JSON object"),
    (lambda d: b"PDELTA1" + d[7:], "unsupported delta container b'PDELTA1'"),
    (lambda d: b"PDELTA2" + d[7:], "unsupported delta container b'PDELTA2'"),
    (lambda d: _reframe(d, _header_json(d)), "not a zstd frame"),
    (lambda d: _reframe(d, zstandard.ZstdCompressor(write_content_size=False).compress(_header_json(d))),
     "does not declare its decompressed size"),
    (lambda d: _reframe(d, pyzstd.compress(_header_json(d)) + b"\0"), "does not hold exactly"),
    (lambda d: _reframe(d, pyzstd.compress(_header_json(d))[:-3]), "does not hold exactly|is corrupt"),
])
def test_container_refusals(mangle: Callable[[bytes], bytes], message: str) -> None:
    data = mangle(_encoded(_sample_header()))
    with pytest.raises(DeltaFormatError, match=message):
        read_header(io.BytesIO(data), len(data))


def test_header_decompression_is_bounded() -> None:
    data = _encoded(_sample_header())
    size = len(_header_json(data))
    assert read_header(io.BytesIO(data), len(data), max_header=size).ops == _sample_header().ops
    with pytest.raises(DeltaFormatError, match=rf"header of {size} bytes \(decompressed\) exceeds the {size - 1}-"):
        read_header(io.BytesIO(data), len(data), max_header=size - 1)
    # a frame declaring fewer bytes than it holds is refused, without decompressing past the claim
    frame = bytearray(pyzstd.compress(_header_json(data) + b" " * 1000, {pyzstd.CParameter.checksumFlag: 0}))
    assert frame[4] == 0b1100000  # single segment, 2-byte content size (value - 256) at bytes 5-6
    frame[5:7] = (size - 256).to_bytes(2, "little")
    lying = _reframe(data, bytes(frame))
    with pytest.raises(DeltaFormatError, match=r"is corrupt|does not hold exactly"):
        read_header(io.BytesIO(lying), len(lying), max_header=size)


def test_writer_refuses_payload_not_matching_ops() -> None:
    with pytest.raises(DeltaFormatError, match="payload has 4 bytes"):
        write_delta(io.BytesIO(), _sample_header(), [b"abcd"])


def test_check_against_manifests() -> None:
    base = _manifest("1.0", {"a/y": (4, SHA_A), "b": (2, SHA_B)}, content=SHA_A)
    target = _manifest("1.1", {"a/x": (4, SHA_A), "a/z": (3, SHA_C), "b": (5, SHA_C)}, content=SHA_B)
    header = _sample_header()
    base = Manifest(base.version, header.base_content, base.entries)
    target = Manifest(target.version, header.content, target.entries)
    header.check_against(target, base)
    wrong = [
        (Manifest("1.2", target.content, target.entries), base, "target version"),
        (target, Manifest(base.version, Digest(10, SHA_C), base.entries), "base content digest"),
        (Manifest(target.version, target.content, target.entries[:-1]), base, "3 ops for the 2 files"),
        (target, _manifest("1.0", {"a/y": (4, SHA_C), "b": (2, SHA_B)}, SHA_A), "whose content differs"),
        (target, _manifest("1.0", {"a/w": (4, SHA_A), "b": (2, SHA_B)}, SHA_A), "is not a file of 1.0"),
    ]
    for tgt, bas, message in wrong:
        bas = Manifest(bas.version, bas.content if message == "base content digest" else header.base_content,
                       bas.entries)
        with pytest.raises(DeltaFormatError, match=message):
            header.check_against(tgt, bas)
    swapped = DeltaHeader("1.0", "1.1", header.base_content, header.content,
                          (header.ops[1], header.ops[0], header.ops[2]))
    with pytest.raises(DeltaFormatError, match="is for 'a/z'"):
        swapped.check_against(target, base)


# -- the plan --------------------------------------------------------------------------------------

def test_plan_matches_renames_versioned_paths_and_new_files() -> None:
    base = _manifest("1.2", {
        "pkg-1.2.dist-info/METADATA": (100, SHA_A),
        "pkg-1.2.dist-info/RECORD": (500, SHA_B),
        "lib/libfoo.so.1.2": (9000, "1" * 64),
        "lib/libbar.so": (100, "2" * 64),
        "old.txt": (10, "3" * 64),
    })
    target = _manifest("1.3", {
        "pkg-1.3.dist-info/METADATA": (100, SHA_A),
        "pkg-1.3.dist-info/RECORD": (520, SHA_C),
        "lib/libfoo.so.1.3": (9100, "4" * 64),
        "lib/libbar.so": (120, "5" * 64),
        "brand-new.txt": (50, "6" * 64),
    })
    plan = {p.entry.path: p for p in plan_delta(base, target, 2 << 30).files}
    assert [p.entry.path for p in plan_delta(base, target, 2 << 30).files] == [
        e.path for e in target.entries if e.type is EntryType.FILE]
    meta = plan["pkg-1.3.dist-info/METADATA"]
    assert (meta.candidates, meta.base and meta.base.path, meta.match) == (
        (OpKind.COPY,), "pkg-1.2.dist-info/METADATA", "sha256")
    assert plan["pkg-1.3.dist-info/RECORD"].base.path == "pkg-1.2.dist-info/RECORD"  # type: ignore[union-attr]
    assert plan["lib/libfoo.so.1.3"].match == "normalised-path"
    assert plan["lib/libbar.so"].match == "path"
    assert plan["lib/libbar.so"].candidates == (OpKind.ZSTD, OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA, OpKind.BSDIFF4)
    assert (plan["brand-new.txt"].base, plan["brand-new.txt"].candidates) == (None, (OpKind.ZSTD,))
    assert normalise_path("lib/libfoo.so.1.2") == normalise_path("lib/libfoo.so.10.3.1") == "lib/libfoo.so.#"


@pytest.mark.parametrize(("path", "shape"), [
    ("numpy.libs/libscipy_openblas64_-99b71e71.so", "numpy.libs/libscipy_openblas#_-#.so"),
    ("numpy.libs/libgfortran-040039e1-0352e75f.so.5.0.0", "numpy.libs/libgfortran-#-#.so.#"),
    ("dist/main.3f2a9c1b.js", "dist/main.#.js"),
    ("pkg/_core.cpython-311-x86_64-linux-gnu.so", "pkg/_core.cpython-#-x#_#-linux-gnu.so"),
    ("pkg/facade12.py", "pkg/facade#.py"),  # a word starting a name is not a hash
    ("pkg/x-decade.py", "pkg/x-decade.py"),  # no digit: a word
    ("pkg/x-abcde1z.py", "pkg/x-abcde#z.py"),  # not a whole word
    ("pkg/sha256-a1b2c.txt", "pkg/sha#-a#b#c.txt"),  # 5 characters: too short
])
def test_normalise_path(path: str, shape: str) -> None:
    assert normalise_path(path) == shape


def test_extension() -> None:
    assert extension("lib/libfoo-0352e75f.so.5.0.0") == extension("lib/libbar.so.5.1") == ".so.#"
    assert extension("a/b.tar.gz") == ".tar.gz"
    assert extension("a/.hidden") == extension("a/README") == extension("a.d/README") == ""


def test_plan_matches_hash_renamed_libraries() -> None:
    big = 8 * MIB
    base = _manifest("2.0.2", {
        "numpy.libs/libscipy_openblas64_-99b71e71.so": (36 * MIB, SHA_A),
        "numpy.libs/libgfortran-040039e1-0352e75f.so.5.0.0": (big, SHA_B),
    })
    target = _manifest("2.1.0", {
        "numpy.libs/libscipy_openblas64_-ff651d7f.so": (22 * MIB, "1" * 64),
        "numpy.libs/libgfortran-040039e1-0352e75f.so.5.0.0": (big, SHA_B),
    })
    plan = {p.entry.path: p for p in plan_delta(base, target, 2 << 30).files}
    lib = plan["numpy.libs/libscipy_openblas64_-ff651d7f.so"]
    assert (lib.match, lib.base and lib.base.path) == ("normalised-path", "numpy.libs/libscipy_openblas64_-99b71e71.so")
    assert OpKind.ZSTD not in lib.candidates  # a name match: patching a large file is not second-guessed


def _similar_plan(base: dict[str, int], target: dict[str, int]) -> dict[str, tuple[str | None, str]]:
    """Plan ``target`` (path: size, all contents distinct) against ``base``: path -> (base path, match)."""
    base_m = _manifest("1", {p: (size, f"{i:064x}") for i, (p, size) in enumerate(base.items())})
    target_m = _manifest("2", {p: (size, f"{i + 1000:064x}") for i, (p, size) in enumerate(target.items())})
    return {f.entry.path: (f.base and f.base.path, f.match) for f in plan_delta(base_m, target_m, 2 << 30).files}


def test_plan_similar_size_fallback() -> None:
    k = 1 << 10
    plan = _similar_plan(
        {"bin/tool-a.so": 900 * k, "bin/tool-b.so": 500 * k, "bin/keep.so": 1000 * k},
        {"bin/renamed.so": 1000 * k, "bin/keep.so": 1000 * k},
    )
    # keep.so is used by its own path; of the spare ones, the closest in size
    assert plan == {"bin/renamed.so": ("bin/tool-a.so", "similar-size"), "bin/keep.so": ("bin/keep.so", "path")}
    base = _manifest("1", {"bin/tool-a.so": (900 * k, SHA_A)})
    target = _manifest("2", {"bin/renamed.so": (1000 * k, SHA_B)})
    guess = plan_delta(base, target, 2 << 30).files[0]
    # plain zstd kept for a guess
    assert guess.candidates == (OpKind.ZSTD, OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA, OpKind.BSDIFF4)


@pytest.mark.parametrize(("base", "target"), [
    ({"a/old.so": 1 * MIB}, {"b/new.so": 1 * MIB}),  # another directory
    ({"a/old.so": 1 * MIB}, {"a/new.dll": 1 * MIB}),  # another extension
    ({"a/old.so": 1 * MIB}, {"a/new.so.1": 1 * MIB}),
    ({"a/old.so": SIMILAR_MIN - 1}, {"a/new.so": SIMILAR_MIN}),  # base too small
    ({"a/old.so": SIMILAR_MIN}, {"a/new.so": SIMILAR_MIN - 1}),  # target too small
    ({"a/old.so": 1 * MIB}, {"a/new.so": 2 * MIB + 1}),  # sizes too far apart
    ({"a/old.so": 2 * MIB + 1}, {"a/new.so": 1 * MIB}),
    ({"a/old.so": 1 * MIB}, {"a/old.so": 1 * MIB, "a/new.so": 1 * MIB}),  # the base is used by its own path
    ({"a/lib-1.2.so": 1 * MIB}, {"a/lib-1.3.so": 1 * MIB, "a/new.so": 1 * MIB}),  # used by a normalised name
])
def test_plan_similar_size_does_not_pair_unrelated_files(base: dict[str, int], target: dict[str, int]) -> None:
    plan = _similar_plan(base, target)
    new = [path for path in target if path not in base and normalise_path(path) not in map(normalise_path, base)]
    assert new and all(plan[path] == (None, "new") for path in new)


def test_plan_similar_size_uses_each_spare_base_once() -> None:
    plan = _similar_plan({"a/old.so": 1 * MIB}, {"a/new1.so": 1 * MIB, "a/new2.so": 1 * MIB})
    assert plan == {"a/new1.so": ("a/old.so", "similar-size"), "a/new2.so": (None, "new")}


def test_plan_memory_budget_picks_encoders() -> None:
    big = 30 * MIB
    base = _manifest("1", {"big.bin": (big, SHA_A)})
    target = _manifest("2", {"big.bin": (big, SHA_B)})

    def candidates(budget: int) -> tuple[OpKind, ...]:
        return plan_delta(base, target, budget).files[0].candidates

    assert bsdiff4_memory(big, big) == 17 * big + big + 32 * MIB
    assert bsdiff_lzma_memory(big, big) == bsdiff4_memory(big, big)  # LZMA's 11 x 32 MiB come after bsdiff's peak
    assert OpKind.BSDIFF_LZMA in candidates(bsdiff_lzma_memory(big, big))
    # Large changed files skip plain zstd while a patch encoder fits; it is the fallback otherwise. Where
    # whole-file bsdiff does not fit, it runs per window (bsdiff-segments, never alone).
    assert candidates(bsdiff_lzma_memory(big, big) - 1) == (OpKind.ZSTD_PATCH, OpKind.BSDIFF_SEGMENTS)
    assert candidates(zstd_patch_memory(big, big) - 1) == (OpKind.ZSTD, OpKind.BSDIFF_SEGMENTS)
    assert candidates(ZSTD_MEMORY) == (OpKind.ZSTD,)  # not even 1 MiB windows beside both files
    assert "bsdiff-lzma needs" in plan_delta(base, target, 256 * MIB).files[0].skipped[-1]
    with pytest.raises(PlanError, match="below the 128 MiB"):
        plan_delta(base, target, ZSTD_MEMORY - 1)
    # side by side: the zstd patch beside the largest of the rest, which run in turn
    [item] = plan_delta(base, target, 2 << 30).files
    assert item.memory_side_by_side == zstd_patch_memory(big, big) + bsdiff_lzma_memory(big, big)
    small = plan_delta(_manifest("1", {"a.txt": (4000, SHA_A)}), _manifest("2", {"a.txt": (4000, SHA_B)}), 2 << 30)
    assert set(small.files[0].candidates) >= {OpKind.ZSTD, *SIDE_BY_SIDE}
    assert small.files[0].memory_side_by_side == zstd_patch_memory(4000, 4000) + ZSTD_MEMORY  # plain zstd: more


def test_parse_size() -> None:
    assert parse_size("2G") == 2 << 30
    assert parse_size("512M") == parse_size("512MiB") == 512 << 20
    assert parse_size("1.5g") == 3 << 29
    assert parse_size("4096") == 4096
    for bad in ("lots", "0", "-1M"):
        with pytest.raises(PublishRefused):
            parse_size(bad)


# -- publishing into real repositories -------------------------------------------------------------

def test_published_delta_rebuilds_the_release(tmp_path: Path, repo: Repository, keystore: KeyStore) -> None:
    v1, v2 = _pair_trees(tmp_path)
    _publish(repo, keystore, v1, "1.2.0")
    result = _publish(repo, keystore, v2, "1.3.0")
    release = _release(repo, "beta", "1.3.0")
    assert [d.base for d in release.deltas] == ["1.2.0"]
    [stats] = result["deltas"]  # type: ignore[misc]
    assert stats["published"] and stats["length"] == release.deltas[0].target.length
    assert stats["length"] <= DELTA_MAX_RATIO * release.full.length

    location = _delta_location(repo, release, "1.2.0")
    base_manifest = load_manifest(repo, _release(repo, "beta", "1.2.0"))
    target_manifest = load_manifest(repo, release)
    # the new manifest travels in the delta, as a patch (or the tar) that rebuilds the signed target exactly
    carried = reference_manifest(location, v1, base_manifest, target_manifest)
    assert carried == target_manifest.to_bytes()
    stored = repo.target_location(release.manifest.path, release.manifest.sha256).read_bytes()
    header = _header(location)
    assert header.manifest is not None
    assert release_compressor(header.manifest.level).compress(carried) == stored
    assert header.manifest_length < len(stored) // 2
    per_file = location
    if header.archive is not None:  # the whole-archive kind won: the per-file kind must not be smaller
        per_file = tmp_path / "per-file.pdelta"
        (tmp_path / "work").mkdir()
        header, _ = build_delta(v1, base_manifest, v2, target_manifest, per_file, tmp_path / "work")
        assert per_file.stat().st_size >= location.stat().st_size
    kinds = {op.path: op.op for op in header.ops}
    assert kinds["bin/app"] is OpKind.COPY
    assert kinds["pkg-1.3.dist-info/METADATA"] is OpKind.COPY  # renamed versioned folder: a reference
    assert kinds["share/empty"] is OpKind.COPY
    assert kinds["share/new.txt"] is OpKind.ZSTD
    for changed in ("lib/libfoo.so.1.3", "pkg-1.3.dist-info/RECORD", "share/text.txt", "share/data.bin"):
        assert kinds[changed] in (OpKind.BSDIFF_LZMA, OpKind.ZSTD_PATCH, OpKind.BSDIFF4), changed
    assert {op.base for op in header.ops if op.path == "lib/libfoo.so.1.3"} == {"lib/libfoo.so.1.2"}

    for n, delta in enumerate({location, per_file}):
        rebuilt = tmp_path / f"rebuilt{n}"
        apply_reference(delta, v1, base_manifest, target_manifest, rebuilt)
        assert verify_tree(rebuilt, target_manifest) == []
        assert tree_digest(rebuilt) == tree_digest(v2)
    assert verify_repository(repo.path, ops.utcnow(), deep=True).problems == []
    print(f"\npair delta {stats['length']} B vs full {release.full.length} B "
          f"({stats['ratio']:.1%}); content {release.content.length} B; op bytes {stats['op_bytes']}")


def test_client_applier_rebuilds_published_delta(tmp_path: Path, repo: Repository, keystore: KeyStore) -> None:
    """The client's own applier (pinnacle_updates.client.delta) agrees with the publisher."""
    client_delta = pytest.importorskip("pinnacle_updates.client.delta")
    v1, v2 = _pair_trees(tmp_path)
    _publish(repo, keystore, v1, "1.2.0")
    _publish(repo, keystore, v2, "1.3.0")
    release = _release(repo, "beta", "1.3.0")
    target_manifest = load_manifest(repo, release)
    dest = tmp_path / "slot"
    dest.mkdir()
    client_delta.apply_delta(_delta_location(repo, release, "1.2.0"), v1,
                             load_manifest(repo, _release(repo, "beta", "1.2.0")), target_manifest, dest)
    assert tree_digest(dest) == tree_digest(v2)


def _version_tree(tmp: Path, n: int, shared: bytes) -> Path:
    return write_tree(tmp / f"k{n}", {"lib/shared.bin": shared, "share/VERSION": f"1.{n}.0\n",
                                      "share/notes.txt": _text(n, 50 + 10 * n)})


def test_deltas_from_the_previous_k_releases(tmp_path: Path, repo: Repository, keystore: KeyStore) -> None:
    shared = _blob(7, 200_000)
    for n in range(4):
        _publish(repo, keystore, _version_tree(tmp_path, n, shared), f"1.{n}.0")
    _publish(repo, keystore, _version_tree(tmp_path, 9, shared), "1.0.0", channel="alpha")  # another channel
    _publish(repo, keystore, _version_tree(tmp_path, 4, shared), "1.4.0", deltas=3)
    release = _release(repo, "beta", "1.4.0")
    assert sorted(d.base for d in release.deltas) == ["1.1.0", "1.2.0", "1.3.0"]
    for d in release.deltas:
        assert _header(repo.target_location(d.target.path, d.target.sha256)).base_version == d.base
        assert d.target.path == f"beta/linux-x86_64/1.4.0/from-{d.base}.pdelta"
    assert [d.base for d in _release(repo, "beta", "1.1.0").deltas] == ["1.0.0"]
    result = _publish(repo, keystore, _version_tree(tmp_path, 5, shared), "1.5.0", deltas=0)
    assert _release(repo, "beta", "1.5.0").deltas == () and result["deltas"] == []
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_delta_larger_than_threshold_is_not_published(tmp_path: Path, repo: Repository,
                                                       keystore: KeyStore) -> None:
    rnd = random.Random(11)
    _publish(repo, keystore, write_tree(tmp_path / "a", {"blob": rnd.randbytes(100_000)}), "1.0.0")
    result = _publish(repo, keystore, write_tree(tmp_path / "b", {"blob": rnd.randbytes(100_000)}), "1.1.0")
    [stats] = result["deltas"]  # type: ignore[misc]
    assert not stats["published"] and stats["ratio"] > DELTA_MAX_RATIO
    assert _release(repo, "beta", "1.1.0").deltas == ()
    signed = repo.load().channel("beta").signed.targets
    assert not [p for p in signed if p.endswith(".pdelta")]
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_whole_archive_candidate_level_and_bounds_follow_the_budget(tmp_path: Path, repo: Repository,
                                                                    keystore: KeyStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = _pair_trees(tmp_path)
    _publish(repo, keystore, v1, "1.2.0", deltas=0)
    _publish(repo, keystore, v2, "1.3.0", deltas=0)
    base, target = (load_manifest(repo, _release(repo, "beta", v)) for v in ("1.2.0", "1.3.0"))
    low, high = archive_memory(base, target), archive_memory(base, target, ARCHIVE_LEVEL)
    assert high - low == ARCHIVE_LEVEL_MEMORY
    levels = {}
    for budget in (high, high - 1, low):
        frame = archive_patch(v1, base, v2, target, budget)
        assert frame is not None
        levels[budget] = frame
        assert reference_unpatch(frame, v1, base, target) == tar_of(v2, target)
    assert levels[high] != levels[high - 1] == levels[low]  # level 22, then 19
    assert archive_patch(v1, base, v2, target, low - 1) is None
    monkeypatch.setattr(rdelta, "ARCHIVE_MAX", base.content.length + target.content.length - 1)
    assert archive_patch(v1, base, v2, target, high) is None


def reference_unpatch(frame: bytes, base_root: Path, base: Manifest, target: Manifest) -> bytes:
    return _unpatch(frame, tar_of(base_root, base), target.content.length)


def test_same_inputs_give_the_same_delta_bytes(tmp_path: Path, keystore: KeyStore) -> None:
    v1, v2 = _pair_trees(tmp_path)
    digests = []
    for name in ("one", "two"):
        repo = Repository(tmp_path / name)
        ops.init_repository(repo, keystore)
        _publish(repo, keystore, v1, "1.2.0")
        _publish(repo, keystore, v2, "1.3.0")
        digests.append(_release(repo, "beta", "1.3.0").deltas[0].target.sha256)
    again = tmp_path / "again.pdelta"
    base_manifest = load_manifest(repo, _release(repo, "beta", "1.2.0"))
    target_manifest = load_manifest(repo, _release(repo, "beta", "1.3.0"))
    work = tmp_path / "work"
    work.mkdir()
    _, digest = build_delta(v1, base_manifest, v2, target_manifest, again, work, whole_archive=True)
    assert digests[0] == digests[1] == digest.sha256
    assert os.listdir(work) == []


def test_side_by_side_encoders_give_the_same_bytes_as_one_at_a_time(
        tmp_path: Path, repo: Repository, keystore: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two jobs the whole-archive frame and each file's zstd patch are built on another thread
    while bsdiff runs (as the spies record); the container is byte for byte the one-job container.
    A budget that cannot hold the archive beside the per-file encoders builds it afterwards."""
    v1, v2 = _pair_trees(tmp_path)
    _publish(repo, keystore, v1, "1.2.0", deltas=0)
    _publish(repo, keystore, v2, "1.3.0", deltas=0)
    base, target = (load_manifest(repo, _release(repo, "beta", v)) for v in ("1.2.0", "1.3.0"))
    seen: set[tuple[str, str]] = set()

    def spy(name: str, real: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
        def call(*args: object) -> bytes | None:
            seen.add((name, "main" if threading.current_thread() is threading.main_thread() else "side"))
            return real(*args)
        return call

    monkeypatch.setattr(rdelta, "zstd_patch", spy("zstd_patch", rdelta.zstd_patch))
    monkeypatch.setattr(rdelta, "archive_patch", spy("archive_patch", rdelta.archive_patch))
    alone = plan_delta(base, target, 2 << 30).memory + archive_memory(base, target, ARCHIVE_LEVEL) - 64 * MIB
    built, threads = [], []
    for jobs, budget in ((1, 2 << 30), (2, 2 << 30), (2, alone + rdelta.current_rss())):
        work = tmp_path / f"work{len(built)}"
        work.mkdir()
        out = tmp_path / f"{len(built)}.pdelta"
        seen.clear()
        build_delta(v1, base, v2, target, out, work, budget, whole_archive=True, jobs=jobs)
        assert os.listdir(work) == []
        built.append(out.read_bytes())
        threads.append(set(seen))
    assert any(set(f.candidates) >= SIDE_BY_SIDE for f in plan_delta(base, target, 2 << 30).files)
    assert built[0] == built[1] == built[2]
    assert threads[0] == {("zstd_patch", "main"), ("archive_patch", "main")}
    # the manifest patch is always made on the main thread; every file's zstd patch beside bsdiff
    assert threads[1] == {("zstd_patch", "main"), ("zstd_patch", "side"), ("archive_patch", "side")}
    assert ("archive_patch", "main") in threads[2] and ("archive_patch", "side") not in threads[2]


def test_a_lone_bsdiff_op_reuses_its_coded_blocks_as_shared_streams(tmp_path: Path) -> None:
    """One op alone: the shared variant reuses the op's per-file LZMA blocks instead of coding the
    same bytes again; they are exactly what coding the spooled blocks gives."""
    old = _blob(7, 200_000)
    new = _edit(old, 8)
    control, diff, extra = bsdiff4.core.diff(old, new)
    packed = tmp_path / "op.bsl"
    packed.write_bytes(bsdiff_lzma.pack(control, diff, extra, len(new)))
    entry = ManifestEntry("lib/a.so", EntryType.FILE, 0o644, len(new), hashlib.sha256(new).hexdigest())
    op = DeltaOp(entry.path, OpKind.BSDIFF_LZMA, entry.path, 0, packed.stat().st_size)
    header = DeltaHeader("1", "2", Digest(len(old), SHA_A), Digest(len(new), SHA_B), (op,))
    variants = []
    for reuse in (True, False):
        with rdelta._SharedSpool(tmp_path) as spool:
            spool.add(entry, (bsdiff_lzma.to_planes(control), diff, extra), packed)
            assert bool(spool.first) is True
            if not reuse:
                spool.first = []
            variants.append(spool.variant(header, 2 << 30))
    assert variants[0] == variants[1]


def test_promote_carries_a_delta_only_where_the_base_is(tmp_path: Path, repo: Repository,
                                                          keystore: KeyStore) -> None:
    v1, v2 = _pair_trees(tmp_path)
    _publish(repo, keystore, v1, "1.2.0")
    _publish(repo, keystore, v2, "1.3.0")
    ops.promote(repo, keystore, "beta", "stable", "1.2.0")
    ops.promote(repo, keystore, "beta", "stable", "1.3.0")
    ops.promote(repo, keystore, "beta", "alpha", "1.3.0")  # alpha never had 1.2.0
    stable = _release(repo, "stable", "1.3.0")
    assert [(d.base, d.target.path) for d in stable.deltas] == [
        ("1.2.0", "stable/linux-x86_64/1.3.0/from-1.2.0.pdelta")]
    assert stable.deltas[0].target.sha256 == _release(repo, "beta", "1.3.0").deltas[0].target.sha256
    assert _delta_location(repo, stable, "1.2.0").is_file()
    assert _release(repo, "alpha", "1.3.0").deltas == ()
    assert verify_repository(repo.path, ops.utcnow()).problems == []


def test_refuses_negative_deltas_and_a_tiny_budget(tmp_path: Path, repo: Repository, keystore: KeyStore) -> None:
    tree = write_tree(tmp_path / "t", {"a": "x"})
    with pytest.raises(PublishRefused, match="--deltas"):
        _publish(repo, keystore, tree, "1.0.0", deltas=-1)
    with pytest.raises(PublishRefused, match="--memory-budget"):
        _publish(repo, keystore, tree, "1.0.0", memory_budget=64 * MIB)


_MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr,
                  "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def _publish_measured(repo: Path, keys: Path, source: Path, version: str, *extra: str) -> tuple[dict, int]:  # type: ignore[type-arg]
    """``pinnacle-release publish --json`` in a child process; its peak RSS measured by a parent
    that has no other child."""
    cmd = [sys.executable, "-m", "pinnacle_updates.repo_tools", "publish", str(repo), "--keys", str(keys),
           "--channel", "beta",
           "--version", version, "--type", "minor", "--platform", "linux-x86_64", "--json", *extra, str(source)]
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, check=True)
    run = json.loads(proc.stdout)
    assert run["rc"] == 0, run["err"]
    return result_json(run["out"]), run["peak"]


def test_cli_jobs_side_by_side_stays_within_the_budget_and_gives_the_same_delta(
        tmp_path: Path, keystore: KeyStore, keys_dir: Path) -> None:
    """``--jobs 2`` (the default) at a budget that lets the whole-archive frame and the zstd patch run
    beside bsdiff: the same delta as ``--jobs 1``, and the process's measured peak stays in the budget."""
    old = _blob(23, 8 * MIB)
    v1 = write_tree(tmp_path / "one", {"lib/core.so": old, "VERSION": "1"})
    v2 = write_tree(tmp_path / "two", {"lib/core.so": _edit(old, 24, edits=200), "VERSION": "2"})
    budget = 1400 * MIB
    deltas = {}
    for jobs in ("1", "2"):
        repo = Repository(tmp_path / f"repo{jobs}")
        ops.init_repository(repo, keystore)
        _publish_measured(repo.path, keys_dir, v1, "1.0.0", "--deltas", "0")
        _, peak = _publish_measured(repo.path, keys_dir, v2, "1.1.0", "--memory-budget", "1400M", "--jobs", jobs)
        assert peak <= budget, f"--jobs {jobs}: peak RSS {peak >> 20} MiB over the {budget >> 20} MiB budget"
        deltas[jobs] = _release(repo, "beta", "1.1.0").deltas[0].target.sha256
        base, target = (load_manifest(repo, _release(repo, "beta", v)) for v in ("1.0.0", "1.1.0"))
    [item] = [f for f in plan_delta(base, target, budget).files if f.entry.path == "lib/core.so"]
    # the premise: both patch candidates, and room for them and the archive at once beside a 200 MiB process
    assert set(item.candidates) >= SIDE_BY_SIDE
    assert item.memory_side_by_side + archive_memory(base, target, ARCHIVE_LEVEL) < budget - 200 * MIB
    assert deltas["1"] == deltas["2"]


def test_memory_budget_forces_zstd_patch_over_bsdiff4(tmp_path: Path, repo: Repository, keys_dir: Path) -> None:
    """24 MB file, budget 384 MiB: bsdiff4 would need about 17 x 24 + 24 MB = 432 MB, so the plan
    leaves it out and zstd patch-from wins; the whole publishing process stays under the budget."""
    size = 24 * MIB
    old = _blob(21, size)
    v1 = write_tree(tmp_path / "big1", {"lib/big.so": old, "VERSION": "1"})
    v2 = write_tree(tmp_path / "big2", {"lib/big.so": _edit(old, 22, edits=300), "VERSION": "2"})
    budget = 384 * MIB
    _publish_measured(repo.path, keys_dir, v1, "1.0.0", "--deltas", "0")
    result, peak = _publish_measured(repo.path, keys_dir, v2, "1.1.0", "--memory-budget", "384M")
    release = _release(repo, "beta", "1.1.0")
    header = _header(_delta_location(repo, release, "1.0.0"))
    [stats] = result["deltas"]
    assert "bsdiff-lzma" not in stats["ops"]
    if header.archive is None:  # else the whole-archive candidate (zstd patch-from too) was smaller
        assert {op.path: op for op in header.ops}["lib/big.so"].op is OpKind.ZSTD_PATCH
    assert peak <= budget, f"peak RSS {peak >> 20} MiB over the {budget >> 20} MiB budget"
    print(f"\n24 MB pair: delta {stats['length']} B vs full {release.full.length} B, peak RSS {peak >> 20} MiB "
          f"(budget {budget >> 20} MiB), {stats['seconds']} s, parts {stats['op_bytes']}")
