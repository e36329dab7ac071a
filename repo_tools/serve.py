"""A small static file server for a repository directory: for the demo, tests and local trials.

The repository needs no server logic; this only serves files, with the cache headers a CDN
should use (``repo_tools.hosting.cache_control_for``, the rule nginx gets too): ``timestamp.json``
and error answers are never cached, every other file is immutable under consistent snapshots.

JSON answers are gzipped for a client that accepts it (``repo_tools.hosting.gzip_worthwhile``,
the rule nginx gets too), with ``Vary: Accept-Encoding``; a range request gets the plain file's bytes.
Error answers carry a one-line text body (a client probes for the next root on every refresh).

Single byte ranges (``Range: bytes=N-``, ``bytes=N-M``, ``bytes=-S``) are answered with 206 and
``Content-Range`` so that an interrupted client download resumes (416 when the range starts past
the end); anything else in a ``Range`` header is ignored and the whole file sent, as RFC 9110
allows.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import re
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from .hosting import GZIP_LEVEL, accepts_gzip, cache_control_for, content_type_for, gzip_worthwhile

_RANGE = re.compile(r"^bytes=(?P<start>\d*)-(?P<end>\d*)$")


class RangeNotSatisfiable(Exception):
    """The requested range starts at or after the end of the file (HTTP 416)."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte positions ``header`` asks for in a file of ``size``
    bytes; None when the header is not one single byte range (then the whole file is sent).
    Raises :class:`RangeNotSatisfiable` when no byte of the file is in the range."""
    m = _RANGE.match(header.strip())
    if m is None or not (m["start"] or m["end"]):
        return None
    if not m["start"]:  # suffix: the last N bytes
        length = int(m["end"])
        if length == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - length), size - 1
    first = int(m["start"])
    if m["end"] and int(m["end"]) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(header)
    last = int(m["end"]) if m["end"] else size - 1
    return first, min(last, size - 1)


class _Slice:
    """A file object that reads at most ``remaining`` bytes (``copyfile`` reads to EOF)."""

    def __init__(self, f: BinaryIO, remaining: int) -> None:
        self._f = f
        self._remaining = remaining

    def read(self, n: int = -1) -> bytes:
        n = self._remaining if n < 0 else min(n, self._remaining)
        data = self._f.read(n)
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class _Handler(SimpleHTTPRequestHandler):
    quiet = True
    _status = 200
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def send_response_only(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response_only(code, message)

    def end_headers(self) -> None:
        url_path = self.path.split("?", 1)[0]
        self.send_header("Cache-Control", cache_control_for(url_path, self._status))
        if self._status < 400 and content_type_for(url_path) == "application/json":
            self.send_header("Vary", "Accept-Encoding")  # caches keep the gzipped and the plain answer apart
        super().end_headers()

    def _gzipped(self, path: str) -> io.BytesIO | None:
        """The gzipped answer for a JSON file when the client accepts gzip (headers sent), else None."""
        if not accepts_gzip(self.headers.get("Accept-Encoding")):
            return None
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                # Decided before reading: every target (artifacts of hundreds of MB) comes through here.
                if not gzip_worthwhile(self.path.split("?", 1)[0], st.st_size):
                    return None
                data = f.read()
        except OSError:
            return None
        body = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
        self.end_headers()
        return io.BytesIO(body)

    def send_head(self) -> Any:
        """The plain answer, or a 206/416 for a single byte range of a file; 404 for dot files
        (the publisher's lock file is not part of the repository)."""
        if any(part.startswith(".") for part in self.path.split("?", 1)[0].split("/")):
            self.send_error(404, "File not found")
            return None
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        if wanted is None:
            return self._gzipped(path) or super().send_head()
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by do_GET/do_HEAD via the returned object
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        try:
            span = parse_range(wanted, size)
        except RangeNotSatisfiable:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if span is None:
            f.close()
            return super().send_head()
        first, last = span
        f.seek(first)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Slice(f, last - first + 1)

    def list_directory(self, path: Any) -> None:  # type: ignore[override, unused-ignore]
        self.send_error(404, "Not found")
        return None

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> ThreadingHTTPServer:
    handler = functools.partial(_Handler, directory=str(directory))
    _Handler.quiet = quiet
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(directory: Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> None:
    """Serve ``directory`` until interrupted; print the URL first (tests read it from stdout)."""
    server = make_server(directory, host, port, quiet)
    bound_host, bound_port = server.server_address[:2]
    host_text = bound_host.decode() if isinstance(bound_host, bytes) else bound_host  # typeshed allows bytes
    print(f"serving http://{host_text}:{bound_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()
