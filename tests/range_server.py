"""An in-process ``repo_tools.serve`` server that tests can count, slow down and break.

It is the real handler of ``pinnacle-release serve`` (so range requests are answered by the code
users run) with three knobs: ``drop_after`` closes the connection after that many body bytes of
the next matching response (once), ``delay`` sleeps between body pieces (so another process can
be killed mid-download), ``ignore_range`` makes it behave like a server without range support.
``served[path]`` counts the body bytes actually sent, ``ranges`` records the Range headers seen.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pinnacle_updates.repo_tools.serve import _Handler

PIECE = 16 * 1024


class RangeServer:
    def __init__(self, directory: Path) -> None:
        self.served: dict[str, int] = defaultdict(int)
        self.ranges: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None
        self.drop_match = ""
        self.delay = 0.0
        self.ignore_range = False
        self._lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            quiet = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def send_head(self) -> Any:
                with owner._lock:
                    owner.ranges.append((self.path, self.headers.get("Range")))
                if owner.ignore_range and "Range" in self.headers:
                    del self.headers["Range"]
                return super().send_head()

            def copyfile(self, source: Any, outputfile: Any) -> None:
                path = self.path.split("?", 1)[0]
                with owner._lock:
                    limit = owner.drop_after if owner.drop_match in path else None
                    if limit is not None:
                        owner.drop_after = None  # once
                sent = 0
                while data := source.read(PIECE if limit is None else min(PIECE, limit - sent)):
                    try:
                        outputfile.write(data)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client is gone (killed): nothing more is served
                    outputfile.flush()
                    sent += len(data)
                    with owner._lock:
                        owner.served[path] += len(data)
                    if limit is not None and sent >= limit:
                        self.close_connection = True
                        outputfile.flush()
                        self.connection.shutdown(2)  # the peer sees the body end early
                        return
                    if owner.delay:
                        time.sleep(owner.delay)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def bytes_for(self, fragment: str) -> int:
        """Body bytes served for paths containing ``fragment``."""
        with self._lock:
            return sum(n for p, n in self.served.items() if fragment in p)

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
