"""Schema-driven fuzzing of the agent API with schemathesis, from the served /openapi.json, against a
real agent process (loopback only) over a real repository.

Checks: no response is a 500 (an unhandled error), every status code and body is one the document
promises (``status_code_conformance``, ``response_schema_conformance``, ``content_type_conformance``).
A 502 is documented (the repository failed): fuzzed settings may point the agent at a channel
the repository does not serve, and saying so is correct behaviour, not a crash.

Settings that run commands or reach the network (hooks, health URL, repository, webhook, SMTP host)
are dropped from generated config bodies: random shell commands and random host names must not
leave this test. Everything else the schema allows is sent, with the valid token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pinnacle_updates.client.agent.openapi import document  # noqa: E402
from tests.agent_server import V1, V11, V101, Agent, publish_all, run_agent, serve_repo  # noqa: E402
from tests.helpers_client import init_client  # noqa: E402

UNSAFE_KEYS = frozenset({
    "repo_url", "metadata_url", "targets_url", "health_url", "webhook_url", "smtp_host", "health_command",
    "stop_command", "start_command",
    "pre_install", "post_swap", "on_rollback",
})  # fmt: skip
EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    base = tmp_path_factory.mktemp("fuzz")
    repo = publish_all(base / "repo", ((V1, "patch"), (V101, "patch"), (V11, "minor")))
    with serve_repo(repo.dir) as url:
        d = base / "inst"
        init_client(d, url, repo, enabled=False).install(V1)
        with run_agent(d) as agent:
            yield agent


# Loaded from the same function the agent serves at /openapi.json (schemathesis's from_fixture does not
# work with this pytest); test_the_served_document_is_the_fuzzed_one pins the two together.
schema = schemathesis.openapi.from_dict(document())


def test_the_served_document_is_the_fuzzed_one(fuzz_agent: Agent) -> None:
    served = fuzz_agent.get("/openapi.json")
    assert served.status_code == 200 and served.json() == json.loads(json.dumps(document()))


def no_internal_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """The agent never answers 500 (an exception no route handled)."""
    if response.status_code == 500:
        raise AssertionError(f"500 from {case.method} {case.formatted_path}: {response.text[:500]}")
    return None


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_api_fuzz_finds_no_500(case: Any, fuzz_agent: Agent) -> None:
    if isinstance(case.body, dict) and case.path == "/api/updates/config":
        for key in UNSAFE_KEYS & set(case.body):
            del case.body[key]
    case.call_and_validate(
        base_url=fuzz_agent.url.rstrip("/"),
        headers=fuzz_agent.auth(),
        checks=[no_internal_error, status_code_conformance, response_schema_conformance, content_type_conformance],
    )


def test_the_fuzzed_agent_is_still_healthy(fuzz_agent: Agent) -> None:
    """After the fuzz (runs last in this module): the agent answers, its loop lives, its log has no traceback."""
    health = fuzz_agent.get("/api/health").json()
    assert health["agent"]["loop_alive"] is True
    assert fuzz_agent.proc.poll() is None
    assert "Traceback" not in fuzz_agent.log_text()
    assert "internal error" not in fuzz_agent.log_text()
    assert Path(fuzz_agent.install_dir / "state.json").exists()
