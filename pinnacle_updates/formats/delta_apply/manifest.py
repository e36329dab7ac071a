"""The manifest inside a delta, as a zstd patch of the base manifest (every kind but a whole-archive
delta that leaves it out): decoding the patch, and reading the result as a release's manifest."""

from __future__ import annotations

import io

import pyzstd

from pinnacle_updates.formats import delta_format
from pinnacle_updates.formats.index import FormatError, Manifest, Release

from .errors import DeltaError
from .jobs import ManifestJob, Rebuilt
from .streams import ZstdStream, decode_all


def manifest_from_patch(job: ManifestJob) -> tuple[bytes, Rebuilt | None]:
    """The per-file kinds' manifest reader: the canonical JSON the manifest patch decodes to."""
    start, end = job.header.manifest_range()
    job.f.seek(start)
    return manifest_json(job.f.read(end - start), job.base.to_bytes(), job.label), None


def manifest_json(frame: bytes, prefix: bytes, label: str) -> bytes:
    """Decode the manifest patch: one zstd frame declaring its size (at most ``MANIFEST_MAX``), with
    ``prefix`` as raw prefix; exactly the declared bytes, nothing after the frame."""
    try:
        declared = pyzstd.get_frame_info(frame).decompressed_size
    except pyzstd.ZstdError:
        raise DeltaError(f"{label}: the manifest patch is not a zstd frame") from None
    if declared is None or declared > delta_format.MANIFEST_MAX:
        raise DeltaError(f"{label}: the manifest patch declares no size or more than {delta_format.MANIFEST_MAX} bytes")
    return decode_all(ZstdStream(io.BytesIO(frame).read, prefix, declared, f"{label}: manifest patch"), declared,
                      f"{label}: the manifest patch")


def parse_manifest(data: bytes, release: Release, label: str) -> Manifest:
    """``data`` as the manifest of ``release`` (version and content digest)."""
    try:
        manifest = Manifest.from_bytes(data)
    except FormatError as exc:
        raise DeltaError(f"{label}: manifest of {release.version} is unusable: {exc}") from exc
    if manifest.version != release.version or manifest.content != release.content:
        raise DeltaError(f"{label}: the manifest in the delta does not describe {release.version}")
    return manifest


__all__ = ["manifest_from_patch", "manifest_json", "parse_manifest"]
