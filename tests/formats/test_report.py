"""formats.report: the fleet feedback wire format (strict fields, consistency rules, batch limits)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinnacle_updates.formats.report import (
    ALLOWED,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    FormatError,
    Report,
    clean_cause_text,
    encode_batch,
    encode_batches,
    parse_batch,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def report(**changes: Any) -> Report:
    values: dict[str, Any] = dict(report_id=secrets.token_hex(16), install_id=secrets.token_hex(16), at=NOW,
                                  kind="install", outcome="committed", channel="stable", platform="linux-x86_64",
                                  from_version="1.0.0", to_version="1.1.0", update_type="minor", bucket=42,
                                  ab_group="b", durations={"download": 1.5, "total": 3}, bytes_downloaded=1000,
                                  bytes_saved=9000, client_version="0.9.0")
    values.update(changes)
    return Report(**values)


def wire(**changes: Any) -> dict[str, Any]:
    d = report().to_dict()
    d.update(changes)
    return d


def body(*items: Any) -> bytes:
    return json.dumps({"schema": 1, "reports": list(items)}).encode()


def test_round_trip_and_batch() -> None:
    reports = [report(), report(kind="heartbeat", outcome="ok", current_version="1.1.0"),
               report(outcome="rolled_back", cause="health_check", cause_text="exit 3")]
    assert parse_batch(encode_batch(reports), NOW) == reports
    assert Report.from_dict(reports[0].to_dict()).durations == {"download": 1.5, "total": 3.0}


@pytest.mark.parametrize(("change", "field"), [
    ({"schema": 2}, "schema"), ({"schema": True}, "schema"),
    ({"report_id": "A" * 32}, "report_id"), ({"install_id": "ab"}, "install_id"),
    ({"at": "2026-12-04 12:00:00"}, "at"), ({"at": "2026-12-4T12:00:00Z"}, "at"), ({"at": 17}, "at"),
    ({"at": "2026-02-30T12:00:00Z"}, "at"), ({"at": "٢٠٢٦-12-04T12:00:00Z"}, "at"),
    ({"at": "2026-12-04T12:00:00Z\n"}, "at"),
    ({"kind": "upgrade"}, "kind"), ({"outcome": "fine"}, "outcome"), ({"cause": "cosmic"}, "cause"),
    ({"cause_text": "x" * 201}, "cause_text"), ({"cause_text": "two\nlines"}, "cause_text"),
    ({"channel": "../x"}, "channel"), ({"platform": "Linux"}, "platform"), ({"channel": "c" * 129}, "channel"),
    ({"to_version": "not a version"}, "to_version"), ({"from_version": 1}, "from_version"),
    ({"update_type": "mega"}, "update_type"), ({"bucket": 10_000}, "bucket"), ({"bucket": True}, "bucket"),
    ({"bucket": 1.0}, "bucket"), ({"ab_group": "g" * 65}, "ab_group"),
    ({"durations": {"total": -1}}, "durations.total"), ({"durations": {"total": 86401}}, "durations.total"),
    ({"durations": {"total": "1"}}, "durations.total"), ({"durations": {"nap": 1}}, "durations"),
    ({"durations": []}, "durations"), ({"bytes_downloaded": -1}, "bytes_downloaded"),
    ({"bytes_saved": 2**53 + 1}, "bytes_saved"), ({"client_version": None}, "client_version"),
    ({"outcome": "ok"}, "outcome"), ({"outcome": "failed", "cause": ""}, "cause"),
    ({"outcome": "failed", "cause": "health_check"}, "cause"),
    ({"outcome": "rolled_back", "cause": "delta_fallback"}, "cause"),
    ({"kind": "heartbeat", "outcome": "ok", "cause": "other"}, "cause"),
    ({"kind": "rollback", "outcome": "rolled_back", "cause": "health_check"}, "cause"),
])
def test_each_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError, match=rf"^reports\[0\]: report field {field}: ") as info:
        parse_batch(body(wire(**change)), NOW)
    assert "\n" not in str(info.value)


def test_unknown_and_missing_keys() -> None:
    with pytest.raises(FormatError, match="unknown field 'hostname'"):
        parse_batch(body(wire(hostname="me")), NOW)
    d = wire()
    del d["bucket"]
    with pytest.raises(FormatError, match="missing field 'bucket'"):
        parse_batch(body(d), NOW)
    with pytest.raises(FormatError, match="must be a JSON object"):
        parse_batch(body([1]), NOW)


@pytest.mark.parametrize(("data", "message"), [
    (b"{", "not valid JSON"), (b"[]", "expected a JSON object"), (b'{"schema": 1}', "reports must be an array"),
    (b'{"schema": 1, "reports": []}', "0 reports"), (b'{"schema": 2, "reports": []}', "schema must be 1"),
    (b'{"schema": 1, "reports": [], "x": 1}', "unknown field 'x'"), (b"\xff", "not UTF-8"),
    (b"[" * 100 + b"]" * 100, "nested deeper"), (b" " * (MAX_BATCH_BYTES + 1), "byte limit"),
])
def test_bad_batches(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_batch(data, NOW)


def test_too_many_reports() -> None:
    with pytest.raises(FormatError, match=f"{MAX_BATCH + 1} reports"):
        parse_batch(body(*[wire()] * (MAX_BATCH + 1)), NOW)
    with pytest.raises(FormatError, match=f"{MAX_BATCH + 1} reports"):
        encode_batch([report()] * (MAX_BATCH + 1))


def test_time_window() -> None:
    ok = [NOW + timedelta(minutes=59), NOW - timedelta(days=29)]
    assert len(parse_batch(encode_batch([report(at=t) for t in ok]), NOW)) == 2
    with pytest.raises(FormatError, match="ahead of the collector's clock"):
        parse_batch(encode_batch([report(at=NOW + timedelta(hours=2))]), NOW)
    with pytest.raises(FormatError, match="30 days old"):
        parse_batch(encode_batch([report(at=NOW - timedelta(days=31))]), NOW)


def test_every_allowed_combination_constructs() -> None:
    for (kind, outcome), causes in ALLOWED.items():
        for cause in causes:
            assert report(kind=kind, outcome=outcome, cause=cause).cause == cause


def test_encode_batches_splits_by_count_and_size() -> None:
    big = [report(cause_text="é" * 200, outcome="failed", cause="other") for _ in range(1200)]
    parts = list(encode_batches(big))
    assert sum(n for n, _ in parts) == 1200
    assert all(n <= MAX_BATCH and len(b) <= MAX_BATCH_BYTES for n, b in parts)
    assert [r for _, b in parts for r in parse_batch(b, NOW)] == big


def test_clean_cause_text() -> None:
    text = clean_cause_text("GET https://u:secret@host/x?token=abc failed\n\tnext\x1b[31m" + "y" * 300)
    assert "secret" not in text and "abc" not in text and "\n" not in text and "\x1b" not in text
    assert len(text) == 200
    report(outcome="failed", cause="other", cause_text=text)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_only_format_errors(value: Any) -> None:
    for doc in (value, {"schema": 1, "reports": [value]}):
        try:
            data = json.dumps(doc).encode()
        except ValueError:
            return
        with pytest.raises(FormatError):
            parse_batch(data, NOW)
