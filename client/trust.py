"""Everything the client trusts goes through python-tuf's ``ngclient.Updater``; this module adds
only the product's view on top of it.

* ``refresh()`` runs the TUF client workflow (root chain, timestamp, snapshot, top-level targets)
  with a fresh ``Updater`` bootstrapped from the root shipped with the client. Trust state
  (verified metadata, rollback protection) lives in ngclient's metadata directory, not here.
* ``channel_index()`` downloads ``<channel>/index.json.zst`` as a verified target when the channel
  role lists it (decompressed within ``INDEX_MAX_BYTES``, and the result checked against the signed
  length and hashes of ``<channel>/index.json``), else ``<channel>/index.json`` (a repository from
  before the compressed index), and checks that every artifact the index names is a target signed
  for that channel with the same length and sha256, so nothing read from the index later can point
  outside signed metadata.
* Hashes: targets metadata may list any hash algorithm python-tuf computes (sha256, sha512,
  sha384, blake2b-256, sha3-256, ...); ngclient verifies every one it lists and asks for the file
  by the first in the signed file's order (``<hash>.<name>``; canonical JSON sorts them). The
  channel index and archive records are pinnacle's own format and keep sha256
  (docs/ARCHITECTURE.md). When the signed metadata lists no sha256, the index's sha256 is checked
  on the verified download instead: a file is bound to both signatures either way. A target
  listed only with broken algorithms (md5, sha1) is refused: a collision-prone hash vouches for
  nothing.
* ``fetch_target()`` downloads (or reuses from the cache) one verified target; ``fetch_manifest()``
  adds bounded zstd decompression and parsing; ``prune_cache()`` drops what no release needs.

Every failure leaves as one line a person can act on: python-tuf verification failures become
``TrustError``, download and network failures ``RepositoryError``, local file system failures
``StateError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import zstandard
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.api.serialization import DeserializationError
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

from pinnacle_updates.client.errors import ConfigError, RepositoryError, StateError, TrustError, UpdateError
from pinnacle_updates.client.transport import HttpxFetcher, TransportSettings, TransportStats, local_path
from pinnacle_updates.formats import boundedjson
from pinnacle_updates.formats.boundedjson import DOCUMENT_MAX
from pinnacle_updates.formats.fsutil import TEMP_PREFIX, atomic_move, read_regular
from pinnacle_updates.formats.index import (
    PLATFORM_ANY,
    ChannelIndex,
    FormatError,
    Manifest,
    Release,
    TargetRef,
    check_channel,
    check_platform,
    compressed_index_path,
    index_path,
    parse_version,
    record_from_bytes,
    record_path,
)
from pinnacle_updates.formats.rollout import SIGNED_AT_FIELD

MANIFEST_MAX_BYTES = 64 * 1024 * 1024
"""A signed manifest that decompresses to more than this is refused (a zstd bomb needs no key
compromise to hurt if the publisher's tooling is buggy; 64 MiB is ~500k entries)."""

INDEX_MAX_BYTES = DOCUMENT_MAX
"""A signed ``index.json.zst`` that decompresses to more than this is refused, by the manifests'
rule: no more than the JSON parser would accept as a document (64 MiB)."""

Progress = Callable[[int, int], None]


class RepositoryClient:
    """A verified view of one repository for one client (metadata dir and target cache).

    ``repo_url`` is an http(s) URL, a ``file://`` URL or a local directory; the repository keeps
    metadata under ``metadata/`` and targets under ``targets/``. ``metadata_url`` and
    ``targets_url``, when given, are those two directories' own locations instead (python-tuf's
    ``metadata_base_url`` and ``target_base_url``): metadata from an origin, artifacts from a CDN or
    a mirror. Nothing is trusted for where it comes from; every byte is verified the same way.
    ``root_bytes`` is the root metadata shipped with the client: the trust anchor, used whenever
    the local copy is absent.
    """

    def __init__(
        self,
        repo_url: str,
        metadata_dir: Path,
        cache_dir: Path,
        root_bytes: bytes,
        settings: TransportSettings | None = None,
        *,
        fetcher: HttpxFetcher | None = None,
        metadata_url: str | None = None,
        targets_url: str | None = None,
    ) -> None:
        self.repo_url = _base_url(repo_url)
        self.metadata_url = _base_url(metadata_url) if metadata_url else f"{self.repo_url}metadata/"
        self.targets_url = _base_url(targets_url) if targets_url else f"{self.repo_url}targets/"
        self.metadata_dir = Path(metadata_dir)
        self.cache_dir = Path(cache_dir)
        self._root_bytes = root_bytes
        self._fetcher = fetcher or HttpxFetcher(settings)
        self._updater: Updater | None = None
        self._vouched: dict[str, TargetFile] = {}
        """Files of archived releases: no role lists them; their verified archive record does."""

    @property
    def stats(self) -> TransportStats:
        """Requests and bytes moved so far by this client (all refreshes and downloads)."""
        return self._fetcher.stats

    def close(self) -> None:
        self._fetcher.close()

    def __enter__(self) -> RepositoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Run the TUF refresh with a new ``Updater``; afterwards targets resolve against it."""
        self._updater = None
        self._vouched = {}
        try:
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the metadata directory {self.metadata_dir}: {_os_reason(exc)}") from exc
        with self._seam(None, subject="the shipped root metadata"):
            updater = Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.metadata_url,
                target_dir=str(self.cache_dir),
                target_base_url=self.targets_url,
                fetcher=self._fetcher,
                config=UpdaterConfig(),
                bootstrap=self._root_bytes,
            )
        with self._seam(updater):
            updater.refresh()
        self._updater = updater

    def channel_index(self, channel: str) -> ChannelIndex:
        """The channel's verified index; every artifact it names is checked against the
        targets signed for the channel (path inside the channel, same length and sha256)."""
        try:
            check_channel(channel)
        except FormatError as exc:
            raise RepositoryError(str(exc)) from exc
        path = index_path(channel)
        try:
            index = ChannelIndex.from_bytes(self._index_bytes(channel))
        except FormatError as exc:
            raise RepositoryError(f"channel index {path} is unusable: {exc}") from exc
        if index.channel != channel:
            raise TrustError(f"channel index {path} claims to be channel {index.channel!r}: refused")
        for release in index.releases:
            for ref in release.targets():
                where = f"release {release.version} ({release.platform}) in {path}"
                if not ref.path.startswith(f"{channel}/"):
                    raise TrustError(f"{where} points outside its channel at {ref.path}: refused")
                self._signed_ref(ref, where)
        return index

    def _index_bytes(self, channel: str) -> bytes:
        """The bytes of the channel's signed ``index.json``: decompressed from the verified
        ``index.json.zst`` when the channel role lists one (never downloading the JSON), else the
        verified ``index.json`` itself."""
        path = index_path(channel)
        packed = compressed_index_path(channel)
        packed_info = self._listed(packed)
        if packed_info is None:  # an older publisher: the JSON only
            local = self._download(self._signed(path), None)
            try:
                return local.read_bytes()
            except OSError as exc:
                raise StateError(f"cannot read the cached {path}: {_os_reason(exc)}") from exc
        data = _decompress_bounded(self._download(packed_info, None), packed, INDEX_MAX_BYTES, "channel index")
        plain = self._listed(path)
        if plain is not None:
            # The JSON's signed length and hashes bind what the .zst holds to what older clients read.
            _signed_hashes(plain.hashes, path)
            try:
                plain.verify_length_and_hashes(data)
            except tuf_exc.LengthOrHashMismatchError:
                how = f"{len(data)} bytes, {plain.length} signed" if len(data) != plain.length else "another hash"
                raise TrustError(f"channel index {packed} decompresses to other bytes than the signed {path} "
                                 f"({how}): refused") from None
        return data

    def channels(self) -> list[str]:
        """The channels this repository offers, sorted: the roles its verified top-level targets
        delegate (one per channel; archive bins hang below a channel's role, not here). Reads
        ngclient's trusted set, loaded by ``refresh``; names that are not channel names are left out."""
        trusted: Any = getattr(self._require_updater(), "_trusted_set", None)
        try:
            delegations = trusted["targets"].delegations  # the trusted set holds the verified Signed parts
        except (TypeError, KeyError, AttributeError) as exc:
            raise RepositoryError(f"cannot list the repository's channels ({type(exc).__name__})") from exc
        names = []
        for name in delegations.roles if delegations is not None and delegations.roles else {}:
            with contextlib.suppress(FormatError):  # not a channel's name: not offered as one
                names.append(check_channel(name))
        return sorted(names)

    def archived_release(self, channel: str, platform: str, version: str) -> Release | None:
        """A release that left the channel index's live window, from its archive record (which TUF
        finds through the channel's hashed bins), or None when the channel never had it."""
        try:
            check_channel(channel)
            check_platform(platform)
            wanted = str(parse_version(version))
        except FormatError as exc:
            raise RepositoryError(str(exc)) from exc
        updater = self._require_updater()
        for tag in dict.fromkeys((platform, PLATFORM_ANY)):  # the platform's own releases, then 'any'
            path = record_path(channel, tag, wanted)
            with self._seam(updater):
                info = updater.get_targetinfo(path)
            if info is not None:
                break
        else:
            return None
        local = self._download(info, None)
        try:
            release = record_from_bytes(local.read_bytes(), channel, tag, wanted)
        except FormatError as exc:
            raise RepositoryError(f"archive record {path} is unusable: {exc}") from exc
        except OSError as exc:
            raise StateError(f"cannot read the cached {path}: {_os_reason(exc)}") from exc
        for ref in release.targets():
            if not ref.path.startswith(f"{channel}/"):
                raise TrustError(f"archive record {path} points outside its channel at {ref.path}: refused")
            # The record is a verified target of a role the channel delegated: its lengths and hashes
            # vouch for the release's files exactly as the signed index did while it was live.
            self._vouched[ref.path] = TargetFile(ref.length, {"sha256": ref.sha256}, ref.path)
        return release

    def signed_time(self) -> str | None:
        """When the newest verified timestamp metadata was signed (the publisher's
        ``pinnacle_signed_at``), or None when it does not say: the floor of the rollout clock."""
        try:
            path = self.metadata_dir / "timestamp.json"  # verified by ngclient, but bounded all the same
            signed = boundedjson.load_object(read_regular(path, DOCUMENT_MAX), path.name)["signed"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        value = signed.get(SIGNED_AT_FIELD) if isinstance(signed, dict) else None
        return value if isinstance(value, str) else None

    # -- targets ------------------------------------------------------------------------------

    def fetch_target(self, ref: TargetRef, progress: Progress | None = None) -> Path:
        """The local path of the verified target ``ref`` (downloaded unless the cache holds it).

        ``progress(bytes_so_far, total)`` is called as bytes arrive; ``total`` is the signed length.
        """
        where = f"{ref.path} (as referenced)"
        info = self._signed_ref(ref, where)
        path = self._download(info, progress)
        if SHA256 not in _signed_hashes(info.hashes, info.path):
            _check_sha256(path, ref, where)  # the signed hashes bound the bytes; now bind the reference too
        return path

    def fetch_manifest(self, release: Release) -> Manifest:
        """The release's file manifest: verified download, bounded decompression, parsing, and a
        check that it describes the release the signed index announced."""
        path = self.fetch_target(release.manifest)
        name = release.manifest.path
        data = _decompress_bounded(path, name, MANIFEST_MAX_BYTES)
        try:
            manifest = Manifest.from_bytes(data)
        except FormatError as exc:
            raise RepositoryError(f"manifest {name} is unusable: {exc}") from exc
        if manifest.version != release.version or manifest.content != release.content:
            raise TrustError(
                f"manifest {name} describes version {manifest.version} with content sha256 "
                f"{manifest.content.sha256[:12]}..., not the release the channel index announced: refused"
            )
        return manifest

    def prune_cache(self, keep: set[str]) -> list[str]:
        """Delete cached targets whose path is not in ``keep`` (plus temp files left by a killed
        download); channel indexes always stay. Returns the target paths removed."""
        keep_names = {cache_name(p) for p in keep}
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.cache_dir))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            target = unquote(entry.name)
            temp = entry.name.startswith(TEMP_PREFIX)
            if not temp and (entry.name in keep_names or _is_index(target)):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateError(f"cannot prune the target cache {self.cache_dir}: {_os_reason(exc)}") from exc
            if not temp:
                removed.append(target)
        return sorted(removed)

    # -- internals ----------------------------------------------------------------------------

    def _require_updater(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def _signed(self, path: str) -> TargetFile:
        """The signed ``TargetFile`` for ``path`` (walking the delegations, or vouched for by a
        verified archive record), or TrustError."""
        info = self._listed(path)
        if info is None:
            raise TrustError(f"{path} is not listed in signed metadata")
        return info

    def _listed(self, path: str) -> TargetFile | None:
        """The signed ``TargetFile`` for ``path``, or None when no signed metadata lists it."""
        if path in self._vouched:
            return self._vouched[path]
        updater = self._require_updater()
        with self._seam(updater):
            return updater.get_targetinfo(path)

    def _signed_ref(self, ref: TargetRef, where: str) -> TargetFile:
        """The signed ``TargetFile`` for ``ref``; refuses a ref whose length or sha256 disagree with
        it, and a target whose signed hashes the client cannot use (see ``_signed_hashes``)."""
        info = self._signed(ref.path)
        differs = None
        if info.length != ref.length:
            differs = f"length {ref.length} referenced, {info.length} signed"
        else:
            signed = _signed_hashes(info.hashes, ref.path).get(SHA256)
            if signed is not None and signed != ref.sha256:
                referenced, signed = _abbreviated(ref.sha256, signed)
                differs = f"sha256 {referenced} referenced, {signed} signed"
        if differs:
            raise TrustError(f"{where}: {ref.path} does not match its signed target metadata ({differs}): refused")
        return info

    def _download(self, info: TargetFile, progress: Progress | None) -> Path:
        """Return the cached verified copy of ``info`` or download it.

        ngclient verifies length and hashes in a temporary file before writing anything to the
        cache; the file then lands under a temp name and is renamed into place, so the cache never
        holds a torn or unverified file under a real name.
        """
        updater = self._require_updater()
        _signed_hashes(info.hashes, info.path)  # refuses hashes it cannot use before any byte moves
        dest = self.cache_dir / cache_name(info.path)
        if updater.find_cached_target(info, str(dest)) is not None:
            if progress is not None:
                progress(info.length, info.length)
            return dest
        tmp = dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-{dest.name}")
        received = 0

        def on_bytes(n: int) -> None:
            nonlocal received
            received += n
            if progress is not None:
                progress(received, info.length)

        self._fetcher.on_bytes = on_bytes
        resumed_before = self._fetcher.stats.resumed
        try:
            with self._seam(updater, target=info.path, signed=info.hashes):
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                try:
                    updater.download_target(info, str(tmp))
                except tuf_exc.LengthOrHashMismatchError:
                    if self._fetcher.stats.resumed == resumed_before:
                        raise
                    # The kept partial was damaged on disk; it is discarded now, so fetch once afresh.
                    received = 0
                    updater.download_target(info, str(tmp))
                atomic_move(tmp, dest)
        finally:
            self._fetcher.on_bytes = None
            with contextlib.suppress(OSError):  # never hides the error that got us here
                tmp.unlink()
        return dest

    @contextlib.contextmanager
    def _seam(self, updater: Updater | None, target: str | None = None, subject: str | None = None,
              signed: Mapping[str, str] | None = None) -> Iterator[None]:
        """Translate python-tuf, download and OS errors raised in the block into one-line
        ``UpdateError``s. The subject is the target, or else the metadata file last fetched;
        ``signed`` are the target's signed hashes (to name the algorithm of a mismatch)."""
        try:
            yield
        except UpdateError:
            raise
        except (tuf_exc.DownloadError, tuf_exc.RepositoryError) as exc:
            if subject is None:
                subject = f"target {target}" if target else _metadata_subject(self._fetcher.last_url)
            raise _translate(exc, subject, updater, signed) from exc
        except OSError as exc:
            where = self.cache_dir if target else self.metadata_dir
            raise StateError(f"cannot write {where}: {_os_reason(exc)}") from exc


# -- error translation ------------------------------------------------------------------------

# Patterns of python-tuf's messages, compiled (and cached by ``re``) only when an error is translated:
# most runs translate none.
_ROLLBACK_PATTERNS = (
    # (tuf message, role group name or literal, new version group, trusted version group)
    r"New (?P<role>timestamp) version (?P<new>\d+) must be >= (?P<old>\d+)",
    r"New (?P<role>snapshot) version must be >= (?P<old>\d+), got version (?P<new>\d+)",
    # update_snapshot reports a rolled-back role as "Expected <role>.json version <new>, got <old>."
    r"Expected (?P<role>[\w.-]+)\.json version (?P<new>\d+), got (?P<old>\d+)",
)
_MISMATCH_PATTERNS = (
    # (served version, expected version) pairs that are inconsistent rather than older
    r"Expected (?P<role>root) version (?P<want>\d+) instead got version (?P<got>\d+)",
    r"Expected (?P<role>snapshot) version (?P<want>\d+), got (?P<got>\d+)$",
    r"Expected (?P<role>[\w.-]+) v(?P<want>\d+), got v(?P<got>\d+)",
)
_EXPIRED = r"^(?:Final |New )?(?P<role>[\w.-]+?)(?:\.json)? is expired"
_SIGNED_BY = r"signed by (?P<n>\d+)/(?P<m>\d+) keys"
_LENGTH = r"Observed length (?P<got>\d+) does not match expected length (?P<want>\d+)"
_HASH = r"Observed hash (?P<got>\S+) does not match expected hash (?P<want>\S+)"
_UNSUPPORTED = r"Unsupported algorithm '(?P<algo>.*)'"
_TOO_LONG = r"maximum allowed length of (?P<max>\d+)"


def _translate(exc: Exception, subject: str, updater: Updater | None,
               signed: Mapping[str, str] | None = None) -> UpdateError:
    """One ``UpdateError`` saying what happened to ``subject`` (see the module docstring)."""
    text = str(exc)
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        m = re.search(_TOO_LONG, text)
        limit = f"the {m['max']} bytes expected" if m else "expected"
        return TrustError(f"{subject} failed verification: longer than {limit} (tampered or corrupted)")
    if isinstance(exc, tuf_exc.DownloadHTTPError):
        if exc.status_code in (401, 407):  # a private repository (client.repo_access): never the credential itself
            return RepositoryError(f"the repository refused {subject} without valid credentials ({text}); "
                                   "check repo_token_file, repo_username/repo_password_file or PINNACLE_REPO_*")
        if exc.status_code in (403, 404):
            return RepositoryError(f"{subject} is not on the repository ({text})")
        if exc.status_code == 400 and "https:" in text:  # nginx's answer to a missing or refused client certificate
            return RepositoryError(f"the repository failed to serve {subject} ({text}); if it asks for a client "
                                   "certificate, check repo_client_cert/repo_client_key")
        return RepositoryError(f"the repository failed to serve {subject} ({text})")
    if isinstance(exc, tuf_exc.SlowRetrievalError):
        return RepositoryError(f"the repository is too slow or unreachable: {subject} timed out ({text or 'timeout'})")
    if isinstance(exc, tuf_exc.DownloadError):
        cause = exc.__cause__
        detail = str(cause) if text.startswith("Failed to download") and cause else text
        return RepositoryError(f"cannot reach the repository ({detail})")
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        m = re.search(_EXPIRED, text)
        role = m["role"] if m else subject
        expiry = _expiry(updater, role) if m else None
        when = f" ({expiry})" if expiry else ""
        return TrustError(
            f"{role} metadata has expired{when}; the repository must be refreshed by its publisher "
            f"(this machine's clock reads {_iso(datetime.now(UTC))})"
        )
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        for pattern in _ROLLBACK_PATTERNS:
            if m := re.search(pattern, text):
                return TrustError(
                    f"{m['role']} version {m['new']} is older than the trusted version {m['old']}: "
                    "rollback attack refused"
                )
        for pattern in _MISMATCH_PATTERNS:
            if m := re.search(pattern, text):
                return TrustError(
                    f"{m['role']} version {m['got']} was served where version {m['want']} is signed: "
                    "refused (replayed or inconsistent metadata)"
                )
        return TrustError(f"{subject} has a bad version number: {text}")
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        m = re.search(_SIGNED_BY, text)
        count = f" ({m['n']} of {m['m']} required signatures valid)" if m else ""
        return TrustError(f"{subject} is not signed by the trusted keys{count}: refused")
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        if m := re.search(_LENGTH, text):
            what = f"length {m['got']} instead of the signed {m['want']}"
        elif m := re.search(_HASH, text):
            # python-tuf does not say which algorithm failed: the one whose signed value it expected
            algo = next((f"{_shown(a)} " for a, v in (signed or {}).items() if v == m["want"]), "")
            got, want = _abbreviated(m["got"], m["want"])
            what = f"{algo}hash {got} instead of the signed {want}"
        elif m := re.search(_UNSUPPORTED, text):
            return TrustError(f"{subject} is signed with hash algorithm {_shown(m['algo'])}, "
                              "which python-tuf cannot compute: refused")
        else:
            what = "hash mismatch"
        return TrustError(f"{subject} failed verification: {what} (tampered or corrupted)")
    if isinstance(exc, DeserializationError):
        return TrustError(f"{subject} is not valid TUF metadata: {text}")
    return TrustError(f"{subject} refused: {text}")


def _metadata_subject(url: str | None) -> str:
    """'snapshot metadata v3' from '.../metadata/3.snapshot.json'."""
    if not url:
        return "repository metadata"
    name = url.rstrip("/").rsplit("/", 1)[-1]
    m = re.fullmatch(r"(?:(?P<version>\d+)\.)?(?P<role>.+)\.json", name)
    if not m:
        return name
    version = f" v{m['version']}" if m["version"] else ""
    return f"{unquote(m['role'])} metadata{version}"


def _expiry(updater: Updater | None, role: str) -> str | None:
    """Expiry of ``role`` as ngclient last loaded it (it keeps an expired timestamp or snapshot
    loaded for rollback protection), or None. Reads ngclient's internal state defensively: the
    date only improves the message."""
    trusted: Any = getattr(updater, "_trusted_set", None)
    try:
        expires = trusted[role].expires
    except (TypeError, KeyError, AttributeError):
        return None
    return _iso(expires) if isinstance(expires, datetime) else None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# -- hashes -----------------------------------------------------------------------------------

SHA256 = "sha256"
"""The one algorithm of pinnacle's own formats (channel index, archive records, manifests)."""

BROKEN_HASHES = frozenset({"md5", "sha1", "md5-sha1"})
"""Algorithms (hashlib's names) with practical collisions: python-tuf computes them, but a target
listed with nothing stronger is refused (a colliding file would pass its signature)."""


def _signed_hashes(hashes: Mapping[str, str], path: str) -> dict[str, str]:
    """The signed ``hashes`` of ``path`` keyed by hashlib's name of each algorithm (``SHA-256`` and
    ``sha2-256`` are sha256), once the client can rely on them: every algorithm listed is one
    python-tuf computes (it verifies them all, so any other fails every download, after it), every
    value a lowercase hex digest (nothing else can ever match; and the first one becomes part of the
    download URL), and at least one algorithm is not in ``BROKEN_HASHES``. ``TrustError`` otherwise."""
    named: dict[str, str] = {}
    for algo, value in hashes.items():
        try:
            TargetFile.from_data(path, b"", [algo])  # python-tuf's own rule for what it can compute
        except (ValueError, TypeError):
            raise TrustError(
                f"{path} is signed with hash algorithm {_shown(algo)}, which python-tuf cannot compute: refused"
            ) from None
        if not re.fullmatch(r"[0-9a-f]{1,1024}", value):  # python-tuf compares with a lowercase hex digest
            raise TrustError(f"{path} is signed with a {_shown(algo)} value that is not a hex digest "
                             f"({_shown(value[:80])}): refused")
        named[_hash_name(algo)] = value
    if named and not set(named) - BROKEN_HASHES:
        listed = ", ".join(_shown(a) for a in hashes)
        raise TrustError(f"{path} is signed only with {listed}, hash algorithms with practical collisions: refused")
    return named


def _hash_name(algo: str) -> str:
    """hashlib's canonical name of ``algo`` (python-tuf's own ``blake2b-256`` stays as it is)."""
    try:
        return hashlib.new(algo).name
    except (ValueError, TypeError):
        return algo


def _check_sha256(path: Path, ref: TargetRef, where: str) -> None:
    """Refuse the verified download ``path`` unless its sha256 is the one ``ref`` names."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, SHA256).hexdigest()
    except OSError as exc:
        raise StateError(f"cannot read the cached {ref.path}: {_os_reason(exc)}") from exc
    if digest != ref.sha256:
        got, want = _abbreviated(digest, ref.sha256)
        raise TrustError(
            f"{where}: {ref.path} matches its signed hashes but its sha256 is {got}, not the referenced {want}: "
            "refused (the index and the signed targets disagree)"
        )


def _abbreviated(a: str, b: str, keep: int = 16) -> tuple[str, str]:
    """Two digests for a message: cut to ``keep`` characters, unless that would hide how they differ."""
    if a[:keep] != b[:keep]:
        a, b = (x if len(x) <= keep else f"{x[:keep]}..." for x in (a, b))
    return _shown(a), _shown(b)


def _shown(text: str) -> str:
    """``text`` from signed metadata as it may appear in a one-line message: as is when it is a plain
    name or hex digest, else quoted with escapes (no control character reaches a terminal)."""
    return text if re.fullmatch(r"[\w.+-]{1,200}", text, re.ASCII) else ascii(text)


# -- small helpers ----------------------------------------------------------------------------


def _base_url(repo_url: str) -> str:
    """A base URL (the repository's, or its metadata or targets directory's) with a trailing slash;
    a plain directory becomes a ``file://`` URL."""
    url = repo_url
    try:
        path = local_path(repo_url)
    except tuf_exc.DownloadError as exc:
        raise ConfigError(f"bad repository URL: {exc}") from exc
    if path is not None and not repo_url.lower().startswith("file:"):
        url = path.resolve().as_uri()
    return url if url.endswith("/") else f"{url}/"


def cache_name(target_path: str) -> str:
    """A flat, reversible cache file name for a target path (the scheme ngclient uses)."""
    return quote(target_path, safe="")


def _is_index(target: str) -> bool:
    """A channel index target, JSON or compressed (kept in the cache: every check reads one)."""
    channel = target.partition("/")[0]
    return target in (index_path(channel), compressed_index_path(channel))


def _decompress_bounded(path: Path, name: str, limit: int, what: str = "manifest") -> bytes:
    """zstd-decompress ``path`` (the ``what`` target ``name``), refusing more than ``limit`` bytes of output."""
    out = bytearray()
    try:
        dctx = zstandard.ZstdDecompressor()
        with open(path, "rb") as f, dctx.stream_reader(f, read_across_frames=True) as reader:
            while chunk := reader.read(1 << 20):
                out += chunk
                if len(out) > limit:
                    raise RepositoryError(
                        f"{what} {name} decompresses to more than {limit // (1 << 20)} MiB: refused"
                    )
    except zstandard.ZstdError as exc:
        raise RepositoryError(f"{what} {name} is not valid zstd data: {exc}") from exc
    except OSError as exc:
        raise StateError(f"cannot read the cached {name}: {_os_reason(exc)}") from exc
    return bytes(out)
