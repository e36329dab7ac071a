"""Publish benchmark: time and peak memory for a 100 MB source tree; metadata bytes per role after 100 releases.

Baseline measured in the same run: a plain tar + zstd (same level) of the same tree, in a child process too,
so the ratio shows what signing, manifests and crash-safe writes cost on top of compressing.

    .venv/bin/python bench/publish.py [--size-mb 100] [--releases 100]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402

BASELINE = """
import sys, tarfile, zstandard
src, out, level = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(out, "wb") as raw, zstandard.ZstdCompressor(level=level).stream_writer(raw) as z:
    with tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=".")
"""


def make_tree(root: Path, size_mb: int) -> None:
    """A build-output-like tree: 40% incompressible blobs, 40% repetitive text, 20% many small files."""
    rng = random.Random(42)
    total = size_mb << 20
    blobs = root / "lib"
    blobs.mkdir(parents=True)
    for i in range(4):
        (blobs / f"native{i}.so").write_bytes(rng.randbytes(int(total * 0.1)))
    text = root / "share"
    text.mkdir()
    line = b"INFO pinnacle sample log line with some repeated structure 0123456789\n"
    for i in range(4):
        (text / f"data{i}.txt").write_bytes(line * int(total * 0.1 / len(line)))
    small = root / "site-packages"
    count = 2000
    for i in range(count):
        d = small / f"pkg{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        words = b" ".join(rng.choice([b"def", b"return", b"self", b"import", b"value", b"class"]) for _ in range(1500))
        (d / f"mod{i}.py").write_bytes(words[: int(total * 0.2 / count)])


def child_run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--releases", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys = tmp / "keys"
        create_keys(keys, passphrase=None)
        store = KeyStore(keys)
        src = tmp / "src"
        make_tree(src, args.size_mb)
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())

        # Baseline first, so the page cache is equally warm for both.
        base_s, base_rss = child_run([sys.executable, "-c", BASELINE, str(src), str(tmp / "plain.tar.zst"), "10"])
        repo = Repository(tmp / "repo")
        ops.init_repository(repo, store)
        pub_s, pub_rss = child_run([sys.executable, "-m", "pinnacle_updates.repo_tools", "publish", str(repo.path),
                                    "--keys", str(keys),
                                    "--channel", "stable", "--version", "1.0.0", "--type", "minor",
                                    "--platform", "linux-x86_64", str(src)])
        index = repo.channel_index(repo.load(), "stable")
        artifact = index.releases[-1].full.length
        print(f"source tree             {size / 2**20:8.1f} MiB in {sum(1 for _ in src.rglob('*'))} entries")
        print(f"publish                 {pub_s:8.2f} s   peak RSS {pub_rss / 2**20:7.1f} MiB   "
              f"artifact {artifact / 2**20:.1f} MiB")
        print(f"baseline tar+zstd(10)   {base_s:8.2f} s   peak RSS {base_rss / 2**20:7.1f} MiB   "
              f"archive {(tmp / 'plain.tar.zst').stat().st_size / 2**20:.1f} MiB")
        print(f"ratio publish/baseline  {pub_s / base_s:8.2f} x time, {pub_rss / base_rss:.2f} x memory")

        # Metadata growth: many small releases in one channel.
        repo2 = Repository(tmp / "repo2")
        ops.init_repository(repo2, store)
        small = tmp / "small"
        (small / "bin").mkdir(parents=True)
        started = time.perf_counter()
        for n in range(args.releases):
            (small / "bin" / "app").write_text(f"release {n}\n")
            ops.publish(repo2, store, ops.PublishRequest("stable", f"1.0.{n}", "patch", "linux-x86_64", small))
        each = (time.perf_counter() - started) / args.releases
        state = repo2.load()
        md = repo2.metadata_dir
        print(f"\nafter {args.releases} releases in 'stable' ({each * 1000:.0f} ms per in-process publish):")
        sizes = {
            "root": md / f"{len(repo2.root_versions())}.root.json",
            "timestamp": md / "timestamp.json",
            "snapshot": md / f"{state.snapshot.signed.version}.snapshot.json",
            "targets": md / f"{state.targets.signed.version}.targets.json",
        }
        for name, role in state.channels.items():
            sizes[name] = md / f"{role.signed.version}.{name}.json"
        info = state.channels["stable"].signed.targets["stable/index.json"]
        sizes["stable/index.json"] = repo2.target_location(info.path, info.hashes["sha256"])
        for name, path in sizes.items():
            print(f"  {name:<18} {os.path.getsize(path):>9,} bytes")


if __name__ == "__main__":
    main()
