"""Repository lifecycle commands of ``pinnacle-release``: init, publish, promote, refresh, status,
verify, prune. Thin: parse options, call one library function, print its result (human text, or
one JSON document with ``--json``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from pinnacle_updates.formats import progress
from pinnacle_updates.formats.cliutil import emit
from pinnacle_updates.formats.fleet import describe_controls
from pinnacle_updates.formats.index import DEFAULT_SKIP_RAMP_TYPES, UpdateType

from .. import profiling
from .. import publish as ops
from ..audit import verify_repository
from ..core.expiry import expiring, parse_time
from ..delta import DEFAULT_JOBS, DELTA_MAX_RATIO, parse_size
from ..errors import ExpiringSoon, ObjectStoreError, PublishRefused, RepositoryStateError, VerificationFailed
from ..fleet import schedule_option
from ..objectstore import sync_to
from ..prune import prune
from ..store import Repository
from ..sync import file_progress
from .options import PROGRAM, failure, json_option, keys_option, keystore, repo_argument


def rollout_options(func: Any) -> Any:
    """``--rollout FILE`` / ``--percent N``: the staged rollout a release starts with (publish, promote)."""
    func = click.option("--percent", "rollout_percent", type=float, default=None,
                        help="Start with a fixed rollout to N% of clients (0-100).")(func)
    return click.option("--rollout", "rollout_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        default=None, help="Rollout schedule (JSON: percentage, waves, or a list of waves).")(func)


def _parse_expiry(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for value in values:
        role, sep, days = value.partition("=")
        if not sep or not days.isdigit():
            raise failure(f"--expires takes ROLE=DAYS, got '{value}'")
        out[role] = int(days)
    return out


@click.command("init")
@repo_argument
@keys_option
@click.option("--expires", multiple=True, metavar="ROLE=DAYS",
              help="Validity per role: root, targets, channel, snapshot, timestamp.")
@click.option("--compression-level", type=int, default=None, help="zstd level for full artifacts (default 10).")
@click.option("--live-window", type=click.IntRange(min=1), default=None,
              help="Releases per platform each channel index keeps (default 16); older ones are archived.")
@click.option("--archive-bits", type=click.IntRange(min=1, max=10), default=None,
              help="Each channel archives old releases into 2**N hashed bins (default 4).")
@json_option
def init_cmd(repo_dir: Path, keys_dir: Path, expires: tuple[str, ...], compression_level: int | None,
             live_window: int | None, archive_bits: int | None, as_json: bool) -> None:
    """Create a new repository: root, targets delegating one role per channel, snapshot, timestamp."""
    result = ops.init_repository(Repository(repo_dir), keystore(keys_dir), _parse_expiry(expires), compression_level,
                                 live_window=live_window, archive_bits=archive_bits)
    emit(as_json, result, f"initialised {repo_dir} with channels {', '.join(result['channels'])}; "
                          f"ship {result['root']} with your clients")


@click.command("publish")
@repo_argument
@keys_option
@click.option("--channel", required=True)
@click.option("--version", "version", required=True, help="PEP 440 version, newer than any in the channel.")
@click.option("--type", "update_type", required=True,
              type=click.Choice([t.value for t in UpdateType]))
@click.option("--platform", required=True, help="linux-x86_64, macos-arm64, windows-x86_64, any, ...")
@click.option("--notes", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Release notes file.")
@click.option("--entry-point", help="Path inside the release that 'pinnacle-update run' executes.")
@click.option("--migration", default=None,
              help="Path inside the release that clients run after the swap, before the health check "
                   "(data migrations; its failure or timeout rolls back code and data).")
@click.option("--deltas", "delta_count", type=click.IntRange(min=0), default=3, show_default=True,
              help="Build deltas from this many previous releases of the channel and platform (0: none).")
@click.option("--memory-budget", default="2G", show_default=True, metavar="SIZE",
              help="Peak memory of this process while building deltas (e.g. 2G, 512M); picks the encoders.")
@click.option("--jobs", type=click.IntRange(min=1), default=DEFAULT_JOBS, show_default=True,
              help="Encoder threads for deltas: 1 builds one candidate at a time, 2 builds independent ones "
                   "side by side when the memory budget covers both. Same bytes either way.")
@click.option("--min-version", default=None, help="Clients below this version must update (a required update).")
@click.option("--ramp/--no-ramp", default=None,
              help="Follow the rollout (--ramp) or skip it (--no-ramp); default by type: "
                   f"{'/'.join(DEFAULT_SKIP_RAMP_TYPES)} skip.")
@click.option("--ab-test-percentage", type=float, default=None,
              help="A/B test: only this deterministic N% of clients (the test group) gets the release.")
@rollout_options
@click.option("--sync-to", "sync_dest", default=None, metavar="DEST",
              help="Then `sync` the repository to DEST (a directory or s3://BUCKET/PREFIX).")
@click.option("--endpoint-url", default=None, help="With --sync-to s3://: the S3 API of a store other than AWS.")
@click.option("--profile", "profile", is_flag=True,
              help="Print one 'profile:' line to stderr at the end: wall and CPU seconds per phase and per delta "
                   "candidate, and the peak RSS.")
@click.argument("source_dir", type=click.Path(file_okay=False, path_type=Path))
@json_option
def publish_cmd(repo_dir: Path, keys_dir: Path, channel: str, version: str, update_type: str, platform: str,
                notes: Path | None, entry_point: str | None, migration: str | None, delta_count: int,
                memory_budget: str, jobs: int,
                min_version: str | None, ramp: bool | None, ab_test_percentage: float | None,
                rollout_file: Path | None, rollout_percent: float | None, sync_dest: str | None,
                endpoint_url: str | None, profile: bool, source_dir: Path, as_json: bool) -> None:
    """Build SOURCE_DIR into a release and publish it in a channel."""
    try:
        text = notes.read_text(encoding="utf-8") if notes else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishRefused(f"cannot read release notes {notes}: {getattr(exc, 'strerror', None) or exc}") from exc
    request = ops.PublishRequest(channel, version, update_type, platform, source_dir, text, entry_point,
                                 deltas=delta_count, memory_budget=parse_size(memory_budget), jobs=jobs,
                                 rollout=schedule_option(rollout_file, rollout_percent), min_version=min_version,
                                 ramp=ramp, ab_test_percentage=ab_test_percentage, migration=migration)
    shown = progress.for_cli(PROGRAM, as_json)
    timer = profiling.Profile() if profile else None
    with profiling.recording(timer):
        result = ops.publish(Repository(repo_dir), keystore(keys_dir), request,
                             progress=timer.wrap(shown) if timer else shown)
    if timer:
        click.echo(timer.line(), err=True)
    full = result["release"]["full"]
    lines = [f"published {channel} {version} ({platform}, {update_type}): {full['path']} "
             f"{full['length']} bytes sha256 {full['sha256'][:16]}"]
    for d in result["deltas"]:
        verdict = "published" if d["published"] else f"not published (over {DELTA_MAX_RATIO:.0%} of full)"
        lines.append(f"  delta from {d['from']}: {d['length']} bytes ({d['ratio']:.1%} of full), {verdict}")
    if sync_dest is not None:  # published either way; a failed sync says so and is run again on its own
        try:
            result["sync"], line = sync_to(repo_dir, sync_dest, endpoint_url=endpoint_url,
                                           progress=file_progress(repo_dir, shown))
        except (ObjectStoreError, RepositoryStateError) as exc:
            raise type(exc)(f"published {channel} {version}, but the sync to {sync_dest} failed: {exc}") from None
        lines.append(line)
    shown.result(result, "\n".join(lines))


@click.command("promote")
@repo_argument
@keys_option
@click.option("--from", "source", required=True, help="Channel holding the release.")
@click.option("--to", "dest", required=True, help="Channel to publish it in.")
@click.option("--version", "version", required=True)
@click.option("--platform", default=None, help="Only this platform (default: every platform of VERSION).")
@rollout_options
@json_option
def promote_cmd(repo_dir: Path, keys_dir: Path, source: str, dest: str, version: str, platform: str | None,
                rollout_file: Path | None, rollout_percent: float | None, as_json: bool) -> None:
    """Publish the same bytes of a release in another channel (no rebuild)."""
    result = ops.promote(Repository(repo_dir), keystore(keys_dir), source, dest, version, platform,
                         rollout=schedule_option(rollout_file, rollout_percent))
    emit(as_json, result, f"promoted {version} from {source} to {dest} "
                          f"({', '.join(r['platform'] for r in result['releases'])})")


@click.command("refresh")
@repo_argument
@keys_option
@click.option("--force", is_flag=True, help="Re-sign every online role now.")
@json_option
def refresh_cmd(repo_dir: Path, keys_dir: Path, force: bool, as_json: bool) -> None:
    """Re-sign timestamp, snapshot and near-expiry channel roles (for cron)."""
    result = ops.refresh(Repository(repo_dir), keystore(keys_dir), force=force)
    for warning in result["warnings"]:
        click.echo(f"{PROGRAM}: warning: {warning}", err=True)
    emit(as_json, result, f"re-signed {', '.join(result['renewed'])}")


@click.command("status")
@repo_argument
@click.option("--warn-days", type=click.FloatRange(min=0), default=None, metavar="N",
              help="Exit 14 (EXPIRING_SOON), naming them, when any role expires within N days (0.5 = 12 hours).")
@json_option
def status_cmd(repo_dir: Path, warn_days: float | None, as_json: bool) -> None:
    """Roles, versions, expiries, key ids and releases per channel."""
    result = ops.status(Repository(repo_dir))
    lines = [f"repository {repo_dir}"]
    for role, info in result["roles"].items():
        flag = "  EXPIRED" if info["expired"] else ""
        lines.append(f"  {role:<14} v{info['version']:<5} expires {info['expires']}  "
                     f"threshold {info['threshold']} keys {','.join(k[:8] for k in info['keyids'])}{flag}")
    for channel, releases in result["channels"].items():
        archived = result["archived"].get(channel, 0)
        lines.append(f"  {channel}: {len(releases)} release(s)" + (f" (+{archived} archived)" if archived else ""))
        lines += [f"    {r['version']:<12} {r['platform']:<16} {r['type']:<9} {r['published']}  {describe_controls(r)}"
                  .rstrip() for r in releases]
    emit(as_json, result, "\n".join(lines))
    if warn_days is not None:
        soon = expiring({r: parse_time(i["expires"]) for r, i in result["roles"].items()}, ops.utcnow(),
                        timedelta(days=warn_days))
        if soon:
            raise ExpiringSoon(f"{len(soon)} role(s) expire within {warn_days:g} day(s): "
                               + "; ".join(r.describe() for r in soon))


@click.command("verify")
@repo_argument
@click.option("--deep", is_flag=True, help="Also decompress every full artifact and check its content digest, "
                                          "and apply every delta to its base release and check the result.")
@json_option
def verify_cmd(repo_dir: Path, deep: bool, as_json: bool) -> None:
    """Audit every signature, threshold, hash, length, expiry and index entry, and every file under targets/."""
    shown = progress.for_cli(PROGRAM, as_json) if deep else None  # only --deep takes long
    report = verify_repository(repo_dir, ops.utcnow(), deep=deep, progress=shown or progress.NULL)
    if shown is not None and as_json:
        shown.result(report.to_dict(), "")
    elif as_json:
        emit(True, report.to_dict(), "")
    else:
        for warning in report.warnings:  # escaped by the audit: nothing raw reaches the terminal
            click.echo(f"{PROGRAM}: warning: {warning}", err=True)
    if report.problems:
        raise VerificationFailed(report.problems)
    if not as_json:
        click.echo(f"ok: {report.checked_files} metadata files, {report.checked_targets} targets "
                   f"({report.superseded_targets} superseded), {report.releases} releases verified"
                   + (f" (+{report.archived} archived)" if report.archived else "")
                   + (f", {report.deltas} deltas applied" if deep else ""))


@click.command("prune")
@repo_argument
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@json_option
def prune_cmd(repo_dir: Path, dry_run: bool, as_json: bool) -> None:
    """Delete metadata versions no client can use: those only expired snapshots list (never roots)."""
    result = prune(Repository(repo_dir), ops.utcnow(), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    emit(as_json, result, f"{verb} {result['files']} metadata file(s), {result['bytes']:,} bytes; "
                          f"{len(result['kept_snapshots'])} unexpired snapshot(s) kept with what they list")


COMMANDS: tuple[click.Command, ...] = (init_cmd, publish_cmd, promote_cmd, refresh_cmd, status_cmd, verify_cmd,
                                       prune_cmd)
