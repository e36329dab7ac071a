"""The collector as a real process over HTTP on 127.0.0.1, on SQLite and PostgreSQL: a batch is stored
and a resend is a duplicate; every bad input gets its 4xx with a one-line error and stores nothing;
the read endpoint is behind the token and gives what `fleet report --json` gives."""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.report import MAX_BATCH_BYTES, encode_batch
from pinnacle_updates.repo_tools.cli import cli
from pinnacle_updates.repo_tools.collector.storage import open_storage
from pinnacle_updates.repo_tools.errors import KeyStoreError, ReleaseError, RepositoryStateError, ServerError
from tests.client.test_transport_tls import pki  # noqa: F401 - the fixture
from tests.collector.conftest import make_report
from tests.conftest import run_cli
from tests.formats.test_report import body as batch


def release_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``pinnacle-release ARGS`` in this process (the same group, error handling and exit codes as the
    installed command, without a Python start-up per case): exit code and stderr."""
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stderr


def rows(db: str) -> int:
    with open_storage(db) as storage:
        return storage.counts()["reports"]


def wire(**changes: Any) -> dict[str, Any]:
    d = make_report().to_dict()
    d.update(changes)
    return d


def test_ingest_and_resend(db_url: str, collector_factory: Any) -> None:
    collector = collector_factory(db_url)
    body = encode_batch([make_report() for _ in range(20)])
    first = collector.post(body)
    assert (first.status_code, first.json()) == (200, {"accepted": 20, "duplicates": 0})
    again = collector.post(body)
    assert (again.status_code, again.json()) == (200, {"accepted": 0, "duplicates": 20})
    assert rows(db_url) == 20
    health = collector.client.get(f"{collector.url}/v1/health")
    assert (health.status_code, health.json()["status"]) == (200, "ok")


def raw_post(url: str, headers: list[str], pieces: Iterator[bytes]) -> bytes:
    """POST over a plain socket, sending ``pieces`` until the collector answers (it may answer early
    and close: an HTTP client library would report the reset instead of the answer)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall("\r\n".join(["POST /v1/reports HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]).encode())
        for piece in pieces:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(piece)
            except OSError:
                break
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    return answer


def _chunks(total: int) -> Iterator[bytes]:
    piece = b" " * 65536
    for _ in range(total // len(piece)):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


BAD = [
    ("malformed JSON", b'{"schema": 1, "reports": [', {}, 400, "not valid JSON"),
    ("not an object", b"[1, 2]", {}, 400, "expected a JSON object"),
    ("empty body", b"", {}, 400, "not valid JSON"),
    ("no reports", batch(), {}, 400, "0 reports"),
    ("wrong type", batch(wire(bucket="7")), {}, 400, "report field bucket: expected an integer"),
    ("boolean as integer", batch(wire(bytes_saved=True)), {}, 400, "report field bytes_saved"),
    ("unknown field", batch(wire(hostname="laptop")), {}, 400, "unknown field 'hostname'"),
    ("unknown batch field", b'{"schema": 1, "reports": [], "x": 1}', {}, 400, "unknown field 'x'"),
    ("far future", batch(wire(at="2999-01-01T00:00:00Z")), {}, 400, "ahead of the collector's clock"),
    ("too old", batch(wire(at="2001-01-01T00:00:00Z")), {}, 400, "30 days old"),
    ("inconsistent", batch(wire(outcome="failed", cause="")), {}, 400, "report field cause"),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, {}, 400, "nested deeper"),
    ("wrong content type", batch(wire()), {"Content-Type": "text/plain"}, 415, "application/json"),
    ("no content type", batch(wire()), {"Content-Type": ""}, 415, "application/json"),
]


def test_bad_input_is_a_4xx_and_changes_nothing(db_url: str, collector_factory: Any) -> None:
    collector = collector_factory(db_url)
    collector.post(encode_batch([make_report()]))
    for name, body, headers, status, message in BAD:
        response = collector.post(body, headers)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert message in error and "\n" not in error, (name, error)
    json_type = "Content-Type: application/json"
    declared = raw_post(collector.url, [json_type, f"Content-Length: {MAX_BATCH_BYTES + 1}"],
                        iter([b" " * (MAX_BATCH_BYTES + 1)]))
    assert declared.startswith(b"HTTP/1.1 413") and b"byte limit" in declared, declared[:300]
    streamed = raw_post(collector.url, [json_type, "Transfer-Encoding: chunked"], _chunks(4 * MAX_BATCH_BYTES))
    assert streamed.startswith(b"HTTP/1.1 413") and b"byte limit" in streamed, streamed[:300]  # counted
    # One bad report spoils its batch: the good one beside it is not stored either.
    assert collector.post(batch(wire(), wire(kind="nap"))).status_code == 400
    assert rows(db_url) == 1


def test_ingest_key(tmp_path: Path, collector_factory: Any) -> None:
    db = str(tmp_path / "r.sqlite")
    key = "k" * 24
    collector = collector_factory(db, env={"PINNACLE_INGEST_KEY": key})
    body = encode_batch([make_report()])
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": f"Basic {key}"}):
        response = collector.post(body, headers)
        assert response.status_code == 401 and "ingest key" in response.json()["error"]
    assert rows(db) == 0
    assert collector.post(body, {"Authorization": f"Bearer {key}"}).json() == {"accepted": 1, "duplicates": 0}


def test_a_flood_from_one_install_id_is_cut_off(tmp_path: Path, collector_factory: Any) -> None:
    db = str(tmp_path / "r.sqlite")
    collector = collector_factory(db, "--rate-per-install", "10")
    install = "f" * 32
    answers = [collector.post(encode_batch([make_report(install_id=install) for _ in range(500)]))
               for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1 and "install id" in answers[2].json()["error"]
    assert rows(db) == 1000
    # Other clients are not held up by it.
    assert collector.post(encode_batch([make_report()])).status_code == 200


def test_a_flood_from_one_address_is_cut_off(tmp_path: Path, collector_factory: Any) -> None:
    collector = collector_factory(str(tmp_path / "r.sqlite"), "--rate-per-address", "1")
    statuses = [collector.post(encode_batch([make_report()])).status_code for _ in range(5)]
    assert statuses[:2] == [200, 200] and 429 in statuses
    refused = collector.post(encode_batch([make_report()]))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"


def test_read_endpoint_needs_the_token_and_matches_the_cli(db_url: str, collector_factory: Any,
                                                           tmp_path: Path) -> None:
    collector = collector_factory(db_url)
    token_file = tmp_path / "c0" / "collector.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    collector.post(encode_batch([make_report(), make_report(outcome="rolled_back", cause="health_check"),
                                 make_report(channel="beta")]))
    url = f"{collector.url}/v1/fleet/report"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": collector.token}):
        assert collector.client.get(url, headers=headers).status_code == 401
    served = collector.report(channel="stable")
    assert served.status_code == 200
    cli = json.loads(run_cli("pinnacle-release", "fleet", "report", "--db", db_url, "--channel", "stable",
                             "--json").stdout)
    remote = json.loads(run_cli("pinnacle-release", "fleet", "report", "--collector", collector.url,
                                "--token-file", str(token_file), "--channel", "stable", "--json").stdout)
    for doc in (served.json(), cli, remote):
        doc.pop("generated_at")
    assert cli == remote
    assert served.json().keys() == cli.keys() | {"generated_at"}
    release = cli["releases"][0]
    assert (release["attempted"], release["succeeded"], release["rolled_back"]) == (2, 1, {"health_check": 1})
    for params, message in (({"since": "soon"}, "since"), ({"channel": "../x"}, "channel"),
                            ({"version": "one"}, "PEP 440"), ({"limit": "3"}, "unknown query parameter")):
        bad = collector.report(**params)
        assert bad.status_code == 400 and message in bad.json()["error"], params


def test_unknown_routes_and_methods(tmp_path: Path, collector_factory: Any) -> None:
    collector = collector_factory(str(tmp_path / "r.sqlite"))
    missing = collector.client.get(f"{collector.url}/v2/everything")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = collector.client.get(f"{collector.url}/v1/reports")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_serve_refusals_are_one_line(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.token"
    leaky.write_text("t" * 40)
    os.chmod(leaky, 0o644)
    cases = [
        (["--db", "/nonexistent-dir/r.sqlite"], RepositoryStateError.exit_code, "not a directory"),
        (["--db", "postgresql://u:hunter2@127.0.0.1:1/x"], RepositoryStateError.exit_code, "cannot connect"),
        (["--db", str(tmp_path / "r.sqlite"), "--token-file", str(leaky)], KeyStoreError.exit_code,
         "readable by other users"),
        (["--db", str(tmp_path / "r.sqlite"), "--certfile", str(leaky)], ExitCode.USAGE, "--certfile and --keyfile"),
    ]
    for args, code, message in cases:
        status, stderr = release_cli("collector", "serve", "--port", "0",
                                     "--token-file", str(tmp_path / "collector.token"), *args)
        assert status == code, (args, stderr)
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert "hunter2" not in stderr and "Traceback" not in stderr


def test_fleet_report_refusals(tmp_path: Path, collector_factory: Any) -> None:
    db = str(tmp_path / "r.sqlite")
    collector = collector_factory(db)
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-at-all")
    cases = [
        ([], ExitCode.USAGE, "give --db"),
        (["--db", db, "--collector", collector.url], ExitCode.USAGE, "give --db"),
        (["--collector", collector.url], ExitCode.USAGE, "--token-file"),
        (["--collector", collector.url, "--token-file", str(wrong)], KeyStoreError.exit_code, "refused the read token"),
        (["--collector", "http://127.0.0.1:1", "--token-file", str(wrong)], ServerError.exit_code,
         "cannot reach the collector"),
        (["--db", db, "--since", "yesterday"], ExitCode.USAGE, "since"),
        (["--db", str(tmp_path / "typo.sqlite")], RepositoryStateError.exit_code, "no reports database at"),
    ]
    for args, code, message in cases:
        status, stderr = release_cli("fleet", "report", *args)
        assert status == code, (args, stderr)
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_human_table(tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    with open_storage(db) as storage:
        storage.ingest([make_report(), make_report(outcome="rolled_back", cause="start", ab_group="b"),
                        make_report(kind="heartbeat", outcome="ok", to_version="", current_version="1.1.0",
                                    at=datetime.now(UTC) - timedelta(minutes=5))])
    out = run_cli("pinnacle-release", "fleet", "report", "--db", db).stdout
    assert "stable/linux-x86_64/1.1.0" in out and "50.0% [" in out and "start:1" in out and "group b" in out
    assert "INSTALLS" in out


def test_database_down_is_503_and_nothing_is_claimed(pg_server: Any, collector_factory: Any) -> None:
    """PostgreSQL refusing the collector's connections: 503 with one line; once it is back, 200."""
    import psycopg

    name = "down_" + os.urandom(4).hex()
    db = pg_server.create_database(name)
    collector = collector_factory(db)
    assert collector.post(encode_batch([make_report()])).status_code == 200
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        refused = collector.post(encode_batch([make_report()]))
        assert refused.status_code == 503 and "database is unavailable" in refused.json()["error"]
        assert collector.client.get(f"{collector.url}/v1/health").status_code == 503
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    # the collector recovers by itself (no restart): its pool reconnects within seconds; a 503 in the
    # meantime stores nothing, so the one report sent until it is accepted is stored once
    again = encode_batch([make_report()])
    deadline = time.monotonic() + 30
    while (answer := collector.post(again)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    assert rows(db) == 2


def test_tls(tmp_path: Path, collector_factory: Any, request: pytest.FixtureRequest) -> None:
    ca, cert, key = request.getfixturevalue("pki")  # the test CA and a certificate for 127.0.0.1
    collector = collector_factory(str(tmp_path / "r.sqlite"), "--certfile", str(cert), "--keyfile", str(key))
    assert collector.url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as client:
        answer = client.post(f"{collector.url}/v1/reports", content=encode_batch([make_report()]),
                             headers={"Content-Type": "application/json"})
    assert answer.json() == {"accepted": 1, "duplicates": 0}
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    proc = run_cli("pinnacle-release", "collector", "serve", "--port", "0", "--db", str(tmp_path / "r.sqlite"),
                   "--token-file", str(tmp_path / "t"), "--certfile", str(garbage), "--keyfile", str(key),
                   check=False)
    assert proc.returncode == ReleaseError.exit_code and "TLS" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
