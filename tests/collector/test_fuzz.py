"""Schema-driven fuzzing of the collector with schemathesis, from its /openapi.json, against a real
collector process on 127.0.0.1 over SQLite. Checks: no 5xx at all (the database is up, so even 503 is
a bug here), every status code, content type and body one the document promises."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pinnacle_updates.repo_tools.collector.openapi import document  # noqa: E402
from tests.collector.conftest import start_collector, stop  # noqa: E402

EXAMPLES = 50


class Served:
    def __init__(self, url: str, token: str, db: Path) -> None:
        self.url = url
        self.token = token
        self.db = db


@pytest.fixture(scope="module")
def fuzz_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("fuzz")
    proc, url = start_collector(str(base / "r.sqlite"), base, "--rate-per-address", "0")
    try:
        yield Served(url, (base / "collector.token").read_text().strip(), base / "r.sqlite")
    finally:
        stop(proc)
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "Traceback" not in log and "internal error" not in log, log[-2000:]


schema = schemathesis.openapi.from_dict(document())


def test_the_served_document_is_the_fuzzed_one(fuzz_collector: Served) -> None:
    served = httpx.get(f"{fuzz_collector.url}/openapi.json")
    assert served.status_code == 200 and served.json() == json.loads(json.dumps(document()))


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 500:
        raise AssertionError(f"{response.status_code} from {case.method} {case.formatted_path}: "
                             f"{response.text[:500]}")
    return None


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_collector_fuzz_finds_no_5xx(case: Any, fuzz_collector: Served) -> None:
    case.call_and_validate(
        base_url=fuzz_collector.url,
        headers={"Authorization": f"Bearer {fuzz_collector.token}"},
        checks=[no_server_error, status_code_conformance, response_schema_conformance, content_type_conformance],
    )


def test_the_fuzzed_collector_still_answers(fuzz_collector: Served) -> None:
    assert httpx.get(f"{fuzz_collector.url}/v1/health").json()["status"] == "ok"
