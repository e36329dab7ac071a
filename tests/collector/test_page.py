"""The fleet page end to end: a real collector (SQLite) filled through its HTTP ingest with a known set of
reports, the page opened in Debian's Chromium (Playwright driving /usr/bin/chromium, no downloaded
browser). The table shows the numbers of the fleet report JSON, the charts have one mark per hour,
version and cause; without the read token the page and its data are refused; a cause text and an A/B
group holding markup are shown as text and run nothing; the cookie is HttpOnly and SameSite=Strict.

Screenshots at 1280 and 390 px go to the test's tmp dir; with PINNACLE_SAVE_SCREENSHOT=1 they also
replace docs/fleet-1280.png and docs/fleet-390.png, so an ordinary run leaves the checkout untouched.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinnacle_updates.formats.report import Report, encode_batch
from pinnacle_updates.repo_tools.collector.page import COOKIE, session_value
from tests.agent.conftest import browser  # noqa: F401 - the fixture
from tests.collector.conftest import make_report, stop
from tests.conftest import ROOT

XSS_TEXT = '<img src=x onerror="window.__pwned = 1">'
XSS_GROUP = "<svg onload=window.__pwned=2>"
sync_api = pytest.importorskip("playwright.sync_api")
NOW = datetime.now(UTC).replace(microsecond=0)


def fleet() -> list[Report]:
    """Three releases over five hours, A/B groups, every kind of outcome; heartbeats for the versions."""
    out: list[Report] = []

    def add(n: int, hours_ago: int, **fields: Any) -> None:
        for _ in range(n):
            out.append(make_report(at=NOW - timedelta(hours=hours_ago, minutes=1), **fields))

    stable = {"channel": "stable", "platform": "linux-x86_64", "to_version": "1.1.0", "from_version": "1.0.0"}
    add(3, 0, ab_group="control", **stable)
    add(2, 1, ab_group=XSS_GROUP, **stable)
    add(2, 2, cause="delta_fallback", durations={"download": 3.0, "total": 9.0}, **stable)
    add(1, 0, outcome="rolled_back", cause="health_check", cause_text=XSS_TEXT, ab_group="control", **stable)
    add(1, 1, outcome="rolled_back", cause="health_check", cause_text="GET /health answered 503", **stable)
    add(1, 2, outcome="rolled_back", cause="start", cause_text="start_command exited 1", **stable)
    add(1, 2, outcome="failed", cause="download", cause_text="connection reset", durations={}, **stable)
    add(1, 0, kind="rollback", outcome="rolled_back", cause="manual", from_version="1.1.0", to_version="1.0.0",
        durations={}, channel="stable", platform="linux-x86_64")
    add(3, 5, channel="stable", platform="linux-x86_64", from_version="", to_version="1.0.0",
        durations={"total": 20.0})
    beta = {"channel": "beta", "platform": "linux-arm64", "from_version": "1.1.0", "to_version": "2.0.0b1"}
    add(2, 3, **beta)
    add(1, 3, outcome="failed", cause="verify", cause_text="sha256 mismatch", durations={}, **beta)
    for version, count in (("1.1.0", 4), ("1.0.0", 2)):
        add(count, 0, kind="heartbeat", outcome="ok", current_version=version, channel="stable",
            platform="linux-x86_64", from_version="", to_version="", durations={}, bytes_downloaded=0, bytes_saved=0)
    add(1, 0, kind="heartbeat", outcome="ok", current_version="2.0.0b1", channel="beta", platform="linux-arm64",
        from_version="", to_version="", durations={}, bytes_downloaded=0, bytes_saved=0)
    return out


# ----- what the table must show, computed from the JSON -----------------------------------------------
def causes(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    return f"{sum(counts.values())} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]


def close(shown: str, expected: list[float]) -> bool:
    """The numbers in a cell equal ``expected`` to the one decimal the page shows."""
    got = numbers(shown)
    return len(got) == len(expected) and all(abs(a - b) <= 0.051 for a, b in zip(got, expected, strict=True))


def check_row(cells: dict[str, str], tally: dict[str, Any]) -> None:
    assert cells["offered"] == str(tally["offered"]), (cells, tally)
    assert cells["attempted"] == str(tally["attempted"]), (cells, tally)
    assert cells["succeeded"] == str(tally["succeeded"]), (cells, tally)
    assert cells["rolled-back"] == causes(tally["rolled_back"]), (cells, tally)
    assert cells["failed"] == causes(tally["failed"]), (cells, tally)
    if tally["success_rate"] is None:
        assert cells["success"] == "\N{EN DASH}"
    else:
        low, high = tally["success_interval"]
        assert close(cells["success"], [100 * tally["success_rate"], 100 * low, 100 * high]), (cells, tally)
    timing = tally["install_time"]
    if timing["median"] is None:
        assert cells["time"] == "\N{EN DASH}"
    else:
        assert close(cells["time"], [timing["median"], timing["p95"]]), (cells, timing)
    saved = tally["bytes_saved"]
    unit = next(u for u, size in (("B", 1), ("KiB", 2**10), ("MiB", 2**20)) if saved < 1024 * size or u == "MiB")
    scale = dict(B=1, KiB=2**10, MiB=2**20)[unit]
    assert cells["saved"].endswith(" " + unit) and close(cells["saved"], [saved / scale]), (cells, saved)


def table_rows(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all("#releases tbody tr", """rows => rows.map(tr => ({
        release: tr.dataset.release, group: tr.dataset.group === undefined ? null : tr.dataset.group,
        cells: Object.fromEntries([...tr.cells].map(td => [td.classList[0], td.textContent]))}))""")


def test_fleet_page(tmp_path: Path, collector_factory: Any, browser: Any) -> None:  # noqa: F811
    collector = collector_factory(str(tmp_path / "reports.sqlite"))
    reports = fleet()
    stored = collector.post(encode_batch(reports))
    assert stored.status_code == 200 and stored.json()["accepted"] == len(reports), stored.text
    document = collector.report().json()
    activity = collector.client.get(f"{collector.url}/v1/fleet/activity",
                                    headers={"Authorization": f"Bearer {collector.token}"}).json()

    # Without the token: the page is the token form, the data 401, a made-up cookie changes nothing.
    anonymous = httpx.Client(timeout=30)
    for path in ("/fleet", "/v1/fleet/report", "/v1/fleet/activity"):
        assert anonymous.get(collector.url + path).status_code == 401, path
        forged = anonymous.get(collector.url + path, headers={"Cookie": f"{COOKIE}={'0' * 64}"})
        assert forged.status_code == 401, path
        assert anonymous.get(collector.url + path, headers={"Cookie": f"{COOKIE}={collector.token}"}).status_code == 401
    page_answer = anonymous.get(collector.url + "/fleet")
    csp = page_answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert 'name="token"' in page_answer.text and "releases" not in page_answer.text

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    expect = sync_api.expect
    first = page.goto(collector.url + "/fleet")
    assert first is not None and first.status == 401
    expect(page.locator("#releases")).to_have_count(0)
    page.fill("#token", "not-the-token-at-all")
    page.click("button[type=submit]")
    expect(page.locator("#login-message")).to_have_text("That is not the collector's read token.")
    expect(page.locator("#releases")).to_have_count(0)

    page.fill("#token", collector.token)
    page.click("button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")
    assert page.url == collector.url + "/fleet"
    cookie = next(c for c in browser.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] == session_value(collector.token)
    assert cookie["value"] != collector.token and page.evaluate("document.cookie") == ""

    # The table: one row per release, one per A/B group, the numbers of the JSON.
    rows = table_rows(page)
    expected = []
    for release in document["releases"]:
        name = f"{release['channel']}/{release['platform']}/{release['version']}"
        expected.append((name, None, release))
        expected += [(name, group, tally) for group, tally in release["groups"].items()]
    assert [(r["release"], r["group"]) for r in rows] == [(n, g) for n, g, _ in expected]
    for row, (name, group, tally) in zip(rows, expected, strict=True):
        assert row["cells"]["release"] == (name if group is None else f"group {group}")
        check_row(row["cells"], tally)
    by_version = {r["version"]: r for r in document["releases"]}
    assert by_version["1.1.0"]["attempted"] == 11 and by_version["1.1.0"]["succeeded"] == 7
    assert by_version["1.1.0"]["rolled_back"] == {"health_check": 2, "start": 1}
    assert by_version["1.1.0"]["manual_rollbacks"] == 1 and by_version["2.0.0b1"]["failed"] == {"verify": 1}

    # The charts: a point per hour with installs, a bar per version running and per rollback cause.
    hours = {h["hour"] for h in activity["hours"] if h["attempted"]}
    assert len(hours) == 5
    expect(page.locator("#chart-rate circle.point")).to_have_count(len(hours))
    expect(page.locator("#chart-versions rect.bar")).to_have_count(len(document["versions"]))
    assert len(document["versions"]) == 3
    expect(page.locator("#chart-causes rect.bar")).to_have_count(3)  # health_check, manual, start
    tips = page.eval_on_selector_all("#chart-causes rect.bar title", "ts => ts.map(t => t.textContent)")
    assert tips == ["health_check: 2", "manual: 1", "start: 1"]

    # Report data holding markup is text on the page: nothing ran, no element was made of it.
    expect(page.locator("#problems td.cause-text", has_text=XSS_TEXT)).to_have_count(1)
    expect(page.locator("#releases td.release", has_text=f"group {XSS_GROUP}")).to_have_count(1)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main svg[onload], #problems img").count() == 0
    assert page.locator("#problems tbody tr").count() == len(activity["problems"]) == 6

    # A shorter window asks with ?since= and shows the same (everything is from the last 6 hours).
    page.select_option("#window", "1d")
    expect(page.locator("#chart-rate circle.point")).to_have_count(len(hours))
    assert [(r["release"], r["group"]) for r in table_rows(page)] == [(n, g) for n, g, _ in expected]
    expect(page.locator("#notice")).to_be_hidden()

    # Screenshots at a desktop and a phone width; at 390 px the page itself does not scroll sideways.
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(400)  # the charts are drawn again 100 ms after a resize
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot = tmp_path / f"fleet-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("PINNACLE_SAVE_SCREENSHOT") == "1":
            shutil.copyfile(shot, ROOT / "docs" / shot.name)

    # The one-time ?token= exchange: the token leaves the address bar; signing out ends the session.
    browser.clear_cookies()
    page.goto(f"{collector.url}/fleet?token={collector.token}")
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")
    assert page.url == collector.url + "/fleet"
    page.click("text=Sign out")
    expect(page.locator("#token")).to_be_visible()
    assert not [c for c in browser.cookies() if c["name"] == COOKIE]
    assert errors == [], errors
    stop(collector.proc)
    assert collector.proc.stderr is not None
    log = collector.proc.stderr.read()
    assert collector.token not in log and session_value(collector.token) not in log and "Traceback" not in log


def test_login_refusals(tmp_path: Path, collector_factory: Any) -> None:
    """The form's bad inputs: each a clear answer, no session, nothing logged about the token."""
    collector = collector_factory(str(tmp_path / "reports.sqlite"))
    client = httpx.Client(timeout=30, follow_redirects=False)
    url = collector.url
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    wrong = client.post(f"{url}/fleet/login", content="token=nope", headers=form)
    assert wrong.status_code == 401 and "That is not the collector&#x27;s read token." in wrong.text
    assert "set-cookie" not in wrong.headers
    big = client.post(f"{url}/fleet/login", content="token=" + "x" * 5000, headers=form)
    assert big.status_code == 413 and "4096-byte limit" in big.json()["error"]
    many = client.post(f"{url}/fleet/login", content="&".join(f"f{i}=1" for i in range(10)), headers=form)
    assert many.status_code == 400 and "more than the token" in many.text
    empty = client.post(f"{url}/fleet/login", content="", headers=form)
    assert empty.status_code == 401
    right = client.post(f"{url}/fleet/login", content=f"token={collector.token}", headers=form)
    assert right.status_code == 303 and right.headers["location"] == "/fleet"
    assert "HttpOnly" in right.headers["set-cookie"] and "SameSite=strict" in right.headers["set-cookie"]
    assert client.get(f"{url}/fleet/static/../app.py").status_code == 404
    assert client.get(f"{url}/fleet/static/login.html").status_code == 404
    shown = client.get(f"{url}/fleet/static/fleet.js")
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/javascript")
    bad_since = client.get(f"{url}/v1/fleet/activity", params={"since": "yesterday"},
                           headers={"Authorization": f"Bearer {collector.token}"})
    assert bad_since.status_code == 400 and "since" in bad_since.json()["error"]
