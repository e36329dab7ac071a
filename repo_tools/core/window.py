"""Bounded channel metadata: which releases stay live, and where archived ones go.

Pure. A channel role and its index list only the *live* releases: per platform the newest
``window`` by version, plus every yanked one (clients must keep seeing a yank). Older releases
are *archived*: their targets, and a record of their index entry, move into hashed bins
(TUF's succinct delegation, TAP 15) that the channel role delegates with its own keys. A client
updating downloads the channel role and index, whose size is bounded by the window; it fetches
one bin only when it asks for an old release by version.

The bins number ``2**bits``, fixed per repository: each is listed in the snapshot, so their
count is a constant cost of every update, while their size grows with history only for the
rare client that looks into the archive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from tuf.api.metadata import SuccinctRoles

from pinnacle_updates.formats.index import Release

DEFAULT_LIVE_WINDOW = 16
"""Releases per platform a channel index keeps: enough for every delta base and chain."""
DEFAULT_ARCHIVE_BITS = 4
"""16 bins per channel: about 0.7 KB of snapshot, and bins of ~170 B per archived target."""
MAX_ARCHIVE_BITS = 10


def archive_prefix(channel: str) -> str:
    return f"{channel}-archive"


def channel_of_bin(role: str, channels: Iterable[str]) -> str | None:
    """The channel whose archive bin ``role`` is, or None."""
    return next((c for c in channels if role.startswith(f"{archive_prefix(c)}-")), None)


def archive_roles(channel: str, keyids: Sequence[str], threshold: int, bits: int) -> SuccinctRoles:
    """The succinct delegation from ``channel`` to its archive bins, signed by the channel's keys."""
    return SuccinctRoles(list(keyids), threshold, bits, archive_prefix(channel))


def split_live(releases: Iterable[Release], window: int) -> tuple[list[Release], list[Release]]:
    """``(live, archived)``, each in the given order: live are the newest ``window`` releases of
    every platform and every yanked release."""
    by_platform: dict[str, list[Release]] = defaultdict(list)
    ordered = list(releases)
    for release in ordered:
        by_platform[release.platform].append(release)
    keep: set[tuple[str, str]] = set()
    for platform, group in by_platform.items():
        newest = sorted(group, key=lambda r: r.parsed_version, reverse=True)[:window]
        keep.update((platform, r.version) for r in newest)
    live = [r for r in ordered if (r.platform, r.version) in keep or r.yanked is not None]
    archived = [r for r in ordered if not ((r.platform, r.version) in keep or r.yanked is not None)]
    return live, archived


__all__ = ["DEFAULT_ARCHIVE_BITS", "DEFAULT_LIVE_WINDOW", "MAX_ARCHIVE_BITS", "archive_prefix", "archive_roles",
           "channel_of_bin", "split_live"]
