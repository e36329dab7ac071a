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
    plain = {"Accept-Encoding": "identity"}  # the bodies as stored; a gzipped answer is counted below
    with bench.CountingServer(tmp_path) as server, httpx.Client(base_url=server.url, headers=plain) as client:
        for name, data in files.items():
            got = client.get(name)
            assert got.status_code == 200 and got.content == data
        missing = client.get("metadata/2.root.json")
        assert missing.status_code == 404
        ranged = client.get("targets/stable/linux/1.1/ef56.from-1.0.pdelta", headers={"Range": "bytes=100-199"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        download = server.take()
        assert server.take().requests == []  # take() forgets what it returned
        zipped = client.get("metadata/timestamp.json", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["Content-Encoding"] == "gzip" and zipped.content == files["metadata/timestamp.json"]
        assert server.take().by_kind() == {"timestamp": int(zipped.headers["Content-Length"])}  # bytes as sent
        assert int(zipped.headers["Content-Length"]) < 100
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


def _verdict(lines: list[str], goal: str) -> str:
    """PASS / FAIL / NOT MEASURED of the goal line starting ``- goal``."""
    line = next(line for line in lines if line.startswith(f"- {goal} "))
    return line.rsplit("**", 2)[-2]


def test_anchor_limit(bench: ModuleType) -> None:
    """D1: the best anchor is the smallest of the three; the limit 1.1x of it or + 2 KiB, whichever is larger;
    index + manifest + delta count, TUF metadata does not."""
    pair = bench.Pair("x", "pypi", "1", "2", "test")
    r = bench.Result(pair, full=100_000, tufup=50_000, bsdiff=40_000, zstd=45_000)
    assert r.best_anchor == ("bsdiff4 whole", 40_000)
    r.ours_download = bench.Download([bench.Served("/targets/a.pdelta", 200, 44_000, 44_200)])
    assert _verdict(bench.goals([r])[0], "D1") == "PASS"
    r.ours_download = bench.Download([bench.Served("/targets/a.pdelta", 200, 44_001, 44_201)])
    lines, ok = bench.goals([r])
    assert _verdict(lines, "D1") == "FAIL" and not ok
    small = bench.Result(pair, full=10_000, tufup=1_000, bsdiff=900, zstd=950)
    small.ours_download = bench.Download([bench.Served("/targets/stable/index.json.zst", 200, 48, 100),
                                          bench.Served("/targets/a.pdelta", 200, 900 + 2000, 3_100),
                                          bench.Served("/metadata/timestamp.json", 200, 5_000, 5_100)])
    assert _verdict(bench.goals([small])[0], "D1") == "PASS"  # the index counts, the metadata does not
    small.ours_download.requests[0].body = 49
    assert _verdict(bench.goals([small])[0], "D1") == "FAIL"


def test_issue23_goals(bench: ModuleType) -> None:
    """The other goals of issue 23 each decide on their own figures, at their limits."""
    run = bench.Run

    def result(name: str, **kw: object) -> object:
        r = bench.Result(bench.Pair(name, "pypi", "1", "2", "test"), full=1_000_000, tufup=400_000, bsdiff=390_000,
                         zstd=500_000)
        r.ours_download = bench.Download([bench.Served("/targets/a.pdelta", 200, 240_000, 240_100)])
        r.tufup_download = bench.Download([bench.Served("/targets/a.patch", 200, 400_000, 400_100)])
        r.ours_delta, r.budget_delta = 100_000, 125_000
        r.ours_client_duration, r.tufup_client_duration = 0.5, 1.0
        r.ours_client, r.tufup_client = run(0.5, 0.5, 1, ""), run(2.0, 2.0, 1, "")
        r.ours_publish, r.tufup_publish = run(10.0, 20.0, 100, ""), run(20.0, 20.0, 100, "")
        r.bsdiff_run = run(1.0, 1.0, 1000, "")
        for key, value in kw.items():
            setattr(r, key, value)
        return r

    lines, ok = bench.goals([result("ruff"), result("idna")])
    assert ok, lines
    assert [_verdict(lines, g) for g in ("D1", "D3", "C1", "C2", "D4", "D5")] == ["PASS"] * 6
    cases = {
        "D3": {"ours_download": bench.Download([bench.Served("/targets/a.pdelta", 200, 240_001, 240_100)])},
        "C1": {"ours_client_duration": 0.51},
        "C2": {"ours_client": run(0.51, 0.5, 1, "")},
        "D5": {"budget_delta": 125_001},
    }
    for goal, change in cases.items():
        lines, ok = bench.goals([result("ruff", **change)])
        assert _verdict(lines, goal) == "FAIL" and not ok, (goal, lines)
    lines, ok = bench.goals([result("ruff", ours_publish=run(10.0, 20.1, 100, ""))])
    assert not ok and "FAIL" in next(line for line in lines if "publish CPU" in line)
    lines, ok = bench.goals([result("ruff", ours_publish=run(10.0, 1.0, 601, ""))])
    assert not ok and "FAIL" in next(line for line in lines if "peak RSS" in line)
    # D3 only for the native pairs; C2 only where tufup's client takes 2 s or more
    lines, _ = bench.goals([result("idna", tufup_client=run(1.9, 1.9, 1, ""))])
    assert not any(line.startswith(("- D3 ", "- C2 ")) for line in lines)
    lines, ok = bench.goals([result("ruff", budget_delta=None)])
    assert _verdict(lines, "D5") == "NOT MEASURED" and not ok
