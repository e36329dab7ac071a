"""Data backups through the agent: the REST API (``/api/backups``...) against a real ``pinnacle-update
serve`` process over a real install directory (snapshots taken by real installs from a repository
served by nginx), and the dashboard's backups view in headless Chromium.

Every refusal has the API's one error shape and changes nothing on disk (the data, the backups and
the state are compared before and after)."""

from __future__ import annotations

import os
import random
import shutil
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinnacle_updates.client import backups, config
from pinnacle_updates.client.agent.openapi import BACKUP_ID
from tests.agent_server import V1, V2, Agent, publish_all, run_agent, serve_repo
from tests.agent_server import api_error as _error
from tests.helpers_client import ROOT, copy_install, hold_lock, init_client, tree_digest

PERSISTENT = ["uploads", "db"]
MANY = 1_200  # files in uploads/: more than the 1,000 entries one backup's detail shows


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """V1 installed from a repository served by nginx, its data written, then V2 installed (the real
    install snapshots V1's data before the swap), then V2 changes the data. The tests need the
    repository no more: restores, prunes and rollbacks are local."""
    base = tmp_path_factory.mktemp("agent-backups")
    repo = publish_all(base / "repo", ((V1, "patch"), (V2, "major")))
    d = base / "inst"
    with serve_repo(repo.dir) as url:
        ins = init_client(d, url, repo, enabled=False, persistent_paths=PERSISTENT)
        ins.install(V1)
        _write_v1_data(d)
        ins.install(V2, confirm_major=True)
    _v2_changes_the_data(d)
    return d


def _write_v1_data(d: Path) -> None:
    uploads = d / "data" / "uploads"
    for i in range(MANY):
        (uploads / f"f{i:04d}.txt").write_text(f"upload {i} of version 1\n")
    (d / "data" / "db" / "app.db").write_bytes(b"schema 1\n" + os.urandom(4096))


def _v2_changes_the_data(d: Path) -> None:
    (d / "data" / "db" / "app.db").write_bytes(b"schema 2\n")
    (d / "data" / "uploads" / "written-by-v2.txt").write_text("v2\n")


@pytest.fixture
def install_dir(template: Path, tmp_path: Path) -> Path:
    return copy_install(template, tmp_path / "inst")


@pytest.fixture
def agent(install_dir: Path) -> Iterator[Agent]:
    with run_agent(install_dir) as a:
        yield a


def _only_snapshot(agent: Agent) -> dict[str, Any]:
    """The snapshot of V1's data taken before V2 went live (the first install took one of the empty
    data too)."""
    listed = agent.get("/api/backups").json()
    snaps = [b for b in listed["backups"] if b["kind"] == "snapshot" and b["for_version"] == V2]
    assert len(snaps) == 1, listed
    return snaps[0]


def _data(d: Path) -> str:
    return backups.digest_tree(d / "data", PERSISTENT)


def _on_disk(d: Path) -> dict[str, str]:
    """What a refused request must not change: the data, the backups area, the state and the slots."""
    keep = ("data", "backups", "state.json", "current", "slots")
    return {k: v for k, v in tree_digest(d).items() if k.split("/", 1)[0] in keep}


# ----- reading ---------------------------------------------------------------------------------------
def _list_and_show(agent: Agent) -> None:
    listed = agent.get("/api/backups").json()
    assert listed["count"] == 2 and listed["retention"] == {"max_backups": 5, "max_rollback_days": 30}
    empty, snap = listed["backups"]  # oldest first
    assert (empty["kind"], empty["version"], empty["for_version"], empty["method"]) == ("snapshot", None, V1, "empty")
    assert (snap["kind"], snap["version"], snap["for_version"]) == ("snapshot", V1, V2)
    assert snap["files"] == MANY + 1 and snap["method"] in ("reflink", "copy", "mixed")
    assert snap["path"] == f"backups/{snap['id']}" and BACKUP_ID.fullmatch(snap["id"])
    assert listed["bytes"] == snap["bytes"] > 0
    rollback = listed["rollback"]
    assert rollback["target"]["version"] == V1 and rollback["from_version"] == V2
    assert rollback["restores"] == snap["id"] and rollback["restorable"] is True

    # the seed's path keeps its fields and gains the list
    old = agent.get("/api/updates/backups").json()
    assert old["previous_slot"]["version"] == V1 and old["max_rollback_days"] == 30
    assert isinstance(old["cached_releases"], list) and old["backups"] == listed["backups"]

    one = agent.get(f"/api/backups/{snap['id']}").json()
    assert one["id"] == snap["id"] and one["entry_count"] == MANY + 3  # the files, uploads/, db/ and db/app.db
    assert len(one["entries"]) == 1000 and one["entries_truncated"] is True
    first = one["entries"][0]
    assert (first["path"], first["type"], first["uid"]) == ("db", "dir", os.getuid())  # parents first, by name
    files = {e["path"]: e for e in one["entries"] if e["type"] == "file"}
    assert files["db/app.db"]["size"] == 9 + 4096 and len(files["db/app.db"]["sha256"]) == 64


def _verify_then_a_file_changed_by_hand(agent: Agent, install_dir: Path) -> None:
    snap = _only_snapshot(agent)
    r = agent.post(f"/api/backups/{snap['id']}/verify", {})
    assert r.status_code == 200 and r.json() == {"id": snap["id"], "ok": True, "problems": []}

    target = install_dir / "backups" / snap["id"] / "data" / "db" / "app.db"
    raw = bytearray(target.read_bytes())
    raw[20] ^= 0xFF  # same size: only the recorded sha256 tells
    target.write_bytes(bytes(raw))
    before = _on_disk(install_dir)
    r = agent.post(f"/api/backups/{snap['id']}/verify")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": snap["id"], "ok": False, "problems": ["db/app.db: content differs from its sha256"]}
    assert _on_disk(install_dir) == before  # verify reads only


def test_restore_puts_the_snapshot_back_then_prune_keeps_the_rollback_one(agent: Agent, install_dir: Path) -> None:
    snap = _only_snapshot(agent)
    snapshot_data = backups.digest_tree(install_dir / "backups" / snap["id"] / "data", PERSISTENT)
    replaced = _data(install_dir)
    assert replaced != snapshot_data

    r = agent.post(f"/api/backups/{snap['id']}/restore", {})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["backup"] == snap["id"] and report["version"] == V2 and report["notes"] == []
    assert _data(install_dir) == snapshot_data
    assert (install_dir / "data" / "db" / "app.db").read_bytes().startswith(b"schema 1\n")
    assert not (install_dir / "data" / "uploads" / "written-by-v2.txt").exists()

    # what V2 had written is a backup of its own, complete and intact
    kept = report["data_rejected"]
    assert backups.digest_tree(install_dir / "backups" / kept / "data", PERSISTENT) == replaced
    listed = agent.get("/api/backups").json()
    rejected = next(b for b in listed["backups"] if b["id"] == kept)
    assert (rejected["kind"], rejected["version"], rejected["restored_from"]) == ("rejected", V2, snap["id"])
    assert agent.post(f"/api/backups/{kept}/verify").json()["ok"] is True

    status = agent.status()
    assert status["job"]["kind"] == "restore" and status["job"]["state"] == "succeeded"
    assert status["installed"]["version"] == V2  # the code did not change
    record = agent.get("/api/updates/history", params={"op": "restore"}).json()["records"][0]
    assert record["backup"] == snap["id"] and record["data_rejected"] == kept
    _prune(agent, snap)


def test_a_rollback_restores_the_snapshot_or_keeps_the_data(install_dir: Path, tmp_path: Path) -> None:
    second = copy_install(install_dir, tmp_path / "second")
    with run_agent(install_dir) as agent:
        snap = _only_snapshot(agent)
        want = backups.digest_tree(install_dir / "backups" / snap["id"] / "data", PERSISTENT)
        r = agent.post("/api/updates/rollback", {})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == V1 and r.json()["data_restored"] == snap["id"]
        assert _data(install_dir) == want
    with run_agent(second) as agent:
        kept = _data(second)
        r = agent.post("/api/updates/rollback", {"keep_data": True})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == V1 and r.json()["data_restored"] is None
        assert _data(second) == kept
        _error(agent.post("/api/updates/rollback", {"keep_data": "yes"}), 422, "invalid_request")


def _prune(agent: Agent, snap: dict[str, Any]) -> None:
    """After the restore: the first install's snapshot (of no data), V1's snapshot, V2's replaced data."""
    empty, _, rejected = (b["id"] for b in agent.get("/api/backups").json()["backups"])
    _error(agent.post("/api/backups/prune", {}, token=False), 401, "unauthorized")
    assert agent.get("/api/backups").json()["count"] == 3

    assert agent.post("/api/updates/config", {"max_backups": 1}).status_code == 200
    r = agent.post("/api/backups/prune", {})
    assert r.status_code == 200 and r.json() == {"removed": [rejected, empty]}, r.text
    listed = agent.get("/api/backups").json()
    assert [b["id"] for b in listed["backups"]] == [snap["id"]]  # what a rollback of V2 restores stays
    assert listed["rollback"]["restorable"] is True
    assert agent.post("/api/backups/prune").json() == {"removed": []}
    record = agent.get("/api/updates/history", params={"op": "prune_backups"}).json()["records"][0]
    assert record["removed"] == [rejected, empty]


# ----- refusals --------------------------------------------------------------------------------------
def test_reading_verifying_and_refusals(agent: Agent, install_dir: Path) -> None:
    """One agent, in order: list and show; unknown and malformed ids; verify of an intact backup and
    of one changed by hand; a corrupt manifest."""
    _list_and_show(agent)
    _unknown_and_malformed_ids(agent, install_dir)
    _verify_then_a_file_changed_by_hand(agent, install_dir)
    _corrupt_manifest(agent, install_dir)


def _unknown_and_malformed_ids(agent: Agent, install_dir: Path) -> None:
    before = _on_disk(install_dir)
    unknown = "20200101T000000000Z-abcd"
    for method, suffix in (("GET", ""), ("POST", "/verify"), ("POST", "/restore")):
        r = agent.http.request(method, f"/api/backups/{unknown}{suffix}", headers=agent.auth())
        assert unknown in _error(r, 404, "unknown_backup")
    malformed = ["x", "a" * 500, "20200101T000000000Z-ABCD", "20200101T000000000Z-abcd.",
                 "20200101T000000000Z-abc\u0661", "%00", "prune"]
    for bad in malformed:
        for method, suffix in (("GET", ""), ("POST", "/verify"), ("POST", "/restore")):
            r = agent.http.request(method, f"/api/backups/{bad}{suffix}", headers=agent.auth())
            assert "not a backup id" in _error(r, 422, "invalid_request"), (bad, suffix)
    # a slash (encoded or not) never reaches a backup route; an empty id is the list, not a backup
    for path in ("/api/backups/../x/verify", "/api/backups/..%2Fx/restore", "/api/backups//restore"):
        assert agent.http.post(path, headers=agent.auth()).status_code in (404, 405), path
    assert agent.http.post("/api/backups/", headers=agent.auth()).status_code == 307  # Starlette: to the list
    # the token is checked first; a body with fields is refused
    snap = _only_snapshot(agent)
    _error(agent.post(f"/api/backups/{snap['id']}/restore", token=False), 401, "unauthorized")
    assert _error(agent.post(f"/api/backups/{snap['id']}/verify", {"deep": True}), 422,
                  "invalid_request") == "unknown field 'deep' (this call takes none)"
    _error(agent.post(f"/api/backups/{snap['id']}/restore", [1]), 422, "invalid_request")
    _error(agent.http.delete(f"/api/backups/{snap['id']}", headers=agent.auth()), 405, "method_not_allowed")
    assert _on_disk(install_dir) == before
    assert "Traceback" not in agent.log_text()


def _corrupt_manifest(agent: Agent, install_dir: Path) -> None:
    snap = _only_snapshot(agent)
    manifest = install_dir / "backups" / snap["id"] / "backup.json"
    manifest.write_bytes(manifest.read_bytes()[:-40])  # cut short: not JSON any more
    before = _on_disk(install_dir)
    for method, suffix in (("GET", ""), ("POST", "/verify"), ("POST", "/restore")):
        r = agent.http.request(method, f"/api/backups/{snap['id']}{suffix}", headers=agent.auth())
        _error(r, 409, "backup_error")
    listed = agent.get("/api/backups").json()
    assert snap["id"] not in {b["id"] for b in listed["backups"]}  # an unreadable backup is not listed
    assert listed["rollback"]["restores"] == snap["id"] and listed["rollback"]["restorable"] is False
    assert _on_disk(install_dir) == before
    assert agent.status()["job"] is None  # nothing was started


def _lock_held_by_another_process(agent: Agent, install_dir: Path) -> None:
    snap = _only_snapshot(agent)
    with hold_lock(install_dir) as holder:
        before = _on_disk(install_dir)
        message = _error(agent.post(f"/api/backups/{snap['id']}/restore"), 409, "busy")
        assert f"pid {holder.pid}" in message
        _error(agent.post("/api/backups/prune"), 409, "busy")
        assert _on_disk(install_dir) == before
        assert agent.post(f"/api/backups/{snap['id']}/verify").json()["ok"] is True  # reading needs no lock


def test_restore_while_another_operation_runs_is_409(install_dir: Path) -> None:
    """Another process holding the install lock, then two restores at once through the agent (a
    stop_command that takes a second keeps the first running while the second arrives), then a
    stop_command that fails."""
    config.update_values(install_dir, {"stop_command": "sleep 1"})
    with run_agent(install_dir) as agent:
        _lock_held_by_another_process(agent, install_dir)
        snap = _only_snapshot(agent)
        answers: list[httpx.Response] = []

        def restore() -> None:
            with httpx.Client(base_url=agent.url, timeout=60, trust_env=False) as http:
                answers.append(http.post(f"/api/backups/{snap['id']}/restore", headers=agent.auth()))

        first = threading.Thread(target=restore)
        first.start()
        agent.wait_for(lambda s: s["busy"], "the first restore to start", 30)
        restore()
        first.join(60)
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        _error(next(a for a in answers if a.status_code == 409), 409, "busy")
        assert agent.get("/api/backups").json()["count"] == 3  # one restore: one rejected backup

        # an application that cannot be stopped: refused, nothing restored
        assert agent.post("/api/updates/config", {"stop_command": "exit 3"}).status_code == 200
        before = _on_disk(install_dir)
        assert "nothing was restored" in _error(agent.post(f"/api/backups/{snap['id']}/restore"), 409, "refused")
        assert _on_disk(install_dir) == before and agent.status()["job"]["state"] == "failed"


def test_the_documented_id_pattern_is_the_clients_rule() -> None:
    """openapi.BACKUP_ID (what the routes check) accepts exactly what client.backups.valid_id does."""
    rng = random.Random(18)
    alphabet = string.digits + "abcdefABCDEFTZ-xX/.\u0661\u00e9 "
    samples = [backups.new_id() for _ in range(200)]
    for _ in range(5000):
        real = list(backups.new_id())
        for _ in range(rng.randint(0, 2)):  # near misses: one or two characters changed, added or dropped
            at = rng.randrange(len(real) + 1)
            op = rng.choice("sid")
            if op == "s" and at < len(real):
                real[at] = rng.choice(alphabet)
            elif op == "i":
                real.insert(at, rng.choice(alphabet))
            elif at < len(real):
                del real[at]
        samples.append("".join(real))
    samples += ["", "x" * 500, "20261204T130501123Z-1a2b\n"]
    assert sum(backups.valid_id(s) for s in samples) > 200  # the comparison is not vacuous
    for s in samples:
        if s.isascii():
            assert bool(BACKUP_ID.fullmatch(s)) == backups.valid_id(s), repr(s)
        else:  # valid_id's str.isdigit() also takes other scripts' digits (e.g. U+0661); the agent never does
            assert not BACKUP_ID.fullmatch(s), repr(s)


# ----- the dashboard ---------------------------------------------------------------------------------
def test_dashboard_lists_verifies_and_restores_a_backup(agent: Agent, install_dir: Path, browser: Any,
                                                          tmp_path: Path) -> None:
    from playwright.sync_api import expect

    snap = _only_snapshot(agent)
    want = backups.digest_tree(install_dir / "backups" / snap["id"] / "data", PERSISTENT)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    dialogs: list[str] = []
    accept = [True]

    def answer(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept() if accept[0] else dialog.dismiss()

    page.on("dialog", answer)
    page.goto(agent.url)

    row = page.locator(f"#backups tbody tr[data-id='{snap['id']}']")
    expect(row).to_contain_text("snapshot")
    expect(row).to_contain_text(f"{V1} → {V2}")
    expect(row).to_contain_text(str(MANY + 1))
    expect(row).to_have_class("rollback-snapshot")
    expect(page.locator("#backups-summary")).to_contain_text(f"A rollback to {V1} restores backup {snap['id']}")

    # without the token nothing is sent
    row.locator(".restore-btn").click()
    expect(page.locator("#message")).to_contain_text("token")
    assert dialogs == []

    page.fill("#token-input", agent.token)
    page.click("#token-save")
    row.locator(".verify-btn").click()
    expect(page.locator("#backup-result")).to_have_text(f"backup {snap['id']}: intact")

    row.locator(".restore-btn").click()
    expect(page.locator("#backup-result")).to_contain_text(f"restored the data of backup {snap['id']} under {V2}")
    assert len(dialogs) == 1 and snap["id"] in dialogs[0], dialogs
    assert _data(install_dir) == want  # the data on disk is the backup's
    rejected = agent.status()["job"]["result"]["data_rejected"]
    expect(page.locator(f"#backups tbody tr[data-id='{rejected}']")).to_contain_text("rejected")
    expect(page.locator("#progress-step")).to_contain_text("data restore")
    expect(page.locator("#history tbody")).to_contain_text("restore")
    assert errors == [], errors

    shot = tmp_path / "dashboard-backups.png"  # with PINNACLE_SAVE_SCREENSHOT=1 also docs/dashboard-backups.png
    page.locator("#backups-card").screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PINNACLE_SAVE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard-backups.png")
    # a restore the user declines sends nothing
    accept[0] = False
    before = _on_disk(install_dir)
    shown = page.locator("#backup-result").text_content()
    page.locator(f"#backups tbody tr[data-id='{snap['id']}'] .restore-btn").click()
    assert len(dialogs) == 2
    time.sleep(0.5)  # a request, had one been sent, would have run by now (the restore above took less)
    assert _on_disk(install_dir) == before and page.locator("#backup-result").text_content() == shown
    assert agent.get("/api/backups").json()["count"] == 3
    # the rollback button says which backup the data goes back to (declined: nothing happens)
    page.click("#rollback-btn")
    assert len(dialogs) == 3 and f"The data goes back to backup {snap['id']}" in dialogs[2], dialogs
    assert agent.status()["installed"]["version"] == V2
    assert errors == [], errors
