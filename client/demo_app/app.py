#!/usr/bin/env python3
"""The demo's sample app: a tiny HTTP service with a health endpoint.

    app.py serve PORT       serve /health and /version on 127.0.0.1:PORT (foreground)

The release's VERSION file names the version; a file named BROKEN makes /health answer 500,
which is how the demo publishes a release whose health check fails.
"""

import http.server
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
VERSION = (HERE / "VERSION").read_text().strip()
BROKEN = (HERE / "BROKEN").exists()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            status, body = (500, b"unhealthy\n") if BROKEN else (200, b"ok\n")
        elif self.path == "/version":
            status, body = 200, VERSION.encode() + b"\n"
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log = HERE / "logs" / "access.log"
        if log.parent.is_dir():
            with open(log, "a") as f:
                f.write(f"{VERSION} {format % args}\n")


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        sys.exit("usage: app.py serve PORT")
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
