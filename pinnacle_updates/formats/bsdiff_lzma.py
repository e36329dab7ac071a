"""``bsdiff-lzma`` patches: bsdiff4's matches, coded in fewer bytes.

bsdiff4 finds the matches (a suffix array of the old file, approximate matches, so code whose
addresses shifted costs a small *diff* block instead of new bytes). Its own format (``BSDIFF40``)
then compresses the three blocks with bz2. This module codes the same three blocks better, measured
on ruff 0.6.8 -> 0.6.9 (one 30 MB executable): 2.71 MB instead of 3.44 MB, 21% fewer bytes.

* **control**: bsdiff's tuples (diff length, extra length, seek; three int64 in its sign-magnitude
  form, 24 bytes a tuple) stored as 24 *byte planes*: the first byte of every tuple, then the
  second, and so on. Bytes of one plane are alike (high bytes nearly all zero, seeks' low bytes
  noisy), which LZMA models far better than interleaved tuples: 487 KB instead of 580 KB (bz2) on
  ruff, 146 KB instead of 181 KB on typescript's bundles.
* **diff** and **extra**: raw LZMA2 (preset 9e) instead of bz2: 1.63 MB instead of 2.03 MB and
  0.60 MB instead of 0.82 MB on ruff.

Layout (all integers unsigned LEB128)::

    b"BSL1"  control_length  control_packed  diff_length  diff_packed  extra_length
    control (control_packed bytes)  diff (diff_packed bytes)  extra (the rest)

Each block is one raw LZMA2 stream whose dictionary size follows from its declared length and the
output size (:func:`dict_size`), so both sides agree without storing it.

``bsdiff-shared`` ops (a per-file delta with ``shared`` streams, ``formats.delta_format``) hold only
the three raw lengths (:func:`lengths_record`); their blocks are the next bytes of three LZMA2 streams
shared by every such op of the delta, in op order (:class:`SharedStream`): one model per block kind
instead of three per file, 9% fewer bytes on scipy 1.14.0 -> 1.14.1's 127 patched files, 6% on
numpy 2.0.2 -> 2.1.0's. A reader bounds every declared length
by the output size it was promised before decompressing anything, and checks each block
decompresses to exactly its length with nothing left over. Pure: no file system access.
"""

from __future__ import annotations

import lzma
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import bsdiff4.core

from .delta_format import DeltaFormatError, decompress_exact

MAGIC = b"BSL1"
TUPLE = 24
"""Bytes of one control tuple (three int64)."""
DICT_MIN = 1 << 16
DICT_MAX = 64 << 20
"""LZMA2 dictionary bounds: no block is longer than a whole-file patch's output
(``formats.delta_segments.WHOLE_PATCH_MAX``, 64 MiB), so a larger dictionary would never be used."""
PRESET = 9 | lzma.PRESET_EXTREME
BYTES_PER_TUPLE = 32
"""A patch may hold one control tuple per this many output bytes (plus :data:`TUPLES_FREE`), so the
control block of a large file is at most 0.75x the output: real patches have about one per 250 bytes
(ruff: 121k tuples for 30 MB), and the bound keeps a hostile one from making the client allocate 24x
the output."""
TUPLES_FREE = 1024
"""Tuples any patch may have whatever its size (24 KiB): a small file edited all over needs more than
one per 32 bytes."""


def control_max(size: int) -> int:
    """The longest control block (in bytes) a patch with ``size`` output bytes may have."""
    return TUPLE * (size // BYTES_PER_TUPLE + TUPLES_FREE)


def dict_size(length: int) -> int:
    """The LZMA2 dictionary of a block of ``length`` bytes: the next power of two, within bounds."""
    return min(DICT_MAX, max(DICT_MIN, 1 << max(0, length - 1).bit_length()))


def _filters(length: int, size: int, preset: int | None = None) -> list[dict[str, int]]:
    """A block of ``length`` bytes in a patch with ``size`` output bytes: the dictionary never
    outgrows the output's, which bounds the encoder's memory by the file size (``lzma_memory``)."""
    spec = {"id": lzma.FILTER_LZMA2, "dict_size": dict_size(min(length, size))}
    if preset is not None:
        spec["preset"] = preset
    return [spec]


def _uleb(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise DeltaFormatError("bsdiff-lzma header is truncated or malformed")


def to_planes(control: bytes) -> bytes:
    """Control tuples as 24 byte planes (see the module docstring)."""
    return b"".join(control[k::TUPLE] for k in range(TUPLE))


def from_planes(planes: bytes) -> bytes:
    """The inverse of :func:`to_planes`."""
    count = len(planes) // TUPLE
    out = bytearray(len(planes))
    for k in range(TUPLE):
        out[k::TUPLE] = planes[k * count : (k + 1) * count]
    return bytes(out)


def encode(old: bytes, new: bytes) -> bytes:
    """The ``bsdiff-lzma`` patch turning ``old`` into ``new``. Memory: bsdiff4's (about 17x ``old``),
    then LZMA's match finder (about 11x the dictionary of the longest block), never both at once."""
    control, diff, extra = bsdiff4.core.diff(old, new)
    return pack(control, diff, extra, len(new))


def lzma_memory(size: int) -> int:
    """Peak bytes LZMA's encoder adds for a patch of ``size`` output bytes (measured: 90, 318 and
    606 MiB at 8, 28 and 60 MiB blocks, about 10x the dictionary), rounded up."""
    return 11 * dict_size(size)


def pack(control: bytes, diff: bytes, extra: bytes, size: int) -> bytes:
    """Code bsdiff4's three raw blocks (as ``bsdiff4.core.diff`` returns them) of a ``size``-byte output."""
    if len(control) % TUPLE:
        raise DeltaFormatError("control block is not a whole number of tuples")
    if len(control) > control_max(size):
        raise DeltaFormatError(f"{len(control) // TUPLE} control tuples for {size} bytes: over the format's bound")
    planes = to_planes(control)
    packed = [
        lzma.compress(block, format=lzma.FORMAT_RAW, filters=_filters(len(block), size, PRESET))
        for block in (planes, diff, extra)
    ]
    return b"".join((
        MAGIC, _uleb(len(planes)), _uleb(len(packed[0])), _uleb(len(diff)), _uleb(len(packed[1])),
        _uleb(len(extra)), *packed,
    ))  # fmt: skip


def unpack(patch: bytes, size: int) -> tuple[bytes, bytes, bytes]:
    """The raw (control, diff, extra) blocks of ``patch``, for an output of ``size`` bytes: no block
    may declare more than that output allows (diff and extra: ``size`` together, as every output byte
    comes from one of them; control: :func:`control_max`)."""
    spans = _spans(patch, size)
    # LZMA decoding releases the GIL: the three blocks decode side by side (ruff: 0.15 s instead of 0.19 s; the
    # diff block alone takes 0.13 s).
    with ThreadPoolExecutor(max_workers=len(spans)) as pool:
        jobs = [pool.submit(_decompress, patch[start:end], length, size) for start, end, length in spans]
        planes, diff, extra = (job.result() for job in jobs)
    return from_planes(planes), diff, extra


def packed_blocks(patch: bytes, size: int) -> list[bytes]:
    """The three coded (LZMA2) blocks of ``patch``, as :func:`pack` wrote them, not decoded."""
    return [patch[start:end] for start, end, _ in _spans(patch, size)]


def _spans(patch: bytes, size: int) -> tuple[tuple[int, int, int], ...]:
    """Where each coded block of ``patch`` starts and ends, and its raw length (checked: :func:`unpack`)."""
    if patch[: len(MAGIC)] != MAGIC:
        raise DeltaFormatError("not a bsdiff-lzma patch")
    pos = len(MAGIC)
    fields = []
    for _ in range(5):
        value, pos = _read_uleb(patch, pos)
        fields.append(value)
    control_length, control_packed, diff_length, diff_packed, extra_length = fields
    check_lengths(control_length, diff_length, extra_length, size)
    if pos + control_packed + diff_packed > len(patch):
        raise DeltaFormatError("bsdiff-lzma patch is truncated")
    return (
        (pos, pos + control_packed, control_length),
        (pos + control_packed, pos + control_packed + diff_packed, diff_length),
        (pos + control_packed + diff_packed, len(patch), extra_length),
    )


def _decompress(data: bytes, length: int, size: int) -> bytes:
    decomp = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_filters(length, size))
    return decompress_exact(decomp, data, length, "a bsdiff-lzma block")


def check_lengths(control_length: int, diff_length: int, extra_length: int, size: int) -> None:
    """Refuse raw block lengths an output of ``size`` bytes cannot need (diff and extra: ``size``
    together, as every output byte comes from one of them; control: :func:`control_max`)."""
    if control_length % TUPLE or control_length > control_max(size) or diff_length + extra_length > size:
        raise DeltaFormatError(f"bsdiff-lzma blocks declare more than an output of {size} bytes allows")


def patch(old: bytes, data: bytes, size: int) -> bytes:
    """Apply ``data`` to ``old``: exactly ``size`` bytes or :class:`DeltaFormatError`."""
    return apply_blocks(old, *unpack(data, size), size)


def apply_blocks(old: bytes, control: bytes, diff: bytes, extra: bytes, size: int) -> bytes:
    """bsdiff4's raw blocks applied to ``old``: exactly ``size`` bytes or :class:`DeltaFormatError`."""
    try:
        out: bytes = bsdiff4.core.patch(old, size, control, diff, extra)
    except (ValueError, MemoryError) as exc:
        raise DeltaFormatError(f"bad bsdiff-lzma patch ({exc})") from None
    return out


# -- bsdiff-shared: the blocks of many files in three shared streams ---------------------------------


def lengths_record(control: int, diff: int, extra: int) -> bytes:
    """A ``bsdiff-shared`` op's data: the raw lengths of its control (as planes), diff and extra blocks."""
    return _uleb(control) + _uleb(diff) + _uleb(extra)


def parse_lengths(data: bytes, size: int) -> tuple[int, int, int]:
    """The three lengths of a ``bsdiff-shared`` op's data (nothing after them), checked against an
    output of ``size`` bytes (:func:`check_lengths`)."""
    pos, fields = 0, []
    for _ in range(3):
        value, pos = _read_uleb(data, pos)
        fields.append(value)
    if pos != len(data):
        raise DeltaFormatError("bsdiff-shared op data has bytes after its three lengths")
    control, diff, extra = fields
    check_lengths(control, diff, extra, size)
    return control, diff, extra


def shared_filters(total: int, preset: int | None = None) -> list[dict[str, int]]:
    """A shared stream of ``total`` raw bytes: its dictionary is :func:`dict_size` of that, at most
    64 MiB whatever the delta's size, so the decoder's memory stays bounded."""
    spec = {"id": lzma.FILTER_LZMA2, "dict_size": dict_size(total)}
    if preset is not None:
        spec["preset"] = preset
    return [spec]


def codes_alike(length: int, size: int) -> bool:
    """True when a block of ``length`` raw bytes in a patch with ``size`` output bytes is coded with
    the same filters alone (:func:`pack`) as in a shared stream holding only it: then both codings
    are the same bytes, and a publisher can reuse one for the other."""
    return _filters(length, size, PRESET) == shared_filters(length, PRESET)


class SharedStream:
    """One shared stream being decoded: :meth:`take` gives the next ``n`` raw bytes (exactly, or
    :class:`DeltaFormatError`); :meth:`finish` checks the stream ended exactly after the last.

    ``read(n)`` yields the compressed bytes (empty at their end); ``total`` is the sum of the lengths
    every op takes, known before decoding starts, which fixes the dictionary (:func:`shared_filters`)."""

    def __init__(self, read: Callable[[int], bytes], total: int, what: str) -> None:
        self._read = read
        self._left = total
        self._what = what
        self._d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=shared_filters(total))

    def take(self, n: int) -> bytes:
        if n > self._left:
            raise DeltaFormatError(f"the shared {self._what} stream is shorter than its ops take")
        out = bytearray()
        try:
            while len(out) < n:
                if self._d.eof:
                    raise DeltaFormatError(f"the shared {self._what} stream ends before its ops do")
                data = self._read(1 << 16) if self._d.needs_input else b""
                if self._d.needs_input and not data:
                    raise DeltaFormatError(f"the shared {self._what} stream is truncated")
                out += self._d.decompress(data, n - len(out))
        except lzma.LZMAError as exc:
            raise DeltaFormatError(f"the shared {self._what} stream is corrupt ({exc})") from None
        self._left -= n
        return bytes(out)

    def finish(self) -> None:
        """Every op took its bytes, and the stream holds nothing more."""
        try:
            while not self._d.eof:
                data = self._read(1 << 16) if self._d.needs_input else b""
                if self._d.needs_input and not data:
                    break
                if self._d.decompress(data, 1):
                    raise DeltaFormatError(f"the shared {self._what} stream holds more than its ops take")
        except lzma.LZMAError as exc:
            raise DeltaFormatError(f"the shared {self._what} stream is corrupt ({exc})") from None
        if self._left or not self._d.eof or self._d.unused_data or self._read(1):
            raise DeltaFormatError(f"the shared {self._what} stream does not end with its last op")
