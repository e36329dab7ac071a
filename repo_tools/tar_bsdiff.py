"""The ``archive-bsdiff4`` patch composed from per-file matches, without a suffix sort of the whole tar.

A stock ``BSDIFF40`` patch is a list of control tuples (x bytes added from the old file and the diff
block, y bytes copied from the extra block, then the old pointer moved by z) plus the two blocks; nothing
obliges the tuples to come from one suffix sort of the whole old file. The canonical tars' layout is a
pure function of the manifests (``formats.archive``: each entry's :func:`tar_header` blocks, a file's
bytes, zero padding to 512 bytes, two zero blocks and zeros to the 10 KiB record), so each target
member is placed against the base tar without building either tar:

- a header: against the base header of the same path (else of the base file the plan matched), byte by
  byte (mostly zeros in the diff block: the size and checksum fields differ); else the extra block;
- a file whose sha256 is a base file's: one run against that base file's bytes, all zeros in the diff;
- a changed file with a base file (``core.delta_plan``'s matching): bsdiff4 of the two files, its tuples
  moved to tar offsets; a new file: the extra block;
- padding and the trailer: zeros against the base zeros as far as the old pointer is in a base padding
  or the trailer, the rest in the extra block.

Runs that follow on in both tars share one tuple, so an unchanged stretch of members costs one tuple.
Memory: the diff and extra blocks (at most the target tar) and one changed file's bsdiff4 at a time.
"""

from __future__ import annotations

import bisect
import io
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable

import bsdiff4.core
import bsdiff4.format

from pinnacle_updates.formats import bsdiff_lzma
from pinnacle_updates.formats.archive import padding, tar_header
from pinnacle_updates.formats.index import EntryType, Manifest, ManifestEntry

from .core.delta_plan import bsdiff4_memory, plan_delta

_UNBOUNDED = 1 << 62
Read = Callable[[ManifestEntry], bytes]

KNOWN_BYTES_MAX = 16 << 20
"""Packed bytes of the per-file bsdiff4 results kept for the composed patch (:func:`remember`); the oldest go
first (a mostly-zero result packs to a few KiB, at most about ``BSDIFF4_TRY_MAX``)."""

_Packed = tuple[bytes, bytes, bytes]


class _Kept:
    """The kept results, oldest first, with their packed size kept beside them: a publish of thousands of small
    changes remembers as many, and summing every entry again on each would be quadratic."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], _Packed] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: tuple[str, str], packed: _Packed) -> None:
        with self._lock:
            self._drop(self._entries.pop(key, None))
            self._entries[key] = packed
            self._bytes += sum(map(len, packed))
            while self._bytes > KNOWN_BYTES_MAX:
                self._drop(self._entries.popitem(last=False)[1])

    def get(self, key: tuple[str, str]) -> _Packed | None:
        with self._lock:
            return self._entries.get(key)

    def packed_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def _drop(self, packed: _Packed | None) -> None:
        self._bytes -= sum(map(len, packed)) if packed is not None else 0


_known = _Kept()


def remember(old_sha256: str, new_sha256: str, control: bytes, diff: bytes, extra: bytes) -> None:
    """Keep the bsdiff4 blocks the per-file ``bsdiff4`` candidate found for the file ``new_sha256`` against
    ``old_sha256``, so the composed patch reuses them instead of sorting the file again (its suffix sort is
    most of the composed patch's time: 5.1 of 5.3 s on typescript 5.6.2 -> 5.6.3). Only mostly-zero blocks
    come here (``BSDIFF4_TRY_MAX``): zlib at level 1 keeps them in a few KiB. Keyed by content, so a result
    is never applied to other bytes (bsdiff4 is deterministic: the same tuples as sorting again)."""
    _known.put((old_sha256, new_sha256), (control, zlib.compress(diff, 1), zlib.compress(extra, 1)))


def _recall(old_sha256: str, new_sha256: str) -> _Packed | None:
    found = _known.get((old_sha256, new_sha256))
    if found is None:
        return None
    return found[0], zlib.decompress(found[1]), zlib.decompress(found[2])


class _Layout:
    """Where each member of a manifest's canonical tar lies: header offset and bytes, data offset."""

    def __init__(self, manifest: Manifest) -> None:
        self.header: dict[str, tuple[int, bytes]] = {}
        self.data: dict[str, int] = {}
        self.zeros: list[tuple[int, int]] = []  # (start, end) of the padding runs and the trailer, ascending
        pos = 0
        for e in manifest.entries:
            head = tar_header(e)
            self.header[e.path] = (pos, head)
            pos += len(head)
            if e.type is EntryType.FILE:
                self.data[e.path] = pos
                pos += e.size
                if pad := padding(e.size):
                    self.zeros.append((pos, pos + pad))
                pos += pad
        self.trailer = pos
        self.length = pos + 2 * tarfile.BLOCKSIZE
        self.length += -self.length % tarfile.RECORDSIZE
        self.zeros.append((pos, self.length))
        self._starts = [start for start, _ in self.zeros]

    def zero_run(self, pos: int, n: int) -> bool:
        """True when the base tar holds ``n`` zero bytes from ``pos`` (within one padding or the trailer)."""
        return self.zeros_at(pos) >= n

    def zeros_at(self, pos: int) -> int:
        """How many zero bytes the base tar holds from ``pos`` (as far as one padding or the trailer goes)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        return max(0, self.zeros[i][1] - pos) if i >= 0 else 0


class _Patch:
    """The control tuples and blocks, built run by run; adjacent runs share a tuple."""

    def __init__(self) -> None:
        self.control: list[list[int]] = [[0, 0, 0]]
        self.diff = bytearray()
        self.extra = bytearray()
        self.old = 0  # the old pointer after the current tuple's x bytes
        self.new = 0

    def add(self, n: int, old: int, diff: bytes | None = None) -> None:
        """``n`` target bytes from the base tar at ``old``, plus ``diff`` (``None``: all zeros)."""
        if n <= 0:
            return
        last = self.control[-1]
        if last[1] or old != self.old:
            last[2] = old - self.old
            self.control.append([0, 0, 0])
            last = self.control[-1]
        last[0] += n
        if diff is None:
            self.diff += bytes(n)
        else:
            self.diff += diff
        self.old = old + n
        self.new += n

    def copy(self, data: bytes) -> None:
        """``data`` from the extra block."""
        if data:
            self.control[-1][1] += len(data)
            self.extra += data
            self.new += len(data)

    def zeros(self, n: int, base: _Layout) -> None:
        """``n`` zero bytes: against the base zeros as far as the old pointer is in some, the rest extra."""
        have = min(n, base.zeros_at(self.old))
        self.add(have, self.old)
        self.copy(bytes(n - have))


def _delta(new: bytes, old: bytes) -> bytes:
    return bytes((a - b) & 0xFF for a, b in zip(new, old, strict=True))


def composed_memory(base: Manifest, target: Manifest) -> int:
    """Peak bytes :func:`composed_patch` adds: the diff and extra blocks and the patch (the target tar
    each at most), and the largest changed file's bsdiff4 with both files held."""
    largest = max((bsdiff4_memory(p.base.size, p.entry.size) + p.base.size + 3 * p.entry.size
                   for p in plan_delta(base, target, _UNBOUNDED).files if p.base is not None and not p.is_copy),
                  default=0)
    return 3 * target.content.length + largest


def composed_patch(base: Manifest, target: Manifest, read_old: Read, read_new: Read) -> bytes | None:
    """The stock ``BSDIFF40`` patch of ``target``'s canonical tar against ``base``'s (module docstring).
    ``read_old``/``read_new`` return a file's bytes, checked against its entry. ``None`` when the control
    block would be longer than clients accept (``bsdiff_lzma.control_max`` of the target tar)."""
    old_tar, new_tar = _Layout(base), _Layout(target)
    matched = {p.entry.path: p.base for p in plan_delta(base, target, _UNBOUNDED).files if p.base is not None}
    out = _Patch()
    for e in target.entries:
        head = tar_header(e)
        base_file = matched.get(e.path)
        against = old_tar.header.get(e.path) or (old_tar.header[base_file.path] if base_file else None)
        if against is None:
            out.copy(head)
        else:
            at, old_head = against
            n = min(len(head), len(old_head))
            out.add(n, at, _delta(head[:n], old_head[:n]))
            out.copy(head[n:])
        if e.type is not EntryType.FILE:
            continue
        if base_file is None:
            out.copy(read_new(e))
        elif base_file.sha256 == e.sha256:
            out.add(e.size, old_tar.data[base_file.path])
        else:
            blocks = _recall(base_file.sha256, e.sha256) or bsdiff4.core.diff(read_old(base_file), read_new(e))
            _changed(out, old_tar.data[base_file.path], *blocks)
        out.zeros(padding(e.size), old_tar)
    tail = new_tar.length - new_tar.trailer
    if old_tar.zero_run(out.old, tail) and not out.control[-1][1]:
        out.add(tail, out.old)
    else:
        n = min(tail, old_tar.length - old_tar.trailer)
        out.add(n, old_tar.trailer)
        out.copy(bytes(tail - n))
    assert out.new == new_tar.length == target.content.length
    if bsdiff_lzma.TUPLE * len(out.control) > bsdiff_lzma.control_max(out.new):
        return None
    control = b"".join(bsdiff4.core.encode_int64(v) for t in out.control for v in t)
    patch = io.BytesIO()
    bsdiff4.format.write_patch(patch, out.new, control, bytes(out.diff), bytes(out.extra))
    return patch.getvalue()


def _changed(out: _Patch, at: int, control: bytes, diff: bytes, extra: bytes) -> None:
    """A file's bsdiff4 blocks against its base file (whose bytes start at ``at`` in the base tar); ``control``
    holds int64 triples in bsdiff's sign-magnitude."""
    pos = d = x_ = 0
    for i in range(0, len(control), 24):
        x, y, z = (bsdiff4.core.decode_int64(control[j:j + 8]) for j in range(i, i + 24, 8))
        out.add(x, at + pos, diff[d:d + x])
        out.copy(extra[x_:x_ + y])
        d += x
        x_ += y
        pos += x + z
