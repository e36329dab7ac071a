"""``pinnacle-release watch`` with real parts: a real repository and keys (signed commits), a real SQLite
reports database filled through the collector's storage layer, F's canary rule. Gated steps in the
signed index, advance/hold/halt/yank, the threat model of unauthenticated reports, the write-ahead
decision log settled after an interruption (and a real kill -9 loop of the CLI), refusals as one line."""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.fleet import evaluate
from pinnacle_updates.formats.index import Release
from pinnacle_updates.formats.rollout import (
    ClockReading,
    Rollout,
    RolloutState,
    Schedule,
    ScheduleError,
    parse_schedule,
)
from pinnacle_updates.repo_tools import fleet, watch
from pinnacle_updates.repo_tools import publish as ops
from pinnacle_updates.repo_tools.audit import verify_repository
from pinnacle_updates.repo_tools.cli import cli
from pinnacle_updates.repo_tools.collector.storage import SQLiteStorage, Storage, open_storage
from pinnacle_updates.repo_tools.core import canary
from pinnacle_updates.repo_tools.errors import KeyStoreError, PublishRefused, RepositoryStateError
from pinnacle_updates.repo_tools.keys import KeyStore
from pinnacle_updates.repo_tools.store import Repository
from tests.collector.conftest import make_report
from tests.conftest import ROOT, run_cli, tree_digest
from tests.kill_loop import kill_after_lines

GATED = {"type": "waves", "gate": True,
         "waves": [{"after": 0, "percent": 10}, {"after": 3600, "percent": 50}, {"after": 7200, "percent": 100}]}
HOUR = timedelta(hours=1)


# ----- the signed format --------------------------------------------------------------------------------
def test_gated_schedule_steps_and_signed_fields() -> None:
    s = parse_schedule(GATED)
    assert s.gate and s.step_count() == 3 and [s.step(i).percent for i in range(3)] == [10, 50, 100]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    r = Rollout(s, "2026-01-01T00:00:00Z")
    assert r.percent_at(start + 5 * HOUR) == 10  # the timetable says 100, the gate 10
    a = r.advanced()
    assert a.percent_at(start + 5 * HOUR) == 50 and a.percent_at(start) == 10  # and never ahead of the timetable
    assert a.to_dict()["approved_step"] == 1 and a.to_dict()["approved_percent"] == 50
    assert Rollout.from_dict(a.to_dict()) == a
    assert a.paused(start + 5 * HOUR).resumed(start + 6 * HOUR).approved_step == 1
    with pytest.raises(ScheduleError, match="last step"):
        a.advanced().advanced()
    with pytest.raises(ScheduleError, match="no gate"):
        Rollout(Schedule.fixed(10), "2026-01-01T00:00:00Z").advanced()
    # percentage schedules: every increase is a step
    p = parse_schedule({"type": "percentage", "initial_percentage": 1, "increase_percentage": 33,
                        "increase_interval": 60, "gate": True})
    assert [p.step(i).percent for i in range(p.step_count())] == [1, 34, 67, 100]
    # documents without a gate read and write exactly as before
    old = {"schedule": {"type": "fixed", "percent": 25}, "start": "2026-01-01T00:00:00Z", "state": "active"}
    assert Rollout.from_dict(old).to_dict() == old and Rollout.from_dict(old).approved_percent is None


@pytest.mark.parametrize(("change", "message"), [
    ({"approved_step": 3}, "approved_step must be a step"),
    ({"approved_step": -1}, "approved_step must be a step"),
    ({"approved_step": True}, "approved_step must be a step"),
    ({"approved_step": 1, "approved_percent": 100}, "is not step 1's percent"),
    ({"schedule": {**GATED, "gate": "yes"}}, "gate must be true or false"),
])
def test_bad_gate_fields_are_refused(change: dict[str, Any], message: str) -> None:
    doc = {"schedule": GATED, "start": "2026-01-01T00:00:00Z", "state": "active", **change}
    with pytest.raises(ScheduleError, match=message):
        Rollout.from_dict(doc, strict=False)


def test_clients_offered_percent_follows_the_approved_step(rolling: Repository) -> None:
    """What clients compute from the signed fields alone (``formats.fleet.evaluate``): the timetable
    says 100% five hours in, the gate keeps it at the approved step."""
    now = T0 + 5 * HOUR
    release = _find(rolling, "1.1.0")
    assert release.rollout is not None
    ids = [f"{i:032x}" for i in range(2000)]

    def share(rollout: Rollout) -> float:
        r = replace(release, rollout=rollout)
        return sum(1 for cid in ids if not evaluate([r], "1.0.0", cid, "stable", ClockReading(now)).held) / len(ids)

    assert 0.07 < share(release.rollout) < 0.13
    assert 0.45 < share(release.rollout.advanced()) < 0.55
    assert share(release.rollout.advanced().advanced()) == 1


# ----- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def rolling(repo: Repository, keystore: KeyStore, source: Callable[..., Path]) -> Repository:
    """stable/any: 1.0.0 (no rollout: the baseline) and 1.1.0 rolling out behind a gate since T0."""
    ops.publish(repo, keystore, ops.PublishRequest("stable", "1.0.0", "patch", "any", source("1.0.0"), deltas=0))
    ops.publish(repo, keystore, ops.PublishRequest("stable", "1.1.0", "patch", "any", source("1.1.0"), deltas=0,
                                                   rollout=parse_schedule(GATED)), now=T0)
    return repo


T0 = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with open_storage(str(tmp_path / "reports.sqlite")) as s:
        yield s


def _find(repo: Repository, version: str) -> Release:
    found = repo.channel_index(repo.load(), "stable").find(version, "any")
    assert found is not None
    return found


def _reports(storage: Storage, n: int, *, outcome: str = "committed", cause: str = "",
             ids: list[str] | None = None, version: str = "1.1.0", repeat: int = 1) -> list[str]:
    """``n`` installs of ``version`` by distinct (or the given) install ids, each reported ``repeat`` times
    with a fresh report id (a liar resending its success)."""
    ids = ids or [secrets.token_hex(16) for _ in range(n)]
    batch = [make_report(install_id=ids[i % len(ids)], platform="any", to_version=version, outcome=outcome,
                         cause=cause, **({"durations": {}} if outcome != "committed" else {}))
             for i in range(n) for _ in range(repeat)]
    for start in range(0, len(batch), 500):
        storage.ingest(batch[start:start + 500])
    return ids


def _look(repo: Repository, keystore: KeyStore, storage: Storage, at: datetime, **options: Any) -> watch.Verdict:
    opts = canary.Options(**{"min_clients_per_step": 5, **options})
    verdicts = watch.look(repo, keystore, storage, opts, now=at).verdicts
    assert len(verdicts) == 1, verdicts
    return verdicts[0]


# ----- decisions ----------------------------------------------------------------------------------------
def test_a_healthy_release_advances_through_its_gates(rolling: Repository, keystore: KeyStore,
                                                      storage: Storage) -> None:
    _reports(storage, 8)
    early = _look(rolling, keystore, storage, T0 + timedelta(minutes=10))
    assert early.decision.action is canary.Action.NONE and "not due" in early.decision.reason
    assert _find(rolling, "1.1.0").rollout.approved_step == 0  # type: ignore[union-attr]
    v = _look(rolling, keystore, storage, T0 + HOUR)
    assert v.decision.action is canary.Action.ADVANCE and v.applied == "advanced to step 2 (50%)"
    assert _find(rolling, "1.1.0").rollout.approved_step == 1  # type: ignore[union-attr]
    # the next step is due at once by the timetable but needs 5 new install ids in this step
    held = _look(rolling, keystore, storage, T0 + 2 * HOUR)
    assert held.decision.action is canary.Action.HOLD and held.decision.hold == "clients" and not held.applied
    _reports(storage, 5)
    last = _look(rolling, keystore, storage, T0 + 2 * HOUR + timedelta(minutes=1))
    assert last.decision.action is canary.Action.ADVANCE and last.applied == "advanced to step 3 (100%)"
    final = _look(rolling, keystore, storage, T0 + 3 * HOUR)
    assert final.decision.action is canary.Action.NONE and "last step" in final.decision.reason
    assert _find(rolling, "1.1.0").rollout.percent_at(T0 + 3 * HOUR) == 100  # type: ignore[union-attr]
    signed = [d for d in watch.decisions(rolling.path) if d["action"] == "advance"]
    assert [(d["from_step"], d["to_step"], d["status"]) for d in signed] == [(0, 1, "applied"), (1, 2, "applied")]
    assert signed[0]["evidence"]["installs"] == 8 and signed[0]["evidence"]["rule"] == canary.RULE
    assert verify_repository(rolling.path, T0 + 3 * HOUR).problems == []


def test_fake_failures_halt_and_a_person_resumes(rolling: Repository, keystore: KeyStore, storage: Storage) -> None:
    """Threat model: anyone who can post reports can post failures. They can halt a rollout (the safe
    direction), never advance it, and a person undoes the halt with ``rollout --resume``."""
    _reports(storage, 6, outcome="rolled_back", cause="health_check")
    v = _look(rolling, keystore, storage, T0 + HOUR)
    assert v.decision.action is canary.Action.HALT and v.applied == "paused at 10%"
    rollout = _find(rolling, "1.1.0").rollout
    assert rollout is not None and rollout.state is RolloutState.PAUSED and rollout.approved_step == 0
    evidence = next(d for d in watch.decisions(rolling.path) if d["action"] == "halt")["evidence"]
    release = next(e for e in evidence["evidence"] if e["class"] == "release")
    assert (release["failures"], release["trials"], release["by_cause"]) == (6, 6, {"health_check": 6})
    assert release["statistic"] == "inf" or release["statistic"] >= release["threshold"]
    # a paused rollout is left alone: no decision while a person has not resumed it
    assert watch.look(rolling, keystore, storage, canary.Options(), now=T0 + 2 * HOUR).verdicts == ()
    fleet.rollout(rolling, keystore, "stable", "1.1.0", resume=True, now=T0 + 2 * HOUR)
    assert _find(rolling, "1.1.0").rollout.state is RolloutState.ACTIVE  # type: ignore[union-attr]


def test_fake_successes_from_few_install_ids_never_advance(rolling: Repository, keystore: KeyStore,
                                                           storage: Storage) -> None:
    """Two install ids resending 400 successes each: the gate counts install ids, not reports, and
    never moves ahead of the timetable whatever the count."""
    _reports(storage, 2, repeat=400)
    before_due = _look(rolling, keystore, storage, T0 + timedelta(minutes=30))
    assert before_due.decision.action is canary.Action.NONE and not before_due.applied
    due = _look(rolling, keystore, storage, T0 + HOUR)
    assert due.decision.action is canary.Action.HOLD and due.decision.hold == "clients"
    assert due.decision.step_installs == 2 and due.decision.attempted == 800
    # many honest ids, but the timetable's next step is not due: still no advance
    _reports(storage, 50)
    assert _look(rolling, keystore, storage, T0 + timedelta(minutes=59)).decision.action is canary.Action.NONE
    assert _find(rolling, "1.1.0").rollout.approved_step == 0  # type: ignore[union-attr]
    assert [d for d in watch.decisions(rolling.path) if d["action"] == "advance"] == []


def test_auto_yank_names_the_evidence_and_falls_back_to_a_halt(rolling: Repository, keystore: KeyStore,
                                                               storage: Storage, source: Callable[..., Path]) -> None:
    _reports(storage, 20)
    _reports(storage, 5, outcome="rolled_back", cause="migration")
    v = _look(rolling, keystore, storage, T0 + HOUR, auto_yank=True)
    assert v.decision.action is canary.Action.YANK and v.applied == "yanked"
    yanked = _find(rolling, "1.1.0").yanked
    assert yanked is not None and yanked.reason.startswith("halted automatically by pinnacle-release watch: release")
    assert "5/25" in yanked.reason
    # a channel whose only release goes bad: nothing to return to, so the yank is refused and it is halted
    ops.publish(rolling, keystore, ops.PublishRequest("beta", "2.0.0", "patch", "any", source("2.0.0"), deltas=0,
                                                      rollout=Schedule.fixed(20)))
    storage.ingest([make_report(channel="beta", platform="any", to_version="2.0.0", outcome="failed",
                                cause="download", durations={}) for _ in range(6)])
    v = watch.look(rolling, keystore, storage, canary.Options(auto_yank=True), channels=["beta"],
                   now=T0 + 2 * HOUR).verdicts[0]
    assert v.decision.action is canary.Action.YANK
    assert v.applied.startswith("yank refused: beta 2.0.0 is the only release") and v.applied.endswith("paused at 20%")
    beta = rolling.channel_index(rolling.load(), "beta").find("2.0.0", "any")
    assert beta is not None and beta.yanked is None and beta.rollout is not None
    assert beta.rollout.state is RolloutState.PAUSED
    assert verify_repository(rolling.path, T0 + 2 * HOUR).problems == []


def test_a_hold_on_evidence_is_timed_across_looks_and_becomes_a_halt(rolling: Repository, keystore: KeyStore,
                                                                     storage: Storage) -> None:
    """Failures that lean bad hold the gate; the hold is timed from the log across separate looks (as
    with --once from cron) and becomes a halt after hold_limit."""
    _reports(storage, 40)
    # 4/44 against 2%: M = 14.5, between hold_at (10) and the halt threshold (20)
    _reports(storage, 4, outcome="rolled_back", cause="health_check")
    opts = {"hold_limit": 3600}
    first = _look(rolling, keystore, storage, T0 + HOUR, **opts)
    assert (first.decision.action, first.decision.hold, first.applied) == (canary.Action.HOLD, "evidence", "")
    assert _look(rolling, keystore, storage, T0 + HOUR + timedelta(minutes=30), **opts).decision.action \
        is canary.Action.HOLD
    late = _look(rolling, keystore, storage, T0 + 2 * HOUR + timedelta(minutes=1), **opts)
    assert late.decision.action is canary.Action.HALT and "leant bad for 1.0 h" in late.decision.reason
    assert late.applied == "paused at 10%"


# ----- the write-ahead log ------------------------------------------------------------------------------
def test_an_intent_left_by_a_killed_watch_is_settled_once(rolling: Repository, keystore: KeyStore,
                                                          storage: Storage) -> None:
    _reports(storage, 8)
    log = watch.DecisionLog(rolling.path)
    key = "stable/any/1.1.0"
    # killed after the commit: the signed state shows it; the look completes the log, signs nothing more
    log.append({"event": "intent", "id": "a1", "target": key, "channel": "stable", "platform": "any",
                "version": "1.1.0", "action": "advance", "from_step": 0, "to_step": 1, "evidence": {"installs": 8}})
    fleet.rollout(rolling, keystore, "stable", "1.1.0", advance=True, expected_step=0, now=T0 + HOUR)
    versions = rolling.load().snapshot.signed.version
    result = watch.look(rolling, keystore, storage, canary.Options(min_clients_per_step=5), now=T0 + HOUR)
    assert result.settled == ("stable/any/1.1.0: advance was committed before an interruption; log completed",)
    assert "next step is not due yet" in result.verdicts[0].decision.reason
    assert result.verdicts[0].step.installs_at_start == 8  # from the completed log line
    assert rolling.load().snapshot.signed.version == versions
    # killed before the commit: abandoned, decided again, applied once
    _reports(storage, 5)
    log.append({"event": "intent", "id": "b2", "target": key, "channel": "stable", "platform": "any",
                "version": "1.1.0", "action": "advance", "from_step": 1, "to_step": 2})
    result = watch.look(rolling, keystore, storage, canary.Options(min_clients_per_step=5), now=T0 + 2 * HOUR)
    assert result.settled == ("stable/any/1.1.0: advance was not committed before an interruption; deciding again",)
    assert result.verdicts[0].applied == "advanced to step 3 (100%)"
    assert [(d["to_step"], d["status"]) for d in watch.decisions(rolling.path)] == [
        (1, "applied"), (2, "abandoned"), (2, "applied")]
    # a torn last line (a kill mid-append) is skipped and the next record starts on its own line
    with open(log.path, "ab") as f:
        f.write(b'{"event": "intent", "id": "c3", "tar')
    log.append({"event": "observe", "target": key, "action": "none"})
    assert log.read()[-1] == {"event": "observe", "target": key, "action": "none"}
    # a stale expected step is refused by the signed edit itself (compare and set)
    with pytest.raises(PublishRefused, match="step 3 is approved already"):
        fleet.rollout(rolling, keystore, "stable", "1.1.0", advance=True, expected_step=0, now=T0 + 2 * HOUR)


def _watch_proc(repo: Path, keys: Path, db: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", "watch", str(repo), "--keys",
                             str(keys), "--db", db, "--once", "--min-installs", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_kill_9_while_publishing_a_decision(rolling: Repository, keystore: KeyStore, keys_dir: Path,
                                            tmp_path: Path) -> None:
    """A real ``watch --once`` killed with SIGKILL at random points around its commit: the repository
    stays valid (``verify``), and the next run makes the decision once: a halt is in the log exactly
    once per round, applied either by the killed run or by the next."""
    db = str(tmp_path / "reports.sqlite")
    with open_storage(db) as s:
        _reports(s, 6, outcome="rolled_back", cause="health_check")
    rng = random.Random(20)
    rounds, interrupted = 4, 0
    for n in range(rounds):
        if n:  # a person resumes; the same evidence halts it again
            fleet.rollout(rolling, keystore, "stable", "1.1.0", resume=True)
        proc = _watch_proc(rolling.path, keys_dir, db)
        interrupted += kill_after_lines(proc, "stable/any/1.1.0: halt", 1, rng, jitter=0.4)
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
        audit = verify_repository(rolling.path, datetime.now(UTC))
        assert audit.problems == [], audit.problems
        again = _watch_proc(rolling.path, keys_dir, db)
        _, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        assert _find(rolling, "1.1.0").rollout.state is RolloutState.PAUSED  # type: ignore[union-attr]
        halts = [d for d in watch.decisions(rolling.path) if d["action"] == "halt"]
        assert [d["status"] for d in halts].count("applied") == n + 1, halts
        assert "refused" not in {d["status"] for d in halts}
    assert interrupted >= 1  # at least one kill landed while the run was still going


# ----- the command line ---------------------------------------------------------------------------------
def test_watch_once_json_and_refusals(rolling: Repository, keys_dir: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "reports.sqlite")
    SQLiteStorage(Path(db)).close()
    out = run_cli("pinnacle-release", "watch", str(rolling.path), "--keys", str(keys_dir), "--db", db, "--once",
                  "--json")
    doc = json.loads(out.stdout)
    assert [(r["version"], r["action"], r["applied"]) for r in doc["releases"]] == [("1.1.0", "none", "")]
    text = run_cli("pinnacle-release", "watch", str(rolling.path), "--keys", str(keys_dir), "--db", db, "--once")
    assert text.stdout.startswith("stable/any/1.1.0: none: 0 install attempts reported")
    before = tree_digest(rolling.path / "metadata")
    state, refused, keys = RepositoryStateError.exit_code, PublishRefused.exit_code, KeyStoreError.exit_code
    usage = ExitCode.USAGE
    bad = [
        (("--db", str(tmp_path / "missing.sqlite")), state, "no reports database at"),
        (("--db", "https://user:secret@example.org/db"), state, "not a reports database"),
        (("--db", "postgresql://watch:secret@127.0.0.1:1/reports"), state, "cannot connect to the reports database"),
        (("--db", db, "--channel", "nightly"), refused, "unknown channel 'nightly' (this repository has: alpha,"),
        (("--db", db, "--max-failure-rate", "1.5"), usage, "--max-failure-rate"),
        (("--db", db, "--max-failure-rate", "nan"), usage, "--max-failure-rate nan is outside (0, 1)"),
        (("--db", db, "--min-clients-per-step", "0"), usage, "--min-clients-per-step"),
        (("--db", db, "--min-installs", "-3"), usage, "--min-installs"),
        (("--db", db, "--interval", "0"), usage, "--interval"),
        ((), usage, "--db"),
    ]
    for args, code, words in bad:
        result = CliRunner().invoke(cli, ["watch", str(rolling.path), "--keys", str(keys_dir), *args, "--once"])
        assert result.exit_code == code, (args, result.stderr)
        assert words in result.stderr and "secret" not in result.stderr, (args, result.stderr)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for args, code, words in (
            (["watch", str(tmp_path / "nothing"), "--keys", str(keys_dir), "--db", db, "--once"], state,
             "not an initialised repository"),
            (["watch", str(rolling.path), "--keys", str(tmp_path), "--db", db, "--once"], keys, "no key directory"),
            (["rollout", str(rolling.path), "--keys", str(keys_dir), "--channel", "stable", "--version", "1.0.0",
              "--advance"], refused, "stable 1.0.0 (any) has no rollout to advance"),
            (["rollout", str(rolling.path), "--keys", str(keys_dir), "--channel", "stable", "--version", "1.1.0",
              "--gate"], refused, "--gate goes with --schedule or --percent"),
            (["rollout", str(rolling.path), "--keys", str(keys_dir), "--channel", "stable", "--version", "1.1.0",
              "--advance", "--pause"], refused, "give exactly one of")):
        result = CliRunner().invoke(cli, args)
        assert (result.exit_code, result.stderr.count("\n")) == (code, 1) and words in result.stderr, result.stderr
    assert tree_digest(rolling.path / "metadata") == before  # every refusal left the signed metadata alone
    # --gate and --advance through the CLI: a person can do what watch does
    result = CliRunner().invoke(cli, ["rollout", str(rolling.path), "--keys", str(keys_dir), "--channel", "stable",
                                      "--version", "1.1.0", "--percent", "30", "--gate", "--json"])
    assert result.exit_code == 0, result.stderr
    result = CliRunner().invoke(cli, ["rollout", str(rolling.path), "--keys", str(keys_dir), "--channel", "stable",
                                      "--version", "1.1.0", "--advance"])
    assert result.exit_code == refused and "the last step (30%) is already approved" in result.stderr


def test_the_service_looks_every_interval_and_stops_on_sigterm(rolling: Repository, keys_dir: Path,
                                                               tmp_path: Path) -> None:
    """``watch`` without ``--once``: the reports arrive while it runs; a look within the interval halts
    the rollout; SIGTERM ends it after the look, exit 0."""
    import signal
    import time

    db = str(tmp_path / "reports.sqlite")
    SQLiteStorage(Path(db)).close()
    proc = subprocess.Popen([sys.executable, "-m", "pinnacle_updates.repo_tools", "watch", str(rolling.path),
                             "--keys", str(keys_dir), "--db", db, "--interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        with open_storage(db) as s:
            _reports(s, 6, outcome="failed", cause="verify")
        deadline = time.monotonic() + 30
        while _find(rolling, "1.1.0").rollout.state is not RolloutState.PAUSED:  # type: ignore[union-attr]
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err == "", err
    assert "stable/any/1.1.0: halt: delivery failures 6/6" in out and "-> paused at 10%" in out
