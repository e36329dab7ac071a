"""The exit-code table both command-line tools share: one meaning per code.

``pinnacle-update`` and ``pinnacle-release`` exit with these codes and no others (a shell, a CI job
or a service manager can tell outcomes apart without reading messages). The error classes of
``client.errors`` and ``repo_tools.errors`` take their ``exit_code`` from here; ``MEANINGS`` is the
one-line meaning of each code, the text of the table in docs/OPERATIONS.md (a test checks that
the two agree).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    NETWORK = 4
    VERIFICATION = 5
    INSTALL_FAILED = 6
    ROLLED_BACK = 7
    BUSY = 8
    STATE = 9
    BACKUP = 10
    KEYS = 11
    UNSAFE_INPUT = 12
    REFUSED = 13
    EXPIRING_SOON = 14
    OBJECT_STORE = 15
    NO_UPDATE = 16
    UNHEALTHY = 17
    CHECKS_FAILED = 18
    INTERRUPTED = 130  # the shell's 128 + SIGINT, what a user expects after Ctrl-C

    @property
    def meaning(self) -> str:
        return MEANINGS[self]


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (also: `check` found an update; `install` had nothing to do, unless --exit-code)",
    ExitCode.INTERNAL: "an error with no more specific code (a file or port that cannot be used) or a bug",
    ExitCode.USAGE: "the command line is wrong: unknown option or command, missing or malformed argument",
    ExitCode.CONFIG: "the configuration (config.toml, an option naming a setting) is missing or invalid",
    ExitCode.NETWORK: "the repository or another server could not be reached or answered something unusable",
    ExitCode.VERIFICATION: "verification failed: signed metadata, a download, installed files or a repository",
    ExitCode.INSTALL_FAILED: "an install could not complete; the running version and its data are untouched",
    ExitCode.ROLLED_BACK: "the new version failed its hooks or health check and was rolled back",
    ExitCode.BUSY: "another process holds the lock (retry, or pass --wait)",
    ExitCode.STATE: "the install directory's or the repository's state does not allow this command",
    ExitCode.BACKUP: "a data backup could not be taken, read or restored, or differs from its manifest",
    ExitCode.KEYS: "keys or tokens are missing, unreadable, too open, wrongly encrypted, refused or do not match",
    ExitCode.UNSAFE_INPUT: "an input holds something a release must never carry (paths, links, devices, names)",
    ExitCode.REFUSED: "the request breaks a rule (not newer, already installed, marked bad, yanked); nothing changed",
    ExitCode.EXPIRING_SOON: "`status --warn-days`: a signed role expires within the window (or has expired)",
    ExitCode.OBJECT_STORE: "`sync` to s3://: the object store is unreachable or refused the request",
    ExitCode.NO_UPDATE: "`check --exit-code` / `install --exit-code`: there is no update to install",
    ExitCode.UNHEALTHY: "`health-check`: the running version answers its health check as unhealthy",
    ExitCode.CHECKS_FAILED: "`doctor`: at least one check failed",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or an aborted prompt)",
}


def table() -> str:
    """The table as Markdown rows (what docs/OPERATIONS.md holds)."""
    rows = ["| Code | Name | Meaning |", "|---:|---|---|"]
    rows += [f"| {code.value} | `{code.name}` | {MEANINGS[code]} |" for code in ExitCode]
    return "\n".join(rows)
