"""Pure construction of the repository's TUF metadata.

Functions here take keys, versions, times and bytes, and return new ``Metadata`` objects or
serialised bytes. No file system, no clock: the caller passes ``now``. Signing is a pure
computation over the payload, so ``sign`` lives here too (signers come from ``repo_tools.keys``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from pinnacle_updates.formats.rollout import SIGNED_AT_FIELD, format_time

SPEC_HASH = "sha256"
_SERIALIZER = JSONSerializer(compact=True)

# Days each role's metadata stays valid unless the repository config says otherwise.
DEFAULT_EXPIRY_DAYS: Mapping[str, int] = {
    "root": 365,
    "targets": 365,
    "channel": 90,
    "snapshot": 7,
    "timestamp": 1,
}


def channel_patterns(channel: str) -> list[str]:
    """Delegated path patterns for a channel.

    python-tuf matches patterns segment by segment, so ``C/*`` alone would not cover
    ``C/<platform>/<version>/<file>``; one pattern per depth does.
    """
    return [f"{channel}/*", f"{channel}/*/*", f"{channel}/*/*/*"]


def expiry(now: datetime, days: int) -> datetime:
    # TUF compares whole seconds; drop the microseconds so the signed value round-trips.
    return (now + timedelta(days=days)).replace(microsecond=0)


def to_bytes(md: Metadata) -> bytes:  # type: ignore[type-arg]
    return _SERIALIZER.serialize(md)


def sign(md: Metadata, signers: Iterable[Signer]) -> Metadata:  # type: ignore[type-arg]
    """Replace all signatures of ``md`` with fresh ones from ``signers``."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md


@dataclass(frozen=True)
class RoleKeySpec:
    """Public keys and threshold of one role."""

    keys: Sequence[Key]
    threshold: int


def new_root(roles: Mapping[str, RoleKeySpec], expires: datetime, version: int = 1) -> Metadata[Root]:
    """Root with consistent snapshots; ``roles`` must name root, targets, snapshot and timestamp."""
    root = Root(version=version, expires=expires, consistent_snapshot=True)
    for name in ("root", "targets", "snapshot", "timestamp"):
        spec = roles[name]
        root.roles[name] = Role([], spec.threshold)
        for key in spec.keys:
            root.add_key(key, name)
    return Metadata(root)


def new_top_targets(
    channels: Mapping[str, RoleKeySpec], expires: datetime, version: int = 1
) -> Metadata[Targets]:
    """Top-level targets that holds no targets itself and delegates one terminating role per channel."""
    delegated = {
        name: DelegatedRole(
            name=name,
            keyids=[k.keyid for k in spec.keys],
            threshold=spec.threshold,
            terminating=True,
            paths=channel_patterns(name),
        )
        for name, spec in channels.items()
    }
    keys = {k.keyid: k for spec in channels.values() for k in spec.keys}
    targets = Targets(version=version, expires=expires, delegations=Delegations(keys=keys, roles=delegated))
    return Metadata(targets)


def new_channel_role(expires: datetime, targets: Mapping[str, TargetFile] | None = None) -> Metadata[Targets]:
    return Metadata(Targets(version=1, expires=expires, targets=dict(targets or {})))


def bump(md: Metadata, expires: datetime) -> Metadata:  # type: ignore[type-arg]
    """Next version of ``md`` with a new expiry and no signatures (the caller signs)."""
    md.signed.version += 1
    md.signed.expires = expires
    md.signatures.clear()
    return md


def target_file(path: str, length: int, sha256: str) -> TargetFile:
    return TargetFile(length=length, hashes={SPEC_HASH: sha256}, path=path)


def snapshot_of(
    previous: Metadata[Snapshot] | None,
    changed: Mapping[str, tuple[int, bytes]],
    expires: datetime,
    unhashed: Collection[str] = (),
) -> Metadata[Snapshot]:
    """Next snapshot: the previous listing with each changed targets role ``name -> (version, bytes)``
    replaced by its new version, length and hash. Roles in ``unhashed`` (archive bins: many, and
    every update downloads the snapshot) get version and length only; consistent snapshots make
    the version name the exact file, and the length still bounds its download."""
    meta = dict(previous.signed.meta) if previous else {}
    for name, (version, data) in changed.items():
        hashes = None if name in unhashed else [SPEC_HASH]
        meta[f"{name}.json"] = (MetaFile(version, len(data)) if hashes is None
                                else MetaFile.from_data(version, data, hashes))
    version = previous.signed.version + 1 if previous else 1
    return Metadata(Snapshot(version=version, expires=expires, meta=dict(sorted(meta.items()))))


def timestamp_of(
    previous: Metadata[Timestamp] | None,
    snapshot_version: int,
    snapshot_bytes: bytes,
    expires: datetime,
    signed_at: datetime | None = None,
) -> Metadata[Timestamp]:
    """Next timestamp. ``signed_at`` is recorded (as ``pinnacle_signed_at``) for the clients' rollout
    clock: it never runs earlier than the newest signed time they have seen."""
    version = previous.signed.version + 1 if previous else 1
    snapshot_meta = MetaFile.from_data(snapshot_version, snapshot_bytes, [SPEC_HASH])
    extra = {SIGNED_AT_FIELD: format_time(signed_at)} if signed_at is not None else None
    return Metadata(Timestamp(version=version, expires=expires, snapshot_meta=snapshot_meta,
                              unrecognized_fields=extra))
