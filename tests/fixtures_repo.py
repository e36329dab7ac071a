"""Test repositories built directly with python-tuf's Metadata API, plus small real HTTP servers.

``FixtureRepo`` writes the layout of docs/ARCHITECTURE.md exactly (consistent snapshots, channel
roles delegated with ``C/*``, ``C/*/*``, ``C/*/*/*``, targets stored as ``<sha256>.<basename>``)
without going through ``repo_tools``, so the client's trust tests do not depend on the publisher
and can forge what an attacker would serve: old, expired, re-signed or tampered files.

Servers: ``start_static_server`` is the suite's one repository server (``tests.conftest.start_server``:
nginx, or ``pinnacle-release serve`` with ``PINNACLE_TEST_SERVER=python``); ``ScriptedServer`` is an
in-process HTTP server whose answers a test scripts (fail N times, stall, count attempts, record headers).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import zstandard
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from pinnacle_updates.formats.index import (
    CHANNELS,
    ChannelIndex,
    Digest,
    EntryType,
    Manifest,
    ManifestEntry,
    Release,
    TargetRef,
    UpdateType,
    index_path,
    release_dir,
)
from tests.conftest import ServedRepo, start_server

ROOT_DIR = Path(__file__).resolve().parent.parent
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365, "targets": 365, "snapshot": 7, "timestamp": 1, "channel": 90}


def _expiry(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FixtureRepo:
    """A signed repository on disk. Mutate metadata in memory, then ``commit()`` writes the
    crash-safe order (targets, channel roles, snapshot, timestamp) with bumped versions."""

    def __init__(self, path: Path, channels: tuple[str, ...] = CHANNELS) -> None:
        self.path = path
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir(parents=True)
        self.channels = channels
        self.signers: dict[str, Signer] = {r: CryptoSigner.generate_ed25519() for r in (*TOP_ROLES, *channels)}
        self.indexes = {c: ChannelIndex(channel=c) for c in channels}

        root = Root(expires=_expiry(EXPIRY_DAYS["root"]), consistent_snapshot=True)
        for role in TOP_ROLES:
            root.add_key(self.signers[role].public_key, role)
        self.root: Metadata[Root] = Metadata(root)

        roles = {
            c: DelegatedRole(
                name=c,
                keyids=[self.signers[c].public_key.keyid],
                threshold=1,
                terminating=True,
                paths=[f"{c}/*", f"{c}/*/*", f"{c}/*/*/*"],
            )
            for c in channels
        }
        keys = {self.signers[c].public_key.keyid: self.signers[c].public_key for c in channels}
        self.targets: Metadata[Targets] = Metadata(
            Targets(expires=_expiry(EXPIRY_DAYS["targets"]), delegations=Delegations(keys=keys, roles=roles))
        )
        self.roles: dict[str, Metadata[Targets]] = {
            c: Metadata(Targets(expires=_expiry(EXPIRY_DAYS["channel"]))) for c in channels
        }
        self.snapshot: Metadata[Snapshot] = Metadata(Snapshot(expires=_expiry(EXPIRY_DAYS["snapshot"])))
        self.timestamp: Metadata[Timestamp] = Metadata(Timestamp(expires=_expiry(EXPIRY_DAYS["timestamp"])))
        self._write_signed(self.root, "root", f"{self.root.signed.version}.root.json")
        self._write_signed(self.targets, "targets", f"{self.targets.signed.version}.targets.json")
        for c in channels:
            self._write_signed(self.roles[c], c, f"{self.roles[c].signed.version}.{c}.json")
        self._write_snapshot_and_timestamp(bump=False)

    # -- reading -------------------------------------------------------------------------------

    @property
    def root_bytes(self) -> bytes:
        """The root a client ships (version 1)."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def metadata_bytes(self, name: str) -> bytes:
        return (self.metadata_dir / name).read_bytes()

    def target_file(self, target_path: str) -> Path:
        """Where the target is stored on disk (``<dir>/<sha256>.<basename>``)."""
        channel = target_path.split("/", 1)[0]
        info = self.roles[channel].signed.targets[target_path]
        directory, _, base = target_path.rpartition("/")
        return self.targets_dir / directory / f"{info.hashes['sha256']}.{base}"

    # -- publishing ----------------------------------------------------------------------------

    def add_target(self, target_path: str, data: bytes, sign: bool = True) -> TargetRef:
        """Store a target file; list it in its channel role unless ``sign`` is false."""
        digest = sha256(data)
        directory, _, base = target_path.rpartition("/")
        dest = self.targets_dir / directory / f"{digest}.{base}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        if sign:
            channel = target_path.split("/", 1)[0]
            info = TargetFile(length=len(data), hashes={"sha256": digest}, path=target_path)
            self.roles[channel].signed.targets[target_path] = info
        return TargetRef(target_path, len(data), digest)

    def publish(
        self,
        channel: str,
        version: str,
        update_type: UpdateType = UpdateType.PATCH,
        platform: str = "linux-x86_64",
        files: dict[str, bytes] | None = None,
    ) -> Release:
        """Build a release (tar.zst + manifest), add it to the channel index and commit."""
        release = self.build_release(channel, version, update_type, platform, files)
        self.set_index(channel, self.indexes[channel].with_release(release, _now()))
        self.commit(channel)
        return release

    def build_release(
        self,
        channel: str,
        version: str,
        update_type: UpdateType = UpdateType.PATCH,
        platform: str = "linux-x86_64",
        files: dict[str, bytes] | None = None,
        manifest_version: str | None = None,
    ) -> Release:
        """Store and sign a release's artifacts (not yet in the index, not committed)."""
        files = files if files is not None else {"bin/app": f"app {version}\n".encode(), "README": b"readme\n"}
        tar = _tar(files)
        content = Digest(len(tar), sha256(tar))
        entries = [
            ManifestEntry(p, EntryType.FILE, 0o644, size=len(d), sha256=sha256(d)) for p, d in sorted(files.items())
        ]
        manifest = Manifest(manifest_version or version, content, tuple(entries))
        base = release_dir(channel, platform, version)
        full = self.add_target(f"{base}/full.tar.zst", zstandard.compress(tar))
        man = self.add_target(f"{base}/manifest.json.zst", zstandard.compress(manifest.to_bytes()))
        return Release(
            version=version,
            platform=platform,
            type=update_type,
            published=_now(),
            content=content,
            full=full,
            manifest=man,
            entry_point="bin/app",
        )

    def set_index(self, channel: str, index: ChannelIndex) -> TargetRef:
        """Store and sign ``index`` as ``<channel>/index.json`` (not committed)."""
        self.indexes[channel] = index
        return self.add_target(index_path(channel), index.to_bytes())

    def commit(self, *channels: str, timestamp_expires: datetime | None = None) -> None:
        """New versions of the given channel roles, then snapshot, then timestamp."""
        for c in channels:
            md = self.roles[c]
            md.signed.version += 1
            self._write_signed(md, c, f"{md.signed.version}.{c}.json")
        self._write_snapshot_and_timestamp(bump=True, timestamp_expires=timestamp_expires)

    def write_timestamp(
        self,
        *,
        version: int | None = None,
        expires: datetime | None = None,
        snapshot_version: int | None = None,
        signer: Signer | None = None,
    ) -> bytes:
        """Re-sign ``timestamp.json`` (what a timestamp key holder, or an attacker with a stolen
        or wrong key, could serve): bumped version by default; may point at an old snapshot."""
        ts = self.timestamp.signed
        ts.version = version if version is not None else ts.version + 1
        if expires is not None:
            ts.expires = expires
        if snapshot_version is not None:
            data = self.metadata_bytes(f"{snapshot_version}.snapshot.json")
            ts.snapshot_meta = MetaFile(snapshot_version, len(data), {"sha256": sha256(data)})
        return self._write_signed(self.timestamp, "timestamp", "timestamp.json", signer)

    def resign_role(self, role: str, signer: Signer) -> None:
        """Sign the channel role's current file with ``signer`` instead of its key (same version),
        and re-commit snapshot/timestamp so only the signature is wrong."""
        md = self.roles[role]
        md.signed.version += 1
        self._write_signed(md, role, f"{md.signed.version}.{role}.json", signer)
        self._write_snapshot_and_timestamp(bump=True)

    def rotate_root(self, new_timestamp_signer: Signer) -> None:
        """Root v(N+1) replacing the timestamp key, signed by the old and new root keys."""
        root = self.root.signed
        old_keyid = self.signers["timestamp"].public_key.keyid
        root.revoke_key(old_keyid, "timestamp")
        root.add_key(new_timestamp_signer.public_key, "timestamp")
        root.version += 1
        self.signers["timestamp"] = new_timestamp_signer
        self._write_signed(self.root, "root", f"{root.version}.root.json")
        self.write_timestamp()

    # -- internals -----------------------------------------------------------------------------

    def _write_signed(self, md: Metadata[Any], role: str, name: str, signer: Signer | None = None) -> bytes:
        md.signatures.clear()
        md.sign(signer or self.signers[role])
        data = md.to_bytes()
        (self.metadata_dir / name).write_bytes(data)
        return data

    def _write_snapshot_and_timestamp(self, bump: bool, timestamp_expires: datetime | None = None) -> None:
        snap = self.snapshot.signed
        if bump:
            snap.version += 1
        for role, md in (("targets", self.targets), *self.roles.items()):
            data = self.metadata_bytes(f"{md.signed.version}.{role}.json")
            snap.meta[f"{role}.json"] = MetaFile(md.signed.version, len(data), {"sha256": sha256(data)})
        snap_bytes = self._write_signed(self.snapshot, "snapshot", f"{snap.version}.snapshot.json")
        ts = self.timestamp.signed
        if bump:
            ts.version += 1
        ts.expires = timestamp_expires or _expiry(EXPIRY_DAYS["timestamp"])
        ts.snapshot_meta = MetaFile(snap.version, len(snap_bytes), {"sha256": sha256(snap_bytes)})
        self._write_signed(self.timestamp, "timestamp", "timestamp.json")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- servers -----------------------------------------------------------------------------------


# The one server helper of the suite (nginx, or ``pinnacle-release serve DIR --port 0``; tests/conftest.py).
StaticServer = ServedRepo
start_static_server = start_server


@dataclass
class Script:
    """How ``ScriptedServer`` answers: the first ``failures`` requests (per path) get ``status``
    (with ``headers``); ``stall`` makes every body stall after the headers."""

    failures: int = 0
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0


class ScriptedServer:
    """An in-process HTTP server on 127.0.0.1 serving ``directory`` with scripted failures.
    ``hits[path]`` counts attempts; ``user_agents`` records the User-Agent headers seen."""

    def __init__(self, directory: Path, script: Script | None = None) -> None:
        self.directory = directory
        self.script = script or Script()
        self.hits: dict[str, int] = {}
        self.user_agents: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            count = self.hits.get(path, 0) + 1
            self.hits[path] = count
            self.user_agents.append(handler.headers.get("User-Agent", ""))
        if count <= self.script.failures:
            body = b"scripted failure\n"
            handler.send_response(self.script.status)
            for k, v in self.script.headers.items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        file = (self.directory / path.lstrip("/")).resolve()
        if not file.is_file() or self.directory.resolve() not in file.parents:
            handler.send_error(404)
            return
        data = file.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if self.script.stall:
            handler.wfile.flush()
            time.sleep(self.script.stall)
            return
        handler.wfile.write(data)


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
