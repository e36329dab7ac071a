"""The agent's HTTP server limits (issue 17, class 7), against a real ``pinnacle-update serve`` on
127.0.0.1 with raw sockets playing the slow and greedy clients: request heads trickled a byte at a
time (slowloris), more idle connections than the limit, a body that never finishes, and a body far
over 64 KiB (streamed: refused after 64 KiB, the agent's peak memory does not grow by its size).
Meanwhile a normal client keeps getting answers within a bound. Bounded in count and time."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pinnacle_updates.client.agent.app import LIMITS, MAX_BODY
from tests.agent_server import V1, Agent, publish_all, run_agent, serve_repo
from tests.helpers_client import Repo, init_client

SLOW_CLIENTS = 20
ANSWER_BOUND = 2.0  # seconds a normal request may take while slow clients hold connections
CLOSE_BOUND = LIMITS.header_timeout + 5.0  # by when the agent must have dropped a slow client


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    base = tmp_path_factory.mktemp("limits")
    repo: Repo = publish_all(base, ((V1, "patch"),))
    with serve_repo(repo.dir) as url:
        d = base / "inst"
        init_client(d, url, repo, enabled=False).install(V1)
        with run_agent(d) as a:
            yield a


def _connect(agent: Agent) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", agent.port), timeout=CLOSE_BOUND)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _head(agent: Agent, method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{agent.port}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(s: socket.socket, limit: float) -> bytes:
    """What the server sent until it closed the connection (or ``limit`` passed)."""
    s.settimeout(limit)
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            got += chunk
    return got


def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (readable and at end of stream, or reset), without blocking."""
    readable, _, _ = select.select([s], [], [], 0)
    if not readable:
        return False
    try:
        return s.recv(65536, socket.MSG_PEEK) == b"" or b"HTTP/1.1 408" in s.recv(65536)
    except ConnectionResetError:
        return True


def _normal_requests_answered(agent: Agent, seconds: float) -> list[float]:
    """Fresh-connection GETs of /api/health for ``seconds``; each one's latency."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        with httpx.Client(base_url=agent.url, timeout=ANSWER_BOUND + 1, trust_env=False) as http:
            r = http.get("/api/health")
        latencies.append(time.monotonic() - t0)
        assert r.status_code == 200, r.text
        time.sleep(0.2)
    return latencies


def test_slowloris_heads_are_dropped_and_others_still_answered(agent: Agent) -> None:
    """Heads trickled a byte every half second: the agent answers others meanwhile, and drops each
    trickler (408) once ``header_timeout`` has passed since it connected (uvicorn alone never did)."""
    head = _head(agent, "GET", "/api/health", *(f"X-Pad-{i}: {'x' * 20}" for i in range(40)))
    socks = [_connect(agent) for _ in range(SLOW_CLIENTS)]
    stop = threading.Event()
    dropped_at: dict[int, float] = {}
    t0 = time.monotonic()

    def trickle() -> None:
        for pos in range(len(head) - 2):  # never the final CRLF
            for i, s in enumerate(socks):
                if i in dropped_at:
                    continue
                try:
                    s.send(head[pos:pos + 1])
                except OSError:
                    dropped_at[i] = time.monotonic() - t0
            if stop.wait(0.5) or len(dropped_at) == len(socks):
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        latencies = _normal_requests_answered(agent, 3.0)
        assert max(latencies) < ANSWER_BOUND, latencies
        deadline = t0 + CLOSE_BOUND
        while time.monotonic() < deadline and len(dropped_at) < len(socks):
            for i, s in enumerate(socks):
                if i not in dropped_at and _closed_by_server(s):
                    dropped_at[i] = time.monotonic() - t0
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(5)
        for s in socks:
            s.close()
    assert len(dropped_at) == len(socks), f"{len(socks) - len(dropped_at)} slow clients still held after {CLOSE_BOUND}s"
    assert min(dropped_at.values()) >= LIMITS.header_timeout - 1.0, dropped_at  # the deadline, not earlier


def test_more_connections_than_the_limit_do_not_lock_others_out(agent: Agent) -> None:
    """Idle connections past ``max_connections``: each new one evicts the one that waited longest for
    its request head, so a normal client is still answered and the open count stays bounded."""
    extra = 16
    socks = [_connect(agent) for _ in range(LIMITS.max_connections + extra)]
    try:
        latencies = _normal_requests_answered(agent, 1.0)
        assert max(latencies) < ANSWER_BOUND, latencies
        time.sleep(0.3)
        closed = [i for i, s in enumerate(socks) if _closed_by_server(s)]
        assert len(closed) >= extra, f"only {len(closed)} of {len(socks)} idle connections evicted"
        assert min(closed) < extra, closed  # the oldest go first
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_finishes_gets_408(agent: Agent) -> None:
    s = _connect(agent)
    with s:
        s.sendall(_head(agent, "POST", "/api/updates/check", f"Authorization: Bearer {agent.token}",
                        "Content-Type: application/json", "Content-Length: 1000") + b'{"current_version": ')
        t0 = time.monotonic()
        latencies = _normal_requests_answered(agent, 1.0)
        assert max(latencies) < ANSWER_BOUND, latencies
        answer = _answer(s, CLOSE_BOUND)
        waited = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"timeout"' in answer and b"connection: close" in answer.lower()
    assert waited < CLOSE_BOUND


def test_a_declared_big_body_is_refused_before_it_is_read(agent: Agent) -> None:
    s = _connect(agent)
    with s:
        s.sendall(_head(agent, "POST", "/api/updates/config", f"Authorization: Bearer {agent.token}",
                        "Content-Type: application/json", "Content-Length: 300000000"))
        answer = _answer(s, 5.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_streamed_big_body_is_counted_and_cut_off(agent: Agent) -> None:
    """A chunked body (no length declared) of up to 300 MB: refused with 413 once past 64 KiB, the
    connection closed; the agent's peak resident memory grows by far less than the body (it read
    the whole body before counting it, 640 MB for 300 MB)."""
    pid = agent.proc.pid
    peak_before = _vm(pid, "VmHWM")
    chunk = b"x" * (1 << 20)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    s = _connect(agent)
    with s:
        s.sendall(_head(agent, "POST", "/api/updates/config", f"Authorization: Bearer {agent.token}",
                        "Content-Type: application/json", "Transfer-Encoding: chunked"))
        s.settimeout(5.0)
        while sent < 300 * (1 << 20):
            if select.select([s], [], [], 0)[0]:
                break  # the server answered: stop sending, read it
            try:
                s.sendall(framed)
            except OSError:
                break
            sent += len(chunk)
        answer = _answer(s, 5.0)
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    assert sent < 64 * (1 << 20), f"the agent kept reading: {sent} bytes sent"
    growth = _vm(pid, "VmHWM") - peak_before
    assert growth < 32 * (1 << 20), f"peak memory grew by {growth} bytes for a body cut off at {MAX_BODY}"
    r = agent.get("/api/health")  # and the agent is fine
    assert r.status_code == 200
