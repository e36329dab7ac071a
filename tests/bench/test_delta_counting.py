"""bench/delta.py's byte accounting: the counting server must report exactly the bytes each answer's body had, by
kind, for whole files, byte ranges and 404s alike, or every all-included figure of docs/DELTA-BENCHMARK.md is wrong."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import delta
        yield delta
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_counts_bodies_by_kind(bench: ModuleType, tmp_path: Path) -> None:
    files = {
        "metadata/timestamp.json": b"t" * 513,
        "metadata/7.snapshot.json": b"s" * 850,
        "metadata/3.targets.json": b"T" * 99,
        "metadata/4.stable.json": b"r" * 1189,
        "targets/ab12.index.json": b"i" * 1344,
        "targets/stable/linux/1.1/cd34.manifest.json.zst": b"m" * 700,
        "targets/stable/linux/1.1/ef56.from-1.0.pdelta": bytes(range(256)) * 40,
        "targets/bench-1.1.patch": b"p" * 77,
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with bench.CountingServer(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        for name, data in files.items():
            got = client.get(name)
            assert got.status_code == 200 and got.content == data
        missing = client.get("metadata/2.root.json")
        assert missing.status_code == 404
        ranged = client.get("targets/stable/linux/1.1/ef56.from-1.0.pdelta", headers={"Range": "bytes=100-199"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        download = server.take()
        assert server.take().requests == []  # take() forgets what it returned
    kinds = download.by_kind()
    assert kinds == {
        "timestamp": 513, "snapshot": 850, "targets": 99, "delegated role": 1189, "index": 1344, "manifest": 700,
        "delta": 10240 + 100, "patch": 77, "root": len(missing.content),
    }
    assert len(missing.content) > 0  # a 404's body is downloaded too
    assert download.total == sum(kinds.values())
    assert download.targets == 1344 + 700 + 10240 + 100 + 77  # index, manifest, delta, patch: no TUF roles
    assert sum(r.wire for r in download.requests) > download.total  # status lines and headers on top
    assert download.describe().startswith("root ")
    assert download.describe().endswith(f"({len(files) + 2} requests)")


def test_anchor_limit(bench: ModuleType) -> None:
    """A1: the best anchor is the smallest of the three; the limit 1.1x of it or + 2 KiB, whichever is larger."""
    pair = bench.Pair("x", "pypi", "1", "2", "test")
    r = bench.Result(pair, full=100_000, tufup=50_000, bsdiff=40_000, zstd=45_000)
    assert r.best_anchor == ("bsdiff4 whole", 40_000)
    r.ours_download = bench.Download([bench.Served("/targets/a.pdelta", 200, 44_000, 44_200)])
    lines, ok = bench.goals([r])
    assert any(line.startswith("- A1") and "PASS" in line for line in lines)
    r.ours_download = bench.Download([bench.Served("/targets/a.pdelta", 200, 44_001, 44_201)])
    lines, ok = bench.goals([r])
    assert any(line.startswith("- A1") and "FAIL" in line for line in lines) and not ok
    small = bench.Result(pair, full=10_000, tufup=1_000, bsdiff=900, zstd=950)
    small.ours_download = bench.Download([bench.Served("/targets/a.pdelta", 200, 900 + 2048, 3_100),
                                          bench.Served("/metadata/timestamp.json", 200, 1, 100)])
    lines, _ = bench.goals([small])
    assert any(line.startswith("- A1 ") and "PASS" in line for line in lines)  # targets only
    assert any(line.startswith("- A1+") and "FAIL" in line for line in lines)  # one byte of metadata too many
