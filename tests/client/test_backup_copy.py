"""The data snapshot's copy engine (``client.datacopy.copy_tree`` and ``scan``), on real files: what a
copy keeps (modes, owners, times, link texts), what it never does (follow a link, read a FIFO), the
hashes it records, the reflink path on a loop-mounted XFS when this machine allows one, and a
bounded random round trip snapshot -> change -> restore through the real ``snapshot``/``restore``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinnacle_updates.client import backups, datacopy
from pinnacle_updates.client.errors import BackupError
from pinnacle_updates.client.slots import Layout

OLD_NS = 1_000_000_000  # 1970-01-01T00:00:01: any read of a file with this atime moves it (relatime)


def _tree(root: Path) -> None:
    (root / "db").mkdir(parents=True)
    (root / "db" / "app.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    (root / "uploads" / "a" / "b").mkdir(parents=True)
    for i in range(150):  # more than one batch of BATCH_FILES, with dirs and links between files
        d = root / "uploads" / ("a/b" if i % 3 else "a")
        (d / f"f{i:03d}").write_bytes(os.urandom(i * 37))
        if i % 40 == 0:
            (d / f"sub{i}").mkdir()
            os.symlink(f"../f{i:03d}", d / f"sub{i}" / "up")
    (root / "uploads" / "big.bin").write_bytes(os.urandom(datacopy.HASH_MAX + 12_345))
    (root / "uploads" / "empty").write_bytes(b"")


def _copy(src: Path, names: list[str], dst: Path, **kw: bool) -> datacopy.CopyStats:
    dst.mkdir(exist_ok=True)
    return datacopy.copy_tree(src, names, dst, **kw)


def test_modes_times_and_contents_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    (src / "db" / "app.sqlite").chmod(0o600)
    (src / "uploads" / "a" / "f000").chmod(0o4755)  # setuid bit kept too
    (src / "uploads" / "a" / "b").chmod(0o750)
    ro = src / "uploads" / "a" / "b" / "f001"
    ro.chmod(0o444)
    for i, p in enumerate(sorted(src.rglob("*"), key=lambda p: -len(p.parts))):  # children before parents
        os.utime(p, ns=(OLD_NS + i, 1_700_000_000_123_456_789 + i * 1000), follow_symlinks=False)
    stats = _copy(src, ["db", "uploads"], tmp_path / "dst")

    for p in src.rglob("*"):
        q = tmp_path / "dst" / p.relative_to(src)
        a, b = os.lstat(p), os.lstat(q)
        assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), p
        assert a.st_mtime_ns == b.st_mtime_ns, p
        if not p.is_symlink():
            assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), p
        if p.is_file() and not p.is_symlink():
            assert p.read_bytes() == q.read_bytes(), p
    assert backups.digest_tree(src, ["db", "uploads"]) == backups.digest_tree(tmp_path / "dst", ["db", "uploads"])
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    assert stats.files == len(files) and stats.bytes == sum(p.stat().st_size for p in files)
    assert stats.copied + stats.cloned == stats.files - 2  # two empty files: neither copied nor cloned
    assert stats.method == ("reflink" if datacopy.probe_reflink(src, tmp_path / "dst") else "copy")
    # the manifest lists every entry once, parents before children, in walk order
    assert [e.path for e in stats.entries] == [rel for rel, _ in datacopy.scan(src, ["db", "uploads"])]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to other owners")
def test_owners_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    os.symlink("f", src / "d" / "l")
    os.chown(src / "d", 1234, 2345)
    os.chown(src / "d" / "f", 3456, 4567)
    os.lchown(src / "d" / "l", 5678, 6789)
    _copy(src, ["d"], tmp_path / "dst")
    got = {n: (os.lstat(tmp_path / "dst" / n).st_uid, os.lstat(tmp_path / "dst" / n).st_gid)
           for n in ("d", "d/f", "d/l")}
    assert got == {"d": (1234, 2345), "d/f": (3456, 4567), "d/l": (5678, 6789)}


def test_hashes_for_files_copied_through_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    stats = _copy(src, ["db", "uploads"], tmp_path / "dst")
    by_path = {e.path: e for e in stats.entries}
    if stats.cloned:
        pytest.skip("this file system clones: nothing goes through memory")

    for e in by_path.values():
        if e.type != "file":
            assert e.sha256 is None
        elif e.size <= datacopy.HASH_MAX:
            assert e.sha256 == hashlib.sha256((src / e.path).read_bytes()).hexdigest(), e.path
        else:
            assert e.sha256 is None  # copied in the kernel: recorded by size and mtime
    assert by_path["uploads/empty"].sha256 == hashlib.sha256(b"").hexdigest()
    unhashed = _copy(src, ["db"], tmp_path / "dst2", hash_files=False)
    assert all(e.sha256 is None for e in unhashed.entries)
    assert (tmp_path / "dst2" / "db" / "app.sqlite").read_bytes() == (src / "db" / "app.sqlite").read_bytes()


def test_links_are_copied_as_links_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(b"not yours\n" * 1000)
    (outside / "dir-file").write_bytes(b"x")
    os.utime(secret, ns=(OLD_NS, 2 * OLD_NS))  # atime before mtime: any read updates it
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    os.symlink(secret, src / "data" / "abs-link")
    os.symlink("../../outside/secret.txt", src / "data" / "rel-link")
    os.symlink(outside, src / "data" / "dir-link")
    os.symlink("nowhere/at/all", src / "data" / "dangling")
    os.symlink("data", src / "top-link")  # a persistent path that is itself a link
    stats = _copy(src, ["data", "top-link"], tmp_path / "dst")

    dst = tmp_path / "dst"
    for name, target in [("data/abs-link", str(secret)), ("data/rel-link", "../../outside/secret.txt"),
                         ("data/dir-link", str(outside)), ("data/dangling", "nowhere/at/all"), ("top-link", "data")]:
        assert (dst / name).is_symlink() and os.readlink(dst / name) == target, name
    assert os.stat(secret).st_atime_ns == OLD_NS, "the file outside the tree was read"
    assert not (dst / "data" / "dir-link" / "dir-file").exists() or (dst / "data" / "dir-link").is_symlink()
    assert stats.files == 0 and {e.type for e in stats.entries} == {"dir", "link"}
    assert sorted(os.listdir(outside)) == ["dir-file", "secret.txt"]  # nothing written outside


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_special_files_are_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    layout = Layout(tmp_path / "inst")
    (layout.data / "logs" / "deep").mkdir(parents=True)
    for i in range(200):
        (layout.data / "logs" / f"l{i}").write_bytes(b"log\n" * i)
    special = layout.data / "logs" / "deep" / "thing"
    with contextlib.ExitStack() as stack:
        if kind == "fifo":
            os.mkfifo(special)
        else:
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.bind(str(special))
        with pytest.raises(BackupError) as caught:
            _copy(layout.data, ["logs"], tmp_path / "dst")
        msg = str(caught.value)
        assert "\n" not in msg and "logs/deep/thing" in msg and ("FIFO" if kind == "fifo" else "socket") in msg
        # through the real snapshot: refused before anything is copied, nothing left behind
        with pytest.raises(BackupError) as caught2:
            backups.snapshot(layout, ["logs"], version="1.0.0", for_version="2.0.0")
        assert "\n" not in str(caught2.value)
        assert os.listdir(backups.backups_dir(layout)) == []
        assert [t for t in threading.enumerate() if t.name.startswith("pinnacle-backup")] == []


def test_fifo_swapped_in_after_the_walk_is_refused_not_read(tmp_path: Path) -> None:
    """A regular file replaced by a FIFO between the walk's lstat and the copy: opened non-blocking
    and refused, never waited on."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    st = os.lstat(src / "d" / "f")
    os.unlink(src / "d" / "f")
    os.mkfifo(src / "d" / "f")
    (tmp_path / "dst").mkdir()
    stats = datacopy.CopyStats()
    with pytest.raises(BackupError, match="changed while being copied"):
        datacopy._copy_file(str(src / "d" / "f"), str(tmp_path / "dst" / "f"), st, stats, True, False)


def test_an_error_in_a_worker_stops_the_copy_and_no_worker_outlives_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datacopy, "BATCH_FILES", 4)  # many batches in flight
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(100):
        (src / "d" / f"f{i:03d}").write_bytes(b"x" * i)
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    (dst / "d" / "f050").write_bytes(b"in the way")  # O_EXCL: the copy of f050 fails
    with pytest.raises(FileExistsError):
        datacopy.copy_tree(src, ["d/" + n for n in sorted(os.listdir(src / "d"))], dst)
    assert [t for t in threading.enumerate() if t.name.startswith("pinnacle-backup")] == []
    assert (dst / "d" / "f050").read_bytes() == b"in the way"


# ----- reflinks on a loop-mounted XFS (root and mkfs.xfs needed; skipped otherwise) ----------------
@pytest.fixture
def xfs_dir() -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.skip("needs root and mkfs.xfs (apt-get install xfsprogs) to loop-mount an XFS image")
    base = Path(tempfile.mkdtemp(prefix="pinnacle-xfs-"))
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    try:
        with open(image, "wb") as f:
            f.truncate(512 << 20)
        made = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], capture_output=True, text=True)
        mounted = made.returncode == 0 and subprocess.run(
            ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True).returncode == 0
        if not mounted:
            pytest.skip(f"cannot make or loop-mount an XFS image here: {made.stderr.strip()[:200]}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_reflink_clones_on_xfs(xfs_dir: Path) -> None:
    src = xfs_dir / "src"
    _tree(src)
    stats = _copy(src, ["db", "uploads"], xfs_dir / "dst")
    empty = sum(1 for e in stats.entries if e.type == "file" and e.size == 0)
    assert stats.method == "reflink" and stats.cloned == stats.files - empty and empty == 2
    assert all(e.sha256 is None for e in stats.entries if e.size)  # cloned: not read, so not hashed
    assert backups.digest_tree(src, ["db", "uploads"]) == backups.digest_tree(xfs_dir / "dst", ["db", "uploads"])
    # a clone shares blocks but not writes
    (xfs_dir / "dst" / "db" / "app.sqlite").write_bytes(b"changed")
    assert (src / "db" / "app.sqlite").read_bytes().startswith(b"SQLite format 3")
    layout = Layout(xfs_dir / "inst")
    shutil.copytree(src, layout.data, symlinks=True)
    assert backups.plan_space(layout, ["db", "uploads"]).reflink
    b = backups.snapshot(layout, ["db", "uploads"], version="1", for_version="2")
    assert b.method == "reflink" and backups.verify(layout, b.id) == []


# ----- a bounded random round trip through snapshot and restore ------------------------------------
_names = st.sampled_from(["a", "b", "c", "db", "x.log", "up"])
_trees = st.recursive(
    st.binary(max_size=3000) | st.integers(0, 3).map(lambda n: ("link", n)),
    lambda children: st.dictionaries(_names, children, max_size=4),
    max_leaves=25,
)


def _write(path: Path, node: object, mode_seed: int) -> None:
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            _write(path / name, child, mode_seed + len(name))
        path.chmod((0o700, 0o750, 0o755)[mode_seed % 3])
    elif isinstance(node, tuple):
        os.symlink(("../escape", "/etc/hostname", "a", "db/x.log")[node[1]], path)
    else:
        assert isinstance(node, bytes)
        path.write_bytes(node)
        path.chmod((0o600, 0o644, 0o755, 0o400)[mode_seed % 4])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.dictionaries(_names, _trees, min_size=1, max_size=3),
       after=st.dictionaries(_names, _trees, max_size=3))
def test_random_trees_round_trip(before: dict[str, object], after: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory(prefix="pinnacle-copy-") as tmp:
        layout = Layout(Path(tmp) / "inst")
        layout.data.mkdir(parents=True)
        for name, node in before.items():
            _write(layout.data / name, node, len(name))
        names = sorted(before)
        want = backups.digest_tree(layout.data, names)
        snap = backups.snapshot(layout, names, version="1.0.0", for_version="2.0.0")
        assert backups.verify(layout, snap.id) == []
        # the "new version" rewrites the data: removes, replaces, adds (within the persistent paths)
        after = {k: v for k, v in after.items() if k in before}
        for name in names:
            datacopy.rmtree(layout.data / name)
        for name, node in after.items():
            _write(layout.data / name, node, len(name) + 1)
        changed = backups.digest_tree(layout.data, sorted(after))
        result = backups.restore(layout, snap.id, backups.new_id(), names, version="1.0.0",
                                 rejected_version="2.0.0", reason="test")
        assert backups.digest_tree(layout.data, names) == want
        assert sorted(os.listdir(layout.data)) == names  # what only the new version made is moved aside
        if result.rejected:  # ... into the rejected backup, whole
            kept = backups.load(layout, result.rejected)
            assert backups.digest_tree(backups.backup_dir(layout, kept.id) / "data", kept.paths) == changed
        else:
            assert not after
