"""Reading a delta on the client, whatever its kind: the checked header, bounded readers over its
payload and over the base tree (:class:`Sources`), bounded zstd decoding (:class:`ZstdStream`) and
the creation of output files. Nothing here trusts a size the signed manifests do not give."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from typing import BinaryIO

import pyzstd

from pinnacle_updates.formats import delta_format
from pinnacle_updates.formats.archive import CHUNK_SIZE, copy_hashed, open_beneath, show_path
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry, parse_version

from .errors import DeltaError

Op = delta_format.DeltaOp
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
ZSTD_WINDOW_LOG = 27
"""Largest window a plain ``zstd`` op may use (zstd's own default limit, 128 MiB)."""
_SHORT = re.compile(r"payload should be (?P<should>\d+) bytes, the file holds (?P<holds>-?\d+)")


def read_checked_header(
    delta: BinaryIO, label: str, base: Manifest, target: Manifest | None
) -> delta_format.DeltaHeader:
    """The validated header, checked against the manifests (``target`` None: only against ``base``).
    A file shorter than its header describes is reported as truncated."""
    try:
        header = delta_format.read_header(delta)
        if target is not None:
            header.check_against(target, base)
        elif parse_version(header.base_version) != parse_version(base.version) or header.base_content != base.content:
            raise delta_format.DeltaFormatError(f"delta is not from the installed {base.version}")
    except delta_format.DeltaFormatError as exc:
        text = str(exc)
        m = _SHORT.search(text)
        if "truncated" in text or "past the end" in text or (m is not None and int(m["holds"]) < int(m["should"])):
            raise DeltaError(f"{label}: delta truncated ({exc})") from exc
        raise DeltaError(f"{label}: {exc}") from exc
    return header


def under(path: str, names: frozenset[str]) -> bool:
    """Whether ``path`` is one of ``names`` or below one."""
    return any(path == n or path.startswith(n + "/") for n in names)


def holes(base: Manifest, skip: Iterable[str]) -> frozenset[str]:
    """The persistent paths ``skip`` that ``base`` ships: the slot links them away, so their files
    are not there to read (empty when there are none)."""
    skipped = frozenset(s.strip("/") for s in skip)
    return skipped if any(under(e.path, skipped) for e in base.entries) else frozenset()


class Sources:
    """Where op bytes come from: the delta's payload (bounded, truncation is an error) and the
    base tree (every base file verified against the base manifest before its bytes are used)."""

    def __init__(
        self, delta: BinaryIO, payload: int, base_fd: int, base: dict[str, ManifestEntry], label: str
    ) -> None:
        self._delta = delta
        self._payload = payload
        self._size = os.fstat(delta.fileno()).st_size
        self.base_fd = base_fd
        self._base = base
        self.label = label

    def payload_reader(self, op: Op) -> Callable[[int], bytes]:
        """A reader over the op's bytes of the payload; ``delta truncated`` if the file ends early."""
        start = self._payload + op.offset
        return self.payload_reader_range(start, start + op.length, show_path(op.path))

    def payload_reader_range(self, start: int, end: int, what: str) -> Callable[[int], bytes]:
        """A reader over the file bytes ``start``..``end`` (for ``what``); truncation is an error. It
        reads at its own offset (``pread``), so readers of one delta may be interleaved (the shared
        streams are read alongside each op's data)."""
        if end > self._size:
            raise DeltaError(
                f"{self.label}: delta truncated ({what} needs payload bytes up to {end}, the file has {self._size})"
            )
        fd, pos = self._delta.fileno(), start

        def read(n: int) -> bytes:
            nonlocal pos
            data = os.pread(fd, min(n, end - pos), pos)
            if len(data) < min(n, end - pos):
                raise DeltaError(f"{self.label}: delta truncated while reading {what}")
            pos += len(data)
            return data

        return read

    def payload_range_bytes(self, start: int, end: int, what: str) -> bytes:
        return self.payload_reader_range(start, end, what)(end - start)

    def payload_bytes(self, op: Op) -> bytes:
        return self.payload_reader(op)(op.length)

    def base_entry(self, op: Op) -> ManifestEntry:
        name = op.base or ""
        entry = self._base.get(name)
        if entry is None or entry.type is not EntryType.FILE:
            raise DeltaError(f"{self.label}: {show_path(op.path)}: base {show_path(name)} is not a file of the base")
        return entry

    def open_base(self, op: Op) -> int:
        """Descriptor of the base file of ``op`` (no symlink followed); must be a regular file."""
        name = self.base_entry(op).path
        try:
            fd = open_beneath(self.base_fd, name, os.O_RDONLY)
        except OSError as exc:
            raise DeltaError(f"{self.label}: base file {show_path(name)} is unreadable ({exc.strerror})") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DeltaError(f"{self.label}: base file {show_path(name)} is no longer a regular file")
        return fd

    def base_bytes(self, op: Op) -> bytes:
        """The whole base file of ``op``, verified against the base manifest."""
        entry = self.base_entry(op)
        fd = self.open_base(op)
        out = bytearray()
        try:
            got, overflow = copy_hashed(lambda n: os.read(fd, n), out.extend, entry.size)
        finally:
            os.close(fd)
        if overflow or got != Digest(entry.size, entry.sha256):
            raise self.modified(entry, got, overflow)
        return bytes(out)

    def modified(self, entry: ManifestEntry, got: Digest, overflow: bool) -> DeltaError:
        what = f"larger than its {entry.size} bytes" if overflow else f"sha256 {got.sha256[:16]}..."
        return DeltaError(f"{self.label}: base file {show_path(entry.path)} was modified locally ({what})")


def create_file(dest_fd: int, entry: ManifestEntry, read: Callable[[int], bytes]) -> tuple[Digest, bool]:
    """Write ``entry`` new (``O_EXCL``, no symlink followed) with its mode; at most its size."""
    fd = open_beneath(dest_fd, entry.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), entry.mode)
        return copy_hashed(read, out.write, entry.size)


def limited(read: Callable[[int], bytes], length: int) -> Callable[[int], bytes]:
    """``read`` cut off after ``length`` bytes (then it returns ``b""``)."""
    left = length

    def take(n: int) -> bytes:
        nonlocal left
        data = read(min(n, left)) if left else b""
        left -= len(data)
        return data

    return take


class ZstdStream:
    """Bounded streaming zstd decompression of one op (``prefix``: the base for patch-from).

    The decoder's window is capped by what base and output need, so a frame cannot make the
    client allocate more than the signed sizes justify."""

    def __init__(
        self, compressed: Callable[[int], bytes], prefix: bytes | bytearray | None, size: int, where: str
    ) -> None:
        window = decoder_window_log(len(prefix) if prefix else 0, size)
        try:
            zdict = pyzstd.ZstdDict(prefix, is_raw=True).as_prefix if prefix else None
            self._d = pyzstd.ZstdDecompressor(zstd_dict=zdict, option={pyzstd.DParameter.windowLogMax: window})
        except pyzstd.ZstdError as exc:
            raise DeltaError(f"{where}: cannot set up zstd ({exc})") from exc
        self._src = compressed
        self._where = where

    def read(self, n: int) -> bytes:
        try:
            while not self._d.eof:
                data = b""
                if self._d.needs_input:
                    data = self._src(CHUNK_SIZE)
                    if not data:
                        raise DeltaError(f"{self._where}: zstd data ends early (delta truncated)")
                out: bytes = self._d.decompress(data, n)
                if out:
                    return out
        except pyzstd.ZstdError as exc:
            raise DeltaError(f"{self._where}: bad zstd data ({exc})") from exc
        return b""

    def finish(self) -> None:
        """The op's bytes must be exactly one frame."""
        if not self._d.eof or self._d.unused_data or self._src(1):
            raise DeltaError(f"{self._where}: zstd data does not end with the output")


def decoder_window_log(prefix: int, size: int) -> int:
    """The largest window :class:`ZstdStream` lets a frame use: what a ``prefix``-byte base and a
    ``size``-byte output need (``patch_window_log``), or, without a prefix, zstd's default limit."""
    return delta_format.patch_window_log(prefix, size) if prefix else ZSTD_WINDOW_LOG


def decode_all(stream: ZstdStream, size: int, what: str) -> bytes:
    """The whole output of ``stream`` in memory: exactly ``size`` bytes (never more read), then the
    end of its frame and of its data."""
    chunks, left = [], size + 1
    while left and (chunk := stream.read(left)):
        chunks.append(chunk)
        left -= len(chunk)
    if left != 1:
        raise DeltaError(f"{what} does not decode to exactly {size} bytes")
    stream.finish()
    return b"".join(chunks)


__all__ = [
    "DIR_FLAGS", "ZSTD_WINDOW_LOG", "Op", "Sources", "ZstdStream", "create_file", "decode_all",
    "decoder_window_log", "holes", "limited", "read_checked_header", "under",
]
