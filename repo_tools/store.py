"""The repository directory on disk: reading the committed state and writing files safely.

The committed state is what a client would see: ``timestamp.json`` names the snapshot, the
snapshot names every targets role version. Files a killed publish left behind (a newer
``N.stable.json`` that no snapshot lists, unreferenced targets) are invisible here and are
simply overwritten by the next publish. Every write is temp + fsync + rename + fsync dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from pinnacle_updates.formats import boundedjson
from pinnacle_updates.formats.fsutil import (
    NotRegularFile,
    atomic_write,
    atomic_writer,
    exclusive_lock,
    read_regular,
    remove_stale_temps,
)
from pinnacle_updates.formats.index import ChannelIndex, FormatError, index_path

from .core.metadata import DEFAULT_EXPIRY_DAYS, to_bytes
from .core.window import DEFAULT_ARCHIVE_BITS, DEFAULT_LIVE_WINDOW, MAX_ARCHIVE_BITS, channel_of_bin
from .errors import PublishRefused, RepositoryStateError

CONFIG_FILE = "pinnacle-repo.json"
CONFIG_MAX = 1 << 20
"""Bytes of ``pinnacle-repo.json`` read at most (a real one is under 1 KiB)."""
LOCK_FILE = ".pinnacle.lock"
DIRTY_FILE = ".pinnacle-dirty"
"""Directories the running operation writes temporary files into, one per line: what a killed
operation left behind is cleaned from these alone, not by walking every release directory."""
STAGING_PREFIX = ".staging-"
DEFAULT_COMPRESSION_LEVEL = 10


@dataclass(frozen=True)
class RepoConfig:
    """Publisher settings kept beside the metadata (public; no secret)."""

    expiry_days: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EXPIRY_DAYS))
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    live_window: int = DEFAULT_LIVE_WINDOW
    """Releases per platform each channel index keeps live; older ones are archived."""
    archive_bits: int = DEFAULT_ARCHIVE_BITS
    """Each channel's archive has 2**archive_bits hashed bins (fixed once the archive exists)."""

    def days(self, role: str, channels: list[str]) -> int:
        """Validity of ``role``; a channel's archive bins live as long as the channel role."""
        is_bin = channel_of_bin(role, channels) is not None
        return self.expiry_days["channel" if role in channels or is_bin else role]

    def to_bytes(self) -> bytes:
        doc = {"format": 1, "expiry_days": self.expiry_days, "compression_level": self.compression_level,
               "live_window": self.live_window, "archive_bits": self.archive_bits}
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> RepoConfig:
        doc = boundedjson.load_object(data, CONFIG_FILE, max_bytes=CONFIG_MAX)
        days = dict(DEFAULT_EXPIRY_DAYS)
        days.update({k: int(v) for k, v in doc.get("expiry_days", {}).items()})
        if any(v < 1 for v in days.values()):
            raise ValueError("every expiry must be at least 1 day")
        window = int(doc.get("live_window", DEFAULT_LIVE_WINDOW))
        bits = int(doc.get("archive_bits", DEFAULT_ARCHIVE_BITS))
        if window < 1:
            raise ValueError("live_window must be at least 1")
        if not 1 <= bits <= MAX_ARCHIVE_BITS:
            raise ValueError(f"archive_bits must be between 1 and {MAX_ARCHIVE_BITS}")
        return cls(expiry_days=days, compression_level=int(doc.get("compression_level", DEFAULT_COMPRESSION_LEVEL)),
                   live_window=window, archive_bits=bits)


@dataclass
class RepoState:
    """The committed metadata, as loaded objects."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    channels: dict[str, Metadata[Targets]]

    def channel(self, name: str) -> Metadata[Targets]:
        try:
            return self.channels[name]
        except KeyError:
            known = ", ".join(sorted(self.channels)) or "none"
            raise PublishRefused(f"unknown channel '{name}' (this repository has: {known})") from None


class Repository:
    """One repository directory: ``metadata/``, ``targets/`` and the publisher config."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self._dirty: set[Path] = set()

    # -- reading -----------------------------------------------------------------------------

    def is_initialised(self) -> bool:
        return (self.metadata_dir / "timestamp.json").exists()

    def config(self) -> RepoConfig:
        try:
            return RepoConfig.from_bytes(read_regular(self.path / CONFIG_FILE, CONFIG_MAX))
        except FileNotFoundError:
            return RepoConfig()
        except OSError as exc:  # a FIFO, device or link planted there, or unreadable
            raise RepositoryStateError(f"cannot read {self.path / CONFIG_FILE}: {exc.strerror or exc}") from exc
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise RepositoryStateError(f"{self.path / CONFIG_FILE} is invalid: {exc}") from exc

    def root_versions(self) -> list[int]:
        """Every root version present, 1..N without gaps (clients walk the chain in order)."""
        versions = []
        n = 1
        while (self.metadata_dir / f"{n}.root.json").exists():
            versions.append(n)
            n += 1
        return versions

    def _load(self, filename: str) -> Metadata:  # type: ignore[type-arg]
        path = self.metadata_dir / filename
        try:
            return Metadata.from_bytes(read_regular(path, boundedjson.DOCUMENT_MAX))  # python-tuf bounds the parse
        except FileNotFoundError as exc:
            raise RepositoryStateError(f"{path} is missing") from exc
        except OSError as exc:
            raise RepositoryStateError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except DeserializationError as exc:
            raise RepositoryStateError(f"{path} is not valid TUF metadata: {exc}") from exc

    def load(self) -> RepoState:
        if not self.is_initialised():
            raise RepositoryStateError(
                f"{self.path} is not an initialised repository (run 'pinnacle-release init')"
            )
        roots = self.root_versions()
        if not roots:
            raise RepositoryStateError(f"{self.metadata_dir}/1.root.json is missing")
        root = self._load(f"{roots[-1]}.root.json")
        timestamp = self._load("timestamp.json")
        snapshot = self._load(f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
        try:
            targets = self._load(f"{snapshot.signed.meta['targets.json'].version}.targets.json")
            channels = {}
            delegations = targets.signed.delegations
            for name in delegations.roles if delegations and delegations.roles else {}:
                version = snapshot.signed.meta[f"{name}.json"].version
                channels[name] = self._load(f"{version}.{name}.json")
        except KeyError as exc:
            raise RepositoryStateError(f"the current snapshot does not list {exc}") from None
        return RepoState(root, timestamp, snapshot, targets, channels)

    def load_role(self, name: str, version: int) -> Metadata[Targets]:
        """A delegated targets role at ``version`` (as the committed snapshot lists it)."""
        md = self._load(f"{version}.{name}.json")
        if md.signed.type != "targets":
            raise RepositoryStateError(f"{self.metadata_dir}/{version}.{name}.json is not targets metadata")
        return md

    def target_location(self, target_path: str, sha256: str) -> Path:
        """Where a target is stored under consistent snapshots: ``<dir>/<sha256>.<name>``."""
        directory, _, name = target_path.rpartition("/")
        return self.targets_dir / directory / f"{sha256}.{name}"

    def channel_index(self, state: RepoState, channel: str) -> ChannelIndex:
        role = state.channel(channel)
        info = role.signed.targets.get(index_path(channel))
        if info is None:
            return ChannelIndex(channel=channel)
        path = self.target_location(info.path, info.hashes["sha256"])
        try:
            return ChannelIndex.from_bytes(read_regular(path, boundedjson.DOCUMENT_MAX))
        except FileNotFoundError as exc:
            raise RepositoryStateError(f"channel index {path} is missing") from exc
        except OSError as exc:
            raise RepositoryStateError(f"cannot read channel index {path}: {exc.strerror or exc}") from exc
        except FormatError as exc:
            raise RepositoryStateError(f"channel index of '{channel}' is invalid: {exc}") from exc

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise publishers; clear what a killed one left behind."""
        if not self.path.is_dir():
            raise RepositoryStateError(f"{self.path} is not an initialised repository (run 'pinnacle-release init')")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(self.path / LOCK_FILE, wait=True, record_pid=False))
            except OSError as exc:
                raise RepositoryStateError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            try:
                self._clean_leftovers()
                yield
                self._clean_leftovers()  # nothing left but the journal itself
            except OSError as exc:  # the operation's own file errors: one line naming the file
                where = f" ({exc.filename})" if exc.filename else ""
                raise RepositoryStateError(f"file system error in {self.path}: {exc.strerror or exc}{where}") from exc

    def _clean_leftovers(self) -> None:
        for entry in self.path.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(entry, ignore_errors=True)
        journal = self.path / DIRTY_FILE
        try:
            listed = read_regular(journal, CONFIG_MAX).decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            listed = []
        except NotRegularFile:  # a FIFO or link planted there: nothing to clean from it; removed below
            listed = []
        for directory in {self.path, self.metadata_dir, *(self.path / line for line in listed if line)}:
            if directory.resolve().is_relative_to(self.path.resolve()):
                remove_stale_temps(directory)
        journal.unlink(missing_ok=True)
        self._dirty.clear()

    def _writing_in(self, directory: Path) -> None:
        """Journal ``directory`` (durably) before the first temporary file goes into it."""
        if directory in self._dirty:
            return
        with open(self.path / DIRTY_FILE, "a") as journal:
            journal.write(f"{directory.relative_to(self.path).as_posix()}\n")
            journal.flush()
            os.fsync(journal.fileno())
        self._dirty.add(directory)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A scratch directory on the repository's file system, so finished files move in by rename."""
        path = self.path / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def write_config(self, config: RepoConfig) -> None:
        atomic_write(self.path / CONFIG_FILE, config.to_bytes())

    def add_target_file(self, target_path: str, sha256: str, source: Path) -> None:
        """Copy ``source`` into its content-addressed place durably (a no-op when already there)."""
        dest = self.target_location(target_path, sha256)
        if dest.exists():
            return  # content-addressed: same name, same bytes
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._writing_in(dest.parent)
        with open(source, "rb") as src, atomic_writer(dest) as out:
            shutil.copyfileobj(src, out, 1 << 20)

    def add_target_bytes(self, target_path: str, sha256: str, data: bytes) -> None:
        dest = self.target_location(target_path, sha256)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._writing_in(dest.parent)
        atomic_write(dest, data)

    def write_metadata(self, role: str, md: Metadata, versioned: bool = True) -> bytes:  # type: ignore[type-arg]
        """Write signed metadata as ``N.<role>.json`` (or ``<role>.json``) and return its bytes."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        data = to_bytes(md)
        name = f"{md.signed.version}.{role}.json" if versioned else f"{role}.json"
        atomic_write(self.metadata_dir / name, data)
        return data


def describe(state: RepoState) -> dict[str, Any]:
    """Versions, expiries and key ids of every role, for ``status``."""
    roles: dict[str, Any] = {}
    root = state.root.signed
    for name, md in (
        ("root", state.root),
        ("targets", state.targets),
        ("snapshot", state.snapshot),
        ("timestamp", state.timestamp),
    ):
        role = root.roles[name]
        roles[name] = {
            "version": md.signed.version,
            "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "threshold": role.threshold,
            "keyids": list(role.keyids),
        }
    delegations = state.targets.signed.delegations
    for name, md in state.channels.items():
        delegated = delegations.roles[name] if delegations and delegations.roles else None
        roles[name] = {
            "version": md.signed.version,
            "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "threshold": delegated.threshold if delegated else None,
            "keyids": list(delegated.keyids) if delegated else [],
        }
    return roles
