"""A channel's archive: the hashed-bin roles that hold releases older than the live window.

``repo_tools.core.window`` decides which releases are live; this module takes the others'
targets out of the channel role and signs, in their bin, one record per archived release: its
index entry, whose length and sha256 of every file vouch for the files as the index did while it
was live (so a bin grows by one entry per release, not one per file). It reads
records back for operations on old versions, and re-signs bins when they near expiry or when
the channel's key changes. Bins are loaded lazily from the committed snapshot and handed back
to the caller's commit as changed roles; nothing here writes metadata itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from securesystemslib.signer import Key
from tuf.api.metadata import Delegations, Metadata, SuccinctRoles, TargetFile, Targets

from pinnacle_updates.formats.index import (
    ChannelIndex,
    FormatError,
    Release,
    parse_version,
    record_from_bytes,
    record_path,
    record_to_bytes,
)

from .core import metadata as meta
from .core.window import archive_roles, split_live
from .errors import RepositoryStateError
from .store import Repository, RepoState

TargetBytes = tuple[str, str, bytes]  # (target path, sha256, content)


class Archive:
    """The archive bins of one channel, edited in memory."""

    def __init__(self, repo: Repository, state: RepoState, channel: str, role: Metadata[Targets]) -> None:
        self.repo = repo
        self.state = state
        self.channel = channel
        self.role = role
        self._bins: dict[str, Metadata[Targets]] = {}
        self._changed: set[str] = set()

    @property
    def succinct(self) -> SuccinctRoles | None:
        delegations = self.role.signed.delegations
        return delegations.succinct_roles if delegations else None

    def names(self) -> list[str]:
        succinct = self.succinct
        return list(succinct.get_roles()) if succinct else []

    def ensure(self, bits: int) -> SuccinctRoles:
        """The channel's succinct delegation, created (with every bin, empty) on first use."""
        if self.succinct is not None:
            return self.succinct
        delegation = self.state.targets.signed.delegations
        trusted = delegation.roles[self.channel] if delegation and delegation.roles else None
        if trusted is None:
            raise RepositoryStateError(f"the top-level targets do not delegate '{self.channel}'")
        keys = {k: delegation.keys[k] for k in trusted.keyids} if delegation else {}
        succinct = archive_roles(self.channel, trusted.keyids, trusted.threshold, bits)
        self.role.signed.delegations = Delegations(keys=keys, succinct_roles=succinct)
        for name in succinct.get_roles():
            self._bins[name] = Metadata(Targets(version=1, expires=self.role.signed.expires))
            self._changed.add(name)
        return succinct

    def bin(self, name: str) -> Metadata[Targets]:
        if name not in self._bins:
            info = self.state.snapshot.signed.meta.get(f"{name}.json")
            if info is None:
                raise RepositoryStateError(f"the current snapshot does not list the archive bin {name}")
            self._bins[name] = self.repo.load_role(name, info.version)
        return self._bins[name]

    def bins(self) -> Iterator[tuple[str, Metadata[Targets]]]:
        for name in self.names():
            yield name, self.bin(name)

    def put(self, target: TargetFile) -> None:
        succinct = self.succinct
        assert succinct is not None
        name = succinct.get_role_for_target(target.path)
        targets = self.bin(name).signed.targets
        if targets.get(target.path) != target:
            targets[target.path] = target
            self._changed.add(name)

    def drop(self, path: str) -> None:
        succinct = self.succinct
        if succinct is None:
            return
        name = succinct.get_role_for_target(path)
        if self.bin(name).signed.targets.pop(path, None) is not None:
            self._changed.add(name)

    def changed(self) -> dict[str, Metadata[Targets]]:
        return {name: self._bins[name] for name in sorted(self._changed)}

    def rekey(self, keyids: Sequence[str], threshold: int, keys: Mapping[str, Key]) -> None:
        """Delegate the bins to the channel's new keys (after a rotation) and mark every bin for
        re-signing with them."""
        succinct = self.succinct
        if succinct is None:
            return
        names = self.names()
        for name in names:
            self.bin(name)  # loaded before the delegation changes
        self.role.signed.delegations = Delegations(
            keys={k: keys[k] for k in keyids},
            succinct_roles=archive_roles(self.channel, keyids, threshold, succinct.bit_length),
        )
        self._changed.update(names)

    def records(self, version: str | None = None, platform: str | None = None) -> list[Release]:
        """Archived releases (all, or those of ``version``, on ``platform`` or every platform)."""
        wanted = parse_version(version) if version is not None else None
        found = []
        for _, md in self.bins():
            for path, info in md.signed.targets.items():
                parts = path.split("/")
                if len(parts) != 4 or parts[0] != self.channel or parts[3] != "release.json":
                    continue
                if platform is not None and parts[1] != platform:
                    continue
                location = self.repo.target_location(path, info.hashes["sha256"])
                try:
                    if wanted is not None and parse_version(parts[2]) != wanted:
                        continue
                    found.append(record_from_bytes(location.read_bytes(), self.channel, parts[1], parts[2]))
                except (OSError, FormatError) as exc:
                    raise RepositoryStateError(f"archive record {path} is unusable: {exc}") from exc
        return sorted(found, key=lambda r: (r.platform, r.parsed_version))

    def count(self) -> int:
        return sum(1 for _, md in self.bins() for path in md.signed.targets if path.endswith("/release.json"))


def apply_window(
    archive: Archive,
    index: ChannelIndex,
    window: int,
    bits: int,
    unarchived: Sequence[Release] = (),
) -> tuple[ChannelIndex, list[TargetBytes]]:
    """Keep ``index``'s live releases in the channel role; archive the rest.

    ``index`` holds the live releases before the operation, any new release, and ``unarchived``:
    releases taken out of the archive for this operation (their targets and records are in the
    bins). Returns the live index and the record files to add as targets."""
    role = archive.role.signed
    live, archived = split_live(index.releases, window)
    came_back = {(r.platform, r.version) for r in unarchived}
    records: list[TargetBytes] = []
    if archived:
        archive.ensure(bits)
    for release in archived:
        for ref in release.targets():  # from here on the signed record vouches for them
            role.targets.pop(ref.path, None)
        data = record_to_bytes(archive.channel, release)
        path = record_path(archive.channel, release.platform, release.version)
        sha = hashlib.sha256(data).hexdigest()
        records.append((path, sha, data))
        archive.put(meta.target_file(path, len(data), sha))
    for release in live:
        if (release.platform, release.version) not in came_back:
            continue
        archive.drop(record_path(archive.channel, release.platform, release.version))
        for ref in release.targets():
            role.targets[ref.path] = meta.target_file(ref.path, ref.length, ref.sha256)
    return replace(index, releases=tuple(live)), records


__all__ = ["Archive", "apply_window"]
