"""One answer to "what would this machine install?": the CLI's ``check``, the Python API and the
agent's ``POST /api/updates/check`` (with and without ``current_version``) agree, with a rollout
that holds a release back from this machine and with a required version (``min_version``).

A real repository published with the ``pinnacle-release`` CLI (real signatures), served by the
suite's nginx, two install directories with the same client id (so the same rollout buckets):
``at_one`` runs 1.0.0 and answers through the CLI and the API; ``at_nine`` runs 0.9.0 and also
serves the agent, which is asked for itself and on behalf of an application running 1.0.0. The
last answer is the one the agent used to compute with its own bare ``policy.decide`` call, which
ignored rollout holds and required versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pinnacle_updates.client import AutoUpdater
from pinnacle_updates.client import config as config_mod
from pinnacle_updates.formats.rollout import bucket
from tests.agent_server import Agent, run_agent
from tests.client.test_client_attacks import Client
from tests.helpers_client import Repo, app_files, make_repo, publish, release_cli, serve, write_tree

HELD, REQUIRED = "1.1.0", "1.2.0"


def _client_id_outside(version: str, percent: float) -> str:
    """A client id whose rollout bucket for ``version`` is not below ``percent`` (held back)."""
    return next(cid for cid in (f"{i:032x}" for i in range(10_000)) if bucket(cid, "stable", version) >= percent)


def _install_dir(tmp_path: Path, name: str, url: str, repo: Repo, client_id: str, version: str) -> Client:
    client = Client(tmp_path / name)
    client("init", "--repo", url, "--root", str(repo.root_json), "--platform", "any")
    cfg = config_mod.load(client.dir)
    # enabled = false until the agent has started (see _enable_after_the_agent_started)
    values = {**cfg.values, "client_id": client_id, "enabled": False, "health_command": "test -f healthy",
              "health_interval": 0.0}
    config_mod.write(client.dir, config_mod.validate(values))
    client("install", version)
    return client


def _publish_fleet(repo: Repo, version: str, kind: str, *options: str) -> None:
    src = repo.dir.parent / f"src-fleet-{version}"
    write_tree(src, app_files(version))
    release_cli("publish", str(repo.dir), str(src), "--keys", str(repo.keys), "--channel", "stable", "--version",
                version, "--type", kind, "--platform", "any", *options)


def _enable_after_the_agent_started(*clients: Client) -> None:
    """Turn unattended installs on (so that ``auto`` and required versions show in the answers) in
    the files only: the agent's loop read ``enabled = false`` for its first round, and the next one
    is ``check_interval`` (an hour) away, so it installs nothing while the test asks."""
    for client in clients:
        config_mod.set_value(client.dir, "enabled", "true")


def _answer(data: dict[str, Any]) -> dict[str, Any]:
    """What a check answers, without what only says when it was asked (the rollout time)."""
    out = {k: v for k, v in data.items() if k not in ("fleet", "installed_version", "notes", "releases")}
    out["fleet"] = data.get("fleet", {}).get("releases")
    return out


def _cli(client: Client) -> dict[str, Any]:
    return _answer(json.loads(client("check", "--json").stdout))


def _api(client: Client) -> dict[str, Any]:
    return _answer(AutoUpdater(client.dir).check().to_dict())


def _agent(agent: Agent, current_version: str | None = None) -> dict[str, Any]:
    body = {} if current_version is None else {"current_version": current_version}
    r = agent.post("/api/updates/check", body)
    assert r.status_code == 200, r.text
    return _answer(r.json())


def _assert_one_answer(at_one: Client, at_nine: Client, agent: Agent) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every way of asking agrees, for a client at 1.0.0 and for one at 0.9.0; returns both answers."""
    one = _cli(at_one)
    assert _api(at_one) == one
    assert _agent(agent, "1.0.0") == one  # the agent on behalf of an application running 1.0.0
    nine = _cli(at_nine)
    assert _api(at_nine) == nine
    assert _agent(agent) == nine
    assert _agent(agent, "0.9.0") == nine
    return one, nine


def test_cli_api_and_agent_give_one_answer_under_a_rollout_hold_and_a_required_version(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pub")
    for v in ("0.9.0", "1.0.0"):
        publish(repo, v, app_files(v))
    client_id = _client_id_outside(HELD, 50)
    with serve(repo.dir) as url:
        at_one = _install_dir(tmp_path, "at-one", url, repo, client_id, "1.0.0")
        at_nine = _install_dir(tmp_path, "at-nine", url, repo, client_id, "0.9.0")
        _publish_fleet(repo, HELD, "patch", "--percent", "50")
        with run_agent(at_nine.dir) as agent:
            _enable_after_the_agent_started(at_one, at_nine)
            # 1.1.0 is held back from this machine: nothing for 1.0.0, 1.0.0 for 0.9.0
            one, nine = _assert_one_answer(at_one, at_nine, agent)
            assert not one["update_available"] and one["version"] is None
            assert f"{HELD} skipped (staged rollout at 50%" in one["reason"]
            assert [r["eligible"] for r in one["fleet"]] == [True, True, False]
            assert nine["update_available"] and nine["version"] == "1.0.0" and nine["auto"]

            # 1.2.0 requires at least 1.1.0: required for both, past its 0% rollout and the held 1.1.0
            _publish_fleet(repo, REQUIRED, "minor", "--percent", "0", "--min-version", HELD)
            one, nine = _assert_one_answer(at_one, at_nine, agent)
            for answer in (one, nine):
                # a minor is only offered, but a required one installs unattended
                assert answer["update_available"] and answer["version"] == REQUIRED and answer["auto"]
                assert f"required update (min_version): {REQUIRED}" in answer["reason"]
                assert answer["fleet"][-1] == {**answer["fleet"][-1], "required": True, "eligible": True}
                assert answer["fleet"][-2]["eligible"] is False  # 1.1.0 still held
