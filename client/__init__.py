"""pinnacle-updates client: verified A/B installs with automatic rollback.

The public API (docs/API.md) is what this package exports; the CLI, the agent and embedding
applications all go through it.
"""

from __future__ import annotations

from pinnacle_updates.formats.index import UpdateType

from .api import AutoUpdater
from .policy import UpdateConfig

__all__ = ["AutoUpdater", "UpdateConfig", "UpdateType"]
