"""The whole-archive bsdiff4 container kind (``archive-bsdiff4``, docs/DELTA-FORMAT.md): its apply side
under forged, truncated and oversized patches (beyond the truncation and bit-flip sweeps that
tests/formats/test_delta_corruption.py runs on every vector, this one included), a decompression bomb in
bounded memory, what a client that does not know a container kind does, and when the publisher builds
and keeps the candidate.

Every case goes through what the client runs (``manifest_from_delta`` then ``apply_delta``, via
``test_delta_corruption.Client``), which checks that nothing outside the staging directory changed and
that an accepted delta rebuilt exactly the signed target files.
"""

from __future__ import annotations

import bz2
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import bsdiff4.core
import bsdiff4.format
import pytest

from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.delta_apply import kinds
from pinnacle_updates.formats.delta_apply.whole_archive import bsdiff4_decode_memory
from pinnacle_updates.formats.delta_format import read_header
from pinnacle_updates.formats.delta_kinds import ContainerKind
from pinnacle_updates.repo_tools import delta as publisher
from tests import helpers_client as hc
from tests.client.test_delta_client import assert_fell_back, delta_file, forge_delta, install, installed_ok
from tests.formats.test_delta_corruption import REPO, Client, Vector, rebuild, set_path, vector

NAME = "whole-archive-bsdiff4"
KIND = ContainerKind.WHOLE_ARCHIVE_BSDIFF4.value


def patch_of(vec: Vector) -> bytes:
    header = read_header(io.BytesIO(vec.data))
    start, end = header.archive_range()
    return vec.data[start:end]


def with_patch(vec: Vector, patch: bytes) -> bytes:
    """``vec``'s delta carrying ``patch`` as its archive patch (the header's length follows)."""
    return rebuild(vec, set_path(KIND, "length", value=len(patch)), patch)


def stock(size: int, control: bytes, diff: bytes, extra: bytes) -> bytes:
    out = io.BytesIO()
    bsdiff4.format.write_patch(out, size, control, diff, extra)
    return out.getvalue()


def tuples(*values: tuple[int, int, int]) -> bytes:
    return b"".join(bsdiff4.core.encode_int64(v) for t in values for v in t)


def bz2_header(size: int, control: bytes, diff: bytes, extra: bytes) -> bytes:
    """A BSDIFF40 patch from already bz2-coded blocks (for blocks ``write_patch`` would not write)."""
    return (b"BSDIFF40" + bsdiff4.core.encode_int64(len(control)) + bsdiff4.core.encode_int64(len(diff))
            + bsdiff4.core.encode_int64(size) + control + diff + extra)


def test_the_vector_is_the_new_kind_and_applies() -> None:
    vec = vector(NAME)
    assert vec.doc["kind"] == KIND and read_header(io.BytesIO(vec.data)).kind is ContainerKind.WHOLE_ARCHIVE_BSDIFF4


FORGED: list[tuple[str, Any, str]] = [
    ("length 2**62", lambda v: rebuild(v, set_path(KIND, "length", value=1 << 62)), r"truncated"),
    ("length one short", lambda v: rebuild(v, set_path(KIND, "length", value=len(patch_of(v)) - 1)),
     r"payload should be"),
    ("with ops", lambda v: rebuild(v, set_path("ops", value=[])), r"exactly one of 'ops'"),
    ("with a zstd archive too", lambda v: rebuild(v, set_path("archive", value={"length": 1})),
     r"exactly one of 'ops'"),
    ("length as a string", lambda v: rebuild(v, set_path(KIND, "length", value="289")), r"non-negative integer"),
    ("not BSDIFF40", lambda v: with_patch(v, b"BSDIFF41" + patch_of(v)[8:]), r"not a bsdiff4 patch"),
    ("shorter than its header", lambda v: with_patch(v, patch_of(v)[:31]), r"not a bsdiff4 patch"),
    ("declares one byte more than the signed tar (oversized)",
     lambda v: with_patch(v, patch_of(v)[:24] + bsdiff4.core.encode_int64(v.target.content.length + 1)
                          + patch_of(v)[32:]), r"declares 92161 output bytes, the signed size is 92160"),
    ("declares 2**62 output bytes",
     lambda v: with_patch(v, patch_of(v)[:24] + bsdiff4.core.encode_int64(1 << 62) + patch_of(v)[32:]),
     r"declares 4611686018427387904 output bytes"),
    ("control block length past the end",
     lambda v: with_patch(v, patch_of(v)[:8] + bsdiff4.core.encode_int64(10**6) + patch_of(v)[16:]),
     r"truncated or malformed"),
    ("negative diff block length",
     lambda v: with_patch(v, patch_of(v)[:16] + bsdiff4.core.encode_int64(-5) + patch_of(v)[24:]),
     r"truncated or malformed"),
    ("control tuples past the output (oversized)",
     lambda v: with_patch(v, stock(v.target.content.length, tuples((v.target.content.length + 1, 0, 0)), b"", b"")),
     r"bad bsdiff4 patch \(corrupt patch"),
    ("control block not whole tuples",
     lambda v: with_patch(v, bz2_header(v.target.content.length, bz2.compress(b"\0" * 23), bz2.compress(b""),
                                        bz2.compress(b""))), r"control block is malformed"),
    ("control block over control_max",
     lambda v: with_patch(v, bz2_header(v.target.content.length,
                                        bz2.compress(bytes(bsdiff_lzma.control_max(v.target.content.length) + 24)),
                                        bz2.compress(b""), bz2.compress(b""))),
     r"decompresses to more than the signed size allows"),
    ("extra block one byte over the signed tar (oversized)",
     lambda v: with_patch(v, bz2_header(v.target.content.length, bz2.compress(b""), bz2.compress(b""),
                                        bz2.compress(bytes(v.target.content.length + 1)))),
     r"decompresses to more than the signed size allows"),
    ("a bz2 block cut short", lambda v: with_patch(v, patch_of(v)[:-10]), r"truncated"),
    ("a valid patch rebuilding another tar of the same size",
     lambda v: with_patch(v, stock(v.target.content.length, tuples((0, v.target.content.length, 0)), b"",
                                   bytes(v.target.content.length))), r"archive|tar|header"),
    ("the base tar's own bytes (an empty change)",
     lambda v: with_patch(v, stock(v.target.content.length, tuples((v.target.content.length, 0, 0)),
                                   bytes(v.target.content.length), b"")), r"sha256|manifest"),
]


@pytest.mark.parametrize(("what", "make", "match"), FORGED, ids=[c[0] for c in FORGED])
def test_forged_archive_patches_are_refused(tmp_path: Path, what: str, make: Any, match: str) -> None:
    vec = vector(NAME)
    message = Client(tmp_path, vec).attempt(make(vec))
    assert message is not None and re.search(match, message), message


def test_a_256_mib_bz2_bomb_in_the_diff_block_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A diff block of 256 MiB of zeros (about 200 bytes of bz2) against a 92,160-byte signed tar: refused
    after size + 1 decoded bytes, in a fresh process whose peak grows far less than the bomb."""
    vec = vector(NAME)
    size = vec.target.content.length
    bomb = bz2.BZ2Compressor(9)
    zeros = bytes(16 << 20)
    diff = b"".join(bomb.compress(zeros) for _ in range(16)) + bomb.flush()
    delta = tmp_path / "bomb.pdelta"
    delta.write_bytes(with_patch(vec, bz2_header(size, bz2.compress(tuples((size, 0, 0))), diff, bz2.compress(b""))))
    script = f"""
import json, resource
from pathlib import Path
from pinnacle_updates.formats.delta_apply import DeltaError, apply_delta
from pinnacle_updates.formats.index import Manifest
doc = json.loads(Path({str(vec.root / 'vector.json')!r}).read_text())
m = lambda d: Manifest.from_bytes(json.dumps(d).encode())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dest = Path({str(tmp_path / 'slot')!r}); dest.mkdir()
try:
    apply_delta(Path({str(delta)!r}), Path({str(vec.root / 'base')!r}), m(doc["base_manifest"]),
                m(doc["target_manifest"]), dest)
    print("accepted")
except DeltaError as exc:
    print(json.dumps([str(exc), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    message, before, after = json.loads(out.stdout)
    assert "decompresses to more than the signed size allows" in message
    assert (after - before) * 1024 < 32 << 20, f"peak grew by {(after - before) // 1024} MiB"


def test_a_client_that_does_not_know_a_container_kind_refuses_the_delta_in_one_line(tmp_path: Path) -> None:
    """How kinds are declared: only by the header field that marks the container. A reader refuses a
    field it does not know (as a client from before ``archive-bsdiff4`` refuses this kind) with
    ``DeltaError``, which makes the installer fall back to the full artifact (tests/client/
    test_delta_client.py); nothing is written. Shown with a kind this client does not know."""
    vec = vector(NAME)
    unknown = rebuild(vec, lambda doc: doc.update({"archive-xdelta": doc.pop(KIND)}))
    message = Client(tmp_path, vec).attempt(unknown)
    assert message is not None and "unexpected field(s) 'archive-xdelta'" in message, message


def test_the_apply_memory_bound_covers_both_tars_and_the_blocks() -> None:
    vec = vector(NAME)
    old, new = vec.base.content.length, vec.target.content.length
    bound = kinds.CONTAINER_APPLIERS[ContainerKind.WHOLE_ARCHIVE_BSDIFF4].decode_memory(vec.base, vec.target)
    assert bound == bsdiff4_decode_memory(vec.base, vec.target)
    assert bound >= 3 * old + 5 * new + bsdiff_lzma.control_max(new)


def publish(tmp_path: Path, vec: Vector, budget: int = publisher.DEFAULT_MEMORY_BUDGET) -> ContainerKind:
    header, _ = publisher.build_delta(vec.root / "base", vec.base, vec.root / "target", vec.target,
                                      tmp_path / "out.pdelta", tmp_path, budget, manifest_level=19,
                                      whole_archive=True, jobs=1)
    return header.kind


def test_the_publisher_keeps_the_candidate_only_where_it_is_tried_and_smallest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vector's trees: chosen by default (smallest); not built when the best container so far is
    over ``ARCHIVE_BSDIFF4_TRY_MAX`` or the encoder does not fit the memory budget."""
    vec = vector(NAME)
    assert publish(tmp_path, vec) is ContainerKind.WHOLE_ARCHIVE_BSDIFF4
    assert (tmp_path / "out.pdelta").read_bytes() == vec.data
    monkeypatch.setattr(publisher, "ARCHIVE_BSDIFF4_TRY_MAX", 100)
    assert publish(tmp_path, vec) is not ContainerKind.WHOLE_ARCHIVE_BSDIFF4
    monkeypatch.undo()
    need = publisher.archive_bsdiff4_memory(vec.base, vec.target)
    args = (vec.root / "base", vec.base, vec.root / "target", vec.target)
    assert publisher.archive_bsdiff4_patch(*args, need - 1) is None
    assert publisher.archive_bsdiff4_patch(*args, need) == patch_of(vec)


def test_a_container_that_is_not_smaller_is_not_kept(tmp_path: Path) -> None:
    """The zstd whole-archive vector (many small text edits): bsdiff4 is tried there (the best container is
    small) and loses, so the vector is unchanged (test_delta_vectors regenerates it too)."""
    vec = vector("whole-archive")
    assert publish(tmp_path, vec) is ContainerKind.WHOLE_ARCHIVE
    assert publisher.archive_bsdiff4_patch(vec.root / "base", vec.base, vec.root / "target", vec.target,
                                           1 << 30) is not None


# -- through the real publisher CLI, TUF client and installer ---------------------------------------


def publish_vector_trees(tmp_path: Path) -> hc.Repo:
    """The vector's trees (plus what the installer's health check and ``installed_ok`` read) published as
    1.0.0 and 1.1.0 with ``pinnacle-release publish``; 1.1.0 carries a delta from 1.0.0."""
    vec = vector(NAME)
    repo = hc.make_repo(tmp_path / "pub")
    for version, side in (("1.0.0", "base"), ("1.1.0", "target")):
        files: dict[str, bytes | str] = {
            str(p.relative_to(vec.root / side)): p.read_bytes() for p in (vec.root / side).rglob("*") if p.is_file()}
        files.update({"healthy": "ok\n", "VERSION": f"{version}\n"})
        src = tmp_path / f"src-{version}"
        hc.write_tree(src, files)
        hc.release_cli("publish", str(repo.dir), str(src), "--keys", str(repo.keys), "--channel", "stable",
                       "--version", version, "--type", "patch", "--platform", "any", "--deltas", "1")
    return repo


def test_the_client_installs_a_published_archive_bsdiff4_delta_and_falls_back_from_an_unknown_kind(
    tmp_path: Path,
) -> None:
    """End to end: ``publish`` picks the kind for these trees, the installer takes the delta (TUF-verified
    download, manifest from the rebuilt tar, no manifest download) and the slot verifies. Then the same
    delta re-signed with the container field renamed to a kind this client does not know (what a client
    from before ``archive-bsdiff4`` sees): the installer falls back to the full artifact, one line."""
    repo = publish_vector_trees(tmp_path)
    assert read_header(io.BytesIO(delta_file(repo, "1.1.0", "1.0.0").read_bytes())).kind.value == KIND
    d = tmp_path / "inst"
    ins = hc.init_client(d, str(repo.dir), repo)
    ins.install("1.0.0")
    install(d, "1.1.0")
    record = installed_ok(d, "1.1.0")
    assert record["path"] == "delta" and "fallback_reason" not in record, record

    d2 = tmp_path / "inst2"
    hc.init_client(d2, str(repo.dir), repo).install("1.0.0")
    vec = vector(NAME)
    forge_delta(repo, "1.1.0", "1.0.0", lambda data: rebuild(replace(vec, data=data), lambda doc: doc.update(
        {"archive-xdelta": doc.pop(KIND)})))
    _, watch, _ = install(d2, "1.1.0")
    assert_fell_back(d2, watch, r"unexpected field\(s\) 'archive-xdelta'")

