"""pinnacle-updates client: verified A/B installs with automatic rollback.

The public API is imported lazily so that light users of the shared format modules
(``client.index``, ``client.fsutil``) do not pay for python-tuf and httpx.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AutoUpdater", "UpdateConfig", "UpdateType"]


def __getattr__(name: str) -> Any:
    if name == "AutoUpdater":
        from .api import AutoUpdater

        return AutoUpdater
    if name == "UpdateConfig":
        from .policy import UpdateConfig

        return UpdateConfig
    if name == "UpdateType":
        from .index import UpdateType

        return UpdateType
    raise AttributeError(f"module 'client' has no attribute {name!r}")
