"""A small static file server for a repository directory: for the demo, tests and local trials.

The repository needs no server logic; this only serves files, with the cache headers a CDN
should use: ``timestamp.json`` must never be cached (it is what announces new releases), every
other file is immutable under consistent snapshots (python-tuf #2605).
"""

from __future__ import annotations

import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

NO_CACHE_FILES = {"timestamp.json"}


def cache_control_for(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name in NO_CACHE_FILES or not name:
        return "no-cache, no-store, max-age=0"
    return "public, max-age=31536000, immutable"


class _Handler(SimpleHTTPRequestHandler):
    quiet = True

    def end_headers(self) -> None:
        self.send_header("Cache-Control", cache_control_for(self.path.split("?", 1)[0]))
        super().end_headers()

    def list_directory(self, path: Any) -> None:  # type: ignore[override]
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
    print(f"serving http://{bound_host}:{bound_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()
