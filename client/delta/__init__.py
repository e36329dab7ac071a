"""Delta updates on the client: choose the cheapest way to a release, then rebuild it safely.

- :mod:`.plan`: which path (full artifact, one delta, a chain): :func:`plan_update`,
  :class:`UpdatePath`, and :func:`base_problem` (can the installed tree serve as a base);
- :mod:`.apply`: :func:`manifest_from_delta`, :func:`apply_delta`, :func:`apply_chain`;
- :mod:`.kinds`: the client's registry of delta kinds (``CLIENT_KINDS``: each op kind's and
  container kind's applier and decode memory bound), with the per-file container's applier;
- one module per container kind's specifics (:mod:`.whole_archive`, :mod:`.solid`) and for the
  per-file ops (:mod:`.ops`); :mod:`.manifest` (the manifest patch), :mod:`.streams` (bounded
  readers shared by every kind), :mod:`.jobs` (what appliers are given), :mod:`.errors`.

Adding a delta kind: see :mod:`pinnacle_updates.formats.delta_kinds`.
"""

from __future__ import annotations

from .apply import apply_chain, apply_delta, manifest_from_delta
from .errors import DeltaError
from .jobs import Rebuilt
from .plan import MAX_CHAIN, DeltaStep, UpdatePath, base_problem, full_cost, plan_update

__all__ = [
    "MAX_CHAIN", "DeltaError", "DeltaStep", "Rebuilt", "UpdatePath", "apply_chain", "apply_delta", "base_problem",
    "full_cost", "manifest_from_delta", "plan_update",
]
