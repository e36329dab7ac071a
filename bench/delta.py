"""Delta benchmark (issues 4 and 23): bytes a client downloads, publish cost and client update cost, on real releases.

For each pair of consecutive releases of a public package (see ``bench/corpus.py``), measured in one run:

* full artifact: our ``full.tar.zst`` of the new release (canonical tar, zstd level 10);
* ours: ``pinnacle-release publish --deltas 1`` of the old release into a fresh repository, ``pinnacle-update``
  installs it over HTTP on 127.0.0.1, then the new release is published (delta length from the signed channel
  index; publish CPU and peak RSS; the publisher's ``--profile`` line) and the client updates to it (wall time and
  peak RSS; in-process time from its history record);
* ours again under ``--memory-budget 512M`` (issue 23, item 5): the delta's length and the publish's cost;
* every byte both clients read during the update, all included (TUF metadata, channel index, manifests, deltas;
  tufup's metadata and patch): counted per answer by the bench's own HTTP server (:class:`CountingServer`);
* whole-archive bsdiff4: ``bsdiff4.diff`` of the two canonical uncompressed tars (CPU, peak RSS);
* ``zstd -19 --long=31 --patch-from=OLD.tar NEW.tar`` (CPU, peak RSS);
* tufup 0.10.0 in its own venv: ``add_bundle`` + ``publish_changes`` for both releases (patch bytes, CPU and
  peak RSS of the second publish), then tufup's own ``Client`` updates from the old release over HTTP.

Every measured step is a child process; CPU is user+sys and peak RSS is ``ru_maxrss`` from ``os.wait4`` on it.

    .venv/bin/python bench/delta.py [--quick] [--write-doc] [--pairs requests,ruff] [--memory-budget 2GiB]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from corpus import CACHE, PAIRS, Pair, release_dir, tree_size  # noqa: E402

from pinnacle_updates.formats.delta_format import read_header  # noqa: E402
from pinnacle_updates.formats.delta_kinds import ContainerKind  # noqa: E402
from pinnacle_updates.formats.index import EntryType, Manifest  # noqa: E402
from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.artifact import build_artifact  # noqa: E402
from pinnacle_updates.repo_tools.keys import KeyStore, create_keys  # noqa: E402
from pinnacle_updates.repo_tools.serve import _Handler as _StaticHandler  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402

TUFUP_VERSION = "0.10.0"
TUFUP_VENV = CACHE / "tufup-venv"
CLIENT_VENV = CACHE / "client-venv"
DOC = ROOT / "docs" / "DELTA-BENCHMARK.md"
CHANNEL, PLATFORM = "stable", "linux-x86_64"
STEP_TIMEOUT = 1500.0
BSDIFF_LIMIT = 20 << 30
MiB = 1 << 20
ANCHOR_RATIO = 1.1
ANCHOR_SLACK = 2048
"""Issue 23, item 1: what a client downloads for an update (channel index included) is at most 1.1x the best plain
anchor, or that best + 2 KiB on tiny updates, whichever is larger."""
NATIVE_PAIRS = ("ruff", "numpy", "scipy")
"""Issue 23, item 3: the corpus's native-code pairs, where ours must be at most NATIVE_RATIO x tufup's bytes."""
NATIVE_RATIO = 0.6
IN_PROCESS_RATIO = 0.5
"""Issue 23: client update time after imports, both clients warm, at most 0.5x tufup's on every pair ..."""
WHOLE_PROCESS_RATIO = 0.25
WHOLE_PROCESS_MIN = 2.0
"""... and the whole process at most 0.25x tufup's where tufup's takes WHOLE_PROCESS_MIN seconds or more."""
BUDGET_CHECK = "512M"
BUDGET_RATIO = 1.25
"""Issue 23, item 5: the delta published under ``--memory-budget 512M`` at most 1.25x the unbounded one."""
PUBLISH_PEAK_RATIO = 0.6
"""Issue 23, item 4 (and issue 4): on the largest pair our publish peak RSS at most 0.6x whole-archive bsdiff4's."""

BSDIFF_CHILD = """
import sys, bsdiff4
old = open(sys.argv[1], "rb").read()
new = open(sys.argv[2], "rb").read()
open(sys.argv[3], "wb").write(bsdiff4.diff(old, new))
"""


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


@dataclass
class Run:
    """One measured child process."""

    wall: float
    cpu: float
    peak: int
    stdout: str
    stderr: str = ""

    def cost(self) -> str:
        return f"{self.wall:.1f} s / {self.cpu:.1f} s / {self.peak / MiB:.0f} MiB"


@dataclass
class Result:
    """Everything measured on one pair; ``None`` where a step was not run (with the reason in ``notes``)."""

    pair: Pair
    old_size: int = 0
    new_size: int = 0
    files: int = 0
    files_same: int = 0
    files_changed: int = 0
    files_new: int = 0
    full: int = 0
    ours_delta: int | None = None
    ours_kind: str = ""
    ours_bytes: int | None = None
    ours_path: str = ""
    ours_publish: Run | None = None
    ours_client: Run | None = None
    ours_client_duration: float | None = None
    bsdiff: int | None = None
    bsdiff_run: Run | None = None
    zstd: int | None = None
    zstd_run: Run | None = None
    tufup: int | None = None
    tufup_archive: int | None = None
    tufup_publish: Run | None = None
    tufup_client: Run | None = None
    tufup_client_bytes: int | None = None
    tufup_client_duration: float | None = None
    tufup_client_walls: list[float] = field(default_factory=list)
    ours_download: Download | None = None  # every byte of the measured update, as served (the last client run)
    tufup_download: Download | None = None
    ours_client_walls: list[float] = field(default_factory=list)
    ours_profile: str = ""  # the publisher's `profile:` line for the measured publish (--profile), if it has one
    budget_delta: int | None = None  # the delta published under --memory-budget BUDGET_CHECK (item 5)
    budget_publish: Run | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def best_anchor(self) -> tuple[str, int] | None:
        """The smallest plain anchor (issue 23): tufup's patch, whole-archive bsdiff4, zstd patch-from."""
        sizes = [(name, n) for name, n in (("tufup patch", self.tufup), ("bsdiff4 whole", self.bsdiff),
                                           ("zstd patch-from", self.zstd)) if n is not None]
        return min(sizes, key=lambda x: x[1]) if sizes else None

    @property
    def best_whole(self) -> int | None:
        sizes = [s for s in (self.bsdiff, self.zstd) if s is not None]
        return min(sizes) if sizes else None


def run_child(cmd: Sequence[str], what: str, cwd: Path | None = None, timeout: float = STEP_TIMEOUT) -> Run:
    """Run ``cmd`` to completion; wall seconds, user+sys CPU seconds and peak RSS of that child alone (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        killed = f" (killed after {timeout:.0f} s)" if wall >= timeout else ""
        raise BenchError(f"{what} exited {proc.returncode}{killed}: {' '.join(cmd)}\n{tail}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, stdout, stderr)


@dataclass
class Served:
    """One answered request: what was asked for and the bytes sent (``body``: the response body; ``wire``: status
    line, headers and body, everything the client read from the socket)."""

    path: str
    status: int
    body: int
    wire: int


def classify(path: str) -> str:
    """What a served path is, for the byte accounting: a TUF role (``root``, ``timestamp``, ``snapshot``,
    ``targets`` or ``delegated role``), or a target: the channel ``index``, a ``manifest``, a ``delta``, a ``full``
    artifact, tufup's ``patch`` or ``archive``; anything else is ``other``."""
    name = path.split("?", 1)[0].rstrip("/").rpartition("/")[2]
    if "/metadata/" in path or path.startswith("metadata/"):
        role = name.removesuffix(".json").split(".", 1)[-1] if name[:1].isdigit() else name.removesuffix(".json")
        return role if role in ("root", "timestamp", "snapshot", "targets") else "delegated role"
    for suffix, kind in ((".pdelta", "delta"), ("manifest.json.zst", "manifest"), ("index.json", "index"),
                         ("index.json.zst", "index"), ("full.tar.zst", "full"), (".patch", "patch"),
                         (".tar.gz", "archive")):
        if name.endswith(suffix):
            return kind
    return "other"


TARGET_KINDS = ("index", "manifest", "delta", "full", "patch", "archive", "other")


@dataclass
class Download:
    """Every byte one client update read from the server, by kind (:func:`classify`); 404 answers (a client
    probing for a newer root) count too."""

    requests: list[Served] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Body bytes of every answer (``Served.wire`` adds status lines and headers)."""
        return sum(r.body for r in self.requests)

    @property
    def targets(self) -> int:
        """The bytes of TUF targets (channel index, manifests, deltas, artifacts, tufup's patch), no TUF metadata:
        what the issue's item 1 counts ("channel index included")."""
        kinds = self.by_kind()
        return sum(kinds.get(k, 0) for k in TARGET_KINDS)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            kind = classify(r.path)
            out[kind] = out.get(kind, 0) + r.body
        return out

    def describe(self) -> str:
        """``timestamp 1,234 + ... = total`` in a fixed order, metadata first."""
        order = ["root", "timestamp", "snapshot", "targets", "delegated role", "index", "manifest", "delta", "patch",
                 "full", "archive", "other"]
        kinds = self.by_kind()
        parts = [f"{k} {kinds[k]:,}" for k in order if kinds.get(k)]
        return " + ".join(parts) + f" ({len(self.requests)} requests)"


class _CountingHandler(_StaticHandler):
    """The repository's static handler (``pinnacle-release serve``: same cache headers, ranges, 404s), counting
    the bytes of every answer into its server's ``served`` list."""

    server: CountingServer

    def setup(self) -> None:
        super().setup()
        self._wire = self._mark = 0
        raw = self.wfile
        handler = self

        class Counted:
            """The socket's write side, counting."""

            def write(self, data: bytes) -> int:
                handler._wire += len(data)
                return raw.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(raw, name)

        self.wfile = Counted()  # type: ignore[assignment]

    def end_headers(self) -> None:
        super().end_headers()  # flushes the status line and headers to wfile: what follows is the body
        self._mark = self._wire

    def parse_request(self) -> bool:
        # A request has been read: until its answer is recorded, take() waits for it (a client has its
        # last body before handle_one_request below records it).
        self._busy = True
        with self.server.lock:
            self.server.in_flight += 1
        return super().parse_request()

    def handle_one_request(self) -> None:
        self._wire = self._mark = 0
        self._busy = False
        try:
            super().handle_one_request()
        finally:
            with self.server.lock:
                if getattr(self, "command", None) and self._wire:
                    self.server.served.append(Served(self.path, self._status, self._wire - self._mark, self._wire))
                if self._busy:
                    self.server.in_flight -= 1
                    self.server.idle.notify_all()


class CountingServer(ThreadingHTTPServer):
    """The bench's HTTP server, in a thread of the bench: serves a repository directory on 127.0.0.1 like
    ``pinnacle-release serve`` and records every answer (:class:`Served`), so the byte figures are what the
    clients really read, metadata and index included."""

    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(directory)))
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.in_flight = 0
        self.served: list[Served] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"

    def take(self) -> Download:
        """What was served since the last call (and forget it), once every answer begun is recorded."""
        with self.lock:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=10)
            out, self.served = self.served, []
        return Download(out)

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> CountingServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


Server = CountingServer


# ---------------------------------------------------------------------------------------------------- tools


def ensure_zstd() -> str:
    """Path of the zstd CLI, installed with apt-get (Debian package ``zstd``) when missing and we are root."""
    found = shutil.which("zstd")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("zstd CLI missing: apt-get install -y zstd", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "zstd"], check=True)
        found = shutil.which("zstd")
        if found:
            return found
    raise SystemExit("the zstd CLI is needed: run `apt-get update && apt-get install -y zstd` (as root)")


def ensure_tufup() -> Path:
    """The python of the bench's own venv with tufup (created and filled with pip on first use)."""
    python = TUFUP_VENV / "bin" / "python"
    if python.exists() and _tufup_version(python) == TUFUP_VERSION:
        return python
    print(f"creating {TUFUP_VENV} with tufup=={TUFUP_VERSION}", flush=True)
    if TUFUP_VENV.exists():
        shutil.rmtree(TUFUP_VENV)
    subprocess.run(["python3", "-m", "venv", str(TUFUP_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"tufup=={TUFUP_VERSION}"], check=True)
    if _tufup_version(python) != TUFUP_VERSION:
        raise SystemExit(f"tufup {TUFUP_VERSION} did not install into {TUFUP_VENV}")
    return python


def ensure_client() -> Path:
    """``pinnacle-update`` as a user installs it, like tufup in its own venv: this tree installed with pip (not
    editable: runtime dependencies only, modules byte-compiled) into ``bench/.cache/client-venv``, reinstalled at
    every run so that it is the code measured. The development venv would add its editable-install finder and the
    test tools' packages (httpx imports its optional command-line client when ``rich`` is there) to every start."""
    python = CLIENT_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {CLIENT_VENV} with this tree and its dependencies", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CLIENT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", str(ROOT)],
                   check=True)
    script = CLIENT_VENV / "bin" / "pinnacle-update"
    if not script.exists():
        raise SystemExit(f"{script} missing after pip install")
    return script


def _tufup_version(python: Path) -> str:
    proc = subprocess.run([str(python), "-c", "import tufup; print(tufup.__version__)"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def publish_options() -> set[str]:
    """The options of this checkout's ``pinnacle-release publish`` that the bench may use (``--deltas``: the
    publish-side delta work has landed; ``--profile``: it prints where its time went)."""
    proc = subprocess.run([sys.executable, "-m", "pinnacle_updates.repo_tools", "publish", "--help"], cwd=ROOT,
                          capture_output=True,
                          text=True)
    return {flag for flag in ("--deltas", "--profile") if flag in proc.stdout}


def profile_line(run: Run) -> str:
    """The ``profile:`` line the publisher printed on stderr (``--profile``), or ""."""
    return next((line.strip() for line in run.stderr.splitlines() if line.startswith("profile:")), "")


# ---------------------------------------------------------------------------------------------------- steps


def compare_manifests(old: Manifest, new: Manifest, result: Result) -> None:
    """Count the new release's files that are unchanged (same sha256 anywhere in old), changed in place, or new."""
    old_files = {e.path: e.sha256 for e in old.entries if e.type is EntryType.FILE}
    old_hashes = set(old_files.values())
    for entry in new.entries:
        if entry.type is not EntryType.FILE:
            continue
        result.files += 1
        if entry.sha256 in old_hashes:
            result.files_same += 1
        elif entry.path in old_files:
            result.files_changed += 1
        else:
            result.files_new += 1


def measure_whole_archive(old_tar: Path, new_tar: Path, work: Path, zstd: str, result: Result) -> None:
    """bsdiff4 and zstd patch-from on the two canonical uncompressed tars."""
    old_len, new_len = old_tar.stat().st_size, new_tar.stat().st_size
    estimate = 17 * old_len + new_len
    if estimate > BSDIFF_LIMIT:
        result.notes.append(f"bsdiff4 whole-archive skipped: needs about {estimate / 2**30:.1f} GiB (> 20 GiB)")
    else:
        out = work / "whole.bsdiff4"
        result.bsdiff_run = run_child([sys.executable, "-c", BSDIFF_CHILD, str(old_tar), str(new_tar), str(out)],
                                      "bsdiff4 whole-archive")
        result.bsdiff = out.stat().st_size
        out.unlink()
    out = work / "whole.zst-patch"
    result.zstd_run = run_child([zstd, "-q", "-f", "-19", "--long=31", f"--patch-from={old_tar}", str(new_tar),
                                 "-o", str(out)], "zstd --patch-from")
    result.zstd = out.stat().st_size
    out.unlink()


def measure_tufup(python: Path, pair: Pair, old_dir: Path, new_dir: Path, work: Path, result: Result,
                  client_runs: int) -> None:
    """tufup publishes both releases (the second one measured), then its client updates old -> new over HTTP
    (``client_runs`` times, each in a fresh client directory; the median is kept)."""
    driver = str(BENCH / "tufup_driver.py")
    work.mkdir()
    run_child([str(python), driver, "init", str(work)], "tufup init")
    run_child([str(python), driver, "add", str(work), pair.old, str(old_dir)], f"tufup publish {pair.old}")
    result.tufup_publish = run_child([str(python), driver, "add", str(work), pair.new, str(new_dir)],
                                     f"tufup publish {pair.new}")
    targets = work / "repo" / "targets"
    patch = targets / f"bench-{pair.new}.patch"
    if not patch.exists():
        raise BenchError(f"tufup wrote no patch {patch.name}: {sorted(p.name for p in targets.iterdir())}")
    result.tufup = patch.stat().st_size
    result.tufup_archive = (targets / f"bench-{pair.new}.tar.gz").stat().st_size

    durations: list[float] = []
    runs: list[Run] = []
    with Server(work / "repo") as server:
        for n in range(client_runs):
            # A client as tufup leaves it after installing the old release: trusted root, the old archive cached.
            client = work / f"client{n}"
            (client / "metadata").mkdir(parents=True)
            (client / "targets").mkdir()
            shutil.copyfile(work / "repo" / "metadata" / "root.json", client / "metadata" / "root.json")
            shutil.copyfile(targets / f"bench-{pair.old}.tar.gz", client / "targets" / f"bench-{pair.old}.tar.gz")
            server.take()
            run = run_child([str(python), driver, "update", str(work), server.url, pair.old, client.name],
                            "tufup client update")
            result.tufup_download = server.take()
            report = json.loads(run.stdout.strip().splitlines()[-1])
            runs.append(run)
            durations.append(float(report["seconds"]))
            result.tufup_client_bytes = int(report["bytes"])
            if not all(name.endswith(".patch") for name in report["targets"]):
                result.notes.append(f"tufup client took {sorted(report['targets'])}, not its patch")
            _check_tree(client / "app", new_dir, "tufup client")
            shutil.rmtree(client)
    result.tufup_client, result.tufup_client_walls = median_run(runs), [r.wall for r in runs]
    result.tufup_client_duration = statistics.median(durations)


def median_run(runs: Sequence[Run]) -> Run:
    """The run of median wall time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.wall)[(len(runs) - 1) // 2]


def _check_tree(installed: Path, expected: Path, who: str) -> None:
    """Every regular file of the release is in ``installed`` with the same sha256 (extra links, e.g. persistent
    ``data/`` links of a slot, are allowed; an extra regular file is not)."""

    def files(root: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        base = root.resolve()
        for top, _, names in os.walk(base):
            for name in names:
                path = Path(top) / name
                if path.is_file() and not path.is_symlink():
                    with open(path, "rb") as f:
                        out[path.relative_to(base).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
        return out

    got, want = files(installed), files(expected)
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise BenchError(f"{who} installed a tree that differs from the release ({installed}): {diff}")


class Publisher:
    """A fresh repository of ours and the command that publishes a release into it with deltas."""

    def __init__(self, work: Path, options: Sequence[str]) -> None:
        self.keys, self.repo_dir = work / "keys", work / "repo"
        create_keys(self.keys, passphrase=None)
        self.repo = Repository(self.repo_dir)
        ops.init_repository(self.repo, KeyStore(self.keys))
        self.options = list(options)

    def publish(self, version: str, source: Path) -> Run:
        return run_child([sys.executable, "-m", "pinnacle_updates.repo_tools", "publish", str(self.repo_dir),
                          "--keys", str(self.keys), "--channel", CHANNEL, "--version", version, "--type", "minor",
                          "--platform", PLATFORM, *self.options, "--json", str(source)],
                         f"pinnacle-release publish {version} {' '.join(self.options)}", cwd=ROOT)

    def delta_length(self, base: str) -> int | None:
        """The signed length of the newest release's delta from ``base`` (None: none was listed)."""
        delta = self.repo.channel_index(self.repo.load(), CHANNEL).releases[-1].delta_from(base)
        return delta.target.length if delta is not None else None


def measure_budget(pair: Pair, old_dir: Path, new_dir: Path, work: Path, result: Result, options: set[str]) -> None:
    """Item 5: the same two publishes into another fresh repository under ``--memory-budget 512M`` (the delta's
    length, and the second publish's cost)."""
    publisher = Publisher(work, ["--deltas", "1", "--memory-budget", BUDGET_CHECK,
                                 *(["--profile"] if "--profile" in options else [])])
    publisher.publish(pair.old, old_dir)
    result.budget_publish = publisher.publish(pair.new, new_dir)
    result.budget_delta = publisher.delta_length(pair.old)


def measure_ours(pair: Pair, old_dir: Path, new_dir: Path, work: Path, result: Result, options: set[str],
                 memory_budget: str | None, client_runs: int, client: Path) -> None:
    """Publish both releases with deltas into a fresh repository, then update a client over HTTP (``client_runs``
    times, each a fresh client directory; the median is kept)."""
    extra = ["--deltas", "1"] if "--deltas" in options else []
    if memory_budget:
        extra += ["--memory-budget", memory_budget]
    if "--profile" in options:
        extra.append("--profile")
    publisher = Publisher(work, extra)
    repo, repo_dir, publish = publisher.repo, publisher.repo_dir, publisher.publish
    publish(pair.old, old_dir)
    runs: list[Run] = []
    durations: list[float] = []
    with Server(repo_dir) as server:
        # Each client installs the old release while it is the newest, as a user's would have, so the measured
        # update fetches what a real one does: new TUF metadata, the channel index, then the delta.
        # Twice as many: the command line's updates (whole process), then the warm in-process ones.
        clients = [_ours_client_prepare(client, pair, repo_dir, server.url, work / f"client{n}")
                   for n in range(2 * client_runs)]
        result.ours_publish = publish(pair.new, new_dir)
        result.ours_profile = profile_line(result.ours_publish)
        _describe_delta(repo, pair, result)
        for cmd in clients[:client_runs]:
            run, last = _ours_client_update(cmd, pair, server, new_dir, result)
            runs.append(run)
            result.ours_bytes = int(last["bytes"])
            result.ours_path = _describe_path(last)
            shutil.rmtree(Path(cmd[2]))
        for cmd in clients[client_runs:]:
            durations.append(_ours_in_process(cmd, client, pair, new_dir))
            shutil.rmtree(Path(cmd[2]))
        server.take()
    result.ours_client, result.ours_client_walls = median_run(runs), [r.wall for r in runs]
    result.ours_client_duration = statistics.median(durations)


def _ours_in_process(cmd: list[str], script: Path, pair: Pair, new_dir: Path) -> float:
    """One update timed in-process, warm (``bench/ours_driver.py`` in the client venv, through the public API);
    its seconds. The installed slot is checked against the release's files."""
    install_dir = Path(cmd[2])
    run = run_child([str(script.parent / "python"), str(BENCH / "ours_driver.py"), str(install_dir)],
                    f"ours_driver update to {pair.new}", cwd=install_dir.parent)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    if report.get("version") != pair.new:
        raise BenchError(f"ours_driver installed {report.get('version')}, not {pair.new}")
    _check_tree(install_dir / "current", new_dir, "pinnacle-update (in-process)")
    return float(report["seconds"])


def _describe_delta(repo: Repository, pair: Pair, result: Result) -> None:
    """The published delta's size and kind (from its header) into ``result``."""
    release = repo.channel_index(repo.load(), CHANNEL).releases[-1]
    result.full = release.full.length
    delta = release.delta_from(pair.old)
    if delta is None:
        result.notes.append("ours: the publisher listed no delta from the old release (not clearly smaller?)")
        return
    result.ours_delta = delta.target.length
    with open(repo.target_location(delta.target.path, delta.target.sha256), "rb") as f:
        header = read_header(f)
    match header.kind:
        case ContainerKind.WHOLE_ARCHIVE:
            kind = "whole-archive"
        case ContainerKind.WHOLE_ARCHIVE_BSDIFF4:
            kind = f"whole-archive bsdiff4 (patch {header.archive_bsdiff4 or 0:,} B)"
        case ContainerKind.SOLID:
            kind = f"solid (LZMA stream {header.solid or 0:,} B)"
        case ContainerKind.SHARED:
            kind = (f"per-file ({len(header.ops)} ops; bsdiff blocks in shared streams, "
                    f"{sum(header.shared or ()):,} B)")
        case ContainerKind.PER_FILE:
            kind = f"per-file ({len(header.ops)} ops)"
    if header.manifest is not None and header.manifest.length is None:
        manifest = f"read from the rebuilt tar (signed manifest {release.manifest.length:,} B)"
    elif header.kind is ContainerKind.SOLID:
        manifest = f"skeleton patch {header.manifest_length:,} B (signed manifest {release.manifest.length:,} B)"
    else:
        manifest = f"patch {header.manifest_length:,} B of {release.manifest.length:,}"
    result.ours_kind = f"{kind}; manifest {manifest}"


def _ours_client_prepare(script: Path, pair: Pair, repo_dir: Path, url: str, install_dir: Path) -> list[str]:
    """A fresh client (``script`` is the installed ``pinnacle-update``, run outside the source tree) that installs
    the old release (full); its command prefix."""
    client = [str(script), "--install-dir", str(install_dir)]
    cwd = install_dir.parent
    run_child([*client, "init", "--repo", url, "--root", str(repo_dir / "metadata" / "1.root.json"),
               "--channel", CHANNEL, "--platform", PLATFORM], "pinnacle-update init", cwd=cwd)
    run_child([*client, "install", pair.old, "--json"], f"pinnacle-update install {pair.old}", cwd=cwd)
    return client


def _ours_client_update(client: list[str], pair: Pair, server: CountingServer, new_dir: Path,
                        result: Result) -> tuple[Run, dict[str, Any]]:
    """The client updates to the new release (measured: time, and every byte the server sent it into
    ``result.ours_download``); the update's history record. The installed slot is checked against the release's
    files."""
    cwd = Path(client[2]).parent
    server.take()
    run = run_child([*client, "install", "--json"], f"pinnacle-update install {pair.new}", cwd=cwd)
    result.ours_download = server.take()
    history = json.loads(run_child([*client, "history", "--json"], "pinnacle-update history", cwd=cwd).stdout)
    records = history if isinstance(history, list) else history.get("records", history.get("history", []))
    last = next((r for r in reversed(records) if r.get("version") == pair.new and r.get("outcome") == "committed"),
                None)
    if last is None:
        raise BenchError(f"pinnacle-update history has no committed install of {pair.new}: {records[-3:]}")
    status = json.loads(run_child([*client, "status", "--json"], "pinnacle-update status", cwd=cwd).stdout)
    if status.get("version") != pair.new:
        raise BenchError(f"pinnacle-update status shows {status.get('version')}, not {pair.new}")
    _check_tree(Path(status.get("current") or Path(client[2]) / "current"), new_dir, "pinnacle-update")
    return run, last


def _describe_path(record: dict[str, Any]) -> str:
    """What the history record says about the path taken (delta, chain, full, fallback)."""
    keys = [k for k in record if any(w in k for w in ("path", "delta", "fallback", "via", "saved", "plan"))]
    return ", ".join(f"{k}={record[k]}" for k in sorted(keys)) or "(history names no path)"


def measure_pair(pair: Pair, tmp: Path, zstd: str, tufup: Path, options: set[str], memory_budget: str | None,
                 client_runs: int, client: Path) -> Result:
    """Every measurement of one pair, in a scratch directory removed afterwards."""
    result = Result(pair)
    old_dir, new_dir = release_dir(pair, pair.old), release_dir(pair, pair.new)
    result.old_size, result.new_size = tree_size(old_dir), tree_size(new_dir)
    work = tmp / pair.id
    work.mkdir()
    try:
        print(f"== {pair.label}: canonical tars and full artifacts", flush=True)
        old_art = build_artifact(old_dir, work / "old-art", pair.old, keep_tar=True)
        new_art = build_artifact(new_dir, work / "new-art", pair.new, keep_tar=True)
        assert old_art.tar_path and new_art.tar_path
        result.full = new_art.full_length
        compare_manifests(old_art.manifest, new_art.manifest, result)
        print(f"== {pair.label}: whole-archive bsdiff4 and zstd --patch-from", flush=True)
        measure_whole_archive(old_art.tar_path, new_art.tar_path, work, zstd, result)
        shutil.rmtree(work / "old-art")
        shutil.rmtree(work / "new-art")
        print(f"== {pair.label}: tufup {TUFUP_VERSION}", flush=True)
        measure_tufup(tufup, pair, old_dir, new_dir, work / "tufup", result, client_runs)
        shutil.rmtree(work / "tufup")
        if "--deltas" in options:
            print(f"== {pair.label}: ours", flush=True)
            measure_ours(pair, old_dir, new_dir, work / "ours", result, options, memory_budget, client_runs, client)
            shutil.rmtree(work / "ours")
            print(f"== {pair.label}: ours under --memory-budget {BUDGET_CHECK}", flush=True)
            measure_budget(pair, old_dir, new_dir, work / "budget", result, options)
        else:
            result.notes.append("ours NOT MEASURED: `pinnacle-release publish` has no --deltas yet")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------------- report


def _ratio(part: int | float | None, whole: int | float | None, digits: int = 3) -> str:
    return f"{part / whole:.{digits}f}" if part is not None and whole else "n/a"


def _bytes(n: int | None, full: int) -> str:
    return f"{n:,} ({_ratio(n, full)})" if n is not None else "n/a"


def _total(d: Download | None) -> int | None:
    return d.total if d is not None else None


def _kinds(d: Download | None) -> str:
    return d.describe() if d is not None else "n/a"


def _anchor(r: Result) -> str:
    best = r.best_anchor
    return f"{best[1]:,} ({best[0]})" if best else "n/a"


def _num(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "n/a"


def _cost(run: Run | None) -> str:
    return run.cost() if run is not None else "n/a"


def _client(run: Run | None, walls: Sequence[float]) -> str:
    if run is None:
        return "n/a"
    every = ", ".join(f"{w:.2f}" for w in walls)
    return f"{run.wall:.2f} s ({every}) / {run.cpu:.2f} s / {run.peak / MiB:.0f} MiB"


def table(results: Sequence[Result]) -> str:
    """One markdown table: a row per measurement, a column per pair."""
    rows: list[tuple[str, list[str]]] = [
        ("change", [r.pair.kind for r in results]),
        ("unpacked old -> new (MiB)", [f"{r.old_size / MiB:.1f} -> {r.new_size / MiB:.1f}" for r in results]),
        ("files: same / changed / new", [f"{r.files_same} / {r.files_changed} / {r.files_new}" for r in results]),
        ("full artifact (full.tar.zst) bytes", [f"{r.full:,}" for r in results]),
        ("**ours: all-included client bytes** (/full)", [_bytes(_total(r.ours_download), r.full) for r in results]),
        ("ours: all-included, by kind (bodies as served)", [_kinds(r.ours_download) for r in results]),
        ("**tufup: all-included client bytes** (/full)", [_bytes(_total(r.tufup_download), r.full)
                                                          for r in results]),
        ("tufup: all-included, by kind (bodies as served)", [_kinds(r.tufup_download) for r in results]),
        ("**all-included ours / tufup**", [_ratio(_total(r.ours_download), _total(r.tufup_download))
                                           for r in results]),
        ("best plain anchor (tufup patch, bsdiff4 whole, zstd patch-from): bytes", [_anchor(r) for r in results]),
        ("ours: client downloaded bytes, targets only (history) (/full)", [_bytes(r.ours_bytes, r.full)
                                                                           for r in results]),
        ("ours: delta target bytes (/full)", [_bytes(r.ours_delta, r.full) for r in results]),
        ("ours: delta kind; manifest inside it", [r.ours_kind or "n/a" for r in results]),
        ("bsdiff4 whole-archive bytes (/full)", [_bytes(r.bsdiff, r.full) for r in results]),
        ("zstd -19 --long=31 --patch-from bytes (/full)", [_bytes(r.zstd, r.full) for r in results]),
        ("tufup 0.10.0 patch bytes (/full)", [_bytes(r.tufup, r.full) for r in results]),
        ("tufup full archive (.tar.gz) bytes", [f"{r.tufup_archive:,}" if r.tufup_archive else "n/a"
                                                for r in results]),
        ("**ours / tufup bytes**", [_ratio(r.ours_bytes, r.tufup) for r in results]),
        ("publish wall / CPU / peak RSS: ours", [_cost(r.ours_publish) for r in results]),
        ("ours: where the publish time went (`--profile`)", [f"`{r.ours_profile}`" if r.ours_profile else "n/a"
                                                             for r in results]),
        (f"ours under --memory-budget {BUDGET_CHECK}: delta bytes (/ unbounded)",
         [f"{r.budget_delta:,} ({_ratio(r.budget_delta, r.ours_delta)})" if r.budget_delta is not None else "n/a"
          for r in results]),
        (f"ours under --memory-budget {BUDGET_CHECK}: publish wall / CPU / peak RSS",
         [_cost(r.budget_publish) for r in results]),
        ("publish wall / CPU / peak RSS: bsdiff4 whole", [_cost(r.bsdiff_run) for r in results]),
        ("publish wall / CPU / peak RSS: zstd patch-from", [_cost(r.zstd_run) for r in results]),
        ("publish wall / CPU / peak RSS: tufup", [_cost(r.tufup_publish) for r in results]),
        ("client update wall (median; all runs) / CPU / peak RSS: ours",
         [_client(r.ours_client, r.ours_client_walls) for r in results]),
        ("client update wall (median; all runs) / CPU / peak RSS: tufup",
         [_client(r.tufup_client, r.tufup_client_walls) for r in results]),
        ("client update in-process s (median): ours / tufup", [f"{_num(r.ours_client_duration)} / "
                                                      f"{_num(r.tufup_client_duration)}" for r in results]),
        ("**ours / tufup client time in-process**", [_ratio(r.ours_client_duration, r.tufup_client_duration, 2)
                                                     for r in results]),
        ("**ours / tufup client time whole process**", [_ratio(r.ours_client.wall if r.ours_client else None,
                                                 r.tufup_client.wall if r.tufup_client else None, 2)
                                          for r in results]),
        ("ours: path in history", [r.ours_path or "n/a" for r in results]),
    ]
    head = "| | " + " | ".join(r.pair.label for r in results) + " |"
    sep = "|---|" + "---|" * len(results)
    body = [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join([head, sep, *body])


def goals(results: Sequence[Result]) -> tuple[list[str], bool]:
    """Issue 23's goals, PASS/FAIL each with the figures; True only when every one passes. (They replace issue 4's
    goals, as the issue says.)"""
    lines: list[str] = []
    verdicts: list[bool | None] = []
    Check = tuple[str, bool | None, str]

    def verdict(name: str, checks: list[Check]) -> None:
        known = [ok for _, ok, _ in checks]
        ok = None if not checks or any(v is None for v in known) else all(known)
        verdicts.append(ok)
        lines.append(f"- {name}: **{'PASS' if ok else 'NOT MEASURED' if ok is None else 'FAIL'}**")
        for label, one, detail in checks:
            lines.append(f"  - {label}: {'ok' if one else 'n/a' if one is None else 'FAIL'} ({detail})")

    def unmeasured(r: Result) -> Check:
        return r.pair.label, None, "not measured"

    def never_worse(r: Result) -> Check:
        best = r.best_anchor
        if r.ours_download is None or best is None:
            return unmeasured(r)
        ours = r.ours_download.targets
        limit = max(int(ANCHOR_RATIO * best[1]), best[1] + ANCHOR_SLACK)
        return r.pair.label, ours <= limit, (f"index + manifest + delta {ours:,} B; limit max({ANCHOR_RATIO}x, "
                                             f"+ {ANCHOR_SLACK} B) of {best[0]} {best[1]:,} = {limit:,}")

    def native(r: Result) -> Check:
        ours, theirs = _total(r.ours_download), _total(r.tufup_download)
        if ours is None or theirs is None:
            return unmeasured(r)
        return r.pair.label, ours <= NATIVE_RATIO * theirs, (f"all-included {ours:,} B vs tufup's {theirs:,} B = "
                                                             f"{ours / theirs:.3f}x, limit {NATIVE_RATIO}x")

    def in_process(r: Result) -> Check:
        ours, theirs = r.ours_client_duration, r.tufup_client_duration
        if not ours or not theirs:
            return unmeasured(r)
        return r.pair.label, ours <= IN_PROCESS_RATIO * theirs, (f"{ours:.3f} s vs {theirs:.3f} s = "
                                                                 f"{ours / theirs:.2f}x, limit {IN_PROCESS_RATIO}x")

    def whole_process(r: Result) -> Check:
        if r.ours_client is None or r.tufup_client is None:
            return unmeasured(r)
        ours, theirs = r.ours_client.wall, r.tufup_client.wall
        return r.pair.label, ours <= WHOLE_PROCESS_RATIO * theirs, (f"{ours:.2f} s vs {theirs:.2f} s = "
                                                                    f"{ours / theirs:.2f}x, limit "
                                                                    f"{WHOLE_PROCESS_RATIO}x")

    def publish_cpu(r: Result) -> Check:
        if r.ours_publish is None or r.tufup_publish is None:
            return unmeasured(r)
        ours, theirs = r.ours_publish.cpu, r.tufup_publish.cpu
        return r.pair.label, ours <= theirs, f"{ours:.1f} s vs {theirs:.1f} s = {ours / theirs:.2f}x, limit 1x"

    def budget(r: Result) -> Check:
        if r.budget_delta is None or r.ours_delta is None:
            return unmeasured(r)
        ratio = r.budget_delta / r.ours_delta
        peak = f", peak RSS {r.budget_publish.peak / MiB:.0f} MiB" if r.budget_publish else ""
        return r.pair.label, ratio <= BUDGET_RATIO, (f"{r.budget_delta:,} B vs {r.ours_delta:,} B unbounded = "
                                                     f"{ratio:.3f}x, limit {BUDGET_RATIO}x{peak}")

    verdict(f"D1 (item 1) every pair: index + manifest + delta <= max({ANCHOR_RATIO}x best plain anchor, "
            f"best + {ANCHOR_SLACK} B)", [never_worse(r) for r in results])
    natives = [r for r in results if r.pair.id in NATIVE_PAIRS]
    if natives:
        verdict(f"D3 (item 3) native pairs: all-included bytes <= {NATIVE_RATIO}x tufup's",
                [native(r) for r in natives])
    verdict(f"C1 every pair: client update in-process <= {IN_PROCESS_RATIO}x tufup's",
            [in_process(r) for r in results])
    slow = [r for r in results if r.tufup_client is not None and r.tufup_client.wall >= WHOLE_PROCESS_MIN]
    if slow:
        verdict(f"C2 pairs where tufup's client takes >= {WHOLE_PROCESS_MIN:.0f} s: whole process <= "
                f"{WHOLE_PROCESS_RATIO}x tufup's", [whole_process(r) for r in slow])
    verdict("D4 (item 4) every pair: publish CPU <= tufup's", [publish_cpu(r) for r in results])
    largest = max(results, key=lambda r: r.new_size)
    if largest.ours_publish is None or largest.bsdiff_run is None:
        mem = unmeasured(largest)
    else:
        ratio = largest.ours_publish.peak / largest.bsdiff_run.peak
        mem = (largest.pair.label, ratio <= PUBLISH_PEAK_RATIO,
               f"{largest.ours_publish.peak / MiB:.0f} MiB vs {largest.bsdiff_run.peak / MiB:.0f} MiB = "
               f"{ratio:.2f}x, limit {PUBLISH_PEAK_RATIO}x")
    verdict(f"D4 (item 4) largest pair: publish peak RSS <= {PUBLISH_PEAK_RATIO}x whole-archive bsdiff4's", [mem])
    verdict(f"D5 (item 5) every pair: delta under --memory-budget {BUDGET_CHECK} <= {BUDGET_RATIO}x the unbounded one",
            [budget(r) for r in results])
    return lines, all(v is True for v in verdicts)


def machine() -> str:
    """nproc, RAM and CPU model of this machine."""
    ram = 0
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {ram / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}"


def versions(zstd: str, tufup: Path) -> str:
    """Versions of everything measured."""
    from importlib.metadata import version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "absent"

    zstd_v = subprocess.run([zstd, "--version"], capture_output=True, text=True).stdout.strip(" *\n").split(",")[0]
    tuf_side = subprocess.run([str(tufup), "-c", "import importlib.metadata as m; print(' '.join(f'{p} '"
                               "+ m.version(p) for p in ('tufup', 'bsdiff4', 'tuf')))"],
                              capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    commit += " (with uncommitted changes)" if dirty else ""
    return (f"pinnacle-updates {commit}; Python {platform.python_version()}; bsdiff4 {pkg('bsdiff4')}, "
            f"pyzstd {pkg('pyzstd')}, zstandard {pkg('zstandard')}; {zstd_v}; tufup venv: {tuf_side}")


MEASURED = """\
## What was measured

- **Corpus**: consecutive releases downloaded with `pip download --no-deps --only-binary=:all:` (CPython 3.11,
  manylinux2014 x86_64 wheels) or `npm pack`, unpacked (a wheel is a zip; an npm package a tgz) into directories
  that play the role of build output. `bench/corpus.py` lists the pairs. Files are counted as *same* when their
  sha256 occurs anywhere in the old release (renamed `*.dist-info/` folders included).
- **Full artifact**: the new release's `full.tar.zst` as the publisher signs it (canonical tar, zstd level 10).
  All "/full" ratios divide by it.
- **Ours**: a fresh repository; `pinnacle-release publish --deltas 1` of the old then the new release (CLI from the
  development venv, child process, default `--jobs 2` and `--memory-budget 2G`; the *second* publish is measured:
  wall time, user+sys CPU of all its threads and peak RSS, which include building the full artifact, the manifest and
  the delta, and signing; with two jobs the wall time is below the CPU time). Delta size is the signed
  `deltas[].length` of the channel index. The client (installed, see below): `pinnacle-update init` against the
  repository served on 127.0.0.1, `install OLD` while the old release is the newest, then (after the new publish)
  `install` (measured: wall time
  and peak RSS of that process, from start to exit, which covers TUF refresh, download, delta apply into the inactive
  slot, per-file and manifest verification, swap and commit). "client downloaded bytes" is the `bytes` of that
  install in `pinnacle-update history --json` (target bytes: the delta, which carries the new manifest as a patch of
  the installed one or, whole-archive, rebuilds it from the target tar; or the signed manifest plus the artifact; not
  TUF metadata). "all-included" is every response body the bench's server (`pinnacle-release serve`'s handler, in
  a thread of the bench, counting; issue 23) sent during the measured update, by kind: TUF roles (a 404 for the next
  root included), channel index, manifest, delta; tufup's client, prepared with only `root.json`, likewise.
  A1 checks index + manifest + delta, A1+ everything, against the best of tufup's patch, whole-archive bsdiff4 and
  zstd patch-from. "delta kind" is read from the published delta's header: per-file ops (bsdiff blocks perhaps in
  shared streams), one whole-archive zstd patch-from frame, or one solid LZMA stream (the publisher keeps the smallest).
- **bsdiff4 whole-archive**: `bsdiff4.diff(old_tar, new_tar)` on the two canonical uncompressed tars, in a child
  process (wall, CPU, peak RSS). **zstd**: `zstd -19 --long=31 --patch-from=OLD.tar NEW.tar` (CLI, one thread).
  "best whole-archive delta" in G1 is the smaller of the two.
- **tufup 0.10.0**, installed by the bench in its own venv (`bench/.cache/tufup-venv`, with tufup's pinned
  dependencies: tuf 4.0, bsdiff4 1.2). `bench/tufup_driver.py` calls tufup's API as its CLI does:
  `Repository(...).initialize()`, then per release `Repository.from_config()`, `add_bundle(dir, version)`,
  `publish_changes([keys])` (tar.gz of the bundle, bsdiff4 patch of the two *uncompressed* tars, signing). The
  second publish is measured (wall, CPU, peak RSS; one thread). Patch bytes = the `.patch` target. The client is
  tufup's own `tufup.client.Client` (a subclass of python-tuf's Updater) in a fresh process, prepared as tufup leaves it
  after installing the old release (trusted `root.json`, old `.tar.gz` in its target dir); it runs
  `check_for_updates()` and `download_and_apply_update()` over HTTP from the same static server: TUF refresh,
  patch download, gunzip of the old archive, `bsdiff4.patch` in memory, size+sha256 check of the tar, gzip
  re-compression, extraction; the install step (tufup ships only Windows/macOS scripts) moves the extracted files
  into the app directory. Wall time and peak RSS of that process are reported. Both clients' installed trees are
  checked file by file (sha256) against the new release after the update.
- Every measured command is a separate child process; CPU = `ru_utime + ru_stime` and peak = `ru_maxrss` of that
  process from `os.wait4`. Wall times include interpreter start-up for both clients alike, and both clients run
  as their users install them: tufup from its venv, `pinnacle-update` from `bench/.cache/client-venv`, where the
  bench pip-installs this tree (not editable; runtime dependencies only; byte-compiled) at the start of each run.
  Each client update runs `--client-runs` times (default 3), each in a fresh client directory; the table keeps the
  median and lists all. "in-process" is the time after imports, both clients warm: for ours
  `bench/ours_driver.py` (in the client venv, on as many other fresh clients) imports every client and formats
  module, then times `AutoUpdater(dir).install()` (the public API the CLI and the agent call: TUF refresh to
  commit); for tufup its driver's timer around `check_for_updates()` and `download_and_apply_update()`, after
  importing `tufup.client`.
- **Under a memory budget** (issue 23, item 5): both releases are published again into another fresh repository with
  `--memory-budget 512M`; the delta's signed length is compared with the unbounded one (the default budget, 2G).
- **Where the publish time went**: the measured publish runs with `--profile`; its one `profile:` line (stderr) is
  copied into the table as printed.
"""


ANALYSIS_MARK = "<!-- analysis: written by hand, kept by --write-doc -->"


def write_doc(results: Sequence[Result], lines: list[str], info: str, elapsed: float, load: str) -> None:
    """docs/DELTA-BENCHMARK.md: date, machine, versions, the table, the goals, the method; a hand-written analysis
    after ``ANALYSIS_MARK`` in the existing file is kept as it is."""
    kept = ""
    if DOC.exists() and ANALYSIS_MARK in DOC.read_text():
        kept = DOC.read_text().split(ANALYSIS_MARK, 1)[1].strip("\n")
    notes = [f"- {r.pair.label}: {n}" for r in results for n in r.notes]
    text = "\n".join([
        "# Delta benchmark",
        "",
        "Generated by `.venv/bin/python bench/delta.py --write-doc`: everything above *Analysis* is rewritten by each",
        "run; the *Analysis* section is written by hand and kept.",
        "",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} (run took {elapsed / 60:.1f} min)",
        f"- Machine: {machine()}; {load}",
        f"- Versions: {info}",
        "",
        "## Results",
        "",
        table(results),
        "",
        "## Goals (issue 23)",
        "",
        *lines,
        "",
        *(["## Notes", "", *notes, ""] if notes else []),
        MEASURED,
        ANALYSIS_MARK,
        "",
        kept or "## Analysis\n\n(none yet)",
        "",
    ])
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


def main() -> int:
    """Measure the selected pairs, print the table and the goals; exit 0 only when every goal passes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the two smallest pairs")
    parser.add_argument("--pairs", help="comma-separated package names (default: all)")
    parser.add_argument("--memory-budget", help="passed to pinnacle-release publish (default: its own default)")
    parser.add_argument("--client-runs", type=int, default=3, help="client updates per pair (median kept)")
    parser.add_argument("--write-doc", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args()

    pairs = list(PAIRS)
    if args.pairs:
        wanted = set(args.pairs.split(","))
        pairs = [p for p in pairs if p.id in wanted]
        if len(pairs) != len(wanted):
            raise SystemExit(f"unknown pairs; choose from {', '.join(p.id for p in PAIRS)}")
    if args.quick:
        pairs = pairs[:2]
    zstd, tufup = ensure_zstd(), ensure_tufup()
    print("corpus: fetching/unpacking (cached in bench/.cache/corpus)", flush=True)
    for pair in pairs:
        release_dir(pair, pair.old)
        release_dir(pair, pair.new)
    options = publish_options()
    deltas = "--deltas" in options
    if not deltas:  # a checkout from before deltas (issue 4): nothing of ours to measure
        print("\n`pinnacle-release publish` has no --deltas option in this checkout: 'ours' is NOT MEASURED; "
              "baselines only. This run exits with status 2.\n", flush=True)

    info = versions(zstd, tufup)  # the commit measured, before anything can move HEAD
    client = ensure_client()  # this commit, installed like tufup: its own venv, byte-compiled
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pinnacle-delta-bench-") as tmp_name:
        results = [measure_pair(p, Path(tmp_name), zstd, tufup, options, args.memory_budget, args.client_runs,
                                client) for p in pairs]
    elapsed = time.perf_counter() - started
    load = f"load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"

    print()
    print(table(results))
    lines, all_pass = goals(results)
    print("\nGoals (issue 23):")
    print("\n".join(lines))
    for r in results:
        for note in r.notes:
            print(f"note: {r.pair.label}: {note}")
    print(f"\nmachine: {machine()}; {load}\nrun took {elapsed / 60:.1f} min")
    if args.write_doc:
        write_doc(results, lines, info, elapsed, load)
    if not deltas:
        return 2
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
