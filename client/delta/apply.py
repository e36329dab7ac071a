"""The client's side of applying deltas: :mod:`pinnacle_updates.formats.delta_apply` (shared with the
publisher's ``verify --deep``) with its failures worded as the client's errors: a delta that cannot be
used is a :class:`~.errors.DeltaError` (the installer falls back to the full artifact), a target tree
the name and link rules refuse is an ``InstallError``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pinnacle_updates.client.errors import InstallError
from pinnacle_updates.formats import delta_apply
from pinnacle_updates.formats.archive import ArchiveError
from pinnacle_updates.formats.index import Manifest, Release

from .errors import DeltaError


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    try:
        yield
    except delta_apply.DeltaError as exc:
        raise DeltaError(str(exc)) from exc
    except ArchiveError as exc:
        raise InstallError(str(exc)) from exc


def apply_delta(delta_file: Path, base_root: Path, base_manifest: Manifest, target_manifest: Manifest, dest: Path,
                *, skip: Iterable[str] = (), rebuilt: delta_apply.Rebuilt | None = None) -> None:
    """:func:`pinnacle_updates.formats.delta_apply.apply_delta`, failures as the client's errors."""
    with _client_errors():
        delta_apply.apply_delta(delta_file, base_root, base_manifest, target_manifest, dest, skip=skip, rebuilt=rebuilt)


def apply_chain(steps: Sequence[tuple[Path, Manifest]], base_root: Path, base_manifest: Manifest, dest: Path,
                scratch: Path, *, skip: Iterable[str] = (), rebuilt: delta_apply.Rebuilt | None = None) -> None:
    """:func:`pinnacle_updates.formats.delta_apply.apply_chain`, failures as the client's errors."""
    with _client_errors():
        delta_apply.apply_chain(steps, base_root, base_manifest, dest, scratch, skip=skip, rebuilt=rebuilt)


def manifest_from_delta(
    delta_file: Path, base: Manifest, release: Release, base_tar: bytes | Path | None = None, skip: Iterable[str] = ()
) -> tuple[Manifest | None, delta_apply.Rebuilt | None]:
    """:func:`pinnacle_updates.formats.delta_apply.manifest_from_delta`, failures as the client's errors."""
    with _client_errors():
        return delta_apply.manifest_from_delta(delta_file, base, release, base_tar, skip)


__all__ = ["apply_chain", "apply_delta", "manifest_from_delta"]
