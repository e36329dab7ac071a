"""Every kind of delta, named once: how a target file is produced (:class:`OpKind`) and what shape a
whole ``.pdelta`` container has (:class:`ContainerKind`), with the wire properties both sides need.

The values are the strings on the wire (an op's ``"op"`` field; the header field that marks a
container kind), so naming them here changes no byte of a published delta.

Adding a delta kind touches three places, and a test (``tests/formats/test_delta_kinds.py``) fails
until all three list exactly the same kinds:

1. here: a member of :class:`OpKind` or :class:`ContainerKind` with its wire properties, and its
   fields in :mod:`pinnacle_updates.formats.delta_format` (parsing, layout checks,
   :attr:`~pinnacle_updates.formats.delta_format.DeltaHeader.kind`);
2. the publisher's registry ``PUBLISHER_KINDS`` in :mod:`pinnacle_updates.repo_tools.delta`: its
   encoder and the memory the encoder needs (op estimates in
   :data:`pinnacle_updates.repo_tools.core.delta_plan.ENCODER_MEMORY`, which the planner budgets with);
3. the appliers' registry ``CLIENT_KINDS`` in :mod:`pinnacle_updates.formats.delta_apply.kinds` (the
   client installs with it, ``verify --deep`` checks deltas with it): its applier and the memory its
   decoding may take at most.

A kind a client cannot apply must never be published: deploy the client's applier first, then the
publisher's encoder.
"""

from __future__ import annotations

from enum import StrEnum


class OpKind(StrEnum):
    """How one target file of a per-file delta is produced (the op's ``"op"`` field)."""

    COPY = "copy"  # the base file ``base`` has the target's sha256: no bytes in the payload
    BSDIFF4 = "bsdiff4"  # bsdiff4 (BSDIFF40) patch against the base file (written where bz2 codes it smallest)
    BSDIFF_LZMA = "bsdiff-lzma"  # bsdiff4's blocks coded smaller (formats.bsdiff_lzma) against the base file
    BSDIFF_SHARED = "bsdiff-shared"  # the same blocks, taken from the delta's shared streams (header "shared")
    ZSTD_PATCH = "zstd-patch"  # one zstd frame compressed with the base file as raw prefix
    ZSTD = "zstd"  # one plain zstd frame of the whole file (a new file)
    ZSTD_SEGMENTS = "zstd-segments"  # a large file: zstd frames per segment, base regions as prefix (delta_segments)
    BSDIFF_SEGMENTS = "bsdiff-segments"  # the same segment framing, each segment a bsdiff-lzma patch of its region

    @property
    def has_base(self) -> bool:
        """Whether the op names a base file (stored as ``base`` when it differs from ``path``)."""
        return self is not OpKind.ZSTD

    @property
    def has_data(self) -> bool:
        """Whether the op owns ``length`` bytes of the payload."""
        return self is not OpKind.COPY

    @property
    def whole_file(self) -> bool:
        """Whether applying it holds the whole base file and output in memory: refused on either side of
        ``delta_segments.WHOLE_PATCH_MAX`` (larger files come as ``zstd-segments``; the ``*-segments`` kinds
        hold one base region and one segment at a time)."""
        return self in _WHOLE_FILE


_WHOLE_FILE = frozenset({OpKind.BSDIFF4, OpKind.BSDIFF_LZMA, OpKind.BSDIFF_SHARED, OpKind.ZSTD_PATCH})


class ContainerKind(StrEnum):
    """The shape of a delta container; the value is the header field that marks it
    (:attr:`~pinnacle_updates.formats.delta_format.DeltaHeader.kind` classifies a parsed header)."""

    PER_FILE = "ops"  # one op per target file, their data after the manifest patch
    SHARED = "shared"  # per-file, and the bsdiff-shared ops' blocks in three shared LZMA streams after the data
    WHOLE_ARCHIVE = "archive"  # one zstd frame of the target's canonical tar, the base's as prefix
    WHOLE_ARCHIVE_BSDIFF4 = "archive-bsdiff4"  # one stock BSDIFF40 patch of the target tar against the base's
    SOLID = "solid"  # one LZMA stream of every file that is not a base file, the base files as dictionary

    @property
    def has_ops(self) -> bool:
        """Whether the header lists one op per target file (else the whole tree comes from one stream)."""
        return self in (ContainerKind.PER_FILE, ContainerKind.SHARED)

    @property
    def manifest_from_tar(self) -> bool:
        """Whether the target manifest may be left out of the payload (``{"level": L}`` without
        ``length``): the client reads it from the target tar the frame rebuilds."""
        return self.whole_archive

    @property
    def whole_archive(self) -> bool:
        """Whether the payload is one patch rebuilding the target's canonical tar from the base's (zstd
        frame or bsdiff4 patch): the client rebuilds the base tar, decodes, extracts by the canonical layout."""
        return self in (ContainerKind.WHOLE_ARCHIVE, ContainerKind.WHOLE_ARCHIVE_BSDIFF4)

    @property
    def needs_manifest_patch(self) -> bool:
        """Whether the header must carry a manifest patch (the solid kind's skeleton)."""
        return self is ContainerKind.SOLID


DeltaKind = OpKind | ContainerKind
"""Any kind a registry covers."""

ALL_KINDS: tuple[DeltaKind, ...] = (*OpKind, *ContainerKind)
"""Every kind, ops first: what the publisher's and the client's registries must each cover exactly."""


__all__ = ["ALL_KINDS", "ContainerKind", "DeltaKind", "OpKind"]
