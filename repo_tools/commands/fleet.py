"""Fleet-control commands of ``pinnacle-release``: ``rollout``, ``yank``, ``feedback set/clear``,
thin wrappers over ``repo_tools.fleet`` (a release's first rollout is ``publish``/``promote
--rollout/--percent``), and ``watch`` (``repo_tools.watch``: rollouts decided from reported outcomes)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from pinnacle_updates.formats.cliutil import emit
from pinnacle_updates.formats.fleet import describe_controls
from pinnacle_updates.formats.fsutil import read_regular
from pinnacle_updates.formats.index import Feedback, FormatError

from .. import fleet
from ..errors import KeyStoreError, PublishRefused, UnsafeInputError
from ..store import Repository
from .options import failure, json_option, keys_option, keystore, repo_argument


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
@click.option("--advance", is_flag=True, help="Approve the next step of a gated rollout (what watch does).")
@click.option("--gate", is_flag=True, help="With --schedule: each step past the first waits for an approval "
                                           "(watch, or --advance).")
@json_option
def rollout_cmd(repo_dir: Path, keys_dir: Path, channel: str, version: str, platform: str | None,
                schedule_file: Path | None, percent: float | None, pause: bool, resume: bool, complete: bool,
                advance: bool, gate: bool, as_json: bool) -> None:
    """Change the staged rollout of a published release (online keys only)."""
    schedule = fleet.schedule_option(schedule_file, percent)
    if gate:
        if schedule is None:
            raise PublishRefused("--gate goes with --schedule or --percent (a new rollout)")
        schedule = replace(schedule, gate=True)
    result = fleet.rollout(Repository(repo_dir), keystore(keys_dir), channel, version, schedule=schedule,
                           pause=pause, resume=resume, complete=complete, advance=advance, platform=platform)
    emit(as_json, result, _summary(result, f"rollout {result['action']}:"))


@click.command("yank")
@_release_target
@click.option("--reason", required=True, help="Why (clients show it in status and history).")
@json_option
def yank_cmd(repo_dir: Path, keys_dir: Path, channel: str, version: str, reason: str, platform: str | None,
             as_json: bool) -> None:
    """Withdraw a release: no client is offered it any more (only `install VERSION --force` takes it);
    clients running it move off it at their next update: to a newer release they may take, else back
    to the newest older one (instantly, with its data, when their other slot holds it). Online keys only."""
    result = fleet.yank(Repository(repo_dir), keystore(keys_dir), channel, version, reason, platform=platform)
    emit(as_json, result, _summary(result, "yanked"))


@click.group("feedback")
def feedback_group() -> None:
    """Where a channel's clients send their outcome reports (signed in the channel index).

    The ingest key is published in the signed index like everything else there: it is not a
    secret, it only narrows who can report to the collector."""


@feedback_group.command("set")
@repo_argument
@keys_option
@click.option("--channel", required=True)
@click.option("--collector-url", required=True, metavar="URL",
              help="The collector's base URL (http or https); clients POST to URL/v1/reports.")
@click.option("--ingest-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file holding the collector's ingest key, published in the signed index (public, "
                   "not a secret: it only narrows who can report).")
@json_option
def feedback_set_cmd(repo_dir: Path, keys_dir: Path, channel: str, collector_url: str, ingest_key_file: Path | None,
                     as_json: bool) -> None:
    """Name the collector the channel's clients report to (online keys only)."""
    key = _ingest_key(ingest_key_file) if ingest_key_file is not None else ""
    try:
        setting = Feedback(collector_url, key)
    except FormatError as exc:
        message = str(exc).replace("channel index: feedback collector_url", "--collector-url")
        raise UnsafeInputError(message.replace("channel index: feedback ingest_key", "the ingest key")) from None
    result = fleet.set_feedback(Repository(repo_dir), keystore(keys_dir), channel, setting)
    emit(as_json, result, f"{channel}: clients report to {setting.collector_url}"
                          + (" with the ingest key from the file" if key else ""))


@feedback_group.command("clear")
@repo_argument
@keys_option
@click.option("--channel", required=True)
@json_option
def feedback_clear_cmd(repo_dir: Path, keys_dir: Path, channel: str, as_json: bool) -> None:
    """Remove the channel's collector: its clients stop reporting unless their config names one."""
    result = fleet.set_feedback(Repository(repo_dir), keystore(keys_dir), channel, None)
    emit(as_json, result, f"{channel}: no collector named; clients report only where their config says")


def _ingest_key(path: Path) -> str:
    """The ingest key in ``path`` (one line; surrounding white space dropped)."""
    try:
        text = read_regular(path, 4096, follow=True).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot read the ingest key file {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if not text:
        raise KeyStoreError(f"the ingest key file {path} is empty")
    return text


@click.command("watch")
@repo_argument
@keys_option
@click.option("--db", "db_url", envvar="PINNACLE_REPORTS_DB", required=True, metavar="PATH|URL",
              help="The collector's reports database: a SQLite file or postgresql://... (or PINNACLE_REPORTS_DB).")
@click.option("--once", is_flag=True, help="One look, then exit (cron, CI).")
@click.option("--interval", type=click.IntRange(1), default=60, show_default=True,
              help="Seconds between looks (the seed's health_check_interval).")
@click.option("--channel", "channels", multiple=True, help="Only this channel (repeatable; default: every channel).")
@click.option("--max-failure-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.02,
              show_default=True, help="Highest failure rate tolerated per cause class (the null rate without a "
                                      "baseline release, a cap with one).")
@click.option("--min-clients-per-step", type=click.IntRange(1), default=50, show_default=True,
              help="Distinct install ids that must report in a step before a gate approves the next one.")
@click.option("--min-installs", type=click.IntRange(1), default=5, show_default=True,
              help="Install attempts reported before any decision (a halt included).")
@click.option("--gate/--no-gate", default=True, show_default=True,
              help="Approve the steps of gated rollouts when healthy (--no-gate: only halt or yank).")
@click.option("--auto-yank", is_flag=True, help="A halt also yanks the release: clients running it move off it "
                                                "at their next update (to a newer release, else back to the newest "
                                                "older one, instantly with its data when their other slot holds it).")
@json_option
def watch_cmd(repo_dir: Path, keys_dir: Path, db_url: str, once: bool, interval: int, channels: tuple[str, ...],
              max_failure_rate: float, min_clients_per_step: int, min_installs: int, gate: bool, auto_yank: bool,
              as_json: bool) -> None:
    """Halt, yank or advance rolling releases from the fleet's reported outcomes (online keys only)."""
    from ..collector.storage import StorageError, open_storage
    from ..core import canary
    from ..watch import look

    options = canary.Options(max_failure_rate=max_failure_rate, min_clients_per_step=min_clients_per_step,
                             min_installs=min_installs, gate=gate, auto_yank=auto_yank, health_check_interval=interval)
    if options.problem():  # what the option types let through (nan)
        raise failure(f"--{options.problem().replace('_', '-')}")
    repo, keys = Repository(repo_dir), keystore(keys_dir)
    stop = threading.Event()
    if not once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)
            sys.stdout.flush()

    with open_storage(db_url, create=False) as storage:
        while True:
            try:
                done = look(repo, keys, storage, options, channels=channels, on_intent=lambda v: say(v.line()))
            except StorageError as exc:
                if once:
                    raise
                click.echo(f"pinnacle-release watch: {exc}; trying again in {interval}s", err=True)
            else:
                for line in done.settled:
                    say(line)
                for verdict in done.verdicts:
                    if once or verdict.applied:
                        say(verdict.line())
                if once:
                    if as_json or not (done.verdicts or done.settled):
                        emit(as_json, done.to_dict(), "no rolling release")
                    return
            if stop.wait(interval):
                return


COMMANDS: tuple[click.Command, ...] = (rollout_cmd, yank_cmd, feedback_group, watch_cmd)
