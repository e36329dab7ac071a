"""The one error of delta updates on the client."""

from __future__ import annotations

from pinnacle_updates.client.errors import InstallError


class DeltaError(InstallError):
    """A delta could not be used (bad patch, hash mismatch, truncated, missing, edited base): one line
    naming the file and cause; the installer then falls back to the full artifact."""


__all__ = ["DeltaError"]
