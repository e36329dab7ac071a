"""How repository metadata and publish time scale with the number of releases (issue 8).

One repository grows release by release (a small app, every release different); at each
checkpoint N (default 10, 100, 1000, 5000 releases) it measures, against the repository served
on 127.0.0.1 and a real python-tuf client (``client.trust.RepositoryClient``, bytes counted by
its transport):

- **no-update check**: a client that refreshed at N refreshes again (nothing new);
- **update**: release N+1 is published, the same client refreshes and reads the channel index
  (TUF metadata + index; the release's own manifest and artifact are not metadata);
- **first contact**: a new client (only the shipped root) refreshes and reads the index;
- **old release**: the client looks up release 1 by version (through the archive bins);
- **publish time** of releases N+1..N+3 (median), in-process, with deltas from 3 earlier releases.

Goals: metadata per update at the largest N <= 2x that at the smallest; publish time grows no
worse than linearly (time ratio <= release-count ratio between consecutive checkpoints).

    .venv/bin/python bench/scale.py                 # 10, 100, 1000, 5000 (about 5 minutes)
    .venv/bin/python bench/scale.py --sizes 10,200  # quicker
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workspace import fresh_repository  # noqa: E402

from pinnacle_updates.client.trust import RepositoryClient  # noqa: E402
from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.keys import KeyStore  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402

CHANNEL = "stable"


@dataclass
class Row:
    releases: int
    check_requests: int
    check_bytes: int
    update_requests: int
    update_bytes: int
    first_bytes: int
    old_release_bytes: int
    publish_s: float
    repo_metadata_bytes: int


def write_app(root: Path, n: int) -> Path:
    """A small app whose files change a little in every release (so deltas are real)."""
    src = root / f"src-{n}"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text(f"#!/bin/sh\necho app {n}\n")
    (src / "VERSION").write_text(f"1.0.{n}\n")
    (src / "lib.dat").write_bytes(bytes((i * 7 + n) % 256 for i in range(4096)))
    return src


@contextmanager
def served(directory: Path, kind: str) -> Iterator[str]:
    """The repository on 127.0.0.1: nginx (as the tests run it) or ``pinnacle-release serve``."""
    if kind == "nginx":
        from tests.nginx_server import NginxServer

        server = NginxServer(directory)
        try:
            yield server.url
        finally:
            server.stop()
        return
    proc = subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", "serve", str(directory), "--port",
                             "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    try:
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait()


class Grower:
    def __init__(self, work: Path, keys: KeyStore, repo: Repository) -> None:
        self.work, self.keys, self.repo, self.count = work, keys, repo, 0

    def publish_next(self, deltas: int) -> float:
        self.count += 1
        src = write_app(self.work / "src", self.count)
        started = time.perf_counter()
        ops.publish(self.repo, self.keys, ops.PublishRequest(
            channel=CHANNEL, version=f"1.0.{self.count}", type="patch", platform="any", source=src, deltas=deltas))
        elapsed = time.perf_counter() - started
        shutil.rmtree(src)
        return elapsed


def _client(url: str, repo: Repository, work: Path, name: str) -> RepositoryClient:
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    return RepositoryClient(url, work / name / "metadata", work / name / "cache", root)


def _moved(client: RepositoryClient, action: Callable[[], object]) -> tuple[int, int]:
    before = (client.stats.requests, client.stats.bytes)
    action()
    return client.stats.requests - before[0], client.stats.bytes - before[1]


def measure(grower: Grower, url: str, work: Path) -> Row:
    repo = grower.repo
    n = grower.count
    client = _client(url, repo, work, f"client-{n}")
    client.refresh()
    client.channel_index(CHANNEL)
    check = _moved(client, client.refresh)
    times = [grower.publish_next(deltas=3)]

    def update(c: RepositoryClient) -> None:
        c.refresh()
        c.channel_index(CHANNEL)

    upd = _moved(client, lambda: update(client))
    times += [grower.publish_next(deltas=3) for _ in range(2)]
    fresh = _client(url, repo, work, f"fresh-{n}")
    first = _moved(fresh, lambda: update(fresh))
    old = _moved(fresh, lambda: fresh.archived_release(CHANNEL, "any", "1.0.1"))
    client.close()
    fresh.close()
    size = sum(p.stat().st_size for p in repo.metadata_dir.iterdir())
    return Row(n, check[0], check[1], upd[0], upd[1], first[1], old[1], statistics.median(times), size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,5000", help="checkpoints (release counts), comma-separated")
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx",
                        help="what serves the repository (default nginx, Debian package nginx-light)")
    args = parser.parse_args()
    sizes = sorted({int(x) for x in args.sizes.split(",")})
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pinnacle-scale-") as tmp:
        work = Path(tmp)
        repo, keys = fresh_repository(work)
        config = repo.config()
        print(f"live window {config.live_window} releases, {2 ** config.archive_bits} archive bins per channel",
              flush=True)
        grower = Grower(work, keys, repo)
        print(f"served by {args.server}", flush=True)
        with served(repo.path, args.server) as url:
            for size in sizes:
                build = time.perf_counter()
                while grower.count < size:
                    grower.publish_next(deltas=0)  # history only: the measured publishes build deltas
                print(f"  built {size} releases in {time.perf_counter() - build:.1f} s", flush=True)
                rows.append(measure(grower, url, work))
    print()
    print("| releases | no-update check: requests / bytes | update: requests / metadata bytes | first contact "
          "bytes | old release lookup bytes | publish one more (median of 3) | metadata dir |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.releases:,} | {r.check_requests} / {r.check_bytes:,} | {r.update_requests} / "
              f"{r.update_bytes:,} | {r.first_bytes:,} | {r.old_release_bytes:,} | {r.publish_s * 1000:.0f} ms | "
              f"{r.repo_metadata_bytes / 1e6:.1f} MB |")
    ok = True
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        ratio = large.update_bytes / small.update_bytes
        verdict = "PASS" if ratio <= 2 else "FAIL"
        ok &= ratio <= 2
        print(f"\nmetadata per update at {large.releases:,} vs {small.releases:,} releases: {ratio:.2f}x "
              f"(goal <= 2x): {verdict}")
        for a, b in itertools.pairwise(rows):
            growth = b.publish_s / a.publish_s
            allowed = b.releases / a.releases
            ok &= growth <= allowed
            print(f"publish time {a.releases:,} -> {b.releases:,} releases: {growth:.2f}x for {allowed:.0f}x the "
                  f"releases (goal: no worse than linear): {'PASS' if growth <= allowed else 'FAIL'}")
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
