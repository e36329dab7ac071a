"""The client's exception hierarchy: one root, so callers catch one family.

Every error carries a one-line message meant for a person; the CLI prints it as is and exits
with ``exit_code`` (from the table both CLIs share, ``formats.exitcodes``). Errors from
python-tuf, httpx and the OS are translated at the seam where they occur (``raise ... from
exc``), never leaked raw.
"""

from __future__ import annotations

from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.redact import redact_text


class UpdateError(Exception):
    """Root of every error the client raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, *args: object) -> None:
        # Messages name URLs (repository, health, webhook) that may carry credentials: they are
        # redacted here, once, for every surface an error reaches (CLI, agent, history, logs).
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class ConfigError(UpdateError):
    """The install directory's config is missing or invalid."""

    exit_code = ExitCode.CONFIG


class RepositoryError(UpdateError):
    """The repository could not be reached or served something unusable."""

    exit_code = ExitCode.NETWORK


class TrustError(UpdateError):
    """Metadata or a target failed TUF verification (tampering, expiry, rollback attack, bad signature)."""

    exit_code = ExitCode.VERIFICATION


class InstallError(UpdateError):
    """An install could not complete; the running slot is untouched."""

    exit_code = ExitCode.INSTALL_FAILED


class InstallRefused(InstallError):
    """The requested install was refused before anything started (already installed, a major update
    without confirmation, a version the policy does not offer): not an update outcome to report."""

    exit_code = ExitCode.REFUSED


class HealthCheckError(UpdateError):
    """The new version failed its hooks or health check and was rolled back."""

    exit_code = ExitCode.ROLLED_BACK


class StateError(UpdateError):
    """The local install state is inconsistent or an operation is not allowed in this state."""

    exit_code = ExitCode.STATE


class BusyError(UpdateError):
    """Another update process holds the install lock."""

    exit_code = ExitCode.BUSY


class BackupError(UpdateError):
    """A data snapshot could not be taken, read or restored (before an update: nothing was swapped)."""

    exit_code = ExitCode.BACKUP


class BackupSpaceError(BackupError):
    """The data snapshot does not fit on the disk (checked before anything is written)."""
