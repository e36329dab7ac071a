"""The agent's OpenAPI 3.0 document, written out by hand (served at ``/openapi.json``).

Hand-written rather than generated so that it states what the routes in ``client.agent.app``
promise: every status code each one can answer with, the one error shape, and which calls need
the bearer token. The config request body is derived from ``client.config.KEYS``, so a new key is
documented the moment it exists. ``tests/agent/test_agent_routes.py`` checks that it lists exactly
the routes ``create_app`` serves (method and path), so a route added on one side only fails there;
``tests/agent/test_agent_fuzz.py`` runs schemathesis against it.
"""

from __future__ import annotations

import re
from typing import Any

from pinnacle_updates.client import config as config_mod

JSON = "application/json"
BACKUP_ID = re.compile(r"[0-9]{8}T[0-9]{9}Z-[0-9a-f]{4}", re.ASCII)
"""A data backup's id as ``client.backups.new_id`` makes it (UTC to the millisecond, 4 hex digits);
documented here as the path parameter's pattern and checked by the routes against it (a test
compares it with ``client.backups.valid_id``)."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_ERRORS = {
    "401": "Bearer token missing or wrong",
    "403": "Foreign Host or Origin (DNS rebinding, cross-site request)",
    "404": "No such version or resource",
    "409": "Another install, rollback or restore is running, or the request conflicts with the install's state "
           "(code busy, refused, or backup_error: a backup that cannot be read or restored)",
    "413": "Request body too large",
    "422": "Invalid request body, parameter or configuration",
    "502": "The repository could not be reached or served data that failed verification",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json(_ref("Error"), _ERRORS[code]) for code in ("403", *codes)}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": False, "content": {JSON: {"schema": schema}}}


_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
_NSTR: dict[str, Any] = {"type": "string", "nullable": True}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_BACKUP_ID_PARAM: dict[str, Any] = {"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string", "pattern": f"^{BACKUP_ID.pattern}$"}}


def _config_body() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, spec in config_mod.KEYS.items():
        if key == "client_id":
            continue  # created by init, never changed
        kind = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
                bool: {"type": "boolean"}}.get(spec.type, {"type": "array", "items": {"type": "string"}})
        props[key] = {**kind, "description": spec.help}
    return {"type": "object", "properties": props, "additionalProperties": False, "minProperties": 1}


def document() -> dict[str, Any]:
    """The OpenAPI document of the agent API."""
    check_result = {
        "type": "object",
        "required": ["current_version", "update_available", "version", "reason", "releases"],
        "properties": {
            "current_version": _NSTR,
            "installed_version": _NSTR,
            "update_available": {"type": "boolean"},
            "version": _NSTR,
            "type": _NSTR,
            "notes": {"type": "string"},
            "download_bytes": {"type": "integer"},
            "auto": {"type": "boolean"},
            "reason": {"type": "string"},
            "releases": {"type": "array", "items": _ref("Release")},
        },
    }
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "The dashboard (HTML)", "operationId": "dashboard",
                      "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}},
                                    **_errors()}}},
        "/static/{name}": {"get": {
            "summary": "The dashboard's script and style sheet (dashboard.js, dashboard.css)",
            "operationId": "static",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file",
                                  "content": {"text/javascript": {}, "text/css": {}}},
                          **_errors("404")}}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "responses": {"200": _json(_OBJECT, "OpenAPI document"), **_errors()}}},
        "/api/updates/status": {"get": {
            "summary": "Installed version, available releases, the running job's progress, health, loop",
            "operationId": "status",
            "responses": {"200": _json(_ref("Status"), "Status"), **_errors()}}},
        "/api/updates/check": {"post": {
            "summary": "Check the repository now; with current_version, what that version would be offered",
            "operationId": "check", "security": _SECURED,
            "requestBody": _body({"type": "object", "additionalProperties": False,
                                  "properties": {"current_version": _NSTR}}),
            "responses": {"200": _json(check_result, "Check result"),
                          **_errors("401", "409", "413", "422", "502")}}},
        "/api/updates/install/{version}": {"post": {
            "summary": "Start installing VERSION; follow the job in /api/updates/status",
            "operationId": "install", "security": _SECURED,
            "parameters": [{"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": _body({"type": "object", "additionalProperties": False,
                                  "properties": {"confirm_major": {"type": "boolean"},
                                                 "force": {"type": "boolean"}}}),
            "responses": {"202": _json({"type": "object", "required": ["job"], "properties": {"job": _ref("Job")}},
                                       "Install started"),
                          **_errors("401", "404", "409", "413", "422", "502")}}},
        "/api/updates/rollback": {"post": {
            "summary": "Switch back to the previous version in the other slot; its data snapshot is restored "
                       "unless keep_data; the version left is recorded as rolled back (installable by name), "
                       "or bad with mark_bad (an install of it then takes force: true)",
            "operationId": "rollback", "security": _SECURED,
            "requestBody": _body({"type": "object", "additionalProperties": False,
                                  "properties": {"force": {"type": "boolean"}, "keep_data": {"type": "boolean"},
                                                 "mark_bad": {"type": "boolean"}}}),
            "responses": {"200": _json(_OBJECT, "Rollback result"), **_errors("401", "409", "413", "422")}}},
        "/api/updates/history": {"get": {
            "summary": "history.jsonl records, newest first",
            "operationId": "history",
            "parameters": [
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
                {"name": "op", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "only records of this kind (install, rollback, restore, channel, check, ...)"},
                {"name": "outcome", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "only records with this outcome (committed, failed, rolled_back, recovered, ...)"},
                {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "only records that installed or left this version"},
            ],
            "responses": {"200": _json({"type": "object", "required": ["total", "records"],
                                        "properties": {"total": {"type": "integer"},
                                                       "records": {"type": "array", "items": _OBJECT}}},
                                       "History"), **_errors("422")}}},
        "/api/updates/backups": {"get": {
            "summary": "Previous slot and cached releases within max_rollback_days; the data backups",
            "operationId": "backups",
            "responses": {"200": _json({"type": "object",
                                        "required": ["max_rollback_days", "previous_slot", "cached_releases",
                                                     "backups"],
                                        "properties": {"max_rollback_days": {"type": "integer"},
                                                       "previous_slot": {**_OBJECT, "nullable": True},
                                                       "cached_releases": {"type": "array", "items": _OBJECT},
                                                       "backups": {"type": "array", "items": _ref("Backup")}}},
                                       "Backups"), **_errors("409", "422")}}},
        "/api/backups": {"get": {
            "summary": "Data backups (oldest first), the retention, and what a manual rollback would restore",
            "operationId": "listBackups",
            "responses": {"200": _json(_ref("BackupList"), "Data backups"), **_errors("409", "422")}}},
        "/api/backups/prune": {"post": {
            "summary": "Remove backups beyond max_rollback_days and max_backups now (the snapshot a rollback "
                       "of the running version restores stays)",
            "operationId": "pruneBackups", "security": _SECURED,
            "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {}}),
            "responses": {"200": _json({"type": "object", "required": ["removed"],
                                        "properties": {"removed": {"type": "array", "items": {"type": "string"}}}},
                                       "Removed backup ids"), **_errors("401", "409", "413", "422")}}},
        "/api/backups/{id}": {"get": {
            "summary": "One data backup: its summary and its first 1,000 manifest entries",
            "operationId": "showBackup",
            "parameters": [_BACKUP_ID_PARAM],
            "responses": {"200": _json({"allOf": [_ref("Backup"), {
                "type": "object", "required": ["entries", "entry_count", "entries_truncated"],
                "properties": {"entries": {"type": "array", "maxItems": 1000, "items": _OBJECT},
                               "entry_count": {"type": "integer"},
                               "entries_truncated": {"type": "boolean"}}}]}, "The backup"),
                          **_errors("404", "409", "422")}}},
        "/api/backups/{id}/verify": {"post": {
            "summary": "Check one backup against its manifest (types, modes, sizes, link texts, recorded sha256)",
            "operationId": "verifyBackup", "security": _SECURED,
            "parameters": [_BACKUP_ID_PARAM],
            "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {}}),
            "responses": {"200": _json({"type": "object", "required": ["id", "ok", "problems"],
                                        "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"},
                                                       "problems": {"type": "array",
                                                                    "items": {"type": "string"}}}},
                                       "Verification result (ok false: the problems found)"),
                          **_errors("401", "404", "409", "413", "422")}}},
        "/api/backups/{id}/restore": {"post": {
            "summary": "Put one backup's data in place under the running version (stop, restore, start); the "
                       "data it replaces is kept as a new backup",
            "operationId": "restoreBackup", "security": _SECURED,
            "parameters": [_BACKUP_ID_PARAM],
            "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {}}),
            "responses": {"200": _json({"type": "object", "required": ["backup", "data_rejected", "version"],
                                        "properties": {"backup": {"type": "string"}, "data_rejected": _NSTR,
                                                       "version": {"type": "string"},
                                                       "duration": {"type": "number"},
                                                       "notes": {"type": "array", "items": {"type": "string"}}}},
                                       "Restored"), **_errors("401", "404", "409", "413", "422")}}},
        "/api/updates/config": {"get": {
            "summary": "The settings the dashboard's form edits: value, type, default, help, choices",
            "operationId": "settings",
            "responses": {"200": _json({"type": "object", "required": ["channel", "fields"],
                                        "properties": {"channel": {"type": "string"},
                                                       "fields": {"type": "array", "items": _OBJECT}}},
                                       "Settings"), **_errors("422")}}, "post": {
            "summary": "Change settings: all validated by client.config and written at once, or none",
            "operationId": "config", "security": _SECURED,
            "requestBody": {"required": True, "content": {JSON: {"schema": _config_body()}}},
            "responses": {"200": _json({"type": "object", "required": ["changed", "config"],
                                        "properties": {"changed": {"type": "array", "items": {"type": "string"}},
                                                       "config": _OBJECT}}, "Changed"),
                          **_errors("401", "413", "422")}}},
        "/api/updates/channel": {"post": {
            "summary": "Follow another channel (any the repository offers); never a downgrade unless "
                       "allow_downgrade (then its newest release is installed first)",
            "operationId": "switch_channel", "security": _SECURED,
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False, "required": ["channel"],
                "properties": {"channel": {"type": "string"}, "allow_downgrade": {"type": "boolean"}}}}}},
            "responses": {"200": _json({"type": "object", "required": ["channel", "previous_channel", "reason"],
                                        "properties": {"channel": {"type": "string"},
                                                       "previous_channel": {"type": "string"},
                                                       "version": _NSTR, "reason": {"type": "string"},
                                                       "install": {**_OBJECT, "nullable": True}}},
                                       "Switched"), **_errors("401", "404", "409", "413", "422", "502")}}},
        "/api/updates/channels": {"get": {
            "summary": "The channels the repository offers (custom names included) and the configured one; "
                       "source 'defaults' with error when the repository could not be asked",
            "operationId": "channels",
            "responses": {"200": _json({"type": "object", "required": ["current", "channels"],
                                        "properties": {"current": {"type": "string"},
                                                       "channels": {"type": "array", "items": _OBJECT}}},
                                       "Channels"), **_errors("422")}}},
        "/api/updates/analytics": {"get": {
            "summary": "Update statistics computed from history.jsonl",
            "operationId": "analytics",
            "responses": {"200": _json(_ref("Analytics"), "Analytics"), **_errors()}}},
        "/api/health": {"get": {
            "summary": "The agent is up; its update loop (degraded while it fails, with the error and since "
                       "when); the last health check of the running version (unhealthy when it failed)",
            "operationId": "health",
            "responses": {"200": _json({"type": "object", "required": ["status", "agent", "loop"],
                                        "properties": {"status": {"type": "string",
                                                                  "enum": ["ok", "degraded", "unhealthy"]},
                                                       "agent": _OBJECT,
                                                       "app": {**_OBJECT, "nullable": True},
                                                       "loop": _ref("Loop")}}, "Health"), **_errors()}}},
    }
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "field": {"type": "string", "description": "the request field (config key) a "
                                                                     "refusal is about, when known"}}}}},
        "Release": {"type": "object", "required": ["version", "type"], "properties": {
            "version": {"type": "string"}, "type": {"type": "string"}, "notes": {"type": "string"},
            "published": {"type": "string"}, "download_bytes": {"type": "integer"},
            "newer": {"type": "boolean"}, "installed": {"type": "boolean"},
            "marks": {"type": "array", "description": "why it is not (or must be) installed here, each with its "
                      "reason", "items": {"type": "object", "required": ["kind", "reason"], "properties": {
                          "kind": {"type": "string", "enum": ["yanked", "held", "required", "bad", "rolled_back"]},
                          "reason": {"type": "string"}}}}}},
        "Job": {"type": "object", "required": ["id", "kind", "state", "step", "percent"], "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["install", "auto", "rollback", "restore", "channel"]},
            "state": {"type": "string", "enum": ["running", "succeeded", "failed", "rolled_back", "up_to_date"]},
            "step": {"type": "string"}, "version": _NSTR, "from_version": _NSTR,
            "bytes": {"type": "integer"}, "total": {"type": "integer"},
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "download_percent": {"type": "number"},
            "bytes_per_second": {"type": "number", "nullable": True},
            "eta_seconds": {"type": "number", "nullable": True},
            "error": _NSTR}},
        "Status": {"type": "object",
                   "required": ["installed", "available", "job", "health", "rollout", "loop", "busy"],
                   "properties": {
                       "installed": _OBJECT,
                       "available": {"type": "object", "required": ["releases"], "properties": {
                           "releases": {"type": "array", "items": _ref("Release")},
                           "latest": {"allOf": [_ref("Release")], "nullable": True},
                           "last_check": {**_OBJECT, "nullable": True}}},
                       "job": {"allOf": [_ref("Job")], "nullable": True},
                       "busy": {"type": "boolean"},
                       "health": {**_OBJECT, "nullable": True},
                       "releases": {"type": "array", "items": _ref("Release"),
                                    "description": "every release of the channel, newest first, with marks"},
                       "rollout": {"type": "object", "required": ["version", "why"], "properties": {
                           "version": {**_NSTR, "description": "the newest release this machine could move "
                                                               "to (null: none; why says so)"},
                           "bucket": {"type": "number", "description": "this machine's place in [0, 100) "
                                                                       "for that release"},
                           "percent": {"type": "number", "nullable": True,
                                       "description": "the rollout's percent now (null: no rollout applies)"},
                           "gets_it_at": {**_NSTR, "description": "when this machine is offered it (UTC; "
                                                                  "null: not by the timetable alone)"},
                           "why": {"type": "string"}, "group": _NSTR, "required": {"type": "boolean"},
                           "held": _NSTR, "rollout_state": _NSTR, "schedule": _NSTR}},
                       "loop": _ref("Loop"), "settings": _OBJECT, "notifications": _OBJECT}},
        "Backup": {"type": "object",
                   "required": ["id", "kind", "created", "version", "for_version", "method", "paths", "files",
                                "bytes", "age_days", "path"],
                   "properties": {
                       "id": {"type": "string"},
                       "kind": {"type": "string", "enum": ["snapshot", "rejected"],
                                "description": "snapshot: taken before an update; rejected: data a restore "
                                               "moved aside"},
                       "created": {"type": "string"}, "version": _NSTR, "for_version": _NSTR,
                       "reason": {"type": "string"},
                       "method": {"type": "string", "description": "reflink, copy, mixed, empty or moved"},
                       "paths": {"type": "array", "items": {"type": "string"}},
                       "files": {"type": "integer"}, "bytes": {"type": "integer"}, "seconds": {"type": "number"},
                       "restored_from": _NSTR, "age_days": {"type": "number"},
                       "path": {"type": "string", "description": "where it is, under the install directory"}}},
        "BackupList": {"type": "object", "required": ["backups", "count", "bytes", "retention", "rollback"],
                       "properties": {
                           "backups": {"type": "array", "items": _ref("Backup")},
                           "count": {"type": "integer"}, "bytes": {"type": "integer"},
                           "retention": {"type": "object", "properties": {
                               "max_backups": {"type": "integer"}, "max_rollback_days": {"type": "integer"}}},
                           "rollback": {"type": "object", "required": ["target", "restores", "restorable"],
                                        "properties": {
                                            "target": {**_OBJECT, "nullable": True,
                                                       "description": "the version a manual rollback switches to"},
                                            "from_version": _NSTR,
                                            "restores": {**_NSTR, "description": "the data snapshot it restores "
                                                                                 "(null: the data stays)"},
                                            "restorable": {"type": "boolean",
                                                           "description": "false: that snapshot was pruned; "
                                                                          "roll back with keep_data"}}}}},
        "Loop": {"type": "object",
                 "required": ["state", "error", "since", "failures", "retry_in_seconds", "restarts"],
                 "properties": {
                     "state": {"type": "string", "enum": ["running", "failing"],
                               "description": "failing: the last round failed and is retried with backoff"},
                     "error": {**_NSTR, "description": "why the last round failed (one line)"},
                     "since": {**_NSTR, "description": "when the current run of failures began"},
                     "failures": {"type": "integer", "description": "failed rounds in a row"},
                     "retry_in_seconds": {"type": "number", "nullable": True,
                                          "description": "backoff before the next attempt: 1 s doubling to 300 s"},
                     "last_failure": _NSTR, "last_ok": _NSTR,
                     "restarts": {"type": "integer", "description": "times the loop thread had to be restarted"},
                     "last_round": _NSTR, "last_result": _NSTR, "next_round": _NSTR}},
        "Analytics": {"type": "object", "required": [
            "total_updates", "successful_updates", "failed_updates", "average_install_time",
            "most_common_failure", "last_update_date", "rollbacks", "bytes_downloaded", "bytes_saved"],
            "properties": {
                "total_updates": {"type": "integer"}, "successful_updates": {"type": "integer"},
                "failed_updates": {"type": "integer"},
                "average_install_time": {"type": "number", "nullable": True},
                "most_common_failure": _NSTR, "last_update_date": _NSTR,
                "rollbacks": {"type": "integer"}, "bytes_downloaded": {"type": "integer"},
                "bytes_saved": {"type": "integer"}, "series": _OBJECT}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "pinnacle-update agent", "version": "1",
                 "description": "Local update agent: status, checks, installs with live progress, rollback, "
                                "data backups, history, analytics. Mutating calls need `Authorization: Bearer <token>` "
                                "(`pinnacle-update token`); cross-origin requests are refused."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
