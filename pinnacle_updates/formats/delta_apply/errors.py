"""The one error of applying deltas."""

from __future__ import annotations

from pinnacle_updates.formats.index import FormatError


class DeltaError(FormatError):
    """A delta could not be used (bad patch, hash mismatch, truncated, missing, edited base): one line
    naming the file and cause. The client turns it into its own ``DeltaError`` (an ``InstallError``)
    and falls back to the full artifact; ``verify --deep`` reports it as a problem of the delta."""


__all__ = ["DeltaError"]
