"""repo_tools.artifact: scanning, refusal of unsafe input, and byte-identical artifacts."""

from __future__ import annotations

import errno
import io
import os
import socket
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zstandard

from pinnacle_updates.formats.archive import tar_header
from pinnacle_updates.formats.index import EntryType, Manifest
from pinnacle_updates.repo_tools.artifact import FULL_NAME, MANIFEST_NAME, build_artifact, scan_tree, write_artifact
from pinnacle_updates.repo_tools.errors import UnsafeInputError

LONG = "d" * 60 + "/" + "n" * 80  # > 100 bytes: needs a pax path header


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def make_tree(root: Path, *, reverse: bool, mask: int, mtime: int, owner: int, hardlink: bool) -> Path:
    """The same release content, created with different order, umask, times, owners and links."""
    files: list[tuple[str, bytes, bool]] = [
        ("bin/app", b"#!/bin/sh\necho app\n", True),
        ("lib/data.bin", bytes(range(256)) * 5000, False),
        ("lib/copy.bin", bytes(range(256)) * 5000, False),
        ("share/é-ünïcode.txt", b"unicode names\n", False),
        (LONG, b"long path\n", False),
        ("a-b", b"sorts before a/ bytewise\n", False),
        ("a/b", b"child\n", False),
    ]
    dirs = ["bin", "lib", "share", "empty", "d" * 60, "a"]
    links = [("bin/latest", "app"), ("share/up", "../lib/copy.bin")]
    with umask(mask):
        root.mkdir()
        for d in reversed(dirs) if reverse else dirs:
            (root / d).mkdir()
        for path, data, executable in reversed(files) if reverse else files:
            if hardlink and path == "lib/copy.bin":
                continue
            (root / path).write_bytes(data)
            if executable:
                (root / path).chmod(0o777 & ~mask)
        if hardlink:
            os.link(root / "lib/data.bin", root / "lib/copy.bin")
        for path, target in links:
            os.symlink(target, root / path)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), owner, owner)
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    return root


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_same_content_gives_byte_identical_artifacts(tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one", reverse=False, mask=0o022, mtime=1_000_000_000, owner=0, hardlink=False)
    two = make_tree(tmp_path / "two", reverse=True, mask=0o077, mtime=2_000_000_000, owner=4321, hardlink=True)
    runs = [(src, tmp_path / f"out-{src.name}-{run}") for src in (one, two) for run in (1, 2)]
    results = [(build_artifact(src, out, "1.0.0", keep_tar=True), out) for src, out in runs]
    first = outputs(results[0][1])
    assert set(first) == {"full.tar", FULL_NAME, MANIFEST_NAME}
    for built, out in results[1:]:
        assert outputs(out) == first
        assert built.manifest == results[0][0].manifest
    built = results[0][0]
    assert (built.full_length, built.content.length) == (len(first[FULL_NAME]), len(first["full.tar"]))
    params = zstandard.get_frame_parameters(first[FULL_NAME])
    assert params.content_size == built.content.length and params.has_checksum
    manifest = Manifest.from_bytes(zstandard.ZstdDecompressor().decompress(first[MANIFEST_NAME]))
    assert manifest == built.manifest


def test_tar_is_canonical_pax_without_machine_data(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", reverse=False, mask=0o022, mtime=1234567890, owner=1000, hardlink=True)
    built = build_artifact(src, tmp_path / "out", "2.0", keep_tar=True)
    assert built.tar_path is not None
    raw = built.tar_path.read_bytes()
    for word in (b"mtime", b"atime", b"ctime", b"uname", b"gname", b"uid=", b"gid="):
        assert word not in raw
    with tarfile.open(built.tar_path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [e.path for e in built.manifest.entries]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert set(m.pax_headers) <= {"path", "linkpath"}
    assert next(m for m in members if m.name == LONG).pax_headers == {"path": LONG}
    # The hand-rolled streaming layout equals what tarfile itself writes for the same headers.
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in built.manifest.entries:
            info = tarfile.TarInfo.frombuf(tar_header(e)[-512:], "utf-8", "strict")
            info.name, info.linkname, info.size = e.path, e.link, e.size
            tar.addfile(info, (src / e.path).open("rb") if e.type is EntryType.FILE else None)
    assert expected.getvalue() == raw


def test_tar_not_kept_by_default(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", reverse=False, mask=0o022, mtime=0, owner=0, hardlink=False)
    built = build_artifact(src, tmp_path / "out", "1.0")
    assert built.tar_path is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [FULL_NAME, MANIFEST_NAME]


def test_scan_tree_entries(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", reverse=True, mask=0o027, mtime=5, owner=7, hardlink=True)
    entries = scan_tree(src)
    paths = [e.path for e in entries]
    assert paths == sorted(paths, key=lambda p: p.encode())
    assert paths.index("a-b") < paths.index("a/b")
    assert "" not in paths and not any(p.startswith("./") for p in paths)
    by = {e.path: e for e in entries}
    assert (by["bin"].type, by["bin"].mode) == (EntryType.DIR, 0o755)
    assert (by["empty"].type, by["empty"].mode) == (EntryType.DIR, 0o755)
    assert (by["bin/app"].mode, by["lib/data.bin"].mode) == (0o755, 0o644)
    assert by["lib/copy.bin"].type is EntryType.FILE  # hard link stored as a regular file
    assert by["lib/copy.bin"].sha256 == by["lib/data.bin"].sha256
    assert (by["bin/latest"].type, by["bin/latest"].mode, by["bin/latest"].link) == (EntryType.SYMLINK, 0o777, "app")


# -- refused input ---------------------------------------------------------------------------------


def refused(src: Path, match: str) -> None:
    with pytest.raises(UnsafeInputError, match=match) as info:
        scan_tree(src)
    assert "\n" not in str(info.value)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_text("fine\n")
    return root


def test_refuses_absolute_symlink(src: Path) -> None:
    os.symlink("/etc/passwd", src / "sub" / "pw")
    refused(src, r"sub/pw: symlink target is absolute \(-> /etc/passwd\)")


def test_refuses_symlink_escaping_with_dotdot(src: Path) -> None:
    os.symlink("../../outside", src / "sub" / "esc")
    refused(src, r"sub/esc: symlink points outside the tree")


def test_refuses_symlink_back_into_tree_by_its_own_name(src: Path) -> None:
    # Lands inside on this machine, but would escape a slot with another name.
    os.symlink(f"../{src.name}/sub/ok.txt", src / "back")
    refused(src, r"back: symlink points outside the tree")


def test_refuses_symlink_escaping_via_chain(src: Path) -> None:
    os.symlink("..", src / "sub" / "up")  # alone it stays inside (the root)
    os.symlink("sub/up/..", src / "esc")  # lexically "sub", really the parent of the tree
    refused(src, r"esc: symlink points outside the tree")


def test_refuses_chain_through_absolute_link(src: Path) -> None:
    os.symlink("/", src / "sub" / "abs")
    os.symlink("sub/abs/etc", src / "a-link")  # sorts first; its chain leaves the tree
    refused(src, r"a-link: symlink points outside the tree via sub/abs")


def test_refuses_symlink_loop(src: Path) -> None:
    os.symlink("b", src / "a")
    os.symlink("a", src / "b")
    refused(src, r"a: symlink loop")


def test_accepts_links_that_stay_inside(src: Path) -> None:
    os.symlink("..", src / "sub" / "up")
    os.symlink("sub/up/sub/ok.txt", src / "ok")
    os.symlink("missing-but-inside", src / "dangling")
    assert {e.path for e in scan_tree(src)} >= {"ok", "dangling", "sub/up"}


def test_refuses_fifo(src: Path) -> None:
    os.mkfifo(src / "sub" / "pipe")
    refused(src, r"sub/pipe: FIFO not allowed")


def test_refuses_socket(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(src / "sub")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        refused(src, r"sub/sock: socket not allowed")


def test_refuses_device(src: Path) -> None:
    try:
        os.mknod(src / "sub" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError as exc:
        if exc.errno == errno.EPERM:
            pytest.skip("creating a device file needs privileges")
        raise
    refused(src, r"sub/null: character device not allowed")


def test_refuses_setuid_file(src: Path) -> None:
    (src / "sub" / "ok.txt").chmod(0o4755)
    refused(src, r"sub/ok.txt: setuid/setgid/sticky bit set \(mode 4755\)")


def test_refuses_setgid_dir(src: Path) -> None:
    (src / "sub").chmod(0o2755)
    refused(src, r"sub: setuid/setgid/sticky bit set \(mode 2755\)")


def test_refuses_sticky_dir(src: Path) -> None:
    (src / "sub").chmod(0o1777)
    refused(src, r"sub: setuid/setgid/sticky bit set \(mode 1777\)")


def test_refuses_backslash_name(src: Path) -> None:
    (src / "sub" / "a\\b").write_text("x")
    refused(src, r"sub/a\\b: name contains a backslash")


def test_refuses_non_utf8_name(src: Path) -> None:
    os.mkdir(os.fsencode(src / "sub") + b"/bad\xff")
    refused(src, r"sub/bad\\xff: name is not valid UTF-8")


def test_refuses_empty_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", r"empty: the directory is empty")


def test_refuses_source_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", r"file: not a directory")
    refused(tmp_path / "nothing", r"nothing: not a directory")


def test_refuses_output_inside_source(src: Path) -> None:
    with pytest.raises(UnsafeInputError, match="inside the source tree"):
        build_artifact(src, src / "out", "1.0")
    assert not (src / "out").exists()


@pytest.mark.parametrize("change", ["same-size", "grown", "shrunk", "removed", "symlinked"])
def test_source_changed_while_building(src: Path, tmp_path: Path, change: str) -> None:
    target = src / "sub" / "ok.txt"
    entries = scan_tree(src)
    if change == "same-size":
        target.write_text("FINE\n")
    elif change == "grown":
        target.write_text("fine\nand more\n")
    elif change == "shrunk":
        target.write_text("f")
    elif change == "removed":
        target.unlink()
    else:
        target.unlink()
        os.symlink("/etc/hostname", target)
    out = tmp_path / "out"
    with pytest.raises(UnsafeInputError, match=r"source changed while building: sub/ok.txt"):
        write_artifact(src, entries, out, "1.0")
    assert list(out.iterdir()) == []  # no partial or temporary output left behind
