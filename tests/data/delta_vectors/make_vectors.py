"""Generate the delta test vectors of docs/DELTA-FORMAT.md: run from the repository root with
``.venv/bin/python tests/data/delta_vectors/make_vectors.py`` (rewrites every vector directory here).

Each vector ``<name>/`` holds ``base/`` and ``target/`` (the two release trees), ``from-1.0.0.pdelta``
(the delta our publisher writes for them: ``repo_tools.delta.build_delta``, the code ``publish``
runs) and ``vector.json``: both manifests and the signed manifest target of the target release (its
zstd level, length and sha256; both from ``repo_tools.artifact.build_artifact``, as ``publish``), the
container kind, the ops, and the sha256 of the delta and of every target file. The trees are
generated from fixed seeds, so the whole directory is a function of this script and the
publisher's encoders (tests/formats/test_delta_vectors.py regenerates it and compares).

Nothing below a vector's ``base/`` or ``target/`` is a Python file, and no directory is empty (git
keeps neither empty directories nor modes beyond the execute bit; manifests normalise modes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # run as a script from anywhere: the repository root

from pinnacle_updates.formats.delta_format import (  # noqa: E402
    DeltaHeader,
    ManifestPatch,
    read_header,
    write_delta,
)
from pinnacle_updates.formats.delta_kinds import OpKind  # noqa: E402
from pinnacle_updates.formats.delta_segments import SegmentParams  # noqa: E402
from pinnacle_updates.formats.index import EntryType, Manifest  # noqa: E402
from pinnacle_updates.repo_tools import delta as publisher  # noqa: E402
from pinnacle_updates.repo_tools.artifact import build_artifact  # noqa: E402
from pinnacle_updates.repo_tools.core import delta_plan  # noqa: E402

MANIFEST_LEVEL = 19
"""zstd level of the signed manifest targets (the publisher's default)."""
DELTA_NAME = "from-1.0.0.pdelta"
Files = dict[str, bytes | str]


def noise(seed: str, size: int) -> bytes:
    """``size`` incompressible but reproducible bytes."""
    return b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(size // 32 + 1))[:size]


def text(seed: str, lines: int) -> str:
    """Source-like text that compresses and diffs like code."""
    return "".join(f"def f_{seed}_{i}(x):\n    return x * {i} + {len(seed)}  # {seed} line {i}\n"
                   for i in range(lines))


def edited(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def per_file() -> tuple[Files, Files, dict[str, str]]:
    """Per-file kind: an unchanged file (copy), a renamed one (copy from another base path), a
    new file (zstd), a small edit in a binary (a patch op), a symlink and an executable."""
    big = noise("big", 60_000)
    base: Files = {
        "bin/app": "#!/bin/sh\necho app 1.0.0\n",
        "lib/big.bin": big,
        "lib/same.dat": noise("same", 5_000),
        "share/old-name.txt": "moved but unchanged\n" * 40,
    }
    target: Files = {
        "bin/app": "#!/bin/sh\necho app 1.1.0\n",
        "lib/big.bin": edited(big, 30_000, b"0123456789abcdef"),
        "lib/same.dat": noise("same", 5_000),
        "lib/new.dat": noise("new", 3_000),
        "share/new-name.txt": "moved but unchanged\n" * 40,
    }
    return base, target, {"lib/link": "big.bin"}


def whole_archive() -> tuple[Files, Files, dict[str, str]]:
    """Many small text files each changed a little: one frame over the tars wins."""
    base: Files = {f"src/m{i:02d}.txt": text(f"m{i}", 30) for i in range(24)}
    target: Files = {path: str(body).replace("line 7\n", "line seven\n") for path, body in base.items()}
    return base, target, {}


def whole_archive_bsdiff4() -> tuple[Files, Files, dict[str, str]]:
    """Forty unchanged text files and one executable-like file whose addresses shifted: one stock
    bsdiff4 patch over the tars (``archive-bsdiff4``) beats one op per file and the zstd frame."""
    base: Files = {f"share/doc{i:02d}.txt": text(f"d{i}", 5) for i in range(40)}
    target: Files = dict(base)
    base["bin/tool"], target["bin/tool"] = pointer_table("ab", 6000, 2000, 30000)
    return base, target, {}


def segments() -> tuple[Files, Files, dict[str, str]]:
    """A file above the (lowered, see ``SEGMENTS``) whole-file limit: ``zstd-segments``."""
    blob = noise("seg", 40_000)
    return {"data/blob.bin": blob}, {"data/blob.bin": edited(blob, 25_000, b"SEGMENTED") + noise("tail", 500)}, {}


def bsdiff_segments() -> tuple[Files, Files, dict[str, str]]:
    """A file whose whole-file bsdiff the publisher's memory budget does not cover (priced out, see
    ``WINDOWS``): ``bsdiff-segments``, bsdiff per 8 KiB window against its 16 KiB base region."""
    blob = noise("bsw", 40_000)
    new = edited(blob, 12_000, b"WINDOWED")
    return {"lib/big.so": blob}, {"lib/big.so": new[:30_000] + noise("ins", 300) + new[30_000:]}, {}


def pointer_table(seed: str, count: int, shift_from: int, insert_at: int) -> tuple[bytes, bytes]:
    """Code whose addresses shifted: ``count`` 8-byte words, each an opcode-like half and a 4-byte
    pointer; in the new version the pointers from word ``shift_from`` on move by 16 and 16 bytes are
    inserted at ``insert_at`` (what bsdiff's approximate matches are for)."""
    words = [noise(seed, 4)[:2] + struct.pack("<H", i % 5000) for i in range(count)]
    old = b"".join(w + struct.pack("<I", 0x400000 + 64 * i) for i, w in enumerate(words))
    new = b"".join(w + struct.pack("<I", 0x400000 + 64 * i + (16 if i > shift_from else 0))
                   for i, w in enumerate(words))
    return old, new[:insert_at] + b"\x90" * 16 + new[insert_at:]


def executable() -> tuple[Files, Files, dict[str, str]]:
    """One executable-like file whose addresses shifted: ``bsdiff-lzma``."""
    old, new = pointer_table("op", 10_000, 3000, 24_000)
    return {"bin/tool": old}, {"bin/tool": new}, {}


def shared() -> tuple[Files, Files, dict[str, str]]:
    """Four such libraries: their bsdiff blocks in the three shared streams (``bsdiff-shared``)."""
    base: Files = {}
    target: Files = {}
    for k in range(4):
        base[f"lib/l{k}.so"], target[f"lib/l{k}.so"] = pointer_table(f"lib{k}", 2000, 500 + 100 * k, 4000 + 800 * k)
    return base, target, {}


def solid() -> tuple[Files, Files, dict[str, str]]:
    """Solid kind (written with the publisher's solid encoder even where another kind is smaller):
    text files renamed and edited alike, one unchanged (copied)."""
    base: Files = {f"pkg/a{i}.txt": text(f"a{i}", 20) for i in range(4)}
    target: Files = {f"pkg/b{i}.txt": text(f"a{i}", 20).replace("return", "yield") for i in range(4)}
    target["pkg/a0.txt"] = base["pkg/a0.txt"]
    return base, target, {}


SEGMENTS = SegmentParams(whole_max=16_384, size=8_192, margin=2_048)
"""The ``segments`` vector's publisher parameters: tiny files segmented as a 64 MiB one would be."""
WINDOWS = SegmentParams(whole_max=65_536, size=8_192, margin=4_096)
"""The ``bsdiff-segments`` vector's: files up to 64 KiB patched whole when the budget allows, 8 KiB windows.
That vector is built ("windows") with whole-file bsdiff and zstd-patch priced out of the budget, as a 512 MiB
budget prices them out of a 30 MB executable."""

VECTORS: dict[str, tuple[Callable[[], tuple[Files, Files, dict[str, str]]], str, SegmentParams | None]] = {
    # name: (trees, how: "per-file" (build_delta without the whole-tree candidates), "publish" (with
    # them, as ``publish`` runs it), "windows" (per-file, whole-file bsdiff and zstd-patch priced out of the
    # budget) or "solid" (the solid encoder alone), segment parameters)
    "per-file": (per_file, "per-file", None),
    "executable": (executable, "per-file", None),
    "shared": (shared, "per-file", None),
    "whole-archive": (whole_archive, "publish", None),
    "whole-archive-bsdiff4": (whole_archive_bsdiff4, "publish", None),
    "segments": (segments, "per-file", SEGMENTS),
    "bsdiff-segments": (bsdiff_segments, "windows", WINDOWS),
    "solid": (solid, "solid", None),
}


def encoder_versions() -> dict[str, str]:
    """The libraries whose encoders fix the delta bytes: the same versions give the same bytes
    (zstd and LZMA at fixed parameters, single-threaded, and bsdiff4 are deterministic), other
    versions may code the same data differently (still valid deltas)."""
    import ctypes

    import bsdiff4
    import pyzstd
    import zstandard

    lib = ctypes.CDLL("liblzma.so.5")
    lib.lzma_version_string.restype = ctypes.c_char_p
    return {"zstd (pyzstd)": pyzstd.zstd_version, "zstd (zstandard)": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "liblzma": lib.lzma_version_string().decode(), "bsdiff4": bsdiff4.__version__}


def write_tree(root: Path, files: Files, links: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        path.chmod(0o755 if data.startswith(b"#!") else 0o644)
    for rel, link in links.items():
        (root / rel).symlink_to(link)


def release(root: Path, version: str, work: Path) -> tuple[Manifest, dict[str, Any]]:
    """The manifest of the tree ``root`` and its signed manifest target, as ``publish`` builds them
    (``repo_tools.artifact.build_artifact``; the full artifact is not kept)."""
    built = build_artifact(root, work / version, version, level=MANIFEST_LEVEL)
    return built.manifest, {"level": MANIFEST_LEVEL, "length": built.manifest_length, "sha256": built.manifest_sha256}


def make_vector(name: str, out: Path) -> None:
    """Write the vector ``name`` into the (new or emptied) directory ``out``."""
    trees, how, params = VECTORS[name]
    base_files, target_files, links = trees()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_tree(out / "base", base_files, {})
    write_tree(out / "target", target_files, links)
    saved = publisher.SEGMENTS
    publisher.SEGMENTS = params or saved
    priced = (OpKind.BSDIFF_LZMA, OpKind.ZSTD_PATCH) if how == "windows" else ()
    memory = {kind: delta_plan.ENCODER_MEMORY[kind] for kind in priced}
    delta_plan.ENCODER_MEMORY.update({kind: lambda old, new: 1 << 60 for kind in priced})  # type: ignore[attr-defined]
    try:
        with tempfile.TemporaryDirectory() as work:
            (base, _), (target, signed) = release(out / "base", "1.0.0", Path(work)), release(out / "target",
                                                                                               "1.1.0", Path(work))
            header, _ = publisher.build_delta(out / "base", base, out / "target", target, out / DELTA_NAME,
                                              Path(work), manifest_level=MANIFEST_LEVEL,
                                              whole_archive=how == "publish", jobs=1)
    finally:
        publisher.SEGMENTS = saved
        delta_plan.ENCODER_MEMORY.update(memory)  # type: ignore[attr-defined]
    if how == "solid":
        header = write_solid(out, base, target)
    data = (out / DELTA_NAME).read_bytes()
    digest_doc = {"path": DELTA_NAME, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(out / DELTA_NAME, "rb") as f:
        stored = read_header(f)  # what a reader parses: the kind and ops as written
    doc = {
        "description": (trees.__doc__ or "").strip().replace("\n    ", " "),
        "kind": stored.kind.value,
        "delta": digest_doc,
        "header_json": stored.to_dict(),
        "payload_start": stored.payload_start,
        "base_manifest": json.loads(base.to_bytes()),
        "target_manifest": json.loads(target.to_bytes()),
        "signed_manifest": signed,
        "target_files": {e.path: e.sha256 for e in target.entries if e.type is EntryType.FILE},
        "encoders": encoder_versions(),
        "segments": None if params is None else {"whole_max": params.whole_max, "size": params.size,
                                                 "margin": params.margin},
    }
    assert header.kind == stored.kind
    (out / "vector.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def write_solid(out: Path, base: Manifest, target: Manifest) -> DeltaHeader:
    """The solid container of the two trees, as ``repo_tools.delta._smaller_solid`` writes it."""
    parts = publisher.solid_patch(out / "base", base, out / "target", target, 1 << 30)
    assert parts is not None, "liblzma is needed to write the solid vector"
    header = DeltaHeader("1.0.0", "1.1.0", base.content, target.content, (),
                         manifest=ManifestPatch(len(parts[0]), MANIFEST_LEVEL), solid=len(parts[1]))
    with open(out / DELTA_NAME, "wb") as f:
        write_delta(f, header, parts)
    return header


def main() -> None:
    for name in VECTORS:
        make_vector(name, HERE / name)
        doc = json.loads((HERE / name / "vector.json").read_text())
        ops = sorted({op["op"] for op in doc["header_json"].get("ops", [])})
        print(f"{name}: {doc['kind']} {doc['delta']['length']} bytes, ops {', '.join(ops) or '-'}")


if __name__ == "__main__":
    main()
