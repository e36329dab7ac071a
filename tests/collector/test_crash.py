"""``kill -9`` of the collector under load: every report that got a 2xx is in the database afterwards
(SQLite in WAL mode with synchronous=FULL, and PostgreSQL), and a restarted collector takes the
unanswered ones as new and the answered ones as duplicates."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from pinnacle_updates.formats.report import Report, encode_batch
from pinnacle_updates.repo_tools.collector.storage import open_storage
from tests.collector.conftest import make_report, start_collector, stop
from tests.collector.test_storage import raw


def test_kill_9_under_load_loses_no_answered_report(db_url: str, tmp_path: Path) -> None:
    proc, url = start_collector(db_url, tmp_path / "c", "--rate-per-address", "0")
    answered: list[str] = []
    sent: list[list[Report]] = []
    done = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                reports = [make_report() for _ in range(40)]
                ids = [r.report_id for r in reports]
                sent.append(reports)
                try:
                    response = client.post(f"{url}/v1/reports", content=encode_batch(reports),
                                           headers={"Content-Type": "application/json"})
                except httpx.HTTPError:
                    return  # the collector is gone
                if response.status_code == 200:
                    answered.extend(ids)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(answered) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()  # SIGKILL, mid-load
        proc.wait()
    finally:
        done.set()
        for t in threads:
            t.join()
        stop(proc)
    assert len(answered) >= 400, "the load did not get going"
    stored = {row[0] for row in raw(db_url, "SELECT report_id FROM reports")}
    missing = set(answered) - stored
    assert not missing, f"{len(missing)} answered reports lost"
    # Aggregates were committed with the rows: still equal to a recount.
    assert raw(db_url, "SELECT SUM(reports) FROM hourly")[0][0] == len(stored)
    # Every batch sent again to a restarted collector: a batch is one transaction, so each comes back
    # all duplicates (stored before the kill, answered or not) or all accepted, and then all is stored.
    proc, url = start_collector(db_url, tmp_path / "c2", "--rate-per-address", "0")
    try:
        with httpx.Client(timeout=10) as client:
            for reports in sent:
                answer = client.post(f"{url}/v1/reports", content=encode_batch(reports),
                                     headers={"Content-Type": "application/json"}).json()
                was_stored = reports[0].report_id in stored
                assert answer == ({"accepted": 0, "duplicates": 40} if was_stored
                                  else {"accepted": 40, "duplicates": 0})
    finally:
        stop(proc)
    with open_storage(db_url) as storage:
        assert storage.counts()["reports"] == 40 * len(sent)
