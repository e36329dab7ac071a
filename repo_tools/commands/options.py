"""What the ``pinnacle-release`` commands share: the error group, key loading, common options.

``ReleaseGroup`` is ``formats.cliutil.error_group`` for this program: the single place where a
``ReleaseError`` becomes one line on stderr (after each problem a verification found) and its exit
code. Every group of the tool uses it; commands raise library errors or ``failure(...)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pinnacle_updates.formats.cliutil import Failure, error_group
from pinnacle_updates.formats.cliutil import json_option as json_option
from pinnacle_updates.formats.exitcodes import ExitCode

from ..errors import ReleaseError, VerificationFailed
from ..keys import KeyStore, env_passphrase

PROGRAM = "pinnacle-release"
_F = TypeVar("_F", bound=Callable[..., Any])


def _problems(exc: Exception) -> list[str]:
    return [f"problem: {p}" for p in exc.problems] if isinstance(exc, VerificationFailed) else []


ReleaseGroup = error_group(PROGRAM, ReleaseError, _problems)


def failure(message: str, exit_code: int = ExitCode.USAGE) -> Failure:
    """A refusal of the command line itself (bad option values: a usage error unless told), shown
    like a library error."""
    return Failure(PROGRAM, message, exit_code)


def prompt_passphrase(role: str) -> str | None:
    """A key's passphrase: from the environment, else asked on a terminal, else None (no prompt in CI)."""
    secret = env_passphrase(role)
    if secret:
        return secret
    if not sys.stdin.isatty():
        return None
    value: str = click.prompt(f"Passphrase for the {role} key", hide_input=True, err=True)
    return value


def keystore(path: Path) -> KeyStore:
    return KeyStore(path, passphrase=prompt_passphrase)


def _keys_option(*, required: bool) -> Callable[[_F], _F]:
    return click.option(
        "--keys", "keys_dir", envvar="PINNACLE_KEYS", required=required, default=None,
        type=click.Path(file_okay=False, path_type=Path), help="Key directory (or PINNACLE_KEYS).",
    )


keys_option = _keys_option(required=True)
optional_keys_option = _keys_option(required=False)
"""``--keys`` for commands that also work without a key directory (offline signing steps)."""
repo_argument = click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))
output_option = click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="When the signing keys are offline: write the next root/targets version here for them to sign.")
"""``-o FILE`` of the commands that change keys (``keys rotate``, ``channel add``)."""


def pending_text(head: str, result: dict[str, Any]) -> str:
    """A key change waiting for offline signatures: what was written, then the commands that finish it."""
    return "\n".join([f"{head}; wrote {result['file']}; next:", *(f"  {step}" for step in result["next"])])
