"""The slot state machine: table, pure transitions, invariants, atomic save/load."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from pinnacle_updates.client import slots as sm
from pinnacle_updates.client.errors import StateError
from pinnacle_updates.client.slots import Event, SlotContent, SlotState, State

V1 = ("1.0.0", "1" * 64)


def vs(c: SlotContent | None) -> tuple[str, str] | None:
    return (c.version, c.sha256) if c else None


def installed(version: str = "1.0.0", sha: str = "1" * 64) -> SlotState:
    s = sm.begin_install(SlotState(), version, sha)
    s = sm.mark_staged(sm.begin_staging(s))
    return sm.commit(sm.begin_trial(s))


def test_table_lists_exactly_the_allowed_pairs() -> None:
    allowed = dict(sm.TRANSITIONS)
    for state, event in itertools.product(State, Event):
        if (state, event) in allowed:
            assert sm.transition(state, event) is allowed[(state, event)]
        else:
            with pytest.raises(StateError, match=f"cannot {event.value} while {state.value}"):
                sm.transition(state, event)
    # every in-progress state has a way out, so recovery can always reach a resting state
    for state in sm.IN_PROGRESS:
        assert any(s is state for s, _ in allowed), state


def test_first_install_and_upgrade_walk_the_table() -> None:
    s = SlotState()
    assert s.next_slot == "a" and s.active is None
    s = sm.begin_install(s, "1.0.0", "1" * 64)
    assert s.state is State.DOWNLOADING and s.op is not None and s.op.slot == "a"
    s = sm.begin_staging(s)
    assert s.state is State.STAGING and s.slots["a"] is None
    s = sm.mark_staged(s)
    assert vs(s.slots["a"]) == V1
    s = sm.begin_trial(s)
    assert s.state is State.TRIAL and s.active is None and s.link_target() == "a"
    s = sm.commit(s)
    assert (s.state, s.active, s.active_version, s.next_slot, s.op) == (State.COMMITTED, "a", "1.0.0", "b", None)

    s = sm.begin_staging(sm.begin_install(s, "2.0.0", "2" * 64))
    assert s.op is not None and s.op.slot == "b"
    assert s.link_target() == "a"  # before the trial the link stays on the active slot
    s = sm.commit(sm.begin_trial(sm.mark_staged(s)))
    assert s.active == "b" and vs(s.other_content) == V1


def test_staging_lists_the_target_empty_before_writing_it() -> None:
    s = installed()
    s = sm.commit(sm.begin_trial(sm.mark_staged(sm.begin_staging(sm.begin_install(s, "2.0.0", "2" * 64)))))
    assert vs(s.other_content) == V1
    s = sm.begin_install(s, "3.0.0", "3" * 64)
    assert vs(s.slots["a"]) == V1  # downloading does not touch the slot
    s = sm.begin_staging(s)
    assert s.slots["a"] is None and s.other_content is None


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_abort_before_swap_keeps_active_and_discards_target(steps: int) -> None:
    s = installed()
    s = sm.begin_install(s, "2.0.0", "2" * 64)
    if steps >= 2:
        s = sm.begin_staging(s)
    if steps >= 3:
        s = sm.mark_staged(s)
    s = sm.abort(s, "disk full")
    assert s.state is State.FAILED and s.active == "a" and s.active_version == "1.0.0"
    assert s.slots["b"] is None and s.op is None and s.last_error == "disk full"


def test_automatic_rollback_marks_bad_and_counts() -> None:
    s = installed()
    for count in (1, 2):
        s = sm.begin_trial(sm.mark_staged(sm.begin_staging(sm.begin_install(s, "2.0.0", "2" * 64))))
        s = sm.begin_rollback(s, "health check failed")
        assert s.state is State.ROLLING_BACK and s.link_target() == "a"
        assert s.op is not None and s.op.leaving == "b" and s.op.leaving_version == "2.0.0"
        s = sm.finish_rollback(s)
        assert s.state is State.ROLLED_BACK and s.active == "a"
        assert s.bad_versions["2.0.0"].rollbacks == count
        assert vs(s.other_content) == ("2.0.0", "2" * 64)  # complete, but bad
    with pytest.raises(StateError, match="rolled back as bad"):
        sm.begin_rollback(s, "manual")
    s = sm.begin_rollback(s, "manual", allow_bad=True)
    assert s.op is not None and s.op.slot == "b"
    # a later successful (forced) install of the bad version clears the mark
    s = sm.finish_rollback(s)
    s = sm.commit(sm.begin_trial(sm.mark_staged(sm.begin_staging(sm.begin_install(s, "2.0.0", "2" * 64)))))
    assert "2.0.0" not in s.bad_versions


def test_first_install_rollback_has_nowhere_to_go() -> None:
    s = sm.begin_trial(sm.mark_staged(sm.begin_staging(sm.begin_install(SlotState(), "1.0.0", "1" * 64))))
    s = sm.finish_rollback(sm.begin_rollback(s, "unhealthy"))
    assert s.active is None and s.state is State.ROLLED_BACK and s.link_target() is None
    assert s.bad_versions["1.0.0"].rollbacks == 1


def test_manual_rollback_refusals() -> None:
    with pytest.raises(StateError, match="nothing is installed"):
        sm.begin_rollback(SlotState(), "manual")
    with pytest.raises(StateError, match="no previous version to roll back to: slot b"):
        sm.begin_rollback(installed(), "manual")
    # an install in progress cannot be rolled back manually
    s = sm.begin_install(installed(), "2.0.0", "2" * 64)
    with pytest.raises(StateError, match="cannot rollback while downloading"):
        sm.begin_rollback(s, "manual")


def test_install_while_busy_is_refused() -> None:
    s = sm.begin_install(installed(), "2.0.0", "2" * 64)
    with pytest.raises(StateError, match="cannot begin while downloading"):
        sm.begin_install(s, "3.0.0", "3" * 64)
    with pytest.raises(StateError, match="cannot commit while downloading"):
        sm.commit(s)


def test_forget_slot_only_for_inactive() -> None:
    s = sm.commit(sm.begin_trial(sm.mark_staged(sm.begin_staging(sm.begin_install(installed(), "2", "2" * 64)))))
    s2 = sm.forget_slot(s, "a")
    assert s2.other_content is None and s2.active == "b"
    with pytest.raises(StateError, match="active"):
        sm.forget_slot(s, "b")


def test_save_load_roundtrip_and_bytes_are_stable(tmp_path: Path) -> None:
    s = sm.finish_rollback(
        sm.begin_rollback(
            sm.begin_trial(sm.mark_staged(sm.begin_staging(sm.begin_install(installed(), "2", "2" * 64)))), "x"
        )
    )
    path = tmp_path / "state.json"
    sm.save(path, s)
    loaded = sm.load(path)
    assert loaded == s
    assert loaded.to_bytes() == path.read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schema": 99}', "unsupported state schema 99"),
        (b'{"schema": 1, "state": "idle", "slots": {"a": null}}', "exactly a and b"),
        (b'{"schema": 1, "state": "bogus", "slots": {"a": null, "b": null}}', "malformed"),
        (b'{"schema": 1, "state": "idle", "active": "a", "slots": {"a": null, "b": null}}', "listed as empty"),
        (b'{"schema": 1, "state": "trial", "slots": {"a": null, "b": null}}', "without an operation"),
        # found by the damaged-files property test: recovery must rebuild this, not unlink `current`
        (b'{"schema": 1, "state": "committed", "active": null, "slots": {"a": {"version": "1.0.0", "sha256": "'
         + b"1" * 64 + b'"}, "b": null}}', "committed without an active slot"),
    ],
)
def test_corrupt_state_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match=message) as info:
        sm.load(path)
    assert "pinnacle-update recover" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state file"):
        sm.load(tmp_path / "state.json")


def test_failed_save_raises_and_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    sm.save(path, installed())
    before = path.read_bytes()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot save install state"):
        sm.save(blocker / "state.json", installed())
    assert path.read_bytes() == before


def test_invalid_state_is_never_saved(tmp_path: Path) -> None:
    bad = SlotState(state=State.COMMITTED, active="a")  # active slot listed empty
    with pytest.raises(StateError):
        sm.save(tmp_path / "state.json", bad)
    assert not (tmp_path / "state.json").exists()


def test_layout_link_helpers(tmp_path: Path) -> None:
    layout = sm.Layout(tmp_path)
    layout.create_dirs(("logs",))
    assert layout.linked_slot() is None
    os.symlink(layout.link_value("b"), layout.current)
    assert layout.linked_slot() == "b"
    assert (tmp_path / "current").resolve() == (tmp_path / "slots" / "b").resolve()
    with pytest.raises(StateError):
        layout.slot("c")
