"""``verify``: an independent audit of a repository directory as a client would see it.

It trusts nothing it reads: it walks the root chain from ``1.root.json``, checks every signature
against its threshold, every metadata file against the length and hash its parent lists, every
target against its signed length and sha256, every expiry, and that each channel index agrees
with the targets its role signed. It reports every problem it finds, not just the first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import zstandard
from tuf.api.metadata import DelegatedRole, Metadata, MetaFile, Root, TargetFile, Targets

from pinnacle_updates.formats import fsutil
from pinnacle_updates.formats.archive import CHUNK_SIZE, manifest_problems, show_path
from pinnacle_updates.formats.delta_apply import DeltaError, apply_delta, manifest_from_delta
from pinnacle_updates.formats.index import (
    ChannelIndex,
    DeltaRef,
    FormatError,
    Manifest,
    Release,
    compressed_index_path,
    index_path,
    parse_version,
    record_from_bytes,
)
from pinnacle_updates.formats.progress import NULL, Progress, phase
from pinnacle_updates.formats.tree import extract_release, verify_tree

from .core.metadata import to_bytes
from .store import Repository

MAX_MANIFEST_BYTES = 64 << 20
_CONTENT_NAME = {64: "sha256", 128: "sha512"}
"""Content-addressed target names start with the hex digest of the file (the first hash its
metadata lists): its algorithm by the digest's length."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading only if it is a regular file: never through a symlink, and a FIFO
    planted in the repository cannot make the audit wait (``O_NONBLOCK``, then ``fstat``)."""
    return os.fdopen(fsutil.open_regular(path), "rb")  # the one rule (formats.fsutil); EINVAL if not regular


def read_regular(path: Path) -> bytes:
    with open_regular(path) as f:
        return f.read()


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open_regular(path) as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Not wrong, worth knowing: files under ``targets/`` that no retained metadata references (what
    a killed publish leaves; the next publish of the same bytes reuses them)."""
    checked_files: int = 0
    checked_targets: int = 0
    superseded_targets: int = 0
    """Of ``checked_targets``: files only older, retained metadata versions reference (superseded
    channel indexes and targets clients in the middle of an update may still fetch)."""
    releases: int = 0
    archived: int = 0
    deltas: int = 0
    """Deltas applied by ``--deep`` against their base releases."""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not self.problems, "problems": self.problems, "warnings": self.warnings,
                "checked_metadata_files": self.checked_files, "checked_targets": self.checked_targets,
                "superseded_targets": self.superseded_targets, "releases": self.releases,
                "archived_releases": self.archived, "applied_deltas": self.deltas}


class _Auditor:
    def __init__(self, repo: Repository, now: datetime, deep: bool, progress: Progress = NULL) -> None:
        self.repo = repo
        self.now = now
        self.deep = deep
        self.progress = progress
        self.report = AuditReport()
        self.hashed: dict[Path, int] = {}
        """Target files already checked against signed metadata, with their length."""
        self.releases: dict[tuple[str, str, Any], Release] = {}
        """Every release whose manifest reads, live or archived, by channel, platform and version."""

    def problem(self, text: str) -> None:
        # Names and messages come from the repository (an attacker's, maybe): never a raw control
        # or bidirectional formatting character on the auditor's terminal, one line per problem.
        self.report.problems.append(show_path(text))

    def warning(self, text: str) -> None:
        self.report.warnings.append(show_path(text))

    def load(self, filename: str, expected: MetaFile | None = None) -> Metadata | None:  # type: ignore[type-arg]
        """Read one metadata file, check it against its parent's length/hash, and parse it."""
        path = self.repo.metadata_dir / filename
        try:
            data = read_regular(path)
        except FileNotFoundError:
            self.problem(f"{filename}: missing")
            return None
        except OSError as exc:
            self.problem(f"{filename}: unreadable ({exc.strerror or exc})")  # a FIFO, a symbolic link...
            return None
        self.report.checked_files += 1
        if expected is not None and (expected.length is not None or expected.hashes):
            try:
                expected.verify_length_and_hashes(data)
            except Exception:
                self.problem(f"{filename}: length or hash differs from what its parent metadata signed")
                return None
        try:
            md = Metadata.from_bytes(data)
        except Exception as exc:
            self.problem(f"{filename}: not valid TUF metadata ({exc})")
            return None
        # A byte change that keeps the JSON meaningful still shows: our files are always in canonical
        # compact form, with lowercase hex signatures (verification itself accepts either case).
        if to_bytes(md) != data or any(s.signature != s.signature.lower() for s in md.signatures.values()):
            self.problem(f"{filename}: bytes differ from the canonical form the publisher writes (modified?)")
        return md

    def check_signed(self, filename: str, md: Metadata, verify: Callable[[], None], version: int | None) -> bool:  # type: ignore[type-arg]
        ok = True
        try:
            verify()
        except Exception as exc:
            self.problem(f"{filename}: signature check failed ({exc})")
            ok = False
        if version is not None and md.signed.version != version:
            self.problem(f"{filename}: version {md.signed.version} does not match the expected {version}")
            ok = False
        if md.signed.is_expired(self.now):
            self.problem(f"{filename}: expired at {md.signed.expires:%Y-%m-%dT%H:%M:%SZ}")
            ok = False
        return ok

    def root_chain(self) -> Metadata[Root] | None:
        versions = self.repo.root_versions()
        if not versions:
            self.problem("1.root.json: missing")
            return None
        trusted: Metadata[Root] | None = None
        for n in versions:
            name = f"{n}.root.json"
            md = self.load(name)
            if md is None or md.signed.type != "root":
                if md is not None:
                    self.problem(f"{name}: not root metadata")
                return None
            signers = [md.signed] if trusted is None else [trusted.signed, md.signed]
            for signer in signers:
                try:
                    signer.verify_delegate("root", md.signed_bytes, md.signatures)
                except Exception as exc:
                    self.problem(f"{name}: root signature check failed ({exc})")
                    return None
            if md.signed.version != n:
                self.problem(f"{name}: holds version {md.signed.version}")
                return None
            trusted = md
        assert trusted is not None
        if trusted.signed.is_expired(self.now):
            self.problem(f"{versions[-1]}.root.json: expired at {trusted.signed.expires:%Y-%m-%dT%H:%M:%SZ}")
        return trusted

    def run(self) -> AuditReport:
        root = self.root_chain()
        if root is None:
            return self.report
        ts = self.load("timestamp.json")
        if ts is None or ts.signed.type != "timestamp":
            return self.report
        self.check_signed("timestamp.json", ts, lambda: root.signed.verify_delegate("timestamp", ts.signed_bytes,
                                                                                     ts.signatures), None)
        snap_meta = ts.signed.snapshot_meta
        snap_name = f"{snap_meta.version}.snapshot.json"
        snap = self.load(snap_name, snap_meta)
        if snap is None:
            return self.report
        self.check_signed(snap_name, snap, lambda: root.signed.verify_delegate("snapshot", snap.signed_bytes,
                                                                                snap.signatures), snap_meta.version)
        meta = snap.signed.meta
        if "targets.json" not in meta:
            self.problem(f"{snap_name}: does not list targets.json")
            return self.report
        tmeta = meta["targets.json"]
        tname = f"{tmeta.version}.targets.json"
        top = self.load(tname, tmeta)
        if top is None:
            return self.report
        self.check_signed(tname, top, lambda: root.signed.verify_delegate("targets", top.signed_bytes,
                                                                           top.signatures), tmeta.version)
        if top.signed.targets:
            self.problem(f"{tname}: top-level targets should only delegate, it lists targets")
        delegations = top.signed.delegations
        roles = delegations.roles if delegations and delegations.roles else {}
        listed = {"targets.json", *(f"{r}.json" for r in roles)}
        for name, role in roles.items():
            md = self.delegated(name, top, meta, f"{snap_name}: does not list the delegated role {name}")
            if md is None:
                continue
            self.channel(name, role, md)
            listed.update(self.archive(name, role, md, meta, snap_name))
        for extra in sorted(set(meta) - listed):
            self.problem(f"{snap_name}: lists {extra}, which no role delegates")
        self.superseded({name.removesuffix(".json"): info.version for name, info in meta.items()
                         if name != "targets.json"})
        self.unreferenced()
        if self.deep:
            self.deltas()
        return self.report

    def deltas(self) -> None:
        """``--deep``: apply every delta of every release (live or archived) to its base release and
        check the output against the release's signed manifest, with the client's own appliers
        (``formats.delta_apply``): the manifest the delta carries must compress to the signed
        manifest target, every file must come out with its signed size and sha256, and the tree must
        be exactly the manifest. Each base is extracted (verified) once, into a temporary directory
        outside the repository (``TMPDIR``), and each delta applied next to it; one base tree and
        one output tree at a time."""
        by_base: dict[tuple[str, str, Any], list[tuple[str, Release, DeltaRef]]] = {}
        for (channel, platform, _), release in sorted(self.releases.items(), key=lambda kv: str(kv[0])):
            for ref in release.deltas:
                label = f"{channel} {release.version} ({platform}): delta from {ref.base}"
                key = (channel, platform, parse_version(ref.base))
                base = self.releases.get(key)
                if base is None:
                    self.problem(f"{label}: the base release is not in the repository")
                elif base.content.sha256 != ref.base_content:
                    self.problem(f"{label}: the base release's content digest is not the delta's from_content")
                else:
                    by_base.setdefault(key, []).append((label, release, ref))
        with tempfile.TemporaryDirectory(prefix="pinnacle-verify-") as scratch, \
                phase(self.progress, "deltas", sum(len(uses) for uses in by_base.values()), "files"):
            for key, uses in by_base.items():
                self.deltas_from(self.releases[key], uses, Path(scratch))

    def deltas_from(self, base: Release, uses: list[tuple[str, Release, DeltaRef]], scratch: Path) -> None:
        base_dir, out = scratch / "base", scratch / "out"
        try:
            base_manifest = self.read_manifest(base)
            base_dir.mkdir()
            extract_release(self.repo.target_location(base.full.path, base.full.sha256), base_dir, base_manifest)
        except (OSError, zstandard.ZstdError, FormatError) as exc:
            for label, _, _ in uses:
                self.problem(f"{label}: not applied, its base release does not extract ({exc})")
            self.progress.advance(len(uses))
            shutil.rmtree(base_dir, ignore_errors=True)
            return
        for label, release, ref in uses:
            delta_file = self.repo.target_location(ref.target.path, ref.target.sha256)
            try:
                target = self.read_manifest(release)
                carried, rebuilt = manifest_from_delta(delta_file, base_manifest, release, base_dir)
                if carried is not None and carried != target:
                    raise DeltaError("the manifest it carries is not the signed manifest")
                out.mkdir()
                apply_delta(delta_file, base_dir, base_manifest, target, out, rebuilt=rebuilt)
                wrong = verify_tree(out, target)
                if wrong:
                    raise DeltaError(f"its output differs from the signed manifest ({len(wrong)}: {wrong[0]})")
                self.report.deltas += 1
            except (OSError, zstandard.ZstdError, FormatError) as exc:  # DeltaError and ArchiveError are FormatErrors
                self.problem(f"{label}: {str(exc).removeprefix(f'delta from {base.version}: ')}")  # the appliers' label
            finally:
                shutil.rmtree(out, ignore_errors=True)
                self.progress.advance()
        shutil.rmtree(base_dir, ignore_errors=True)

    def superseded(self, current: dict[str, int]) -> None:
        """Targets that only older versions of the delegated roles (channels, archive bins) still
        list: kept for clients in the middle of an update (a superseded channel index, above all),
        so checked like live ones. Older versions are those still in ``metadata/`` (``prune``
        removes the ones no unexpired snapshot lists); their signatures were checked when they
        were current and keys may have been rotated since, so only their targets are checked."""
        for filename in sorted(self.repo.metadata_dir.iterdir() if self.repo.metadata_dir.is_dir() else ()):
            version, _, rest = filename.name.partition(".")
            role = rest.removesuffix(".json")
            if not version.isdigit() or role not in current or int(version) == current[role]:
                continue
            try:
                md = Metadata.from_bytes(read_regular(filename))
                targets = md.signed.targets if isinstance(md.signed, Targets) else None
            except Exception as exc:  # any decoding failure (deep nesting too) is the file's problem
                self.problem(f"{filename.name}: a retained version that is not valid TUF metadata ({exc})")
                continue
            if targets is None:
                self.problem(f"{filename.name}: a retained version that is not targets metadata")
                continue
            for path, info in sorted(targets.items()):
                self.target_file(path, info, f" (listed by {filename.name})")

    def unreferenced(self) -> None:
        """Every file under ``targets/`` that no retained metadata references: a regular file whose
        content matches its content-addressed name is a warning (a killed publish's leftover), one
        that does not is a problem (a publish of those bytes would reuse the corrupt file), and
        anything not a regular file (a symlink, a FIFO) is a problem."""
        root = self.repo.targets_dir
        for directory, dirs, files in os.walk(root):
            for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
                location = Path(directory, name)
                relative = location.relative_to(self.repo.path)
                if location in self.hashed:
                    continue
                digest = name.partition(".")[0]
                algorithm = _CONTENT_NAME.get(len(digest)) if digest.strip("0123456789abcdef") == "" else None
                try:
                    if not stat.S_ISREG(location.lstat().st_mode):
                        self.problem(f"{relative}: not a regular file")
                        continue
                    if algorithm is None:
                        self.warning(f"{relative}: not a content-addressed target name, and no metadata references it")
                        continue
                    self.report.checked_targets += 1
                    actual = _file_digest(location, algorithm)
                except OSError as exc:
                    self.problem(f"{relative}: unreadable ({exc.strerror or exc})")
                    continue
                if actual != digest:
                    self.problem(f"{relative}: content does not match its name, which is its {algorithm} "
                                 "(corrupt; a publish of those bytes would reuse it)")
                else:
                    self.warning(f"{relative}: no retained metadata references it (left by an interrupted publish?)")

    def delegated(self, name: str, parent: Metadata[Targets], meta: dict[str, MetaFile],
                  unlisted: str) -> Metadata[Targets] | None:
        """Load the role ``name`` at the version the snapshot lists; check it against that entry
        and its delegator's keys."""
        if f"{name}.json" not in meta:
            self.problem(unlisted)
            return None
        rmeta = meta[f"{name}.json"]
        fname = f"{rmeta.version}.{name}.json"
        md = self.load(fname, rmeta)
        if md is None:
            return None
        self.check_signed(fname, md, lambda: parent.signed.verify_delegate(name, md.signed_bytes, md.signatures),
                          rmeta.version)
        return md

    def archive(self, name: str, role: DelegatedRole, md: Metadata[Targets], meta: dict[str, MetaFile],
                snap_name: str) -> set[str]:
        """Check the channel's archive bins: signed by the channel's delegation, holding only archive
        records, each in its own bin, present with its signed length and hash; and every file a
        record vouches for present with the record's length and sha256. Returns the snapshot
        entries it covers."""
        delegations = md.signed.delegations
        succinct = delegations.succinct_roles if delegations else None
        if succinct is None:
            return set()
        for bin_name in succinct.get_roles():
            bin_md = self.delegated(bin_name, md, meta, f"{snap_name}: does not list the archive bin {bin_name}")
            if bin_md is None:
                continue
            for path, info in bin_md.signed.targets.items():
                if succinct.get_role_for_target(path) != bin_name:
                    self.problem(f"{bin_name}: target {path} belongs in bin {succinct.get_role_for_target(path)}")
                if not role.is_delegated_path(path):
                    self.problem(f"{bin_name}: target {path} is outside the paths delegated to {name}")
                self.target_file(path, info)
                self.record(name, path, info)
        return {f"{b}.json" for b in succinct.get_roles()}

    def record(self, channel: str, path: str, info: Any) -> None:
        parts = path.split("/")
        if len(parts) != 4 or parts[3] != "release.json":
            self.problem(f"archive target {path} is not a record at <channel>/<platform>/<version>/release.json")
            return
        try:
            data = read_regular(self.repo.target_location(path, info.hashes.get("sha256", "")))
            release = record_from_bytes(data, channel, parts[1], parts[2])
        except (OSError, FormatError) as exc:
            self.problem(f"archive record {path} unreadable ({exc})")
            return
        self.report.archived += 1
        for ref in release.targets():
            if not ref.path.startswith(f"{channel}/"):
                self.problem(f"archive record {path} points outside its channel at {ref.path}")
            self.target_file(ref.path, TargetFile(ref.length, {"sha256": ref.sha256}, ref.path))
        self.manifest(channel, release)

    def channel(self, name: str, role: DelegatedRole, md: Metadata[Targets]) -> None:
        targets = md.signed.targets
        for path, info in targets.items():
            if not role.is_delegated_path(path):
                self.problem(f"{name}: target {path} is outside the paths delegated to {name}")
            self.target_file(path, info)
        self.index(name, targets)

    def target_file(self, path: str, info: Any, where: str = "") -> None:
        """Check the file of target ``path`` against ``info`` (its signed length and hashes), once
        per file: a file listed again (by another role version) has its length compared only."""
        location = self.repo.target_location(path, info.hashes.get("sha256", ""))
        if location in self.hashed:
            if info.length != self.hashed[location]:
                self.problem(f"target {path}{where}: signed length {info.length} differs from the "
                             f"{self.hashed[location]} bytes signed elsewhere")
            return
        self.hashed[location] = info.length
        self.report.checked_targets += 1
        if where:
            self.report.superseded_targets += 1
        try:
            with open_regular(location) as f:
                info.verify_length_and_hashes(f)
        except FileNotFoundError:
            self.problem(f"target {path}{where}: file {location.relative_to(self.repo.path)} is missing")
        except OSError as exc:
            self.problem(f"target {path}{where}: file {location.relative_to(self.repo.path)}: {exc.strerror or exc}")
        except Exception:
            self.problem(f"target {path}{where}: length or sha256 differs from the signed value (tampered?)")

    def index(self, name: str, targets: dict[str, Any]) -> None:
        ipath = index_path(name)
        info = targets.get(ipath)
        if info is None:
            self.problem(f"{name}: no channel index {ipath} in signed targets")
            return
        try:
            data = read_regular(self.repo.target_location(ipath, info.hashes["sha256"]))
            index = ChannelIndex.from_bytes(data)
        except (OSError, FormatError) as exc:
            self.problem(f"{name}: channel index unreadable ({exc})")
            return
        if index.channel != name:
            self.problem(f"{ipath}: names channel '{index.channel}'")
        referenced = {ipath, *self.compressed_index(name, targets, data)}
        seen: set[tuple[str, str]] = set()
        for release in index.releases:
            self.report.releases += 1
            key = (release.platform, str(release.parsed_version))
            if key in seen:
                self.problem(f"{ipath}: {release.version} for {release.platform} listed twice")
            seen.add(key)
            for ref in release.targets():
                referenced.add(ref.path)
                signed = targets.get(ref.path)
                if signed is None:
                    self.problem(f"{ipath}: {release.version} refers to {ref.path}, which {name} did not sign")
                elif signed.length != ref.length or signed.hashes.get("sha256") != ref.sha256:
                    self.problem(f"{ipath}: {release.version} length/sha256 of {ref.path} disagree with signed targets")
            self.manifest(name, release)
        for path in sorted(set(targets) - referenced):
            self.problem(f"{name}: signed target {path} is not referenced by the channel index")

    def compressed_index(self, name: str, targets: dict[str, Any], data: bytes) -> set[str]:
        """``index.json.zst``, when the role lists it, must decompress to exactly ``index.json``'s
        ``data``: new clients read only the compressed one, older ones only the JSON, and both must
        see the same index. Returns the path when listed (a target the index accounts for)."""
        zpath = compressed_index_path(name)
        info = targets.get(zpath)
        if info is None:
            return set()
        out = bytearray()
        try:
            with open_regular(self.repo.target_location(zpath, info.hashes["sha256"])) as f, \
                    zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as reader:
                while len(out) <= len(data) and (chunk := reader.read(CHUNK_SIZE)):
                    out += chunk
        except FileNotFoundError:
            pass  # target_file has reported the missing file
        except (OSError, zstandard.ZstdError) as exc:
            self.problem(f"{zpath}: not readable as zstd ({exc})")
        else:
            if out != data:
                self.problem(f"{zpath}: decompresses to other bytes than {index_path(name)} "
                             "(clients that read it would see another index)")
        return {zpath}

    def read_manifest(self, release: Release) -> Manifest:
        """The stored manifest of ``release``; raises ``OSError``, ``zstandard.ZstdError`` or ``FormatError``."""
        with open_regular(self.repo.target_location(release.manifest.path, release.manifest.sha256)) as f:
            data = zstandard.ZstdDecompressor().stream_reader(f).read(MAX_MANIFEST_BYTES + 1)
        return Manifest.from_bytes(data)

    def manifest(self, name: str, release: Release) -> None:
        try:
            manifest = self.read_manifest(release)
        except (OSError, zstandard.ZstdError, FormatError) as exc:
            self.problem(f"{name} {release.version}: manifest unreadable ({exc})")
            return
        self.releases[(name, release.platform, release.parsed_version)] = release
        if manifest.content != release.content or manifest.version != release.version:
            self.problem(f"{name} {release.version}: manifest disagrees with the channel index")
        unsafe = manifest_problems(manifest.entries, release.platform)
        if unsafe:  # what publish refuses today (names unsafe on the release's platform) may be older
            self.problem(f"{name} {release.version}: release tree unsafe on {release.platform}: {unsafe[0]}")
        if self.deep:
            self.artifact_content(name, release)

    def artifact_content(self, name: str, release: Any) -> None:
        """Decompress the full artifact and compare it with the signed canonical-content digest."""
        location = self.repo.target_location(release.full.path, release.full.sha256)
        digest = hashlib.sha256()
        length = 0
        try:
            with (phase(self.progress, "decompress", release.content.length, "bytes", f"{name} {release.version}"),
                  open_regular(location) as f, zstandard.ZstdDecompressor().stream_reader(f) as reader):
                while chunk := reader.read(1 << 20):
                    digest.update(chunk)
                    length += len(chunk)
                    self.progress.update(length)
        except (OSError, zstandard.ZstdError) as exc:
            self.problem(f"{name} {release.version}: full artifact unreadable ({exc})")
            return
        if length != release.content.length or digest.hexdigest() != release.content.sha256:
            self.problem(f"{name} {release.version}: full artifact content differs from the signed content digest")


def verify_repository(path: Path, now: datetime, deep: bool = False, progress: Progress = NULL) -> AuditReport:
    """Audit the repository at ``path``; an empty ``problems`` list means it is sound. With ``deep``,
    ``progress`` gets a phase ``decompress`` per full artifact (bytes) and one ``deltas`` (deltas applied)."""
    return _Auditor(Repository(path), now, deep, progress).run()
