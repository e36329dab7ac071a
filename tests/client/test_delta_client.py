"""Delta updates on the client: path planning, safe apply, installer fallback, resumed downloads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import bsdiff4
import pytest
import pyzstd

from pinnacle_updates.client import InstallResult
from pinnacle_updates.client.delta import (
    DeltaError,
    UpdatePath,
    apply_delta,
    base_problem,
    manifest_from_delta,
    plan_update,
)
from pinnacle_updates.client.errors import RepositoryError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats import bsdiff_lzma, delta_format
from pinnacle_updates.formats.archive import (
    ArchiveError,
    read_canonical_tar,
    release_compressor,
    tar_header,
    write_canonical_tar,
)
from pinnacle_updates.formats.delta_format import (
    DeltaHeader,
    DeltaOp,
    ManifestPatch,
    OpKind,
    patch_window_log,
    read_header,
    write_delta,
)
from pinnacle_updates.formats.index import (
    ChannelIndex,
    DeltaRef,
    Digest,
    EntryType,
    Manifest,
    ManifestEntry,
    Release,
    TargetRef,
    UpdateType,
)
from pinnacle_updates.formats.tree import verify_tree
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.artifact import scan_tree
from pinnacle_updates.repo_tools.core import metadata as meta
from pinnacle_updates.repo_tools.delta import archive_patch, build_delta, load_manifest, manifest_patch
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests import helpers_client as hc
from tests.conftest import tree_digest, write_tree
from tests.helpers_client import Repo
from tests.range_server import RangeServer

# -- planning (pure) -----------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rel(version: str, full: int, manifest: int = 100, deltas: dict[str, int] | None = None) -> Release:
    """A release whose content sha256 is derived from its version; ``deltas`` maps base -> length."""
    base = f"stable/any/{version}"
    return Release(
        version=version,
        platform="any",
        type=UpdateType.PATCH,
        published="2026-01-01T00:00:00Z",
        content=Digest(1000, _sha(version)),
        full=TargetRef(f"{base}/full.tar.zst", full, _sha(f"full {version}")),
        manifest=TargetRef(f"{base}/manifest.json.zst", manifest, _sha(f"manifest {version}")),
        deltas=tuple(
            DeltaRef(b, _sha(b), TargetRef(f"{base}/from-{b}.pdelta", n, _sha(f"{b}->{version}")))
            for b, n in (deltas or {}).items()
        ),
    )


def installed(version: str) -> tuple[str, str]:
    return version, _sha(version)


def test_nothing_installed_means_full() -> None:
    target = rel("1.1.0", 5000, deltas={"1.0.0": 10})
    path = plan_update([rel("1.0.0", 5000), target], None, target)
    assert (path.kind, path.describe(), path.total_bytes, path.saved) == ("full", "full", 5100, 0)
    assert path.note == "nothing is installed"


def test_direct_delta_when_smaller() -> None:
    target = rel("1.1.0", 5000, deltas={"1.0.0": 300})
    path = plan_update([rel("1.0.0", 5000), target], installed("1.0.0"), target)
    assert path.describe() == "delta:1.0.0->1.1.0"
    assert (path.total_bytes, path.full_bytes, path.saved) == (300, 5100, 4800)  # the delta carries the manifest
    assert [s.delta.target.path for s in path.steps] == ["stable/any/1.1.0/from-1.0.0.pdelta"]


def test_delta_must_match_the_installed_content() -> None:
    target = rel("1.1.0", 5000, deltas={"1.0.0": 300})
    path = plan_update([rel("1.0.0", 5000), target], ("1.0.0", _sha("something else")), target)
    assert path.kind == "full" and path.note == "no delta path from 1.0.0 to 1.1.0"


def test_delta_not_smaller_than_full_is_not_used() -> None:
    target = rel("1.1.0", 150, deltas={"1.0.0": 300})
    path = plan_update([rel("1.0.0", 5000), target], installed("1.0.0"), target)
    assert path.kind == "full" and "not smaller than the full artifact" in path.note


def test_plan_chain_through_an_intermediate_release() -> None:
    mid = rel("1.1.0", 5000, deltas={"1.0.0": 200})
    target = rel("1.2.0", 5000, deltas={"1.1.0": 200})
    path = plan_update([rel("1.0.0", 5000), mid, target], installed("1.0.0"), target)
    assert path.describe() == "chain:1.0.0->1.1.0->1.2.0"
    assert path.total_bytes == 200 + 200  # each step's delta (which carries the rebuilt release's manifest)


def test_cheapest_of_direct_and_chain_wins() -> None:
    mid = rel("1.1.0", 5000, deltas={"1.0.0": 200})
    releases = [rel("1.0.0", 5000), mid]
    cheap_direct = rel("1.2.0", 5000, deltas={"1.1.0": 200, "1.0.0": 350})
    assert plan_update([*releases, cheap_direct], installed("1.0.0"), cheap_direct).describe() == "delta:1.0.0->1.2.0"
    dear_direct = rel("1.2.0", 5000, deltas={"1.1.0": 200, "1.0.0": 2000})
    path = plan_update([*releases, dear_direct], installed("1.0.0"), dear_direct)
    assert path.describe() == "chain:1.0.0->1.1.0->1.2.0" and path.total_bytes == 400
    tie = rel("1.2.0", 5000, deltas={"1.1.0": 200, "1.0.0": 400})  # same bytes: fewer steps
    assert plan_update([*releases, tie], installed("1.0.0"), tie).describe() == "delta:1.0.0->1.2.0"


def test_chain_length_is_bounded() -> None:
    versions = [f"1.{i}.0" for i in range(6)]
    releases = [rel(v, 10_000, deltas={versions[i - 1]: 10} if i else None) for i, v in enumerate(versions)]
    target = releases[-1]
    assert plan_update(releases, installed("1.0.0"), target).kind == "chain"
    assert plan_update(releases, installed("1.0.0"), target, max_steps=3).kind == "full"


def test_reinstalling_the_installed_release_is_full() -> None:
    target = rel("1.0.0", 5000)
    assert plan_update([target], installed("1.0.0"), target).kind == "full"


def test_update_path_full_constructor() -> None:
    target = rel("2.0.0", 7000)
    path = UpdatePath.full(target, "why")
    assert (path.steps, path.total_bytes, path.full_bytes, path.note) == ((), 7100, 7100, "why")


@pytest.mark.parametrize("max_steps", [1, 2])
def test_cycles_are_not_followed(max_steps: int) -> None:
    a = rel("1.0.0", 5000, deltas={"1.1.0": 1})  # a (bogus) delta back to the older release
    b = rel("1.1.0", 5000, deltas={"1.0.0": 300})
    assert plan_update([a, b], installed("1.0.0"), b, max_steps=max_steps).describe() == "delta:1.0.0->1.1.0"


# -- applying (real trees, deltas written with the container format) -------------------------------


def manifest_of(root: Path, version: str) -> Manifest:
    entries = scan_tree(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        content = write_canonical_tar(fd, entries, lambda b: None)
    finally:
        os.close(fd)
    return Manifest(version, content, tuple(entries))


def encode(kind: OpKind, old: bytes, new: bytes, window_for: int | None = None) -> bytes:
    if kind is OpKind.BSDIFF4:
        return bytes(bsdiff4.diff(old, new))
    if kind is OpKind.BSDIFF_LZMA:
        return bsdiff_lzma.encode(old, new)
    if kind is OpKind.ZSTD_PATCH:
        option = {pyzstd.CParameter.compressionLevel: 19,
                  pyzstd.CParameter.windowLog: patch_window_log(len(old), window_for or len(new))}  # fmt: skip
        return pyzstd.ZstdCompressor(option, pyzstd.ZstdDict(old, is_raw=True).as_prefix).compress(
            new, pyzstd.ZstdCompressor.FLUSH_FRAME
        )
    return pyzstd.compress(new, 19)


def make_delta(
    base: tuple[Path, Manifest],
    target: tuple[Path, Manifest],
    kinds: dict[str, OpKind] | None = None,
    tamper: dict[str, bytes] | None = None,
) -> bytes:
    """A delta from ``base`` to ``target``: unchanged files copied, changed ones patched with
    ``kinds[path]`` (default bsdiff4), new ones zstd; ``tamper[path]`` replaces an op's data."""
    (base_root, base_m), (root, target_m) = base, target
    old = {e.path: e for e in base_m.entries if e.type is EntryType.FILE}
    ops: list[DeltaOp] = []
    payload = bytearray()
    for e in target_m.entries:
        if e.type is not EntryType.FILE:
            continue
        same = old.get(e.path)
        if same is not None and same.sha256 == e.sha256:
            ops.append(DeltaOp(e.path, OpKind.COPY, e.path))
            continue
        kind = (kinds or {}).get(e.path, OpKind.BSDIFF4) if same is not None else OpKind.ZSTD
        data = encode(kind, (base_root / e.path).read_bytes() if same else b"", (root / e.path).read_bytes())
        data = (tamper or {}).get(e.path, data)
        ops.append(DeltaOp(e.path, kind, e.path if same else None, len(payload), len(data)))
        payload += data
    header = DeltaHeader(base_m.version, target_m.version, base_m.content, target_m.content, tuple(ops))
    out = io.BytesIO()
    write_delta(out, header, [bytes(payload)])
    return out.getvalue()


def noise(seed: str, size: int) -> bytes:
    return b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(size // 32 + 1))[:size]


BASE_FILES: dict[str, bytes | str] = {
    "bin/app": "#!/bin/sh\necho app 1.0.0\n",
    "lib/big.so": noise("big", 200_000),
    "lib/same.dat": noise("same", 50_000),
    "share/notes.txt": "release notes\n" * 100,
}


def target_files() -> dict[str, bytes | str]:
    big = bytearray(noise("big", 200_000))
    big[1000:1010] = b"0123456789"
    return {
        "bin/app": "#!/bin/sh\necho app 1.1.0\n",
        "lib/big.so": bytes(big),
        "lib/same.dat": noise("same", 50_000),
        "lib/new.dat": noise("new", 30_000),
        "share/notes.txt": "release notes, edited\n" * 100,
    }


@pytest.fixture
def trees(tmp_path: Path) -> tuple[tuple[Path, Manifest], tuple[Path, Manifest]]:
    base = write_tree(tmp_path / "base", BASE_FILES)
    (base / "lib" / "link.so").symlink_to("big.so")
    new = write_tree(tmp_path / "new", target_files())
    (new / "lib" / "link.so").symlink_to("big.so")
    return (base, manifest_of(base, "1.0.0")), (new, manifest_of(new, "1.1.0"))


Trees = tuple[tuple[Path, Manifest], tuple[Path, Manifest]]


@pytest.mark.parametrize("kind", [OpKind.BSDIFF_LZMA, OpKind.BSDIFF4, OpKind.ZSTD_PATCH, "whole-archive"])
def test_apply_rebuilds_the_exact_tree(tmp_path: Path, trees: Trees, kind: OpKind | str) -> None:
    base, target = trees
    delta = tmp_path / "d.pdelta"
    if isinstance(kind, OpKind):
        delta.write_bytes(make_delta(base, target, dict.fromkeys(["lib/big.so", "bin/app", "share/notes.txt"], kind)))
    else:
        delta.write_bytes(archive_delta(base, target))  # one zstd frame: the target tar against the base tar
    before = tree_digest(base[0])
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(delta, base[0], base[1], target[1], dest)
    assert verify_tree(dest, target[1]) == []
    assert tree_digest(dest) == tree_digest(target[0])
    assert tree_digest(base[0]) == before  # the base is only read
    assert delta.stat().st_size < 35_000  # the 30 kB new file and small patches, of a 480 kB tree


def apply_fails(tmp_path: Path, trees: Trees, data: bytes, match: str) -> None:
    base, target = trees
    delta = tmp_path / "bad.pdelta"
    delta.write_bytes(data)
    dest = tmp_path / "slot"
    dest.mkdir(exist_ok=True)
    with pytest.raises(DeltaError, match=match) as info:
        apply_delta(delta, base[0], base[1], target[1], dest)
    assert "\n" not in str(info.value) and str(info.value).startswith("delta from 1.0.0")


@pytest.mark.parametrize("kind", [OpKind.BSDIFF_LZMA, OpKind.BSDIFF4])
def test_corrupted_patch_is_refused(tmp_path: Path, trees: Trees, kind: OpKind) -> None:
    base, target = trees
    good = encode(kind, (base[0] / "lib/big.so").read_bytes(), (target[0] / "lib/big.so").read_bytes())
    bad = bytearray(good)
    bad[-20] ^= 0xFF  # inside the compressed "extra" block
    apply_fails(tmp_path, trees, make_delta(base, target, {"lib/big.so": kind}, {"lib/big.so": bytes(bad)}),
                "lib/big.so")  # fmt: skip


def test_patch_with_wrong_output_names_both_hashes(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    wrong = bytearray((target[0] / "lib/big.so").read_bytes())
    wrong[5] ^= 1
    patch = encode(OpKind.BSDIFF4, (base[0] / "lib/big.so").read_bytes(), bytes(wrong))
    apply_fails(tmp_path, trees, make_delta(base, target, tamper={"lib/big.so": patch}),
                r"lib/big.so: patched output has sha256 [0-9a-f]{16}\.\.\. \(200000 bytes\), expected")  # fmt: skip


def test_truncated_delta_is_refused(tmp_path: Path, trees: Trees) -> None:
    data = make_delta(*trees)
    apply_fails(tmp_path, trees, data[:-100], "delta truncated")
    apply_fails(tmp_path, trees, data[:20], "delta truncated")


@pytest.mark.parametrize("kind", [OpKind.BSDIFF_LZMA, OpKind.BSDIFF4, OpKind.ZSTD_PATCH])
def test_output_larger_than_signed_is_refused_before_writing_it(tmp_path: Path, trees: Trees, kind: OpKind) -> None:
    base, target = trees
    huge = (target[0] / "lib/big.so").read_bytes() + b"\0" * 5_000_000
    patch = encode(kind, (base[0] / "lib/big.so").read_bytes(), huge, window_for=200_000)
    expect = {
        OpKind.BSDIFF_LZMA: "bsdiff-lzma blocks declare more than an output of 200000 bytes allows",
        OpKind.BSDIFF4: "declares 5200000 output bytes, the signed size is 200000",
        OpKind.ZSTD_PATCH: "patched output exceeds the signed size of 200000 bytes",
    }[kind]
    apply_fails(tmp_path, trees, make_delta(base, target, {"lib/big.so": kind}, {"lib/big.so": patch}), expect)
    written = tmp_path / "slot/lib/big.so"
    assert not written.exists() or written.stat().st_size <= 200_000  # bsdiff4: refused before any output


def test_zstd_frame_needing_a_larger_window_than_the_signed_sizes_is_refused(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    huge = (target[0] / "lib/big.so").read_bytes() + noise("pad", 3_000_000)
    patch = encode(OpKind.ZSTD_PATCH, (base[0] / "lib/big.so").read_bytes(), huge)
    tamper = {"lib/big.so": patch}
    apply_fails(tmp_path, trees, make_delta(base, target, {"lib/big.so": OpKind.ZSTD_PATCH}, tamper), "too much memory")


def test_new_file_decompressing_past_its_size_is_refused(tmp_path: Path, trees: Trees) -> None:
    bomb = pyzstd.compress(b"\0" * 10_000_000)
    apply_fails(tmp_path, trees, make_delta(*trees, tamper={"lib/new.dat": bomb}),
                "lib/new.dat: decompressed output exceeds the signed size of 30000 bytes")  # fmt: skip


def test_locally_edited_base_file_is_never_patched(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    data = make_delta(base, target)
    (base[0] / "lib/big.so").write_bytes(noise("edited", 200_000))
    apply_fails(tmp_path, trees, data, r"base file lib/big.so was modified locally \(sha256 [0-9a-f]{16}")
    assert base_problem(base[0], base[1]) == "base file lib/big.so was modified locally"


def test_locally_edited_copy_source_is_caught(tmp_path: Path, trees: Trees) -> None:
    base, _ = trees
    (base[0] / "lib/same.dat").write_bytes(noise("other", 50_000))
    apply_fails(tmp_path, trees, make_delta(*trees), r"base file lib/same.dat was modified locally")


def test_base_symlink_is_not_followed(tmp_path: Path, trees: Trees) -> None:
    base, _ = trees
    data = make_delta(*trees)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/same.dat").write_bytes(noise("same", 50_000))
    os.rename(base[0] / "lib", base[0] / "lib.real")
    (base[0] / "lib").symlink_to(tmp_path / "elsewhere")
    apply_fails(tmp_path, trees, data, "base file lib/.* is unreadable")


def test_dest_must_be_empty_and_base_mismatch_is_refused(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(make_delta(base, target))
    dest = tmp_path / "slot"
    dest.mkdir()
    (dest / "junk").write_text("x")
    with pytest.raises(DeltaError, match="is not empty"):
        apply_delta(delta, base[0], base[1], target[1], dest)
    with pytest.raises(DeltaError, match=r"delta base version 1\.0\.0 does not match the base manifest 1\.1\.0"):
        apply_delta(delta, target[0], target[1], target[1], tmp_path)


# -- the whole-archive kind (apply level) ----------------------------------------------------------


def tar_of(root: Path, manifest: Manifest) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    out = bytearray()
    try:
        write_canonical_tar(fd, manifest.entries, out.extend)
    finally:
        os.close(fd)
    return bytes(out)


def archive_delta(base: tuple[Path, Manifest], target: tuple[Path, Manifest], new_tar: bytes | None = None,
                  frame: bytes | None = None, level: int | None = None) -> bytes:
    """A whole-archive delta: ``new_tar`` (default: the target's canonical tar) patched against the
    base's canonical tar, or ``frame`` as is; with ``level``, the manifest is to be read from the tar
    (as the publisher writes it)."""
    (base_root, base_m), (root, target_m) = base, target
    if frame is None:
        new = tar_of(root, target_m) if new_tar is None else new_tar
        frame = encode(OpKind.ZSTD_PATCH, tar_of(base_root, base_m), new, window_for=target_m.content.length)
    header = DeltaHeader(base_m.version, target_m.version, base_m.content, target_m.content, (), archive=len(frame),
                         manifest=None if level is None else ManifestPatch(None, level))
    out = io.BytesIO()
    write_delta(out, header, [frame])
    return out.getvalue()


def test_whole_archive_corrupted_frame_is_refused(tmp_path: Path, trees: Trees) -> None:
    data = bytearray(archive_delta(*trees))
    data[len(data) // 2 + 200] ^= 0x55
    apply_fails(tmp_path, trees, bytes(data), "archive|does not match|sha256|manifest")


def test_whole_archive_truncated_is_refused(tmp_path: Path, trees: Trees) -> None:
    data = archive_delta(*trees)
    apply_fails(tmp_path, trees, data[:-40], "delta truncated")


def test_whole_archive_output_beyond_the_signed_size_is_refused(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    longer = tar_of(*target) + bytes(3_000_000)  # a valid tar, then zeros: a zstd "bomb" of the size
    apply_fails(tmp_path, trees, archive_delta(base, target, new_tar=longer), "longer than the manifest's")


def test_whole_archive_frame_needing_a_larger_window_is_refused(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), target = trees
    huge = tar_of(*target) + noise("pad", 3_000_000)
    frame = encode(OpKind.ZSTD_PATCH, tar_of(base_root, base_m), huge)
    apply_fails(tmp_path, trees, archive_delta((base_root, base_m), target, frame=frame), "too much memory")


def test_whole_archive_over_the_size_bound_is_refused(tmp_path: Path, trees: Trees,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta_format, "ARCHIVE_MAX", 100_000)
    apply_fails(tmp_path, trees, archive_delta(*trees), r"whole-archive delta over \d+ bytes of tars")


def test_whole_archive_never_reads_an_edited_base(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    data = archive_delta(base, target)
    (base[0] / "lib/same.dat").write_bytes(noise("edited", 50_000))
    apply_fails(tmp_path, trees, data, r"base file lib/same\.dat was modified locally")


def signed(manifest: Manifest, level: int = 10) -> Release:
    """A release whose signed manifest target is ``manifest`` compressed as the publisher does."""
    data = release_compressor(level).compress(manifest.to_bytes())
    return replace(rel(manifest.version, 10**6), content=manifest.content,
                   manifest=TargetRef("m.json.zst", len(data), hashlib.sha256(data).hexdigest()))


def test_whole_archive_manifest_is_read_from_the_rebuilt_tar(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), target = trees
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(archive_delta(*trees, level=10))
    assert read_header(io.BytesIO(delta.read_bytes())).manifest_length == 0  # no manifest patch
    manifest, tar = manifest_from_delta(delta, base_m, signed(target[1]), base_root)
    assert manifest == target[1] and tar is not None and tar.tar == tar_of(*target)
    assert manifest_from_delta(delta, base_m, signed(target[1]), tar_of(base_root, base_m)) == (manifest, tar)
    # the base ships files below a persistent path: its tar cannot be rebuilt from the slot
    assert manifest_from_delta(delta, base_m, signed(target[1]), base_root, ["lib"]) == (None, None)
    assert manifest_from_delta(delta, base_m, signed(target[1])) == (None, None)
    dest = tmp_path / "slot"
    dest.mkdir()
    (base_root / "lib/same.dat").unlink()  # with the tar, the base tree is not read again
    apply_delta(delta, base_root, base_m, target[1], dest, rebuilt=tar)
    assert tree_digest(dest) == tree_digest(target[0])


def test_whole_archive_manifest_must_be_the_signed_one(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), target = trees
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(archive_delta(*trees, level=10))
    for release, cause in ((signed(target[1], level=3), "is not the signed manifest of 1.1.0"),
                           (replace(signed(target[1]), version="1.2.0"), "is not the signed manifest of 1.2.0")):
        with pytest.raises(DeltaError, match=cause):
            manifest_from_delta(delta, base_m, release, base_root)
    longer = archive_delta(*trees, new_tar=tar_of(*target) + bytes(10240), level=10)
    delta.write_bytes(longer)
    with pytest.raises(DeltaError, match=r"^delta from 1\.0\.0: the archive does not decode to exactly \d+ bytes$"):
        manifest_from_delta(delta, base_m, signed(target[1]), base_root)


def test_whole_archive_base_changed_after_the_check_is_refused(tmp_path: Path, trees: Trees) -> None:
    """The base tree is not hashed again when its tar is rebuilt for the manifest (the installer's
    base_problem did that before the download): a file changed since, even at the same size, makes a
    tar whose manifest is not the signed one, and a size change stops the rebuild itself."""
    (base_root, base_m), target = trees
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(archive_delta(*trees, level=10))
    edited = base_root / "lib/same.dat"  # unchanged in the target: the frame copies all of it from the base
    data = bytearray(edited.read_bytes())
    data[1000] ^= 0xFF
    edited.write_bytes(bytes(data))
    with pytest.raises(DeltaError, match=r"^delta from 1\.0\.0: .*is not the signed manifest of 1\.1\.0"):
        manifest_from_delta(delta, base_m, signed(target[1]), base_root)
    edited.write_bytes(bytes(data) + b"more")
    with pytest.raises(DeltaError, match=r"^delta from 1\.0\.0: base file lib/same\.dat was modified locally"):
        manifest_from_delta(delta, base_m, signed(target[1]), base_root)


def members_end(tar: bytes) -> int:
    """Where the end blocks of the canonical ``tar`` start (its last file does not end in zeros)."""
    return -(-len(tar.rstrip(b"\0")) // 512) * 512


def with_member(tar: bytes, member: bytes) -> bytes:
    """``tar`` with ``member`` (header and data blocks) after its last one, end blocks and record padding after."""
    out = tar[: members_end(tar)] + member + bytes(1024)
    return out + bytes(-len(out) % 10240)


def raw_member(name: str, kind: bytes, data: bytes = b"", **fields: Any) -> bytes:
    import tarfile
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, len(data), 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % 512)


@pytest.mark.parametrize("how", ["hard link", "escape", "out of order", "mtime", "padding", "end blocks", "truncated",
                                 "past the end", "global pax header"])
def test_read_canonical_tar_refuses_what_is_not_canonical(trees: Trees, how: str) -> None:
    tar = tar_of(*trees[1])
    assert read_canonical_tar(tar) == list(trees[1][1].entries)
    end = members_end(tar)
    last = trees[1][1].entries[-1]
    mangled = {
        "hard link": lambda: with_member(tar, raw_member("zz", b"1", linkname="bin/app")),
        "escape": lambda: with_member(tar, raw_member("../zz", b"0", b"x")),
        "out of order": lambda: with_member(tar, tar_header(ManifestEntry("aaa", EntryType.DIR, 0o755))),
        "mtime": lambda: with_member(tar, raw_member("zz", b"5", mode=0o755, mtime=1)),
        "padding": lambda: tar[: end - 1] + b"x" + tar[end:],
        "end blocks": lambda: tar[: end + 700] + b"x" + tar[end + 701 :],
        "truncated": lambda: tar[:-512],
        "past the end": lambda: with_member(tar, raw_member("zz", b"0", b"x" * 512, size=100_000)),
        "global pax header": lambda: with_member(tar, raw_member("g", b"g", b"")),
    }[how]()
    assert last.type is EntryType.FILE and mangled != tar
    with pytest.raises(ArchiveError):
        read_canonical_tar(mangled)


# -- the manifest inside the delta ------------------------------------------------------------------


def test_a_delta_without_a_manifest_gives_none(tmp_path: Path, trees: Trees) -> None:
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(make_delta(*trees))
    release = rel("1.1.0", 5000)
    assert manifest_from_delta(delta, trees[0][1], release) == (None, None)


# -- the installer end to end: real repositories published with deltas ------------------------------

CHAIN = ("1.0.0", "1.1.0", "1.2.0")


def app(version: str, i: int) -> dict[str, str | bytes]:
    """An app whose large library changes by a few bytes per version: deltas are tiny."""
    big = bytearray(noise("big", 400_000))
    big[10_000 * (i + 1) : 10_000 * (i + 1) + 16] = hashlib.md5(version.encode()).digest()
    return {
        "bin/app": f"#!/bin/sh\necho app {version}\n",
        "VERSION": f"{version}\n",
        "healthy": "ok\n",
        "lib/big.so": bytes(big),
        "lib/same.dat": noise("same", 100_000),
        "logs/seed.txt": f"seed from {version}\n",
    }


def publish_with(repo: Repo, version: str, i: int, deltas: int = 3) -> None:
    src = repo.dir.parent / f"src-{version}"
    hc.write_tree(src, app(version, i))
    hc.release_cli("publish", str(repo.dir), str(src), "--keys", str(repo.keys), "--channel", "stable",
                   "--version", version, "--type", "patch", "--platform", "any", "--deltas", str(deltas))  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """1.0.0, 1.1.0 (delta from 1.0.0), 1.2.0 (a delta from 1.1.0 only, so 1.0.0 -> 1.2.0 is a chain)."""
    repo = hc.make_repo(tmp_path_factory.mktemp("delta-pub"))
    for i, v in enumerate(CHAIN):
        publish_with(repo, v, i, deltas=1)
    return repo


@pytest.fixture
def repo(published: Repo, tmp_path: Path) -> Repo:
    """A private copy of the published repository, free to tamper with (same keys)."""
    copy = tmp_path / "repo"
    shutil.copytree(published.dir, copy)
    return Repo(copy, published.keys)


def index_of(repo: Repo) -> ChannelIndex:
    store = Repository(repo.dir)
    return store.channel_index(store.load(), "stable")


def delta_file(repo: Repo, version: str, base: str) -> Path:
    release = index_of(repo).find(version, "any")
    assert release is not None
    ref = release.delta_from(base)
    assert ref is not None
    return Repository(repo.dir).target_location(ref.target.path, ref.target.sha256)


def forge_delta(repo: Repo, version: str, base: str, mutate: Callable[[bytes], bytes]) -> None:
    """Replace a published delta by ``mutate(delta)`` and sign it properly, as a buggy (or
    compromised) publisher would: TUF accepts it, only the client's own checks can refuse it."""
    store, keys = Repository(repo.dir), KeyStore(repo.keys)
    with store.locked():
        state = store.load()
        role = state.channel("stable")
        index = store.channel_index(state, "stable")
        release = index.find(version, "any")
        assert release is not None
        ref = release.delta_from(base)
        assert ref is not None
        data = mutate(store.target_location(ref.target.path, ref.target.sha256).read_bytes())
        sha = hashlib.sha256(data).hexdigest()
        forged = replace(ref, target=TargetRef(ref.target.path, len(data), sha))
        new = replace(release, deltas=tuple(forged if d is ref else d for d in release.deltas))
        index = replace(index, releases=tuple(new if r is release else r for r in index.releases))
        role.signed.targets[ref.target.path] = meta.target_file(ref.target.path, len(data), sha)
        files = [(ref.target.path, sha, data), *ops._set_index(role, "stable", index)]
        ops._commit(store, keys, state, ops._Change(files, {"stable": role}), ops.utcnow())


def rewrite_ops(data: bytes, replace_data: dict[str, tuple[OpKind, bytes]]) -> bytes:
    """The per-file delta ``data`` with some ops' kind and bytes replaced (offsets recomputed)."""
    header = read_header(io.BytesIO(data))
    assert header.archive is None
    ops_out: list[DeltaOp] = []
    payload = bytearray(data[slice(*header.manifest_range())])  # the manifest patch comes first
    for op in header.ops:
        kind, chunk = replace_data.get(op.path, (op.op, data[slice(*header.data_range(op))]))
        if kind is OpKind.COPY:
            ops_out.append(op)
            continue
        ops_out.append(DeltaOp(op.path, kind, op.base, len(payload), len(chunk)))
        payload += chunk
    out = io.BytesIO()
    write_delta(out, replace(header, ops=tuple(ops_out), payload_start=0), [bytes(payload)])
    return out.getvalue()


class Watch:
    """Installer events, and the active slot's digest taken at the swap (it must equal the one
    taken before the install: the running slot is never written)."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.events: list[dict[str, Any]] = []
        self.at_swap: dict[str, str] | None = None
        self.active = os.readlink(d / "current") if (d / "current").is_symlink() else None

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("step") == "swap" and self.active is not None:
            self.at_swap = tree_digest(self.d / self.active)


def install(d: Path, version: str) -> tuple[InstallResult, Watch, dict[str, str] | None]:
    watch = Watch(d)
    before = tree_digest(d / watch.active) if watch.active else None
    result = Installer(d, on_event=watch).install(version)
    assert watch.at_swap == before
    return result, watch, before


def installed_ok(d: Path, version: str) -> dict[str, Any]:
    """The version is active and verified; returns its history record."""
    ins = Installer(d)
    assert ins.status()["version"] == version and (d / "current/VERSION").read_text() == f"{version}\n"
    record = ins.history()[-1]
    assert ins.verify().ok
    assert (record["op"], record["outcome"], record["version"]) == ("install", "committed", version)
    return record


def test_check_and_install_take_the_delta(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = hc.init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    assert installed_ok(d, "1.0.0")["path"] == "full"
    found = ins.check("1.1.0")
    release = index_of(repo).find("1.1.0", "any")
    assert release is not None
    full = release.full.length + release.manifest.length
    assert found.path == "delta:1.0.0->1.1.0" and 0 < found.download_bytes < full // 10
    result, _, _ = install(d, "1.1.0")
    record = installed_ok(d, "1.1.0")
    assert record["path"] == "delta" and record["update_path"] == "delta:1.0.0->1.1.0", record.get("fallback_reason")
    assert record["bytes_downloaded"] == result.bytes_downloaded < full // 10
    assert record["bytes_saved"] == full - result.bytes_downloaded > 0
    assert "fallback_reason" not in record
    assert result.to_dict()["path"] == "delta"
    assert (d / "data/logs/seed.txt").read_text() == "seed from 1.0.0\n"  # persistent data untouched


# The app ships logs/: where logs is a persistent path (the default), the slot links it away, the base tar
# rebuilt from the slot has holes there and a whole-archive delta's manifest cannot be read from its tar.
NOT_LOGS = {"persistent_paths": ["uploads"]}


def update_over_http(tmp_path: Path, repo: Repo) -> tuple[Path, InstallResult, list[str]]:
    """A client (logs/ not persistent) installs 1.0.0, then updates to 1.1.0 from a counting server:
    its directory, the update's result and the paths the update fetched."""
    with RangeServer(repo.dir) as srv:
        d = tmp_path / "inst"
        ins = hc.init_client(d, srv.url, repo, **NOT_LOGS)
        ins.install("1.0.0")
        served = len(srv.ranges)
        result, _, _ = install(d, "1.1.0")
        return d, result, [p for p, _ in srv.ranges[served:]]


@pytest.mark.parametrize("whole_archive", [False, True])
def test_the_manifest_comes_inside_the_delta(tmp_path: Path, repo: Repo, whole_archive: bool) -> None:
    path = republish(repo, tmp_path, whole_archive)
    assert (read_header(io.BytesIO(path.read_bytes())).manifest_length == 0) == whole_archive
    d, result, fetched = update_over_http(tmp_path, repo)
    release = index_of(repo).find("1.1.0", "any")
    assert release is not None and release.deltas
    assert installed_ok(d, "1.1.0")["path"] == "delta"
    assert result.bytes_downloaded == release.deltas[0].target.length  # the delta, nothing else
    assert not any("manifest" in p for p in fetched) and any(p.endswith(".pdelta") for p in fetched)
    assert json.loads((d / "manifests" / f"{release.content.sha256}.json").read_bytes())["version"] == "1.1.0"


@pytest.mark.parametrize("whole_archive", [False, True])
def test_both_delta_kinds_install(tmp_path: Path, repo: Repo, whole_archive: bool) -> None:
    d = fallback_case(tmp_path, repo)
    (d / "data/logs/local.txt").write_text("kept\n")
    path = republish(repo, tmp_path, whole_archive)
    assert (read_header(io.BytesIO(path.read_bytes())).archive is not None) == whole_archive
    result, _, _ = install(d, "1.1.0")
    record = installed_ok(d, "1.1.0")
    assert record["path"] == "delta" and "fallback_reason" not in record
    release = index_of(repo).find("1.1.0", "any")
    assert release is not None  # the whole-archive kind: the manifest downloaded, logs/ is persistent
    assert result.bytes_downloaded == path.stat().st_size + (release.manifest.length if whole_archive else 0)
    # a persistent path the base shipped (logs/) is a hole in the rebuilt base tar, never read or written
    assert (d / "data/logs/seed.txt").read_text() == "seed from 1.0.0\n"
    assert (d / "data/logs/local.txt").read_text() == "kept\n"


def with_manifest_patch(data: bytes, patch: bytes, level: int | None = None) -> bytes:
    """The delta ``data`` with another manifest patch (and level); the rest of the payload kept."""
    header = read_header(io.BytesIO(data))
    assert header.manifest is not None
    rest = data[header.manifest_range()[1]:]
    manifest = ManifestPatch(len(patch), header.manifest.level if level is None else level)
    offset, ops_out = len(patch), []
    for op in header.ops:
        ops_out.append(replace(op, offset=offset))
        offset += op.length
    out = io.BytesIO()
    write_delta(out, replace(header, ops=tuple(ops_out), manifest=manifest, payload_start=0), [patch, rest])
    return out.getvalue()


def manifests(repo: Repo, *versions: str) -> list[Manifest]:
    index, store = index_of(repo), Repository(repo.dir)
    return [load_manifest(store, index.find(v, "any")) for v in versions]  # type: ignore[arg-type]


@pytest.mark.parametrize("whole_archive", [False, True])
@pytest.mark.parametrize("how", ["other manifest", "other level", "not a frame"])
def test_a_tampered_manifest_in_the_delta_falls_back(tmp_path: Path, repo: Repo, how: str,
                                                      whole_archive: bool) -> None:
    d = fallback_case(tmp_path, repo)
    republish(repo, tmp_path, whole_archive)
    base, target = manifests(repo, "1.0.0", "1.1.0")
    entries = tuple(replace(e, sha256="0" * 64) if e.path == "lib/big.so" else e for e in target.entries)
    lying = manifest_patch(base, replace(target, entries=entries))  # a manifest that would accept other bytes
    mangle = {
        "other manifest": lambda data: with_manifest_patch(data, lying),
        "other level": lambda data: with_manifest_patch(data, manifest_patch(base, target), level=3),
        "not a frame": lambda data: with_manifest_patch(data, b"not a zstd frame"),
    }[how]
    forge_delta(repo, "1.1.0", "1.0.0", mangle)
    _, watch, _ = install(d, "1.1.0")
    cause = (r"^delta from 1\.0\.0: the manifest patch is not a zstd frame$" if how == "not a frame" else
             r"^delta from 1\.0\.0: the manifest rebuilt from the delta is not the signed manifest of 1\.1\.0 ")
    assert_fell_back(d, watch, cause)


def test_a_delta_without_a_manifest_fetches_the_signed_one(tmp_path: Path, repo: Repo) -> None:
    d = fallback_case(tmp_path, repo)
    path = republish(repo, tmp_path, whole_archive=False)
    data = path.read_bytes()
    header = read_header(io.BytesIO(data))
    shift = header.manifest_length
    ops_out = tuple(replace(op, offset=op.offset - shift) for op in header.ops)
    out = io.BytesIO()
    write_delta(out, replace(header, ops=ops_out, manifest=None, payload_start=0), [data[header.manifest_range()[1]:]])
    forge_delta(repo, "1.1.0", "1.0.0", lambda _: out.getvalue())
    result, _, _ = install(d, "1.1.0")
    release = index_of(repo).find("1.1.0", "any")
    assert release is not None and installed_ok(d, "1.1.0")["path"] == "delta"
    assert result.bytes_downloaded == release.deltas[0].target.length + release.manifest.length


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "oversize"])
def test_a_bad_whole_archive_delta_falls_back(tmp_path: Path, repo: Repo, damage: str) -> None:
    d = fallback_case(tmp_path, repo)
    republish(repo, tmp_path, whole_archive=True)
    base, target = manifests(repo, "1.0.0", "1.1.0")

    def oversize(data: bytes) -> bytes:
        header = read_header(io.BytesIO(data))
        old = tar_of(tmp_path / "src-1.0.0", base)
        frame = encode(OpKind.ZSTD_PATCH, old, tar_of(tmp_path / "src-1.1.0", target) + bytes(2_000_000),
                       window_for=target.content.length)
        out = io.BytesIO()
        write_delta(out, replace(header, archive=len(frame), payload_start=0),
                    [data[slice(*header.manifest_range())], frame])
        return out.getvalue()

    def corrupt(data: bytes) -> bytes:
        start, end = read_header(io.BytesIO(data)).archive_range()
        out = bytearray(data)
        out[(start + end) // 2] ^= 0xFF
        return bytes(out)

    mangle = {"corrupt": corrupt, "truncate": lambda data: data[:-7], "oversize": oversize}[damage]
    forge_delta(repo, "1.1.0", "1.0.0", mangle)
    _, watch, _ = install(d, "1.1.0")
    cause = {"corrupt": r"^delta from 1\.0\.0: ", "truncate": r"^delta from 1\.0\.0: delta truncated",
             "oversize": r"^delta from 1\.0\.0: archive is longer than the manifest's \d+ bytes"}[damage]
    assert_fell_back(d, watch, cause)


@pytest.mark.parametrize("rebuilds", ["another release", "an extra member", "more bytes"])
def test_a_whole_archive_delta_not_rebuilding_the_signed_tree_falls_back(tmp_path: Path, repo: Repo,
                                                                           rebuilds: str) -> None:
    d = fallback_case(tmp_path, repo, **NOT_LOGS)
    republish(repo, tmp_path, whole_archive=True)  # the sources of 1.0.0 and 1.1.0 in tmp_path
    hc.write_tree(tmp_path / "src-1.2.0", app("1.2.0", 2))
    base, target, other = manifests(repo, "1.0.0", "1.1.0", "1.2.0")
    tar = tar_of(tmp_path / "src-1.1.0", target)
    new = {"another release": lambda: tar_of(tmp_path / "src-1.2.0", other),
           "an extra member": lambda: with_member(tar, tar_header(ManifestEntry("zz-extra", EntryType.DIR, 0o755))),
           "more bytes": lambda: tar + bytes(10240)}[rebuilds]()
    assert (len(new) == len(tar)) == (rebuilds != "more bytes")  # in the signed bounds: the manifest refuses it
    frame = encode(OpKind.ZSTD_PATCH, tar_of(tmp_path / "src-1.0.0", base), new, window_for=len(tar))

    def mangle(data: bytes) -> bytes:
        out = io.BytesIO()
        write_delta(out, replace(read_header(io.BytesIO(data)), archive=len(frame), payload_start=0), [frame])
        return out.getvalue()

    forge_delta(repo, "1.1.0", "1.0.0", mangle)
    _, watch, _ = install(d, "1.1.0")  # the running slot is untouched (checked at the swap)
    cause = (r"^delta from 1\.0\.0: the archive does not decode to exactly \d+ bytes$" if rebuilds == "more bytes"
             else r"^delta from 1\.0\.0: the manifest rebuilt from the delta is not the signed manifest of 1\.1\.0 ")
    assert_fell_back(d, watch, cause)
    steps = [e.get("step") or e["event"] for e in watch.events]
    assert steps.index("delta_fallback") < steps.index("staging")  # refused before anything was written


def test_chain_through_an_intermediate_release(tmp_path: Path, repo: Repo) -> None:
    d = tmp_path / "inst"
    ins = hc.init_client(d, str(repo.dir), repo, **NOT_LOGS)
    ins.install("1.0.0")
    assert ins.check("1.2.0").path == "chain:1.0.0->1.1.0->1.2.0"
    install(d, "1.2.0")
    record = installed_ok(d, "1.2.0")
    assert record["path"] == "chain" and record["bytes_saved"] > 0
    index = index_of(repo)
    deltas = [r.deltas[0].target.length for r in (index.find("1.1.0", "any"), index.find("1.2.0", "any")) if r]
    assert record["bytes_downloaded"] == sum(deltas)  # both manifests came inside their deltas
    kinds = [read_header(io.BytesIO(delta_file(repo, v, b).read_bytes())).archive is not None
             for v, b in (("1.1.0", "1.0.0"), ("1.2.0", "1.1.0"))]
    assert kinds == [True, True]  # the second manifest read from the tar the first step rebuilt in memory
    assert not (d / "cache/delta-work").exists()  # the intermediate tree is gone
    assert sorted(os.listdir(d / "slots")) == ["a", "b"]  # and never was a slot


def fallback_case(tmp_path: Path, repo: Repo, url: str | None = None, **settings: Any) -> Path:
    d = tmp_path / "inst"
    hc.init_client(d, url or str(repo.dir), repo, **settings)
    Installer(d).install("1.0.0")
    return d


def assert_fell_back(d: Path, watch: Watch, cause: str) -> None:
    record = installed_ok(d, "1.1.0")
    assert record["path"] == "full", record
    assert re.search(cause, record["fallback_reason"]), record["fallback_reason"]
    assert "\n" not in record["fallback_reason"]
    assert any(e["event"] == "delta_fallback" for e in watch.events)


def republish(repo: Repo, tmp: Path, whole_archive: bool, version: str = "1.1.0", base: str = "1.0.0") -> Path:
    """Sign, in place of the published delta ``base`` -> ``version``, one of the given kind (the
    publisher keeps whichever is smaller), built by the publisher's own functions from the sources.
    Returns the new delta's file."""
    store = Repository(repo.dir)
    index = index_of(repo)
    (base_m, base_root), (target_m, root) = [
        (load_manifest(store, index.find(v, "any")), tmp / f"src-{v}") for v in (base, version)  # type: ignore[arg-type]
    ]
    for v, where in ((base, base_root), (version, root)):
        hc.write_tree(where, app(v, CHAIN.index(v)))
    out, work = tmp / "kind.pdelta", tmp / "kind-work"
    work.mkdir(exist_ok=True)
    if whole_archive:  # as the publisher writes it: no manifest patch, the manifest is in the tar
        frame = archive_patch(base_root, base_m, root, target_m, 2 << 30)
        assert frame is not None
        header = DeltaHeader(base, version, base_m.content, target_m.content, (),
                             manifest=ManifestPatch(None, store.config().compression_level), archive=len(frame))
        with open(out, "wb") as f:
            write_delta(f, header, [frame])
    else:
        build_delta(base_root, base_m, root, target_m, out, work, manifest_level=store.config().compression_level)
    data = out.read_bytes()
    forge_delta(repo, version, base, lambda _: data)
    return delta_file(repo, version, base)


def test_corrupted_delta_falls_back(tmp_path: Path, repo: Repo) -> None:
    d = fallback_case(tmp_path, repo)
    republish(repo, tmp_path, whole_archive=False)

    def corrupt(data: bytes) -> bytes:
        header = read_header(io.BytesIO(data))
        op = next(o for o in header.ops if o.path == "lib/big.so")
        start, end = header.data_range(op)
        out = bytearray(data)
        out[(start + end) // 2] ^= 0xFF
        return bytes(out)

    forge_delta(repo, "1.1.0", "1.0.0", corrupt)
    _, watch, _ = install(d, "1.1.0")
    assert_fell_back(d, watch, r"^delta from 1\.0\.0: lib/big\.so: ")


def test_truncated_delta_falls_back(tmp_path: Path, repo: Repo) -> None:
    d = fallback_case(tmp_path, repo)
    forge_delta(repo, "1.1.0", "1.0.0", lambda data: data[:-7])
    _, watch, _ = install(d, "1.1.0")
    assert_fell_back(d, watch, r"^delta from 1\.0\.0: delta truncated")


@pytest.mark.parametrize("kind, message", [
    (OpKind.BSDIFF_LZMA, r"lib/big\.so: bsdiff-lzma blocks declare more than an output of 400000 bytes allows"),
    (OpKind.BSDIFF4, r"lib/big\.so: patch declares 1400000 output bytes, the signed size is 400000"),
])  # fmt: skip
def test_delta_output_beyond_the_signed_size_falls_back(tmp_path: Path, repo: Repo, kind: OpKind, message: str) -> None:
    d = fallback_case(tmp_path, repo)
    republish(repo, tmp_path, whole_archive=False)
    old, new = app("1.0.0", 0)["lib/big.so"], app("1.1.0", 1)["lib/big.so"]
    assert isinstance(old, bytes) and isinstance(new, bytes)
    patch = encode(kind, old, new + b"\0" * 1_000_000)
    forge_delta(repo, "1.1.0", "1.0.0", lambda data: rewrite_ops(data, {"lib/big.so": (kind, patch)}))
    _, watch, _ = install(d, "1.1.0")
    assert_fell_back(d, watch, message)


def test_locally_edited_base_file_falls_back_before_downloading_the_delta(tmp_path: Path, repo: Repo) -> None:
    d = fallback_case(tmp_path, repo)
    edited = d / "slots/a/lib/big.so"
    edited.write_bytes(noise("local edit", 400_000))
    _, watch, _ = install(d, "1.1.0")
    assert_fell_back(d, watch, r"^base file lib/big\.so was modified locally$")
    assert edited.read_bytes() == noise("local edit", 400_000)  # still the user's, never written
    assert not any(k.endswith(".pdelta") for k in os.listdir(d / "cache"))


def test_missing_delta_target_404_falls_back(tmp_path: Path, repo: Repo) -> None:
    delta_file(repo, "1.1.0", "1.0.0").unlink()
    with RangeServer(repo.dir) as srv:
        d = fallback_case(tmp_path, repo, srv.url)
        _, watch, _ = install(d, "1.1.0")
    assert_fell_back(d, watch, r"^delta download failed: .*from-1\.0\.0\.pdelta is not on the repository .*404")


def test_delta_tampered_on_the_server_falls_back(tmp_path: Path, repo: Repo) -> None:
    path = delta_file(repo, "1.1.0", "1.0.0")
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    d = fallback_case(tmp_path, repo)
    _, watch, _ = install(d, "1.1.0")
    assert_fell_back(d, watch, r"^delta download failed: .*failed verification")


def test_a_failing_fallback_is_one_error_and_leaves_the_running_slot(tmp_path: Path, repo: Repo) -> None:
    d = fallback_case(tmp_path, repo)
    forge_delta(repo, "1.1.0", "1.0.0", lambda data: data[:-7])
    release = index_of(repo).find("1.1.0", "any")
    assert release is not None
    Repository(repo.dir).target_location(release.full.path, release.full.sha256).unlink()
    before = tree_digest(d / "slots/a")
    with pytest.raises(RepositoryError, match=r"full\.tar\.zst is not on the repository"):
        Installer(d).install("1.1.0")
    assert tree_digest(d / "slots/a") == before and Installer(d).status()["version"] == "1.0.0"
    assert Installer(d).history()[-1]["outcome"] == "failed"


# -- a download killed half way resumes ---------------------------------------------------------------

KILLED_INSTALL = """
import sys
from pathlib import Path
from pinnacle_updates.client.installer import Installer
Installer(Path(sys.argv[1])).install(sys.argv[2])
"""


def test_a_download_killed_half_way_resumes_and_transfers_only_the_rest(tmp_path: Path, repo: Repo) -> None:
    release = index_of(repo).find("1.0.0", "any")
    assert release is not None
    size = release.full.length
    with RangeServer(repo.dir) as srv:
        d = tmp_path / "inst"
        hc.init_client(d, srv.url, repo)
        srv.delay = 0.02  # 16 KiB pieces: about 1.5 s for the artifact
        proc = subprocess.Popen([sys.executable, "-c", KILLED_INSTALL, str(d), "1.0.0"], env=hc.env(), cwd=hc.ROOT)
        deadline = time.monotonic() + 60
        while srv.bytes_for("full.tar.zst") < size // 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the download did not get half way"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = -1
        while first != srv.bytes_for("full.tar.zst"):  # the server's last write may still be under way
            first = srv.bytes_for("full.tar.zst")
            time.sleep(0.2)
        assert size // 2 <= first < size
        [partial] = (d / "cache/partial").iterdir()
        kept = partial.stat().st_size
        assert 0 < kept <= first

        srv.delay = 0.0
        result = Installer(d).install("1.0.0")
        second = srv.bytes_for("full.tar.zst") - first
    assert result.outcome == "committed" and installed_ok(d, "1.0.0")["path"] == "full"
    assert second == size - kept  # only the rest went over the wire
    ranges = [r for p, r in srv.ranges if p.endswith("full.tar.zst")]
    assert ranges == [None, f"bytes={kept}-"]
    assert list((d / "cache/partial").iterdir()) == []
