"""formats.archive and formats.tree: extraction of real and hand-made malicious archives, and slot verification."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from pinnacle_updates.formats import tree
from pinnacle_updates.formats.archive import (
    ArchiveError,
    TreeChanged,
    manifest_problems,
    open_beneath,
    tar_header,
    write_canonical_tar,
)
from pinnacle_updates.formats.fsutil import sync_filesystem
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry
from pinnacle_updates.formats.tree import (
    extract_canonical,
    extract_release,
    finish_tree,
    tree_size,
    verify_tree,
)
from pinnacle_updates.repo_tools.artifact import build_artifact

# -- round trip ------------------------------------------------------------------------------------


def release_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(b"#!/bin/sh\necho hello\n")
    (root / "bin" / "app").chmod(0o700)
    (root / "bin" / "latest").symlink_to("app")
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "lib" / "deep" / "blob").write_bytes(os.urandom(3 << 20))  # several stream chunks
    (root / "lib" / "empty").write_bytes(b"")
    (root / "logs").mkdir()
    (root / "logs" / "keep.txt").write_text("shipped placeholder\n")
    (root / "ünï.txt").write_text("unicode\n")
    return root


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Manifest]:
    result = build_artifact(release_tree(tmp_path / "src"), tmp_path / "out", "1.2.0")
    return result.full_path, result.manifest


@pytest.fixture
def slot(tmp_path: Path, built: tuple[Path, Manifest]) -> Path:
    dest = tmp_path / "slot"
    dest.mkdir()
    extract_release(built[0], dest, built[1])
    return dest


def test_round_trip(slot: Path, built: tuple[Path, Manifest], tmp_path: Path) -> None:
    manifest = built[1]
    assert verify_tree(slot, manifest) == []
    assert stat.S_IMODE((slot / "bin" / "app").stat().st_mode) == 0o755
    assert stat.S_IMODE((slot / "lib" / "empty").stat().st_mode) == 0o644
    assert stat.S_IMODE((slot / "lib" / "deep").stat().st_mode) == 0o755
    assert os.readlink(slot / "bin" / "latest") == "app"
    assert (slot / "lib" / "deep" / "blob").read_bytes() == (tmp_path / "src/lib/deep/blob").read_bytes()
    assert tree_size(manifest) >= manifest.total_size


@pytest.mark.parametrize("syncfs", [True, False])
def test_the_tree_is_made_durable_with_one_syncfs_or_an_fsync_each(
    tmp_path: Path, built: tuple[Path, Manifest], monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    """One syncfs(2) of the file system where it exists (Linux), else one fsync per file and
    directory; directory modes are set either way."""
    synced: list[int] = []
    fsynced: list[int] = []
    real_fsync = os.fsync

    def fake_syncfs(fd: int) -> bool:
        synced.append(fd)
        return syncfs

    def counting_fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(tree, "sync_filesystem", fake_syncfs)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    dest = tmp_path / "slot"
    dest.mkdir()
    extract_release(built[0], dest, built[1])
    assert verify_tree(dest, built[1]) == []
    assert stat.S_IMODE((dest / "lib" / "deep").stat().st_mode) == 0o755
    durable = [e for e in built[1].entries if e.type is not EntryType.SYMLINK]
    assert (len(synced), len(fsynced)) == (1, 0 if syncfs else len(durable) + 1)


def test_canonical_tar_without_its_own_digest_is_the_same_bytes(tmp_path: Path,
                                                                  built: tuple[Path, Manifest]) -> None:
    root = tmp_path / "src"
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        outs: list[bytearray] = [bytearray(), bytearray()]
        whole = write_canonical_tar(fd, built[1].entries, outs[0].extend)
        quick = write_canonical_tar(fd, built[1].entries, outs[1].extend, digest_stream=False)
        (root / "lib/deep/blob").write_bytes(os.urandom(10))  # each file is still checked
        with pytest.raises(TreeChanged, match="lib/deep/blob"):
            write_canonical_tar(fd, built[1].entries, lambda _: None, digest_stream=False)
    finally:
        os.close(fd)
    assert outs[0] == outs[1] and whole == built[1].content
    assert quick == Digest(whole.length, "")


def _flip(data: bytes, at: int) -> bytes:
    """``data`` with the byte at ``at`` changed (always changed: writing a fixed byte into random file
    content left it as it was once in 256 runs, and the case then collided with the good tar's)."""
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _canonical_case(tmp_path: Path, built: tuple[Path, Manifest], data: bytes) -> Path:
    dest = tmp_path / f"canon-{hashlib.sha256(data).hexdigest()[:8]}"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        extract_canonical(io.BytesIO(data).read, fd, built[1])
        finish_tree(fd, built[1])  # directory modes
    finally:
        os.close(fd)
    return dest


def test_canonical_layout_extraction(tmp_path: Path, built: tuple[Path, Manifest]) -> None:
    tar = zstandard.ZstdDecompressor().decompress(built[0].read_bytes())
    dest = _canonical_case(tmp_path, built, tar)
    assert verify_tree(dest, built[1]) == []
    blob = next(e for e in built[1].entries if e.path == "lib/deep/blob")
    at = tar.index(tar_header(blob))  # the blob's header, then its bytes
    app = next(e for e in built[1].entries if e.path == "bin/app")
    end = tar.index(tar_header(app)) + len(tar_header(app)) + app.size  # then zeros to the next block
    cases = [
        (_flip(tar, at + 100), r"archive header of lib/deep/blob is not the canonical one"),
        (_flip(tar, at + 600), r"lib/deep/blob does not match its manifest sha256"),
        (tar[:end] + b"\x01" + tar[end + 1:], r"archive padding after bin/app is not zeros"),
        (tar[:-1] + b"\x01", r"archive end blocks are not zeros"),
        (tar[:at + 5000], r"archive ends \d+ bytes early"),
        (tar + b"\0" * 512, rf"archive is longer than the manifest's {len(tar)} bytes"),
    ]
    for data, message in cases:
        with pytest.raises(ArchiveError, match=message):
            _canonical_case(tmp_path, built, data)
    other = Manifest(built[1].version, Digest(len(tar) + 512, built[1].content.sha256), built[1].entries)
    with pytest.raises(ArchiveError, match="describes a"):
        extract_canonical(io.BytesIO(tar).read, -1, other)


def test_syncfs_is_available_here() -> None:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sync_filesystem(fd) is sys.platform.startswith("linux")
    finally:
        os.close(fd)


def test_refuses_non_empty_destination(tmp_path: Path, built: tuple[Path, Manifest]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "leftover").write_text("x")
    with pytest.raises(ArchiveError, match="is not empty"):
        extract_release(built[0], dest, built[1])


def test_verify_detects_changes(slot: Path, built: tuple[Path, Manifest]) -> None:
    manifest = built[1]
    (slot / "bin" / "app").write_bytes(b"#!/bin/sh\necho HELLO\n")  # same size, other bytes
    (slot / "ünï.txt").write_text("longer than before\n")
    (slot / "lib" / "empty").unlink()
    (slot / "extra").write_text("x")
    (slot / "newdir" / "inner").mkdir(parents=True)
    (slot / "lib" / "deep" / "blob").chmod(0o600)
    (slot / "bin" / "latest").unlink()
    (slot / "bin" / "latest").write_text("app")
    assert verify_tree(slot, manifest) == [
        "modified: bin/app",
        "not a symlink: bin/latest",
        "unexpected: extra",
        "mode changed (600, expected 644): lib/deep/blob",
        "missing: lib/empty",
        "unexpected: newdir",
        "modified: ünï.txt",
    ]


@pytest.mark.parametrize("threads", [1, 2])
def test_verify_rehashes_every_file_in_one_thread_or_two(
    slot: Path, built: tuple[Path, Manifest], threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-hash is shared by two threads when there is enough to hash and a second CPU: the same
    problems are found, every file is hashed exactly once."""
    monkeypatch.setattr(tree, "PARALLEL_HASH_MIN", 0 if threads == 2 else 1 << 62)
    monkeypatch.setattr(tree, "_usable_cpus", lambda: 2)
    batches: list[list[str]] = []
    check = tree._check_files

    def spy(root_fd: int, entries: list[ManifestEntry], *args: object) -> None:
        batches.append([e.path for e in entries])
        check(root_fd, entries, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(tree, "_check_files", spy)
    blob = bytearray((slot / "lib" / "deep" / "blob").read_bytes())
    blob[-1] ^= 1
    (slot / "lib" / "deep" / "blob").write_bytes(bytes(blob))
    (slot / "bin" / "app").write_bytes(b"#!/bin/sh\necho HELLO\n")
    assert verify_tree(slot, built[1]) == ["modified: bin/app", "modified: lib/deep/blob"]
    files = [e.path for e in built[1].entries if e.type is EntryType.FILE]
    assert len(batches) == threads and sorted(p for b in batches for p in b) == sorted(files)


def test_verify_missing_directory_reported_once(slot: Path, built: tuple[Path, Manifest]) -> None:
    for p in (slot / "lib" / "deep" / "blob", slot / "lib" / "empty"):
        p.unlink()
    (slot / "lib" / "deep").rmdir()
    (slot / "lib").rmdir()
    (slot / "bin" / "latest").unlink()
    (slot / "bin" / "latest").symlink_to("elsewhere")
    assert verify_tree(slot, built[1]) == ["link changed: bin/latest", "missing: lib"]


def test_verify_skips_persistent_data(slot: Path, built: tuple[Path, Manifest]) -> None:
    (slot / "logs" / "keep.txt").unlink()
    (slot / "logs" / "today.log").write_text("runtime data\n")
    (slot / "uploads").mkdir()
    assert verify_tree(slot, built[1], skip={"logs", "uploads"}) == []
    assert verify_tree(slot, built[1]) == [
        "missing: logs/keep.txt", "unexpected: logs/today.log", "unexpected: uploads",
    ]


# -- hand-made malicious archives ------------------------------------------------------------------


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, mode: int = 0o644,
           link: str = "", size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    if data is not None:
        info.size = len(data) if size is None else size
    return info, data


def file_entry(path: str, data: bytes) -> ManifestEntry:
    return ManifestEntry(path, EntryType.FILE, 0o644, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def dir_entry(path: str) -> ManifestEntry:
    return ManifestEntry(path, EntryType.DIR, 0o755)


def manifest_for(raw_tar: bytes, entries: list[ManifestEntry]) -> Manifest:
    """A manifest whose content digest matches ``raw_tar`` (an attacker controlling both)."""
    return Manifest("6.6.6", Digest(len(raw_tar), hashlib.sha256(raw_tar).hexdigest()), tuple(entries))


def snapshot(root: Path, skip: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        if not Path(d).is_relative_to(skip)
        for n in dirs + files
    }


Attack = Callable[..., Path]


@pytest.fixture
def attack(tmp_path: Path) -> Attack:
    """Run extract_release on a hand-made archive into a fresh empty slot; check that it fails with
    one line matching ``match`` and that nothing appeared or changed outside the slot."""
    dest = tmp_path / "work" / "slot"

    def run(raw_tar: bytes, manifest: Manifest, match: str, artifact_bytes: bytes | None = None) -> Path:
        shutil.rmtree(dest, ignore_errors=True)  # partial output of a failed extract is discarded
        dest.mkdir(parents=True)
        artifact = tmp_path / "evil.tar.zst"
        artifact.write_bytes(artifact_bytes or zstandard.ZstdCompressor().compress(raw_tar))
        before = snapshot(tmp_path, dest)
        with pytest.raises(ArchiveError, match=match) as info:
            extract_release(artifact, dest, manifest)
        assert "\n" not in str(info.value)
        assert snapshot(tmp_path, dest) == before
        return dest

    return run


def test_dotdot_member(attack: Attack) -> None:
    raw = tar_bytes([member("../escaped", data=b"x")])
    attack(raw, manifest_for(raw, [file_entry("ok", b"x")]), r"unsafe archive member '../escaped'")
    attack(raw, manifest_for(raw, [file_entry("../escaped", b"x")]), r"manifest 6.6.6 rejected: ../escaped")


def test_absolute_member(attack: Attack, tmp_path: Path) -> None:
    target = str(tmp_path / "abs-escaped")
    raw = tar_bytes([member(target, data=b"x")])
    attack(raw, manifest_for(raw, [file_entry("ok", b"x")]), r"unsafe archive member .*: absolute path")
    attack(raw, manifest_for(raw, [file_entry(target, b"x")]), r"rejected: .*absolute path")
    assert not Path(target).exists()


def test_write_through_symlink(attack: Attack, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    raw = tar_bytes([member("link", tarfile.SYMTYPE, mode=0o777, link=str(outside)), member("link/pwn", data=b"x")])
    entries = [ManifestEntry("link", EntryType.SYMLINK, 0o777, link=str(outside)), file_entry("link/pwn", b"x")]
    attack(raw, manifest_for(raw, entries), r"rejected: link/pwn: parent link is not a directory")
    # An inside target does not help either: files are never written through a symlink.
    raw = tar_bytes([member("d", tarfile.DIRTYPE, mode=0o755), member("link", tarfile.SYMTYPE, mode=0o777, link="d"),
                     member("link/pwn", data=b"x")])
    entries = [dir_entry("d"), ManifestEntry("link", EntryType.SYMLINK, 0o777, link="d"), file_entry("link/pwn", b"x")]
    attack(raw, manifest_for(raw, entries), r"rejected: link/pwn: parent link is not a directory")
    assert list(outside.iterdir()) == []


def test_open_beneath_never_follows_symlinks(tmp_path: Path) -> None:
    """The primitive under every write: a planted link in a parent or as the leaf is refused."""
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "leaf").symlink_to(outside / "file")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in ("link/file", "leaf"):
            with pytest.raises(OSError) as info:
                open_beneath(fd, path, os.O_WRONLY | os.O_CREAT)
            assert info.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST)
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []


def test_escaping_symlink_member(attack: Attack) -> None:
    raw = tar_bytes([member("up", tarfile.SYMTYPE, mode=0o777, link="../..")])
    entries = [ManifestEntry("up", EntryType.SYMLINK, 0o777, link="../..")]
    attack(raw, manifest_for(raw, entries), r"rejected: up: symlink points outside the tree")
    benign = [ManifestEntry("up", EntryType.SYMLINK, 0o777, link="x")]
    attack(raw, manifest_for(raw, benign), r"archive member up -> '../..', manifest says -> 'x'")


def test_hardlink_member(attack: Attack) -> None:
    raw = tar_bytes([member("a", data=b"x"), member("b", tarfile.LNKTYPE, link="/etc/passwd")])
    entries = [file_entry("a", b"x"), file_entry("b", b"")]
    attack(raw, manifest_for(raw, entries), r"archive member b: hard link not allowed")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_and_fifo_members(attack: Attack, kind: bytes) -> None:
    raw = tar_bytes([member("dev", kind)])
    attack(raw, manifest_for(raw, [file_entry("dev", b"")]), r"archive member dev: (device|fifo) not allowed")


def test_member_bigger_than_manifest(attack: Attack) -> None:
    data = b"A" * 100_000
    raw = tar_bytes([member("big", data=data)])
    entry = file_entry("big", data[:10])
    dest = attack(raw, manifest_for(raw, [entry]), r"archive member big has 100000 bytes, the manifest says 10")
    assert not (dest / "big").exists() or (dest / "big").stat().st_size <= 10


def test_file_content_differs(attack: Attack) -> None:
    raw = tar_bytes([member("f", data=b"evil")])
    attack(raw, manifest_for(raw, [file_entry("f", b"good")]), r"f does not match its manifest sha256/size")


def test_order_or_path_mismatch(attack: Attack) -> None:
    raw = tar_bytes([member("b", data=b"1"), member("a", data=b"2")])
    entries = [file_entry("a", b"2"), file_entry("b", b"1")]
    attack(raw, manifest_for(raw, entries), r"archive member b is not the next manifest entry a")
    raw = tar_bytes([member("a", data=b"2"), member("c", data=b"1")])
    attack(raw, manifest_for(raw, entries), r"archive member c is not the next manifest entry b")


def test_type_and_mode_mismatch(attack: Attack) -> None:
    raw = tar_bytes([member("a", tarfile.DIRTYPE, mode=0o755)])
    attack(raw, manifest_for(raw, [file_entry("a", b"")]), r"archive member a is a dir, the manifest says file")
    raw = tar_bytes([member("a", data=b"x", mode=0o4755)])
    attack(raw, manifest_for(raw, [file_entry("a", b"x")]), r"archive member a has mode 4755, manifest says 644")


def test_extra_and_missing_members(attack: Attack) -> None:
    raw = tar_bytes([member("a", data=b"x"), member("b", data=b"y")])
    attack(raw, manifest_for(raw, [file_entry("a", b"x")]), r"archive member b is not in the manifest")
    raw = tar_bytes([member("a", data=b"x")])
    attack(raw, manifest_for(raw, [file_entry("a", b"x"), file_entry("b", b"y")]),
           r"archive ends before manifest entry b")


def test_content_hash_mismatch(attack: Attack) -> None:
    raw = tar_bytes([member("a", data=b"x")])
    good = manifest_for(raw, [file_entry("a", b"x")])
    wrong_hash = Manifest(good.version, Digest(good.content.length, "0" * 64), good.entries)
    attack(raw, wrong_hash, r"archive content differs from manifest 6.6.6")
    attack(raw + bytes(512), good, r"archive is longer than the manifest's 10240 bytes")
    shorter = Manifest(good.version, Digest(good.content.length + 512, good.content.sha256), good.entries)
    attack(raw, shorter, r"archive content differs from manifest")


def test_not_zstd(attack: Attack) -> None:
    raw = tar_bytes([member("a", data=b"x")])
    attack(raw, manifest_for(raw, [file_entry("a", b"x")]), r"cannot extract evil.tar.zst", artifact_bytes=raw)


def test_manifest_problems_accepts_canonical_and_names_every_fault() -> None:
    assert manifest_problems([dir_entry("a"), file_entry("a/b", b""), file_entry("a-b", b"")]) != []  # order
    assert manifest_problems([dir_entry("a"), file_entry("a-b", b""), file_entry("a/b", b"")]) == []
    problems = manifest_problems([
        ManifestEntry("x", EntryType.FILE, 0o4755, size=0, sha256="0" * 64),
        ManifestEntry("y", EntryType.SYMLINK, 0o777, link="a\\b"),
        file_entry("z/q", b""),
    ])
    assert problems == [
        "x: mode 4755 is not canonical for a file",
        "z/q: parent z is not a directory of the tree",
        "y: symlink target 'a\\\\b' contains a NUL or a backslash",
    ]
