"""Where the collector keeps reports: SQLite (the embedded default) or PostgreSQL, behind one small API.

    storage = open_storage("reports.sqlite")            # or "sqlite:///abs/path", "postgresql://..."
    accepted, duplicates = storage.ingest(reports)      # one transaction; True durability on return
    document = storage.fleet_report(Filters(channel="stable"))
    storage.close()

Tables (schema migration 1; ``schema_version`` records each migration applied, once, in a
transaction under a lock, so two collectors starting on one database do not race):

* ``reports``: every report as received, ``report_id`` the primary key (a resent report is a
  duplicate, counted and not stored twice).
* ``installs``: per ``install_id`` the latest report that carried ``current_version`` (heartbeats
  always do): channel, platform, version, last seen. The fleet's version distribution.
* ``release_installs``: which install ids named which release (``channel, platform, version,
  ab_group``), with the time of the latest such report: "clients offered".
* ``hourly``: per ``(channel, platform, version, ab_group, hour, kind, outcome, cause)`` the report
  count and the bytes downloaded and saved; ``hourly_time``: per the same release, group and hour, the
  committed installs' total duration as counts per ``core.stats`` bucket. The fleet report reads
  only these (and ``installs``), so it stays fast at millions of reports.
* ``hourly_metrics`` (migration 3, which also adds ``reports.metrics``, the report's metrics as JSON
  text, '' for none): per release, group, hour and application metric name (``formats.report``'s
  ``metrics``) the count, sum and sum of squares of its values: enough for a mean and a variance
  (``core.canary.compare_means``). A metric describes the version running when it was reported, so
  it counts for ``current_version`` (the release a report counts for when it names none).

The release a report counts for is its ``to_version``, except a manual rollback (``kind
rollback``), which counts against the release it left (``from_version``). Heartbeats feed only
``installs``. Aggregates are updated in the same transaction as the insert and only for reports
that were new, so they always equal a recount of ``reports``.

Durability: a call to ``ingest`` returns only after its transaction is on disk. SQLite runs in WAL
mode with ``synchronous=FULL`` (``NORMAL`` may lose the last commits on power loss, which breaks
"every answered report is stored"); PostgreSQL's default ``synchronous_commit=on`` does the same.
Failures of the database are ``StorageError`` (exit 5; the HTTP service answers 503).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pinnacle_updates.formats.redact import redact_text, redact_url
from pinnacle_updates.formats.report import Report

from ..core import stats
from ..errors import RepositoryStateError
from .summary import Filters, Rows, build_report

__all__ = ["SCHEMA_VERSION", "Filters", "Storage", "StorageError", "open_storage"]


class StorageError(RepositoryStateError):
    """The reports database cannot be opened, migrated, read or written."""


_DURATIONS = ("download", "apply", "health", "total")
_REPORT_COLUMNS = ("report_id", "install_id", "at", "received", "kind", "outcome", "cause", "cause_text", "channel",
                   "platform", "from_version", "to_version", "update_type", "bucket", "ab_group", "d_download",
                   "d_apply", "d_health", "d_total", "bytes_downloaded", "bytes_saved", "client_version",
                   "current_version", "metrics")
_KEY = "channel, platform, version, ab_group"

# Each migration: statements run in one transaction, then its number is recorded. Plain SQL both
# databases take alike (SQLite gives DOUBLE PRECISION the REAL affinity), but for ``{without_rowid}``:
# SQLite keeps those tables in their primary key's order, so a query reading a column beside the key
# (``last_at`` for ``--since``) scans instead of looking up every row (1.8 s -> 0.1 s at a million
# reports); PostgreSQL has no such clause. The two extra indexes serve the fleet report's GROUP BYs
# without a sort (2.8 s -> 0.6 s for the whole report at a million reports, SQLite). Never edit a
# released migration: add the next one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE reports (
            report_id TEXT PRIMARY KEY, install_id TEXT NOT NULL, at BIGINT NOT NULL, received BIGINT NOT NULL,
            kind TEXT NOT NULL, outcome TEXT NOT NULL, cause TEXT NOT NULL, cause_text TEXT NOT NULL,
            channel TEXT NOT NULL, platform TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL,
            update_type TEXT NOT NULL, bucket INTEGER NOT NULL, ab_group TEXT NOT NULL,
            d_download DOUBLE PRECISION, d_apply DOUBLE PRECISION, d_health DOUBLE PRECISION,
            d_total DOUBLE PRECISION, bytes_downloaded BIGINT NOT NULL, bytes_saved BIGINT NOT NULL,
            client_version TEXT NOT NULL, current_version TEXT NOT NULL)""",
        "CREATE INDEX reports_install_at ON reports (install_id, at)",
        """CREATE TABLE installs (
            install_id TEXT PRIMARY KEY, channel TEXT NOT NULL, platform TEXT NOT NULL,
            current_version TEXT NOT NULL, client_version TEXT NOT NULL, last_seen BIGINT NOT NULL)""",
        f"""CREATE TABLE release_installs (
            channel TEXT NOT NULL, platform TEXT NOT NULL, version TEXT NOT NULL, ab_group TEXT NOT NULL,
            install_id TEXT NOT NULL, last_at BIGINT NOT NULL, PRIMARY KEY ({_KEY}, install_id)){{without_rowid}}""",
        "CREATE INDEX release_installs_release ON release_installs (channel, platform, version, install_id, last_at)",
        f"""CREATE TABLE hourly (
            channel TEXT NOT NULL, platform TEXT NOT NULL, version TEXT NOT NULL, ab_group TEXT NOT NULL,
            hour BIGINT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL, cause TEXT NOT NULL,
            reports BIGINT NOT NULL, bytes_downloaded BIGINT NOT NULL, bytes_saved BIGINT NOT NULL,
            PRIMARY KEY ({_KEY}, hour, kind, outcome, cause))""",
        f"""CREATE TABLE hourly_time (
            channel TEXT NOT NULL, platform TEXT NOT NULL, version TEXT NOT NULL, ab_group TEXT NOT NULL,
            hour BIGINT NOT NULL, bucket INTEGER NOT NULL, reports BIGINT NOT NULL,
            PRIMARY KEY ({_KEY}, hour, bucket)){{without_rowid}}""",
        f"CREATE INDEX hourly_time_bucket ON hourly_time ({_KEY}, bucket, hour, reports)",
    ),
    # The fleet page's latest rollbacks and failures: newest first without reading every report.
    ("CREATE INDEX reports_problems ON reports (at) WHERE outcome IN ('rolled_back', 'failed')",),
    # Application metrics (issue 20's A/B groups): kept raw with the report, summed per hour.
    (
        "ALTER TABLE reports ADD COLUMN metrics TEXT NOT NULL DEFAULT ''",
        f"""CREATE TABLE hourly_metrics (
            channel TEXT NOT NULL, platform TEXT NOT NULL, version TEXT NOT NULL, ab_group TEXT NOT NULL,
            hour BIGINT NOT NULL, name TEXT NOT NULL, n BIGINT NOT NULL, total DOUBLE PRECISION NOT NULL,
            squares DOUBLE PRECISION NOT NULL, PRIMARY KEY ({_KEY}, hour, name))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# The aggregate upserts, shared by both databases: table, column types (PostgreSQL casts each JSON
# row's fields to them), what a conflict does (``{greatest}`` is MAX on SQLite, GREATEST on PostgreSQL). Rows come
# from ``Additions`` in the tables' column order, keys unique within a batch (PostgreSQL refuses to
# update one row twice in one statement).
_TEXT4 = ("text",) * 4
_UPSERTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("installs", ("text",) * 5 + ("bigint",),
     "ON CONFLICT (install_id) DO UPDATE SET channel = excluded.channel, platform = excluded.platform, "
     "current_version = excluded.current_version, client_version = excluded.client_version, "
     "last_seen = excluded.last_seen WHERE excluded.last_seen >= installs.last_seen"),
    ("release_installs", (*_TEXT4, "text", "bigint"),
     f"ON CONFLICT ({_KEY}, install_id) DO UPDATE SET "
     "last_at = {greatest}(release_installs.last_at, excluded.last_at)"),
    ("hourly", (*_TEXT4, "bigint", "text", "text", "text", "bigint", "bigint", "bigint"),
     f"ON CONFLICT ({_KEY}, hour, kind, outcome, cause) DO UPDATE SET reports = hourly.reports + "
     "excluded.reports, bytes_downloaded = hourly.bytes_downloaded + excluded.bytes_downloaded, "
     "bytes_saved = hourly.bytes_saved + excluded.bytes_saved"),
    ("hourly_time", (*_TEXT4, "bigint", "integer", "bigint"),
     f"ON CONFLICT ({_KEY}, hour, bucket) DO UPDATE SET reports = hourly_time.reports + excluded.reports"),
    ("hourly_metrics", (*_TEXT4, "bigint", "text", "bigint", "float8", "float8"),
     f"ON CONFLICT ({_KEY}, hour, name) DO UPDATE SET n = hourly_metrics.n + excluded.n, "
     "total = hourly_metrics.total + excluded.total, squares = hourly_metrics.squares + excluded.squares"),
)


# ----- what one batch adds ---------------------------------------------------------------------------
def release_of(report: Report) -> str:
    """The version a report counts for (see the module doc)."""
    return report.from_version if report.kind == "rollback" else report.to_version


@dataclass
class Additions:
    """The rows one batch of new reports adds, keys unique and sorted (one lock order for every
    writer: concurrent PostgreSQL transactions then never deadlock on aggregate rows)."""

    reports: list[tuple[Any, ...]]
    installs: list[tuple[Any, ...]]
    release_installs: list[tuple[Any, ...]]
    hourly: list[tuple[Any, ...]]
    hourly_time: list[tuple[Any, ...]]
    hourly_metrics: list[tuple[Any, ...]]

    @classmethod
    def of(cls, reports: Iterable[Report], received: int) -> Additions:
        rows = []
        installs: dict[str, tuple[Any, ...]] = {}
        offered: dict[tuple[Any, ...], int] = {}
        hourly: dict[tuple[Any, ...], list[int]] = {}
        timing: dict[tuple[Any, ...], int] = {}
        metrics: dict[tuple[Any, ...], list[float]] = {}
        for r in reports:
            at = int(r.at.timestamp())
            rows.append((r.report_id, r.install_id, at, received, r.kind, r.outcome, r.cause, r.cause_text,
                         r.channel, r.platform, r.from_version, r.to_version, r.update_type, r.bucket, r.ab_group,
                         *(r.durations.get(k) for k in _DURATIONS), r.bytes_downloaded, r.bytes_saved,
                         r.client_version, r.current_version,
                         json.dumps(r.metrics, sort_keys=True, separators=(",", ":")) if r.metrics else ""))
            if r.current_version and (r.install_id not in installs or installs[r.install_id][5] <= at):
                installs[r.install_id] = (r.install_id, r.channel, r.platform, r.current_version, r.client_version,
                                          at)
            if r.metrics:
                running = (r.channel, r.platform, r.current_version or release_of(r), r.ab_group, at - at % 3600)
                for name, value in r.metrics.items():
                    sums_ = metrics.setdefault((*running, name), [0, 0.0, 0.0])
                    sums_[0] += 1
                    sums_[1] += value
                    sums_[2] += value * value
            if r.kind == "heartbeat":
                continue
            key = (r.channel, r.platform, release_of(r), r.ab_group)
            offered[(*key, r.install_id)] = max(at, offered.get((*key, r.install_id), at))
            hour = at - at % 3600
            sums = hourly.setdefault((*key, hour, r.kind, r.outcome, r.cause), [0, 0, 0])
            sums[0] += 1
            sums[1] += r.bytes_downloaded
            sums[2] += r.bytes_saved
            total = r.durations.get("total")
            if r.kind == "install" and r.outcome == "committed" and total is not None:
                bucket_key = (*key, hour, stats.bucket_of(total))
                timing[bucket_key] = timing.get(bucket_key, 0) + 1
        return cls(
            reports=rows,
            installs=sorted(installs.values()),
            release_installs=sorted((*k, at) for k, at in offered.items()),
            hourly=sorted((*k, *v) for k, v in hourly.items()),
            hourly_time=sorted((*k, n) for k, n in timing.items()),
            hourly_metrics=sorted((*k, *v) for k, v in metrics.items()),
        )


def _unique(reports: Sequence[Report]) -> list[Report]:
    """The batch without repeats of a report id inside it (the first is kept)."""
    seen: set[str] = set()
    return [r for r in reports if not (r.report_id in seen or seen.add(r.report_id))]  # type: ignore[func-returns-value]


# ----- the interface ---------------------------------------------------------------------------------
@dataclass
class _Job:
    """One ``ingest`` call's batch waiting for a group commit, and what became of it."""

    batch: list[Report]
    accepted: int | None = None
    error: StorageError | None = None


class Storage(ABC):
    """A reports database. Thread-safe: the HTTP service calls it from worker threads."""

    url: str
    """Where it is, credentials redacted (for messages and logs)."""

    def __init__(self) -> None:
        self._writer = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []

    def ingest(self, reports: Sequence[Report]) -> tuple[int, int]:
        """Store ``reports`` in one transaction: ``(accepted, duplicates)``; a report whose id is
        already stored (or repeated in the batch) is a duplicate and changes nothing. Returns once
        committed durably; ``StorageError`` otherwise, and then nothing of the batch is stored."""
        # Group commit: batches that arrive while another group is written wait for the writer
        # lock, and whoever takes it next writes every batch queued by then in one transaction: one
        # commit (one fsync) and one set of aggregate upserts for all of them, which is what limits
        # both databases here. Each batch keeps its own counts; a transaction that fails fails every
        # batch in it, and none of them is stored.
        job = _Job(_unique(reports))
        with self._queue_lock:
            self._queue.append(job)
        with self._writer:
            if job.accepted is None and job.error is None:
                with self._queue_lock:
                    jobs, self._queue = self._queue, []
                try:
                    counts = self._store([j.batch for j in jobs])
                except Exception as exc:  # every waiting request hears of it, not only this thread's
                    error = exc if isinstance(exc, StorageError) else StorageError(
                        f"cannot store reports in {self.url}: {type(exc).__name__}")
                    for j in jobs:
                        j.error = error
                else:
                    for j, count in zip(jobs, counts, strict=True):
                        j.accepted = count
        if job.error is not None:
            raise job.error
        assert job.accepted is not None
        return job.accepted, len(reports) - job.accepted

    @abstractmethod
    def _store(self, batches: list[list[Report]]) -> list[int]:
        """Write ``batches`` (each without repeated ids) in one durable transaction: the number of
        new reports in each, a report id in two batches new in the first only; ``StorageError``
        and nothing stored otherwise."""

    def fleet_report(self, filters: Filters | None = None, now: datetime | None = None) -> dict[str, Any]:
        """The fleet report document (see ``summary.build_report``) from the aggregates."""
        filters = filters or Filters()
        rows = self._read(_QUERIES, filters)
        return build_report(rows, filters, now or datetime.now(UTC))

    def activity(self, filters: Filters | None = None) -> Rows:
        """The fleet page's rows (``page.activity``): install outcomes per release and hour, and the
        latest rollbacks and failures with their cause text."""
        return self._read(_ACTIVITY, filters or Filters())

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows per table (tests, ``collector serve`` start-up line); a full count, not for hot paths."""

    @abstractmethod
    def ping(self) -> None:
        """``StorageError`` unless the database answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the object is unusable afterwards."""

    @abstractmethod
    def _read(self, queries: dict[str, str], filters: Filters) -> Rows: ...

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Read queries with ``{p}`` for the driver's placeholder and ``{where}`` for the filters; the
# filters' values are bound in the order ``Filters.sql`` returns them.
_QUERIES = {
    "hourly": f"SELECT {_KEY}, kind, outcome, cause, SUM(reports), SUM(bytes_downloaded), SUM(bytes_saved) "
              f"FROM hourly {{where}} GROUP BY {_KEY}, kind, outcome, cause",
    "timing": f"SELECT {_KEY}, bucket, SUM(reports) FROM hourly_time {{where}} GROUP BY {_KEY}, bucket",
    "metrics": f"SELECT {_KEY}, name, SUM(n), SUM(total), SUM(squares) FROM hourly_metrics {{where}} "
               f"GROUP BY {_KEY}, name",
    "offered": f"SELECT {_KEY}, COUNT(*) FROM release_installs {{where}} GROUP BY {_KEY}",
    "offered_release": "SELECT channel, platform, version, COUNT(DISTINCT install_id) FROM release_installs "
                       "{where} GROUP BY channel, platform, version",
    "versions": "SELECT channel, platform, current_version, COUNT(*) FROM installs {where} "
                "GROUP BY channel, platform, current_version",
}
_ACTIVITY = {
    "hours": "SELECT channel, platform, version, hour, outcome, SUM(reports) FROM hourly {where} "
             "GROUP BY channel, platform, version, hour, kind, outcome HAVING kind = 'install'",
    # The version a report counts for (``release_of``) as a column, so the filters apply to it.
    "problems": "SELECT at, channel, platform, version, kind, outcome, cause, cause_text FROM (SELECT *, "
                "CASE WHEN kind = 'rollback' THEN from_version ELSE to_version END AS version FROM reports "
                "WHERE outcome IN ('rolled_back', 'failed')) AS problems {where} ORDER BY at DESC LIMIT 50",
}
_TIME_COLUMN = {"hours": "hour", "problems": "at", "hourly": "hour", "timing": "hour", "metrics": "hour",
                "offered": "last_at", "offered_release": "last_at", "versions": "last_seen"}


def _where(name: str, filters: Filters, placeholder: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    values: list[Any] = []
    if filters.channel is not None:
        clauses.append(f"channel = {placeholder}")
        values.append(filters.channel)
    if filters.version is not None and name != "versions":
        clauses.append(f"version = {placeholder}")
        values.append(filters.version)
    if filters.since is not None:
        since = int(filters.since.timestamp())
        if _TIME_COLUMN[name] == "hour":
            since -= since % 3600  # aggregates are per hour: the hour holding ``since`` is included
        clauses.append(f"{_TIME_COLUMN[name]} >= {placeholder}")
        values.append(since)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), values


def _prepare(queries: dict[str, str], filters: Filters, placeholder: str) -> dict[str, tuple[str, list[Any]]]:
    out = {}
    for name, sql in queries.items():
        where, values = _where(name, filters, placeholder)
        out[name] = (sql.format(where=where), values)
    return out


# ----- SQLite ----------------------------------------------------------------------------------------
class SQLiteStorage(Storage):
    """One file, WAL mode, ``synchronous=FULL``; one writer connection behind a lock (SQLite has one
    writer anyway), a fresh reader connection per query (WAL readers do not block the writer)."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.url = str(path)
        super().__init__()
        self._lock = threading.Lock()
        if not create and not path.is_file():
            raise StorageError(f"no reports database at {path}")
        if not path.parent.is_dir():
            raise StorageError(f"cannot create the reports database {path}: {path.parent} is not a directory")
        self._conn = self._connect()
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise StorageError(f"cannot open the reports database {path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the reports database {self.path}: {exc}") from None
        return conn

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # the write lock: a second collector waits here
            try:
                self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                                   "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
                current = self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
                if current > SCHEMA_VERSION:
                    raise StorageError(f"the reports database {self.path} has schema {current}, newer than this "
                                       f"collector's {SCHEMA_VERSION}: upgrade pinnacle-updates")
                for number in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[number - 1]:
                        self._conn.execute(statement.replace("{without_rowid}", " WITHOUT ROWID"))
                    self._conn.execute("INSERT INTO schema_version VALUES (?, ?)", (number, int(time.time())))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _store(self, batches: list[list[Report]]) -> list[int]:
        accepted = []
        with self._lock:  # the connection's lock (ping and close use it too)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    received = int(time.time())
                    for batch in batches:  # in order: a report id in two batches is new in the first only
                        new = self._new(batch)
                        self._write(Additions.of(new, received))
                        accepted.append(len(new))
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"cannot store reports in {self.path}: {exc}") from None
        return accepted

    def _new(self, batch: list[Report]) -> list[Report]:
        known: set[str] = set()
        ids = [r.report_id for r in batch]
        for start in range(0, len(ids), 500):  # SQLite binds at most 32,766 values; a batch is <= 500
            chunk = ids[start:start + 500]
            sql = f"SELECT report_id FROM reports WHERE report_id IN ({','.join('?' * len(chunk))})"
            known.update(row[0] for row in self._conn.execute(sql, chunk))
        return [r for r in batch if r.report_id not in known]

    def _write(self, add: Additions) -> None:
        c = self._conn
        c.executemany(f"INSERT INTO reports ({', '.join(_REPORT_COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(_REPORT_COLUMNS))})", add.reports)
        for table, types, conflict in _UPSERTS:
            c.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(types))}) "
                          + conflict.format(greatest="MAX"), getattr(add, table))

    def _read(self, queries: dict[str, str], filters: Filters) -> Rows:
        try:
            conn = sqlite3.connect(self.path.absolute().as_uri() + "?mode=ro", uri=True, timeout=30)
            try:
                return {name: conn.execute(sql, values).fetchall()
                        for name, (sql, values) in _prepare(queries, filters, "?").items()}
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the reports database {self.path}: {exc}") from None

    def counts(self) -> dict[str, int]:
        return self._read_counts(lambda sql: self._conn.execute(sql).fetchone()[0])

    @staticmethod
    def _read_counts(one: Callable[[str], int]) -> dict[str, int]:
        return {t: int(one(f"SELECT COUNT(*) FROM {t}"))
                for t in ("reports", "installs", "release_installs", "hourly", "hourly_time", "hourly_metrics",
                          "schema_version")}

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"the reports database {self.path} does not answer: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ----- PostgreSQL ------------------------------------------------------------------------------------
class PostgresStorage(Storage):
    """psycopg 3 with a psycopg-pool pool; a batch is one statement per table (rows as one JSON
    parameter: ``RETURNING`` tells which reports were new even under concurrent writers), the
    aggregate upserts pipelined."""

    POOL_MAX = 8
    _PG_TYPES: ClassVar[dict[str, str]] = {
        "at": "bigint", "received": "bigint", "bucket": "integer", "bytes_downloaded": "bigint",
        "bytes_saved": "bigint", "d_download": "float8", "d_apply": "float8", "d_health": "float8",
        "d_total": "float8",
    }

    def __init__(self, url: str, *, connect_timeout: float = 10.0, wait_timeout: float = 3.0) -> None:
        super().__init__()
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise StorageError("a PostgreSQL database needs psycopg: pip install 'pinnacle-updates[collector]'") \
                from None
        self._psycopg = psycopg
        self.url = redact_url(url)
        # The pool retries a failing connection in the background and logs each attempt; a first
        # plain connection turns a wrong URL, password or host into one error at once instead.
        logging.getLogger("psycopg").addHandler(logging.NullHandler())
        try:
            psycopg.connect(url, connect_timeout=max(1, int(connect_timeout))).close()
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to the reports database {self.url}: {_pg_message(exc)}") from None
        # ``timeout``: how long a request waits for a pooled connection; a database that went away is
        # then a 503 within seconds, not a client held for the whole connect timeout.
        # ``check``: a pooled connection is tested before it is lent, so connections a database restart
        # (or an administrator) ended are replaced instead of failing one request each.
        self._pool = ConnectionPool(url, min_size=1, max_size=self.POOL_MAX, open=False, timeout=wait_timeout,
                                    kwargs={"connect_timeout": max(1, int(connect_timeout))},
                                    check=ConnectionPool.check_connection)
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StorageError(f"cannot connect to the reports database {self.url} "
                               f"within {connect_timeout:g} s") from None
        except psycopg.Error as exc:
            self._pool.close()
            raise StorageError(f"cannot connect to the reports database {self.url}: {_pg_message(exc)}") from None
        self._insert_reports = self._insert_sql()
        self._run(self._migrate)

    def _run(self, work: Callable[[Any], Any], attempts: int = 3) -> Any:
        """``work(connection)`` in one transaction; retried when PostgreSQL aborted it for a conflict."""
        psycopg = self._psycopg
        from psycopg_pool import PoolTimeout

        for attempt in range(attempts):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    return work(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == attempts - 1:
                    raise StorageError(f"the reports database {self.url} kept aborting a write") from None
            except PoolTimeout:
                raise StorageError(f"no connection to the reports database {self.url}") from None
            except psycopg.Error as exc:
                raise StorageError(f"the reports database {self.url} failed: {_pg_message(exc)}") from None
        raise AssertionError("unreachable")

    def _migrate(self, conn: Any) -> None:
        # One migrator at a time across processes; the lock ends with the transaction.
        conn.execute("SELECT pg_advisory_xact_lock(7316624)")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT "
                     "NOT NULL)")
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise StorageError(f"the reports database {self.url} has schema {current}, newer than this collector's "
                               f"{SCHEMA_VERSION}: upgrade pinnacle-updates")
        for number in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement.replace("{without_rowid}", ""))
            conn.execute("INSERT INTO schema_version VALUES (%s, %s)", (number, int(time.time())))

    def _insert_sql(self) -> str:
        types = [self._PG_TYPES.get(c, "text") for c in _REPORT_COLUMNS]
        return (f"INSERT INTO reports ({', '.join(_REPORT_COLUMNS)}) SELECT {_json_rows(types)} "
                "ON CONFLICT (report_id) DO NOTHING RETURNING report_id")

    def _store(self, batches: list[list[Report]]) -> list[int]:
        merged = _unique([r for batch in batches for r in batch])

        def work(conn: Any) -> set[str]:
            received = int(time.time())
            every = Additions.of(merged, received)
            with conn.cursor() as cur:
                cur.execute(self._insert_reports, (json.dumps(every.reports),))
                new_ids = {row[0] for row in cur.fetchall()}
            # Usually every report is new and the aggregates of all of them are the ones to add.
            fresh = every if len(new_ids) == len(merged) else \
                Additions.of([r for r in merged if r.report_id in new_ids], received)
            self._upsert(conn, fresh)
            return new_ids

        new_ids: set[str] = self._run(work)
        accepted = []
        for batch in batches:  # a report id in two batches counts for the first
            fresh = [r.report_id for r in batch if r.report_id in new_ids]
            new_ids.difference_update(fresh)
            accepted.append(len(fresh))
        return accepted

    @staticmethod
    def _upsert(conn: Any, add: Additions) -> None:
        # Pipeline mode: the four statements go out together, one round trip instead of four.
        with conn.pipeline(), conn.cursor() as cur:
            for table, types, conflict in _UPSERTS:
                rows = getattr(add, table)
                if rows:
                    cur.execute(f"INSERT INTO {table} SELECT {_json_rows(types)} "
                                + conflict.format(greatest="GREATEST"), (json.dumps(rows),))

    def _read(self, queries: dict[str, str], filters: Filters) -> Rows:
        def work(conn: Any) -> Rows:
            return {name: [tuple(row) for row in conn.execute(sql, values).fetchall()]
                    for name, (sql, values) in _prepare(queries, filters, "%s").items()}

        rows: Rows = self._run(work)
        return rows

    def counts(self) -> dict[str, int]:
        def work(conn: Any) -> dict[str, int]:
            return SQLiteStorage._read_counts(lambda sql: conn.execute(sql).fetchone()[0])

        counts: dict[str, int] = self._run(work)
        return counts

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def close(self) -> None:
        self._pool.close()


def _json_rows(types: Sequence[str]) -> str:
    """``SELECT``'s columns and source for rows sent as one JSON parameter (a list of row lists):
    one ``json.dumps`` costs the collector half the CPU of psycopg dumping an array per column, and
    jsonb reads each element once."""
    columns = ", ".join(f"(r->>{i})::{t}" for i, t in enumerate(types))
    return f"{columns} FROM jsonb_array_elements(%s::jsonb) r"


def _pg_message(exc: Exception) -> str:
    """psycopg's message, first line only, credentials out (a connection error may quote the URL)."""
    lines = str(exc).strip().splitlines()
    return redact_text(lines[0] if lines else type(exc).__name__)


def open_storage(url: str, *, create: bool = True) -> Storage:
    """The database at ``url``: ``postgresql://`` / ``postgres://`` URLs (psycopg 3 and a pool),
    ``sqlite:///path`` or a plain file path (created with its schema when missing, unless ``create``
    is False: a query of a mistyped path must not answer from a new empty file). Migrations run on
    open. ``StorageError`` when it cannot be opened."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStorage(url)
    if url.startswith("sqlite://"):
        url = url.removeprefix("sqlite://")
    if not url or url.startswith(("http://", "https://")) or "://" in url:
        raise StorageError(f"not a reports database: {redact_url(url)!r} (a file path, sqlite:///PATH or "
                           "postgresql://...)")
    return SQLiteStorage(Path(url), create=create)
