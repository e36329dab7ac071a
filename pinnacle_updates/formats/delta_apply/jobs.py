"""What each container kind's applier and manifest reader are given (:mod:`.kinds` registers them),
and what a manifest reader hands over to the applier (:class:`Rebuilt`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pinnacle_updates.formats.delta_format import DeltaHeader
from pinnacle_updates.formats.delta_kinds import ContainerKind
from pinnacle_updates.formats.index import Manifest, Release

from .streams import Sources


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`~.apply.manifest_from_delta` decoded in memory to rebuild the manifest, kept for
    :func:`~.apply.apply_delta`: the target's canonical tar (``kind`` whole-archive) or the bytes of
    the files the solid stream rebuilds (``kind`` solid)."""

    kind: ContainerKind
    data: bytes | bytearray

    @property
    def tar(self) -> bytes | None:
        """The target's canonical tar, if that is what this is (the base of a next whole-archive step)."""
        return self.data if self.kind is ContainerKind.WHOLE_ARCHIVE and isinstance(self.data, bytes) else None

    def of(self, kind: ContainerKind) -> bytes | bytearray | None:
        """The decoded bytes when they came from a delta of ``kind``, else None."""
        return self.data if self.kind is kind else None


@dataclass(frozen=True)
class ApplyJob:
    """Rebuild ``target`` but the persistent paths ``skip`` into the empty directory ``dest_fd``
    from the delta (``source``, ``header``) and the tree of ``base``; ``wanted`` is ``target``
    without ``skip``. ``rebuilt``: what the manifest reader already decoded from this delta."""

    source: Sources
    header: DeltaHeader
    base: Manifest
    target: Manifest
    wanted: Manifest
    dest_fd: int
    skip: frozenset[str]
    rebuilt: Rebuilt | None

    @property
    def label(self) -> str:
        return self.source.label


@dataclass(frozen=True)
class ManifestJob:
    """Derive the manifest of ``release`` from the delta open as ``f`` (its checked ``header``) built
    on ``base``; ``base_tar``: the base's canonical tar or the directory of its verified tree, if
    any; ``skip``: the persistent paths the slot links away."""

    f: BinaryIO
    header: DeltaHeader
    base: Manifest
    release: Release
    base_tar: bytes | Path | None
    skip: Iterable[str]
    label: str


__all__ = ["ApplyJob", "ManifestJob", "Rebuilt"]
