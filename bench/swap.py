"""Swap benchmark: how long the A/B switch and a manual rollback take, and what a `check` costs on the wire.

Everything is real: keys, a repository and two releases made with the ``pinnacle-release`` CLI, the
repository served by ``pinnacle-release serve --verbose`` in its own process on 127.0.0.1, and a
client install directory driven through the library ``Installer`` (no hooks or health check
configured, so the timings isolate the switch itself).

Measured, over ``--runs`` runs each (median and p95):

* ``atomic_symlink``: ``formats.fsutil.atomic_symlink`` flipping ``DIR/current`` between the slots
  (new link, rename over the old one, fsync of ``DIR``): the commit point of every install and rollback.
* ``Installer.rollback(force=True)``: the whole public call, alternating v2 -> v1 -> v2 ...: lock,
  recovery pass, two fsync'd state saves, the swap, an fsync'd history append. ``force`` is needed
  because a manual rollback marks the version it leaves as bad, and the next rollback returns to it.
  The in-call figure ``RollbackResult.duration`` (first state save to history append) is shown too.
* baselines for a non-A/B updater on the same tree: ``shutil.copytree`` of the release (restoring a
  backup copy; ``--copy-runs``, 20 by default, as it is slow) and ``os.rename`` of a directory followed
  by an fsync of its parent.

And for ``Installer.check()`` when nothing is new: HTTP requests and body bytes as the client counts
them (its ``history`` record) and as the server logged them (request lines on its stderr; body bytes
from the served files' sizes), plus the time of the call.

    .venv/bin/python bench/swap.py [--runs 100] [--files 300] [--size-mb 4] [--checks 10] [--copy-runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinnacle_updates.client import config as client_config  # noqa: E402
from pinnacle_updates.client.installer import Installer  # noqa: E402
from pinnacle_updates.formats import fsutil  # noqa: E402

V1, V2 = "1.0.0", "1.1.0"
REQUEST_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<code>\d{3})')


# ----- set-up --------------------------------------------------------------------------------------
def release_cli(*args: str) -> None:
    """One ``pinnacle-release`` command in its own process, as a publisher runs it."""
    proc = subprocess.run([sys.executable, "-m", "pinnacle_updates.repo_tools", *args], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pinnacle-release {' '.join(args)} failed: {proc.stderr.strip()}")


def make_release(root: Path, version: str, files: int, size_mb: int) -> int:
    """An app-like tree: a launcher, ~1/4 of the bytes incompressible blobs, the rest source/text
    files in packages; about half the files change between versions. Returns the byte total."""
    rng = random.Random(7)  # same seed for every version: unchanged files are really unchanged
    total = size_mb << 20
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app").write_text(f"#!/bin/sh\necho app {version}\n")
    (root / "bin" / "app").chmod(0o755)
    (root / "VERSION").write_text(version + "\n")
    written = 0
    for i in range(4):
        blob = root / "lib" / f"native{i}.so"
        blob.parent.mkdir(exist_ok=True)
        data = rng.randbytes(total // 16) + version.encode()
        blob.write_bytes(data)
        written += len(data)
    words = [b"def", b"return", b"self", b"import", b"value", b"class", b"yield", b"lambda", b"None"]
    each = (total - written) // files
    for i in range(files):
        path = root / "site-packages" / f"pkg{i % 20:02d}" / f"mod{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b" ".join(rng.choice(words) for _ in range(each // 5))[:each]
        if i % 2:
            body += f"\n# {version}\n".encode()
        path.write_bytes(body)
        written += len(body)
    return written


class Server:
    """``pinnacle-release serve DIR --port 0 --verbose`` with its request log collected."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pinnacle_updates.repo_tools", "serve", str(repo), "--port", "0", "--verbose"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise SystemExit(f"server did not start: {line!r}")
        self.url = line.split()[1]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        self._marks = 0

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def mark(self) -> int:
        """Request a marker path and wait until the server logged it: every request made before is
        in ``lines`` then. Returns the index just after the marker line."""
        self._marks += 1
        path = f"/__bench_mark__/{self._marks}"
        with contextlib.suppress(urllib.error.HTTPError):  # a 404 is expected; it is logged all the same
            urllib.request.urlopen(self.url.rstrip("/") + path, timeout=5).close()
        with self._cond:
            ok = self._cond.wait_for(lambda: any(path in ln for ln in self.lines[-5:]), timeout=5)
            if not ok:
                raise SystemExit("the server's request log did not show the marker request")
            return len(self.lines)

    def requests_between(self, start: int, end: int) -> list[tuple[str, int]]:
        """(path, status) of the logged requests in ``lines[start:end]``, marker requests excluded."""
        out = []
        for line in self.lines[start:end]:
            m = REQUEST_RE.search(line)
            if m and "__bench_mark__" not in m["path"]:
                out.append((m["path"], int(m["code"])))
        return out

    def body_bytes(self, path: str, code: int) -> int:
        """Body bytes the server sent for a 200 (the file's size); other statuses count 0 (none occur here)."""
        if code != 200:
            return 0
        return (self.repo / path.lstrip("/").split("?", 1)[0]).stat().st_size

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ----- measuring -------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], runs: int, between: Callable[[], object] | None = None) -> list[float]:
    """Wall seconds of ``runs`` calls of ``fn``; ``between`` runs untimed after each call."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
        if between is not None:
            between()
    return out


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1]


def row(name: str, xs: list[float], ref: float | None) -> str:
    med = statistics.median(xs)
    ratio = f"{ref / med:9.1f}x" if ref else f"{'':>10}"
    return f"  {name:<52} {med * 1e3:10.3f} ms {p95(xs) * 1e3:10.3f} ms {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--files", type=int, default=300, help="source files per release")
    parser.add_argument("--size-mb", type=int, default=4, help="approximate size of a release tree")
    parser.add_argument("--checks", type=int, default=10, help="no-news checks to count")
    parser.add_argument("--copy-runs", type=int, default=20, help="runs of the (slow) copytree baseline")
    args = parser.parse_args()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="pinnacle-bench-swap-") as tmp_name:
        tmp = Path(tmp_name)
        keys, repo, install = tmp / "keys", tmp / "repo", tmp / "install"
        release_cli("keys", "init", str(keys), "--insecure-plaintext")
        release_cli("init", str(repo), "--keys", str(keys))
        sizes = {}
        for version in (V1, V2):
            src = tmp / f"src-{version}"
            sizes[version] = make_release(src, version, args.files, args.size_mb)
            release_cli(
                "publish",
                str(repo),
                "--keys",
                str(keys),
                "--channel",
                "stable",
                "--version",
                version,
                "--type",
                "patch",
                "--platform",
                "any",
                "--entry-point",
                "bin/app",
                str(src),
            )
        server = Server(repo)
        try:
            client_config.init(install, server.url, repo / "metadata" / "1.root.json", "stable", "any")
            ins = Installer(install)
            first = ins.install(V1)
            second = ins.install(V2)
            assert (first.slot, second.slot) == ("a", "b") and ins.status()["version"] == V2
            slot_files = sum(len(f) for _, _, f in os.walk(install / "slots" / "b"))

            # (b) a check when nothing is new
            checks = []
            for _ in range(args.checks):
                before = server.mark()
                t0 = time.perf_counter()
                result = ins.check()
                elapsed = time.perf_counter() - t0
                after = server.mark()
                assert not result.update_available, result
                record = ins.history(1)[0]
                assert record["op"] == "check"
                logged = [(p, c, server.body_bytes(p, c)) for p, c in server.requests_between(before, after - 1)]
                checks.append((elapsed, record["requests"], record["bytes"], logged))
            last_logged = checks[-1][3]

            # (a) the swap
            layout = ins.layout
            slots_cycle = iter(["a", "b"] * args.runs)
            symlink_times = timed(
                lambda: fsutil.atomic_symlink(layout.link_value(next(slots_cycle)), layout.current), args.runs
            )
            fsutil.atomic_symlink(layout.link_value("b"), layout.current)  # back where the state says
            assert ins.status()["needs_recovery"] is False

            inner: list[float] = []
            versions_seen: set[str | None] = set()

            def one_rollback() -> None:
                res = ins.rollback(force=True, reason="bench")
                inner.append(res.duration)
                versions_seen.add(res.version)

            rollback_times = timed(one_rollback, args.runs)
            assert versions_seen == {V1, V2}, versions_seen
            assert (install / "current" / "VERSION").read_text().strip() in (V1, V2)

            # baselines on the same tree
            release_tree = install / "slots" / "a"
            copies = tmp / "copies"
            copies.mkdir()
            copy_dest = copies / "restored"
            copy_times = timed(
                lambda: shutil.copytree(release_tree, copy_dest, symlinks=True),
                args.copy_runs,
                between=lambda: shutil.rmtree(copy_dest),
            )
            dirs = tmp / "dirs"
            (dirs / "x").mkdir(parents=True)
            names = iter(["x", "y"] * (args.runs + 1))
            state = {"cur": next(names)}

            def rename_dir() -> None:
                new = next(names)
                os.rename(dirs / state["cur"], dirs / new)
                fsutil.fsync_dir(dirs)
                state["cur"] = new

            rename_times = timed(rename_dir, args.runs)
        finally:
            server.stop()

    ref = statistics.median(copy_times)
    print(
        f"pinnacle swap benchmark: {args.runs} runs each; release trees of {slot_files} files, "
        f"{sizes[V1] / 2**20:.1f} MiB ({V1}) and {sizes[V2] / 2**20:.1f} MiB ({V2}); "
        f"installed {V1} ({first.bytes_downloaded / 2**20:.2f} MiB downloaded) then {V2} "
        f"({second.bytes_downloaded / 2**20:.2f} MiB)"
    )
    print()
    print(f"  {'switch (wall time per call)':<52} {'median':>13} {'p95':>13} {'copy/this':>10}")
    print(row("atomic_symlink flip of current (fsync'd)", symlink_times, ref))
    print(row("Installer.rollback(force=True), whole call", rollback_times, ref))
    print(row("  of which RollbackResult.duration", inner, ref))
    print(row("baseline: os.rename of a directory + fsync", rename_times, ref))
    print(row(f"baseline: shutil.copytree of the release, {args.copy_runs} runs", copy_times, None))
    print()
    times = [c[0] for c in checks]
    req = sorted({c[1] for c in checks})
    byts = sorted({c[2] for c in checks})
    srv_req = sorted({len(c[3]) for c in checks})
    srv_bytes = sorted({sum(b for _, _, b in c[3]) for c in checks})
    print(
        f"  check with nothing new ({args.checks} calls): median {statistics.median(times) * 1e3:.1f} ms, "
        f"p95 {p95(times) * 1e3:.1f} ms"
    )
    print(f"    client stats (history):  requests {'/'.join(map(str, req))}, bytes {'/'.join(map(str, byts))} B")
    print(
        f"    server log:              HTTP requests {'/'.join(map(str, srv_req))}, "
        f"body bytes {'/'.join(map(str, srv_bytes))} B"
    )
    for path, code, size in last_logged:
        print(f"      GET {path} -> {code}, {size} B")
    print(f"    for comparison: a full download of {V2} is {second.bytes_downloaded} B")
    print()
    print(f"total bench time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
