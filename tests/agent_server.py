"""Real parts for agent tests: a published repository served over HTTP, an install directory, and
``pinnacle-update serve`` as a separate process on 127.0.0.1 (port 0, read from its first line)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.helpers_client import PY, ROOT, Repo, app_files, env, init_client, make_repo, publish, tree_digest

V1, V101, V11, V2 = "1.0.0", "1.0.1", "1.1.0", "2.0.0"
NOTES = {
    V1: "First release.",
    V101: "Fixes a crash on start-up.",
    V11: "Adds the reports page.\nFaster search.",
    V2: "New storage format (breaking).",
}


def publish_all(base: Path, versions: tuple[tuple[str, str], ...]) -> Repo:
    """A repository with ``versions`` ((version, type), ...) on stable, platform any, with notes."""
    repo = make_repo(base)
    for version, kind in versions:
        notes = base / f"notes-{version}.md"
        notes.write_text(NOTES.get(version, ""))
        _publish_with_notes(repo, version, kind, notes)
    return repo


def _publish_with_notes(repo: Repo, version: str, kind: str, notes: Path) -> None:
    from tests.helpers_client import release_cli, write_tree

    src = repo.dir.parent / f"src-stable-{version}"
    write_tree(src, app_files(version, size=20_000))
    release_cli(
        "publish", str(repo.dir), str(src), "--keys", str(repo.keys), "--channel", "stable", "--version", version,
        "--type", kind, "--platform", "any", "--notes", str(notes),
    )  # fmt: skip


__all__ = ["V1", "V2", "V11", "V101", "Agent", "Receiver", "init_client", "publish", "publish_all", "serve_repo"]


@contextlib.contextmanager
def serve_repo(repo_dir: Path) -> Iterator[str]:
    from tests.helpers_client import serve

    with serve(repo_dir) as url:
        yield url


@dataclass
class Agent:
    """A running ``pinnacle-update serve`` and an httpx client for it."""

    install_dir: Path
    url: str
    token: str
    proc: subprocess.Popen[str]
    http: httpx.Client

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, json_body: Any = None, *, token: bool = True, **kw: Any) -> httpx.Response:
        headers = {**(self.auth() if token else {}), **kw.pop("headers", {})}
        return self.http.post(path, json=json_body, headers=headers, **kw)

    def status(self) -> dict[str, Any]:
        r = self.get("/api/updates/status")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str, limit: float = 60.0) -> dict[str, Any]:
        """Poll the status until ``predicate`` holds (a bound on waiting, not a timing assertion)."""
        deadline = time.monotonic() + limit
        while True:
            s = self.status()
            if predicate(s):
                return s
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"gave up waiting for {what}; last status: {json.dumps(s)[:2000]}")
            time.sleep(0.05)

    def wait_job_done(self, limit: float = 60.0) -> dict[str, Any]:
        s = self.wait_for(lambda s: s["job"] is not None and s["job"]["state"] != "running", "the job to end", limit)
        job: dict[str, Any] = s["job"]
        return job

    def log_text(self) -> str:
        logs = self.install_dir / "logs"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("auto_updater.log*")))


@contextlib.contextmanager
def run_agent(install_dir: Path, *extra: str, extra_env: dict[str, str] | None = None) -> Iterator[Agent]:
    """``pinnacle-update --install-dir DIR serve --port 0`` as a child process."""
    proc = subprocess.Popen(
        [PY, "-m", "pinnacle_updates.client", "--install-dir", str(install_dir), "serve", "--port", "0", *extra],
        cwd=ROOT,
        env={**env(), **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("serving "):
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"agent did not start: {line!r} {err}")
        url = line.split(" ", 1)[1]
        token = (install_dir / "agent.token").read_text().strip()
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
            yield Agent(install_dir, url, token, proc, http)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_error(r: httpx.Response, status: int, code: str) -> str:
    """Assert ``r`` is the API's one error shape with ``status`` and ``code``; its one-line message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) - {"field"} == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message and "\n" not in message and "Traceback" not in message
    return message


def state_digest(d: Path) -> dict[str, str]:
    """What an install decision could change: config, state, history, the ``current`` link, slots
    and the trusted metadata (not the lock, logs, hook logs or the token)."""
    keep = ("config.toml", "state.json", "history.jsonl", "current", "slots", "tuf", "metadata", "manifests")
    return {k: v for k, v in tree_digest(d).items() if k.split("/", 1)[0] in keep}


# ----- a real webhook receiver -------------------------------------------------------------------------
class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTed JSON; answers ``fail_first`` requests with 500."""

    def __init__(self, fail_first: int = 0, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.status = status
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with outer.lock:
                    outer.attempts += 1
                    failing = outer.attempts <= outer.fail_first
                    if not failing and outer.status < 300:
                        outer.received.append(json.loads(body))
                        outer.headers.append(dict(self.headers))
                self.send_response(500 if failing else outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, limit: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.received)} of {count} notifications ({self.attempts} attempts)")


def free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_env() -> dict[str, str]:
    return dict(os.environ)
