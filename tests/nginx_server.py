"""nginx serving a repository directory, for the tests and ``bench/hosting.py``.

An unprivileged nginx master (``nginx -p PREFIX -c PREFIX/nginx.conf -e stderr -g 'daemon off;'``)
in its own session, listening on 127.0.0.1 on a free port, with the configuration users get from
``pinnacle-release nginx-config`` (``repo_tools.hosting``: the same cache headers, byte ranges,
no directory listings). Every path it writes (pid, error log, access log, temp directories) is in
PREFIX, a temporary directory removed by :meth:`NginxServer.stop`. A server still running when the
Python process exits is stopped then, and nginx gets SIGTERM if its parent dies first (Linux
``PR_SET_PDEATHSIG``), so a killed test run leaves no nginx behind.

The access log has one JSON object per request (``repo_tools.hosting.ACCESS_LOG_FIELDS``);
:meth:`NginxServer.requests` parses it, so a test can count requests and body bytes at the server.
nginx writes a request's line when it has finished with it, so a test that just got a response
waits for the line with :meth:`NginxServer.wait_for`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pinnacle_updates.repo_tools.hosting import nginx_standalone

START_TIMEOUT = 15.0


_RUNNING: weakref.WeakSet[NginxServer] = weakref.WeakSet()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (nginx's fast shutdown) when the parent goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where Debian puts it (``/usr/sbin`` is not on every PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Request:
    """One line of the access log."""

    status: int
    body_bytes: int  # body bytes sent (for a client that went away: as far as nginx got)
    bytes: int  # with the response headers
    method: str
    uri: str
    range: str | None
    time: float  # when nginx finished the request (epoch seconds)
    request_time: float
    connection: int

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]

    @classmethod
    def parse(cls, line: str) -> Request:
        f = json.loads(line)
        return cls(
            status=int(f["status"]),
            body_bytes=int(f["body_bytes"]),
            bytes=int(f["bytes"]),
            method=f["method"],
            uri=f["uri"],
            range=f["range"] or None,
            time=float(f["time"]),
            request_time=float(f["request_time"]),
            connection=int(f["connection"]),
        )


class NginxServer:
    """A running nginx serving ``directory`` at :attr:`url` (``http://127.0.0.1:PORT/``)."""

    def __init__(
        self,
        directory: Path,
        *,
        workers: int | str = 1,
        worker_connections: int = 1024,
        limit_rate: str | None = None,
        nginx: str | None = None,
        server_extra: str = "",
        tls: bool = False,
    ) -> None:
        """``server_extra``: directives added to the server block (auth_basic, ssl_* ...); ``tls``:
        listen with ``ssl`` (``server_extra`` names the certificate) and serve ``https://``."""
        binary = nginx or find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        self.prefix = Path(tempfile.mkdtemp(prefix="pinnacle-nginx-"))
        self.access_log = self.prefix / "access.log"
        self._final: list[Request] | None = None
        for _ in range(5):  # a free port can be taken by someone else before nginx binds it
            for name in ("stderr.log", "error.log"):
                (self.prefix / name).unlink(missing_ok=True)
            port = free_port()
            conf = nginx_standalone(directory, self.prefix, listen=f"127.0.0.1:{port}{' ssl' if tls else ''}",
                                    workers=workers, worker_connections=worker_connections, limit_rate=limit_rate)
            conf = conf.replace("    server {\n", "    server {\n" + server_extra, 1)
            (self.prefix / "nginx.conf").write_text(conf)
            with open(self.prefix / "stderr.log", "wb") as err:
                self.process = subprocess.Popen(
                    [binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-e", "stderr",
                     "-g", "daemon off;"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )  # fmt: skip
            if self._wait_ready(port):
                self.port = port
                self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
                _RUNNING.add(self)
                return
            self._halt()
            if "Address already in use" not in self._logs():
                break
        logs = self._logs()
        self.stop()
        raise RuntimeError(f"nginx did not start: {logs.strip()[-2000:]}")

    def _logs(self) -> str:
        return "".join(
            (self.prefix / name).read_text(errors="replace") for name in ("stderr.log", "error.log")
            if (self.prefix / name).exists()
        )

    def _wait_ready(self, port: int) -> bool:
        """True once this nginx listens (its pid file names it and the port accepts connections)."""
        deadline = time.monotonic() + START_TIMEOUT
        pid_file = self.prefix / "nginx.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError, ValueError):
                if int(pid_file.read_text()) == self.process.pid:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return True
            time.sleep(0.02)
        return False

    # -- the access log ---------------------------------------------------------------------

    def requests(self) -> list[Request]:
        """Every request logged so far (after :meth:`stop`: every request it served)."""
        if self._final is not None:
            return list(self._final)
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return []
        return [Request.parse(line) for line in text.splitlines() if line.endswith("}")]

    def wait_for(self, condition: Callable[[list[Request]], bool], timeout: float = 30.0) -> list[Request]:
        """The logged requests once ``condition`` holds for them (it raises after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            logged = self.requests()
            if condition(logged):
                return logged
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx's access log never met the condition; it has {logged}")
            time.sleep(0.02)

    # -- stopping ---------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """User + system CPU time of the master and its workers so far (Linux ``/proc``)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in [self.process.pid, *_children(self.process.pid)]:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stop(self) -> None:
        """Stop nginx (master and workers) and remove its directory; idempotent."""
        self._halt()
        if self._final is None and self.prefix.exists():
            self._final = self.requests()
            shutil.rmtree(self.prefix, ignore_errors=True)

    def _halt(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: workers close their connections
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own session: master and workers
                self.process.wait()

    def __enter__(self) -> NginxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found
