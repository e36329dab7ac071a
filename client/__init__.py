"""pinnacle-updates client: verified A/B installs with automatic rollback.

The public API (docs/API.md) is what this package exports; the CLI, the agent and embedding
applications all go through it.
"""

from __future__ import annotations

from pinnacle_updates.formats.index import Release, UpdateType

from .api import AutoUpdater
from .backups import Backup
from .config import ClientConfig
from .errors import (
    BackupError,
    BackupSpaceError,
    BusyError,
    ConfigError,
    HealthCheckError,
    InstallError,
    InstallRefused,
    RepositoryError,
    StateError,
    TrustError,
    UpdateError,
)
from .hooks import HealthResult
from .policy import UpdateConfig, jittered_interval
from .results import (
    CheckResult,
    DoctorCheck,
    EventSink,
    InstallResult,
    Progress,
    RecoveryReport,
    RestoreReport,
    RollbackResult,
    RollbackTarget,
    SlotReport,
    VerifyReport,
)

__all__ = [
    "AutoUpdater",
    "Backup",
    "BackupError",
    "BackupSpaceError",
    "BusyError",
    "CheckResult",
    "ClientConfig",
    "ConfigError",
    "DoctorCheck",
    "EventSink",
    "HealthCheckError",
    "HealthResult",
    "InstallError",
    "InstallRefused",
    "InstallResult",
    "Progress",
    "RecoveryReport",
    "Release",
    "RepositoryError",
    "RestoreReport",
    "RollbackResult",
    "RollbackTarget",
    "SlotReport",
    "StateError",
    "TrustError",
    "UpdateConfig",
    "UpdateError",
    "UpdateType",
    "VerifyReport",
    "jittered_interval",
]
