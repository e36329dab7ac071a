"""The collector's OpenAPI 3.1 document, written by hand from ``formats.report`` (served at /openapi.json;
the tests fuzz the service from it with schemathesis)."""

from __future__ import annotations

from typing import Any

from pinnacle_updates.formats import report as wire
from pinnacle_updates.formats.index import UpdateType

from ..core import stats

_ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
          "properties": {"error": {"type": "string"}}}


def _answer(description: str, schema: dict[str, Any] | None = None, headers: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    body = schema or {"$ref": "#/components/schemas/Error"}
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": body}}}
    if headers:
        out["headers"] = headers
    return out


def _report_schema() -> dict[str, Any]:
    short = {"type": "string", "maxLength": wire.MAX_SHORT}
    name = {"type": "string", "maxLength": wire.MAX_NAME}
    count = {"type": "integer", "minimum": 0, "maximum": wire.MAX_BYTES}
    seconds = {"type": "number", "minimum": 0, "maximum": wire.MAX_DURATION}
    properties: dict[str, Any] = {
        "schema": {"const": wire.REPORT_SCHEMA},
        "report_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "install_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "at": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
               "description": "event time, UTC; at most 1 h ahead of the collector's clock, at most 30 days old"},
        "kind": {"enum": list(wire.KINDS)},
        "outcome": {"enum": list(wire.OUTCOMES)},
        "cause": {"enum": list(wire.CAUSES)},
        "cause_text": {"type": "string", "maxLength": wire.MAX_CAUSE_TEXT},
        "channel": name,
        "platform": name,
        "from_version": short,
        "to_version": short,
        "update_type": {"enum": ["", *(t.value for t in UpdateType)]},
        "bucket": {"type": "integer", "minimum": -1, "maximum": wire.BUCKETS - 1},
        "ab_group": short,
        "durations": {"type": "object", "additionalProperties": False,
                      "properties": {k: seconds for k in wire.DURATION_KEYS}},
        "bytes_downloaded": count,
        "bytes_saved": count,
        "client_version": short,
        "current_version": short,
    }
    required = sorted(properties)
    properties["metrics"] = {  # optional: older clients leave it out
        "type": "object", "maxProperties": wire.MAX_METRICS,
        "propertyNames": {"pattern": wire.METRIC_NAME.pattern.replace("\\Z", "$")},
        "additionalProperties": {"type": "number", "minimum": -wire.MAX_METRIC_VALUE,
                                 "maximum": wire.MAX_METRIC_VALUE},
        "description": "the application's numeric metrics (AutoUpdater.record_metric), of the version running now"}
    return {"type": "object", "additionalProperties": False, "required": required,
            "properties": properties,
            "description": "One outcome report (docs: formats/report.py); kind, outcome and cause must be a "
                           "combination formats.report.ALLOWED lists"}


def _tally_schema() -> dict[str, Any]:
    counts = {"type": "object", "additionalProperties": {"type": "integer"}}
    number = {"type": ["number", "null"]}
    return {
        "type": "object",
        "required": ["offered", "attempted", "succeeded", "rolled_back", "failed", "success_rate",
                     "success_interval", "install_time", "bytes_downloaded", "bytes_saved"],
        "properties": {
            "offered": {"type": "integer"}, "attempted": {"type": "integer"}, "succeeded": {"type": "integer"},
            "rolled_back": counts, "rolled_back_total": {"type": "integer"}, "failed": counts,
            "failed_total": {"type": "integer"}, "delta_fallbacks": {"type": "integer"},
            "manual_rollbacks": {"type": "integer"}, "checks_failed": counts, "success_rate": number,
            "success_interval": {"type": ["array", "null"], "items": {"type": "number"}},
            "install_time": {"type": "object", "properties": {"median": number, "p95": number,
                                                               "timed": {"type": "integer"}}},
            "bytes_downloaded": {"type": "integer"}, "bytes_saved": {"type": "integer"},
            "metrics": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {"n": {"type": "integer"}, "mean": {"type": "number"},
                                                 "sd": number}}},
        },
    }


def _decisions_schema() -> dict[str, Any]:
    text = {"type": "string"}
    decision = {"type": "object", "required": ["at", "channel", "platform", "version", "action", "status"],
                "properties": {"at": text, "channel": text, "platform": text, "version": text,
                               "action": {"enum": ["advance", "hold", "halt", "yank"]}, "reason": text,
                               "status": {"enum": ["applied", "refused", "abandoned", "pending", "observed"]},
                               "percent": {"type": ["number", "null"]}, "evidence": {"type": "object"}}}
    return {"type": "object", "required": ["repository", "decisions"],
            "properties": {"repository": {"type": "boolean"},
                           "decisions": {"type": "array", "items": decision}}}


def _activity_schema() -> dict[str, Any]:
    text = {"type": "string"}
    count = {"type": "integer", "minimum": 0}
    hour = {"type": "object", "required": ["hour", "channel", "platform", "version", "attempted", "succeeded",
                                           "rolled_back", "failed"],
            "properties": {"hour": text, "channel": text, "platform": text, "version": text, "attempted": count,
                           "succeeded": count, "rolled_back": count, "failed": count}}
    problem = {"type": "object", "required": ["at", "channel", "platform", "version", "kind", "outcome", "cause",
                                              "cause_text"],
               "properties": {name: text for name in ("at", "channel", "platform", "version", "kind", "outcome",
                                                      "cause", "cause_text")}}
    return {"type": "object", "required": ["hours", "problems"],
            "properties": {"hours": {"type": "array", "items": hour},
                           "problems": {"type": "array", "maxItems": 50, "items": problem}}}


def _page_read(summary: str, filters: list[dict[str, Any]], ok: dict[str, Any], unavailable: str,
               ) -> dict[str, Any]:
    """A GET the fleet page reads (read token or its cookie) with the fleet filters."""
    return {"get": {"summary": summary, "security": [{"bearer": []}, {"session": []}], "parameters": filters,
                    "responses": {"200": ok, "400": _answer("bad query parameter"),
                                  "401": _answer("read token missing or wrong"), "503": _answer(unavailable)}}}


def _page_paths() -> dict[str, Any]:
    """The fleet page (``page``): HTML for browsers, listed so the fuzzing covers it too."""
    def html(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}

    moved = {"description": "to /fleet (with the session cookie after a right token)",
             "headers": {"Location": {"schema": {"type": "string"}}}}
    return {
        "/fleet": {"get": {
            "summary": "The fleet page; ?token= exchanges the read token for the session cookie",
            "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": html("the page (a reader)"), "303": moved, "401": html("the token form")}}},
        "/fleet/login": {"post": {
            "summary": "Exchange the read token for the session cookie",
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                "type": "object", "properties": {"token": {"type": "string"}}}}}},
            "responses": {"303": moved, "400": html("not a login form"), "401": html("wrong token"),
                          "408": _answer("the body did not arrive in time"),
                          "413": _answer("body over 4096 bytes")}}},
        "/fleet/logout": {"post": {"summary": "End the page's session",
                                   "responses": {"303": {"description": "to /fleet, the cookie removed"}}}},
        "/fleet/static/{name}": {"get": {
            "summary": "The page's script and style sheet",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file", "content": {
                "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}},
                "404": {"description": "no such file", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }


def document() -> dict[str, Any]:
    retry = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    release = {"allOf": [{"$ref": "#/components/schemas/Tally"}, {
        "type": "object", "required": ["channel", "platform", "version", "groups"],
        "properties": {"channel": {"type": "string"}, "platform": {"type": "string"}, "version": {"type": "string"},
                       "groups": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Tally"}},
                       "comparisons": {"type": "array", "items": {"type": "object"},
                                       "description": "A/B groups compared (core.canary.Comparison)"}}}]}
    filters = [
        {"name": "channel", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "version", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "a UTC time like 2026-01-31T12:00:00Z, or a duration back from now: 90m, 1d"},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "pinnacle-updates fleet feedback collector", "version": "1",
                 "description": "Clients post outcome reports; people and CI read per-release health. "
                                f"Durations in reports are kept as {stats.BUCKETS} log buckets."},
        "paths": {
            "/v1/reports": {"post": {
                "summary": "Ingest a batch of reports (stored durably before the answer)",
                "security": [{"ingestKey": []}, {}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "required": ["schema", "reports"],
                    "properties": {"schema": {"const": wire.REPORT_SCHEMA},
                                   "reports": {"type": "array", "minItems": 1, "maxItems": wire.MAX_BATCH,
                                               "items": {"$ref": "#/components/schemas/Report"}}}}}}},
                "responses": {
                    "200": _answer("stored: counts of new and already stored reports", {
                        "type": "object", "required": ["accepted", "duplicates"], "additionalProperties": False,
                        "properties": {"accepted": {"type": "integer"}, "duplicates": {"type": "integer"}}}),
                    "400": _answer("malformed or invalid batch (nothing stored)"),
                    "401": _answer("ingest key missing or wrong"),
                    "408": _answer("the body did not arrive in time"),
                    "413": _answer(f"body over {wire.MAX_BATCH_BYTES} bytes"),
                    "415": _answer("not application/json"),
                    "429": _answer("rate limited (per client address or per install id)", headers=retry),
                    "503": _answer("the database is unavailable (nothing stored; send again later)"),
                }}},
            "/v1/health": {"get": {
                "summary": "The collector and its database answer",
                "responses": {"200": _answer("up", {"type": "object", "required": ["status"],
                                                    "properties": {"status": {"const": "ok"},
                                                                   "schema": {"type": "integer"}}}),
                              "503": _answer("the database does not answer")}}},
            "/v1/fleet/report": {"get": {
                "summary": "Per-release health, version distribution, per A/B group (as `fleet report --json`)",
                "security": bearer,
                "parameters": filters,
                "responses": {
                    "200": _answer("the fleet report", {
                        "type": "object", "required": ["format", "generated_at", "filters", "releases", "versions"],
                        "properties": {"format": {"type": "integer"}, "generated_at": {"type": "string"},
                                       "filters": {"type": "object"},
                                       "releases": {"type": "array", "items": release},
                                       "versions": {"type": "array", "items": {"type": "object"}}}}),
                    "400": _answer("bad query parameter"),
                    "401": _answer("read token missing or wrong"),
                    "503": _answer("the database is unavailable"),
                }}},
            "/v1/fleet/activity": _page_read(
                "Install outcomes per release and hour, and the latest 50 rollbacks and failures with their cause "
                "text (the fleet page's charts)", filters, _answer("the activity", _activity_schema()),
                "the database is unavailable"),
            "/v1/fleet/decisions": _page_read(
                "The rollout timeline: decisions watch logged in the repository of `collector serve --repo` "
                "(signed ones and holds), oldest first", filters, _answer("the decisions", _decisions_schema()),
                "the decision log cannot be read"),
            **_page_paths(),
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": _answer("OpenAPI 3.1", {"type": "object"})}}},
        },
        "components": {
            "schemas": {"Error": _ERROR, "Report": _report_schema(), "Tally": _tally_schema()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the read token (--token-file)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "pinnacle_fleet",
                            "description": "the fleet page's cookie, from POST /fleet/login or /fleet?token="},
                "ingestKey": {"type": "http", "scheme": "bearer",
                              "description": "the ingest key, when the collector requires one"},
            },
        },
    }
