"""A throwaway PostgreSQL for the tests: Debian's ``postgresql`` binaries, a fresh cluster on 127.0.0.1.

PostgreSQL refuses to run as root, and CI runs as root; switching user (``runuser``/``setpriv``)
fails when the venv lives under a 0700 home. So as root every ``initdb``/``pg_ctl`` runs inside a
user namespace (``unshare --user``) that maps root to the ``postgres`` user: inside, the server is
not root; outside, its files belong to root, so a 0700 directory under the test's tmp works.
``fsync=off`` and friends: a test cluster needs no durability across power loss (the collector's
crash test kills the collector, not the database).

``find_binaries()`` is None when no PostgreSQL is installed: tests skip then, except under ``CI``,
where ``.ci/run`` installs it and a missing one is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.nginx_server import free_port

PG_BIN_ENV = "PINNACLE_PG_BIN"
USER = "postgres"


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``PINNACLE_PG_BIN``, else the newest
    ``/usr/lib/postgresql/<N>/bin``."""
    if os.environ.get(PG_BIN_ENV):
        path = Path(os.environ[PG_BIN_ENV])
        return path if (path / "pg_ctl").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam(USER)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = 65534
    return ["unshare", "--user", f"--map-user={uid}", f"--map-group={gid}"]


@dataclass(frozen=True)
class PgServer:
    port: int
    base: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def run_postgres(base: Path, binaries: Path, *, durable: bool = False) -> Iterator[PgServer]:
    """A cluster in ``base`` (created 0700) listening on a free port of 127.0.0.1; stopped at exit.
    ``durable`` keeps PostgreSQL's own fsync and commit settings (bench/collector.py measures with them)."""
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = base / "data"
    wrap = _as_server_user()
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run([*wrap, str(binaries / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "--no-sync",
                    "-E", "UTF8", "--locale=C"], **run)  # type: ignore[call-overload]
    for attempt in range(3):
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        started = subprocess.run([*wrap, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"),
                                  "-w", "-t", "60", "-o", options, "start"], capture_output=True, timeout=120)
        if started.returncode == 0:
            break
        if attempt == 2:  # the port was taken between the probe and the start, three times: give up
            log = (base / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}\n{log}")
    try:
        yield PgServer(port, base)
    finally:
        subprocess.run([*wrap, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
