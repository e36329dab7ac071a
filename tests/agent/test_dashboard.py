"""The dashboard as a control panel, in headless Chromium at a phone's width (390 px) and a desktop's
(1280 px), against a real ``pinnacle-update serve`` over a real install directory and a real
repository served by nginx (no mocked API):

* the release list marks yanked, held (staged rollout), locally bad versions with their reasons, and
  the version dropdown never offers a yanked or bad version without saying so;
* the rollout card shows this machine's bucket, the rollout's percent now and when this machine gets
  the release (computed from the signed schedule);
* settings are saved (the config file changes); a bad value is refused with client.config's message
  shown next to its field (and nothing changes);
* the channel is switched to a custom channel the repository offers (``nightly``);
* a backup is restored after a confirmation, and the history is filtered;
* at 390 px nothing overflows and the header is wholly visible.

Screenshots are written to the test's tmp dir (their paths printed); with
PINNACLE_SAVE_SCREENSHOT=1 they also replace docs/dashboard.png (1280 px) and docs/dashboard-390.png.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pinnacle_updates.client import HealthCheckError, config
from pinnacle_updates.client.agent.service import SETTINGS_FORM
from pinnacle_updates.formats.index import UpdateType
from pinnacle_updates.formats.rollout import bucket, format_time, parse_time
from pinnacle_updates.repo_tools.keys import create_keys
from tests.agent_server import api_error, run_agent
from tests.helpers_client import (
    ROOT,
    Repo,
    app_files,
    copy_install,
    init_client,
    publish,
    release_cli,
    serve,
    write_tree,
)

sync_api = pytest.importorskip("playwright.sync_api")

V1, V101, V102, V11, V12, V2 = "1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.2.0", "2.0.0"
CHANNELS = ("stable", "beta", "alpha", "nightly")  # nightly: a custom channel
PERSISTENT = ["db"]
STEP = 3600  # the rollout's interval: +10 % an hour from 0 %


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A repository with a custom channel, served by nginx, and an install directory that ran V1,
    then V101 (unhealthy: rolled back and marked bad here), then V102, which the operator rolled back
    (its data snapshot kept); V11 is in a staged rollout from 0 % (held from every machine now), V12
    is yanked, nightly has V2, required (min_version 1.5.0)."""
    base = tmp_path_factory.mktemp("dashboard")
    repo = Repo(base / "repo", base / "keys")
    create_keys(repo.keys, None, channels=CHANNELS)
    release_cli("init", str(repo.dir), "--keys", str(repo.keys))
    publish(repo, V1, app_files(V1))
    publish(repo, V101, app_files(V101, healthy=False))
    publish(repo, V102, app_files(V102))
    publish(repo, V11, app_files(V11), type="minor")
    publish(repo, V12, app_files(V12))
    write_tree(base / "src-nightly", app_files(V2))  # required of every machine below 1.5
    release_cli("publish", str(repo.dir), str(base / "src-nightly"), "--keys", str(repo.keys), "--channel", "nightly",
                "--version", V2, "--type", "major", "--platform", "any", "--min-version", "1.5.0")
    schedule = base / "schedule.json"
    schedule.write_text(json.dumps({"type": "percentage", "initial_percentage": 0, "increase_percentage": 10,
                                    "increase_interval": STEP}))
    release_cli("rollout", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", V11,
                "--schedule", str(schedule))
    release_cli("yank", str(repo.dir), "--keys", str(repo.keys), "--channel", "stable", "--version", V12,
                "--reason", "corrupts the cache on upgrade")
    with serve(repo.dir) as url:
        template = base / "inst"
        ins = init_client(template, url, repo, enabled=False, persistent_paths=PERSISTENT)
        ins.install(V1)
        (template / "data" / "db" / "app.db").write_text("data of 1.0.0\n")
        with pytest.raises(HealthCheckError):  # its health check fails: back on V1, V101 marked bad
            ins.install(V101)
        assert ins.install(V102).outcome == "committed"
        assert ins.rollback(reason="operator: slow start").version == V1
        (template / "data" / "db" / "app.db").write_text("changed later\n")
        yield base, template


def _page(browser: Any, width: int) -> tuple[Any, list[str]]:
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


def _shot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")


def _fits(page: Any) -> None:
    """Nothing wider than the window, and the header wholly inside it (seen from the top)."""
    sizes = page.evaluate("""() => {
        window.scrollTo(0, 0);
        const h = document.querySelector('header').getBoundingClientRect();
        const offenders = Array.from(document.querySelectorAll('body *')).filter((e) => {
            const r = e.getBoundingClientRect();
            return r.width > 0 && (r.right > innerWidth + 0.5 || r.left < -0.5);
        }).slice(0, 5).map((e) => e.tagName + '#' + e.id + '.' + e.className);
        return {scroll: document.scrollingElement.scrollWidth, inner: innerWidth,
                header: [h.left, h.top, h.right, h.bottom], offenders};
    }""")
    assert sizes["scroll"] <= sizes["inner"], sizes
    left, top, right, _ = sizes["header"]
    assert left >= 0 and top >= 0 and right <= sizes["inner"], sizes
    assert sizes["offenders"] == [], sizes
    locked = page.locator("#token-form").is_visible()
    parts = ("#token-input", "#token-save") if locked else ("#token-ok .pill", "#token-clear")
    for part in ("header .brand", "#agent-health", *parts):
        box = page.locator(part).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= sizes["inner"], (part, box)


@pytest.mark.parametrize("width", [390, 1280])
def test_dashboard_controls_the_machine(site: Any, browser: Any, tmp_path: Path, width: int) -> None:
    base, template = site
    d = copy_install(template, tmp_path / "inst")
    cfg = config.load(d)
    expect = sync_api.expect
    with serve(base / "repo") as url:
        config.update_values(d, {"repo_url": url})
        with run_agent(d) as agent:
            page, errors = _page(browser, width)
            page.goto(agent.url)
            expect(page.locator("#installed-version")).to_have_text(V1)
            expect(page.locator("#rollout-why")).to_contain_text("not checked yet")
            _fits(page)
            page.fill("#token-input", agent.token)
            page.click("#token-save")
            expect(page.locator("#token-ok")).to_be_visible()
            _fits(page)

            # check: the release list with its marks, the dropdown's labels, the rollout card
            page.get_by_role("button", name="Check for updates").click()
            releases = page.locator("#releases")
            expect(releases.locator(f"[data-version='{V12}'] .mark.yanked")).to_have_text("yanked")
            expect(releases.locator(f"[data-version='{V12}']")).to_contain_text("corrupts the cache on upgrade")
            expect(releases.locator(f"[data-version='{V11}'] .mark.held")).to_have_text("held")
            expect(releases.locator(f"[data-version='{V11}']")).to_contain_text("staged rollout at 0%")
            expect(releases.locator(f"[data-version='{V101}'] .mark.bad")).to_have_text("marked bad")
            expect(releases.locator(f"[data-version='{V101}']")).to_contain_text("rolled back 1 time on this machine")
            expect(releases.locator(f"[data-version='{V102}'] .mark.rolled_back")).to_have_text("rolled back")
            expect(releases.locator(f"[data-version='{V102}']")).to_contain_text("operator: slow start")
            expect(releases.locator(f"[data-version='{V102}']")).to_contain_text("installing it by name works")
            expect(releases.locator(f"[data-version='{V1}'] .mark")).to_have_count(0)
            expect(page.locator("#latest-version")).to_have_text("none offered now")  # 1.2.0 yanked, 1.1.0 held
            expect(page.locator("#version-select")).to_have_value(V12)  # every newer one is marked: the newest
            options = {o["value"]: o["text"] for o in page.locator("#version-select option").evaluate_all(
                "os => os.map((o) => ({value: o.value, text: o.textContent}))")}
            assert set(options) == {V101, V102, V11, V12}, options
            assert "YANKED" in options[V12] and "MARKED BAD" in options[V101] and "HELD" in options[V11], options
            assert "ROLLED BACK" in options[V102], options

            status = agent.status()
            card = status["rollout"]
            mine = bucket(cfg.text("client_id"), "stable", V11)
            started = parse_time(card["rollout_start"])
            steps = int(mine // 10) + 1  # 0 % now, +10 % per STEP: in when 10 * steps > bucket
            expected = format_time(started + timedelta(seconds=steps * STEP))
            assert card["version"] == V11 and card["bucket"] == round(mine, 4) and card["percent"] == 0, card
            assert card["gets_it_at"] == expected, (card, expected)
            expect(page.locator("#rollout-bucket")).to_have_text(f"{mine:.2f} of 100")
            expect(page.locator("#rollout-percent")).to_have_text("0%")
            shown = expected.replace("T", " ").rstrip("Z")
            expect(page.locator("#rollout-when")).to_have_text(f"gets it at {shown} UTC")
            expect(page.locator("#rollout-why")).to_contain_text(f"step {steps + 1} of the schedule reaches")
            _shot(page, tmp_path / f"dashboard-{width}.png")

            # settings: saved, then a bad value refused next to its field (nothing written)
            form = page.locator("#settings-form")
            expect(form.locator("#set-check_interval")).to_have_value(str(cfg.integer("check_interval")))
            page.fill("#set-check_interval", "900")
            form.locator(".field[data-key='allowed_update_types'] input[value='major']").uncheck()
            page.click("#settings-save")
            expect(page.locator("#settings-result")).to_have_text("saved: allowed_update_types, check_interval")
            saved = tomllib.loads((d / "config.toml").read_text())
            assert saved["check_interval"] == 900 and "major" not in saved["allowed_update_types"], saved
            before = (d / "config.toml").read_bytes()
            page.fill("#set-check_interval", "-5")
            page.fill("#set-max_backups", "3")
            page.click("#settings-save")
            error = page.locator("#err-check_interval")
            expect(error).to_contain_text("config key 'check_interval': -5 must be greater than 0")
            expect(page.locator(".field[data-key='check_interval']")).to_have_class("field invalid")
            expect(page.locator("#err-max_backups")).to_have_text("")
            expect(page.locator("#settings-result")).to_contain_text("check_interval was refused")
            assert (d / "config.toml").read_bytes() == before
            _shot(page, tmp_path / f"dashboard-{width}-refused.png")
            page.fill("#set-check_interval", "900")
            page.fill("#set-max_backups", str(cfg.integer("max_backups")))

            # channel: the repository's channels (listed by the check), the custom one included; switch to it
            expect(page.locator("#channel-source")).to_have_text("the channels this repository offers")
            offered = page.locator("#channel-select option").evaluate_all("os => os.map((o) => o.value)")
            assert sorted(offered) == sorted(CHANNELS), offered
            dialogs: list[str] = []

            def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.accept()

            page.on("dialog", accept)
            page.select_option("#channel-select", "nightly")
            page.click("#channel-switch")
            expect(page.locator("#channel-result")).to_contain_text("now on nightly (was stable)")
            assert any("Follow channel nightly" in m for m in dialogs), dialogs
            assert config.load(d).text("channel") == "nightly"
            expect(page.locator("#installed-channel")).to_have_text("nightly")
            expect(page.locator(f"#releases [data-version='{V2}']")).to_be_visible()
            expect(page.locator(f"#releases [data-version='{V11}']")).to_have_count(0)
            expect(page.locator("#rollout-version")).to_have_text(f"{V2} (major) on nightly")
            expect(page.locator("#rollout-when")).to_have_text("offered now")
            expect(page.locator("#rollout-why")).to_contain_text("a required update (min_version)")
            expect(page.locator(f"#releases [data-version='{V2}'] .mark.required")).to_have_text("required")
            expect(page.locator(f"#releases [data-version='{V2}']")).to_contain_text("below min_version 1.5.0")

            # backup restore: asks first, then puts the snapshot's data back
            found = agent.get("/api/backups").json()["backups"]
            snap = next(b for b in found if b["kind"] == "snapshot" and b["for_version"] == V102)  # V1's data
            dialogs.clear()
            page.locator(f"#backups tbody tr[data-id='{snap['id']}'] .restore-btn").click()
            expect(page.locator("#backup-result")).to_contain_text(f"restored the data of backup {snap['id']}")
            assert len(dialogs) == 1 and "Put the data of backup" in dialogs[0], dialogs
            assert (d / "data" / "db" / "app.db").read_text() == "data of 1.0.0\n"

            # history filters: kind, outcome, version
            page.select_option("#filter-op", "rollback")  # V101's automatic one and V102's by the operator
            expect(page.locator("#history tbody tr")).to_have_count(2)
            expect(page.locator("#history tbody")).to_contain_text("operator: slow start")
            page.select_option("#filter-op", "")
            page.select_option("#filter-outcome", "committed")
            expect(page.locator("#history tbody tr")).to_have_count(2)
            expect(page.locator("#history tbody tr").filter(has_text="committed")).to_have_count(2)
            page.select_option("#filter-outcome", "")
            page.select_option("#filter-op", "restore")
            expect(page.locator("#history tbody tr")).to_have_count(1)
            page.select_option("#filter-op", "")
            page.fill("#filter-version", V101)
            expect(page.locator("#history tbody tr").filter(has_not_text=V101)).to_have_count(0)
            expect(page.locator("#history tbody tr").filter(has_text=V101)).not_to_have_count(0)

            # a rollback that marks the version it leaves bad (the box), said in the confirmation first
            page.fill("#filter-version", "")
            dialogs.clear()
            page.check("#rollback-bad")
            page.click("#rollback-btn")
            expect(page.locator("#message")).to_contain_text(f"Rolled back {V1} → {V102}")
            assert len(dialogs) == 1 and f"{V1} is marked BAD" in dialogs[0], dialogs
            expect(page.locator("#installed-version")).to_have_text(V102)
            installed = agent.status()["installed"]  # (nightly's list does not hold V1: the state says it)
            assert V1 in installed["bad_versions"] and V1 not in installed["rolled_back_versions"], installed

            _fits(page)
            _shot(page, tmp_path / f"dashboard-{width}-after.png")
            if width == 390:  # the narrowest phones the page is made for
                page.set_viewport_size({"width": 360, "height": 800})
                _fits(page)
            refused = "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"
            assert errors == [refused], errors  # the one refusal above, logged by the browser; nothing else
            if os.environ.get("PINNACLE_SAVE_SCREENSHOT") == "1":
                name = "dashboard.png" if width == 1280 else f"dashboard-{width}.png"
                shutil.copyfile(tmp_path / f"dashboard-{width}.png", ROOT / "docs" / name)


def test_the_api_behind_the_dashboard_refuses_bad_input(site: Any, tmp_path: Path) -> None:
    """The calls the dashboard makes, refused with the API's one error shape, the refused field named
    (the form shows the message there), and nothing changed on disk."""
    base, template = site
    d = copy_install(template, tmp_path / "inst")
    with serve(base / "repo") as url:
        config.update_values(d, {"repo_url": url})
        with run_agent(d) as agent:
            form = agent.get("/api/updates/config").json()
            assert [f["key"] for f in form["fields"]] == list(SETTINGS_FORM) and form["channel"] == "stable"
            by_key = {f["key"]: f for f in form["fields"]}
            assert by_key["check_interval"]["value"] == config.load(d).integer("check_interval")
            assert by_key["allowed_update_types"]["choices"] == [t.value for t in UpdateType]
            assert all(f["help"] for f in form["fields"])

            listed = agent.get("/api/updates/channels").json()  # no check yet: the usual names, and why
            assert listed["source"] == "defaults" and "not asked yet" in listed["error"], listed
            assert agent.post("/api/updates/check", {}).status_code == 200
            listed = agent.get("/api/updates/channels").json()
            assert listed["source"] == "repository" and listed["error"] is None, listed
            assert [c["name"] for c in listed["channels"]] == sorted(CHANNELS) and listed["current"] == "stable"

            before = (d / "config.toml").read_bytes()
            for body, field in (
                ({"check_interval": -5}, "check_interval"),
                ({"check_interval": "often"}, "check_interval"),
                ({"enabled": "yes", "check_interval": 60}, "enabled"),
                ({"allowed_update_types": ["patch", "weekly"]}, "allowed_update_types"),
                ({"max_backups": 10**9}, "max_backups"),
                ({"no_such_key": 1}, "no_such_key"),
            ):
                r = agent.post("/api/updates/config", body)
                assert api_error(r, 422, "invalid_config") and r.json()["error"]["field"] == field, (body, r.text)
            assert "field" not in agent.post("/api/updates/config", {}).json()["error"]
            assert api_error(agent.post("/api/updates/config", {"check_interval": 60}, token=False), 401,
                             "unauthorized")

            for body, status, code in (
                ({"channel": "no such/channel"}, 422, "invalid_config"),
                ({"channel": "gamma"}, 404, "unknown_channel"),  # a valid name the repository does not offer
                ({"channel": "stable"}, 409, "refused"),  # already on it
                ({}, 422, "invalid_request"),
                ({"channel": 5}, 422, "invalid_request"),
                ({"channel": "beta", "downgrade": True}, 422, "invalid_request"),
            ):
                message = api_error(agent.post("/api/updates/channel", body), status, code)
                assert message, body
            assert "it offers alpha, beta, nightly, stable" in api_error(
                agent.post("/api/updates/channel", {"channel": "gamma"}), 404, "unknown_channel")
            api_error(agent.post("/api/updates/channel", {"channel": "beta"}, token=False), 401, "unauthorized")
            assert (d / "config.toml").read_bytes() == before

            history = agent.get("/api/updates/history", params={"outcome": "committed"}).json()["records"]
            assert history and all(r["outcome"] == "committed" for r in history)
            history = agent.get("/api/updates/history", params={"version": "1.0.1"}).json()["records"]
            assert history and all("1.0.1" in (r.get("version"), r.get("from_version")) for r in history)
            assert agent.get("/api/updates/history", params={"version": "9.9"}).json()["total"] == 0
            api_error(agent.get("/api/updates/history", params={"version": "1" * 201}), 422, "invalid_request")

            switched = agent.post("/api/updates/channel", {"channel": "beta"})
            assert switched.status_code == 200 and switched.json()["previous_channel"] == "stable", switched.text
            assert config.load(d).text("channel") == "beta"
            assert agent.status()["rollout"]["why"].startswith("no newer release on beta")
