"""``pinnacle-release``: thin click commands over ``repo_tools``.

Commands parse options, call one library function and print its result (human text, or one
JSON document with ``--json``). ``client.cliutil.error_group`` is the single place where a ``ReleaseError``
becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from pinnacle_updates.formats.cliutil import Failure, emit, error_group
from pinnacle_updates.formats.fleet import describe_controls
from pinnacle_updates.formats.index import DEFAULT_SKIP_RAMP_TYPES, UpdateType

from . import publish as ops
from .audit import verify_repository
from .core.expiry import expiring, parse_time
from .delta import DEFAULT_JOBS, DELTA_MAX_RATIO, parse_size
from .errors import ExpiringSoon, PublishRefused, ReleaseError, VerificationFailed
from .fleet import schedule_option
from .keys import PASSPHRASE_ENV, KeyStore, create_keys, env_passphrase
from .prune import prune
from .store import Repository

PROGRAM = "pinnacle-release"


def _problems(exc: Exception) -> list[str]:
    return [f"problem: {p}" for p in exc.problems] if isinstance(exc, VerificationFailed) else []


_Group = error_group(PROGRAM, ReleaseError, _problems)
_emit = emit


def _Failure(message: str, exit_code: int) -> Failure:
    return Failure(PROGRAM, message, exit_code)


def _prompt_passphrase(role: str) -> str | None:
    secret = env_passphrase(role)
    if secret:
        return secret
    if not sys.stdin.isatty():
        return None
    value: str = click.prompt(f"Passphrase for the {role} key", hide_input=True, err=True)
    return value


def _keystore(path: Path) -> KeyStore:
    return KeyStore(path, passphrase=_prompt_passphrase)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
keys_option = click.option(
    "--keys", "keys_dir", envvar="PINNACLE_KEYS", required=True,
    type=click.Path(file_okay=False, path_type=Path), help="Key directory (or PINNACLE_KEYS).",
)
repo_argument = click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))


def rollout_options(func: Any) -> Any:
    """``--rollout FILE`` / ``--percent N``: the staged rollout a release starts with (publish, promote)."""
    func = click.option("--percent", "rollout_percent", type=float, default=None,
                        help="Start with a fixed rollout to N% of clients (0-100).")(func)
    return click.option("--rollout", "rollout_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        default=None, help="Rollout schedule (JSON: percentage, waves, or a list of waves).")(func)


@click.group(cls=_Group)
@click.version_option(package_name="pinnacle-updates")
def cli() -> None:
    """Publish signed releases into a static TUF repository."""


@cli.group(cls=_Group)
def keys() -> None:
    """Manage signing keys."""


@keys.command("init")
@click.argument("keys_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--root-threshold", default=1, show_default=True, help="Root signatures required.")
@click.option("--root-keys", default=1, show_default=True, help="Root keys to create.")
@click.option("--insecure-plaintext", is_flag=True, help="Store private keys unencrypted (demo and tests only).")
@click.option("--force", is_flag=True, help="Overwrite an existing key directory.")
@json_option
def keys_init(
    keys_dir: Path, root_threshold: int, root_keys: int, insecure_plaintext: bool, force: bool, as_json: bool
) -> None:
    """Create ed25519 keys for root, targets, snapshot, timestamp and each channel."""
    passphrase: str | None = None
    if not insecure_plaintext:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if not passphrase:
            if not sys.stdin.isatty():
                raise _Failure(f"set {PASSPHRASE_ENV} or pass --insecure-plaintext (no terminal to prompt on)", 2)
            passphrase = click.prompt(
                "Passphrase for the new keys", hide_input=True, confirmation_prompt=True, err=True
            )
    summary = create_keys(keys_dir, passphrase, root_threshold, root_keys, force=force)
    lines = [f"keys written to {keys_dir} ({'encrypted' if passphrase else 'PLAINTEXT, demo only'})"]
    for role, info in summary["roles"].items():
        lines.append(f"  {role}: {len(info['keyids'])} key(s), threshold {info['threshold']}")
    _emit(as_json, summary, "\n".join(lines))


def _parse_expiry(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for value in values:
        role, sep, days = value.partition("=")
        if not sep or not days.isdigit():
            raise _Failure(f"--expires takes ROLE=DAYS, got '{value}'", 2)
        out[role] = int(days)
    return out


@cli.command("init")
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
    result = ops.init_repository(Repository(repo_dir), _keystore(keys_dir), _parse_expiry(expires), compression_level,
                                 live_window=live_window, archive_bits=archive_bits)
    _emit(as_json, result, f"initialised {repo_dir} with channels {', '.join(result['channels'])}; "
                           f"ship {result['root']} with your clients")


@cli.command("publish")
@repo_argument
@keys_option
@click.option("--channel", required=True)
@click.option("--version", "version", required=True, help="PEP 440 version, newer than any in the channel.")
@click.option("--type", "update_type", required=True,
              type=click.Choice([t.value for t in UpdateType]))
@click.option("--platform", required=True, help="linux-x86_64, macos-arm64, windows-x86_64, any, ...")
@click.option("--notes", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Release notes file.")
@click.option("--entry-point", help="Path inside the release that 'pinnacle-update run' executes.")
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
@click.argument("source_dir", type=click.Path(file_okay=False, path_type=Path))
@json_option
def publish_cmd(repo_dir: Path, keys_dir: Path, channel: str, version: str, update_type: str, platform: str,
                notes: Path | None, entry_point: str | None, delta_count: int, memory_budget: str, jobs: int,
                min_version: str | None, ramp: bool | None, ab_test_percentage: float | None,
                rollout_file: Path | None, rollout_percent: float | None, source_dir: Path, as_json: bool) -> None:
    """Build SOURCE_DIR into a release and publish it in a channel."""
    try:
        text = notes.read_text(encoding="utf-8") if notes else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishRefused(f"cannot read release notes {notes}: {getattr(exc, 'strerror', None) or exc}") from exc
    request = ops.PublishRequest(channel, version, update_type, platform, source_dir, text, entry_point,
                                 deltas=delta_count, memory_budget=parse_size(memory_budget), jobs=jobs,
                                 rollout=schedule_option(rollout_file, rollout_percent), min_version=min_version,
                                 ramp=ramp, ab_test_percentage=ab_test_percentage)
    result = ops.publish(Repository(repo_dir), _keystore(keys_dir), request)
    full = result["release"]["full"]
    lines = [f"published {channel} {version} ({platform}, {update_type}): {full['path']} "
             f"{full['length']} bytes sha256 {full['sha256'][:16]}"]
    for d in result["deltas"]:
        verdict = "published" if d["published"] else f"not published (over {DELTA_MAX_RATIO:.0%} of full)"
        lines.append(f"  delta from {d['from']}: {d['length']} bytes ({d['ratio']:.1%} of full), {verdict}")
    _emit(as_json, result, "\n".join(lines))


@cli.command("promote")
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
    result = ops.promote(Repository(repo_dir), _keystore(keys_dir), source, dest, version, platform,
                         rollout=schedule_option(rollout_file, rollout_percent))
    _emit(as_json, result, f"promoted {version} from {source} to {dest} "
                           f"({', '.join(r['platform'] for r in result['releases'])})")


@cli.command("refresh")
@repo_argument
@keys_option
@click.option("--force", is_flag=True, help="Re-sign every online role now.")
@json_option
def refresh_cmd(repo_dir: Path, keys_dir: Path, force: bool, as_json: bool) -> None:
    """Re-sign timestamp, snapshot and near-expiry channel roles (for cron)."""
    result = ops.refresh(Repository(repo_dir), _keystore(keys_dir), force=force)
    for warning in result["warnings"]:
        click.echo(f"pinnacle-release: warning: {warning}", err=True)
    _emit(as_json, result, f"re-signed {', '.join(result['renewed'])}")


@cli.command("status")
@repo_argument
@click.option("--warn-days", type=click.FloatRange(min=0), default=None, metavar="N",
              help="Exit 7, naming them, when any role expires within N days (0.5 = 12 hours).")
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
    _emit(as_json, result, "\n".join(lines))
    if warn_days is not None:
        soon = expiring({r: parse_time(i["expires"]) for r, i in result["roles"].items()}, ops.utcnow(),
                        timedelta(days=warn_days))
        if soon:
            raise ExpiringSoon(f"{len(soon)} role(s) expire within {warn_days:g} day(s): "
                               + "; ".join(r.describe() for r in soon))


@cli.command("verify")
@repo_argument
@click.option("--deep", is_flag=True, help="Also decompress every full artifact and check its content digest.")
@json_option
def verify_cmd(repo_dir: Path, deep: bool, as_json: bool) -> None:
    """Audit every signature, threshold, hash, length, expiry and index entry."""
    report = verify_repository(repo_dir, ops.utcnow(), deep=deep)
    if as_json:
        _emit(True, report.to_dict(), "")
    if report.problems:
        raise VerificationFailed(report.problems)
    if not as_json:
        click.echo(f"ok: {report.checked_files} metadata files, {report.checked_targets} targets, "
                   f"{report.releases} releases verified"
               + (f" (+{report.archived} archived)" if report.archived else ""))


@cli.command("prune")
@repo_argument
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@json_option
def prune_cmd(repo_dir: Path, dry_run: bool, as_json: bool) -> None:
    """Delete metadata versions no client can use: those only expired snapshots list (never roots)."""
    result = prune(Repository(repo_dir), ops.utcnow(), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    _emit(as_json, result, f"{verb} {result['files']} metadata file(s), {result['bytes']:,} bytes; "
                           f"{len(result['kept_snapshots'])} unexpired snapshot(s) kept with what they list")


@cli.command("serve")
@click.argument("repo_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="0 picks a free port.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve_cmd(repo_dir: Path, host: str, port: int, verbose: bool) -> None:
    """Serve REPO_DIR over HTTP (demos and tests; production uses any static host)."""
    from .serve import serve

    serve(repo_dir, host, port, quiet=not verbose)


@cli.command("nginx-config")
@click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--listen", default=None, metavar="ADDR", help="nginx listen value: 80, 127.0.0.1:8080, [::]:80.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Shorthand for --listen PORT.")
@click.option("--server-name", default="_", show_default=True)
@click.option("--access-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Log every request as one JSON line here (status, bytes, Range, request).")
@click.option("--standalone", "prefix", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Print a whole nginx.conf that runs unprivileged with every path in PREFIX "
                   "(nginx -p PREFIX -c PREFIX/nginx.conf -e stderr); the tests run this.")
def nginx_config_cmd(repo_dir: Path, listen: str | None, port: int | None, server_name: str,
                     access_log: Path | None, prefix: Path | None) -> None:
    """Print nginx configuration serving REPO_DIR with the repository's cache headers."""
    from .hosting import nginx_site, nginx_standalone

    if listen is not None and port is not None:
        raise click.UsageError("give --listen or --port, not both")
    where = listen or str(port or (8000 if prefix is not None else 80))
    if prefix is not None:
        if access_log is not None or server_name != "_":
            raise click.UsageError("--standalone sets its own access log (PREFIX/access.log) and server name")
        click.echo(nginx_standalone(repo_dir, prefix, listen=where), nl=False)
    else:
        click.echo(nginx_site(repo_dir, listen=where, server_name=server_name, access_log=access_log), nl=False)


from . import cli_fleet, cli_trust  # noqa: E402,F401  (register rollout, yank; root, targets, keys ..., sync)


def main() -> None:
    cli(prog_name="pinnacle-release")


if __name__ == "__main__":  # `python -m pinnacle_updates.repo_tools.cli`: run the imported module, where commands
    from pinnacle_updates.repo_tools.cli import main as _main

    _main()
