"""``pinnacle-update``: thin click commands over the public API (``client.api.AutoUpdater``).

Each command calls one ``AutoUpdater`` method and prints its result: text for people, one JSON
document on stdout with ``--json``. Commands that take time show their phases (``formats.progress``):
a bar on stderr when it is a terminal, phase lines on stdout when not, JSON-line events on stdout
before the one-line result with ``--json``. ``formats.cliutil.error_group`` is the one place where an
``UpdateError`` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, ClassVar

import click

from pinnacle_updates.formats import logs
from pinnacle_updates.formats.cliutil import Failure, emit, error_group, json_option
from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.progress import Renderer, for_cli
from pinnacle_updates.formats.redact import redact_text, redact_url

from . import config as config_mod
from . import service_files
from .agent import notify
from .api import AutoUpdater
from .errors import ConfigError, StateError, UpdateError

PROGRAM = "pinnacle-update"
_Group = error_group(PROGRAM, UpdateError)


def _fail(message: str, exit_code: int) -> Failure:
    return Failure(PROGRAM, message, exit_code)


class _Phases:
    """The client's step and progress events (``AutoUpdater(on_event=...)``) as the phases of
    ``formats.progress``: download (bytes), apply, verify, snapshot (bytes), activate, health check,
    and on a rollback restore (bytes) and swap back."""

    STARTS: ClassVar[dict[str, tuple[str, str]]] = {
        "download": ("download", "bytes"), "staging": ("apply", "files"), "verify": ("verify", "files"),
        "snapshot": ("snapshot", "bytes"), "swap": ("activate", "files"), "health_check": ("health check", "files"),
        "restore_data": ("restore", "bytes"), "swap_back": ("swap back", "files")}
    ENDS = frozenset({"staged", "snapshotted", "committed", "rolled_back", "failed"})

    def __init__(self, shown: Renderer) -> None:
        self.shown = shown
        self.base = self.last = self.last_total = 0
        self.fallback = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step")
        if kind == "step" and step in self.STARTS:
            self.start(*self.STARTS[str(step)], total=int(event.get("total") or 0))
        elif kind == "step" and step in self.ENDS:
            self.shown.end()
        elif kind == "delta_fallback":  # the full artifact comes after all, inside the apply step
            self.start("download", "bytes", detail="full (delta failed)")
            self.fallback = True
        elif kind == "progress":
            done, total = int(event.get("bytes") or 0), int(event.get("total") or 0)
            if done < self.last:  # the next file of a delta chain: its bytes count on from the last one's
                self.base += self.last_total
            self.last, self.last_total = done, total
            self.shown.update(self.base + done, None if self.shown.total else total)
            if self.fallback and total and done >= total:
                self.fallback = False
                self.start("apply", "files")

    def start(self, name: str, unit: str, total: int = 0, detail: str = "") -> None:
        self.base = self.last = self.last_total = 0
        self.shown.start(name, total, unit, detail)


def _with_progress(updater: AutoUpdater, as_json: bool) -> tuple[AutoUpdater, Renderer]:
    """The install directory's ``AutoUpdater`` reporting its phases to the renderer this command shows."""
    shown = for_cli(PROGRAM, as_json)
    return AutoUpdater(updater.install_dir, on_event=_Phases(shown)), shown


def _updater(ctx: click.Context) -> AutoUpdater:
    """The install directory's ``AutoUpdater``; asked for only by a command that runs (so ``--help``
    needs no install directory)."""
    updater = ctx.find_object(AutoUpdater)
    if updater is None:
        raise click.UsageError("Missing option '--install-dir' (or set PINNACLE_INSTALL_DIR).", ctx)
    return updater


def pass_updater(f: Any) -> Any:
    @click.pass_context
    def run(ctx: click.Context, /, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(f, _updater(ctx), *args, **kwargs)

    return functools.update_wrapper(run, f)


exit_code_option = click.option("--exit-code", is_flag=True,
                                 help=f"Exit {int(ExitCode.NO_UPDATE)} (no update) when there is nothing to install.")
wait_option = click.option("--wait", is_flag=True, help="Queue behind another running update instead of failing.")


@click.group(cls=_Group)
@click.option("--install-dir", envvar="PINNACLE_INSTALL_DIR", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Install directory (or PINNACLE_INSTALL_DIR); needed by every command.")
@click.option("--log-format", type=click.Choice(logs.LOG_FORMATS), envvar=logs.ENV_FORMAT, default=None,
              help="Log lines on stderr: text (journald's form under systemd) or json (one object a line); "
                   "or PINNACLE_LOG_FORMAT, or the config key log_format.")
@click.version_option(package_name="pinnacle-updates")
@click.pass_context
def cli(ctx: click.Context, install_dir: Path | None, log_format: str | None) -> None:
    """Verified A/B updates with automatic rollback."""
    ctx.obj = AutoUpdater(install_dir) if install_dir is not None else None
    configured = None
    if log_format:
        os.environ[logs.ENV_FORMAT] = log_format  # the agent's logging (serve) reads the same rule
    elif ctx.obj is not None:
        with contextlib.suppress(UpdateError):  # no or a bad config: the command itself says so
            configured = ctx.obj.settings().text("log_format")
    logs.configure_stderr(logs.resolve_format(configured))


@cli.command("init")
@click.option("--repo", "repo_url", required=True, help="Repository URL: http(s)://, file:// or a local path.")
@click.option("--root", "root_json", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The trusted root.json shipped with the client.")
@click.option("--channel", default=config_mod.DEFAULT_CHANNEL, show_default=True)
@click.option("--platform", default="auto", show_default=True, help="auto, or a tag such as linux-x86_64.")
@click.option("--metadata-url", default="", help="Where the repository's metadata/ is served, if not under --repo.")
@click.option("--targets-url", default="",
              help="Where the repository's targets/ is served (e.g. a CDN), if not under --repo.")
@json_option
@pass_updater
def init_cmd(updater: AutoUpdater, repo_url: str, root_json: Path, channel: str, platform: str,
             metadata_url: str, targets_url: str, as_json: bool) -> None:
    """Create the install directory: config.toml, trusted root, slots, state."""
    split = {key: value for key, value in (("metadata_url", metadata_url), ("targets_url", targets_url)) if value}
    cfg = updater.init(repo_url, root_json, channel, platform, **split)
    data = {"install_dir": str(updater.install_dir), "repo_url": redact_url(cfg.text("repo_url")),
            **{key: redact_url(cfg.text(key)) for key in split},
            "channel": cfg.text("channel"), "platform": cfg.text("platform"), "client_id": cfg.text("client_id")}
    emit(as_json, data, f"initialised {updater.install_dir} ({cfg.text('channel')}, {cfg.text('platform')})")


@cli.command("check")
@click.argument("version", required=False)
@json_option
@wait_option
@exit_code_option
@pass_updater
def check_cmd(updater: AutoUpdater, version: str | None, as_json: bool, wait: bool, exit_code: bool) -> int:
    """Refresh signed metadata and say whether an update is available."""
    result = updater.check(version, wait=wait)
    if result.update_available:
        human = (f"update available: {result.current_version or 'nothing installed'} -> {result.version} "
                 f"({result.type}, {result.download_bytes} bytes via {result.path}"
                 f"{', automatic' if result.auto else ''})")
    else:
        human = f"up to date ({result.current_version or 'nothing installed'}): {result.reason}"
    emit(as_json, result.to_dict(), human)
    return ExitCode.NO_UPDATE if exit_code and not result.update_available else ExitCode.OK


@cli.command("install")
@click.argument("version", required=False)
@click.option("--yes", "confirm_major", is_flag=True, help="Confirm a major update.")
@click.option("--force", is_flag=True,
              help="Also install a version marked bad or yanked, an older one, or the installed one again.")
@click.option("--unattended", is_flag=True, help="Only what policy installs by itself, as the agent's loop does "
              "(nothing while enabled is false): for timers and cron.")
@json_option
@wait_option
@exit_code_option
@pass_updater
def install_cmd(updater: AutoUpdater, version: str | None, confirm_major: bool, force: bool, unattended: bool,
                as_json: bool, wait: bool, exit_code: bool) -> int:
    """Install VERSION (default: what policy picks) into the inactive slot and switch to it."""
    if unattended and (version or confirm_major or force):
        raise click.UsageError("--unattended installs what policy picks by itself: no VERSION, --yes or --force")
    updater, shown = _with_progress(updater, as_json)
    try:
        result = updater.install(version, force=force, confirm_major=confirm_major, wait=wait,
                                 auto_only=unattended)
    except UpdateError as exc:  # the active release is still the one it was before
        _report(updater, notify.outcome(_active_version(updater), version, error=exc))
        raise
    _report(updater, notify.outcome(result.previous_version, result.version, result.outcome, result.reason))
    if result.outcome == "up_to_date":
        human = f"nothing to install ({result.version or 'nothing installed'}): {result.reason}"
    elif result.outcome == "rolled_back":
        human = f"rolled back {result.previous_version} -> {result.version} (slot {result.slot}): {result.reason}"
    else:
        human = (f"installed {result.version} in slot {result.slot} (was {result.previous_version or 'nothing'}; "
                 f"{result.bytes_downloaded} bytes, {result.duration:.2f}s)")
    shown.result(result.to_dict(), human)
    return ExitCode.NO_UPDATE if exit_code and result.outcome == "up_to_date" else ExitCode.OK


@cli.command("rollback")
@click.option("--force", is_flag=True,
              help="Roll back even to a version marked bad or older than max_rollback_days.")
@click.option("--mark-bad", is_flag=True,
              help="Also mark the version left bad: never installed again without --force.")
@click.option("--keep-data", is_flag=True,
              help="Keep the persistent data as it is (default: restore its snapshot from before the update).")
@json_option
@wait_option
@pass_updater
def rollback_cmd(updater: AutoUpdater, force: bool, mark_bad: bool, keep_data: bool, as_json: bool,
                 wait: bool) -> None:
    """Switch back to the previous version in the other slot, instantly, with its data.

    The version left is recorded as rolled back by you: automatic updates skip it, 'install VERSION'
    takes it again. With --mark-bad it is bad: refused unless 'install VERSION --force'."""
    updater, shown = _with_progress(updater, as_json)
    result = updater.rollback(wait=wait, force=force, keep_data=keep_data, mark_bad=mark_bad)
    _report(updater, ("rollback", result.from_version, result.version, "rolled_back", result.reason))
    if result.data_restored:
        data = f"; data restored from backup {result.data_restored}"
        data += f", the replaced data kept as backup {result.data_rejected}" if result.data_rejected else ""
    else:
        data = "; data kept as it was"
    notes = "".join(f"\nnote: {n}" for n in result.notes) + _marked(result.from_version, mark_bad)
    shown.result(result.to_dict(), f"rolled back {result.from_version} -> {result.version} (slot {result.slot}, "
                                   f"{result.duration * 1000:.1f} ms){data}{notes}")


def _marked(version: str | None, bad: bool) -> str:
    """What a manual rollback recorded of the version it left, and how to take that version again."""
    if version is None:
        return ""
    if bad:
        return f"\n{version} is marked bad: 'pinnacle-update install {version} --force' installs it again"
    return (f"\n{version} is recorded as rolled back: automatic updates skip it, "
            f"'pinnacle-update install {version}' installs it again")


@cli.group("backups")
def backups_group() -> None:
    """Data backups: snapshots of the persistent paths taken before updates, and data replaced by restores."""


@backups_group.command("list")
@json_option
@pass_updater
def backups_list(updater: AutoUpdater, as_json: bool) -> None:
    """Every backup, oldest first."""
    rows = [b.summary() for b in updater.backups()]
    lines = [f"{r['id']}  {r['kind']:<8} {r['version'] or '-':<12} -> {r['for_version'] or '-':<12} "
             f"{r['files']:>7} files {r['bytes'] / 2**20:9.1f} MiB  {r['method']:<7} {r['age_days']:.1f} days"
             for r in rows]
    emit(as_json, rows, "\n".join(lines) or "no backups")


@backups_group.command("show")
@click.argument("backup_id")
@json_option
@pass_updater
def backups_show(updater: AutoUpdater, backup_id: str, as_json: bool) -> None:
    """One backup's manifest: versions, method, every entry."""
    b = updater.backup(backup_id)
    human = [f"{k}: {v}" for k, v in b.summary().items()]
    human += [f"  {e.type:<4} {e.mode:04o} {e.size:>10} {e.path}" + (f" -> {e.target}" if e.target else "")
              for e in b.entries]
    emit(as_json, b.to_dict(), "\n".join(human))


@backups_group.command("verify")
@click.argument("backup_id")
@json_option
@pass_updater
def backups_verify(updater: AutoUpdater, backup_id: str, as_json: bool) -> None:
    """Check one backup against its manifest (types, modes, sizes, link texts, recorded sha256)."""
    problems = updater.verify_backup(backup_id)
    emit(as_json, {"id": backup_id, "ok": not problems, "problems": problems},
         "\n".join([f"backup {backup_id}: {'intact' if not problems else f'{len(problems)} problem(s)'}",
                    *(f"  {p}" for p in problems)]))
    if problems:
        raise _fail(f"backup {backup_id} differs from its manifest", ExitCode.BACKUP)


@backups_group.command("restore")
@click.argument("backup_id")
@json_option
@wait_option
@pass_updater
def backups_restore(updater: AutoUpdater, backup_id: str, as_json: bool, wait: bool) -> None:
    """Put a backup's data in place under the running version (stop, restore, start)."""
    updater, shown = _with_progress(updater, as_json)
    report = updater.restore_backup(backup_id, wait=wait)
    kept = f"; the replaced data kept as backup {report.rejected}" if report.rejected else ""
    notes = "".join(f"\nnote: {n}" for n in report.notes)
    shown.result(report.to_dict(), f"restored the data of backup {backup_id} under {report.version}{kept}{notes}")


@backups_group.command("prune")
@json_option
@wait_option
@pass_updater
def backups_prune(updater: AutoUpdater, as_json: bool, wait: bool) -> None:
    """Remove backups beyond max_rollback_days and max_backups (the rollback snapshot of the running version stays)."""
    removed = updater.prune_backups(wait=wait)
    emit(as_json, {"removed": removed}, f"removed {len(removed)} backup(s)" + "".join(f"\n  {r}" for r in removed))


def _active_version(updater: AutoUpdater) -> str | None:
    try:
        version: str | None = updater.status()["version"]
    except UpdateError:
        return None
    return version


def _report(updater: AutoUpdater, what: notify.Outcome | None) -> None:
    """The outcome's webhook and e-mail notifications, as the agent sends them; a warning if undelivered."""
    warning = notify.report(updater.install_dir, updater.settings(), what)
    if warning:
        click.echo(f"warning: {warning}", err=True)


@cli.command("status")
@json_option
@pass_updater
def status_cmd(updater: AutoUpdater, as_json: bool) -> None:
    """The active version and slot, channel and state."""
    s = updater.status()
    human = (f"{s['version'] or 'nothing installed'} in slot {s['slot'] or '-'} ({s['channel']}, {s['state']})"
             + (f"; previous {s['previous_version']} in slot {s['previous_slot']}" if s["previous_version"] else "")
             + ("; NEEDS RECOVERY (run 'recover')" if s["needs_recovery"] else "")
             + (f"; CONFIG INVALID: {s['config_problems'][0]}" if s["config_problems"] else "")
             + "".join(f"; A/B {v}: {g} group" for v, g in (s["fleet"]["groups"] or {}).items())
             + (f"; {s['last_error']}" if s["last_error"].startswith("yanked") else "")
             + (f"; {s['fleet']['clock_note']}" if s["fleet"]["clock_note"] else ""))
    emit(as_json, s, human)


@cli.command("channel")
@click.argument("name")
@click.option("--allow-downgrade", is_flag=True, help="Install the channel's newest release even when it is older.")
@json_option
@wait_option
@pass_updater
def channel_cmd(updater: AutoUpdater, name: str, allow_downgrade: bool, as_json: bool, wait: bool) -> None:
    """Follow channel NAME (stable, beta, alpha, ...); never a downgrade without --allow-downgrade."""
    updater, shown = _with_progress(updater, as_json)
    result = updater.switch_channel(name, allow_downgrade=allow_downgrade, wait=wait)
    shown.result(result, f"now on {result['channel']} (was {result['previous_channel']}), "
                           f"running {result['version'] or 'nothing'}: {result['reason']}")


@cli.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N records.")
@json_option
@pass_updater
def history_cmd(updater: AutoUpdater, limit: int | None, as_json: bool) -> None:
    """Every check, install and rollback, oldest first."""
    records = updater.history(limit)
    lines = []
    for r in records:
        what = r.get("op", "?")
        keys = ("version", "from_version", "to_version", "via", "outcome", "reason", "bad_version",
                "rolled_back_version", "groups", "clock_note")
        detail = " ".join(f"{k}={r[k]}" for k in keys if r.get(k))
        lines.append(f"{r.get('ts', '')} {what} {detail}".strip())
    emit(as_json, records, "\n".join(lines) or "no history yet")


@cli.command("metric")
@click.argument("name")
@click.argument("value", type=float)
@json_option
@pass_updater
def metric_cmd(updater: AutoUpdater, name: str, value: float, as_json: bool) -> None:
    """Record an application metric (NAME like startup_ms, a number) for the next outcome report: the
    collector compares A/B groups by it (AutoUpdater.record_metric)."""
    kept = updater.record_metric(name, value)
    emit(as_json, {"name": name, "value": value, "kept": kept},
         f"{name} = {value:g}: " + ("kept for the next report" if kept else "not kept: reporting is off or has "
                                                                             "no collector"))


@cli.command("health-check")
@json_option
@pass_updater
def health_cmd(updater: AutoUpdater, as_json: bool) -> None:
    """Run the configured health check against the active version now."""
    result = updater.health_check()
    data = result.to_dict()
    emit(as_json, data, f"{'healthy' if result.healthy else 'UNHEALTHY'}: {data.get('reason') or ''}".strip())
    if not result.healthy:
        raise _fail(f"the running version is unhealthy: {data.get('reason') or 'no reason given'}", ExitCode.UNHEALTHY)


@cli.command("verify")
@click.option("--all", "all_slots", is_flag=True, help="Verify both slots (the previous version too).")
@json_option
@wait_option
@pass_updater
def verify_cmd(updater: AutoUpdater, all_slots: bool, as_json: bool, wait: bool) -> None:
    """Re-hash installed files against their signed manifest (finds local tampering)."""
    report = updater.verify(all_slots, wait=wait)
    if as_json:
        emit(True, report.to_dict(), "")
    else:
        for slot in report.slots:
            state = "ok" if slot.ok else f"{len(slot.problems)} problem(s)"
            click.echo(f"slot {slot.slot} ({slot.version or 'empty'}{', active' if slot.active else ''}): {state}")
            for problem in slot.problems:
                click.echo(f"  {problem}")
        if report.note:
            click.echo(f"note: {report.note}")
    if not report.ok:
        raise _fail("installed files differ from the signed release (run 'pinnacle-update repair')",
                    ExitCode.VERIFICATION)


@cli.command("repair")
@json_option
@wait_option
@pass_updater
def repair_cmd(updater: AutoUpdater, as_json: bool, wait: bool) -> None:
    """Reinstall the current version into the other slot from the repository and switch to it."""
    updater, shown = _with_progress(updater, as_json)
    result = updater.repair(wait=wait)
    shown.result(result.to_dict(), f"repaired {result.version} (now in slot {result.slot})")


@cli.command("recover")
@json_option
@wait_option
@pass_updater
def recover_cmd(updater: AutoUpdater, as_json: bool, wait: bool) -> None:
    """Resolve any interrupted install or rollback now."""
    report = updater.recover(wait=wait)
    human = "; ".join(report.actions) or "nothing to recover"
    emit(as_json, report.to_dict(), f"{human} (now {report.version or 'nothing installed'}, {report.state})")


@cli.command("doctor")
@json_option
@pass_updater
def doctor_cmd(updater: AutoUpdater, as_json: bool) -> None:
    """Check free space, permissions, clock, repository, config and the lock."""
    checks = updater.doctor()
    emit(as_json, [c.to_dict() for c in checks],
          "\n".join(f"{c.to_dict()['status']:>4}  {c.name}: {c.detail}" for c in checks))
    failed = [c.name for c in checks if not c.ok and not c.warning]
    if failed:
        raise _fail(f"{len(failed)} check(s) failed: {', '.join(failed)}", ExitCode.CHECKS_FAILED)


@cli.group("config")
def config_group() -> None:
    """Read or change config.toml."""


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@pass_updater
def config_set(updater: AutoUpdater, key: str, value: str) -> None:
    """Validate and store one setting (lists: space- or comma-separated)."""
    stored = updater.set_setting(key, value)
    click.echo(config_mod.dumps({key: _shown(stored)}).splitlines()[-1])  # the line as config.toml holds it


@config_group.command("show")
@json_option
@pass_updater
def config_show(updater: AutoUpdater, as_json: bool) -> None:
    """Print every setting as TOML (what config.toml holds, credentials redacted), or JSON."""
    cfg = updater.settings()
    data = {key: _shown(cfg[key]) for key in config_mod.KEYS}
    emit(as_json, data, config_mod.dumps(data).rstrip("\n"))


def _shown(value: Any) -> Any:
    """A setting as printed: credentials in a URL redacted (the file itself keeps them)."""
    return redact_text(value) if isinstance(value, str) else value


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_updater
def run_cmd(updater: AutoUpdater, args: tuple[str, ...]) -> None:
    """Exec the active slot's entry point with ARGS (apps need not know which slot is active)."""
    entry = updater.entry_point()
    if entry is None:
        raise ConfigError("the installed release names no entry point (publish with --entry-point)")
    try:
        os.execv(entry, [str(entry), *args])
    except OSError as exc:
        raise StateError(f"cannot run the entry point {entry}: {exc.strerror or exc}") from exc


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the agent to the network.")
@click.option("--port", default=8004, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--debug", is_flag=True, help="Log detail (requests, transport) to logs/auto_updater.log and stderr.")
@pass_updater
def serve_cmd(updater: AutoUpdater, host: str, port: int, debug: bool) -> None:
    """Run the update loop and serve the dashboard and REST API (needs the 'agent' extra)."""
    try:
        from .agent.app import serve
    except ImportError as exc:
        raise ConfigError(f"the agent needs the optional extra: pip install 'pinnacle-updates[agent]' ({exc})") from exc
    updater.settings()  # an uninitialised directory is refused before anything is created in it
    serve(updater.install_dir, host, port, debug=debug)


@cli.command("token")
@click.option("--rotate", is_flag=True, help="Replace the token (dashboards must paste the new one).")
@pass_updater
def token_cmd(updater: AutoUpdater, rotate: bool) -> None:
    """Print the agent's bearer token (DIR/agent.token, 0600), creating it if needed."""
    from .agent.token import load_or_create

    updater.settings()
    click.echo(load_or_create(updater.install_dir, rotate=rotate))


@cli.group("service")
def service_group() -> None:
    """Service files for this install directory: systemd, launchd, Windows Task Scheduler."""


@service_group.command("install")
@click.option("--kind", type=click.Choice(service_files.KINDS), default=None,
              help="Service manager (default: this machine's: systemd, launchd on macOS, windows).")
@click.option("--print", "to_stdout", is_flag=True, help="Print the files instead of writing them.")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write the files into (never /etc by itself); then run the steps printed.")
@click.option("--name", default=None, help="Base name of the units, labels and tasks (default from the directory).")
@click.option("--user", default=None, help="Account the jobs run as (default: the install directory's owner).")
@click.option("--executable", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The pinnacle-update the files start (default: the one running now).")
@json_option
@pass_updater
def service_install(updater: AutoUpdater, kind: str | None, to_stdout: bool, dest: Path | None, name: str | None,
                    user: str | None, executable: Path | None, as_json: bool) -> None:
    """Write (or --print) an agent service and a timer for unattended checks, for this install directory."""
    if to_stdout == (dest is not None):
        raise click.UsageError("give either --print or --dest DIR")
    cfg = updater.settings()  # an uninitialised directory is refused: the files would start nothing
    root = updater.install_dir
    kind = kind or service_files.default_kind()
    spec = service_files.ServiceSpec(
        install_dir=root,
        command=(str(executable.absolute()),) if executable else service_files.default_command(),
        name=name or service_files.default_name(root),
        check_interval=cfg.integer("check_interval"),
        user=user or service_files.default_user(root),
    )
    files = service_files.files_for(kind, spec)
    service_files.prepare(kind, spec)
    doc: dict[str, Any] = {"kind": kind, "name": spec.name, "command": list(spec.command)}
    if dest is None:
        doc["files"] = [{"name": f.name, "text": f.text} for f in files]
        emit(as_json, doc, "\n".join(f"==> {f.name} <==\n{f.text}" for f in files).rstrip("\n"))
        return
    doc["written"] = [str(p) for p in service_files.write(files, dest)]
    doc["next"] = service_files.next_steps(kind, spec, dest)
    emit(as_json, doc, "\n".join(["wrote:", *(f"  {p}" for p in doc["written"]), "next:",
                                  *(f"  {line}" for line in doc["next"])]))


def main() -> None:
    cli(prog_name="pinnacle-update")


if __name__ == "__main__":
    main()
