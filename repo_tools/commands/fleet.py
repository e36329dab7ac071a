"""Fleet-control commands of ``pinnacle-release``: ``rollout`` and ``yank``, thin wrappers over
``repo_tools.fleet`` (a release's first rollout is ``publish``/``promote --rollout/--percent``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pinnacle_updates.formats.cliutil import emit
from pinnacle_updates.formats.fleet import describe_controls

from .. import fleet
from ..store import Repository
from .options import json_option, keys_option, keystore, repo_argument


def _summary(result: dict[str, Any], verb: str) -> str:
    lines = [f"{verb} {result['channel']} {result['version']}"]
    for r in result["releases"]:
        lines.append(f"  {r['platform']}: {describe_controls(r) or 'no fleet controls'}")
    return "\n".join(lines)


def _release_target(func: Callable[..., Any]) -> Callable[..., Any]:
    """REPO_DIR, --keys, --channel, --version, --platform: which published release a verb changes."""
    for decorator in reversed((
        repo_argument, keys_option, click.option("--channel", required=True),
        click.option("--version", "version", required=True),
        click.option("--platform", default=None, help="Only this platform (default: every platform of VERSION)."),
    )):
        func = decorator(func)
    return func


@click.command("rollout")
@_release_target
@click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="New schedule (JSON), counted from now.")
@click.option("--percent", type=float, default=None, help="Expose exactly N% of clients from now.")
@click.option("--pause", is_flag=True, help="Freeze the rollout at the percent reached now.")
@click.option("--resume", is_flag=True, help="Continue a paused rollout where it stopped.")
@click.option("--complete", is_flag=True, help="Offer the release to every client (also ends an A/B test).")
@json_option
def rollout_cmd(repo_dir: Path, keys_dir: Path, channel: str, version: str, platform: str | None,
                schedule_file: Path | None, percent: float | None, pause: bool, resume: bool, complete: bool,
                as_json: bool) -> None:
    """Change the staged rollout of a published release (online keys only)."""
    schedule = fleet.schedule_option(schedule_file, percent)
    result = fleet.rollout(Repository(repo_dir), keystore(keys_dir), channel, version, schedule=schedule,
                           pause=pause, resume=resume, complete=complete, platform=platform)
    emit(as_json, result, _summary(result, f"rollout {result['action']}:"))


@click.command("yank")
@_release_target
@click.option("--reason", required=True, help="Why (clients show it in status and history).")
@json_option
def yank_cmd(repo_dir: Path, keys_dir: Path, channel: str, version: str, reason: str, platform: str | None,
             as_json: bool) -> None:
    """Withdraw a release: clients skip it; clients running it roll back (online keys only)."""
    result = fleet.yank(Repository(repo_dir), keystore(keys_dir), channel, version, reason, platform=platform)
    emit(as_json, result, _summary(result, "yanked"))


COMMANDS: tuple[click.Command, ...] = (rollout_cmd, yank_cmd)
