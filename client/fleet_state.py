"""``DIR/fleet.json``: the client's side of fleet control, around the pure ``formats.fleet``.

``view_for`` evaluates the signed fleet fields for this install at its rollout time and persists
the result, so that ``status`` (no network) can show the A/B groups, a yank of the installed
release and a clock warning, and so that the newest signed time ever verified is kept: the
rollout clock's floor never moves back, even if an older (still valid) index were replayed.
A change in what the controls say about this client (group, yank, clock) is also appended to the
history as an ``op: fleet`` record.

Rollout time (``formats.rollout.rollout_time``): the local clock, at least the newest signed time
(the timestamp's ``pinnacle_signed_at``, the channel index's ``updated``, the persisted value), at
most ``max_clock_skew`` seconds past it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pinnacle_updates.client import history as history_mod
from pinnacle_updates.client.config import ClientConfig
from pinnacle_updates.client.slots import Layout, SlotState
from pinnacle_updates.formats import boundedjson, fsutil
from pinnacle_updates.formats.fleet import FleetView, evaluate
from pinnacle_updates.formats.index import ChannelIndex, Release, UpdateType
from pinnacle_updates.formats.rollout import ClockReading, format_time, newest_time, rollout_time

FILE_NAME = "fleet.json"
FILE_MAX = 1 << 20
"""Bytes of ``fleet.json`` read at most (a real one is under 2 KiB)."""
_TRACKED = ("channel", "groups", "installed_yanked", "clock_note")
_TYPES = {"newest_signed_time": str, "channel": str, "groups": dict, "installed_yanked": dict, "clock_note": str}


def load(root: Path) -> dict[str, Any]:
    """The last record ({} when there is none or it is unreadable: it is only a cache and a floor)."""
    with contextlib.suppress(OSError, ValueError):  # FormatError is a ValueError
        data = boundedjson.loads(fsutil.read_regular(Path(root) / FILE_NAME, FILE_MAX), FILE_NAME, max_bytes=FILE_MAX)
        if isinstance(data, dict):  # a field of the wrong type is dropped, as if it were missing
            return {k: v for k, v in data.items() if k not in _TYPES or isinstance(v, _TYPES[k])}
    return {}


def reading(root: Path, cfg: ClientConfig, signed: Sequence[str | None] = (), clock: datetime | None = None
            ) -> tuple[ClockReading, datetime | None]:
    """The rollout time now, and the newest signed time it was bounded by."""
    floor = newest_time([load(root).get("newest_signed_time"), *signed])
    return rollout_time(clock or datetime.now(UTC), floor, cfg.integer("max_clock_skew")), floor


def view_for(
    layout: Layout,
    cfg: ClientConfig,
    s: SlotState,
    index: ChannelIndex,
    releases: Sequence[Release],
    signed_time: str | None,
) -> FleetView:
    """Evaluate the fleet controls for this install now, persist them and log what changed."""
    other = s.other_content
    view, floor = assess(layout, cfg, index, releases, signed_time, s.active_version,
                         other_slot_version=other.version if other is not None else None,
                         bad_versions=frozenset(s.bad_versions))
    previous = load(layout.root)
    shown = view.to_dict()
    record = {"newest_signed_time": format_time(floor) if floor is not None else None,
              **{k: cfg.text("channel") if k == "channel" else shown[k] for k in _TRACKED}}
    if record != previous:  # written only on change: a refused install leaves the directory as it was
        with contextlib.suppress(OSError):  # a cache: failing to write it never blocks an update
            fsutil.atomic_write(layout.root / FILE_NAME, json.dumps(record, indent=2, sort_keys=True).encode())
    if any(record.get(k) != previous.get(k) for k in _TRACKED) and (
        view.groups or view.installed_yank or view.clock_note or previous.get("groups")
        or previous.get("installed_yanked") or previous.get("clock_note")
    ):
        with contextlib.suppress(OSError):
            history_mod.append(layout.history, {"op": "fleet", **{k: record[k] for k in _TRACKED}})
    return view


def assess(
    layout: Layout,
    cfg: ClientConfig,
    index: ChannelIndex,
    releases: Sequence[Release],
    signed_time: str | None,
    installed: str | None,
    *,
    other_slot_version: str | None = None,
    bad_versions: frozenset[str] = frozenset(),
) -> tuple[FleetView, datetime | None]:
    """The fleet controls for a client of this install running ``installed``, now, and the newest
    signed time they were bounded by; nothing is persisted (``view_for`` persists this install's)."""
    clock, floor = reading(layout.root, cfg, (signed_time, index.updated))
    view = evaluate(
        releases,
        installed,
        cfg.text("client_id"),
        cfg.text("channel"),
        clock,
        skip_ramp_types=frozenset(UpdateType(t) for t in cfg.names("skip_ramp_types")),
        other_slot_version=other_slot_version,
        bad_versions=bad_versions,
    )
    return view, floor


def summary(root: Path) -> dict[str, Any]:
    """What ``status`` shows of the last record."""
    record = load(root)
    return {k: record.get(k) for k in ("newest_signed_time", *_TRACKED)}
