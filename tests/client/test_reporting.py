"""Fleet feedback on the client (client.reporting) with real parts: real installs over the suite's
repository server, a real HTTP collector stand-in on 127.0.0.1 that validates every body with the
wire format's own parser and dedupes by report_id (it can fail, drop answers and rate-limit), and a
real ``kill -9`` in the middle of a spool write.

What is checked: the spool's bounds and its dropped counter; a killed write leaves no partial
report; every report reaches the server exactly once through failures, lost answers and 429s;
an offline client keeps its spool over several updates and delivers it once the server is back;
``report = "off"`` makes no request at all; the ingest key is sent but never shown or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import reporting
from pinnacle_updates.client.errors import ConfigError, HealthCheckError, InstallError, RepositoryError, TrustError
from pinnacle_updates.client.installer import Installer
from pinnacle_updates.formats.index import ChannelIndex, Feedback, FormatError
from pinnacle_updates.formats.report import FormatError as ReportFormatError
from pinnacle_updates.formats.report import Report, parse_batch
from pinnacle_updates.formats.rollout import format_time
from pinnacle_updates.repo_tools.errors import PublishRefused
from pinnacle_updates.repo_tools.fleet import set_feedback
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.conftest import ROOT
from tests.helpers_client import Repo, app_files, env, init_client, make_repo, publish, release_cli, serve

INGEST_KEY = "ingest-Key-7f3a9c2e51d04b88"


# ----- a collector stand-in: the wire format's own parser, dedupe by report_id --------------------------
class Collector:
    """Counts every request; stores valid reports once by report_id. ``fail`` answers the next N
    requests 503, ``drop`` stores the next N batches and then closes without answering, ``limit``
    answers the next N with 429 Retry-After, ``refuse`` makes a batch holding that report_id a 400."""

    def __init__(self, port: int = 0, key: str = "") -> None:
        self.requests = 0
        self.stored: dict[str, Report] = {}
        self.duplicates = 0
        self.headers: list[dict[str, str]] = []
        self.fail = self.drop = self.limit = 0
        self.refuse: set[str] = set()
        self.key = key
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # http.server's name for it
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    owner.requests += 1
                    owner.headers.append(dict(self.headers))
                    if owner.fail:
                        owner.fail -= 1
                        return self._answer(503, {"error": "storage down"})
                    if owner.limit:
                        owner.limit -= 1
                        return self._answer(429, {"error": "slow down"}, {"Retry-After": "1"})
                    if owner.key and self.headers.get("Authorization") != f"Bearer {owner.key}":
                        return self._answer(401, {"error": "ingest key missing or wrong"})
                    if self.path != "/v1/reports" or self.headers.get("Content-Type") != "application/json":
                        return self._answer(415, {"error": "wrong path or type"})
                    try:
                        reports = parse_batch(body, datetime.now(UTC))
                    except ReportFormatError as exc:
                        return self._answer(400, {"error": str(exc)})
                    if owner.refuse & {r.report_id for r in reports}:
                        return self._answer(400, {"error": "reports[0]: refused"})
                    accepted = 0
                    for r in reports:
                        if r.report_id in owner.stored:
                            owner.duplicates += 1
                        else:
                            owner.stored[r.report_id] = r
                            accepted += 1
                    if owner.drop:  # stored, and the answer is lost
                        owner.drop -= 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return None
                    return self._answer(200, {"accepted": accepted, "duplicates": len(reports) - accepted})

            def _answer(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def collector(port: int = 0, key: str = "") -> Iterator[Collector]:
    c = Collector(port, key)
    try:
        yield c
    finally:
        c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def _no_sender_left() -> Iterator[None]:
    yield
    assert reporting.wait(20), "a background sender is still running"


def a_report(reports: reporting.Reports, **changes: Any) -> Report:
    ctx = reporting.Context(reports.install_id(), "stable", "linux-x86_64", "0" * 32)
    values: dict[str, Any] = {"kind": "install", "outcome": "committed", "from_version": "1.0.0",
                              "to_version": "1.1.0"}
    values.update(changes)
    kind, outcome = values.pop("kind"), values.pop("outcome")
    return ctx.report(kind, outcome, **values)


def plain_dir(tmp_path: Path, url: str, **settings: Any) -> Path:
    """An initialised install directory (no repository needed for spool and sender tests)."""
    repo = _root_repo(tmp_path)
    d = tmp_path / "inst"
    config_mod.init(d, "http://127.0.0.1:9/", repo.root_json, "stable", "linux-x86_64", report_url=url, **settings)
    return d


def _root_repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path / "r")


# ----- the spool -----------------------------------------------------------------------------------------
def test_spool_is_bounded_oldest_dropped_first_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reporting, "SPOOL_MAX_REPORTS", 60)  # the rule, at a size that keeps the test fast
    reports = reporting.Reports(tmp_path)
    made = [a_report(reports) for _ in range(67)]
    for r in made:
        reports.add(r)
    kept = [r.report_id for _, r in reports.pending()]
    assert kept == [r.report_id for r in made[7:]]  # the oldest seven went, in order
    assert reports.state()["dropped"] == 7
    assert reports.install_id() == made[0].install_id and (reports.id_file.stat().st_mode & 0o777) == 0o644

    monkeypatch.setattr(reporting, "SPOOL_MAX_BYTES", 20 * 1024)  # the byte bound, reached first
    reports.add(a_report(reports, cause_text="x" * 200))
    sizes = [p.stat().st_size for p, _ in reports.pending()]
    assert sum(sizes) <= 20 * 1024 and len(sizes) < 60
    assert reports.state()["dropped"] == 7 + 60 + 1 - len(sizes)


def test_a_kill_between_temp_and_rename_leaves_no_partial_report(tmp_path: Path) -> None:
    reports = reporting.Reports(tmp_path)
    reports.add(a_report(reports))
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pinnacle_updates.client import reporting\n"
        "r = reporting.Reports(Path(sys.argv[1]))\n"
        "report = reporting.Context(r.install_id(), 'stable', 'any', '0' * 32).report('heartbeat', 'ok')\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # dies after the fsync, before the rename\n"
        "r.add(report)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env(), check=False)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in reports.spool.iterdir()]
    assert any(n.startswith(".tmp-") for n in leftovers)  # the killed write's temp file
    assert len(reports.pending()) == 1  # ...is never read as a report
    reports.add(a_report(reports))  # the next writer clears it
    assert not [n for n in os.listdir(reports.spool) if n.startswith(".tmp-")]
    assert len(reports.pending()) == 2


def test_damaged_and_too_old_spool_files_are_dropped_and_counted(tmp_path: Path) -> None:
    reports = reporting.Reports(tmp_path)
    reports.add(a_report(reports))
    reports.add(a_report(reports, at=datetime.now(UTC) - timedelta(days=40)))
    (reports.spool / f"{time.time_ns():020d}-{'a' * 32}.json").write_bytes(b"{torn")
    assert len(reports.pending()) == 1
    assert reports.state()["dropped"] == 2


def test_cause_text_names_no_path_url_host_or_credential() -> None:
    cases = {
        "cannot write /home/alice/app/slots (permission denied)": "cannot write <path> (permission denied)",
        "cannot reach https://bob:pw@repo.example.com/x?token=s3cret: timed out": "cannot reach <url> timed out",
        "cannot connect to repo.internal.example:443 (refused)": "cannot connect to <host> (refused)",
        "connect 10.1.2.3 failed": "connect <host> failed",
        "slot b does not match release 1.2.0: lib/x.dat: sha256 differs":
            "slot b does not match release 1.2.0: lib/x.dat: sha256 differs",  # the release's own names stay
        "line one\nline\ttwo\x1b[31m" + "x" * 300: ("line one line two [31m" + "x" * 300)[:200],
    }
    for raw, shown in cases.items():
        assert reporting.scrub(raw) == shown


# ----- the sender --------------------------------------------------------------------------------------
def test_every_report_arrives_exactly_once_through_failures_and_lost_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reporting, "SPOOL_MAX_REPORTS", 50)
    monkeypatch.setattr(reporting, "MAX_BATCH", 20)  # three batches
    with collector() as server:
        d = plain_dir(tmp_path, server.url)
        reports = reporting.Reports(d)
        made = [a_report(reports) for _ in range(60)]
        for r in made:
            reports.add(r)
        assert reports.state()["dropped"] == 10
        server.fail, server.drop = 3, 2  # 503 x3 (out of retries: the flush stops), then two lost answers
        flushes = []
        while not flushes or flushes[-1].left:
            flushes.append(reporting.flush(d, 30, force=True))
            assert len(flushes) <= 3, flushes
        assert "answered HTTP 503" in flushes[0].error and flushes[0].sent == 0
        assert [f.error for f in flushes[1:]] == [""] * (len(flushes) - 1)
        # the batch whose answer was lost (twice) was sent three times: stored once, then two duplicates
        assert server.duplicates == 2 * 20 and sum(f.duplicates for f in flushes) == 20
        assert sorted(server.stored) == sorted(r.report_id for r in made[10:])
        assert reporting.Reports(d).state()["sent"] == 50
        assert reporting.flush(d, 5, force=True).requests == 0  # nothing left to send


def test_a_down_collector_keeps_the_spool_and_backs_off(tmp_path: Path) -> None:
    port = free_port()
    d = plain_dir(tmp_path, f"http://127.0.0.1:{port}")
    reports = reporting.Reports(d)
    reports.add(a_report(reports))
    started = time.monotonic()
    down = reporting.flush(d, 10)
    assert "cannot reach the collector" in down.error and down.left == 1
    assert time.monotonic() - started < 10
    state = reports.state()
    assert state["failures"] == 1 and state["next_attempt"] > format_time(datetime.now(UTC))
    assert reporting.flush(d, 10).skipped == "backing off after a failed send"  # no request meanwhile
    with collector(port) as server:
        assert reporting.flush(d, 10).skipped  # still backing off...
        assert server.requests == 0
        back = reporting.flush(d, 10, force=True)  # ...until the next attempt is due
        assert (back.sent, back.left, len(server.stored)) == (1, 0, 1)
    assert reports.state()["failures"] == 0 and reports.state()["last_error"] == ""


def test_429_retry_after_is_honoured_and_a_refused_report_is_dropped_alone(tmp_path: Path) -> None:
    with collector() as server:
        d = plain_dir(tmp_path, server.url)
        reports = reporting.Reports(d)
        made = [a_report(reports) for _ in range(9)]  # one batch, split around the refused report
        for r in made:
            reports.add(r)
        server.limit = 1
        server.refuse = {made[4].report_id}
        started = time.monotonic()
        done = reporting.flush(d, 20, force=True)
        assert time.monotonic() - started >= 1.0  # Retry-After: 1
        assert (done.sent, done.refused, done.left) == (8, 1, 0)
        assert sorted(server.stored) == sorted(r.report_id for r in made if r is not made[4])
        assert reports.state()["refused"] == 1


def test_a_wrong_ingest_key_stops_sending_and_keeps_the_spool(tmp_path: Path) -> None:
    with collector(key=INGEST_KEY) as server:
        key_file = tmp_path / "ingest.key"
        key_file.write_text("not-the-key\n")
        d = plain_dir(tmp_path, server.url, report_key_file=str(key_file))
        reports = reporting.Reports(d)
        reports.add(a_report(reports))
        refused = reporting.flush(d, 10, force=True)
        assert "refused the ingest key (HTTP 401)" in refused.error and refused.left == 1
        key_file.write_text(INGEST_KEY + "\n")
        assert reporting.flush(d, 10, force=True).sent == 1
        assert server.headers[-1]["Authorization"] == f"Bearer {INGEST_KEY}"


def test_config_rules(tmp_path: Path) -> None:
    d = plain_dir(tmp_path, "")
    config_mod.set_value(d, "report", "on")  # no URL: nothing is sent, and status says why
    assert reporting.destination(d, config_mod.load(d)) is None
    assert "report_url is not set" in reporting.summary(d, config_mod.load(d))["problem"]
    for bad in ("ftp://x", "https://user:pw@c.example", "https://c.example/?k=1", "sometimes"):
        with pytest.raises(ConfigError):
            config_mod.set_value(d, "report_url" if bad != "sometimes" else "report", bad)
    config_mod.set_value(d, "report_url", "https://c.example/fleet")
    config_mod.set_value(d, "report", "on")
    assert reporting.destination(d, config_mod.load(d)) == reporting.Destination(
        "https://c.example/fleet", "", "config")
    config_mod.set_value(d, "report", "off")
    assert reporting.destination(d, config_mod.load(d)) is None


# ----- the signed channel setting --------------------------------------------------------------------------
def test_feedback_in_the_channel_index_round_trips_and_is_optional() -> None:
    plain = ChannelIndex("stable", updated="2026-01-01T00:00:00Z")
    assert b"feedback" not in plain.to_bytes()
    assert ChannelIndex.from_bytes(plain.to_bytes()) == plain
    doc = json.loads(plain.to_bytes())
    doc["feedback"] = {"collector_url": "https://c.example", "ingest_key": "k", "later": 1}
    parsed = ChannelIndex.from_bytes(json.dumps(doc).encode())
    assert parsed.feedback == Feedback("https://c.example", "k", {"later": 1})
    assert json.loads(parsed.to_bytes())["feedback"]["later"] == 1  # a newer publisher's key is kept
    for bad in ({"collector_url": "javascript:alert(1)"}, {"collector_url": "https://c", "ingest_key": "a b"},
                {"collector_url": 7}, "https://c"):
        doc["feedback"] = bad
        with pytest.raises(FormatError, match="feedback"):
            ChannelIndex.from_bytes(json.dumps(doc).encode())


def test_feedback_set_and_clear_are_signed_and_kept_by_publishes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    publish(repo, "1.0.0", app_files("1.0.0"))
    key_file = tmp_path / "ingest.key"
    key_file.write_text(INGEST_KEY + "\n")
    out = release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                      "--collector-url", "https://collector.example/", "--ingest-key-file", str(key_file), "--json")
    assert INGEST_KEY not in out and json.loads(out)["feedback"]["ingest_key"] is True
    publish(repo, "1.1.0", app_files("1.1.0"))
    index = _signed_index(repo)
    assert index.feedback == Feedback("https://collector.example/", INGEST_KEY)  # kept by the publish
    with pytest.raises(AssertionError, match="--collector-url must be an http"):
        release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                    "--collector-url", "file:///etc/passwd")
    r, keys = Repository(repo.dir), KeyStore(repo.keys)
    with pytest.raises(PublishRefused, match="already names this collector"):
        set_feedback(r, keys, "stable", index.feedback)
    set_feedback(r, keys, "stable", None)
    assert _signed_index(repo).feedback is None


def _signed_index(repo: Repo) -> ChannelIndex:
    r = Repository(repo.dir)
    return r.channel_index(r.load(), "stable")


# ----- real installs ---------------------------------------------------------------------------------------
def _install(ins: Installer, version: str | None = None) -> str:
    try:
        return ins.install(version).outcome
    except HealthCheckError:
        return "rolled_back"


def test_offline_client_keeps_its_spool_and_every_report_arrives_once(tmp_path: Path) -> None:
    """Three updates (one rolled back by its health check), a manual rollback and an update refused
    for want of space while the collector is down; once it is back, one flush delivers each report
    exactly once."""
    repo = make_repo(tmp_path)
    port = free_port()
    key_file = tmp_path / "ingest.key"
    key_file.write_text(INGEST_KEY)
    release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                "--collector-url", f"http://127.0.0.1:{port}", "--ingest-key-file", str(key_file))
    versions = [("1.0.0", True), ("1.1.0", False), ("1.2.0", True)]
    with serve(repo.dir) as url:
        d = tmp_path / "client"
        ins = init_client(d, url, repo)
        outcomes = []
        for version, healthy in versions:
            publish(repo, version, app_files(version, healthy=healthy))
            outcomes.append(_install(ins, version))
        ins.rollback()  # 1.2.0 -> 1.0.0
        assert outcomes == ["committed", "rolled_back", "committed"]
        publish(repo, "1.3.0", app_files("1.3.0"))
        ins.stager.free_bytes = lambda path: 0  # type: ignore[method-assign]  # the one free-space seam
        with pytest.raises(InstallError, match="not enough free space"):  # refused before any record
            ins.install("1.3.0")
        assert reporting.wait(30)  # the background sender gave up (nobody listens)
        spooled = reporting.Reports(d).pending()
        status = ins.status()["reports"]
        assert status["pending"] == len(spooled) and "cannot reach the collector" in status["last_error"]
        assert status["source"] == "channel" and status["ingest_key"] is True
        with collector(port, key=INGEST_KEY) as server:
            done = reporting.flush(d, 30, force=True)
            assert (done.error, done.left) == ("", 0)
            stored = sorted(server.stored.values(), key=lambda r: r.at)
        assert sorted(server.stored) == sorted(r.report_id for _, r in spooled) and server.duplicates == 0
    events = [(r.kind, r.outcome, r.cause, r.from_version, r.to_version) for r in stored if r.kind != "heartbeat"]
    assert sorted(events) == sorted([
        ("install", "committed", "", "", "1.0.0"),
        ("install", "rolled_back", "health_check", "1.0.0", "1.1.0"),
        ("install", "committed", "", "1.0.0", "1.2.0"),
        ("rollback", "rolled_back", "manual", "1.2.0", "1.0.0"),
        ("install", "failed", "space", "1.0.0", "1.3.0"),
    ])
    heartbeats = [r for r in stored if r.kind == "heartbeat"]
    assert len(heartbeats) == 1  # one a day, whatever the number of checks
    first = stored[0]
    assert {r.install_id for r in stored} == {first.install_id} != {config_mod.load(d).text("client_id")}
    assert all(r.channel == "stable" and r.platform == "any" and r.update_type == "patch"
               for r in stored if r.to_version)
    assert all(0 <= r.bucket <= 9999 for r in stored if r.to_version)
    rolled = next(r for r in stored if r.outcome == "rolled_back" and r.kind == "install")
    assert "health check failed" in rolled.cause_text and str(d) not in rolled.cause_text
    committed = [r for r in stored if r.outcome == "committed"]
    assert all(r.bytes_downloaded > 0 and r.durations.get("total", 0) > 0 for r in committed)
    # where an install's time went: download, apply (extract/patch and verify), health check; each within the total
    for r in committed:
        assert {"download", "apply", "health", "total"} <= set(r.durations), r.durations
        assert r.durations["download"] + r.durations["apply"] + r.durations["health"] <= r.durations["total"] + 0.01
    _no_key_anywhere(d, ins)


def test_reporting_off_makes_no_request_at_all(tmp_path: Path) -> None:
    """The channel names a collector and the config names one too; ``report = "off"`` wins: across
    installs, a health-check rollback, a manual rollback, checks, a failed check and the heartbeat
    the collector counts zero requests, and nothing is kept."""
    repo = make_repo(tmp_path)
    with collector() as server, serve(repo.dir) as url:
        release_cli("feedback", "set", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable",
                    "--collector-url", server.url)
        d = tmp_path / "client"
        ins = init_client(d, url, repo, report="off", report_url=server.url)
        for version, healthy in (("1.0.0", True), ("1.1.0", True), ("1.2.0", False)):
            publish(repo, version, app_files(version, healthy=healthy))
            if version == "1.2.0":
                ins.rollback()  # 1.1.0 -> 1.0.0
            ins.check()
            assert _install(ins, version) == ("committed" if healthy else "rolled_back")
        ins.check()
        assert reporting.flush(d, 5, force=True).skipped == "reporting is off"
        assert ins.status()["reports"]["mode"] == "off"
    with pytest.raises(RepositoryError):  # the repository is gone: a failed check
        ins.check()
    assert reporting.wait(10)
    assert server.requests == 0
    assert not (d / "reports").exists()


def test_cli_sends_at_exit_and_failed_checks_report_at_most_once_an_hour(tmp_path: Path) -> None:
    """``pinnacle-update install`` has sent its report when it exits. Then a served timestamp that is
    not valid signed metadata: the check fails verification at once (no network retries), is
    reported as a failed check with cause verify, and only once an hour."""
    repo = make_repo(tmp_path)
    publish(repo, "1.0.0", app_files("1.0.0"))
    with collector() as server, serve(repo.dir) as url:
        d = tmp_path / "client"
        ins = init_client(d, url, repo, report_url=server.url)
        cli = subprocess.run([sys.executable, "-m", "pinnacle_updates.client", "--install-dir", str(d), "install"],
                             cwd=ROOT, env=env(), capture_output=True, text=True, check=True, timeout=60)
        # the CLI sent its reports after printing the result, before it exited (at most EXIT_WAIT)
        assert [(r.kind, r.outcome) for r in server.stored.values() if r.kind != "heartbeat"] == [
            ("install", "committed")] and "1.0.0" in cli.stdout
        (repo.dir / "metadata" / "timestamp.json").write_text('{"signed": {}, "signatures": []}')
        for _ in range(2):  # the second within the hour: not reported again
            with pytest.raises(TrustError):
                ins.check()
        assert reporting.wait(20)
        reporting.flush(d, 10, force=True)
        failed = [r for r in server.stored.values() if r.kind == "check"]
    assert [(r.outcome, r.cause, r.current_version) for r in failed] == [("failed", "verify", "1.0.0")]
    assert "timestamp" in failed[0].cause_text.lower()


def _no_key_anywhere(d: Path, ins: Installer) -> None:
    """The ingest key is sent (the collector checked it) but in no output, history, log or report file
    of the install directory except the signed index's cached copy."""
    shown = json.dumps([ins.status(), ins.history()])
    assert INGEST_KEY not in shown
    for path in d.rglob("*"):
        if path.is_file() and not path.is_symlink() and "tuf" not in path.parts and "cache" not in path.parts:
            assert INGEST_KEY.encode() not in path.read_bytes() or path.name == "channel.json", path
    cli = subprocess.run([sys.executable, "-m", "pinnacle_updates.client", "--install-dir", str(d), "status",
                          "--json"], cwd=ROOT, env=env(), capture_output=True, text=True, check=True)
    assert INGEST_KEY not in cli.stdout + cli.stderr
