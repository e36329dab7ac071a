"""The channel index and release manifest: the signed wire formats a client reads.

Pure: bytes in, validated objects out (and back). The publisher (``repo_tools``) writes these
formats through the same code, so there is one definition of each.

Target paths inside a channel (all TUF targets of the channel's delegated role)::

    <channel>/index.json                                   the channel index (canonical JSON)
    <channel>/index.json.zst                               the same bytes, zstd (one frame, size declared)
    <channel>/<platform>/<version>/full.tar.zst            the full artifact (zstd of the canonical tar)
    <channel>/<platform>/<version>/manifest.json.zst       the file manifest (zstd of JSON)
    <channel>/<platform>/<version>/from-<v>.pdelta         deltas from earlier releases
    <channel>/<platform>/<version>/release.json            the archive record (only once archived)

The index lists the channel's *live* releases: the newest few per platform, and every yanked one.
Older releases are archived: their targets and an archive record (the release's index entry)
move to hashed-bin roles the channel delegates, so a client reaches any old release by its path
while what it downloads per update does not grow with the channel's history.

The publisher writes the index twice, as JSON and zstd-compressed, both signed targets of the
channel role, every time it writes it. A client fetches ``index.json.zst`` when the role lists it
(less than half the bytes), decompresses it within a bound and checks the result against the signed
length and hashes of ``index.json`` before parsing; it reads ``index.json`` from a repository
whose role lists no ``.zst``. Clients released before the compressed index read only
``index.json``, which is why the publisher keeps writing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from packaging.version import InvalidVersion, Version

from .boundedjson import FormatError as FormatError
from .boundedjson import load_object
from .rollout import ABTest, Rollout, ScheduleError, Yank

INDEX_FORMAT = 1
MANIFEST_FORMAT = 1
CHANNELS = ("stable", "beta", "alpha")
PLATFORM_ANY = "any"
_PLATFORM_RE = re.compile(r"^(any|[a-z0-9]+-[a-z0-9_]+)$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHANNEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # fullmatch: "$" would let a final newline through
RESERVED_CHANNELS = ("root", "targets", "snapshot", "timestamp")
"""TUF's top-level role names: a channel is a delegated role whose metadata file is ``N.<channel>.json``
next to theirs, so a channel of that name would be a second role with the same file."""
ARCHIVE_MARK = "-archive"
"""Channel archive bins are roles named ``<channel>-archive-<bin>`` (repo_tools.core.window): a channel
name holding this could be taken for another channel's bin."""


class UpdateType(StrEnum):
    """What kind of change a release is, and what that means for installing it.

    The one source of the update types: the client's policy, the fleet controls, config validation
    and defaults, and both command lines read the members and their properties (``_TYPE_POLICY``)
    rather than spelling type names. A new type is one member here and one row there.
    """

    PATCH = "patch"
    MINOR = "minor"
    MAJOR = "major"
    SECURITY = "security"
    HOTFIX = "hotfix"

    @property
    def urgent(self) -> bool:
        """Installs unattended whatever ``auto_install`` says; a jump containing it is urgent too."""
        return _TYPE_POLICY[self].urgent

    @property
    def auto_installs(self) -> bool:
        """With ``auto_install`` on, a jump made only of such releases installs unattended."""
        return _TYPE_POLICY[self].auto_installs

    @property
    def skips_ramp(self) -> bool:
        """Skips a staged rollout unless the release says ``"ramp": true`` (the default of a
        client's ``skip_ramp_types``, which may choose otherwise)."""
        return _TYPE_POLICY[self].skips_ramp

    @property
    def needs_confirmation(self) -> bool:
        """A gate: nothing at or past it is chosen for an installed client without an explicit
        confirmation, and a jump across it is never automatic."""
        return _TYPE_POLICY[self].needs_confirmation


@dataclass(frozen=True)
class _TypePolicy:
    urgent: bool = False
    auto_installs: bool = False
    skips_ramp: bool = False
    needs_confirmation: bool = False


_TYPE_POLICY: Mapping[UpdateType, _TypePolicy] = {
    UpdateType.PATCH: _TypePolicy(auto_installs=True),
    UpdateType.MINOR: _TypePolicy(),
    UpdateType.MAJOR: _TypePolicy(needs_confirmation=True),
    # a fix that must not wait: for a person, for a rollout's ramp, for auto_install
    UpdateType.SECURITY: _TypePolicy(urgent=True, auto_installs=True, skips_ramp=True),
    UpdateType.HOTFIX: _TypePolicy(urgent=True, auto_installs=True, skips_ramp=True),
}

DEFAULT_SKIP_RAMP_TYPES: tuple[UpdateType, ...] = tuple(t for t in UpdateType if t.skips_ramp)
"""The types that skip staged rollouts by default, in declaration order (config.toml writes them so)."""


def parse_version(text: str) -> Version:
    """PEP 440 version, or ``FormatError``."""
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise FormatError(f"not a PEP 440 version: {text!r}") from exc


def check_platform(tag: str) -> str:
    if not _PLATFORM_RE.match(tag):
        raise FormatError(f"bad platform tag {tag!r} (expected e.g. linux-x86_64, macos-arm64 or any)")
    return tag


def check_channel(name: str) -> str:
    """The one channel-name rule (publisher, client config, indexes, reports): 1-64 characters of
    lowercase letters, digits, '.', '_' and '-', starting with a letter or digit (one spelling per
    channel on every file system and in every URL); not a TUF top-level role name; no ``-archive``."""
    if not isinstance(name, str) or not _CHANNEL_RE.fullmatch(name):
        raise FormatError(f"bad channel name {str(name)[:80]!r} (1-64 lowercase letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit)")
    if name in RESERVED_CHANNELS or ARCHIVE_MARK in name:
        raise FormatError(f"bad channel name {name!r}: reserved ({', '.join(RESERVED_CHANNELS)} are TUF roles; "
                          f"'{ARCHIVE_MARK}' marks archive bins)")
    return name


def release_dir(channel: str, platform: str, version: str) -> str:
    return f"{channel}/{platform}/{version}"


def index_path(channel: str) -> str:
    return f"{channel}/index.json"


def compressed_index_path(channel: str) -> str:
    """Target path of the channel index compressed (one zstd frame of exactly ``index_path``'s bytes),
    which clients fetch instead of the JSON when the channel role lists it."""
    return f"{index_path(channel)}.zst"


def record_path(channel: str, platform: str, version: str) -> str:
    """Target path of an archived release's record."""
    return f"{release_dir(channel, platform, version)}/release.json"


@dataclass(frozen=True)
class TargetRef:
    """A TUF target the release points at. The authoritative length and hash are in signed TUF metadata."""

    path: str
    length: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "length": self.length, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TargetRef:
        d = _mapping(data, where)
        return cls(
            path=_str(d, "path", where),
            length=_int(d, "length", where),
            sha256=_sha256(d, "sha256", where),
        )


@dataclass(frozen=True)
class Digest:
    """Length and sha256 of a byte stream (here: the canonical uncompressed archive)."""

    length: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"length": self.length, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Digest:
        d = _mapping(data, where)
        return cls(length=_int(d, "length", where), sha256=_sha256(d, "sha256", where))


@dataclass(frozen=True)
class DeltaRef:
    """A signed delta target that rebuilds this release from the release ``base`` (whose canonical
    content digest is ``base_content``, so a client can tell it holds exactly that base)."""

    base: str
    base_content: str
    target: TargetRef

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.base, "from_content": self.base_content, **self.target.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> DeltaRef:
        d = _mapping(data, where)
        base = _str(d, "from", where)
        parse_version(base)
        return cls(base=base, base_content=_sha256(d, "from_content", where), target=TargetRef.from_dict(d, where))


_RELEASE_KEYS = {
    "version", "platform", "type", "published", "notes", "content", "full", "manifest",
    "entry_point", "promoted_from", "deltas", "rollout", "yanked", "min_version", "ramp", "ab_testing",
    "migration",
}


@dataclass(frozen=True)
class Release:
    """One release of one platform in one channel.

    ``extra`` keeps fields this code does not know (added by later formats) so that a publisher
    round-trips them untouched. Fleet controls (``formats.rollout``): ``rollout`` (schedule and
    state), ``yanked`` (withdrawn, with a reason), ``min_version`` (clients below it must update),
    ``ramp`` (the publisher's override of the type's default: False skips the rollout, True keeps
    security/hotfix in it), ``ab_testing`` (a fixed test group).
    """

    version: str
    platform: str
    type: UpdateType
    published: str
    content: Digest
    full: TargetRef
    manifest: TargetRef
    notes: str = ""
    entry_point: str | None = None
    promoted_from: str | None = None
    deltas: tuple[DeltaRef, ...] = ()
    rollout: Rollout | None = None
    yanked: Yank | None = None
    min_version: str | None = None
    ramp: bool | None = None
    ab_testing: ABTest | None = None
    migration: str | None = None  # a file of the release the client runs after the swap (data migrations)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def parsed_version(self) -> Version:
        return parse_version(self.version)

    def targets(self) -> list[TargetRef]:
        return [self.full, self.manifest, *(d.target for d in self.deltas)]

    def delta_from(self, base_version: str) -> DeltaRef | None:
        wanted = parse_version(base_version)
        return next((d for d in self.deltas if parse_version(d.base) == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            version=self.version,
            platform=self.platform,
            type=self.type.value,
            published=self.published,
            notes=self.notes,
            content=self.content.to_dict(),
            full=self.full.to_dict(),
            manifest=self.manifest.to_dict(),
        )
        if self.entry_point is not None:
            out["entry_point"] = self.entry_point
        if self.migration is not None:
            out["migration"] = self.migration
        if self.promoted_from is not None:
            out["promoted_from"] = self.promoted_from
        if self.deltas:
            out["deltas"] = [d.to_dict() for d in self.deltas]
        for key, value in (("rollout", self.rollout), ("yanked", self.yanked), ("ab_testing", self.ab_testing)):
            if value is not None:
                out[key] = value.to_dict()
        if self.min_version is not None:
            out["min_version"] = self.min_version
        if self.ramp is not None:
            out["ramp"] = self.ramp
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Release:
        d = _mapping(data, where)
        version = _str(d, "version", where)
        parse_version(version)
        where = f"{where} ({version})"
        try:
            rtype = UpdateType(_str(d, "type", where))
        except ValueError as exc:
            raise FormatError(f"{where}: unknown update type {d.get('type')!r}") from exc
        entry = d.get("entry_point")
        migration = d.get("migration")
        if migration is not None and not _relative_path(migration):
            raise FormatError(f"{where}: 'migration' must be a relative path inside the release")
        promoted = d.get("promoted_from")
        raw_deltas = d.get("deltas", [])
        if not isinstance(raw_deltas, list):
            raise FormatError(f"{where}: 'deltas' must be a list")
        min_version = d.get("min_version")
        if min_version is not None:
            if not isinstance(min_version, str):
                raise FormatError(f"{where}: 'min_version' must be a version string")
            parse_version(min_version)
        ramp = d.get("ramp")
        if ramp is not None and not isinstance(ramp, bool):
            raise FormatError(f"{where}: 'ramp' must be true or false")
        try:
            # Lenient: fields a newer publisher adds inside these must not lock older clients out.
            rollout = Rollout.from_dict(d["rollout"], f"{where}.rollout", strict=False) if "rollout" in d else None
            yanked = Yank.from_dict(d["yanked"], f"{where}.yanked") if "yanked" in d else None
            ab = ABTest.from_dict(d["ab_testing"], f"{where}.ab_testing", strict=False) if "ab_testing" in d else None
        except ScheduleError as exc:
            raise FormatError(str(exc)) from exc
        return cls(
            version=version,
            platform=check_platform(_str(d, "platform", where)),
            type=rtype,
            published=_str(d, "published", where),
            notes=str(d.get("notes", "")),
            content=Digest.from_dict(d.get("content"), f"{where}.content"),
            full=TargetRef.from_dict(d.get("full"), f"{where}.full"),
            manifest=TargetRef.from_dict(d.get("manifest"), f"{where}.manifest"),
            entry_point=entry if isinstance(entry, str) else None,
            promoted_from=promoted if isinstance(promoted, str) else None,
            deltas=tuple(DeltaRef.from_dict(x, f"{where}.deltas[{i}]") for i, x in enumerate(raw_deltas)),
            rollout=rollout,
            yanked=yanked,
            min_version=min_version,
            ramp=ramp,
            ab_testing=ab,
            migration=migration,
            extra={k: v for k, v in d.items() if k not in _RELEASE_KEYS},
        )


FEEDBACK_URL_MAX = 2048
FEEDBACK_KEY_MAX = 256
_INGEST_KEY_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: it travels in an HTTP header


@dataclass(frozen=True)
class Feedback:
    """Where a channel's clients send outcome reports (``client.reporting``), signed with the index.

    ``ingest_key`` is public like the rest of the index: it only narrows who can report to the
    collector, it protects nothing. Unknown keys are kept (``extra``) for newer publishers."""

    collector_url: str
    ingest_key: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = feedback_url_problem(self.collector_url)
        if problem:
            raise FormatError(f"channel index: feedback collector_url {problem}")
        key = self.ingest_key
        if not isinstance(key, str) or len(key) > FEEDBACK_KEY_MAX or (key and not _INGEST_KEY_RE.match(key)):
            raise FormatError(f"channel index: feedback ingest_key must be at most {FEEDBACK_KEY_MAX} "
                              "visible ASCII characters")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.extra, "collector_url": self.collector_url}
        if self.ingest_key:
            out["ingest_key"] = self.ingest_key
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Feedback:
        d = _mapping(data, "channel index: feedback")
        return cls(d.get("collector_url", ""), d.get("ingest_key", ""),  # types checked in __post_init__
                   extra={k: v for k, v in d.items() if k not in ("collector_url", "ingest_key")})


def feedback_url_problem(url: Any) -> str:
    """Why ``url`` cannot be a collector URL ("" when it can): http(s) with a host, at most
    ``FEEDBACK_URL_MAX`` characters, no white space or control character, no query or fragment."""
    if not isinstance(url, str) or not url:
        return "must be a non-empty string"
    if len(url) > FEEDBACK_URL_MAX:
        return f"is longer than {FEEDBACK_URL_MAX} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds white space or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number in range
    except ValueError:
        return f"is not a URL: {url[:80]!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host, not {url[:80]!r}"
    if parts.query or parts.fragment:
        return "must not have a query or fragment (reports go to <url>/v1/reports)"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password (use an ingest key)"
    return ""


@dataclass(frozen=True)
class ChannelIndex:
    """All releases of a channel, for every platform, oldest first."""

    channel: str
    releases: tuple[Release, ...] = ()
    updated: str = ""
    feedback: Feedback | None = None  # optional: older indexes and clients have none / ignore it

    def for_platform(self, platform: str) -> list[Release]:
        """Releases usable on ``platform`` (its own and ``any``), oldest first."""
        found = [r for r in self.releases if r.platform in (platform, PLATFORM_ANY)]
        return sorted(found, key=lambda r: r.parsed_version)

    def latest(self, platform: str) -> Release | None:
        found = self.for_platform(platform)
        return found[-1] if found else None

    def find(self, version: str, platform: str) -> Release | None:
        wanted = parse_version(version)
        for r in self.for_platform(platform):
            if r.parsed_version == wanted:
                return r
        return None

    def ensure_newer(self, platform: str, version: str) -> None:
        """Refuse a version that is not newer than every existing one on ``platform``:
        versions are immutable and strictly increasing per channel and platform."""
        wanted = parse_version(version)
        same = [r.parsed_version for r in self.releases if r.platform == platform]
        if wanted in same:
            raise FormatError(
                f"{self.channel}: version {version} for {platform} is already published (versions are immutable)"
            )
        newest = max(same, default=None)
        if newest is not None and wanted < newest:
            raise FormatError(f"{self.channel}: version {version} for {platform} is older than the published {newest}")

    def with_release(self, release: Release, updated: str) -> ChannelIndex:
        """A new index with ``release`` appended (see ``ensure_newer``)."""
        self.ensure_newer(release.platform, release.version)
        return replace(self, releases=(*self.releases, release), updated=updated)

    def with_replaced(self, changed: Mapping[int, Release], updated: str) -> ChannelIndex:
        """A new index with the releases at the given positions replaced (same version and platform:
        only mutable fleet fields such as ``rollout`` and ``yanked`` may change)."""
        releases = list(self.releases)
        for i, new in changed.items():
            old = releases[i]
            if (new.version, new.platform, new.content) != (old.version, old.platform, old.content):
                raise FormatError(f"{self.channel}: release {old.version} ({old.platform}) is immutable")
            releases[i] = new
        return replace(self, releases=tuple(releases), updated=updated)

    def to_bytes(self) -> bytes:
        doc = {
            "format": INDEX_FORMAT,
            "channel": self.channel,
            "updated": self.updated,
            "releases": [r.to_dict() for r in self.releases],
        }
        if self.feedback is not None:
            doc["feedback"] = self.feedback.to_dict()
        return canonical_json(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelIndex:
        doc = load_object(data, "channel index")
        fmt = doc.get("format")
        if fmt != INDEX_FORMAT:
            raise FormatError(f"channel index: unsupported format {fmt!r} (this client reads {INDEX_FORMAT})")
        channel = check_channel(_str(doc, "channel", "channel index"))
        raw = doc.get("releases")
        if not isinstance(raw, list):
            raise FormatError("channel index: 'releases' must be a list")
        releases = tuple(Release.from_dict(r, f"release #{i}") for i, r in enumerate(raw))
        feedback = Feedback.from_dict(doc["feedback"]) if doc.get("feedback") is not None else None
        return cls(channel=channel, releases=releases, updated=str(doc.get("updated", "")), feedback=feedback)


def record_to_bytes(channel: str, release: Release) -> bytes:
    """The archive record of ``release``: its index entry, bound to its channel."""
    return canonical_json({"format": INDEX_FORMAT, "channel": channel, "release": release.to_dict()})


def record_from_bytes(data: bytes, channel: str, platform: str, version: str) -> Release:
    """Parse an archive record and check it is the one its path promised."""
    doc = load_object(data, "archive record")
    if doc.get("format") != INDEX_FORMAT:
        raise FormatError(f"archive record: unsupported format {doc.get('format')!r} "
                          f"(this client reads {INDEX_FORMAT})")
    release = Release.from_dict(doc.get("release"), "archive record")
    if (doc.get("channel"), release.platform, release.parsed_version) != (channel, platform, parse_version(version)):
        raise FormatError(
            f"archive record names {doc.get('channel')!r} {release.version} ({release.platform}), "
            f"not {channel} {version} ({platform})"
        )
    return release


class EntryType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class ManifestEntry:
    """One path of a release. Files carry size and sha256; symlinks their (relative) target."""

    path: str
    type: EntryType
    mode: int
    size: int = 0
    sha256: str = ""
    link: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.type.value, "mode": self.mode}
        if self.type is EntryType.FILE:
            out.update(size=self.size, sha256=self.sha256)
        elif self.type is EntryType.SYMLINK:
            out["link"] = self.link
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ManifestEntry:
        d = _mapping(data, where)
        path = _str(d, "path", where)
        try:
            etype = EntryType(_str(d, "type", where))
        except ValueError as exc:
            raise FormatError(f"{where}: unknown entry type {d.get('type')!r}") from exc
        mode = _int(d, "mode", where)
        if etype is EntryType.FILE:
            return cls(path, etype, mode, size=_int(d, "size", where), sha256=_sha256(d, "sha256", where))
        if etype is EntryType.SYMLINK:
            return cls(path, etype, mode, link=_str(d, "link", where))
        return cls(path, etype, mode)


@dataclass(frozen=True)
class Manifest:
    """Every path of a release with its mode, size and sha256, sorted by path."""

    version: str
    content: Digest
    entries: tuple[ManifestEntry, ...]

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.entries}

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": MANIFEST_FORMAT,
                "version": self.version,
                "content": self.content.to_dict(),
                "entries": [e.to_dict() for e in self.entries],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        doc = load_object(data, "manifest")
        if doc.get("format") != MANIFEST_FORMAT:
            raise FormatError(f"manifest: unsupported format {doc.get('format')!r}")
        raw = doc.get("entries")
        if not isinstance(raw, list):
            raise FormatError("manifest: 'entries' must be a list")
        entries = tuple(ManifestEntry.from_dict(e, f"manifest entry #{i}") for i, e in enumerate(raw))
        return cls(
            version=_str(doc, "version", "manifest"),
            content=Digest.from_dict(doc.get("content"), "manifest.content"),
            entries=entries,
        )


def _relative_path(value: Any) -> bool:
    """A path inside a release: relative, no ``.``/``..``/empty part, printable, at most 255 bytes."""
    if not isinstance(value, str) or not value or len(value.encode()) > 255 or not value.isprintable():
        return False
    return not value.startswith("/") and all(p not in ("", ".", "..") for p in value.split("/"))


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def newest(releases: Iterable[Release]) -> Release | None:
    return max(releases, key=lambda r: r.parsed_version, default=None)


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise FormatError(f"{where}: expected an object")
    return data


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where}: '{key}' must be a non-empty string")
    return value


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"{where}: '{key}' must be a non-negative integer")
    return value


def _sha256(d: Mapping[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise FormatError(f"{where}: '{key}' must be a lowercase hex sha256")
    return value
