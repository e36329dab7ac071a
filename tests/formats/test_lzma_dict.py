"""formats.lzma_dict: raw LZMA2 with a preset dictionary, through liblzma."""

from __future__ import annotations

import hashlib

import pytest

from pinnacle_updates.formats import lzma_dict
from pinnacle_updates.formats.delta_format import DeltaFormatError


def noise(seed: str, size: int) -> bytes:
    return b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(size // 32 + 1))[:size]


OLD = noise("old", 200_000)
NEW = OLD[:50_000] + b"an edit in the middle" + OLD[50_000:150_000] + noise("new", 1000) + OLD[150_000:]


def test_round_trip_uses_the_dictionary() -> None:
    packed = lzma_dict.compress(NEW, OLD)
    assert len(packed) < 2_000  # the noise is found in the dictionary: only the edits cost bytes
    assert len(lzma_dict.compress(NEW, b"")) > 200_000  # without it, noise does not compress
    assert lzma_dict.decompress(packed, OLD, len(NEW)) == NEW
    assert lzma_dict.decompress(packed, bytearray(OLD), len(NEW)) == NEW  # read in place, no copy


@pytest.mark.parametrize("data, dictionary", [(b"", b""), (b"", OLD), (b"x", b""), (OLD, OLD)])
def test_edge_sizes_round_trip(data: bytes, dictionary: bytes) -> None:
    assert lzma_dict.decompress(lzma_dict.compress(data, dictionary), dictionary, len(data)) == data


def test_another_dictionary_does_not_give_the_data() -> None:
    packed = lzma_dict.compress(NEW, OLD)
    other = noise("other", len(OLD))
    try:
        assert lzma_dict.decompress(packed, other, len(NEW)) != NEW  # the caller's hashes refuse it
    except DeltaFormatError as exc:  # or the stream no longer decodes at all
        assert "corrupt" in str(exc) or "exactly" in str(exc)


@pytest.mark.parametrize("how, message", [
    ("truncated", r"does not hold exactly its \d+ bytes|corrupt|truncated"),
    ("trailing", r"has 3 bytes after its end"),
    ("flipped", r"corrupt|does not hold exactly"),
    ("empty", r"does not hold exactly|corrupt|truncated"),
    ("shorter", r"does not hold exactly its \d+ bytes"),
    ("longer", r"does not hold exactly its \d+ bytes"),
])  # fmt: skip
def test_bad_streams_are_one_line_errors(how: str, message: str) -> None:
    packed = lzma_dict.compress(NEW, OLD)
    size = len(NEW)
    if how == "truncated":
        packed = packed[: len(packed) // 2]
    elif how == "trailing":
        packed += b"abc"
    elif how == "flipped":
        packed = packed[:20] + bytes([packed[20] ^ 0x40]) + packed[21:]
    elif how == "empty":
        packed = b""
    elif how == "shorter":
        size -= 1  # the stream holds more than the signed size: never more than size + 1 is decoded
    else:
        size += 1
    with pytest.raises(DeltaFormatError, match=message) as info:  # every damage is detected by the decoder
        lzma_dict.decompress(packed, OLD, size)
    assert "\n" not in str(info.value)


def test_dictionary_size_covers_both_and_stays_in_bounds() -> None:
    assert lzma_dict.dict_size(0, 0) == lzma_dict.DICT_MIN
    assert lzma_dict.dict_size(10 << 20, 5 << 20) == 15 << 20
    assert lzma_dict.dict_size(2 << 30, 1) == lzma_dict.DICT_MAX
    assert lzma_dict.encoder_memory(10 << 20, 5 << 20) > 15 << 20


def test_without_liblzma_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lzma_dict, "_library", lambda: None)  # a machine without liblzma
    assert not lzma_dict.available()
    with pytest.raises(DeltaFormatError, match="liblzma is not available here"):
        lzma_dict.decompress(b"", b"", 0)
