"""Delta updates on the client: choose the cheapest way to a release, then rebuild it safely.

- :mod:`.plan`: which path (full artifact, one delta, a chain): :func:`plan_update`,
  :class:`UpdatePath`, and :func:`base_problem` (can the installed tree serve as a base);
- :mod:`.apply`: :func:`manifest_from_delta`, :func:`apply_delta`, :func:`apply_chain`: the appliers
  of :mod:`pinnacle_updates.formats.delta_apply` (shared with the publisher's ``verify --deep``;
  the registry ``CLIENT_KINDS`` is there), failures worded as the client's errors (:mod:`.errors`).

Adding a delta kind: see :mod:`pinnacle_updates.formats.delta_kinds`.
"""

from __future__ import annotations

from pinnacle_updates.formats.delta_apply import Rebuilt

from .apply import apply_chain, apply_delta, manifest_from_delta
from .errors import DeltaError
from .plan import MAX_CHAIN, DeltaStep, UpdatePath, base_problem, full_cost, plan_update

__all__ = [
    "MAX_CHAIN", "DeltaError", "DeltaStep", "Rebuilt", "UpdatePath", "apply_chain", "apply_delta", "base_problem",
    "full_cost", "manifest_from_delta", "plan_update",
]
