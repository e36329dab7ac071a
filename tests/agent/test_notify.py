"""Notifications with real local receivers: a webhook HTTP server (working, failing, hanging, down)
and a small hand-written SMTP server; then the agent process notifying about real installs."""

from __future__ import annotations

import email
import email.policy
import json
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client.agent.notify import Notification, Notifier, NotifySettings
from pinnacle_updates.client.errors import InstallRefused
from tests.agent_server import V1, V11, V101, Receiver, free_port, publish_all, run_agent, serve_repo
from tests.conftest import run_cli
from tests.helpers_client import Repo, init_client

EVENT = Notification("success", "1.0.0", "1.1.0", "committed", "", "c" * 32)


def _wait_stats(n: Notifier, key: str, value: int, limit: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        stats = n.stats()
        if stats[key] >= value:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"notifier stats never reached {key}={value}: {n.stats()}")


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    made: list[Notifier] = []
    yield made
    for n in made:
        n.close(timeout=5)


def _notifier(made: list[Notifier], **settings: Any) -> Notifier:
    s = NotifySettings(notify_on=frozenset({"success", "failure", "rollback"}), **settings)
    n = Notifier(lambda: s, backoff=0.01, timeout=5.0)
    made.append(n)
    return n


# ----- webhook ------------------------------------------------------------------------------------------
def test_webhook_gets_the_payload(notifiers: list[Notifier]) -> None:
    with Receiver() as rx:
        n = _notifier(notifiers, webhook_url=rx.url, retries=3)
        assert n.notify(EVENT) is True
        [got] = rx.wait(1)
        assert got == {"event": "success", "versions": {"from": "1.0.0", "to": "1.1.0"}, "outcome": "committed",
                       "reason": "", "client_id": "c" * 32, "group": None, "ts": EVENT.ts}
        assert rx.headers[0]["Content-Type"] == "application/json"
        stats = _wait_stats(n, "delivered", 1)
        assert (stats["failed"], stats["attempts"]) == (0, 1)


def test_webhook_is_retried_with_backoff_until_it_answers(notifiers: list[Notifier]) -> None:
    with Receiver(fail_first=2) as rx:
        n = _notifier(notifiers, webhook_url=rx.url, retries=5)
        n.notify(EVENT)
        rx.wait(1)
        assert rx.attempts == 3
        stats = _wait_stats(n, "delivered", 1)
        assert stats["failed"] == 0 and stats["attempts"] == 3


def test_a_4xx_answer_is_final_and_a_dead_receiver_is_given_up(notifiers: list[Notifier]) -> None:
    with Receiver(status=404) as rx:
        n = _notifier(notifiers, webhook_url=rx.url, retries=5)
        n.notify(EVENT)
        stats = _wait_stats(n, "failed", 1)
        assert rx.attempts == 1 and stats["delivered"] == 0 and "404" in stats["last_error"]

    down = _notifier(notifiers, webhook_url=f"http://127.0.0.1:{free_port()}/hook", retries=3)
    down.notify(EVENT)
    stats = _wait_stats(down, "failed", 1)
    assert stats["attempts"] == 3 and stats["delivered"] == 0 and stats["last_error"].startswith("webhook:")


def test_notify_never_waits_for_the_receiver(notifiers: list[Notifier]) -> None:
    """A receiver that holds every request open: ``notify`` returns while the request is still pending."""
    release = threading.Event()
    arrived = threading.Event()

    class Hanging(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            arrived.set()
            release.wait(30)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hanging)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        n = _notifier(notifiers, webhook_url=f"http://127.0.0.1:{server.server_address[1]}/", retries=1)
        assert n.notify(EVENT) is True
        assert n.notify(EVENT) is True  # queued behind the hanging one
        assert arrived.wait(30)
        assert not release.is_set() and n.stats()["delivered"] == 0 and n.stats()["pending"] >= 1
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_events_not_in_notify_on_are_not_sent(notifiers: list[Notifier]) -> None:
    with Receiver() as rx:
        s = NotifySettings(notify_on=frozenset({"failure"}), webhook_url=rx.url)
        n = Notifier(lambda: s, backoff=0.01)
        notifiers.append(n)
        assert n.notify(EVENT) is False
        failure = Notification("failure", "1.0.0", "1.1.0", "failed", "disk full", "c" * 32)
        assert n.notify(failure) is True
        [got] = rx.wait(1)
        assert got["event"] == "failure" and got["reason"] == "disk full"
        assert n.stats()["queued"] == 1
    nowhere = Notifier(lambda: NotifySettings(notify_on=frozenset({"success"})))
    notifiers.append(nowhere)
    assert nowhere.notify(EVENT) is False  # wanted, but no webhook and no e-mail configured


# ----- e-mail -------------------------------------------------------------------------------------------
class SmtpSink:
    """A minimal SMTP server (HELO/EHLO, MAIL, RCPT, DATA, QUIT) on 127.0.0.1 that keeps messages."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                sender, rcpts = "", []

                def say(line: str) -> None:
                    self.wfile.write(line.encode() + b"\r\n")

                say("220 sink ready")
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    cmd = raw.decode().strip()
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        say("250 sink")
                    elif verb == "MAIL":
                        sender = cmd.split(":", 1)[1].strip()
                        say("250 ok")
                    elif verb == "RCPT":
                        rcpts.append(cmd.split(":", 1)[1].strip())
                        say("250 ok")
                    elif verb == "DATA":
                        say("354 go on")
                        data = b""
                        while (line := self.rfile.readline()) not in (b".\r\n", b""):
                            data += line
                        outer.messages.append((sender, rcpts, data))
                        say("250 queued")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:
                        say("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def __enter__(self) -> SmtpSink:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_email_over_smtp(notifiers: list[Notifier]) -> None:
    with SmtpSink() as sink:
        n = _notifier(notifiers, smtp_host="127.0.0.1", smtp_port=sink.port, smtp_from="agent@example.org",
                      smtp_to=("ops@example.org", "dev@example.org"), retries=2)
        rollback = Notification("rollback", "1.1.0", "1.0.0", "rolled_back", "health check failed", "d" * 32)
        n.notify(rollback)
        _wait_stats(n, "delivered", 1)
        [(sender, rcpts, data)] = sink.messages
        assert sender == "<agent@example.org>" and rcpts == ["<ops@example.org>", "<dev@example.org>"]
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert "rollback" in msg["Subject"] and "1.1.0 -> 1.0.0" in msg["Subject"]
        body = msg.get_content()
        assert "health check failed" in body
        assert json.loads(body.strip().splitlines()[-1])["outcome"] == "rolled_back"


# ----- the agent notifies about real installs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return publish_all(tmp_path_factory.mktemp("notify-repo"), ((V1, "patch"), (V101, "patch"), (V11, "minor")))


@pytest.fixture(scope="module")
def repo_url(repo: Repo) -> Iterator[str]:
    with serve_repo(repo.dir) as url:
        yield url


def test_agent_posts_success_and_rollback_to_a_webhook(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    with Receiver() as rx:
        d = tmp_path / "inst"
        installer = init_client(d, repo_url, repo, enabled=False, webhook_url=rx.url)
        installer.install(V1)
        client_id = installer.config().text("client_id")
        with run_agent(d) as agent:
            assert agent.post(f"/api/updates/install/{V11}").status_code == 202
            assert agent.wait_job_done()["state"] == "succeeded"
            [success] = rx.wait(1)
            assert {k: success[k] for k in ("event", "versions", "outcome", "client_id", "group")} == {
                "event": "success", "versions": {"from": V1, "to": V11}, "outcome": "committed",
                "client_id": client_id, "group": None}
            assert agent.post("/api/updates/rollback").status_code == 200
            rollback = rx.wait(2)[1]
            assert rollback["event"] == "rollback" and rollback["versions"] == {"from": V11, "to": V1}
            assert rollback["reason"].startswith("manual rollback")
            assert agent.status()["notifications"]["delivered"] == 2


def test_agent_update_succeeds_when_the_webhook_receiver_is_down(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, enabled=False, webhook_url=f"http://127.0.0.1:{free_port()}/hook",
                webhook_retries=2).install(V1)
    with run_agent(d) as agent:
        assert agent.post(f"/api/updates/install/{V101}").status_code == 202
        job = agent.wait_job_done()
        assert job["state"] == "succeeded" and job["error"] is None
        assert agent.status()["installed"]["version"] == V101
        s = agent.wait_for(lambda s: s["notifications"]["failed"] >= 1, "the notifier to give up")
        assert s["notifications"]["delivered"] == 0 and s["notifications"]["attempts"] == 2
        assert "webhook" in s["notifications"]["last_error"]
        assert "webhook notification failed" in agent.log_text()


# ----- the CLI notifies about its own installs and rollbacks ----------------------------------------------------
def _cli(d: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("pinnacle-update", "--install-dir", str(d), *args, check=check)


def test_cli_install_and_rollback_post_to_the_webhook(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    with Receiver() as rx:
        d = tmp_path / "inst"
        installer = init_client(d, repo_url, repo, enabled=False, webhook_url=rx.url)
        installer.install(V1)  # the Python API leaves notifying to its caller (the agent, the CLI)
        client_id = installer.config().text("client_id")
        proc = _cli(d, "install", V11)
        assert "warning" not in proc.stderr
        [success] = rx.wait(1)  # delivered before the command exited
        assert {k: success[k] for k in ("event", "versions", "outcome", "reason", "client_id")} == {
            "event": "success", "versions": {"from": V1, "to": V11}, "outcome": "committed", "reason": "",
            "client_id": client_id}
        _cli(d, "rollback")
        rollback = rx.wait(2)[1]
        assert rollback["event"] == "rollback" and rollback["versions"] == {"from": V11, "to": V1}
        refused = _cli(d, "install", V1, check=False)  # refused (installed already): nothing to report
        assert refused.returncode == InstallRefused.exit_code and "already installed" in refused.stderr
        time.sleep(0.5)
        assert len(rx.wait(2)) == 2


def test_cli_install_failing_its_health_check_posts_the_rollback(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    with Receiver() as rx:
        d = tmp_path / "inst"
        init_client(d, repo_url, repo, enabled=False, webhook_url=rx.url).install(V1)
        _cli(d, "config", "set", "health_command", "false")  # 1.1.0 will fail its health check
        proc = _cli(d, "install", V11, check=False)
        assert proc.returncode != 0 and "health" in proc.stderr
        [rollback] = rx.wait(1)
        assert rollback["event"] == "rollback" and rollback["outcome"] == "rolled_back"
        assert rollback["versions"] == {"from": V1, "to": V11} and "health" in rollback["reason"]


def test_cli_install_with_the_receiver_down_warns_and_stands(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, enabled=False, webhook_url=f"http://127.0.0.1:{free_port()}/hook",
                webhook_retries=2).install(V1)
    proc = _cli(d, "install", V101)  # exit 0: the update stands
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: the success notification failed: webhook: ")
    assert json.loads(_cli(d, "status", "--json").stdout)["version"] == V101
