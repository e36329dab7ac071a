"""The publisher's exception hierarchy: one root, one line for a person, one exit code
(from the table both CLIs share, ``formats.exitcodes``)."""

from __future__ import annotations

from pinnacle_updates.formats.exitcodes import ExitCode


class ReleaseError(Exception):
    """Root of every error ``repo_tools`` raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL


class KeyStoreError(ReleaseError):
    """Keys are missing, unreadable, wrongly encrypted or do not match the repository."""

    exit_code = ExitCode.KEYS


class UnsafeInputError(ReleaseError):
    """A source tree holds something a release must never carry (absolute/.. paths, escaping links, devices, setuid)."""

    exit_code = ExitCode.UNSAFE_INPUT


class PublishRefused(ReleaseError):
    """The publish/promote request breaks a rule (version not newer, unknown channel, ...); nothing changed."""

    exit_code = ExitCode.REFUSED


class RepositoryStateError(ReleaseError):
    """The repository on disk is missing, uninitialised, or not what this command needs."""

    exit_code = ExitCode.STATE


class VerificationFailed(ReleaseError):
    """``verify`` found problems; ``problems`` lists every one."""

    exit_code = ExitCode.VERIFICATION

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"verification failed with {len(problems)} problem(s)")


class ExpiringSoon(ReleaseError):
    """``status --warn-days``: at least one role expires inside the window (or has expired)."""

    exit_code = ExitCode.EXPIRING_SOON


class ServerError(ReleaseError):
    """A server the publisher asks (the fleet collector) could not be reached or answered something unusable."""

    exit_code = ExitCode.NETWORK


class ObjectStoreError(ReleaseError):
    """``sync`` to ``s3://``: the object store is unreachable, refused the credentials or the request, or
    the bucket is missing; what was served before the sync is still served."""

    exit_code = ExitCode.OBJECT_STORE
