"""The agent's update loop is supervised (issue 17, class 2): a bad value written into config.toml by
hand (bypassing `config set`) breaks it visibly (``/api/health`` degraded with the error and since
when, the status and the log say why) instead of silently, and once the value is fixed the loop comes
back by itself (retried with backoff) and ``/api/health`` is ``ok`` again. Real agent process, real
repository over HTTP, real config file."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client.agent.service import AgentService
from tests.agent_server import V1, Agent, publish_all, run_agent, serve_repo
from tests.helpers_client import Repo, init_client

# (key, the bad value as written into config.toml, a word the error must name)
BAD_VALUES = [
    ("check_interval", "100000000000000000000000000000000", "check_interval"),  # overflows the loop's timer
    ("check_interval", "1" + "0" * 400, "check_interval"),  # not even a float
    ("health_url", '"http://127.0.0.1:80a/health"', "health_url"),  # a port typo
    ("health_url", '"http://bad..host/health"', "health_url"),  # an empty DNS label
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return publish_all(tmp_path_factory.mktemp("loop-repo"), ((V1, "patch"),))


@pytest.fixture(scope="module")
def repo_url(repo: Repo) -> Iterator[str]:
    with serve_repo(repo.dir) as url:
        yield url


def _health(agent: Agent) -> dict[str, Any]:
    r = agent.get("/api/health")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _until(read: Callable[[], dict[str, Any]], predicate: Callable[[dict[str, Any]], bool], what: str,
           limit: float, alive: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """Poll ``read()`` until ``predicate`` holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while True:
        h = read()
        if predicate(h):
            return h
        if time.monotonic() > deadline or not alive():
            raise AssertionError(f"gave up waiting for {what}; last health: {h}")
        time.sleep(0.05)


def _wait_health(agent: Agent, predicate: Callable[[dict[str, Any]], bool], what: str,
                 limit: float = 30.0) -> dict[str, Any]:
    return _until(lambda: _health(agent), predicate, what, limit, lambda: agent.proc.poll() is None)


def _set_raw(config: Path, key: str, raw: str) -> None:
    """Write ``key = raw`` into config.toml as a careless operator would (no validation)."""
    text = config.read_text()
    line = re.compile(rf"^{key} = .*$", re.M)
    text = line.sub(f"{key} = {raw}", text) if line.search(text) else f"{key} = {raw}\n{text}"
    config.write_text(text)


@pytest.mark.parametrize(("key", "raw", "named"), BAD_VALUES, ids=[f"{k}={v[:12]}" for k, v, _ in BAD_VALUES])
def test_a_bad_value_degrades_the_loop_visibly_and_fixing_it_brings_it_back(
    tmp_path: Path, repo: Repo, repo_url: str, key: str, raw: str, named: str
) -> None:
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, check_interval=1).install(V1)
    config = d / "config.toml"
    good = config.read_text()
    with run_agent(d) as agent:
        first = _wait_health(agent, lambda h: h["loop"]["last_ok"] is not None, "a good round")
        assert first["status"] == "ok" and first["loop"]["state"] == "running" and first["loop"]["error"] is None

        _set_raw(config, key, raw)
        broken = _wait_health(agent, lambda h: h["loop"]["failures"] >= 2, "the loop to fail twice")
        loop = broken["loop"]
        assert broken["status"] == "degraded", broken
        assert loop["state"] == "failing" and named in loop["error"], loop
        assert loop["since"] and loop["retry_in_seconds"] >= 1
        assert "Traceback" not in loop["error"] and "\n" not in loop["error"]
        assert broken["agent"]["loop_alive"] is True  # failing rounds, never a dead thread
        status = agent.status()
        assert status["loop"]["state"] == "failing" and named in status["loop"]["error"]
        log = agent.log_text()
        assert "update loop failed" in log and named in log and "Traceback" not in log

        config.write_text(good)  # fixed by hand too: no API call wakes the loop
        back = _wait_health(agent, lambda h: h["status"] == "ok", "the loop to come back", limit=45.0)
        assert back["loop"]["state"] == "running" and back["loop"]["error"] is None
        assert back["loop"]["failures"] == 0 and back["loop"]["restarts"] == 0
        assert back["agent"]["loop_alive"] is True
        assert "update loop recovered" in agent.log_text()
    assert agent.proc.returncode is not None and "Traceback" not in (agent.proc.stderr.read() if agent.proc.stderr
                                                                     else "")


def test_a_fix_through_the_api_retries_at_once(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    """A config change through the API wakes a failing loop instead of waiting out its backoff."""
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, check_interval=1).install(V1)
    with run_agent(d) as agent:
        _wait_health(agent, lambda h: h["loop"]["last_ok"] is not None, "a good round")
        _set_raw(d / "config.toml", "health_url", '"http://127.0.0.1:80a/health"')
        _wait_health(agent, lambda h: h["loop"]["failures"] >= 4, "four failures (backoff now 8 s)", limit=45.0)
        r = agent.post("/api/updates/config", {"health_url": ""})
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        _wait_health(agent, lambda h: h["status"] == "ok", "the loop to come back", limit=20.0)
        assert time.monotonic() - t0 < 8.0, "the fix did not wake the loop: it waited out its backoff"


# ----- the supervisor itself, in process, over a real install directory ------------------------------
class _Faulty(AgentService):
    """The real service whose loop rounds first raise ``faults`` (in order), then run as usual."""

    def __init__(self, install_dir: Path, faults: list[BaseException]) -> None:
        super().__init__(install_dir)
        self.faults = faults

    def _one_round(self, first: bool) -> None:
        if self.faults:
            raise self.faults.pop(0)
        super()._one_round(first)


def _wait_service(service: AgentService, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    return _until(service.health, predicate, what, 20.0)


def test_any_exception_in_a_round_is_retried_with_backoff(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    """A bug (not an UpdateError) in a round: logged with its type, degraded, retried after 1 s then 2 s,
    then a good round clears it."""
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, check_interval=1).install(V1)
    service = _Faulty(d, [RuntimeError("boom"), ValueError(f"bad http://u:{'s3cr3t'}@h/x")])
    service.start()
    try:
        h = _wait_service(service, lambda h: h["loop"]["failures"] == 2, "two failures")
        assert h["status"] == "degraded" and h["loop"]["error"] == "ValueError: bad http://u:***@h/x"
        assert h["loop"]["retry_in_seconds"] == 2.0  # 1 s, then doubled
        h = _wait_service(service, lambda h: h["status"] == "ok", "the loop to come back")
        assert h["loop"]["state"] == "running" and h["loop"]["restarts"] == 0
    finally:
        service.stop()


def test_a_loop_thread_that_ended_is_restarted(tmp_path: Path, repo: Repo, repo_url: str) -> None:
    """What the round's ``except Exception`` cannot catch (a ``SystemExit`` from a library) ends the
    thread: the next health or status request restarts it and reports it."""
    d = tmp_path / "inst"
    init_client(d, repo_url, repo, check_interval=1).install(V1)
    service = _Faulty(d, [SystemExit(3)])
    service.start()
    try:
        assert service._thread is not None
        service._thread.join(10)
        assert not service._thread.is_alive()
        h = service.health()  # restarts it
        assert h["loop"]["restarts"] == 1 and h["agent"]["loop_alive"] is True
        assert h["loop"]["error"] == "SystemExit: 3"
        h = _wait_service(service, lambda h: h["status"] == "ok", "the restarted loop's good round")
        assert h["loop"]["restarts"] == 1
    finally:
        service.stop()
