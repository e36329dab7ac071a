"""Collector load benchmark: simulated clients posting report batches to a real collector, SQLite and PostgreSQL.

For each database (both in one run), a real ``pinnacle-release collector serve`` process on 127.0.0.1:

* **SQLite**: a fresh file in a temporary directory (WAL, ``synchronous=FULL``, as shipped);
* **PostgreSQL**: a throwaway cluster of Debian's binaries (``tests/pg_server.run_postgres`` with
  ``durable=True``: PostgreSQL's own ``fsync=on`` and ``synchronous_commit=on``, not the tests' fast
  settings), one fresh database.

The simulated fleet: ``--installs`` random install ids, each with ``--per-install`` realistic reports
(installs of 1.0.0 -> 1.4.0 over the last two days: mostly committed, some with a delta fallback,
rolled back by health check or start-up, failed downloads, manual rollbacks, failed checks, daily
heartbeats; durations, bytes, A/B groups), sent as the client's spool would be: batches of ``--batch``
reports, installs interleaved. The batches are encoded before the clock starts and posted over
keep-alive connections by a minimal asyncio HTTP/1.1 client (``Connection``). The per-address rate
limit is turned off (every simulated client shares 127.0.0.1); the per-install limit stays at its
default (1,000 reports an hour, two full batches at once) and is on the measured path.

Two phases per database, one collector process: an **open loop at the goal rate** (batches due at
fixed times whatever the answers, as independent clients send; latency counted from when a batch was
due, so queueing shows) and a **closed loop** (``--concurrency`` requests always in flight: the most
the collector takes, with the latency that queue costs).

Printed per phase: reports and requests, wall time, reports/s, request latency p50/p99/max (client
side, to the whole answer); per database: the collector's CPU seconds and peak RSS (VmHWM from
/proc/PID/status), database bytes per million reports
(extrapolated: growth of the database over this run divided by the reports sent, times a million;
SQLite: the file after the collector stopped, WAL checkpointed; PostgreSQL: ``pg_database_size``),
and the loss check: rows in ``reports`` == reports answered 200 (every report id is new, so
``accepted`` must equal the batch size too). Any answer other than 200 is an error.

Goals (issue 19, on this 2-core machine, the clients sharing the cores with the collector and the
database): SQLite >= 2,000 reports/s, PostgreSQL >= 5,000 reports/s, p99 < 100 ms for both, nothing
lost. Exit 0 when all are met, 1 otherwise, 2 when PostgreSQL is not installed.

    .venv/bin/python bench/collector.py            # 200 installs x 300 reports per database: about 2 minutes
    .venv/bin/python bench/collector.py --quick    # 100 x 100: under a minute
    .venv/bin/python bench/collector.py --only sqlite --batch 10 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pinnacle_updates.formats.report import Report, encode_batch  # noqa: E402
from tests.collector.conftest import start_collector, stop  # noqa: E402
from tests.pg_server import find_binaries, run_postgres  # noqa: E402

GOALS = {"sqlite": 2000.0, "postgresql": 5000.0}
P99_GOAL_MS = 100.0
VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0")


# ----- the simulated fleet --------------------------------------------------------------------------
def install_reports(rng: random.Random, install_id: str, count: int, now: datetime) -> list[Report]:
    """``count`` reports of one install, oldest first, as its spool would hold them."""
    channel = "stable" if rng.random() < 0.8 else "beta"
    platform = rng.choice(("linux-x86_64", "linux-x86_64", "linux-arm64", "windows-x86_64"))
    group = rng.choice(("", "", "control", "treatment"))
    bucket = rng.randrange(10_000)
    start = now - timedelta(hours=47)
    step = timedelta(hours=46) / max(count, 1)
    at_version = 0
    out = []
    for i in range(count):
        at = start + step * i
        common = dict(report_id=secrets.token_hex(16), install_id=install_id, at=at, channel=channel,
                      platform=platform, bucket=bucket, ab_group=group, client_version="0.9.0")
        current = VERSIONS[at_version]
        roll = rng.random()
        if roll < 0.35:
            out.append(Report(kind="heartbeat", outcome="ok", current_version=current, **common))
            continue
        if roll < 0.45:
            failed = rng.random() < 0.2
            out.append(Report(kind="check", outcome="failed" if failed else "ok",
                              cause="download" if failed else "", cause_text="timed out" if failed else "",
                              current_version=current, **common))
            continue
        if roll < 0.47 and at_version > 0:
            out.append(Report(kind="rollback", outcome="rolled_back", cause="manual", cause_text="operator",
                              from_version=current, to_version=VERSIONS[at_version - 1],
                              current_version=VERSIONS[at_version - 1], **common))
            at_version -= 1
            continue
        target = VERSIONS[min(at_version + 1, len(VERSIONS) - 1)]
        download, apply, health = rng.uniform(0.5, 30), rng.uniform(0.2, 8), rng.uniform(0.5, 5)
        durations = {"download": round(download, 3), "apply": round(apply, 3), "health": round(health, 3),
                     "total": round(download + apply + health, 3)}
        size = rng.randrange(200_000, 40_000_000)
        outcome, cause, text = "committed", "", ""
        pick = rng.random()
        if pick < 0.06:
            outcome, cause, text = "rolled_back", "health_check", "GET /health answered 503 three times"
        elif pick < 0.08:
            outcome, cause, text = "rolled_back", "start", "start_command exited 1"
        elif pick < 0.10:
            outcome, cause, text = "failed", "download", "connection reset by peer"
        elif pick < 0.14:
            cause, text = "delta_fallback", "delta base changed: full artifact installed"
        out.append(Report(kind="install", outcome=outcome, cause=cause, cause_text=text, from_version=current,
                          to_version=target, update_type="minor", durations=durations, bytes_downloaded=size // 4,
                          bytes_saved=size - size // 4,
                          current_version=target if outcome == "committed" else current,
                          **common))
        if outcome == "committed":
            at_version = VERSIONS.index(target)
    return out


def fleet_batches(installs: int, per_install: int, batch: int, seed: int) -> list[tuple[int, bytes]]:
    """(report count, encoded body) per request: each install's spool in batches, installs interleaved."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    spools = []
    for _ in range(installs):
        reports = install_reports(rng, secrets.token_hex(16), per_install, now)
        spools.append([reports[i:i + batch] for i in range(0, len(reports), batch)])
    out = []
    for round_ in range(max(len(s) for s in spools)):
        for spool in spools:
            if round_ < len(spool):
                out.append((len(spool[round_]), encode_batch(spool[round_])))
    return out


# ----- the collector process ------------------------------------------------------------------------
def stop_collector(proc: subprocess.Popen[str]) -> str:
    """SIGTERM (``tests.collector.conftest.stop``), then what the collector wrote to stderr."""
    stop(proc)
    assert proc.stderr is not None
    return proc.stderr.read()


def proc_figures(pid: int) -> tuple[int, float]:
    """Peak RSS in bytes (VmHWM) and CPU seconds (user + system) of a running process."""
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return hwm, cpu


# ----- the load ---------------------------------------------------------------------------------------
@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    skipped: int = 0


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol to post a prepared
    request and read its answer: the load generator shares the 2 cores with the collector and the
    database, so it spends as little CPU per request as it can (an HTTP library's pool took several
    times more, and with hundreds of queued requests it became the bottleneck)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def prepared(url: str, body: bytes) -> bytes:
    host = url.removeprefix("http://")
    return (f"POST /v1/reports HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def send_all(url: str, batches: list[tuple[int, bytes]], concurrency: int, max_seconds: float,
                   rate: float | None = None) -> Load:
    """Post every batch. Closed loop (``rate`` None): ``concurrency`` requests always in flight, the
    most the collector takes. Open loop (``rate`` reports/s): batch i is due at i * batch / rate
    seconds whether or not earlier ones were answered, as a fleet's independent clients would send,
    over up to 128 connections; its latency counts from when it was due (so a collector slower than
    ``rate`` shows its queue in the latency instead of slowing the clients down)."""
    load = Load()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(concurrency if rate is None else 128):  # the collector admits 256 connections
        idle.put_nowait(Connection(host, int(port)))
    deadline = time.monotonic() + max_seconds

    async def post(count: int, request: bytes, due: float) -> None:
        conn = await idle.get()
        try:
            if time.monotonic() > deadline:
                load.skipped += count
                return
            try:
                status, body = await conn.post(request)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                load.errors[type(exc).__name__] = load.errors.get(type(exc).__name__, 0) + 1
                return
            load.latencies.append(time.perf_counter() - due)
            if status != 200:
                key = f"HTTP {status}: {body[:80]!r}"
                load.errors[key] = load.errors.get(key, 0) + 1
                return
            data = json.loads(body)
            load.sent += count
            load.accepted += data["accepted"]
            load.duplicates += data["duplicates"]
        finally:
            idle.put_nowait(conn)

    requests = [(count, prepared(url, body)) for count, body in batches]
    began = time.perf_counter()
    if rate is None:
        pending = iter(requests)

        async def worker() -> None:
            for count, request in pending:
                await post(count, request, time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        tasks = []
        due = began
        for count, request in requests:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(count, request, due)))
            due += count / rate
        await asyncio.gather(*tasks)
    load.wall = time.perf_counter() - began
    while not idle.empty():
        idle.get_nowait().close()
    return load


# ----- one database ---------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    load: Load

    @property
    def rate(self) -> float:
        return self.load.sent / self.load.wall if self.load.wall else 0.0

    def latency_ms(self, q: float) -> float:
        lat = sorted(self.load.latencies) or [0.0]
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]


@dataclass
class Figures:
    name: str
    phases: list[Phase]
    cpu: float
    rss: int
    per_million: float
    stored: int
    load_average: str

    @property
    def sent(self) -> int:
        return sum(p.load.sent for p in self.phases)

    @property
    def accepted(self) -> int:
        return sum(p.load.accepted for p in self.phases)


def database_bytes(db: str) -> int:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            conn.execute("CHECKPOINT")  # a superuser in the throwaway cluster: flush before measuring
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) if row else 0
    with sqlite3.connect(db) as conn:  # the collector has stopped: fold the WAL into the file first
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in Path(db).parent.glob(Path(db).name + "*"))


def stored_reports(db: str) -> int:
    from pinnacle_updates.repo_tools.collector.storage import open_storage

    with open_storage(db, create=False) as storage:
        return storage.counts()["reports"]


def measure(name: str, db: str, work: Path, args: argparse.Namespace) -> Figures:
    """Two phases against one collector process: open loop at the goal rate, then closed loop."""
    work.mkdir(parents=True, exist_ok=True)
    paced = fleet_batches(args.installs, args.per_install, args.batch, args.seed)
    most = fleet_batches(args.installs, args.per_install, args.batch, args.seed + 1)
    print(f"{name}: 2 x {sum(n for n, _ in paced):,} reports in batches of {args.batch} ...", flush=True)
    proc, url = start_collector(db, work, "--rate-per-address", "0")
    phases = []
    try:
        empty = database_bytes(db) if name == "postgresql" else 0
        spy = None
        if args.profile:  # py-spy's collapsed stacks of the collector while it takes the load
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid),
                                    "-r", "100", "--format", "raw", "-o", str(args.profile / f"{name}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        goal = GOALS[name]
        before = Path("/proc/loadavg").read_text().split()[0]  # others' work on these 2 cores shows here
        phases.append(Phase(f"open loop at {goal:,.0f}/s",
                            asyncio.run(send_all(url, paced, args.concurrency, args.max_seconds, goal))))
        phases.append(Phase(f"closed loop, {args.concurrency} in flight",
                            asyncio.run(send_all(url, most, args.concurrency, args.max_seconds))))
        rss, cpu = proc_figures(proc.pid)
        load_average = f"{before} -> {Path('/proc/loadavg').read_text().split()[0]}"
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    finally:
        log = stop_collector(proc)
    if "Traceback" in log:
        print(f"{name}: the collector logged a traceback:\n{log[-3000:]}", file=sys.stderr)
        phases[-1].load.errors["traceback in the collector's log"] = 1
    if name == "sqlite":
        # The empty schema's size, measured on a twin file: this one already holds the reports.
        twin = work / "empty.sqlite"
        from pinnacle_updates.repo_tools.collector.storage import open_storage

        open_storage(str(twin)).close()
        empty = database_bytes(str(twin))
    sent = sum(p.load.sent for p in phases)
    grown = database_bytes(db) - empty
    return Figures(name=name, phases=phases, cpu=cpu, rss=rss, per_million=grown / max(sent, 1) * 1e6,
                   stored=stored_reports(db), load_average=load_average)


def table(rows: list[Figures], args: argparse.Namespace) -> str:
    head = ("database", "load", "reports", "requests", "wall s", "reports/s", "p50 ms", "p99 ms", "max ms",
            "errors")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in rows:
        for p in f.phases:
            cells = (f.name, p.name, f"{p.load.sent:,}", f"{len(p.load.latencies):,}", f"{p.load.wall:.1f}",
                     f"{p.rate:,.0f}", f"{p.latency_ms(0.5):.1f}", f"{p.latency_ms(0.99):.1f}",
                     f"{p.latency_ms(1.0):.1f}", str(sum(p.load.errors.values()) + (p.load.skipped > 0)))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| database | collector CPU s | collector peak RSS | DB bytes / 1M reports (extrapolated) "
                  "| answered 200 | stored | lost | load average (1 min) |", "|---|---|---|---|---|---|---|---|"]
    for f in rows:
        lines.append(f"| {f.name} | {f.cpu:.1f} | {f.rss / 2**20:.0f} MiB | {f.per_million / 2**20:,.0f} MiB "
                     f"| {f.sent:,} | {f.stored:,} | {f.sent - f.stored} | {f.load_average} |")
    lines.append(f"\n{args.installs} install ids x {args.per_install} reports per phase, batches of {args.batch}; "
                 "one collector process (uvicorn, one event loop), the clients on the same 2 cores")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--installs", type=int, default=200)
    parser.add_argument("--per-install", type=int, default=300)
    parser.add_argument("--batch", type=int, default=50, help="reports per request (a client's spool batch)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="sending time per database, at most")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--quick", action="store_true", help="100 installs x 100 reports")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record the collector with py-spy (pip install py-spy) into DIR/<database>.txt")
    args = parser.parse_args()
    if args.quick:
        args.installs, args.per_install = 100, 100
    if not 1 <= args.batch <= 500:
        parser.error("--batch must be 1..500 (the wire format's MAX_BATCH)")

    names = [args.only] if args.only else ["sqlite", "postgresql"]
    binaries = find_binaries()
    if "postgresql" in names and binaries is None:
        print("PostgreSQL is not installed (apt-get install postgresql; .ci/run does): cannot measure it",
              file=sys.stderr)
        return 2
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="pinnacle-bench-collector-") as tmp:
        base = Path(tmp)
        for name in names:
            if name == "sqlite":
                results.append(measure(name, str(base / "sqlite" / "reports.sqlite"), base / "sqlite", args))
            else:
                assert binaries is not None
                with run_postgres(base / "pg", binaries, durable=True) as server:
                    results.append(measure(name, server.create_database("bench"), base / "pg-collector", args))
    print()
    print(table(results, args))
    failures = []
    for f in results:
        paced = f.phases[0]
        if paced.rate < 0.97 * GOALS[f.name]:  # an open loop at the goal rate takes the goal's time
            failures.append(f"{f.name}: {paced.rate:,.0f} reports/s at the goal's pace, goal >= {GOALS[f.name]:,.0f}")
        if paced.latency_ms(0.99) >= P99_GOAL_MS:
            failures.append(f"{f.name}: p99 {paced.latency_ms(0.99):.1f} ms at {GOALS[f.name]:,.0f} reports/s, "
                            f"goal < {P99_GOAL_MS:.0f} ms")
        if f.sent != f.stored or f.accepted != f.sent:
            failures.append(f"{f.name}: {f.sent:,} reports answered 200, {f.accepted:,} accepted, {f.stored:,} stored")
        for p in f.phases:
            if p.load.errors or p.load.skipped:
                failures.append(f"{f.name} {p.name}: errors {p.load.errors}, {p.load.skipped} reports not sent "
                                f"within --max-seconds")
    print()
    for line in failures:
        print("FAIL", line)
    if not failures:
        summary = [f"{f.name} {f.phases[0].rate:,.0f} reports/s with p99 {f.phases[0].latency_ms(0.99):.0f} ms "
                   f"(most: {f.phases[1].rate:,.0f}/s)" for f in results]
        print("PASS every goal: " + "; ".join(summary) + "; nothing lost")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
