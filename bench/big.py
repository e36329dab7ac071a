"""Big-artifact benchmark (issue 8): publish and apply a ~1 GiB release, time and peak memory of every step.

Builds, in a temporary directory removed at the end, a release tree of ``--size`` bytes (default 1 GiB) made of
real files (runtime packages copied from this venv's site-packages) and deterministic synthetic data:
incompressible blocks, blocks repeating earlier ones and repetitive text, including one file of half the size
(512 MiB at 1 GiB). Version 2 of the tree changes it the way releases do: the big file gets a small edit in the
middle (an overwrite and a 4 KiB insertion) and an append; two medium files get scattered edits; small files
are edited, removed and added; one real module is edited. Unchanged files are hard links (publisher and client
both read them as plain files).

Then, each a child process (wall, user+sys CPU and peak RSS from ``os.wait4``):

* ``pinnacle-release publish`` of v1 and v2 (deltas from v1, ``--memory-budget`` passed through if given);
* ``pinnacle-update install 1.0.0`` (full artifact) and ``pinnacle-update install`` (to 2.0.0: the delta) against
  the repository served by ``pinnacle-release serve`` on 127.0.0.1; bytes and path from ``history --json``;
* the baseline: ``tar -cf - -C V2 . | zstd -10 -T1`` of the same v2 tree (GNU tar, zstd CLI).

    .venv/bin/python bench/big.py [--size 1G] [--memory-budget 2G] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from delta import BenchError, Run, Server, run_child  # noqa: E402

from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.delta import parse_size  # noqa: E402
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402

MiB = 1 << 20
BLOCK = MiB
CHANNEL, PLATFORM = "stable", "linux-x86_64"
STEP_TIMEOUT = 3600.0
REAL_PACKAGES = ("tuf", "securesystemslib", "cryptography", "zstandard", "pyzstd", "bsdiff4", "httpx", "httpcore",
                 "h11", "anyio", "idna", "certifi", "click", "packaging", "cffi")
"""Runtime dependencies of the client and publisher, copied (with their ``*.dist-info``) as the real part."""
WORDS = [b"def", b"return", b"self", b"import", b"value", b"class", b"update", b"release", b"delta", b"manifest",
         b"sha256", b"channel", b"install", b"verify", b"0x7f", b"None", b"True", b"for", b"in", b"if"]


# ---------------------------------------------------------------------------------------------------- the trees


def synthetic(rng: random.Random, size: int, history: list[bytes]) -> Iterator[bytes]:
    """``size`` bytes in blocks of at most ``BLOCK``: 60% incompressible, 20% a repeat of an earlier block
    (long-distance redundancy), 20% repetitive text. ``history`` keeps a few earlier blocks to repeat."""
    left = size
    while left > 0:
        n = min(BLOCK, left)
        kind = rng.random()
        if kind < 0.6 or not history:
            block = rng.randbytes(n)
        elif kind < 0.8:
            block = (rng.choice(history) * 2)[:n]
        else:
            line = b" ".join(rng.choice(WORDS) for _ in range(12)) + b"\n"
            block = (line * (n // len(line) + 1))[:n]
        if len(history) < 16 and n == BLOCK:
            history.append(block)
        left -= n
        yield block


def write_synthetic(path: Path, rng: random.Random, size: int, history: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for block in synthetic(rng, size, history):
            f.write(block)


def copy_real(dest: Path, budget: int) -> int:
    """Copy the packages of :data:`REAL_PACKAGES` (no ``__pycache__``) while they fit ``budget`` bytes."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    used = 0
    for name in REAL_PACKAGES:
        for src in sorted(site.glob(f"{name}")) + sorted(site.glob(f"{name}-*.dist-info")):
            files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts]
            size = sum(p.stat().st_size for p in files)
            if used + size > budget:
                continue
            for p in files:
                target = dest / "site-packages" / p.relative_to(site)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)
            used += size
    return used


def make_v1(root: Path, size: int) -> dict[str, int]:
    """The v1 tree: real packages (at most 40% of ``size``), one big file of half ``size``, medium files and
    small text files for the rest. Returns the bytes of each part."""
    rng = random.Random(8)
    history: list[bytes] = []
    real = copy_real(root, int(size * 0.4))
    big = size // 2
    write_synthetic(root / "data" / "assets.pack", rng, big, history)
    small_total = min(size // 50, 32 * MiB)
    small_count = 2000
    for i in range(small_count):
        text = b" ".join(rng.choice(WORDS) for _ in range(small_total // small_count // 5))
        path = root / "app" / f"mod{i % 40}" / f"part{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    medium_total = max(0, size - real - big - small_total)
    count = 8
    for i in range(count):
        write_synthetic(root / "lib" / f"libpart{i}.so", rng, medium_total // count, history)
    return {"real": real, "big": big, "medium": medium_total // count * count, "small": small_total}


def link_tree(src: Path, dest: Path) -> None:
    """``dest`` as a copy of ``src`` made of hard links (changed files are then replaced, never written in place)."""
    for dirpath, _, files in os.walk(src):
        out = dest / Path(dirpath).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(Path(dirpath) / name, out / name)


def edit_copy(path: Path, edits: list[tuple[int, int, bytes]], append: bytes = b"") -> None:
    """Replace the hard link ``path`` by a new file: its bytes with each ``(offset, removed, inserted)`` applied
    (offsets in the old file, ascending), then ``append``; streamed."""
    tmp = path.with_name(path.name + ".new")
    with open(path, "rb") as old, open(tmp, "wb") as new:
        at = 0
        for offset, removed, inserted in edits:
            while at < offset:
                chunk = old.read(min(BLOCK, offset - at))
                new.write(chunk)
                at += len(chunk)
            old.seek(removed, os.SEEK_CUR)
            at += removed
            new.write(inserted)
        shutil.copyfileobj(old, new, BLOCK)
        new.write(append)
    os.replace(tmp, path)


def make_v2(v1: Path, v2: Path, size: int) -> list[str]:
    """v2 from v1 (hard links, then changes); returns what changed, for the report."""
    rng = random.Random(9)
    link_tree(v1, v2)
    big = v2 / "data" / "assets.pack"
    mid = big.stat().st_size // 2
    append = max(MiB, size // 64)
    edit_copy(big, [(mid, 64 << 10, rng.randbytes(64 << 10)), (mid + (1 << 20), 0, rng.randbytes(4 << 10))],
              rng.randbytes(append))
    for name in ("libpart1.so", "libpart5.so"):
        path = v2 / "lib" / name
        length = path.stat().st_size
        spots = sorted(rng.randrange(0, max(1, length - 8192)) for _ in range(12))
        edit_copy(path, [(s, 4096, rng.randbytes(4096)) for s in dict.fromkeys(s - s % 8192 for s in spots)])
    (v2 / "lib" / "libpart3.so").unlink()
    write_synthetic(v2 / "lib" / "libextra.so", rng, max(MiB, size // 40), [])
    for i in range(0, 2000, 100):
        path = v2 / "app" / f"mod{i % 40}" / f"part{i}.py"
        edit_copy(path, [(0, 0, b"# edited in 2.0.0\n")])
    for i in range(1, 2000, 400):
        (v2 / "app" / f"mod{i % 40}" / f"part{i}.py").unlink()
    for i in range(10):
        (v2 / "app" / "new" / f"added{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (v2 / "app" / "new" / f"added{i}.py").write_bytes(b"VALUE = %d\n" % i * 50)
    init = v2 / "site-packages" / "tuf" / "__init__.py"
    if init.exists():
        edit_copy(init, [], b"# patched for 2.0.0\n")
    return [f"big file: 64 KiB overwritten and 4 KiB inserted in the middle, {append / MiB:.0f} MiB appended",
            "2 medium files with scattered 4 KiB edits, 1 removed, 1 new",
            "20 small files edited, 5 removed, 10 new; tuf/__init__.py edited"]


def tree_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


# ---------------------------------------------------------------------------------------------------- the steps


def step(cmd: list[str], what: str) -> Run:
    return run_child(cmd, what, cwd=ROOT, timeout=STEP_TIMEOUT)


def publish(repo: Path, keys: Path, version: str, source: Path, budget: str | None) -> tuple[Run, dict[str, Any]]:
    extra = ["--memory-budget", budget] if budget else []
    run = step([sys.executable, "-m", "pinnacle_updates.repo_tools", "publish", str(repo), "--keys", str(keys),
                "--channel", CHANNEL,
                "--version", version, "--type", "minor", "--platform", PLATFORM, "--deltas", "1", *extra, "--json",
                str(source)], f"pinnacle-release publish {version}")
    return run, json.loads(run.stdout)


def history_record(client: list[str], version: str) -> dict[str, Any]:
    doc = json.loads(step([*client, "history", "--json"], "pinnacle-update history").stdout)
    records = doc if isinstance(doc, list) else doc.get("records", doc.get("history", []))
    found = next((r for r in reversed(records) if r.get("version") == version and r.get("outcome") == "committed"),
                 None)
    if found is None:
        raise BenchError(f"no committed install of {version} in the history: {records[-2:]}")
    return dict(found)


def baseline(source: Path, out: Path) -> Run:
    """GNU tar piped into the zstd CLI at the publisher's level, single-threaded (wait4 on the shell covers both)."""
    return step(["sh", "-c", 'tar -cf - -C "$1" . | zstd -q -10 -T1 -o "$2"', "sh", str(source), str(out)],
                "tar | zstd baseline")


def row(name: str, run: Run, extra: str = "") -> str:
    return f"{name:<34} {run.wall:8.1f} s {run.cpu:8.1f} s {run.peak / MiB:9.0f} MiB  {extra}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="release size, e.g. 1G, 128M (default 1G)")
    parser.add_argument("--memory-budget", default=None, help="passed to pinnacle-release publish")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    args = parser.parse_args()
    size = parse_size(args.size)
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install {tool})")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pinnacle-big-") as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        v1, v2 = tmp / "v1", tmp / "v2"
        parts = make_v1(v1, size)
        changes = make_v2(v1, v2, size)
        (b1, n1), (b2, n2) = tree_bytes(v1), tree_bytes(v2)
        print(f"tree v1: {b1 / MiB:.0f} MiB in {n1} files (real {parts['real'] / MiB:.0f} MiB, big file "
              f"{parts['big'] / MiB:.0f} MiB, medium {parts['medium'] / MiB:.0f} MiB, small {parts['small'] / MiB:.0f}"
              f" MiB); v2: {b2 / MiB:.0f} MiB in {n2} files")
        for line in changes:
            print(f"  v2 change: {line}")
        print(f"(trees built in {time.monotonic() - started:.0f} s)\n")

        keys, repo_dir = tmp / "keys", tmp / "repo"
        create_keys(keys, passphrase=None)
        ops.init_repository(Repository(repo_dir), KeyStore(keys))
        base = baseline(v2, tmp / "baseline.tar.zst")
        pub1, _ = publish(repo_dir, keys, "1.0.0", v1, args.memory_budget)
        pub2, doc2 = publish(repo_dir, keys, "2.0.0", v2, args.memory_budget)
        release = Repository(repo_dir).channel_index(Repository(repo_dir).load(), CHANNEL).releases[-1]
        delta = release.delta_from("1.0.0")

        install_dir = tmp / "client"
        client = [sys.executable, "-m", "pinnacle_updates.client", "--install-dir", str(install_dir)]
        with Server(repo_dir) as server:
            step([*client, "init", "--repo", server.url, "--root", str(repo_dir / "metadata" / "1.root.json"),
                  "--channel", CHANNEL, "--platform", PLATFORM], "pinnacle-update init")
            inst1 = step([*client, "install", "1.0.0", "--json"], "pinnacle-update install 1.0.0")
            rec1 = history_record(client, "1.0.0")
            inst2 = step([*client, "install", "--json"], "pinnacle-update install 2.0.0")
            rec2 = history_record(client, "2.0.0")
        status = json.loads(step([*client, "status", "--json"], "pinnacle-update status").stdout)
        if status.get("version") != "2.0.0":
            raise BenchError(f"client reports {status.get('version')} after the update, not 2.0.0")

        print(f"{'step':<34} {'wall':>10} {'CPU':>10} {'peak RSS':>13}  notes")
        print(row("baseline tar | zstd -10 -T1 (v2)", base, f"archive {(tmp / 'baseline.tar.zst').stat().st_size:,} B"))
        print(row("publish 1.0.0", pub1, f"full {release_full(repo_dir, '1.0.0'):,} B"))
        deltas = doc2.get("deltas") or []
        info = deltas[0] if deltas else {}
        print(row("publish 2.0.0 (+ delta from 1.0.0)", pub2,
                  f"full {release.full.length:,} B, delta {delta.target.length if delta else 'none'} B"
                  f"{'' if delta else ' (not published)'}; ops {info.get('ops')}"))
        if info:
            print(f"{'':<34} delta op bytes {info.get('op_bytes')}, delta built in {info.get('seconds')} s")
        for name, run, rec in (("install 1.0.0", inst1, rec1), ("update 1.0.0 -> 2.0.0", inst2, rec2)):
            print(row(name, run, f"downloaded {int(rec.get('bytes', 0)):,} B, path {rec.get('path')}"
                      f"{', fallback: ' + str(rec['fallback_reason']) if rec.get('fallback_reason') else ''}"))
        print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


def release_full(repo_dir: Path, version: str) -> int:
    repo = Repository(repo_dir)
    found = repo.channel_index(repo.load(), CHANNEL).find(version, PLATFORM)
    return found.full.length if found is not None else 0


if __name__ == "__main__":
    sys.exit(main())
