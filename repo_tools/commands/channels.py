"""``pinnacle-release channel``: custom channels (``repo_tools.channels``)."""

from __future__ import annotations

from pathlib import Path

import click

from pinnacle_updates.formats.cliutil import emit

from ..channels import add_channel, list_channels
from ..store import Repository
from .options import json_option, keys_option, keystore, output_option, pending_text, repo_argument


@click.group("channel")
def channel_group() -> None:
    """Channels beyond stable, beta and alpha: nightly, lts-2026, one per customer."""


@channel_group.command("add")
@repo_argument
@click.argument("name")
@keys_option
@output_option
@json_option
def add_cmd(repo_dir: Path, name: str, keys_dir: Path, output: Path | None, as_json: bool) -> None:
    """Create channel NAME (1-64 of a-z 0-9 . _ -): a delegation signed by targets, its own new key."""
    result = add_channel(Repository(repo_dir), keystore(keys_dir), name, output)
    if result["published"]:
        human = f"added channel {name} (key {result['new_keyid'][:8]}; targets v{result['version']['targets']})"
    else:
        human = pending_text(f"channel {name}: key {result['new_keyid'][:8]} is pending", result)
    emit(as_json, result, human)


@channel_group.command("list")
@repo_argument
@json_option
def list_cmd(repo_dir: Path, as_json: bool) -> None:
    """The repository's channels."""
    result = list_channels(Repository(repo_dir))
    emit(as_json, result, "\n".join(c["name"] for c in result["channels"]))


COMMANDS: tuple[click.Command, ...] = (channel_group,)
