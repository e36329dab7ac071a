"""``pinnacle-release serve``'s gzip: JSON gzipped for a client that accepts it; every other file sent as
it is, and never read whole into memory to find that out (targets can be hundreds of MB)."""

from __future__ import annotations

import gzip
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pinnacle_updates.repo_tools.hosting import GZIP_MIN_LENGTH
from pinnacle_updates.repo_tools.serve import make_server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = make_server(tmp_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_json_is_gzipped_and_the_rest_is_not(served: tuple[str, Path]) -> None:
    url, root = served
    (root / "timestamp.json").write_bytes(b'{"signed": "x"}' * 100)
    (root / "small.json").write_bytes(b"{}" * (GZIP_MIN_LENGTH // 2 - 1))
    (root / "abc.full.tar.zst").write_bytes(b"z" * 10_000)
    with httpx.Client(base_url=url, headers={"Accept-Encoding": "gzip"}) as http:
        r = http.get("/timestamp.json")
        assert r.headers["Content-Encoding"] == "gzip" and r.content == (root / "timestamp.json").read_bytes()
        assert int(r.headers["Content-Length"]) == len(gzip.compress(r.content, 9, mtime=0))
        for name in ("small.json", "abc.full.tar.zst"):
            r = http.get(f"/{name}")
            assert "Content-Encoding" not in r.headers and r.content == (root / name).read_bytes()


def test_a_large_target_is_streamed_not_read_whole(served: tuple[str, Path]) -> None:
    url, root = served
    size = 64 << 20
    with open(root / "abc.full.tar.zst", "wb") as f:
        f.truncate(size)
    tracemalloc.start()
    try:
        with httpx.Client(base_url=url, headers={"Accept-Encoding": "gzip"}) as http, \
                http.stream("GET", "/abc.full.tar.zst") as r:
            got = sum(len(chunk) for chunk in r.iter_raw(1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == size
    assert peak < 16 << 20, f"the server held {peak / 2**20:.0f} MiB to send a {size >> 20} MiB target"
