"""The fetcher's content codings: gzip decoded in bounded steps, anything else refused.

A real HTTP server on 127.0.0.1 answers with scripted ``Content-Encoding`` headers and bodies; the
real fetcher (the one python-tuf's Updater uses) reads them. A repository served by
``pinnacle-release serve`` or nginx gzips JSON (tests/publisher/test_hosting.py runs a whole
install through both); these tests cover what a hostile or broken server could send instead.
"""

from __future__ import annotations

import gzip
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import zstandard
from tuf.api.exceptions import DownloadError

from pinnacle_updates.client.transport import ACCEPT_ENCODING, HttpxFetcher, TransportSettings

JSON = b'{"signed": {"_type": "timestamp", "version": 7}, "signatures": []}' * 40


class CodedServer:
    """Answers every GET with ``body`` and ``headers``; records the Accept-Encoding it was sent."""

    def __init__(self) -> None:
        self.body = b""
        self.headers: dict[str, str] = {}
        self.accepted: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.accepted.append(self.headers.get("Accept-Encoding", ""))
                self.send_response(200)
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/metadata/timestamp.json"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[CodedServer]:
    s = CodedServer()
    yield s
    s.close()


def fetcher() -> HttpxFetcher:
    return HttpxFetcher(TransportSettings(retries=0, chunk_size=64 * 1024))


def test_gzip_is_asked_for_and_decoded(server: CodedServer) -> None:
    server.body, server.headers = gzip.compress(JSON), {"Content-Encoding": "gzip"}
    with fetcher() as f:
        assert f.download_bytes(server.url, len(JSON)) == JSON
    assert server.accepted == [ACCEPT_ENCODING] == ["gzip"]  # never zstd or deflate: those are refused
    server.body, server.headers = JSON, {}
    with fetcher() as f:
        assert f.download_bytes(server.url, len(JSON)) == JSON  # a plain answer is read as it is


def test_a_gzip_bomb_stops_at_the_length_limit_in_bounded_memory(server: CodedServer) -> None:
    """512 MiB of zeros gzip to about 0.5 MB; the consumer's limit (python-tuf's max length) stops the
    download after one decoded chunk, and memory never holds more than a few chunks."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    server.body = b"".join(z.compress(block) for _ in range(512)) + z.flush()
    server.headers = {"Content-Encoding": "gzip"}
    assert len(server.body) < 1 << 20
    tracemalloc.start()
    try:
        with fetcher() as f, pytest.raises(DownloadError, match="exceeding"):
            f.download_bytes(server.url, 10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"decoding held {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("coding", ["zstd", "deflate", "br", "gzip, zstd", "compress"])
def test_other_content_codings_are_refused(server: CodedServer, coding: str) -> None:
    """httpx would decode zstd and deflate in one unbounded step (a 1 KB zstd frame can hold gigabytes):
    the fetcher refuses every coding but gzip, whatever the body."""
    server.body = zstandard.ZstdCompressor().compress(JSON)
    server.headers = {"Content-Encoding": coding}
    with fetcher() as f, pytest.raises(DownloadError, match="only gzip is accepted"):
        f.download_bytes(server.url, len(JSON))


@pytest.mark.parametrize(("body", "message"), [
    (gzip.compress(JSON)[:-30], "ended early"),
    (b"\x1f\x8b\x08\x00" + bytes(40), "corrupt"),
    (b"not gzip at all, just text", "corrupt"),
])
def test_a_broken_gzip_body_is_a_download_error(server: CodedServer, body: bytes, message: str) -> None:
    server.body, server.headers = body, {"Content-Encoding": "gzip"}
    with fetcher() as f, pytest.raises(DownloadError, match=message):
        f.download_bytes(server.url, len(JSON))
