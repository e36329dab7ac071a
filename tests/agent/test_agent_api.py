"""The agent's REST API against a real ``pinnacle-update serve`` process on 127.0.0.1, a real
repository served over HTTP and real httpx requests: every endpoint, the token, Host and Origin
checks (a refused request changes nothing), concurrent installs, the loop and the log file."""

from __future__ import annotations

import json
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent_server import V1, V2, V11, V101, Agent, publish_all, run_agent, serve_repo, state_digest
from tests.agent_server import api_error as _error
from tests.helpers_client import PY, ROOT, Repo, env, init_client

VERSIONS = ((V1, "patch"), (V101, "patch"), (V11, "minor"), (V2, "major"))
QUIET = {"enabled": False}  # no unattended installs racing the test's own requests


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return publish_all(tmp_path_factory.mktemp("agent-repo"), VERSIONS)


@pytest.fixture(scope="module")
def repo_url(repo: Repo) -> Iterator[str]:
    with serve_repo(repo.dir) as url:
        yield url


@pytest.fixture
def agent(tmp_path: Path, repo: Repo, repo_url: str) -> Iterator[Agent]:
    """An agent over an install directory with V1 installed (by the library, before serving)."""
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, **QUIET).install(V1)
    with run_agent(d) as a:
        yield a


def _install(agent: Agent, version: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = agent.post(f"/api/updates/install/{version}", body or {})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert job["state"] == "running" and job["version"] == version
    return agent.wait_job_done()


# ----- read-only endpoints -----------------------------------------------------------------------------
def test_read_endpoints_describe_the_install(agent: Agent) -> None:
    s = agent.status()
    assert s["installed"]["version"] == V1 and s["installed"]["slot"] == "a"
    assert s["job"] is None and s["busy"] is False
    assert s["rollout"]["version"] is None and "not checked yet" in s["rollout"]["why"]  # says why, no "n/a"
    assert s["available"]["releases"] == []  # nothing known before a check

    health = agent.get("/api/health").json()
    assert health["status"] == "ok" and health["agent"]["loop_alive"] is True

    hist = agent.get("/api/updates/history").json()
    assert hist["total"] == 1 and hist["records"][0]["op"] == "install" and hist["records"][0]["version"] == V1

    analytics = agent.get("/api/updates/analytics").json()
    assert (analytics["total_updates"], analytics["successful_updates"], analytics["failed_updates"]) == (1, 1, 0)
    assert analytics["bytes_downloaded"] > 0 and analytics["bytes_saved"] == 0

    backups = agent.get("/api/updates/backups").json()
    assert backups["previous_slot"] is None and backups["max_rollback_days"] == 30

    channels = agent.get("/api/updates/channels").json()
    assert channels["current"] == "stable"
    assert {"name": "stable", "current": True} in channels["channels"]

    spec = agent.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/updates/status", "/api/updates/check", "/api/updates/install/{version}",
                 "/api/updates/rollback", "/api/updates/history", "/api/updates/backups", "/api/updates/config",
                 "/api/updates/channels", "/api/updates/analytics", "/api/health"):
        assert path in spec["paths"], path

    page = agent.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert agent.token not in page.text  # the token is pasted by the user, never served
    assert "Check for updates" in page.text
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        r = agent.get(asset)
        assert r.status_code == 200 and len(r.content) > 500
        text = r.text.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace name, not a fetch
        assert "http://" not in text and "https://" not in text  # no external assets
    _error(agent.get("/static/../../agent.token"), 404, "not_found")
    _error(agent.get("/api/nothing"), 404, "not_found")
    _error(agent.get("/api/updates/rollback"), 405, "method_not_allowed")
    _error(agent.get("/api/updates/history?limit=0"), 422, "invalid_request")


def test_history_limit_and_op_filter(agent: Agent) -> None:
    assert agent.post("/api/updates/check").status_code == 200
    assert agent.post("/api/updates/check").status_code == 200
    all_records = agent.get("/api/updates/history").json()
    assert all_records["total"] == 3
    assert [r["op"] for r in all_records["records"]] == ["check", "check", "install"]  # newest first
    one = agent.get("/api/updates/history", params={"limit": 1, "op": "install"}).json()
    assert one["total"] == 1 and one["records"][0]["version"] == V1


# ----- check -------------------------------------------------------------------------------------------
def test_check_lists_available_versions_with_type_and_notes(agent: Agent) -> None:
    r = agent.post("/api/updates/check")
    assert r.status_code == 200, r.text
    data = r.json()
    # V2 is a major update: offered only with confirmation, so the newest offered is V11
    assert (data["current_version"], data["update_available"], data["version"], data["type"]) == (
        V1, True, V11, "minor")
    assert data["notes"].startswith("Adds the reports page")
    listed = {x["version"]: x for x in data["releases"]}
    assert listed[V2]["type"] == "major" and listed[V2]["notes"].startswith("New storage")
    assert listed[V1]["installed"] is True and listed[V101]["newer"] is True

    s = agent.status()
    assert [x["version"] for x in s["available"]["releases"]] == [V2, V11, V101]
    assert s["available"]["latest"]["version"] == V2
    assert s["available"]["last_check"]["version"] == V11


def test_check_for_a_given_current_version(agent: Agent) -> None:
    data = agent.post("/api/updates/check", {"current_version": V11}).json()
    assert data["current_version"] == V11 and data["installed_version"] == V1
    assert data["update_available"] is False  # only a major is newer than V11, and it needs confirmation
    assert "major" in data["reason"]
    data = agent.post("/api/updates/check", {"current_version": "0.1"}).json()
    assert data["update_available"] is True and data["version"] == V11
    _error(agent.post("/api/updates/check", {"current_version": "not a version!"}), 422, "invalid_request")
    _error(agent.post("/api/updates/check", {"bogus": 1}), 422, "invalid_request")
    _error(agent.post("/api/updates/check", content=b"{nope", headers={"Content-Type": "application/json"}),
           422, "invalid_request")


# ----- install with progress -------------------------------------------------------------------------------
def test_install_reports_progress_and_lands_in_history_analytics_and_backups(agent: Agent) -> None:
    job = _install(agent, V11)
    assert job["state"] == "succeeded", job
    assert job["percent"] == 100 and job["bytes"] == job["total"] > 0 and job["download_percent"] == 100
    steps = [s["step"] for s in job["steps"]]
    for step in ("download", "staging", "swap", "health_check", "committed"):
        assert step in steps, steps
    assert steps.index("download") < steps.index("swap") < steps.index("committed")
    assert job["result"]["outcome"] == "committed" and job["result"]["previous_version"] == V1

    s = agent.status()
    assert (s["installed"]["version"], s["installed"]["previous_version"]) == (V11, V1)
    assert s["health"]["healthy"] is True and s["health"]["source"] == "install"
    assert (Path(agent.install_dir) / "current").resolve().name == "b"

    records = agent.get("/api/updates/history", params={"op": "install"}).json()["records"]
    assert records[0]["version"] == V11 and records[0]["outcome"] == "committed"
    analytics = agent.get("/api/updates/analytics").json()
    assert (analytics["total_updates"], analytics["successful_updates"]) == (2, 2)
    assert analytics["last_update_date"] == records[0]["ts"]
    assert [u["version"] for u in analytics["series"]["updates"]] == [V1, V11]
    backups = agent.get("/api/updates/backups").json()
    assert backups["previous_slot"]["version"] == V1 and backups["previous_slot"]["eligible"] is True
    assert any(c["version"] == V11 for c in backups["cached_releases"])


def test_unknown_version_is_404_and_changes_nothing(agent: Agent) -> None:
    before = state_digest(agent.install_dir)
    _error(agent.post("/api/updates/install/9.9.9"), 404, "unknown_version")
    _error(agent.post("/api/updates/install/not-a-version"), 404, "unknown_version")
    assert state_digest(agent.install_dir) == before
    assert agent.status()["job"] is None


def test_major_update_needs_confirmation(agent: Agent) -> None:
    before = state_digest(agent.install_dir)
    message = _error(agent.post(f"/api/updates/install/{V2}"), 409, "confirmation_required")
    assert "major" in message
    assert state_digest(agent.install_dir) == before
    _error(agent.post(f"/api/updates/install/{V1}"), 409, "not_installable")  # already installed
    _error(agent.post(f"/api/updates/install/{V2}", {"confirm_major": "yes"}), 422, "invalid_request")
    job = _install(agent, V2, {"confirm_major": True})
    assert job["state"] == "succeeded" and agent.status()["installed"]["version"] == V2


def test_two_concurrent_installs_one_wins_the_other_gets_409(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    d = tmp_path / "inst"
    gate = tmp_path / "gate"
    # pre_install waits for the gate: the winner is still running when the loser's request arrives
    installer = init_client(d, repo_url, repo, pre_install=f"while [ ! -e {gate} ]; do sleep 0.02; done",
                            hook_timeout=120.0, **QUIET)
    gate.touch()
    installer.install(V1)
    gate.unlink()
    with run_agent(d) as agent:
        barrier = threading.Barrier(2)
        results: list[httpx.Response] = []

        def request(version: str) -> None:
            with httpx.Client(base_url=agent.url, timeout=60, trust_env=False) as c:
                barrier.wait()
                results.append(c.post(f"/api/updates/install/{version}", headers=agent.auth(), json={}))

        threads = [threading.Thread(target=request, args=(v,)) for v in (V101, V11)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results)
        assert codes == [202, 409], [r.text for r in results]
        loser = next(r for r in results if r.status_code == 409)
        assert loser.json()["error"]["code"] == "busy"
        winner = next(r for r in results if r.status_code == 202).json()["job"]["version"]
        assert agent.status()["busy"] is True
        _error(agent.post("/api/updates/rollback"), 409, "busy")  # nothing else runs meanwhile
        gate.touch()
        job = agent.wait_job_done()
        assert job["state"] == "succeeded" and job["version"] == winner
        assert agent.status()["installed"]["version"] == winner


# ----- rollback -----------------------------------------------------------------------------------------
def test_rollback_switches_back_and_refuses_without_a_previous_version(agent: Agent) -> None:
    before = state_digest(agent.install_dir)
    message = _error(agent.post("/api/updates/rollback"), 409, "refused")
    assert "previous" in message or "no" in message
    assert state_digest(agent.install_dir) == before

    assert _install(agent, V101)["state"] == "succeeded"
    r = agent.post("/api/updates/rollback", {})
    assert r.status_code == 200, r.text
    assert (r.json()["from_version"], r.json()["version"]) == (V101, V1)
    s = agent.status()
    assert s["installed"]["version"] == V1 and V101 in s["installed"]["rolled_back_versions"]
    assert V101 not in s["installed"]["bad_versions"]  # the operator went back: not a verdict on V101
    assert s["job"]["kind"] == "rollback" and s["job"]["state"] == "succeeded"
    analytics = agent.get("/api/updates/analytics").json()
    assert analytics["rollbacks"] == 1 and analytics["failed_updates"] == 0  # a manual rollback is no failure
    # installable by name without force; a rollback with mark_bad makes it bad (the CLI's --mark-bad)
    assert _install(agent, V101)["state"] == "succeeded"
    r = agent.post("/api/updates/rollback", {"mark_bad": True})
    assert r.status_code == 200, r.text
    s = agent.status()
    assert V101 in s["installed"]["bad_versions"] and V101 not in s["installed"]["rolled_back_versions"]
    _error(agent.post("/api/updates/rollback", {"mark_bad": "yes"}), 422, "invalid_request")


# ----- config -------------------------------------------------------------------------------------------
def test_config_changes_are_validated_and_a_bad_one_is_refused_whole(agent: Agent) -> None:
    config = agent.install_dir / "config.toml"
    r = agent.post("/api/updates/config", {"check_interval": 120, "notify_on": ["failure"], "auto_install": False})
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == ["auto_install", "check_interval", "notify_on"]
    text = config.read_text()
    assert "check_interval = 120" in text and 'notify_on = ["failure"]' in text
    assert agent.status()["settings"]["check_interval"] == 120

    before = config.read_bytes()
    for bad, word in (
        ({"check_interval": 60, "channel": "no such/channel"}, "channel"),  # one good key, one bad: none applied
        ({"check_interval": -5}, "check_interval"),
        ({"check_interval": "often"}, "check_interval"),
        ({"enabled": "yes"}, "enabled"),
        ({"webhook_url": "ftp://x"}, "webhook_url"),
        ({"notify_on": ["sometimes"]}, "notify_on"),
        ({"client_id": "0" * 32}, "client_id"),
        ({"no_such_key": 1}, "no_such_key"),
        ({}, "no settings"),
    ):
        message = _error(agent.post("/api/updates/config", bad), 422, "invalid_config")
        assert word in message, (bad, message)
        assert config.read_bytes() == before
    _error(agent.post("/api/updates/config", [1, 2]), 422, "invalid_request")


# ----- security ----------------------------------------------------------------------------------------
MUTATIONS = (
    ("/api/updates/check", {}),
    (f"/api/updates/install/{V11}", {}),
    ("/api/updates/rollback", {"force": True}),
    ("/api/updates/config", {"check_interval": 5, "enabled": True}),
)


def test_mutations_without_a_valid_token_are_401_and_change_nothing(agent: Agent) -> None:
    assert _install(agent, V101)["state"] == "succeeded"  # so that a rollback would have something to do
    before = state_digest(agent.install_dir)
    for path, body in MUTATIONS:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {agent.token}"},
                        {"Authorization": f"Bearer {agent.token[:-1]}"}):
            r = agent.http.post(path, json=body, headers=headers)
            _error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert state_digest(agent.install_dir) == before
    assert agent.status()["job"]["version"] == V101  # no new job


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example"},  # DNS rebinding: the page's own name resolves to 127.0.0.1
        {"Host": "rebind.example:8004"},
    ],
)
def test_foreign_origin_or_host_is_403_even_with_the_token_and_changes_nothing(
    agent: Agent, headers: dict[str, str]
) -> None:
    before = state_digest(agent.install_dir)
    for path, body in MUTATIONS:
        r = agent.http.post(path, json=body, headers={**agent.auth(), **headers})
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] in ("forbidden_origin", "forbidden_host")
        assert not any(h.startswith("access-control-") for h in r.headers)
    assert state_digest(agent.install_dir) == before
    assert agent.status()["job"] is None
    if "Host" in headers:
        assert agent.http.get("/api/updates/status", headers=headers).status_code == 403
        assert agent.http.get("/", headers=headers).status_code == 403


def test_same_origin_browser_requests_and_preflights(agent: Agent) -> None:
    origin = f"http://localhost:{agent.port}"
    r = agent.http.post("/api/updates/check", headers={**agent.auth(), "Origin": origin,
                                                       "Host": f"localhost:{agent.port}"})
    assert r.status_code == 200, r.text
    pre = agent.http.options("/api/updates/check", headers={"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers


def test_token_file_command_rotation_and_log(agent: Agent) -> None:
    path = agent.install_dir / "agent.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    printed = _cli(agent, "token")
    assert printed == agent.token and len(printed) >= 32
    assert agent.post("/api/updates/check").status_code == 200
    log = agent.log_text()
    assert "agent starting" in log and "config" not in log.lower().split("agent starting")[0]
    assert agent.token not in log

    rotated = _cli(agent, "token", "--rotate")
    assert rotated != agent.token and path.read_text().strip() == rotated
    _error(agent.post("/api/updates/check"), 401, "unauthorized")  # the old token stops working at once
    assert agent.http.post("/api/updates/check", headers=agent.auth(rotated)).status_code == 200
    assert rotated not in agent.log_text()


def _cli(agent: Agent, *args: str) -> str:
    proc = subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(agent.install_dir), *args],
                          cwd=ROOT, env=env(),
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


# ----- the continuous loop ---------------------------------------------------------------------------------
def test_the_loop_installs_what_policy_allows_unattended(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, enabled=True, check_interval=3600)
    with run_agent(d, "--debug") as agent:
        # nothing installed: the newest release is the first install and is automatic; the first round
        # comes within a tenth of check_interval, so wake it through a config change instead of waiting
        assert agent.post("/api/updates/config", {"check_interval": 3600}).status_code == 200
        s = agent.wait_for(lambda s: s["job"] is not None and s["job"]["state"] != "running", "an automatic install")
        assert s["job"]["kind"] == "auto" and s["job"]["state"] == "succeeded", s["job"]
        assert s["installed"]["version"] == V2
        s = agent.wait_for(lambda s: s["loop"]["last_result"] is not None, "the loop to report")
        assert "succeeded" in s["loop"]["last_result"]
        records = json.loads(json.dumps(agent.get("/api/updates/history").json()["records"]))
        assert [r["op"] for r in records][:2] == ["install", "check"]


# ----- logging --------------------------------------------------------------------------------------------
def test_log_file_rotates_and_never_holds_the_token(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    import logging

    from pinnacle_updates.client.agent.service import configure_logging

    d = tmp_path / "inst"
    init_client(d, repo_url, repo, max_log_bytes=2000, log_backups=2)
    secret = "s3cr3t-token-value-that-must-not-appear"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        path = configure_logging(d, debug=False, secret=lambda: secret)
        assert path == d / "logs" / "auto_updater.log"
        log = logging.getLogger("pinnacle.agent.test")
        for i in range(200):
            log.info("line %d with %s inside", i, secret)
        log.debug("debug detail is not written without --debug")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    files = sorted(p.name for p in (d / "logs").iterdir())
    assert files == ["auto_updater.log", "auto_updater.log.1", "auto_updater.log.2"]
    text = "".join((d / "logs" / f).read_text() for f in files)
    assert "line 199 with [redacted] inside" in text and secret not in text
    assert "debug detail" not in text
    assert all((d / "logs" / f).stat().st_size <= 2000 for f in files)
