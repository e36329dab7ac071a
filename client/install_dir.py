"""One install directory as every part of the installer touches it.

``InstallDir`` is the shared I/O the parts (``client.staging``, ``client.activation``,
``client.recovery``, ``client.doctor``) work through, so that each rule is written once: the lock,
the config, loading and *saving* the slot state (every save is announced as a ``state`` event),
appending to the history, running hooks, the verified repository client, the cached manifests
and the one way a slot is emptied for writing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pinnacle_updates.client import config as config_mod
from pinnacle_updates.client import history as history_mod
from pinnacle_updates.client import repo_access, reporting
from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.errors import (
    BusyError,
    ConfigError,
    InstallError,
    InstallRefused,
    RepositoryError,
    StateError,
)
from pinnacle_updates.client.hooks import CommandResult, HookContext, run_command
from pinnacle_updates.client.results import EventSink, Progress
from pinnacle_updates.client.slots import Layout, SlotContent, SlotState
from pinnacle_updates.client.transport import HttpxFetcher
from pinnacle_updates.client.trust import RepositoryClient
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.index import FormatError, Manifest, Release
from pinnacle_updates.formats.redact import redact_text

ClientFactory = Callable[[ClientConfig, Layout], RepositoryClient]


class InstallDir:
    """The layout of one install directory and the I/O every operation on it shares."""

    def __init__(
        self, root: Path, *, on_event: EventSink | None = None, client_factory: ClientFactory | None = None
    ) -> None:
        self.layout = Layout(Path(root).absolute())
        self._on_event = on_event
        self._client_factory = client_factory or default_client
        # For fleet reports: the version an install under the lock began staging, and whether its
        # outcome reached the history (a failure in the pre-checks before the first save does not).
        self._attempt = ""
        self._outcome_recorded = False

    # -- events, config, state, history ------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        if event == "step" and fields.get("step") == "manifest":  # staging begins: an install attempt
            self._attempt = str(fields.get("version") or "")
        if self._on_event is not None:
            self._on_event({"event": event, **fields})

    def progress(self, progress: Progress | None) -> Progress:
        """``progress`` that also reports each call as a ``progress`` event."""

        def on_progress(done: int, total: int) -> None:
            self.emit("progress", bytes=done, total=total)
            if progress is not None:
                progress(done, total)

        return on_progress

    def config(self) -> ClientConfig:
        return config_mod.load(self.layout.root)

    def load(self) -> SlotState:
        return sm.load(self.layout.state)

    def save(self, s: SlotState) -> SlotState:
        """Persist ``s`` atomically (the write-ahead step), then announce it."""
        sm.save(self.layout.state, s)
        self.emit("state", state=s.state.value)
        return s

    def record(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` to ``history.jsonl``; an outcome record also becomes a fleet report
        (``client.reporting``: spooled and sent in the background, when reporting is on)."""
        try:
            written = history_mod.append(self.layout.history, entry)
        except OSError as exc:
            raise StateError(f"cannot append to {self.layout.history}: {exc.strerror or exc}") from exc
        if entry.get("outcome") is not None:
            self._outcome_recorded = True
        reporting.on_record(self.layout.root, written)

    @contextlib.contextmanager
    def locked(self, wait: bool = False) -> Iterator[None]:
        """Hold ``DIR/lock``; ``BusyError`` naming the holder when another process has it."""
        if not self.layout.config.exists():
            raise ConfigError(f"{self.layout.root} is not an initialised install directory (no config.toml)")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(fsutil.exclusive_lock(self.layout.lock, wait=wait))
            except fsutil.LockBusyError:
                pid = lock_holder(self.layout.lock)
                who = f" (pid {pid})" if pid else ""
                raise BusyError(f"another pinnacle-update process{who} is installing; use --wait to queue") from None
            except OSError as exc:
                raise StateError(f"cannot lock {self.layout.lock}: {exc.strerror or exc}") from exc
            try:
                self.clear_planted()  # every operation that writes starts from safe working paths
            except OSError as exc:
                raise StateError(f"cannot clear the working paths of {self.layout.root}: {one_line(exc)}") from exc
            self._attempt, self._outcome_recorded = "", False
            try:
                yield
            except InstallError as exc:  # refused by a pre-check (space, permissions) before any record
                if self._attempt and not self._outcome_recorded and not isinstance(exc, InstallRefused):
                    reporting.on_unrecorded_failure(self.layout.root, self._attempt, exc)
                raise

    # -- hooks --------------------------------------------------------------------------------------
    def hook_context(self, s: SlotState, slot: str, version: str, **extra: str) -> HookContext:
        """Hooks acting for ``version`` in ``slot``; the active slot, if another, is the previous one."""
        prev_slot = s.active if s.active != slot else None
        prev_version = s.active_version if prev_slot else None
        return HookContext(
            install_dir=self.layout.root,
            slot=slot,
            slot_dir=self.layout.slot(slot),
            version=version,
            previous_version=prev_version,
            previous_slot=prev_slot,
            extra_env=extra,
        )

    def hook(self, name: str, cfg: ClientConfig, ctx: HookContext) -> CommandResult:
        result = run_command(name, cfg.text(name), ctx, cfg.number("hook_timeout"), self.layout.hooks_log)
        if cfg.text(name).strip():
            self.emit("hook", name=name, ok=result.ok, duration=round(result.duration, 3))
        return result

    def migrate(self, cfg: ClientConfig, ctx: HookContext, step: str | None) -> CommandResult:
        """Run the release's own migration step (``step``: a path in its slot, from the signed
        release) with ``migration_timeout``; ok when there is none."""
        if not step:
            return CommandResult("migration", "", 0, False, 0.0)
        result = run_command("migration", shlex.quote(f"./{step}"), ctx, cfg.number("migration_timeout"),
                             self.layout.hooks_log)
        self.emit("hook", name="migration", ok=result.ok, duration=round(result.duration, 3))
        return result

    # -- the repository ---------------------------------------------------------------------------------
    def repository(self, cfg: ClientConfig) -> RepositoryClient:
        """A verified repository client for ``cfg`` (a context manager; closes its connections)."""
        return self._client_factory(cfg, self.layout)

    def find_release(self, client: RepositoryClient, cfg: ClientConfig, content: SlotContent) -> Release:
        """The signed release of ``content`` (the live index, else the channel's archive)."""
        index = client.channel_index(cfg.text("channel"))
        release = index.find(content.version, cfg.text("platform")) or client.archived_release(
            cfg.text("channel"), cfg.text("platform"), content.version)
        if release is None or release.content.sha256 != content.sha256:
            raise RepositoryError(
                f"the repository no longer serves {content.version} with content sha256 "
                f"{content.sha256[:12]}... on channel {cfg.text('channel')}"
            )
        return release

    # -- cached manifests -------------------------------------------------------------------------------
    def store_manifest(self, manifest: Manifest) -> None:
        """Keep ``manifest`` (verified through TUF) as ``manifests/<content sha256>.json``."""
        dest = self.layout.manifest(manifest.content.sha256)
        if not dest.exists():
            try:
                self.layout.manifests.mkdir(exist_ok=True)
                fsutil.atomic_write(dest, manifest.to_bytes())
            except OSError as exc:
                raise StateError(f"cannot store the manifest in {self.layout.manifests}: {one_line(exc)}") from exc

    def manifest_for(
        self, content: SlotContent, cfg: ClientConfig, client: RepositoryClient | None
    ) -> Manifest | None:
        """The cached manifest of ``content``; with ``client``, fetched again through TUF if needed."""
        path = self.layout.manifest(content.sha256)
        with contextlib.suppress(OSError, FormatError):
            m = read_manifest(path)
            if m.content.sha256 == content.sha256 and m.version == content.version:
                return m
        if client is None:
            return None
        client.refresh()
        manifest = client.fetch_manifest(self.find_release(client, cfg, content))
        self.store_manifest(manifest)
        return manifest

    # -- slots and working paths ------------------------------------------------------------------------
    def trash(self, slot: str) -> Path:
        """Where ``wipe_slot`` moves a slot's old content before deleting it."""
        return self.layout.slots_dir / f".trash-{self.layout.slot(slot).name}"

    @property
    def delta_work(self) -> Path:
        """Scratch space for the intermediate releases of a delta chain."""
        return self.layout.cache / "delta-work"

    def wipe_slot(self, s: SlotState, slot: str) -> Path:
        """Empty ``slot`` for writing. Refuses the active slot and the slot ``current`` points at:
        this is the one place a slot is emptied, so the running slot is never written. Whatever is
        at the slot's or its trash path (a planted symlink included) is removed as the entry itself."""
        if slot == s.active or self.layout.linked_slot() == slot:
            raise StateError(f"refusing to write slot {slot}: it is the running slot")
        path = self.layout.slot(slot)
        trash = self.trash(slot)
        remove_entry(trash)
        if os.path.lexists(path):
            os.rename(path, trash)
        path.mkdir()
        fsutil.fsync_dir(self.layout.slots_dir)
        with contextlib.suppress(OSError):
            remove_entry(trash)
        return path

    def clear_planted(self) -> None:
        """Make the client's own working paths safe before an operation writes through them (under
        the lock): ``cache/``, ``cache/partial/`` and ``manifests/`` are real directories, the slots'
        trash paths and ``cache/delta-work`` (left by a killed run) are gone, anything but a link at
        ``current`` (a file in pointer mode) is moved aside, and no entry in the
        cache, the partial downloads or the manifests is a symlink, FIFO or other non-regular file
        (those downloads are written with plain ``open``: a link would be followed outside). Each
        is removed as the entry itself (``remove_entry``): a link's target is never touched."""
        layout = self.layout
        current = layout.pointer_file if layout.pointer else layout.current
        if os.path.lexists(current) and not (os.path.isfile(current) if layout.pointer else os.path.islink(current)):
            # something else where the switch belongs (a directory unpacked there, say) would block
            # every swap: kept, moved aside, and recovery relinks ``current`` as the state says
            os.rename(current, current.with_name(f"{current.name}.moved-{time.strftime('%Y%m%dT%H%M%S')}"))
        own_directory(layout.cache)  # first: the paths below go through it
        for name in sm.SLOT_NAMES:
            remove_entry(self.trash(name))
        remove_entry(self.delta_work)
        for directory, subdirs in ((layout.cache, {"partial"}), (layout.cache / "partial", set()),
                                   (layout.manifests, set())):
            if directory.name == "partial" and not os.path.lexists(directory):
                continue  # made by the fetcher when a resumable download starts
            own_directory(directory)
            for entry in os.scandir(directory):
                kept = entry.is_dir(follow_symlinks=False) if entry.name in subdirs else entry.is_file(
                    follow_symlinks=False)
                if not kept:
                    remove_entry(Path(entry.path))


def default_client(cfg: ClientConfig, layout: Layout) -> RepositoryClient:
    try:  # may be a link to the root shipped in a package; never a FIFO
        root = fsutil.read_regular(layout.trusted_root, boundedjson.DOCUMENT_MAX, follow=True)
    except OSError as exc:
        raise ConfigError(f"cannot read the trusted root {layout.trusted_root}: {exc.strerror or exc}") from exc
    # interrupted downloads resume; a private repository's credentials go with every request
    fetcher = HttpxFetcher(partial_dir=layout.cache / "partial", access=repo_access.load(cfg, layout.root))
    return RepositoryClient(cfg.text("repo_url"), layout.metadata, layout.cache, root, fetcher=fetcher,
                            metadata_url=cfg.text("metadata_url") or None, targets_url=cfg.text("targets_url") or None)


def remove_entry(path: Path) -> bool:
    """Remove whatever is at ``path`` as the entry itself, by ``lstat``: a symlink is unlinked (its
    target untouched), a directory removed with its contents (``rmtree`` follows no link inside),
    anything else unlinked. False when nothing was there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True


def own_directory(path: Path) -> None:
    """Make ``path`` a real directory: a symlink or file planted there is removed first."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return
        os.unlink(path)
    path.mkdir()


def installed(s: SlotState) -> tuple[str, str] | None:
    """(version, content sha256) of the active release: the base deltas are planned from."""
    content = s.active_content
    return (content.version, content.sha256) if content is not None else None


def read_manifest(path: Path) -> Manifest:
    """A cached manifest (``manifests/<sha256>.json``): a regular file, bounded, decoded strictly."""
    return Manifest.from_bytes(fsutil.read_regular(path, boundedjson.DOCUMENT_MAX))


def lock_holder(path: Path) -> str | None:
    """The pid recorded in the lock file, if any."""
    with contextlib.suppress(OSError, ValueError):
        text = fsutil.read_regular(path, 64).decode().strip()
        if text:
            return str(int(text.split()[0]))
    return None


def one_line(exc: BaseException) -> str:
    """``exc`` as one line (an ``OSError`` with the file it names; credentials in a URL redacted:
    an unexpected exception's text goes to state.json, the history and the user)."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return redact_text(" ".join(str(exc).split()))


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


class Part:
    """One part of the installer (staging, activation, recovery, doctor): it works on ``site``, the
    install directory's shared I/O, and never on another part's state."""

    def __init__(self, site: InstallDir) -> None:
        self.site = site
        self.layout = site.layout
