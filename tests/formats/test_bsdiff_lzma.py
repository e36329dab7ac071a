"""The ``bsdiff-lzma`` patch format (formats.bsdiff_lzma): exact round trips, smaller than bsdiff4's own
format on code-like data, and one clear error (never an over-allocation) for every malformed patch."""

from __future__ import annotations

import io
import random
from pathlib import Path

import bsdiff4
import pytest

from pinnacle_updates.client.delta import apply_delta
from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.bsdiff_lzma import TUPLE, dict_size, from_planes, pack, to_planes
from pinnacle_updates.formats.delta_format import DeltaFormatError, OpKind, read_header
from pinnacle_updates.formats.tree import verify_tree
from pinnacle_updates.repo_tools.delta import build_delta
from tests.client.test_delta_client import Trees, trees  # noqa: F401 (a fixture)


def _code_like(seed: int, size: int) -> bytes:
    """Bytes with the texture of machine code: short opcodes, many 4-byte displacements."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += bytes([rng.choice((0xE8, 0x48, 0x8B, 0x89, 0x0F))]) + rng.randrange(1 << 20).to_bytes(4, "little")
    return bytes(out[:size])


def _shifted(old: bytes, seed: int) -> bytes:
    """``old`` with a few insertions, so later displacements move: what a recompile looks like."""
    rng = random.Random(seed)
    new = bytearray(old)
    for _ in range(20):
        at = rng.randrange(len(new))
        new[at:at] = rng.randbytes(rng.randrange(1, 64))
    return bytes(new)


OLD = _code_like(1, 300_000)
NEW = _shifted(OLD, 2)
PATCH = bsdiff_lzma.encode(OLD, NEW)


def test_round_trip_and_smaller_than_bsdiff4() -> None:
    assert bsdiff_lzma.patch(OLD, PATCH, len(NEW)) == NEW
    assert len(PATCH) < len(bsdiff4.diff(OLD, NEW))
    assert bsdiff_lzma.encode(OLD, NEW) == PATCH  # deterministic
    for old, new in ((b"", b"x"), (b"abc", b""), (b"same" * 10, b"same" * 10)):
        assert bsdiff_lzma.patch(old, bsdiff_lzma.encode(old, new), len(new)) == new


def test_planes_invert() -> None:
    control = bytes(range(240))
    assert from_planes(to_planes(control)) == control
    assert to_planes(control)[:10] == bytes(range(0, 240, 24))


def test_dictionary_follows_the_declared_length() -> None:
    assert dict_size(0) == dict_size(1) == 1 << 16
    assert dict_size((1 << 20) + 1) == 2 << 20
    assert dict_size(1 << 40) == 64 << 20


def _fields(data: bytes) -> tuple[list[int], int]:
    pos, fields = 4, []
    for _ in range(5):
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        fields.append(value)
    return fields, pos


def _uleb(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _with_fields(fields: list[int]) -> bytes:
    _, pos = _fields(PATCH)
    return b"BSL1" + b"".join(map(_uleb, fields)) + PATCH[pos:]


def _corrupt_middle(data: bytes) -> bytes:
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x55
    return bytes(bad)


FIELDS, _ = _fields(PATCH)


@pytest.mark.parametrize("data, size, match", [
    (b"BSDIFF40" + PATCH[4:], len(NEW), "not a bsdiff-lzma patch"),
    (PATCH[:6], len(NEW), "header is truncated"),
    (PATCH[:-200], len(NEW), "does not hold exactly its declared|corrupt"),
    (PATCH + b"\0", len(NEW), "does not hold exactly its declared"),
    (PATCH, len(NEW) - 1, "declare more than an output of|bad bsdiff-lzma patch"),
    (PATCH, len(NEW) + 1, "bad bsdiff-lzma patch"),
    (_with_fields([FIELDS[0] + 1, *FIELDS[1:]]), len(NEW), "declare more than|does not hold exactly its declared"),
    (_with_fields([FIELDS[0], 10**9, *FIELDS[2:]]), len(NEW), "truncated"),
    (_with_fields([*FIELDS[:4], 10**12]), len(NEW), "declare more than an output of"),
    (_with_fields([FIELDS[0], FIELDS[1], FIELDS[2] - 1, *FIELDS[3:]]), len(NEW), "does not hold exactly its declared"),
    (b"BSL1" + b"\xff" * 12, len(NEW), "header is truncated or malformed"),
])  # fmt: skip
def test_malformed_patch_is_one_clear_error(data: bytes, size: int, match: str) -> None:
    with pytest.raises(DeltaFormatError, match=match) as info:
        bsdiff_lzma.patch(OLD, data, size)
    assert "\n" not in str(info.value)


def test_corrupted_block_never_gives_the_new_bytes() -> None:
    """LZMA2 carries no checksum: a flipped byte may decode to other bytes. The caller's signed sha256
    catches that (client.delta); here it is enough that the output is refused or differs."""
    try:
        out = bsdiff_lzma.patch(OLD, _corrupt_middle(PATCH), len(NEW))
    except DeltaFormatError as exc:
        assert "\n" not in str(exc)
    else:
        assert out != NEW and len(out) == len(NEW)


def test_control_that_overruns_the_blocks_is_refused() -> None:
    control, diff, extra = bsdiff4.core.diff(OLD, NEW)
    lying = bsdiff4.core.encode_int64(len(NEW)) + bytes(16)  # one tuple claiming a diff run of the whole output
    with pytest.raises(DeltaFormatError, match="bad bsdiff-lzma patch"):
        bsdiff_lzma.patch(OLD, pack(lying, diff[:10], extra, len(NEW)), len(NEW))
    with pytest.raises(DeltaFormatError, match="whole number of tuples"):
        pack(control[:-1], diff, extra, len(NEW))


def test_control_bound_is_one_tuple_per_32_output_bytes_and_1024_more(monkeypatch: pytest.MonkeyPatch) -> None:
    control, diff, extra = bsdiff4.core.diff(OLD, NEW)
    assert len(control) <= bsdiff_lzma.control_max(len(NEW))  # real patches are far below the bound
    assert bsdiff_lzma.control_max(0) == TUPLE * 1024 and bsdiff_lzma.control_max(3200) == TUPLE * 1124
    monkeypatch.setattr(bsdiff_lzma, "TUPLES_FREE", 0)
    size = (len(control) // TUPLE - 1) * 32  # an output whose bound is one tuple short
    with pytest.raises(DeltaFormatError, match="over the format's bound"):
        pack(control, diff, extra, size)
    with pytest.raises(DeltaFormatError, match="declare more than an output of"):
        bsdiff_lzma.patch(OLD, PATCH, size)


def test_publisher_drops_a_patch_over_the_bound(
    tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (the fixture)
) -> None:
    """A bsdiff-lzma patch clients would refuse is never written: another candidate takes its place."""
    (base_root, base_m), (root, target_m) = trees
    refused = []
    real_pack = bsdiff_lzma.pack

    def pack(control: bytes, diff: bytes, extra: bytes, size: int) -> bytes:
        try:
            return real_pack(control, diff, extra, size)
        except DeltaFormatError as exc:
            refused.append(str(exc))
            raise

    monkeypatch.setattr(bsdiff_lzma, "BYTES_PER_TUPLE", 1 << 40)  # no tuple for any file: every patch is over
    monkeypatch.setattr(bsdiff_lzma, "TUPLES_FREE", 0)
    monkeypatch.setattr(bsdiff_lzma, "pack", pack)
    out, work = tmp_path / "d.pdelta", tmp_path / "work"
    work.mkdir()
    build_delta(base_root, base_m, root, target_m, out, work)
    header = read_header(io.BytesIO(out.read_bytes()))
    assert refused and all("over the format's bound" in r for r in refused)
    assert not {OpKind.BSDIFF_LZMA, OpKind.BSDIFF_SHARED} & {op.op for op in header.ops}
    assert {op.op for op in header.ops} >= {OpKind.COPY, OpKind.ZSTD_PATCH}
    monkeypatch.undo()
    dest = tmp_path / "slot"
    dest.mkdir()
    apply_delta(out, base_root, base_m, target_m, dest)
    assert verify_tree(dest, target_m) == []
