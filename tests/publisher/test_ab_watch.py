"""``watch`` prints a rolling release's A/B groups compared at every look (issue 20 item 4), with real
parts: a real repository and keys, a real SQLite reports database filled through the collector's
storage, the CLI as a user runs it. The comparison is shown, never decided on: the same look's
decision is the one it makes without groups."""

from __future__ import annotations

import json
import random
import secrets
from pathlib import Path

from pinnacle_updates.repo_tools import watch
from pinnacle_updates.repo_tools.collector.storage import Storage, open_storage
from pinnacle_updates.repo_tools.core import canary
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.collector.conftest import make_report
from tests.conftest import run_cli
from tests.publisher.test_watch import HOUR, T0, rolling  # noqa: F401 - rolling: the fixture


def grouped(storage: Storage, group: str, n: int, failures: int, startup: float) -> None:
    rng = random.Random(group)
    batch = [make_report(platform="any", to_version="1.1.0", current_version="1.1.0", ab_group=group,
                         install_id=secrets.token_hex(16), metrics={"startup_ms": rng.gauss(startup, 10)})
             for _ in range(n - failures)]
    batch += [make_report(platform="any", to_version="1.1.0", ab_group=group, outcome="rolled_back",
                          cause="health_check", durations={}) for _ in range(failures)]
    storage.ingest(batch)


def test_each_look_shows_the_groups_compared_and_names_no_winner_on_ten_reports(
        rolling: Repository, keystore: KeyStore, tmp_path: Path, keys_dir: Path) -> None:  # noqa: F811
    db = str(tmp_path / "reports.sqlite")
    with open_storage(db) as storage:
        grouped(storage, "control", 10, 0, 100.0)
        grouped(storage, "new", 10, 0, 300.0)
        v = watch.look(rolling, keystore, storage, canary.Options(min_clients_per_step=5),
                       now=T0 + HOUR / 2).verdicts[0]
    assert v.decision.action is canary.Action.NONE and "not due" in v.decision.reason
    found = {c["metric"]: c for c in v.comparisons}
    assert set(found) == {"success_rate", "install_time", "startup_ms"}
    assert all(c["winner"] is None and c["reason"].startswith("not enough data") for c in found.values())
    assert found["startup_ms"]["difference"] > 100  # a large difference, still no winner on ten each
    lines = v.line().splitlines()
    assert lines[0].startswith("stable/any/1.1.0: none: ") and len(lines) == 4
    assert lines[1].startswith("  A/B success_rate new - control: +0.00% [") and "(n 10/10)" in lines[1]
    assert all("not enough data" in line for line in lines[1:])
    assert v.to_dict()["comparisons"] == list(v.comparisons)

    out = run_cli("pinnacle-release", "watch", str(rolling.path), "--keys", str(keys_dir), "--db", db, "--once",
                  "--json")
    release = json.loads(out.stdout)["releases"][0]
    assert [c["metric"] for c in release["comparisons"]] == ["success_rate", "install_time", "startup_ms"]
    assert all(c["winner"] is None for c in release["comparisons"])
    text = run_cli("pinnacle-release", "watch", str(rolling.path), "--keys", str(keys_dir), "--db", db,
                   "--once").stdout
    assert "  A/B startup_ms new - control: +" in text and "not enough data (too little data: 10 < 100" in text


def test_a_look_names_the_better_group_on_enough_reports_and_decides_on_the_release(
        rolling: Repository, keystore: KeyStore, tmp_path: Path) -> None:  # noqa: F811
    with open_storage(str(tmp_path / "grouped.sqlite")) as storage:
        grouped(storage, "control", 300, 0, 100.0)
        grouped(storage, "new", 300, 30, 100.0)
        v = watch.look(rolling, keystore, storage, canary.Options(), now=T0 + HOUR / 2).verdicts[0]
    found = {c["metric"]: c for c in v.comparisons}
    assert found["success_rate"]["winner"] == "control" and found["success_rate"]["interval"][1] < 0
    assert found["startup_ms"]["winner"] is None  # one distribution in both groups
    assert "A/B success_rate new - control: -10.00% [" in v.line() and "control is better" in v.line()
    # the comparison is output only: the decision is the rule's on the release's counts, groups or not
    assert v.decision.action is canary.Action.HALT and v.decision.attempted == 600
    assert v.decision == canary.decide(canary.Counts(attempted=600, installs=600, rolled_back={"health_check": 30}),
                                       None, v.step, canary.Options())
