"""Applying deltas, shared by both sides: the client rebuilds releases with it, the publisher's
``verify --deep`` applies every delta it serves to its base release and checks the output against the
signed manifest. Pure of either side: failures are :class:`~.errors.DeltaError` (a ``FormatError``)
and ``ArchiveError``; each side words them as its own error.

- :mod:`.apply`: :func:`manifest_from_delta`, :func:`apply_delta`, :func:`apply_chain`;
- :mod:`.kinds`: the registry of delta kinds (``CLIENT_KINDS``: each op kind's and container kind's
  applier and decode memory bound), with the per-file container's applier;
- one module per container kind's specifics (:mod:`.whole_archive`, :mod:`.solid`) and for the
  per-file ops (:mod:`.ops`); :mod:`.manifest` (the manifest patch), :mod:`.streams` (bounded
  readers shared by every kind), :mod:`.jobs` (what appliers are given), :mod:`.errors`.

Adding a delta kind: see :mod:`pinnacle_updates.formats.delta_kinds`.
"""

from __future__ import annotations

from .apply import apply_chain, apply_delta, manifest_from_delta
from .errors import DeltaError
from .jobs import Rebuilt

__all__ = ["DeltaError", "Rebuilt", "apply_chain", "apply_delta", "manifest_from_delta"]
