"""The canonical archive: its byte layout and the rules for safe paths, modes and links.

The canonical archive is a POSIX pax tar of a release tree whose bytes depend only on the
manifest and the file contents (see docs/ARCHITECTURE.md, "Canonical archive"). Everything that
defines it lives here, in the neutral layer, so that the publisher (``repo_tools.artifact``) writes
it through the same code the client uses to rebuild it from an installed slot, and so that the
rules for safe paths and links are one definition shared by the publisher's refusal of unsafe
input and the client's refusal of unsafe archives. Extraction into a slot and verification of a
slot are the client's (``client.extract``).

All file access below a root goes through directory file descriptors with ``O_NOFOLLOW``
(:func:`open_beneath`), so a symlink planted in a tree can never redirect a read or a write.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import sys
import tarfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence

import zstandard

from .index import PLATFORM_ANY, Digest, EntryType, FormatError, ManifestEntry

CHUNK_SIZE = 1 << 20
"""Read/write granularity for every streamed copy (bounded memory)."""

DIR_MODE = 0o755
EXEC_MODE = 0o755
FILE_MODE = 0o644
LINK_MODE = 0o777
ALLOWED_MODES = {
    EntryType.DIR: {DIR_MODE},
    EntryType.FILE: {FILE_MODE, EXEC_MODE},
    EntryType.SYMLINK: {LINK_MODE},
}
MAX_LINK_HOPS = 40
"""Symlinks followed while resolving one link before it counts as a loop (Linux's limit)."""

NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(FormatError):
    """An archive or tree that breaks the canonical format's rules (one line, for a person).

    The client turns it into its ``InstallError`` at the call site; the publisher into its own."""


# -- paths, modes, links: the rules shared by publisher and client ---------------------------------


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""Characters no release name may hold on any platform, because they change how the text around
them is shown: Unicode's Cc category (C0 and C1 controls, DEL: a terminal acts on ESC sequences),
the line and paragraph separators (a second line), and the bidirectional formatting characters
(``U+202E`` shows ``exe.txt`` for ``txt.exe``; also the marks ``U+200E``, ``U+200F``, ``U+061C``,
invisible and never needed in a file name)."""


def show_path(path: str) -> str:
    """``path`` printable on one line whatever it holds: undecodable bytes (surrogate escapes) shown
    as ``\\xNN``, control, line-breaking and bidirectional formatting characters as ``\\xNN`` or
    ``\\uNNNN``, so a name from an archive or a repository never drives the terminal it is shown on."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


MAX_NAME_BYTES = 255
"""Longest path component, in UTF-8 bytes: NAME_MAX of Linux file systems (macOS and Windows allow
255 UTF-16 units, never fewer than 255 bytes of UTF-8)."""
MAX_PATH_BYTES = 4096
"""Longest release path, in UTF-8 bytes: Linux's PATH_MAX (the install directory comes on top, but
every file access is relative to a directory descriptor, so only the release's own part counts)."""


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe release path on any platform (relative, '/'-separated, UTF-8, no
    control or bidirectional formatting character, within POSIX name and path lengths), or ``None``.
    Rules that only some platforms need are :func:`platform_problems`."""
    if not path:
        return "empty path"
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if "\x00" in path:
        return "name contains a NUL byte"
    if "\\" in path:
        return "name contains a backslash"
    bad = _UNPRINTABLE.search(path)
    if bad is not None:
        return f"name contains the control or bidirectional formatting character U+{ord(bad[0]):04X}"
    if path.startswith("/"):
        return "absolute path"
    if size > MAX_PATH_BYTES:
        return f"path is {size} bytes of UTF-8, more than {MAX_PATH_BYTES}"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path segment {part!r} is not allowed"
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return f"a path segment is {len(part.encode('utf-8'))} bytes of UTF-8, more than {MAX_NAME_BYTES}"
    return None


# -- names per target platform ---------------------------------------------------------------------

POSIX, MACOS, WINDOWS = "posix", "macos", "windows"
"""Rule families. Every platform gets :func:`path_problem`; macOS adds names equal once normalised
and case-folded (APFS and HFS+ are normalisation- and, by default, case-insensitive); Windows adds
reserved device names, its forbidden characters, trailing dots and spaces, names equal once
case-folded and a path length limit."""
_FAMILY_OF_OS = {"macos": MACOS, "darwin": MACOS, "ios": MACOS, "windows": WINDOWS, "win": WINDOWS,
                 "win32": WINDOWS, "win64": WINDOWS}
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"123456789", "\u00b9", "\u00b2", "\u00b3")]
)
"""Device names Windows opens instead of a file, whatever the extension (``NUL.txt``) or case."""
WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
MAX_WINDOWS_PATH = 260
"""Longest release path for Windows, in UTF-16 units: MAX_PATH, for applications that do not opt in
to long paths (the install directory comes on top: keep it short there)."""


def rule_families(platform: str | None) -> frozenset[str]:
    """The rule families for a platform tag (``linux-x86_64``, ``macos-arm64``, ``windows-x86_64``;
    ``any``: every family, safe everywhere), or for this machine when ``platform`` is None (what the
    client checks before it writes a tree here). Unknown operating systems get the POSIX rules."""
    if platform is None:
        host = {"win32": WINDOWS, "darwin": MACOS}.get(sys.platform, POSIX)
        return frozenset({POSIX, host})
    if platform == PLATFORM_ANY:
        return frozenset({POSIX, MACOS, WINDOWS})
    return frozenset({POSIX, _FAMILY_OF_OS.get(platform.partition("-")[0], POSIX)})


def _windows_name_problem(path: str) -> str | None:
    for part in path.split("/"):
        bad = sorted(WINDOWS_FORBIDDEN.intersection(part))
        if bad:
            return f"name contains {''.join(bad)!r}, which Windows forbids"
        if part.endswith((".", " ")):
            return "a path segment ends with a dot or a space, which Windows drops"
        if part.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED:
            return f"'{show_path(part)}' is a reserved device name on Windows"
    units = len(path.encode("utf-16-le", "surrogatepass")) // 2
    if units > MAX_WINDOWS_PATH:
        return f"path is {units} characters, more than Windows' {MAX_WINDOWS_PATH}"
    return None


def _collision_keys(path: str, families: frozenset[str]) -> list[tuple[str, str]]:
    """``(key, why)`` pairs: two paths with an equal key are one file on some platform."""
    keys = []
    if MACOS in families:  # canonical caseless matching (Unicode 3.13): normalisation and case at once
        nfd = unicodedata.normalize("NFD", path)
        keys.append((unicodedata.normalize("NFD", nfd.casefold()), "normalisation or case folding (macOS)"))
    if WINDOWS in families:
        keys.append((path.casefold(), "case folding (Windows)"))
    return keys


def platform_problems(paths: Iterable[str], platform: str | None) -> list[str]:
    """Every reason, as ``"path: reason"`` (shown escaped), why ``paths`` cannot be written as one
    tree on ``platform`` (a tag, ``any``, or None for this machine) beyond :func:`path_problem`:
    Windows names and lengths, and two paths that would be one file there."""
    families = rule_families(platform)
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        bad = _windows_name_problem(path) if WINDOWS in families else None
        if bad:
            problems.append(f"{show_path(path)}: {bad}")
        for key in _collision_keys(path, families):
            other = seen.setdefault(key, path)
            if other != path:
                shown, first = show_path(path), show_path(other)
                same_look = unicodedata.normalize("NFC", shown) == unicodedata.normalize("NFC", first)
                alike = f" ({path!a} and {other!a})" if same_look else ""  # which code points differ
                problems.append(f"{shown}: same file as {first} under {key[1]}{alike}")
                break
    return problems


def _link_text_problem(target: str) -> str | None:
    if not target:
        return "empty symlink target"
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return f"symlink target {show_path(target)!r} is not valid UTF-8"
    if "\x00" in target or "\\" in target:
        return f"symlink target {show_path(target)!r} contains a NUL or a backslash"
    if _UNPRINTABLE.search(target):
        return f"symlink target {show_path(target)!r} contains a control or bidirectional formatting character"
    return None


def normalise_mode(st_mode: int) -> int:
    """The canonical mode for a file system object: 0755 dirs and executables, 0644 files, 0777 links."""
    if stat.S_ISLNK(st_mode):
        return LINK_MODE
    if stat.S_ISDIR(st_mode) or st_mode & 0o111:
        return EXEC_MODE
    return FILE_MODE


def _link_escapes(link_path: str, target: str, links: dict[str, str]) -> str | None:
    """Resolve ``target`` (of the symlink at ``link_path``) inside the tree, following the tree's own
    symlinks like the kernel would; return why it leaves the tree, or ``None`` if it stays inside.

    Resolution is virtual (by name, against ``links``), so it does not depend on where the tree sits
    on disk: ``../<tree name>/x`` escapes even though it would land back inside on the publisher.
    """
    where = link_path.split("/")[:-1]
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return f"symlink points outside the tree (-> {show_path(target)})"
            where.pop()
            continue
        candidate = "/".join([*where, part])
        if candidate in links:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return f"symlink loop (-> {show_path(target)})"
            inner = links[candidate]
            if inner.startswith("/"):
                return f"symlink points outside the tree via {show_path(candidate)} (-> {show_path(inner)})"
            pending = inner.split("/") + pending
            continue
        where.append(part)
    return None


def manifest_problems(entries: Sequence[ManifestEntry], platform: str | None = None) -> list[str]:
    """Every reason why ``entries`` is not a safe, canonical release tree, each as ``"path: reason"``.

    Checks: safe paths, strictly increasing bytewise order (so parents come first), every parent a
    directory entry, canonical modes, symlinks that are relative and resolve inside the tree
    (also through chains of links), and the names rules of ``platform`` (:func:`platform_problems`:
    a platform tag, ``any`` for every platform; None, the default, for the machine this runs on,
    which is what the client checks before writing a tree). Empty list means safe.
    """
    problems: list[str] = []
    kinds: dict[str, EntryType] = {}
    links: dict[str, str] = {}
    previous: bytes | None = None
    for e in entries:
        name = show_path(e.path)
        bad = path_problem(e.path)
        if bad:
            problems.append(f"{name}: {bad}")
            continue
        key = e.path.encode("utf-8")
        if previous is not None and key <= previous:
            problems.append(f"{name}: out of order or duplicated")
        previous = key
        parent = e.path.rpartition("/")[0]
        if parent and kinds.get(parent) is not EntryType.DIR:
            problems.append(f"{name}: parent {show_path(parent)} is not a directory of the tree")
        if e.mode not in ALLOWED_MODES[e.type]:
            problems.append(f"{name}: mode {e.mode:o} is not canonical for a {e.type.value}")
        kinds[e.path] = e.type
        if e.type is EntryType.SYMLINK:
            links[e.path] = e.link
    for path, target in links.items():
        bad = _link_text_problem(target)
        if bad is None and target.startswith("/"):
            bad = f"symlink target is absolute (-> {show_path(target)})"
        if bad is None:
            bad = _link_escapes(path, target, links)
        if bad:
            problems.append(f"{show_path(path)}: {bad}")
    problems += platform_problems((e.path for e in entries), platform)
    return problems


# -- descriptor-relative file access ---------------------------------------------------------------


def open_parent(root_fd: int, path: str) -> tuple[int, str]:
    """Open the directory holding ``path`` below ``root_fd``, every component a real directory.

    Returns a new descriptor (the caller closes it) and the last component of ``path``.
    Raises ``OSError`` (``ELOOP``/``ENOTDIR``) when a component is a symlink or not a directory.
    """
    *parents, name = path.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parents:
            child = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of ``path`` below ``root_fd`` without following a symlink anywhere on the way."""
    parent, name = open_parent(root_fd, path)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    finally:
        os.close(parent)


def copy_hashed(
    read: Callable[[int], bytes], write: Callable[[bytes], object] | None = None, limit: int | None = None
) -> tuple[Digest, bool]:
    """Stream ``read`` into ``write`` in ``CHUNK_SIZE`` pieces while hashing.

    With ``limit``, at most ``limit`` bytes are written; if the source has more, stop and return
    ``overflow=True`` (the returned digest then covers only what was written).
    """
    digest = hashlib.sha256()
    count = 0
    while True:
        want = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - count + 1)
        chunk = read(want)
        if not chunk:
            return Digest(count, digest.hexdigest()), False
        if limit is not None and count + len(chunk) > limit:
            return Digest(count, digest.hexdigest()), True
        digest.update(chunk)
        count += len(chunk)
        if write is not None:
            write(chunk)


def fd_reader(fd: int) -> Callable[[int], bytes]:
    return lambda n: os.read(fd, n)


# -- the canonical tar -----------------------------------------------------------------------------


class TreeChanged(Exception):
    """A file under a tree no longer matches its manifest entry while the canonical tar is written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{show_path(path)}: {reason}")


def read_link(root_fd: int, path: str) -> str | None:
    """The target of the symlink at ``path``, or ``None`` if it is not one (or is gone)."""
    try:
        parent, name = open_parent(root_fd, path)
    except OSError:
        return None
    try:
        return os.readlink(name, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)


def _tree_reader(fd: int, path: str) -> Callable[[int], bytes]:
    """``os.read`` of a tree file whose errors are a :class:`TreeChanged` (not an output error)."""

    def read(n: int) -> bytes:
        try:
            return os.read(fd, n)
        except OSError as exc:
            raise TreeChanged(path, f"cannot read ({exc.strerror})") from exc

    return read


def tar_header(entry: ManifestEntry) -> bytes:
    """The canonical pax header block(s) of ``entry``: mtime 0, uid/gid 0, no user/group names.

    A pax extended header appears only for what ustar cannot hold (long or non-ASCII path or link
    target, size >= 8 GiB); it never carries times or anything else about the building machine.
    """
    info = tarfile.TarInfo(entry.path)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.type is EntryType.FILE:
        info.type = tarfile.REGTYPE
        info.size = entry.size
    elif entry.type is EntryType.DIR:
        info.type = tarfile.DIRTYPE
    else:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def tar_length(entries: Sequence[ManifestEntry], headers: Sequence[bytes] | None = None) -> int:
    """Exact byte length of the canonical tar of ``entries``, known before writing it (``headers``:
    their :func:`tar_header` blocks, when the caller has them)."""
    total = 2 * tarfile.BLOCKSIZE
    for i, e in enumerate(entries):
        total += len(headers[i] if headers is not None else tar_header(e))
        if e.type is EntryType.FILE:
            total += e.size + padding(e.size)
    return total + -total % tarfile.RECORDSIZE


def write_canonical_tar(
    root_fd: int,
    entries: Sequence[ManifestEntry],
    write: Callable[[bytes], object],
    holes: Iterable[str] = (),
    *,
    digest_stream: bool = True,
    check_files: bool = True,
) -> Digest:
    """Emit the canonical tar of the tree below ``root_fd`` described by ``entries`` into ``write``.

    File bytes are read with :func:`open_beneath` and must match each entry's size and sha256 exactly
    (checked while streaming; without ``check_files`` only the size, for a caller that verifies what
    it builds from the tar anyway); symlink targets must match too. Raises :class:`TreeChanged` otherwise,
    after part of the stream was emitted: the caller discards the output. Returns the tar's digest.
    The layout equals what ``tarfile`` writes in PAX format (20-block records).

    Entries below the top-level paths ``holes`` are not read: their headers are emitted, their file
    bytes replaced by zeros (same layout; the digest is then not the canonical one). Without
    ``digest_stream`` the tar itself is not hashed (every file still is, against its entry): the
    returned digest has the length and an empty sha256.
    """
    skipped = frozenset(h.strip("/") for h in holes)
    digest = hashlib.sha256()
    count = 0

    def emit(data: bytes) -> None:
        nonlocal count
        if digest_stream:
            digest.update(data)
        count += len(data)
        write(data)

    for e in entries:
        hole = bool(skipped) and is_skipped(e.path, skipped)
        if e.type is EntryType.SYMLINK and not hole and read_link(root_fd, e.path) != e.link:
            raise TreeChanged(e.path, "symlink target changed")
        emit(tar_header(e))
        if e.type is not EntryType.FILE:
            continue
        _emit_file(root_fd, e, emit, hole, check_files)
        emit(bytes(padding(e.size)))
    emit(bytes(2 * tarfile.BLOCKSIZE))
    emit(bytes(-count % tarfile.RECORDSIZE))
    return Digest(count, digest.hexdigest() if digest_stream else "")


def write_files(
    root_fd: int,
    entries: Sequence[ManifestEntry],
    write: Callable[[bytes], object],
    holes: Iterable[str] = (),
    *,
    check_files: bool = True,
) -> None:
    """Emit the bytes of the files ``entries`` below ``root_fd``, back to back in the order given,
    checked like :func:`write_canonical_tar` checks them (zeros for those below ``holes``)."""
    skipped = frozenset(h.strip("/") for h in holes)
    for e in entries:
        _emit_file(root_fd, e, write, bool(skipped) and is_skipped(e.path, skipped), check_files)


def _emit_file(
    root_fd: int, e: ManifestEntry, emit: Callable[[bytes], object], hole: bool, check_files: bool
) -> None:
    """The bytes of the file ``e`` (zeros for a ``hole``), its size and (``check_files``) sha256 checked."""
    if hole:
        for done in range(0, e.size, CHUNK_SIZE):
            emit(bytes(min(CHUNK_SIZE, e.size - done)))
        return
    try:
        fd = open_beneath(root_fd, e.path, os.O_RDONLY)
    except OSError as exc:
        raise TreeChanged(e.path, f"cannot open ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TreeChanged(e.path, "no longer a regular file")
        if check_files:
            got, overflow = copy_hashed(_tree_reader(fd, e.path), emit, e.size)
            changed = overflow or got != Digest(e.size, e.sha256)
        else:
            changed = not _copy_exactly(_tree_reader(fd, e.path), emit, e.size)
    finally:
        os.close(fd)
    if changed:
        raise TreeChanged(e.path, "size or content changed")


def _copy_exactly(read: Callable[[int], bytes], write: Callable[[bytes], object], size: int) -> bool:
    """Copy ``read`` into ``write`` in ``CHUNK_SIZE`` pieces: True if it held exactly ``size`` bytes
    (never more is written)."""
    left = size
    while left:
        chunk = read(min(CHUNK_SIZE, left))
        if not chunk:
            return False
        write(chunk)
        left -= len(chunk)
    return not read(1)


def read_canonical_tar(tar: bytes) -> list[ManifestEntry]:
    """The entries whose canonical tar (:func:`write_canonical_tar`) is exactly ``tar``, each file
    hashed: its reverse, for a tar held in memory (so every size is bounded by its length) that is
    not trusted yet. Every member must be a file, directory or symlink at a safe path, starting
    where the previous one ends, its header bytes exactly :func:`tar_header` of the entry it
    describes, its data inside ``tar``; padding, end blocks and record padding zeros, nothing after;
    the entries must pass :func:`manifest_problems`. Raises ``ArchiveError`` (one line) otherwise."""
    entries: list[ManifestEntry] = []
    view, pos = memoryview(tar), 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:", encoding="utf-8", errors="strict") as archive:
            for member in archive:  # stops at the end blocks (or at a header it cannot read: then pos is short)
                kind = MEMBER_KINDS.get(member.type)
                bad = f"type {member.type!r} not allowed" if kind is None else path_problem(member.name)
                end = member.offset_data + (member.size if kind is EntryType.FILE else 0)
                if kind is None or bad or member.offset != pos or end > len(tar):
                    where = "data past the end" if member.offset == pos else f"not at byte {pos}"
                    raise ArchiveError(f"archive member {show_path(member.name)} at {member.offset}: {bad or where}")
                if kind is EntryType.FILE:
                    sha256 = hashlib.sha256(view[member.offset_data:end]).hexdigest()
                    entry = ManifestEntry(member.name, kind, member.mode, member.size, sha256)
                else:
                    entry = ManifestEntry(member.name, kind, member.mode, link=member.linkname)
                pos = end + padding(entry.size)
                if view[member.offset:member.offset_data] != tar_header(entry) or any(view[end:pos]):
                    raise ArchiveError(f"archive member {show_path(member.name)}: not its canonical header or padding")
                entries.append(entry)
    except (tarfile.TarError, UnicodeError, ValueError, EOFError) as exc:
        raise ArchiveError(f"archive unreadable after byte {pos} ({exc})") from exc
    length = pos + 2 * tarfile.BLOCKSIZE
    length += -length % tarfile.RECORDSIZE
    if len(tar) != length or any(view[pos:]):
        raise ArchiveError(f"archive is not canonical from byte {pos}: no further member, and not the end blocks")
    problems = manifest_problems(entries)
    if problems:
        raise ArchiveError(f"archive rejected: {problems[0]}")
    return entries


def release_compressor(level: int) -> zstandard.ZstdCompressor:
    """The zstd compressor of the release targets (full artifact, manifest): fixed parameters,
    single-threaded, so the same input always gives the same frame. The client uses it to compress
    a manifest rebuilt from a delta again and compare it with the signed manifest target."""
    return zstandard.ZstdCompressor(level=level, threads=0, write_content_size=True, write_checksum=True)


MEMBER_KINDS = {tarfile.REGTYPE: EntryType.FILE, tarfile.AREGTYPE: EntryType.FILE,
                 tarfile.DIRTYPE: EntryType.DIR, tarfile.SYMTYPE: EntryType.SYMLINK}


def is_skipped(path: str, skip: frozenset[str]) -> bool:
    return any(path == s or path.startswith(s + "/") for s in skip)


def list_dir(root_fd: int, directory: str = "") -> list[tuple[str, os.stat_result]]:
    """``(path, lstat)`` of each entry of ``directory`` (relative, "" for the root) below ``root_fd``,
    the directory opened without following symlinks; in directory order (callers sort)."""
    fd = os.dup(root_fd) if not directory else open_beneath(root_fd, directory, NOFOLLOW_DIR)
    try:
        return [
            (f"{directory}/{name}" if directory else name, os.stat(name, dir_fd=fd, follow_symlinks=False))
            for name in os.listdir(fd)
        ]
    finally:
        os.close(fd)
