"""The delta container (``*.pdelta``): one pure reader/writer shared by the publisher and the client.

Layout (docs/ARCHITECTURE.md, "Deltas")::

    b"PDELTA1\\n"  u64 big-endian header length H  header (H bytes, canonical JSON)  payload

The header names the base and target releases (version and canonical-content digest) and lists one
op per *file* entry of the target manifest, in manifest order. Data ops (``bsdiff4``, ``zstd-patch``,
``zstd``) own the byte range ``[offset, offset + length)`` of the payload; this format requires those
ranges to be contiguous, in op order, starting at 0 and ending exactly at the end of the file, so a
delta has no unused, overlapping or trailing bytes to hide anything in.

Nothing here trusts the header for sizes, modes or hashes of output files: those always come from
the signed target manifest (:meth:`DeltaHeader.check_against` ties the two together). Pure: no file
system access; callers pass open binary streams and the file size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO

from .index import (
    Digest,
    EntryType,
    FormatError,
    Manifest,
    _int,
    _load_json,
    _str,
    canonical_json,
    parse_version,
    release_dir,
)

MAGIC = b"PDELTA1\n"
DELTA_FORMAT = 1
MAX_HEADER = 64 << 20
"""Default bound on the JSON header (about 400k ops): a hostile length field cannot make a reader
allocate more than this."""

_LENGTH = struct.Struct(">Q")
PREFIX_LENGTH = len(MAGIC) + _LENGTH.size
"""Bytes before the JSON header: magic and the u64 header length."""

ZSTD_WINDOWLOG_MIN = 10
ZSTD_WINDOWLOG_MAX = 31


class DeltaFormatError(FormatError):
    """A delta file does not follow the container format or does not fit its manifests (one line)."""


class OpKind(StrEnum):
    """How one target file is produced."""

    COPY = "copy"  # the base file ``base`` has the target's sha256: no bytes in the payload
    BSDIFF4 = "bsdiff4"  # bsdiff4 (BSDIFF40) patch against the base file
    ZSTD_PATCH = "zstd-patch"  # one zstd frame compressed with the base file as raw prefix
    ZSTD = "zstd"  # one plain zstd frame of the whole file (a new file)

    @property
    def has_base(self) -> bool:
        return self is not OpKind.ZSTD

    @property
    def has_data(self) -> bool:
        return self is not OpKind.COPY


def patch_window_log(base_size: int, size: int) -> int:
    """The zstd window log of a ``zstd-patch`` frame: large enough to cover the prefix (the base file)
    and the new file, so a match can reach back to any base byte. Encoders set it; decoders must
    allow it (``windowLogMax``) and can compute it from the two signed sizes."""
    return min(ZSTD_WINDOWLOG_MAX, max(ZSTD_WINDOWLOG_MIN, (base_size + size - 1).bit_length()))


def delta_path(channel: str, platform: str, version: str, base_version: str) -> str:
    """The target path of the delta rebuilding ``version`` from ``base_version``."""
    return f"{release_dir(channel, platform, version)}/from-{base_version}.pdelta"


@dataclass(frozen=True)
class DeltaOp:
    """One target file: ``path`` (a target manifest file), ``op``, the base file ``base`` (all but
    ``zstd``) and, for data ops, its byte range ``offset``/``length`` relative to the payload start."""

    path: str
    op: OpKind
    base: str | None = None
    offset: int = 0
    length: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "op": self.op.value}
        if self.base is not None:
            out["base"] = self.base
        if self.op.has_data:
            out.update(offset=self.offset, length=self.length)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> DeltaOp:
        if not isinstance(data, Mapping):
            raise DeltaFormatError(f"{where}: expected an object")
        try:
            kind = OpKind(str(data.get("op")))
        except ValueError:
            raise DeltaFormatError(f"{where}: unknown op {data.get('op')!r}") from None
        allowed = {"path", "op"} | ({"base"} if kind.has_base else set()) | (
            {"offset", "length"} if kind.has_data else set()
        )
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise DeltaFormatError(f"{where}: unexpected field(s) {', '.join(map(repr, unknown))} for op {kind}")
        try:
            path = _str(data, "path", where)
            base = _str(data, "base", where) if kind.has_base else None
            if not kind.has_data:
                return cls(path, kind, base)
            return cls(path, kind, base, _int(data, "offset", where), _int(data, "length", where))
        except DeltaFormatError:
            raise
        except FormatError as exc:
            raise DeltaFormatError(str(exc)) from None


@dataclass(frozen=True)
class DeltaHeader:
    """The parsed header. ``payload_start`` is the absolute file offset of the payload: set by
    :func:`read_header` (and by :func:`write_delta` callers through ``encode``); not serialised."""

    base_version: str
    version: str
    base_content: Digest
    content: Digest
    ops: tuple[DeltaOp, ...]
    payload_start: int = 0

    @property
    def payload_length(self) -> int:
        """Bytes of payload the ops own (they are contiguous from 0)."""
        return sum(op.length for op in self.ops)

    def data_range(self, op: DeltaOp) -> tuple[int, int]:
        """Absolute ``(start, end)`` file offsets of ``op``'s data."""
        start = self.payload_start + op.offset
        return start, start + op.length

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": DELTA_FORMAT,
            "from": self.base_version,
            "to": self.version,
            "from_content": self.base_content.to_dict(),
            "to_content": self.content.to_dict(),
            "ops": [op.to_dict() for op in self.ops],
        }

    def encode(self) -> bytes:
        """The header JSON (canonical: sorted keys, compact, UTF-8)."""
        return canonical_json(self.to_dict())

    def check_layout(self) -> None:
        """Data ops must own contiguous payload ranges in op order, starting at 0."""
        expected = 0
        for i, op in enumerate(self.ops):
            if not op.op.has_data:
                continue
            if op.offset != expected:
                raise DeltaFormatError(
                    f"delta op #{i} ({op.path}): data at payload offset {op.offset}, expected {expected} "
                    "(ops must be contiguous and in order)"
                )
            expected += op.length

    def check_against(self, target: Manifest, base: Manifest) -> None:
        """Refuse a header that does not rebuild exactly ``target`` from exactly ``base``.

        Checks versions and content digests on both sides; that the ops name every *file* of the
        target manifest once, in manifest order; that every base path is a file of the base manifest;
        and that a ``copy`` op's base file has the target file's sha256 and size.
        """
        for what, mine, theirs in (("target", self.version, target.version), ("base", self.base_version,
                                                                               base.version)):
            if parse_version(mine) != parse_version(theirs):
                raise DeltaFormatError(f"delta {what} version {mine} does not match the {what} manifest {theirs}")
        if self.content != target.content:
            raise DeltaFormatError(f"delta target content digest differs from manifest {target.version}")
        if self.base_content != base.content:
            raise DeltaFormatError(f"delta base content digest differs from manifest {base.version}")
        files = [e for e in target.entries if e.type is EntryType.FILE]
        if len(files) != len(self.ops):
            raise DeltaFormatError(f"delta has {len(self.ops)} ops for the {len(files)} files of {target.version}")
        base_files = {e.path: e for e in base.entries if e.type is EntryType.FILE}
        for i, (entry, op) in enumerate(zip(files, self.ops, strict=True)):
            if op.path != entry.path:
                raise DeltaFormatError(f"delta op #{i} is for {op.path!r}, the manifest's file #{i} is {entry.path!r}")
            if op.base is None:
                continue
            base_entry = base_files.get(op.base)
            if base_entry is None:
                raise DeltaFormatError(f"delta op #{i} ({op.path}): base {op.base!r} is not a file of {base.version}")
            if op.op is OpKind.COPY and (base_entry.sha256, base_entry.size) != (entry.sha256, entry.size):
                raise DeltaFormatError(f"delta op #{i} ({op.path}): copy from {op.base!r}, whose content differs")

    @classmethod
    def from_bytes(cls, data: bytes, payload_start: int = 0) -> DeltaHeader:
        """Parse and validate the header JSON (shape, versions, digests, ops, layout)."""
        try:
            doc = _load_json(data, "delta header")
        except FormatError as exc:
            raise DeltaFormatError(str(exc)) from None
        if doc.get("format") != DELTA_FORMAT:
            raise DeltaFormatError(f"delta header: unsupported format {doc.get('format')!r} (reads {DELTA_FORMAT})")
        unknown = sorted(set(doc) - {"format", "from", "to", "from_content", "to_content", "ops"})
        if unknown:
            raise DeltaFormatError(f"delta header: unexpected field(s) {', '.join(map(repr, unknown))}")
        raw_ops = doc.get("ops")
        if not isinstance(raw_ops, list):
            raise DeltaFormatError("delta header: 'ops' must be a list")
        try:
            base_version, version = _str(doc, "from", "delta header"), _str(doc, "to", "delta header")
            parse_version(base_version)
            parse_version(version)
            header = cls(
                base_version=base_version,
                version=version,
                base_content=Digest.from_dict(doc.get("from_content"), "delta header.from_content"),
                content=Digest.from_dict(doc.get("to_content"), "delta header.to_content"),
                ops=tuple(DeltaOp.from_dict(op, f"delta op #{i}") for i, op in enumerate(raw_ops)),
                payload_start=payload_start,
            )
        except DeltaFormatError:
            raise
        except FormatError as exc:
            raise DeltaFormatError(str(exc)) from None
        header.check_layout()
        return header


def write_delta(out: BinaryIO, header: DeltaHeader, payload_chunks: Iterable[bytes]) -> int:
    """Write the container: magic, header length, header, then ``payload_chunks`` as they come.

    The header must already carry the final offsets and lengths; the chunks must add up to exactly
    ``header.payload_length`` (else ``DeltaFormatError``: the output is then incomplete and must be
    discarded). Returns the number of bytes written.
    """
    header.check_layout()
    encoded = header.encode()
    out.write(MAGIC)
    out.write(_LENGTH.pack(len(encoded)))
    out.write(encoded)
    written = 0
    for chunk in payload_chunks:
        out.write(chunk)
        written += len(chunk)
    if written != header.payload_length:
        raise DeltaFormatError(f"delta payload has {written} bytes, its ops describe {header.payload_length}")
    return PREFIX_LENGTH + len(encoded) + written


def read_header(f: BinaryIO, file_size: int | None = None, max_header: int = MAX_HEADER) -> DeltaHeader:
    """Read and validate the header of the delta file ``f`` (the whole file, read from offset 0) of
    ``file_size`` bytes (the signed length; ``None``: measured by seeking ``f`` to its end). Checks
    the magic, bounds the header length by ``max_header`` and the file size, parses the header and
    requires the ops' payload ranges to end exactly at the end of the file. Leaves ``f`` at the
    payload start."""
    if file_size is None:
        file_size = f.seek(0, 2)
        f.seek(0)
    prefix = f.read(PREFIX_LENGTH)
    if len(prefix) < PREFIX_LENGTH or not prefix.startswith(MAGIC):
        raise DeltaFormatError("not a delta file (bad magic or truncated before the header)")
    (length,) = _LENGTH.unpack(prefix[len(MAGIC):])
    if length > max_header:
        raise DeltaFormatError(f"delta header of {length} bytes exceeds the {max_header}-byte limit")
    payload_start = PREFIX_LENGTH + length
    if payload_start > file_size:
        raise DeltaFormatError(f"delta header of {length} bytes runs past the end of the {file_size}-byte file")
    data = f.read(length)
    if len(data) != length:
        raise DeltaFormatError("delta file is truncated inside its header")
    header = DeltaHeader.from_bytes(data, payload_start)
    if payload_start + header.payload_length != file_size:
        raise DeltaFormatError(
            f"delta payload should be {header.payload_length} bytes, the file holds {file_size - payload_start}"
        )
    return header


__all__ = [
    "DELTA_FORMAT", "MAGIC", "MAX_HEADER", "PREFIX_LENGTH", "DeltaFormatError", "DeltaHeader", "DeltaOp", "OpKind",
    "delta_path", "patch_window_log", "read_header", "write_delta",
]
