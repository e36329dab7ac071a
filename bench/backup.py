"""Data snapshot benchmark (issue 18): snapshot and restore of a persistent tree against ``cp -a``.

Builds a persistent tree (``db/``, ``uploads/``, ``logs/``; about 1 GiB in 10,000 files by default:
mixed sizes from a few hundred bytes to 24 MiB, three directory levels, about 1% symbolic links,
one of them absolute and pointing outside; all deterministic from ``--seed``), then in one run:

* on the work directory's file system (ext4 here: no reflinks, so the copy path), over ``--runs``
  rounds, the contenders in turn within each round so that load drifts hit all of them alike:
  our ``backups.snapshot`` on a real ``Layout`` (space check, copy, manifest, one syncfs, rename),
  our ``backups.restore`` of that snapshot (clone, journal, renames, the rejected data kept), and
  ``cp -a --reflink=auto`` and plain ``cp -a`` of the same tree, each followed by ``sync -f`` on the
  target file system, since our snapshot is durable when it returns (the copy alone is shown too);
* the same on a loop-mounted XFS image (``mkfs.xfs`` on a sparse file, ``mount -o loop``; needs root
  and xfsprogs: installed with apt-get when missing) where every contender clones; skipped, with
  the reason printed, when the machine does not allow it;
* the update's total time with and without the snapshot: a real ``Installer.install`` of the next
  release into an install directory holding the tree as its persistent data, with
  ``backup_before_update`` on and off alternately.

Caches: when ``/proc/sys/vm/drop_caches`` is writable (root) every timed step starts after ``sync``
and dropping the page cache, dentries and inodes (cold, like the first update after a while);
otherwise the source tree is read once before every timed step (warm for all alike). Each copy is
checked (``digest_tree``) once per file system.

Goals (exit 1 when one is missed, 0 when all that could be checked pass, 2 when a step fails or a
copy differs from its source; bad arguments: 2 from argparse): with reflinks the
snapshot of the tree under 1 s; in copy mode at least 0.8x the throughput of ``cp -a`` (+ sync);
the update grows by no more than the snapshot itself (median with - median without <= our
snapshot's median on the same file system from the same cache state, plus 0.25 s for noise). The
reflink goal is checked with warm caches (as an application that just stopped leaves them) when
caches can be dropped; the cold figure is printed next to it, with ``cp -a``'s.

    .venv/bin/python bench/backup.py              # 1 GiB / 10,000 files, 3 runs: about 9 minutes here
    .venv/bin/python bench/backup.py --quick      # 64 MiB / 1,000 files: about 2 minutes
    .venv/bin/python bench/backup.py --files 20000 --size 2G --runs 5 --workdir /var/tmp --no-xfs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinnacle_updates.client import backups, datacopy  # noqa: E402
from pinnacle_updates.client import config as client_config  # noqa: E402
from pinnacle_updates.client.installer import Installer  # noqa: E402
from pinnacle_updates.client.slots import Layout  # noqa: E402

NAMES = ["db", "uploads", "logs"]
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
REFLINK_GOAL_S = 1.0
COPY_RATIO_GOAL = 0.8
UPDATE_NOISE_S = 0.25


class OutOfTime(Exception):
    pass


# ----- the tree ----------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        size = int(float(t[:-1]) * units[t[-1]]) if t[-1:] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1G, 512M, 65536)") from None
    if size < 1 << 20:
        raise argparse.ArgumentTypeError(f"{text!r}: the tree needs at least 1 MiB")
    return size


def build_tree(root: Path, files: int, total: int, seed: int) -> tuple[int, int, int]:
    """``root/{db,uploads,logs}``: ``files`` regular files of ``total`` bytes in all (0.2% of them
    8-24 MiB, 4.8% 256 KiB-2 MiB, the rest 128 B-128 KiB log-uniform, scaled to the total), three
    levels of directories, a symbolic link for every 100 files (relative, to a sibling or up a
    level; one absolute, outside the tree: copied as a link, never followed). Contents are slices of
    one random pool at random offsets: incompressible, different per file, fast to write.
    Returns (files, bytes, links)."""
    rng = random.Random(seed)
    pool = rng.randbytes(32 << 20)
    raw = []
    for _ in range(files):
        r = rng.random()
        raw.append(rng.uniform(8, 24) * (1 << 20) if r < 0.002 else
                   rng.uniform(0.25, 2) * (1 << 20) if r < 0.05 else 2 ** rng.uniform(7, 17))
    scale = total / sum(raw)
    sizes = [int(s * scale) for s in raw]
    written = links = 0
    made: list[Path] = []
    for i, size in enumerate(sizes):
        top = "db" if size > (4 << 20) and rng.random() < 0.3 else NAMES[1 + i % 2]
        d = root / top / f"d{rng.randrange(8)}" / f"e{rng.randrange(8)}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"f{i:05d}.bin"
        with open(path, "wb") as f:
            off, left = rng.randrange(len(pool)), size
            while left:
                chunk = pool[off:off + left]
                f.write(chunk)
                left -= len(chunk)
                off = 0
        path.chmod(rng.choice((0o644, 0o600, 0o640, 0o755)))
        written += size
        made.append(path)
        if i % 100 == 99:
            target = rng.choice(made[-50:])
            link = d / f"link{i:05d}"
            os.symlink(os.path.relpath(target, d), link)
            links += 1
    os.symlink("/etc/hostname", root / "uploads" / "outside-link")
    return len(sizes), written, links + 1


# ----- measuring ---------------------------------------------------------------------------------
@dataclass
class Series:
    name: str
    fs: str
    times: list[float] = field(default_factory=list)
    copy_times: list[float] = field(default_factory=list)  # cp only: without the final sync
    method: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


class Bench:
    def __init__(self, deadline: float, cold: bool) -> None:
        self.deadline = deadline
        self.cold = cold
        self.metadata_only = False  # warm pass over clones: they read no data, only inodes

    def check_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime(f"time budget spent before {what}")

    def settle(self, source: Path) -> None:
        """Caches in the same state before every timed step: cold when we may drop them, else warm."""
        if self.cold:
            os.sync()
            DROP_CACHES.write_text("3\n")
        elif self.metadata_only:
            for _ in datacopy.scan(source, NAMES):
                pass
        else:
            for dirpath, _dirs, files in os.walk(source):
                for name in files:
                    p = os.path.join(dirpath, name)
                    if not os.path.islink(p):
                        with open(p, "rb") as f:
                            while f.read(1 << 20):
                                pass


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:300]}")


def fs_type(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()


def clear(path: Path) -> None:
    datacopy.rmtree(path)


def measure_fs(bench: Bench, base: Path, tree: Path, runs: int, label: str, *, keep: bool = False) -> list[Series]:
    """Our snapshot and restore, ``cp -a --reflink=auto`` and ``cp -a`` of ``tree`` on the file
    system of ``base``; the tree is copied in first unless it already lives there."""
    layout = Layout(base / "inst")
    layout.root.mkdir(parents=True, exist_ok=True)
    if tree == layout.data:
        pass  # measured here before (the other cache state)
    elif tree.parent == base:
        os.rename(tree, layout.data)
    else:
        layout.data.mkdir()
        run(["cp", "-a", "--reflink=never", *[str(tree / n) for n in NAMES], str(layout.data)])
    want = "" if tree == layout.data else backups.digest_tree(layout.data, NAMES)
    phase = time.monotonic()
    snap_s = Series("our snapshot", label)
    rest_s = Series("our restore", label)
    cp_auto = Series("cp -a --reflink=auto", label)
    cp_plain = Series("cp -a", label)
    target = base / "cp-target"
    try:
        for r in range(runs):
            bench.check_time(f"{label} round {r + 1}")
            for b in backups.list_backups(layout):  # the previous round's, outside the timing
                clear(backups.backup_dir(layout, b.id))
            bench.settle(layout.data)
            t = time.perf_counter()
            snap = backups.snapshot(layout, NAMES, version="1.0.0", for_version="2.0.0")
            snap_s.times.append(time.perf_counter() - t)
            snap_s.method = snap.method
            check = r == 0 and tree != layout.data  # the second pass over a place runs the same code
            if check:
                got = backups.digest_tree(backups.backup_dir(layout, snap.id) / "data", NAMES)
                if got != want:
                    raise RuntimeError(f"{label}: the snapshot differs from the data")
            bench.settle(layout.data)
            t = time.perf_counter()
            res = backups.restore(layout, snap.id, backups.new_id(), NAMES, version="1.0.0",
                                  rejected_version="2.0.0", reason="benchmark")
            rest_s.times.append(time.perf_counter() - t)
            rest_s.method = res.method
            if check and backups.digest_tree(layout.data, NAMES) != want:
                raise RuntimeError(f"{label}: the restored data differs from the snapshot")
            for series, extra in ((cp_auto, ["--reflink=auto"]), (cp_plain, [])):
                bench.check_time(f"{label} round {r + 1}, {series.name}")
                clear(target)
                target.mkdir()
                bench.settle(layout.data)
                t = time.perf_counter()
                run(["cp", "-a", *extra, *[str(layout.data / n) for n in NAMES], str(target)])
                t1 = time.perf_counter()
                run(["sync", "-f", str(target)])
                series.times.append(time.perf_counter() - t)
                series.copy_times.append(t1 - t)
            if check and backups.digest_tree(target, NAMES) != want:
                raise RuntimeError(f"{label}: cp -a made a different tree")
        cp_auto.method = cp_plain.method = "reflink" if snap_s.method == "reflink" else "copy"
        print(f"{label}: {runs} rounds in {time.monotonic() - phase:.0f} s")
    finally:
        clear(target)
        for b in backups.list_backups(layout):
            clear(backups.backup_dir(layout, b.id))
        if not keep and tree.parent != base and tree != layout.data:
            clear(layout.root)
    return [snap_s, rest_s, cp_auto, cp_plain]


@contextlib.contextmanager
def xfs_mount(base: Path, size: int) -> Iterator[tuple[Path | None, str]]:
    """A loop-mounted XFS image of ``size`` bytes (sparse) under ``base``; yields (mount point,
    '') or (None, why not). Unmounted and deleted at the end, also on failure."""
    if os.geteuid() != 0:
        yield None, "not root: cannot loop-mount an XFS image"
        return
    if not shutil.which("mkfs.xfs"):
        proc = subprocess.run(["apt-get", "install", "-y", "xfsprogs"], capture_output=True, text=True)
        if proc.returncode != 0 or not shutil.which("mkfs.xfs"):
            yield None, "mkfs.xfs missing and `apt-get install -y xfsprogs` failed"
            return
    image, mnt = base / "xfs.img", base / "xfs"
    mnt.mkdir()
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        made = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], capture_output=True, text=True)
        if made.returncode != 0:
            yield None, f"mkfs.xfs failed: {made.stderr.strip()[:200]}"
            return
        mount = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
        if mount.returncode != 0:
            yield None, f"mount -o loop failed: {mount.stderr.strip()[:200]}"
            return
        mounted = True
        yield mnt, ""
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            image.unlink()


# ----- the update with and without the snapshot --------------------------------------------------
def release_cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pinnacle_updates.repo_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pinnacle-release {args[0]} failed: {proc.stderr.strip()[:300]}")


def measure_update(bench: Bench, base: Path, tree: Path, runs: int) -> dict[str, Any]:
    """Installs of 1.0.1, 1.0.2, ... over a 1.0.0 whose persistent data is the tree, the snapshot on
    and off alternately (on first in odd rounds, off first in even ones)."""
    keys, repo = base / "keys", base / "repo"
    base.mkdir()
    release_cli("keys", "init", str(keys), "--insecure-plaintext")
    release_cli("init", str(repo), "--keys", str(keys))
    versions = [f"1.0.{i}" for i in range(2 * runs + 1)]
    for v in versions:
        src = base / f"src-{v}"
        (src / "bin").mkdir(parents=True)
        (src / "bin" / "app").write_text(f"#!/bin/sh\necho app {v}\n")
        (src / "bin" / "app").chmod(0o755)
        (src / "VERSION").write_text(v + "\n")
        release_cli("publish", str(repo), str(src), "--keys", str(keys), "--channel", "stable", "--version", v,
                    "--type", "patch", "--platform", "any")
    d = base / "inst-update"
    client_config.init(d, str(repo), repo / "metadata" / "1.root.json", "stable", "any", persistent_paths=NAMES,
                       health_command="true", health_interval=0.0, max_backups=0, max_rollback_days=0)
    ins = Installer(d)
    ins.install(versions[0])
    layout = Layout(d)
    shutil.rmtree(layout.data, ignore_errors=True)
    os.rename(tree, layout.data)
    with_s: list[float] = []
    without_s: list[float] = []
    snap_s: list[float] = []
    method = ""
    next_version = iter(versions[1:])
    try:
        for r in range(runs):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                bench.check_time(f"update round {r + 1}")
                client_config.update_values(d, {"backup_before_update": on})
                for b in backups.list_backups(layout):
                    clear(backups.backup_dir(layout, b.id))
                bench.settle(layout.data)
                v = next(next_version)
                t = time.perf_counter()
                result = ins.install(v)
                elapsed = time.perf_counter() - t
                if result.outcome != "committed":
                    raise RuntimeError(f"install {v}: {result.outcome} {result.reason}")
                made = backups.list_backups(layout)
                if on:
                    if len(made) != 1:
                        raise RuntimeError(f"install {v} with backup_before_update took {len(made)} snapshots")
                    with_s.append(elapsed)
                    snap_s.append(made[0].seconds)
                    method = made[0].method
                else:
                    if made:
                        raise RuntimeError(f"install {v} without backup_before_update took a snapshot")
                    without_s.append(elapsed)
        bench.settle(layout.data)
        t = time.perf_counter()
        backups.check_space(layout, NAMES)  # what staging does first when backup_before_update is on
        space_check = time.perf_counter() - t
    finally:
        os.rename(layout.data, tree)
    return {"with": with_s, "without": without_s, "snapshot": snap_s, "method": method, "space_check": space_check}


# ----- the report --------------------------------------------------------------------------------
def print_table(rows: list[Series], files: int, size: int) -> None:
    cp = {(s.fs, s.name): s.median for s in rows}
    print("\n| file system | contender | method | median s (min-max) | copy only, s | MiB/s | files/s "
          "| vs cp -a |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in rows:
        base = cp.get((s.fs, "cp -a"), float("nan"))
        only = f"{statistics.median(s.copy_times):.2f}" if s.copy_times else "-"
        print(f"| {s.fs} | {s.name} | {s.method} | {s.median:.2f} ({min(s.times):.2f}-{max(s.times):.2f}) | {only} "
              f"| {size / (1 << 20) / s.median:.0f} | {files / s.median:,.0f} | {base / s.median:.2f}x |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB in 1,000 files")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="bytes of the tree (K/M/G suffixes)")
    ap.add_argument("--runs", type=int, default=3, help="rounds per contender (median of them; at least 3)")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--workdir", default=None, help="where the tree and copies go (default: the temp dir)")
    ap.add_argument("--no-xfs", action="store_true", help="skip the reflink part")
    ap.add_argument("--no-update", action="store_true", help="skip the update with/without snapshot")
    ap.add_argument("--max-seconds", type=float, default=590.0, help="time budget of the whole run")
    args = ap.parse_args()
    files, size = (1_000, 64 << 20) if args.quick else (args.files, args.size)
    if files < 100:
        ap.error("--files: at least 100")
    if args.workdir and not os.path.isdir(args.workdir):
        ap.error(f"--workdir {args.workdir}: not a directory")
    runs = max(3, args.runs)
    started = time.monotonic()
    cold = os.access(DROP_CACHES, os.W_OK)
    bench = Bench(started + args.max_seconds, cold)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks unmount and clean up
    base = Path(tempfile.mkdtemp(prefix="pinnacle-backup-bench-", dir=args.workdir))
    rows: list[Series] = []
    goals: list[tuple[str, bool | None, str]] = []
    update: dict[str, Any] | None = None
    try:
        tree = base / "tree"
        t = time.perf_counter()
        n_files, n_bytes, n_links = build_tree(tree, files, size, args.seed)
        print(f"tree: {n_files:,} files, {n_bytes / (1 << 20):.0f} MiB, {n_links} symlinks, in {base} "
              f"({fs_type(base)}); built in {time.perf_counter() - t:.1f} s")
        print("caches: " + ("dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed step" if cold else
                            "warm: the source tree read before every timed step (drop_caches not writable)"))
        print(f"copy engine: {backups.COPY_WORKERS} worker threads, batches of {backups.BATCH_FILES} files / "
              f"{backups.BATCH_BYTES >> 20} MiB; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        local = fs_type(base)
        rows += measure_fs(bench, base, tree, runs, local)
        tree = base / "inst" / "data"  # measure_fs moved the tree into its install directory
        if not args.no_xfs:
            with xfs_mount(base, max(4 * n_bytes, 1 << 30)) as (mnt, why):
                if mnt is None:
                    print(f"reflink part skipped: {why}")
                    goals.append((f"reflink snapshot under {REFLINK_GOAL_S:.0f} s", None, f"not measured: {why}"))
                else:
                    bench.check_time("the XFS part")
                    rows += measure_fs(bench, mnt, tree, runs, "xfs (loop), cold", keep=True)
                    if cold:  # and with the caches as an application that just stopped leaves them
                        bench.cold, bench.metadata_only = False, True
                        rows += measure_fs(bench, mnt, mnt / "inst" / "data", runs, "xfs (loop), warm")
                        bench.cold, bench.metadata_only = True, False
        if not args.no_update:
            bench.check_time("the update part")
            t = time.monotonic()
            update = measure_update(bench, base / "update", tree, runs)
            print(f"update: {runs} rounds in {time.monotonic() - t:.0f} s")
    except OutOfTime as exc:
        print(f"stopped: {exc} (--max-seconds {args.max_seconds:.0f}); what was measured follows")
    except (RuntimeError, OSError) as exc:  # a contender failed or a copy differs: no figures to trust
        print(f"backup benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        datacopy.rmtree(base)

    print_table(rows, files, size)
    by = {(s.fs, s.name): s for s in rows}
    for s in rows:
        if s.name == "our snapshot" and s.method == "reflink":
            cp_a = by[(s.fs, "cp -a")].median
            gate: bool | None = s.median < REFLINK_GOAL_S
            if s.fs.endswith("cold") and any(x.fs.endswith("warm") for x in rows):
                gate = None  # shown, not gated: cold inode reads alone cost cp -a about as much
            goals.append((f"reflink snapshot under {REFLINK_GOAL_S:.0f} s ({s.fs})", gate,
                          f"median {s.median:.2f} s; cp -a of the same tree {cp_a:.2f} s"))
        if s.name in ("our snapshot", "our restore") and s.method == "copy":
            cp_a = by[(s.fs, "cp -a")].median
            goals.append((f"{s.name.split()[1]} (copy mode) at least {COPY_RATIO_GOAL}x the throughput of cp -a "
                          f"({s.fs})", cp_a / s.median >= COPY_RATIO_GOAL,
                          f"{cp_a / s.median:.2f}x: {s.median:.2f} s vs {cp_a:.2f} s"))
    if update is not None and update["with"]:
        w, wo, sn = (statistics.median(update[k]) for k in ("with", "without", "snapshot"))
        alone = by[(local, "our snapshot")].median if (local, "our snapshot") in by else sn
        print(f"\nupdate (Installer.install, {local}, {len(update['with'])} runs each): with the snapshot "
              f"{w:.2f} s (runs {', '.join(f'{x:.2f}' for x in update['with'])}), without {wo:.2f} s "
              f"(runs {', '.join(f'{x:.2f}' for x in update['without'])}); growth {w - wo:.2f} s. Inside the "
              f"update: the snapshot step {sn:.2f} s ({update['method']}; the data's inodes already cached by the "
              f"space check staging makes first, which takes {update['space_check']:.2f} s from cold caches); "
              f"the same snapshot taken alone from cold caches: {alone:.2f} s (table)")
        goals.append(("the update grows by no more than the snapshot itself", w - wo <= alone + UPDATE_NOISE_S,
                      f"+{w - wo:.2f} s vs the snapshot alone {alone:.2f} s, same caches "
                      f"(+{UPDATE_NOISE_S} s noise allowance)"))
    print()
    for name, ok, detail in goals:
        print(f"{'INFO' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    checked = [ok for _n, ok, _d in goals if ok is not None]
    return 0 if checked and all(checked) else 1


if __name__ == "__main__":
    sys.exit(main())
