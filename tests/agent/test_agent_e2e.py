"""The dashboard end to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright,
no downloaded browser): paste the token, click "Check for updates", see the new version, install
it and watch the progress bar reach 100 %.

The screenshot is written to the test's tmp dir; with PINNACLE_SAVE_SCREENSHOT=1 it also replaces
docs/dashboard.png (the README's picture), so an ordinary run leaves the checkout untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agent_server import V1, V2, V11, V101, publish_all, run_agent, serve_repo
from tests.helpers_client import PY, ROOT, env, init_client

sync_api = pytest.importorskip("playwright.sync_api")


def test_dashboard_check_install_and_progress(tmp_path: Path, browser: object) -> None:
    repo = publish_all(tmp_path / "repo", ((V1, "patch"), (V101, "patch"), (V11, "minor"), (V2, "major")))
    with serve_repo(repo.dir) as url:
        d = tmp_path / "inst"
        installer = init_client(d, url, repo, enabled=False)
        # some history for the plots: two installs and a manual rollback
        installer.install(V1)
        installer.install(V101)
        subprocess.run([PY, "-m", "pinnacle_updates.client", "--install-dir", str(d), "rollback"], cwd=ROOT,
                       env=env(), check=True,
                       capture_output=True)
        with run_agent(d) as agent:
            page = browser.new_page()  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(agent.url)
            expect = sync_api.expect
            expect(page.locator("#installed-version")).to_have_text(V1)
            expect(page.locator("#rollout-why")).to_contain_text("not checked yet")

            # without the token, the check is not sent
            page.get_by_role("button", name="Check for updates").click()
            expect(page.locator("#message")).to_contain_text("token")
            assert agent.get("/api/updates/history", params={"op": "check"}).json()["total"] == 0

            page.fill("#token-input", agent.token)
            page.click("#token-save")
            expect(page.locator("#token-ok")).to_be_visible()
            page.get_by_role("button", name="Check for updates").click()
            expect(page.locator("#latest-version")).to_have_text(V2)
            expect(page.locator("#latest-type")).to_have_text("major")
            expect(page.locator("#latest-notes")).to_contain_text("New storage format")
            expect(page.locator("#last-check")).to_contain_text(f"{V11} (minor) is available")
            expect(page.locator("#releases")).to_contain_text(V101)  # marked bad, still listed

            page.select_option("#version-select", V11)
            expect(page.locator("#install-btn")).to_have_text(f"Install {V11}")
            page.click("#install-btn")
            expect(page.locator("#progress-text")).to_have_text("100%", timeout=60_000)
            expect(page.locator("#progress-step")).to_contain_text("succeeded")
            expect(page.locator("#installed-version")).to_have_text(V11)
            expect(page.locator("#history tbody")).to_contain_text(V11)
            expect(page.locator("#chart-durations circle")).to_have_count(3)  # V1, V101, V11 committed
            expect(page.locator("#health-state")).to_have_text("healthy")
            assert agent.status()["installed"]["version"] == V11

            # a major update asks first; declining sends nothing
            dialogs: list[str] = []

            def decline(dialog: object) -> None:
                dialogs.append(dialog.message)  # type: ignore[attr-defined]
                dialog.dismiss()  # type: ignore[attr-defined]

            page.on("dialog", decline)
            page.select_option("#version-select", V2)
            page.click("#install-btn")
            expect(page.locator("#install-btn")).to_have_text(f"Install {V2}")
            assert len(dialogs) == 1 and "MAJOR" in dialogs[0], dialogs
            status = agent.status()
            assert status["installed"]["version"] == V11 and status["job"]["version"] == V11
            assert errors == [], errors

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("PINNACLE_SAVE_SCREENSHOT") == "1":
                shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
