"""Fleet feedback commands of ``pinnacle-release``: ``collector serve`` (the reports service) and
``fleet report`` (per-release health, from the database or from a running collector). The collector
modules are imported when a command runs, so the other commands never load an HTTP server or a
database driver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from pinnacle_updates.formats.cliutil import emit

from ..errors import KeyStoreError, ServerError
from .options import failure, json_option

DEFAULT_DB = "reports.sqlite"
DEFAULT_TOKEN_FILE = "collector.token"
DB_ENV = "PINNACLE_REPORTS_DB"
_F = TypeVar("_F", bound=Callable[..., Any])


def _db_option(default: str | None) -> Callable[[_F], _F]:
    return click.option("--db", "db_url", envvar=DB_ENV, default=default, show_default=default is not None,
                        metavar="PATH|URL",
                        help=f"Reports database: a SQLite file (created when missing) or postgresql://... "
                             f"(or {DB_ENV}).")


@click.group("collector")
def collector_group() -> None:
    """The fleet feedback collector: clients' outcome reports in, per-release health out."""


@collector_group.command("serve")
@_db_option(DEFAULT_DB)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8005, show_default=True, help="0 picks a free port.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_TOKEN_FILE,
              show_default=True, help="Read token for queries and the fleet page (created 0600 when missing).")
@click.option("--ingest-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require this ingest key from clients (or PINNACLE_INGEST_KEY); none by default.")
@click.option("--certfile", type=click.Path(dir_okay=False, exists=True), default=None, help="TLS certificate.")
@click.option("--keyfile", type=click.Path(dir_okay=False, exists=True), default=None, help="TLS private key.")
@click.option("--rate-per-address", type=click.FloatRange(0), default=50.0, show_default=True,
              help="Requests per second from one client address (burst: twice that); 0 turns it off.")
@click.option("--rate-per-install", type=click.FloatRange(0), default=1000.0, show_default=True,
              help="Reports per hour from one install id (burst: two full batches); 0 turns it off.")
@click.option("--repo", "repo_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A repository whose watch decisions the fleet page's rollout timeline shows (read only).")
@click.option("--verbose", is_flag=True, help="Log at INFO (refusals stay unlogged; database errors are WARNING).")
def serve_cmd(db_url: str, host: str, port: int, token_file: Path, ingest_key_file: Path | None,
              certfile: str | None, keyfile: str | None, rate_per_address: float, rate_per_install: float,
              repo_dir: Path | None, verbose: bool) -> None:
    """Serve the collector: POST /v1/reports, GET /v1/fleet/report, GET /v1/health, GET /openapi.json."""
    import logging

    from pinnacle_updates.formats import report as wire

    from ..collector import credentials
    from ..collector.app import Listen, Settings, serve
    from ..collector.ratelimit import Rate
    from ..collector.storage import open_storage

    if (certfile is None) != (keyfile is None):
        raise failure("give --certfile and --keyfile together")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        read_token=credentials.read_token(token_file),
        ingest_key=credentials.ingest_key(ingest_key_file),
        per_address=Rate(rate_per_address, 2 * rate_per_address),
        per_install=Rate(rate_per_install / 3600, 2.0 * wire.MAX_BATCH),
        repo_dir=repo_dir.absolute() if repo_dir is not None else None,
    )
    storage = open_storage(db_url)
    serve(storage, settings, Listen(host, port, certfile, keyfile))


@click.group("fleet")
def fleet_group() -> None:
    """What the fleet reports back (from the collector's database)."""


@fleet_group.command("report")
@_db_option(None)
@click.option("--collector", "collector_url", default=None, metavar="URL",
              help="Ask a running collector instead of opening the database (needs --token-file).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The collector's read token (with --collector).")
@click.option("--channel", default=None)
@click.option("--version", "version", default=None, help="One release's version.")
@click.option("--since", default=None, help="A UTC time like 2026-01-31T12:00:00Z, or a duration back: 90m, 7d.")
@click.option("--repo", "repo_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also list the rollout decisions watch signed in this repository, with their evidence.")
@json_option
def report_cmd(db_url: str | None, collector_url: str | None, token_file: Path | None, channel: str | None,
               version: str | None, since: str | None, repo_dir: Path | None, as_json: bool) -> None:
    """Per release: clients offered, attempted, succeeded, rolled back and failed by cause, success rate
    with a 95% interval, median and p95 install time, bytes saved by deltas, application metrics; A/B
    groups compared (success rate, install time, each metric: the difference with its interval); the
    version distribution."""
    from pinnacle_updates.formats.boundedjson import FormatError

    from ..collector.summary import Filters

    if (db_url is None) == (collector_url is None):
        raise failure("give --db PATH|URL or --collector URL (one of them)")
    now = datetime.now(UTC)
    try:
        filters = Filters.parse(channel, version, since, now)
    except FormatError as exc:
        raise failure(str(exc)) from None
    if collector_url is not None:
        if token_file is None:
            raise failure("--collector needs --token-file (the collector's read token)")
        document = _ask_collector(collector_url, token_file, channel, version, since)
    else:
        from ..collector.storage import open_storage

        assert db_url is not None
        with open_storage(db_url, create=False) as storage:
            document = storage.fleet_report(filters, now)
    if repo_dir is not None:
        from ..watch import decisions

        document["decisions"] = decisions(repo_dir, channel=channel, version=version)
    emit(as_json, document, render(document))


def _ask_collector(url: str, token_file: Path, channel: str | None, version: str | None,
                   since: str | None) -> dict[str, Any]:
    import httpx

    from pinnacle_updates.formats import fsutil
    from pinnacle_updates.formats.boundedjson import FormatError, load_object
    from pinnacle_updates.formats.redact import redact_url

    try:
        token = fsutil.read_regular(token_file, 4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot read the read token {token_file}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    params = {k: v for k, v in (("channel", channel), ("version", version), ("since", since)) if v is not None}
    shown = redact_url(url)
    try:
        response = httpx.get(url.rstrip("/") + "/v1/fleet/report", params=params, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ServerError(f"cannot reach the collector at {shown}: {type(exc).__name__}") from None
    try:
        data = load_object(response.content, "the collector's answer", max_bytes=256 << 20)
    except FormatError as exc:
        raise ServerError(f"{shown} answered HTTP {response.status_code}, not a fleet report ({exc})") from None
    if response.status_code == 401:
        raise KeyStoreError(f"the collector at {shown} refused the read token in {token_file}")
    if response.status_code != 200:
        message = str(data.get("error", ""))[:300].replace("\n", " ")
        raise ServerError(f"the collector at {shown} answered HTTP {response.status_code}: {message}")
    return data


# ----- the human table ------------------------------------------------------------------------------
def _rate(tally: dict[str, Any]) -> str:
    if tally["success_rate"] is None:
        return "-"
    low, high = tally["success_interval"]
    return f"{100 * tally['success_rate']:.1f}% [{100 * low:.1f}-{100 * high:.1f}]"


def _time(tally: dict[str, Any]) -> str:
    t = tally["install_time"]
    return "-" if t["median"] is None else f"{t['median']:.1f}/{t['p95']:.1f}s"


def _causes(counts: dict[str, int]) -> str:
    return ",".join(f"{cause}:{n}" for cause, n in counts.items()) or "-"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def render(document: dict[str, Any]) -> str:
    """The fleet report as text: one line per release and per A/B group, then the versions."""
    head = ("RELEASE", "OFFERED", "TRIED", "OK", "SUCCESS [95% CI]", "ROLLED BACK", "FAILED", "FALLBACK",
            "TIME p50/p95", "SAVED")
    rows: list[tuple[str, ...]] = []
    for rel in document["releases"]:
        name = f"{rel['channel']}/{rel['platform']}/{rel['version'] or '(none)'}"
        for label, tally in ((name, rel), *((f"  group {g or '(none)'}", t) for g, t in rel["groups"].items())):
            rows.append((label, str(tally["offered"]), str(tally["attempted"]), str(tally["succeeded"]),
                         _rate(tally), _causes(tally["rolled_back"]), _causes(tally["failed"]),
                         str(tally["delta_fallbacks"]), _time(tally), _size(tally["bytes_saved"])))
    lines = [_table(head, rows)] if rows else ["no install reports"]
    compared = [(rel, c) for rel in document["releases"] for c in rel.get("comparisons", ())]
    if compared:
        from ..core.canary import comparison_line

        lines += ["", "A/B GROUPS (difference with an always-valid 95% interval; a winner only on enough data)"]
        lines += [f"{rel['channel']}/{rel['platform']}/{rel['version']}: {comparison_line(c)}" for rel, c in compared]
    if document["versions"]:
        lines += ["", _table(("CHANNEL", "PLATFORM", "VERSION", "INSTALLS"),
                             [(v["channel"], v["platform"], v["version"], str(v["installs"]))
                              for v in document["versions"]])]
    if document.get("decisions"):
        lines += ["", _table(("AT", "RELEASE", "DECISION", "STATUS", "WHY"),
                             [(d["at"], f"{d['channel']}/{d['platform']}/{d['version']}", d["action"], d["status"],
                               d.get("reason", "")) for d in document["decisions"]])]
    return "\n".join(lines)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in (head, *rows))


COMMANDS: tuple[click.Command, ...] = (collector_group, fleet_group)
