"""Fleet load on real static hosting (issue 8): N concurrent clients check and update against nginx.

Everything runs on 127.0.0.1. Setup (not measured):

* a repository built with the real publisher (``repo_tools.publish``): a synthetic app of about
  5 MB (an incompressible 3 MB library of which each release rewrites 100 KB, 1 MB of text,
  200 small files of which 5 change), releases 1.0.0, 1.1.0, 1.2.0 (state A), and a copy of it with
  1.3.0 published on top (state B), every release with its deltas from the previous three;
* nginx (Debian's, unprivileged, ``tests/nginx_server.py``) serving ``served -> A`` with the
  configuration ``pinnacle-release nginx-config`` prints, and a JSON access log;
* a template client (``client.config.init`` + the real ``Installer``) that installs 1.2.0 in full;
  its first check and its install are reported as the one-client figures. For each level, N copies
  of it (each with its own metadata, cache, state, history and client id; the release files of its
  slot are hard-linked, since the installer never writes a slot's files in place).

Per level N (default 10, 100, 1000), two measured phases, each with all N clients started at once
(``--workers`` processes, each running its share of the clients on its own threads, so that
``--threads`` x ``--workers`` requests can be in flight; every client is a real, separate client):

* ``check``: ``Installer.check()`` with nothing new: a python-tuf ngclient refresh
  (``client.trust.RepositoryClient``) and the channel index from the verified cache. Every
  client must report no update.
* ``update``: ``served`` is switched to B (1.3.0 appears), then ``Installer.install()``: refresh,
  index, manifest, the delta 1.2.0 -> 1.3.0 through TUF, apply, verify, swap, commit. Every client
  must commit 1.3.0 by its delta. ``--update-clients M`` limits this phase to the first M clients.

Requests, bytes, statuses and the measured window come from nginx's access log (not from client
counters); nginx's CPU time from ``/proc``. A phase stops starting clients after ``--max-seconds``
(reported as not run). Errors (a client exception, a wrong outcome, an HTTP status other than 200,
206, or the 404 of the next-root probe) must be 0: the exit status is 1 otherwise.

    .venv/bin/python bench/hosting.py                      # levels 10, 100, 1000
    .venv/bin/python bench/hosting.py --levels 10,100 --update-clients 50
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinnacle_updates.client import config  # noqa: E402
from pinnacle_updates.client.installer import Installer  # noqa: E402
from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402
from tests.nginx_server import NginxServer, Request, find_nginx  # noqa: E402

BASE_VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
INSTALLED = "1.2.0"
NEW = "1.3.0"
ROOT_PROBE = re.compile(r"^/metadata/\d+\.root\.json$")
MB = 1_000_000


# -- the repository ----------------------------------------------------------------------------


def _noise(seed: str, size: int) -> bytes:
    """Incompressible and the same on every run."""
    return random.Random(seed).randbytes(size)


def app_tree(root: Path, version: str, i: int) -> Path:
    """About 5 MB; each release rewrites 100 KB of the library, a line of the text and 5 small files."""
    lib = bytearray(_noise("lib", 3_000_000))
    for k in range(i + 1):  # release k rewrote 100 KB of it
        lib[500_000 * (k + 1) : 500_000 * (k + 1) + 100_000] = _noise(f"lib/{k}", 100_000)
    text = "".join(f"line {n}: setting_{n % 97} = {n * 7919 % 10007}\n" for n in range(30_000))
    files: dict[str, bytes] = {
        "bin/app": f"#!/bin/sh\necho app {version}\n".encode(),
        "VERSION": f"{version}\n".encode(),
        "lib/core.so": bytes(lib),
        "share/settings.txt": (text + f"# release {version}\n").encode(),
    }
    for n in range(200):
        changed = n < 5 * (i + 1) and n >= 5 * i
        header = f"# {version if changed else 'same'}\n" * 60
        files[f"app/module_{n:03d}.py"] = header.encode() + _noise(f"m{n}", 1000)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel.startswith("bin/"):
            path.chmod(0o755)
    return root


def build_repositories(work: Path) -> tuple[Path, Path, Path]:
    """State A (1.0.0-1.2.0) and state B (A + 1.3.0); returns (A, B, root.json)."""
    keys = work / "keys"
    create_keys(keys, passphrase=None)
    store = KeyStore(keys)
    a = work / "repo-a"
    ops.init_repository(Repository(a), store)
    for i, version in enumerate(BASE_VERSIONS):
        ops.publish(Repository(a), store, ops.PublishRequest("stable", version, "patch", "any",
                                                             app_tree(work / f"src-{version}", version, i)))
    b = work / "repo-b"
    shutil.copytree(a, b, symlinks=True)
    ops.publish(Repository(b), store, ops.PublishRequest("stable", NEW, "patch", "any",
                                                         app_tree(work / f"src-{NEW}", NEW, len(BASE_VERSIONS))))
    return a, b, a / "metadata" / "1.root.json"


def point(link: Path, target: Path) -> None:
    """Switch what nginx serves, atomically (a symlink replaced by rename)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


# -- clients -----------------------------------------------------------------------------------


def clone(template: Path, dest: Path, n: int) -> None:
    """A copy of the template install directory: slot files hard-linked, everything else copied."""

    def copy(src: str, dst: str) -> object:
        if "/slots/" in src:
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(template, dest, symlinks=True, copy_function=copy)
    values = dict(config.load(dest).values)  # a client id of its own, as `init` would have made
    values["client_id"] = hashlib.sha256(f"client-{n}".encode()).hexdigest()[:32]
    config.write(dest, config.validate(values))


@dataclass(frozen=True)
class Outcome:
    ran: bool
    error: str = ""


def one_client(op: str, d: str, deadline: float) -> Outcome:
    if time.time() > deadline:
        return Outcome(False)
    try:
        if op == "check":
            found = Installer(Path(d)).check()
            if found.update_available:
                return Outcome(True, f"check found an update to {found.version}")
        else:
            result = Installer(Path(d)).install()
            if (result.outcome, result.version, result.route.get("path")) != ("committed", NEW, "delta"):
                return Outcome(True, f"install: {result.to_dict()}")
    except Exception as exc:  # every failure is counted and shown, none may stop the run
        return Outcome(True, f"{type(exc).__name__}: {exc}")
    return Outcome(True)


def worker(op: str, dirs: list[str], threads: int, start: float, deadline: float) -> list[Outcome]:
    """One worker process: its clients on ``threads`` threads, all released at ``start``."""
    time.sleep(max(0.0, start - time.time()))
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda d: one_client(op, d, deadline), dirs))


def run_phase(op: str, dirs: list[Path], workers: int, threads: int, max_seconds: float) -> tuple[list[Outcome], float]:
    """All clients of a phase, started together; returns their outcomes and the wall time."""
    shares = [[str(d) for d in dirs[w::workers]] for w in range(workers)]
    shares = [s for s in shares if s]
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(shares), mp_context=ctx) as pool:
        start = time.time() + 0.5  # every worker process is up before the first client starts
        futures = [pool.submit(worker, op, share, min(threads, len(share)), start, start + max_seconds)
                   for share in shares]  # fmt: skip
        outcomes = [o for f in futures for o in f.result()]
    return outcomes, time.time() - start


# -- what nginx saw ----------------------------------------------------------------------------


def settled(srv: NginxServer, quiet: float = 0.5) -> int:
    """The number of access log lines once nginx has written no new one for ``quiet`` seconds."""
    count, since = len(srv.requests()), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = len(srv.requests())
        if now != count:
            count, since = now, time.monotonic()
    return count


@dataclass
class Figures:
    name: str
    clients: int
    ran: int
    errors: list[str]
    requests: list[Request]
    wall: float
    nginx_cpu: float

    @property
    def bad_statuses(self) -> Counter[str]:
        bad: Counter[str] = Counter()
        for r in self.requests:
            if not (r.status in (200, 206) or (r.status == 404 and ROOT_PROBE.match(r.path))):
                bad[f"{r.status} {r.path}"] += 1
        return bad

    def window(self) -> float:
        if not self.requests:
            return 0.0
        return max(r.time for r in self.requests) - min(r.time - r.request_time for r in self.requests)

    def body(self, prefix: str = "/") -> int:
        return sum(r.body_bytes for r in self.requests if r.path.startswith(prefix))

    def count(self, prefix: str = "/") -> int:
        return sum(1 for r in self.requests if r.path.startswith(prefix))

    def peak_connections(self) -> int:
        """The most connections open at once, each from its first request's start to its last's end."""
        spans: dict[int, tuple[float, float]] = {}
        for r in self.requests:
            start, end = spans.get(r.connection, (r.time - r.request_time, r.time))
            spans[r.connection] = (min(start, r.time - r.request_time), max(end, r.time))
        events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()],
                        key=lambda ev: (ev[0], -ev[1]))  # nginx logs milliseconds: the same instant overlaps
        peak = open_now = 0
        for _, delta in events:
            open_now += delta
            peak = max(peak, open_now)
        return peak

    def row(self) -> list[str]:
        n = max(self.ran, 1)
        window = self.window()
        latencies = sorted(r.request_time for r in self.requests) or [0.0]
        p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
        return [
            self.name, f"{self.ran}/{self.clients}",
            f"{self.count() / n:.2f}", f"{self.count('/metadata/') / n:.2f}",
            f"{self.body() / n:,.0f}", f"{self.body('/metadata/') / n:,.0f}", f"{self.body('/targets/') / n:,.0f}",
            f"{len(self.requests):,}", f"{self.body() / MB:,.1f}",
            f"{window:.2f}", str(self.peak_connections()), f"{len(self.requests) / window if window else 0:,.0f}",
            f"{self.body() / MB / window if window else 0:,.1f}",
            f"{p99 * 1000:.0f}/{latencies[-1] * 1000:.0f}",
            f"{self.nginx_cpu:.2f}", f"{self.nginx_cpu / len(self.requests) * 1e6 if self.requests else 0:.0f}",
            f"{self.wall:.1f}",
            str(len(self.errors) + sum(self.bad_statuses.values())),
        ]  # fmt: skip


HEADER = ["phase", "clients", "req/cl", "meta req/cl", "bytes/cl", "meta B/cl", "target B/cl", "requests", "MB",
          "window s", "peak conns", "req/s", "MB/s", "nginx ms p99/max", "nginx CPU s", "CPU us/req",
          "wall s", "errors"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [HEADER, *rows]]  # fmt: skip
    return "\n".join(lines)


def measure(srv: NginxServer, name: str, op: str, dirs: list[Path], args: argparse.Namespace) -> Figures:
    before = settled(srv)
    cpu = srv.cpu_seconds()
    outcomes, wall = run_phase(op, dirs, args.workers, args.threads, args.max_seconds)
    after = settled(srv)
    return Figures(name, len(dirs), sum(o.ran for o in outcomes), [o.error for o in outcomes if o.error],
                   srv.requests()[before:after], wall, srv.cpu_seconds() - cpu)


def single(srv: NginxServer, name: str, action: object) -> Figures:
    before = settled(srv)
    started = time.monotonic()
    error = ""
    try:
        action()  # type: ignore[operator]
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    wall = time.monotonic() - started
    after = settled(srv)
    return Figures(name, 1, 1, [error] if error else [], srv.requests()[before:after], wall, 0.0)


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--levels", default="10,100,1000", help="client counts (default 10,100,1000; at most 1000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="client processes (default: cores)")
    parser.add_argument("--threads", type=int, default=500, help="threads per client process (default 500)")
    parser.add_argument("--update-clients", type=int, default=None, help="update only this many clients per level")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per phase: start no client after this")
    parser.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (default auto)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or max(levels) > 1000:
        parser.error("--levels: client counts from 1 to 1000")
    if (args.update_clients is not None and args.update_clients < 1) or args.workers < 1 or args.threads < 1:
        parser.error("--update-clients, --workers and --threads must be at least 1")
    if find_nginx() is None:
        print("nginx is not installed: apt-get install nginx-light", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="pinnacle-hosting-"))
    try:
        t0 = time.monotonic()
        repo_a, repo_b, root_json = build_repositories(work)
        served = work / "served"
        point(served, repo_a)
        full_size = sum(p.stat().st_size for p in (repo_a / "targets").rglob("*.full.tar.zst")) / len(BASE_VERSIONS)
        print(f"repository: releases {', '.join(BASE_VERSIONS)} then {NEW}, full artifact about "
              f"{full_size / MB:.1f} MB, built in {time.monotonic() - t0:.0f} s ({work})")
        rows: list[list[str]] = []
        failed = False
        with NginxServer(served, workers=args.nginx_workers, worker_connections=4096) as srv:
            template = work / "template"
            config.init(template, srv.url, root_json, "stable", "any")
            ins = Installer(template)
            first = [single(srv, "first check (1 new client)", ins.check),
                     single(srv, f"first install {INSTALLED} (full)", lambda: ins.install(INSTALLED)),
                     single(srv, "check, nothing new (1 client)", ins.check)]  # fmt: skip
            rows += [f.row() for f in first]
            failed |= any(f.errors or f.bad_statuses for f in first)
            print(f"nginx {srv.url} (workers {args.nginx_workers}); clients: {args.workers} processes x up to "
                  f"{args.threads} threads")
            for n in levels:
                point(served, repo_a)
                clients = work / f"clients-{n}"
                clients.mkdir()
                dirs = [clients / f"c{i:04d}" for i in range(n)]
                for i, d in enumerate(dirs):
                    clone(template, d, i)
                check = measure(srv, f"N={n} check", "check", dirs, args)
                point(served, repo_b)
                updating = dirs[: args.update_clients] if args.update_clients else dirs
                update = measure(srv, f"N={n} update", "update", updating, args)
                for f in (check, update):
                    rows.append(f.row())
                    failed |= bool(f.errors or f.bad_statuses or f.ran < f.clients)
                    print("  " + " | ".join(f"{h} {v}" for h, v in zip(HEADER, rows[-1], strict=True)), flush=True)
                    for e, k in Counter(f.errors).most_common(3):
                        print(f"  {f.name}: {k} x {e}")
                    for s, k in f.bad_statuses.most_common(3):
                        print(f"  {f.name}: {k} x HTTP {s}")
                shutil.rmtree(clients)
        print()
        print(table(rows))
        print("\nper client (cl) and per phase; bytes are response bodies as nginx logged them; window: first request "
              "start to last request end at nginx; nginx ms: request time at nginx")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
