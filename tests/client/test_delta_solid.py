"""The solid delta kind: the changed files as one LZMA stream with the base files as dictionary,
and a skeleton manifest the client completes with the hashes of what it rebuilt."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from pinnacle_updates.client.delta import DeltaError, apply_delta, manifest_from_delta
from pinnacle_updates.formats import lzma_dict
from pinnacle_updates.formats.delta_format import (
    SOLID_SHA256,
    DeltaHeader,
    ManifestPatch,
    read_header,
    solid_layout,
    write_delta,
)
from pinnacle_updates.formats.index import EntryType, Manifest
from pinnacle_updates.repo_tools.delta import build_delta, load_manifest, manifest_patch, solid_patch
from pinnacle_updates.repo_tools.store import Repository
from tests.client import test_delta_client
from tests.client.test_delta_client import (
    NOT_LOGS,
    Trees,
    apply_fails,
    assert_fell_back,
    delta_file,
    fallback_case,
    forge_delta,
    index_of,
    install,
    installed_ok,
    manifest_of,
    republish,
    signed,
    update_over_http,
)
from tests.conftest import tree_digest, write_tree
from tests.helpers_client import Repo

# the fixtures of the other kinds' tests: the same trees and published repository
trees, published, repo = test_delta_client.trees, test_delta_client.published, test_delta_client.repo


def solid_delta(base: tuple[Path, Manifest], target: tuple[Path, Manifest], level: int = 10) -> bytes:
    """The solid delta the publisher builds (:func:`repo_tools.delta.solid_patch`)."""
    (base_root, base_m), (root, target_m) = base, target
    parts = solid_patch(base_root, base_m, root, target_m, 2 << 30)
    assert parts is not None
    return container(base_m, target_m, *parts, level=level)


def container(base_m: Manifest, target_m: Manifest, skeleton_patch: bytes, stream: bytes, level: int = 10) -> bytes:
    header = DeltaHeader(base_m.version, target_m.version, base_m.content, target_m.content, (),
                         manifest=ManifestPatch(len(skeleton_patch), level), solid=len(stream))
    out = io.BytesIO()
    write_delta(out, header, [skeleton_patch, stream])
    return out.getvalue()


def forged(base: tuple[Path, Manifest], target_m: Manifest, skeleton: Manifest, data: bytes) -> bytes:
    """A solid delta whose skeleton is ``skeleton`` and whose stream rebuilds ``data``, coded with the
    dictionary the layout asks for: well-formed, so only the client's checks can refuse it."""
    base_root, base_m = base
    layout = solid_layout(base_m, skeleton.entries)
    dictionary = b"".join((base_root / e.path).read_bytes() for e in layout.dictionary)
    return container(base_m, target_m, manifest_patch(base_m, skeleton), lzma_dict.compress(data, dictionary))


def skeleton_of(base_m: Manifest, target_m: Manifest) -> tuple[Manifest, list[str]]:
    """The publisher's skeleton of ``target_m`` and the paths its stream rebuilds."""
    rebuilt = [e.path for e in solid_layout(base_m, target_m.entries).solid]
    entries = tuple(replace(e, sha256=SOLID_SHA256) if e.path in rebuilt else e for e in target_m.entries)
    return Manifest(target_m.version, target_m.content, entries), rebuilt


def test_layout_copies_same_content_and_orders_the_dictionary(trees: Trees) -> None:
    (_, base_m), (_, target_m) = trees
    layout = solid_layout(base_m, target_m.entries)
    assert {p: e.path for p, e in layout.copies.items()} == {"lib/same.dat": "lib/same.dat"}
    assert [e.path for e in layout.solid] == ["bin/app", "lib/big.so", "lib/new.dat", "share/notes.txt"]
    # unchanged base files first, then the old versions of rebuilt files, the first rebuilt nearest the end
    assert [e.path for e in layout.dictionary] == ["lib/same.dat", "share/notes.txt", "lib/big.so", "bin/app"]
    assert layout.size == sum(e.size for e in layout.solid)


def test_solid_delta_rebuilds_the_exact_tree(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), target = trees
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(solid_delta(*trees))
    header = read_header(io.BytesIO(delta.read_bytes()))
    assert header.solid is not None and not header.ops and header.manifest_length > 0
    manifest, rebuilt = manifest_from_delta(delta, base_m, signed(target[1]), base_root)
    assert manifest == target[1] and rebuilt is not None and rebuilt.kind == "solid" and rebuilt.tar is None
    for n, given in enumerate((rebuilt, None)):  # decoded for the manifest, or here
        dest = tmp_path / f"slot{n}"
        dest.mkdir()
        apply_delta(delta, base_root, base_m, target[1], dest, rebuilt=given)
        assert tree_digest(dest) == tree_digest(target[0])
    assert manifest_from_delta(delta, base_m, signed(target[1])) == (None, None)  # no base tree given
    # a base that ships files below a persistent path: the dictionary is not all there
    with pytest.raises(DeltaError, match=r"needs the base file lib/big\.so, which is below a persistent path"):
        manifest_from_delta(delta, base_m, signed(target[1]), base_root, ["lib"])


def test_corrupted_stream_is_refused(tmp_path: Path, trees: Trees) -> None:
    data = bytearray(solid_delta(*trees))
    start, end = read_header(io.BytesIO(bytes(data))).solid_range()
    data[(start + end) // 2] ^= 0x55
    apply_fails(tmp_path, trees, bytes(data), "LZMA stream|other bytes")


def test_truncated_stream_is_refused(tmp_path: Path, trees: Trees) -> None:
    apply_fails(tmp_path, trees, solid_delta(*trees)[:-9], "delta truncated")


def test_stream_holding_more_than_the_signed_files_is_refused(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), (root, target_m) = trees
    skeleton, rebuilt = skeleton_of(base_m, target_m)
    data = b"".join((root / p).read_bytes() for p in rebuilt) + bytes(1_000_000)  # an LZMA "bomb"
    apply_fails(tmp_path, trees, forged((base_root, base_m), target_m, skeleton, data),
                r"the LZMA stream does not hold exactly its \d+ bytes")


def test_skeleton_larger_than_the_release_is_refused(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), (_, target_m) = trees
    skeleton, _ = skeleton_of(base_m, target_m)
    huge = Manifest(skeleton.version, skeleton.content, tuple(
        replace(e, size=10**9) if e.path == "lib/new.dat" else e for e in skeleton.entries))
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(forged((base_root, base_m), target_m, huge, b""))
    with pytest.raises(DeltaError, match=r"would rebuild \d+ bytes, more than the \d+-byte release") as info:
        manifest_from_delta(delta, base_m, signed(target_m), base_root)
    assert "\n" not in str(info.value)


def test_other_files_of_the_right_sizes_are_not_the_signed_manifest(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), (root, target_m) = trees
    skeleton, rebuilt = skeleton_of(base_m, target_m)
    data = bytearray(b"".join((root / p).read_bytes() for p in rebuilt))
    data[5] ^= 1  # bin/app, one bit
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(forged((base_root, base_m), target_m, skeleton, bytes(data)))
    with pytest.raises(DeltaError, match=r"the manifest rebuilt from the delta is not the signed manifest of 1\.1\.0"):
        manifest_from_delta(delta, base_m, signed(target_m), base_root)
    dest = tmp_path / "slot"
    dest.mkdir()
    with pytest.raises(DeltaError, match=r"bin/app does not match its manifest sha256/size"):
        apply_delta(delta, base_root, base_m, target_m, dest)  # against the signed manifest: hashed


def test_stream_rebuilding_a_copy_of_a_base_file_is_refused(tmp_path: Path, trees: Trees) -> None:
    (base_root, base_m), (root, target_m) = trees
    skeleton, rebuilt = skeleton_of(base_m, target_m)
    same = (base_root / "lib/same.dat").read_bytes()  # what a layout-shifting publisher would send
    entries = tuple(replace(e, size=len(same)) if e.path == "lib/new.dat" else e for e in skeleton.entries)
    data = b"".join(same if p == "lib/new.dat" else (root / p).read_bytes() for p in rebuilt)
    delta = tmp_path / "d.pdelta"
    delta.write_bytes(forged((base_root, base_m), target_m, replace(skeleton, entries=entries), data))
    with pytest.raises(DeltaError, match=r"rebuilds lib/new\.dat, a copy of a base file"):
        manifest_from_delta(delta, base_m, signed(target_m), base_root)


def test_edited_dictionary_file_is_caught(tmp_path: Path, trees: Trees) -> None:
    base, target = trees
    data = solid_delta(base, target)
    (base[0] / "share/notes.txt").write_text("edited here\n" * 100)
    apply_fails(tmp_path, trees, data, r"base file share/notes\.txt was modified locally")


def test_without_liblzma_a_solid_delta_is_one_line(tmp_path: Path, trees: Trees,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = solid_delta(*trees)
    monkeypatch.setattr(lzma_dict, "_library", lambda: None)  # a client machine without liblzma
    apply_fails(tmp_path, trees, data, "liblzma is not available here")
    assert solid_patch(trees[0][0], trees[0][1], trees[1][0], trees[1][1], 2 << 30) is None  # nor published


# -- through the installer -------------------------------------------------------------------------


def republish_solid(repo: Repo, tmp: Path) -> Path:
    """The published delta 1.0.0 -> 1.1.0 replaced by the solid kind, built from the sources."""
    republish(repo, tmp, whole_archive=False)  # writes the sources of both releases into tmp
    store = Repository(repo.dir)
    base_m, target_m = (load_manifest(store, index_of(repo).find(v, "any")) for v in ("1.0.0", "1.1.0"))  # type: ignore[arg-type]
    data = solid_delta((tmp / "src-1.0.0", base_m), (tmp / "src-1.1.0", target_m), store.config().compression_level)
    forge_delta(repo, "1.1.0", "1.0.0", lambda _: data)
    return delta_file(repo, "1.1.0", "1.0.0")


def test_a_solid_delta_installs_with_nothing_else_downloaded(tmp_path: Path, repo: Repo) -> None:
    path = republish_solid(repo, tmp_path)
    assert read_header(io.BytesIO(path.read_bytes())).solid is not None
    d, result, fetched = update_over_http(tmp_path, repo)
    record = installed_ok(d, "1.1.0")
    assert record["path"] == "delta" and "fallback_reason" not in record
    assert result.bytes_downloaded == path.stat().st_size  # the delta, nothing else
    assert not any("manifest" in p for p in fetched)
    release = index_of(repo).find("1.1.0", "any")
    assert release is not None
    assert json.loads((d / "manifests" / f"{release.content.sha256}.json").read_bytes())["version"] == "1.1.0"


def test_a_solid_delta_over_a_base_with_persistent_paths_falls_back_at_once(tmp_path: Path, repo: Repo) -> None:
    d = fallback_case(tmp_path, repo)  # logs/ is persistent: the base ships logs/seed.txt, linked away
    (d / "data/logs/local.txt").write_text("kept\n")
    republish_solid(repo, tmp_path)
    _, watch, _ = install(d, "1.1.0")  # LZMA cannot decode with dictionary bytes missing
    assert_fell_back(d, watch, r"^delta from 1\.0\.0: a solid delta needs the base file logs/seed\.txt, which is "
                               r"below a persistent path and not in the slot$")
    steps = [e.get("step") or e["event"] for e in watch.events]
    assert steps.index("delta_fallback") < steps.index("staging")  # before the manifest was downloaded
    assert (d / "data/logs/seed.txt").read_text() == "seed from 1.0.0\n"
    assert (d / "data/logs/local.txt").read_text() == "kept\n"


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_bad_solid_delta_falls_back(tmp_path: Path, repo: Repo, damage: str) -> None:
    d = fallback_case(tmp_path, repo, **NOT_LOGS)
    republish_solid(repo, tmp_path)

    def corrupt(data: bytes) -> bytes:
        start, end = read_header(io.BytesIO(data)).solid_range()
        out = bytearray(data)
        out[(start + end) // 2] ^= 0xFF
        return bytes(out)

    forge_delta(repo, "1.1.0", "1.0.0", corrupt if damage == "corrupt" else lambda data: data[:-7])
    _, watch, _ = install(d, "1.1.0")
    cause = r"^delta from 1\.0\.0: " + ("delta truncated" if damage == "truncate" else "")
    assert_fell_back(d, watch, cause)
    steps = [e.get("step") or e["event"] for e in watch.events]
    assert steps.index("delta_fallback") < steps.index("staging")  # refused before anything was written


# -- the publisher ---------------------------------------------------------------------------------


def translations(version: str, edits: int) -> dict[str, bytes | str]:
    """Text files sharing most of their content (like a bundle's translations): a change repeats
    across files, so a whole-archive coder beats per-file patches, and LZMA beats zstd on the text."""
    messages = [f"message_{i}: the {i % 7}th thing went wrong in step {i * 37 % 101}\n" for i in range(3000)]
    messages[100:100 + edits] = [f"message_new_{i}: {version} says hello to item {i * 13}\n" for i in range(edits)]
    return {f"locale/{lang}.txt": f"# {lang}\n" + "".join(f"{lang}:{m}" for m in messages)
            for lang in ("de", "fr", "it", "ja", "ko", "pl", "ru", "tr")}


def test_publisher_keeps_the_solid_kind_where_it_is_smallest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Off: on these translations whole-archive bsdiff4 codes the 400 edits smaller still (2,908 against
    # 3,299 B, measured); this test is about solid against per-file and the zstd whole-archive frame.
    monkeypatch.setattr("pinnacle_updates.repo_tools.delta.ARCHIVE_BSDIFF4_TRY_MAX", 0)
    base_root = write_tree(tmp_path / "base", translations("1.0.0", 0))
    root = write_tree(tmp_path / "new", translations("1.1.0", 400))
    base, target = (base_root, manifest_of(base_root, "1.0.0")), (root, manifest_of(root, "1.1.0"))
    out, work = tmp_path / "d.pdelta", tmp_path / "work"
    work.mkdir()
    header, digest = build_delta(*base, *target, out, work, whole_archive=True, manifest_level=10)
    assert header.solid is not None and not header.ops and header.archive is None
    per_file, _ = build_delta(*base, *target, tmp_path / "p.pdelta", work, manifest_level=10)
    assert digest.length < len(per_file.encode()) + per_file.payload_length
    manifest, rebuilt = manifest_from_delta(out, base[1], signed(target[1]), base_root)
    assert manifest == target[1]
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(out, base_root, base[1], target[1], dest, rebuilt=rebuilt)
    assert tree_digest(dest) == tree_digest(root)
    assert all(e.type is not EntryType.FILE or e.sha256 != SOLID_SHA256 for e in manifest.entries)
