"""Repository operations: init, publish, promote, refresh, status.

Each operation validates everything it can and loads every signer it needs *before* it writes a
byte, then writes in the crash-safe order (targets, channel roles, snapshot, timestamp last).
A refused request therefore leaves the repository exactly as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import zstandard
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Role, Targets

from pinnacle_updates.formats.fleet import controls_summary
from pinnacle_updates.formats.index import (
    ChannelIndex,
    DeltaRef,
    FormatError,
    Release,
    TargetRef,
    UpdateType,
    check_channel,
    check_platform,
    compressed_index_path,
    index_path,
    parse_version,
    release_dir,
)
from pinnacle_updates.formats.progress import NULL, Progress
from pinnacle_updates.formats.rollout import ABTest, Rollout, Schedule

from . import artifact
from .archive import Archive, apply_window
from .core import metadata as meta
from .core.delta_plan import ZSTD_MEMORY
from .core.window import MAX_ARCHIVE_BITS, archive_prefix, channel_of_bin
from .delta import DEFAULT_JOBS, DEFAULT_MEMORY_BUDGET, build_deltas, current_rss
from .errors import PublishRefused, RepositoryStateError
from .keys import KeyStore
from .store import RepoConfig, Repository, RepoState, describe

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(t: datetime) -> str:
    return t.strftime(TIME_FORMAT)


# -- the one write path ---------------------------------------------------------------------------

@dataclass
class _Change:
    """What an operation adds: target files, and the roles whose targets it edited (channel roles
    and archive bins)."""

    files: list[tuple[str, str, Path | bytes]]  # (target path, sha256, file or bytes)
    roles: dict[str, Metadata[Targets]]


def _commit(repo: Repository, keys: KeyStore, state: RepoState, change: _Change, now: datetime,
            progress: Progress = NULL) -> dict[str, int]:
    """Sign and write ``change`` in the crash-safe order; return the new role versions. ``progress``:
    phase write (target bytes), then sign (roles signed and written, the timestamp last)."""
    config = repo.config()
    names = list(state.channels)
    bins = {name for name in change.roles if channel_of_bin(name, names)}
    signers = {name: _trusted_signers(keys, state, channel_of_bin(name, names) or name) for name in change.roles}
    snapshot_signers = _trusted_signers(keys, state, "snapshot")
    timestamp_signers = _trusted_signers(keys, state, "timestamp")

    sizes = [len(content) if isinstance(content, bytes) else content.stat().st_size for _, _, content in change.files]
    progress.start("write", sum(sizes), "bytes")
    for (target_path, sha256, content), size in zip(change.files, sizes, strict=True):
        if isinstance(content, bytes):
            repo.add_target_bytes(target_path, sha256, content)
        else:
            repo.add_target_file(target_path, sha256, content)
        progress.advance(size)
    progress.start("sign", len(change.roles) + 2, "files")

    written: dict[str, tuple[int, bytes]] = {}
    for name, md in change.roles.items():
        if f"{name}.json" in state.snapshot.signed.meta:
            meta.bump(md, meta.expiry(now, config.days(name, names)))
        else:  # a role this operation creates (an archive bin) starts at version 1
            md.signed.expires = meta.expiry(now, config.days(name, names))
        meta.sign(md, signers[name])
        written[name] = (md.signed.version, repo.write_metadata(name, md))
        progress.advance()

    snapshot = meta.snapshot_of(state.snapshot, written, meta.expiry(now, config.days("snapshot", names)), bins)
    meta.sign(snapshot, snapshot_signers)
    snapshot_bytes = repo.write_metadata("snapshot", snapshot)
    progress.advance()

    timestamp = meta.timestamp_of(
        state.timestamp, snapshot.signed.version, snapshot_bytes, meta.expiry(now, config.days("timestamp", names)),
        signed_at=now,
    )
    meta.sign(timestamp, timestamp_signers)
    repo.write_metadata("timestamp", timestamp, versioned=False)  # the commit point
    progress.advance()
    progress.end()
    versions = {name: v for name, (v, _) in written.items()}
    versions.update(snapshot=snapshot.signed.version, timestamp=timestamp.signed.version)
    return versions


def _trusted_signers(keys: KeyStore, state: RepoState, role: str) -> list[Signer]:
    """Signers for ``role`` among the keys the committed metadata trusts for it (not the key
    directory's own mapping, which may be stale or belong to another repository)."""
    trusted: Role | None
    if role in ("snapshot", "timestamp"):
        trusted = state.root.signed.roles[role]
    else:
        delegations = state.targets.signed.delegations
        trusted = delegations.roles[role] if delegations and delegations.roles else None
        if trusted is None:
            raise PublishRefused(f"unknown channel '{role}'")
    return keys.signers_for(role, trusted.keyids, trusted.threshold)


INDEX_ZSTD_LEVEL = 19
"""Level of ``index.json.zst``: every update downloads it, and at a few KiB any level costs
microseconds; 19 rather than 22 keeps the encoder's window (and memory) small."""


def _set_index(md: Metadata[Targets], channel: str, index: ChannelIndex) -> list[tuple[str, str, bytes]]:
    """The one place a channel index is written: sign it into ``md`` as ``index.json`` (which clients
    from before the compressed index read) and as ``index.json.zst``, zstd of exactly those bytes
    (one frame, content size declared, no checksum: TUF's hashes cover it, and the client checks the
    decompressed bytes against ``index.json``'s signed hashes); the target files to write."""
    data = index.to_bytes()
    packed = _index_compressor().compress(data)
    files: list[tuple[str, str, bytes]] = []
    for path, content in ((index_path(channel), data), (compressed_index_path(channel), packed)):
        target = meta.target_file(path, len(content), _sha256_bytes(content))
        md.signed.targets[target.path] = target
        files.append((target.path, target.hashes["sha256"], content))
    return files


def _index_compressor() -> zstandard.ZstdCompressor:
    # Single-threaded with fixed parameters: the same index always gives the same frame.
    return zstandard.ZstdCompressor(level=INDEX_ZSTD_LEVEL, threads=0, write_content_size=True,
                                    write_checksum=False)


def _windowed(
    repo: Repository, state: RepoState, channel: str, md: Metadata[Targets], index: ChannelIndex,
    unarchived: Sequence[Release] = (),
) -> tuple[ChannelIndex, list[tuple[str, str, Path | bytes]], dict[str, Metadata[Targets]]]:
    """Archive what falls out of the channel's live window: ``(live index, record files, changed bins)``."""
    config = repo.config()
    archive = Archive(repo, state, channel, md)
    live, records = apply_window(archive, index, config.live_window, config.archive_bits, unarchived)
    return live, list(records), archive.changed()


def _archived(repo: Repository, state: RepoState, channel: str, version: str,
              platform: str | None) -> list[Release]:
    """Releases of ``version`` that left ``channel``'s live window, from their archive records (a
    version may be live on one platform and archived on another: a record exists only once archived)."""
    return Archive(repo, state, channel, state.channel(channel)).records(version, platform)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- init -----------------------------------------------------------------------------------------

def init_repository(
    repo: Repository,
    keys: KeyStore,
    expiry_days: Mapping[str, int] | None = None,
    compression_level: int | None = None,
    now: datetime | None = None,
    *,
    live_window: int | None = None,
    archive_bits: int | None = None,
) -> dict[str, Any]:
    """Create root v1, top-level targets delegating every channel in the key directory, an empty
    signed index per channel, snapshot and timestamp. ``live_window`` and ``archive_bits`` size
    the bounded channel metadata (``repo_tools.core.window``)."""
    now = now or utcnow()
    if repo.is_initialised() or repo.root_versions():
        raise RepositoryStateError(f"{repo.path} already holds a repository; refusing to re-initialise")
    config = RepoConfig()
    for role, days in (expiry_days or {}).items():
        if role not in config.expiry_days:
            raise PublishRefused(f"unknown expiry role '{role}' (one of {', '.join(config.expiry_days)})")
        if days < 1:
            raise PublishRefused(f"expiry for '{role}' must be at least 1 day")
        config.expiry_days[role] = days
    if compression_level is not None:
        if not 1 <= compression_level <= 22:
            raise PublishRefused("compression level must be between 1 and 22")
        config = replace(config, compression_level=compression_level)
    if live_window is not None:
        if live_window < 1:
            raise PublishRefused("the live window must keep at least 1 release")
        config = replace(config, live_window=live_window)
    if archive_bits is not None:
        if not 1 <= archive_bits <= MAX_ARCHIVE_BITS:
            raise PublishRefused(f"archive bits must be between 1 and {MAX_ARCHIVE_BITS}")
        config = replace(config, archive_bits=archive_bits)
    channels = keys.channels
    if not channels:
        raise PublishRefused("the key directory defines no channel roles")

    def spec(role: str) -> meta.RoleKeySpec:
        return meta.RoleKeySpec(keys.public_keys(role), keys.role(role).threshold)

    signers = {role: keys.signers(role) for role in ("root", "targets", "snapshot", "timestamp", *channels)}

    root = meta.sign(meta.new_root({r: spec(r) for r in ("root", "targets", "snapshot", "timestamp")},
                                   meta.expiry(now, config.expiry_days["root"])), signers["root"])
    targets = meta.sign(meta.new_top_targets({c: spec(c) for c in channels},
                                             meta.expiry(now, config.expiry_days["targets"])), signers["targets"])
    repo.path.mkdir(parents=True, exist_ok=True)
    with repo.locked():
        repo.write_config(config)
        written: dict[str, tuple[int, bytes]] = {"targets": (1, b"")}
        for channel in channels:
            written[channel] = new_channel(repo, channel, signers[channel], config.expiry_days["channel"], now)
        repo.write_metadata("root", root)
        written["targets"] = (1, repo.write_metadata("targets", targets))
        snapshot = meta.sign(
            meta.snapshot_of(None, written, meta.expiry(now, config.expiry_days["snapshot"])), signers["snapshot"]
        )
        snapshot_bytes = repo.write_metadata("snapshot", snapshot)
        timestamp = meta.timestamp_of(None, 1, snapshot_bytes, meta.expiry(now, config.expiry_days["timestamp"]),
                                      signed_at=now)
        repo.write_metadata("timestamp", meta.sign(timestamp, signers["timestamp"]), versioned=False)
    return {"repository": str(repo.path), "channels": channels, "root": str(repo.metadata_dir / "1.root.json"),
            "expiry_days": config.expiry_days, "live_window": config.live_window,
            "archive_bits": config.archive_bits}


def new_channel(repo: Repository, channel: str, signers: Sequence[Signer], days: int,
                now: datetime) -> tuple[int, bytes]:
    """A channel role's first version, an empty signed index, written (``init``, ``channel add``);
    ``(1, bytes)`` for the snapshot. Nothing refers to it until the snapshot does."""
    md = meta.new_channel_role(meta.expiry(now, days))
    for path, sha, data in _set_index(md, channel, ChannelIndex(channel=channel, updated=_iso(now))):
        repo.add_target_bytes(path, sha, data)
    meta.sign(md, signers)
    return 1, repo.write_metadata(channel, md)


# -- publish --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishRequest:
    channel: str
    version: str
    type: str
    platform: str
    source: Path
    notes: str = ""
    entry_point: str | None = None
    deltas: int = 3
    """Build deltas from this many previous releases of the channel and platform (0: none)."""
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    """Peak resident bytes the publishing process may reach while building deltas."""
    jobs: int = DEFAULT_JOBS
    """Encoder threads while building deltas (1: one at a time; the bytes are the same)."""
    rollout: Schedule | None = None
    """Staged rollout from the publish time (None: every client at once)."""
    min_version: str | None = None
    """Clients below this version must update to this release (ramp and auto_install ignored)."""
    ramp: bool | None = None
    """Override of the type's default: False skips the rollout, True keeps security/hotfix in it."""
    ab_test_percentage: float | None = None
    """A/B test: only this deterministic percent of clients (the test group) gets the release."""
    migration: str | None = None
    """A file of the release that clients run after the swap, before the health check (data migrations)."""


def _validate(request: PublishRequest) -> UpdateType:
    try:
        check_channel(request.channel)
        check_platform(request.platform)
        parse_version(request.version)
    except FormatError as exc:
        raise PublishRefused(str(exc)) from exc
    try:
        update_type = UpdateType(request.type)
    except ValueError:
        allowed = ", ".join(t.value for t in UpdateType)
        raise PublishRefused(f"unknown update type '{request.type}' (one of {allowed})") from None
    if not Path(request.source).is_dir():
        raise PublishRefused(f"source {request.source} is not a directory")
    if request.min_version is not None:
        try:
            minimum = parse_version(request.min_version)
        except FormatError as exc:
            raise PublishRefused(f"--min-version: {exc}") from exc
        if minimum > parse_version(request.version):
            raise PublishRefused(f"--min-version {request.min_version} is newer than the release {request.version}")
    if request.ab_test_percentage is not None and not 0 < request.ab_test_percentage < 100:
        raise PublishRefused(f"--ab-test-percentage {request.ab_test_percentage:g} must be between 0 and 100")
    if request.deltas < 0:
        raise PublishRefused("--deltas must be 0 or more")
    if request.deltas and request.memory_budget - current_rss() < ZSTD_MEMORY:
        raise PublishRefused(
            f"--memory-budget {request.memory_budget >> 20} MiB leaves less than the {ZSTD_MEMORY >> 20} MiB "
            f"zstd needs above this process's {current_rss() >> 20} MiB (raise it, or --deltas 0)"
        )
    return update_type


def publish(repo: Repository, keys: KeyStore, request: PublishRequest, now: datetime | None = None,
            progress: Progress = NULL) -> dict[str, Any]:
    """Build the artifact from ``request.source`` and publish it as a new release of its channel.
    ``progress`` gets the phases scan, hash, compress, delta (one per base), write and sign."""
    now = now or utcnow()
    update_type = _validate(request)
    # refuses unsafe input before the lock
    entries = artifact.scan_tree(Path(request.source), request.platform, progress)
    regular = {e.path for e in entries if e.type.value == "file"}
    for what, path in (("entry point", request.entry_point), ("migration", request.migration)):
        if path is not None and path not in regular:
            raise PublishRefused(f"{what} '{path}' is not a file in {request.source}")
    with repo.locked():
        state = repo.load()
        md = state.channel(request.channel)
        index = repo.channel_index(state, request.channel)
        try:
            index.ensure_newer(request.platform, request.version)
        except FormatError as exc:
            raise PublishRefused(str(exc)) from exc
        for role in (request.channel, "snapshot", "timestamp"):
            _trusted_signers(keys, state, role)  # fail on a missing key or passphrase before the (long) build
        with repo.staging_dir() as staging:
            # the scanned entries, not a second scan: every file is read again and must still match
            # its scanned size and sha256 ("source changed while building")
            built = artifact.write_artifact(
                Path(request.source), entries, staging, request.version, level=repo.config().compression_level,
                progress=progress,
            )
            base = release_dir(request.channel, request.platform, request.version)
            full = TargetRef(f"{base}/full.tar.zst", built.full_length, built.full_sha256)
            manifest = TargetRef(f"{base}/manifest.json.zst", built.manifest_length, built.manifest_sha256)
            previous = [r for r in index.releases if r.platform == request.platform]
            bases = sorted(previous, key=lambda r: r.parsed_version, reverse=True)[: request.deltas]
            built_deltas = build_deltas(repo, bases, Path(request.source), built.manifest, built.full_length,
                                        staging, request.memory_budget, request.jobs, progress)
            deltas = [(d.ref(request.channel, request.platform, request.version), d.path)
                      for d in built_deltas if d.published]
            release = Release(
                version=request.version,
                platform=request.platform,
                type=update_type,
                published=_iso(now),
                content=built.content,
                full=full,
                manifest=manifest,
                notes=request.notes,
                entry_point=request.entry_point,
                migration=request.migration,
                deltas=tuple(ref for ref, _ in deltas),
                rollout=Rollout(request.rollout, _iso(now)) if request.rollout is not None else None,
                min_version=request.min_version,
                ramp=request.ramp,
                ab_testing=ABTest(request.ab_test_percentage) if request.ab_test_percentage is not None else None,
            )
            files: list[tuple[str, str, Path | bytes]] = [
                (full.path, full.sha256, built.full_path),
                (manifest.path, manifest.sha256, built.manifest_path),
                *((ref.target.path, ref.target.sha256, path) for ref, path in deltas),
            ]
            for ref in release.targets():
                md.signed.targets[ref.path] = meta.target_file(ref.path, ref.length, ref.sha256)
            live, records, bins = _windowed(repo, state, request.channel, md, index.with_release(release, _iso(now)))
            files.extend(records)
            files.extend(_set_index(md, request.channel, live))
            versions = _commit(repo, keys, state, _Change(files, {request.channel: md, **bins}), now, progress)
    return {"channel": request.channel, "release": release.to_dict(), "metadata_versions": versions,
            "deltas": [d.to_dict() for d in built_deltas]}


# -- promote --------------------------------------------------------------------------------------

def promote(
    repo: Repository,
    keys: KeyStore,
    source_channel: str,
    dest_channel: str,
    version: str,
    platform: str | None = None,
    now: datetime | None = None,
    rollout: Schedule | None = None,
) -> dict[str, Any]:
    """Publish the very same bytes of ``version`` from one channel into another: no rebuild.
    Fleet state does not travel: a yanked release is refused; the destination starts with
    ``rollout`` (None: every client at once) and no A/B test or min_version."""
    now = now or utcnow()
    if source_channel == dest_channel:
        raise PublishRefused("promote needs two different channels")
    try:
        parse_version(version)
    except FormatError as exc:
        raise PublishRefused(str(exc)) from exc
    with repo.locked():
        state = repo.load()
        state.channel(source_channel)
        md = state.channel(dest_channel)
        source_index = repo.channel_index(state, source_channel)
        wanted = parse_version(version)
        releases = [
            r for r in source_index.releases
            if r.parsed_version == wanted and (platform is None or r.platform == platform)
        ] + _archived(repo, state, source_channel, version, platform)  # live on some platforms, archived on others
        if not releases:
            where = f" for {platform}" if platform else ""
            raise PublishRefused(f"{source_channel} has no release {version}{where} to promote")
        index = repo.channel_index(state, dest_channel)
        files: list[tuple[str, str, Path | bytes]] = []
        promoted = []
        for release in releases:
            if release.yanked is not None:
                raise PublishRefused(f"{source_channel} {version} is yanked ({release.yanked.reason}): not promoted")
            try:
                index.ensure_newer(release.platform, release.version)
            except FormatError as exc:
                raise PublishRefused(str(exc)) from exc
            base = release_dir(dest_channel, release.platform, release.version)

            def move(ref: TargetRef, base: str = base) -> TargetRef:
                new_ref = TargetRef(f"{base}/{ref.path.rsplit('/', 1)[1]}", ref.length, ref.sha256)
                files.append((new_ref.path, ref.sha256, repo.target_location(ref.path, ref.sha256)))
                md.signed.targets[new_ref.path] = meta.target_file(new_ref.path, ref.length, ref.sha256)
                return new_ref

            new_release = replace(
                release, full=move(release.full), manifest=move(release.manifest), published=_iso(now),
                promoted_from=source_channel,
                rollout=Rollout(rollout, _iso(now)) if rollout is not None else None, ab_testing=None, min_version=None,
                deltas=tuple(replace(d, target=move(d.target)) for d in _carried_deltas(index, release)),
            )
            index = index.with_release(new_release, _iso(now))
            promoted.append(new_release.to_dict())
        live, records, bins = _windowed(repo, state, dest_channel, md, index)
        files.extend(records)
        files.extend(_set_index(md, dest_channel, live))
        versions = _commit(repo, keys, state, _Change(files, {dest_channel: md, **bins}), now)
    return {"from": source_channel, "to": dest_channel, "releases": promoted, "metadata_versions": versions}


def _carried_deltas(dest: ChannelIndex, release: Release) -> list[DeltaRef]:
    """The deltas of ``release`` whose base the destination channel holds with the same content
    (same platform and version, same canonical-content sha256); the others would be useless there."""
    have = {(r.parsed_version, r.content.sha256) for r in dest.releases if r.platform == release.platform}
    return [d for d in release.deltas if (parse_version(d.base), d.base_content) in have]


# -- refresh and status ---------------------------------------------------------------------------

def refresh(repo: Repository, keys: KeyStore, now: datetime | None = None, force: bool = False) -> dict[str, Any]:
    """Re-sign the online roles before they expire (run it from cron).

    Timestamp is always renewed. A channel role or the snapshot is renewed when less than half of
    its validity period is left (or with ``force``). Root and targets need offline keys; they are
    only reported.
    """
    now = now or utcnow()
    with repo.locked():
        state = repo.load()
        config = repo.config()
        names = list(state.channels)
        renew: dict[str, Metadata[Targets]] = {}
        for name, md in state.channels.items():
            if force or md.signed.expires - now < _half(config.days(name, names)):
                renew[name] = md
            for bin_name, bin_md in Archive(repo, state, name, md).bins():
                if force or bin_md.signed.expires - now < _half(config.days(bin_name, names)):
                    renew[bin_name] = bin_md
        versions = _commit(repo, keys, state, _Change([], renew), now)
        warnings = [
            f"{role} expires {_iso(md.signed.expires)}: re-sign it with the offline {role} key(s)"
            for role, md in (("root", state.root), ("targets", state.targets))
            if md.signed.expires - now < _half(config.expiry_days[role])
        ]
    return {"renewed": sorted([*renew, "snapshot", "timestamp"]), "metadata_versions": versions, "warnings": warnings}


def _half(days: int) -> timedelta:
    return timedelta(days=days) / 2


def status(repo: Repository, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    state = repo.load()
    roles = describe(state)
    for info in roles.values():
        info["expired"] = info["expires"] <= _iso(now)
    channels = {}
    archived = {}
    for name, md in state.channels.items():
        archive = Archive(repo, state, name, md)
        archived[name] = archive.count()
        bins = [b for _, b in archive.bins()]
        if bins:  # one line for all bins: the earliest expiry is what needs renewing
            succinct = archive.succinct
            assert succinct is not None
            first = min(b.signed.expires for b in bins)
            roles[archive_prefix(name)] = {
                "version": max(b.signed.version for b in bins), "expires": _iso(first), "expired": first <= now,
                "threshold": succinct.threshold, "keyids": list(succinct.keyids), "bins": len(bins),
            }
        index = repo.channel_index(state, name)
        channels[name] = [
            {"version": r.version, "platform": r.platform, "type": r.type.value, "published": r.published,
             "full_bytes": r.full.length, "promoted_from": r.promoted_from, **controls_summary(r, now)}
            for r in index.releases
        ]
    return {"repository": str(repo.path), "roles": roles, "channels": channels, "archived": archived}


__all__ = ["PublishRequest", "init_repository", "promote", "publish", "refresh", "status"]
