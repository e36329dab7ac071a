"""The fleet page's rollout timeline (issue 20 item 2) with real parts: a real repository and keys, real
``watch`` looks that sign an advance and a halt and hold a gate between them, a real collector process
started with ``--repo`` over the same SQLite database, and the page in Debian's Chromium at 1280 and
390 px (screenshots in the test's tmp dir; with PINNACLE_SAVE_SCREENSHOT=1 also docs/fleet-timeline-*.png).

The collector only reads the decision log (``watch.decisions``): it stays the one source, in the
repository; the API answers it behind the read token, and one-line refusals otherwise."""

from __future__ import annotations

import os
import random
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinnacle_updates.repo_tools import watch
from pinnacle_updates.repo_tools.collector.storage import open_storage
from pinnacle_updates.repo_tools.core import canary
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.agent.conftest import browser  # noqa: F401 - the fixture
from tests.collector.test_ab_metrics import group_reports
from tests.conftest import ROOT, tree_digest
from tests.publisher.test_watch import GATED, HOUR, T0, _reports, rolling  # noqa: F401 - rolling: the fixture

sync_api = pytest.importorskip("playwright.sync_api")
XSS_GROUP = "<img src=x onerror=window.__pwned=3>"
assert GATED["gate"] is True  # the rollout below is gated: watch approves its steps


def decide(repo: Repository, keystore: KeyStore, db: str) -> list[watch.Verdict]:
    """An advance (healthy, due), a hold (the next step due, too few new install ids) and a halt."""
    options = canary.Options(min_clients_per_step=5)
    out = []
    with open_storage(db) as storage:
        _reports(storage, 8)
        out += watch.look(repo, keystore, storage, options, now=T0 + HOUR).verdicts
        out += watch.look(repo, keystore, storage, options, now=T0 + 2 * HOUR).verdicts
        _reports(storage, 6, outcome="rolled_back", cause="health_check")
        out += watch.look(repo, keystore, storage, options, now=T0 + 2 * HOUR + timedelta(minutes=5)).verdicts
    assert [v.decision.action for v in out] == [canary.Action.ADVANCE, canary.Action.HOLD, canary.Action.HALT]
    return out


def get(collector: Any, path: str, **params: str) -> httpx.Response:
    return collector.client.get(collector.url + path, params=params,
                                headers={"Authorization": f"Bearer {collector.token}"})


def test_decisions_api(rolling: Repository, keystore: KeyStore, tmp_path: Path,  # noqa: F811
                       collector_factory: Any) -> None:
    db = str(tmp_path / "reports.sqlite")
    decide(rolling, keystore, db)
    log_before = (rolling.path / ".pinnacle" / "decisions.jsonl").read_bytes()
    metadata_before = tree_digest(rolling.path / "metadata")
    collector = collector_factory(db, "--repo", str(rolling.path))
    answer = get(collector, "/v1/fleet/decisions")
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["repository"] is True
    found = doc["decisions"]
    assert [(d["action"], d["status"]) for d in found] == [("advance", "applied"), ("hold", "observed"),
                                                          ("halt", "applied")]
    assert [d["at"] for d in found] == sorted(d["at"] for d in found)
    assert all((d["channel"], d["platform"], d["version"]) == ("stable", "any", "1.1.0") for d in found)
    advance, hold, halt = found
    assert (advance["percent"], advance["from_step"], advance["to_step"]) == (10, 0, 1)
    assert advance["evidence"]["installs"] == 8 and advance["evidence"]["rule"] == canary.RULE
    assert (hold["percent"], hold["step"], hold["hold"]) == (50, 1, "clients") and "install ids" in hold["reason"]
    assert hold["evidence"]["step_installs"] == 0
    release = next(e for e in halt["evidence"]["evidence"] if e["class"] == "release")
    assert (release["failures"], release["trials"]) == (6, 14)
    assert release["statistic"] == "inf" or release["statistic"] >= release["threshold"]
    assert watch.decisions(rolling.path, holds=True) == found  # the log is the one source
    # filters: the channel and version keep their decisions; ?since= a time after the last one, none
    assert get(collector, "/v1/fleet/decisions", version="1.1.0").json()["decisions"] == found
    assert get(collector, "/v1/fleet/decisions", channel="beta").json()["decisions"] == []
    late = (T0 + 3 * HOUR).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert get(collector, "/v1/fleet/decisions", since=late).json()["decisions"] == []
    # refusals, one line each
    anonymous = httpx.get(collector.url + "/v1/fleet/decisions", timeout=30)
    assert anonymous.status_code == 401 and "read token" in anonymous.json()["error"]
    for params, words in (({"repo": "/etc"}, "unknown query parameter 'repo'"), ({"since": "soon"}, "since"),
                          ({"channel": "../x"}, "channel"), ({"version": "not a version"}, "PEP 440")):
        refused = get(collector, "/v1/fleet/decisions", **params)
        assert refused.status_code == 400 and words in refused.json()["error"], (params, refused.text)
        assert "\n" not in refused.json()["error"]
    # the collector read the repository and changed nothing in it
    assert (rolling.path / ".pinnacle" / "decisions.jsonl").read_bytes() == log_before
    assert tree_digest(rolling.path / "metadata") == metadata_before

    # without --repo: no repository, no decisions
    bare = collector_factory(db)
    assert get(bare, "/v1/fleet/decisions").json() == {"repository": False, "decisions": []}
    # a log that cannot be read is a one-line 503
    broken = tmp_path / "broken"
    (broken / ".pinnacle" / "decisions.jsonl").mkdir(parents=True)
    unreadable = collector_factory(db, "--repo", str(broken))
    answer = get(unreadable, "/v1/fleet/decisions")
    assert answer.status_code == 503 and "cannot read the decision log" in answer.json()["error"], answer.text


@pytest.mark.parametrize(("args", "words"), [
    (("--repo", "/nonexistent/repo"), "'/nonexistent/repo' does not exist"),
    (("--repo", "FILE"), "is a file"),
])
def test_serve_repo_refusals(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    from pinnacle_updates.formats.exitcodes import ExitCode
    from tests.conftest import run_cli

    a_file = tmp_path / "file"
    a_file.write_text("x")
    real = [str(a_file) if a == "FILE" else a for a in args]
    result = run_cli("pinnacle-release", "collector", "serve", "--db", str(tmp_path / "r.sqlite"), "--port", "0",
                     "--token-file", str(tmp_path / "t"), *real, check=False)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_timeline_on_the_fleet_page(rolling: Repository, keystore: KeyStore, tmp_path: Path,  # noqa: F811
                                    collector_factory: Any, browser: Any) -> None:  # noqa: F811
    db = str(tmp_path / "reports.sqlite")
    decide(rolling, keystore, db)
    rng = random.Random(5)
    with open_storage(db) as storage:  # another release with A/B groups, one named with markup
        storage.ingest(group_reports(rng, "control", 200, 0.99, 4.0, 200.0, "2.0.0")
                       + group_reports(rng, XSS_GROUP, 200, 0.80, 4.0, 200.0, "2.0.0"))
    collector = collector_factory(db, "--repo", str(rolling.path))
    found = get(collector, "/v1/fleet/decisions").json()["decisions"]
    report = get(collector, "/v1/fleet/report").json()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    expect = sync_api.expect
    page.goto(f"{collector.url}/fleet?token={collector.token}")
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")
    expect(page.locator("#timeline .tl-release")).to_have_count(1)
    assert page.locator("#timeline .tl-release h3").text_content() == "stable/any/1.1.0"
    events = page.locator("#timeline li.tl-event")
    expect(events).to_have_count(3)
    shown = page.eval_on_selector_all("#timeline li.tl-event", """items => items.map(li => ({
        action: li.dataset.action, status: li.dataset.status,
        badge: li.querySelector('.badge').textContent, reason: li.querySelector('.tl-reason').textContent,
        evidence: li.querySelector('.tl-evidence').textContent, head: li.querySelector('.tl-head').textContent}))""")
    newest_first = list(reversed(found))
    assert [(s["action"], s["status"], s["badge"]) for s in shown] == \
        [(d["action"], d["status"], d["action"]) for d in newest_first]
    for s, d in zip(shown, newest_first, strict=True):
        assert s["reason"] == d["reason"]
        assert f"{d['evidence']['attempted']} attempted" in s["evidence"]
        assert f"{d['evidence']['installs']} install ids" in s["evidence"]
        assert d["at"].replace("T", " ").replace("Z", "") + " UTC" in s["head"]
        assert f"at {d['percent']:g} %" in s["head"]
    halt = shown[0]
    release = next(e for e in newest_first[0]["evidence"]["evidence"] if e["class"] == "release")
    assert f"release {release['failures']}/{release['trials']}" in halt["evidence"]
    clause = next(part for part in halt["evidence"].split(" · ") if part.startswith("release "))
    statistic, threshold = clause.split(" M ")[1].split(" / ")  # three significant digits, as JS shows them
    assert float(threshold) == release["threshold"]
    assert statistic == "∞" if release["statistic"] == "inf" else \
        float(statistic) == pytest.approx(release["statistic"], rel=0.01), clause
    assert "→ step 2" in shown[2]["head"]  # the advance names the step it approved
    expect(page.locator("#timeline circle.tl-mark")).to_have_count(3)

    # the A/B panel: one row per comparison of the fleet report, its verdict as the JSON says
    compared = [(f"{r['channel']}/{r['platform']}/{r['version']}", c) for r in report["releases"]
                for c in r["comparisons"]]
    assert [c["metric"] for _, c in compared] == ["success_rate", "install_time", "startup_ms"]
    rows = page.eval_on_selector_all("#ab tbody tr.ab-row", """rows => rows.map(tr => ({
        release: tr.dataset.release, metric: tr.dataset.metric,
        cells: Object.fromEntries([...tr.cells].map(td => [td.classList[0], td.textContent]))}))""")
    assert [(r["release"], r["metric"]) for r in rows] == [(name, c["metric"]) for name, c in compared]
    for row, (_, c) in zip(rows, compared, strict=True):
        assert row["cells"]["groups"] == f"{c['groups'][0]} \N{MINUS SIGN} {c['groups'][1]}"
        assert row["cells"]["n"] == f"{c['n'][0]} / {c['n'][1]}"
        verdict = c["reason"] if c["winner"] is None else c["reason"].split(":")[0]
        assert row["cells"]["verdict"] == verdict
    by_metric = {c["metric"]: c for _, c in compared}
    assert by_metric["success_rate"]["winner"] == "control" and by_metric["startup_ms"]["winner"] is None
    assert rows[0]["cells"]["difference"].startswith("-")
    assert page.evaluate("window.__pwned") is None and page.locator("#ab img").count() == 0
    tips = page.eval_on_selector_all("#timeline circle.tl-mark title", "ts => ts.map(t => t.textContent)")
    assert [t.split(": ")[1].split(" ")[0] for t in tips] == ["advance", "hold", "halt"]

    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(400)  # the strips are drawn again 100 ms after a resize
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        box = page.locator("#timeline-panel").bounding_box()
        assert box is not None and box["width"] <= width
        marks = page.eval_on_selector_all("#timeline circle.tl-mark",
                                          "cs => cs.map(c => c.getBoundingClientRect().right)")
        assert max(marks) <= width  # every mark on screen
        for panel, name in (("#timeline-panel", "fleet-timeline"), ("#ab-panel", "fleet-ab")):
            shot = tmp_path / f"{name}-{width}.png"
            page.locator(panel).screenshot(path=str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("PINNACLE_SAVE_SCREENSHOT") == "1":
                shutil.copyfile(shot, ROOT / "docs" / shot.name)

    # a collector without --repo says how to get a timeline, and draws none
    bare = collector_factory(db)
    page.goto(f"{bare.url}/fleet?token={bare.token}")
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")
    expect(page.locator("#timeline-note")).to_contain_text("start the collector with --repo")
    expect(page.locator("#timeline .tl-release")).to_have_count(0)
    assert errors == [], errors
