"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

It is built from the running settings, so the limits and the auth it states are the ones this
server enforces; ``tests/test_openapi.py`` keeps it and the routes in step, and the fuzz tests
hold every answer to it.
"""
from __future__ import annotations

from typing import Any

from ..settings import Settings
from ..wire import API_PREFIX, MAX_ID, SCOPES

Json = dict[str, Any]

ERROR_CODE = "^[a-z][a-z0-9_]*$"
EVENT_ID = "^[0-9]+$"
EVENT_ID_NUMBER = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
STREAM_PATHS = ("/memory/events/sse", "/memory/events/ws")
SCOPE_HEADERS = ("WorkflowId", "SessionId", "ActorId")
FILTERS = ("Scope", "ScopeId", "Patterns")

# The errors (``error`` codes) each kind of 400 can carry, named in the descriptions.
BAD_SCOPE = ("`invalid_scope`, `invalid_scope_id`, `missing_scope_id` (a non-global scope "
             "without an id), `missing_scope` (`scope_id` without `scope`)")
BAD_KEY = ("`invalid_json`, `invalid_body` (not an object), `missing_key`, `invalid_key`, "
           "`key_too_long`, " + BAD_SCOPE)
BAD_FILTER = "`invalid_scope`, `invalid_pattern` (naming the glob), `too_many_patterns`"


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Json:
    return _ref("schemas", name)


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _response_header(description: str, schema: Json | None = None) -> Json:
    return {"description": description, "required": True,
            "schema": schema or {"type": "string"}}


def _error(status: int, description: str, headers: Json | None = None) -> Json:
    """A JSON error answer whose ``code`` is the HTTP status; ``description`` names its errors."""
    response = {"description": description,
                "content": _json({"allOf": [_schema("Error"),
                                            {"properties": {"code": {"const": status}}}]})}
    if headers:
        response["headers"] = headers
    return response


def _or_empty(schema: Json) -> Json:
    """A query or header value that may also be empty, which means "not given"."""
    return {"anyOf": [schema, {"const": ""}]}


def _header_parameter(name: str, description: str, required: bool) -> Json:
    return {"name": name, "in": "header", "required": required, "schema": {"type": "string"},
            "description": description}


# -- components -------------------------------------------------------------------------------

def _schemas(settings: Settings) -> Json:
    scope = {"type": "string", "enum": list(SCOPES),
             "description": "`global` always has the scope id `global`."}
    timestamp = {"type": "string", "format": "date-time",
                 "description": "RFC 3339 in UTC with microseconds, e.g. "
                                "`2026-11-26T21:00:00.123456Z`."}
    key = {"type": "string", "minLength": 1, "maxLength": settings.max_key_length,
           "description": "Any non-empty text; `.` and `/` are ordinary characters (globs treat "
                          "`/` as a separator)."}
    # In a body, null means the same as absent: clients that send every field keep working.
    body_scope = {"anyOf": [_schema("Scope"), {"type": "null"}, {"const": ""}],
                  "description": "Absent, null or blank: the most specific scope whose `X-*-ID` header "
                                 "is present (workflow, session, actor), else global."}
    scope_id = {"type": ["string", "null"],
                "description": "Defaults to the scope's `X-*-ID` header; blank or null means "
                               "absent."}
    return {
        "Error": {
            "type": "object",
            "description": "Every error the service answers with.",
            "required": ["error", "message", "code"],
            "properties": {
                "error": {"type": "string", "pattern": ERROR_CODE,
                          "description": "A stable snake_case code to branch on."},
                "message": {"type": "string", "description": "A sentence for people."},
                "code": {"type": "integer", "minimum": 400, "maximum": 599,
                         "description": "The HTTP status, repeated."},
            },
        },
        "Scope": scope,
        "MemoryRecord": {
            "type": "object",
            "required": ["key", "data", "scope", "scope_id", "created_at", "updated_at"],
            "properties": {
                "key": {"type": "string"},
                "data": {"description": "The stored JSON value, null included."},
                "scope": _schema("Scope"),
                "scope_id": {"type": "string"},
                "created_at": timestamp,
                "updated_at": timestamp,
            },
        },
        "MemoryChange": {
            "type": "object",
            "description": "One entry of the event log: a `set` or `delete` of one key.",
            "required": ["id", "type", "timestamp", "scope", "scope_id", "key", "action", "data",
                         "previous_data", "metadata"],
            "properties": {
                "id": {"type": "string", "pattern": EVENT_ID,
                       "description": "Decimal integer that only grows, across scopes and "
                                      "processes: the order of the log."},
                "type": {"const": "memory_change"},
                "timestamp": timestamp,
                "scope": _schema("Scope"),
                "scope_id": {"type": "string"},
                "key": {"type": "string"},
                "action": {"type": "string", "enum": ["set", "delete"]},
                "data": {"description": "The new value; null on delete."},
                "previous_data": {"description": "The value before the change, or null."},
                "metadata": {
                    "type": "object",
                    "required": ["agent_id", "workflow_id"],
                    "properties": {
                        "agent_id": {"type": "string", "description": "From `X-Actor-ID`."},
                        "workflow_id": {"type": "string",
                                        "description": "From `X-Workflow-ID`."},
                    },
                },
            },
        },
        "StreamReset": {
            "type": "object",
            "description": "Control message: events after the resume point are gone from the "
                           "log; resync from `/memory/list`, live events follow. On SSE it is "
                           "the data of `event: reset` (without `type`).",
            "required": ["reason", "oldest_id"],
            "properties": {
                "type": {"const": "reset"},
                "reason": {"type": "string", "enum": ["history_trimmed",
                                                      "unknown_last_event_id"]},
                "oldest_id": {"type": "string", "pattern": EVENT_ID},
            },
        },
        "StreamEnd": {
            "type": "object",
            "description": "Control message: the stream ends; reconnect with `last_event_id` "
                           "= `last_id` and lose nothing. On SSE it is the data of `event: "
                           "overflow` (or `shutdown`, `lifetime`), without `type`.",
            "required": ["last_id"],
            "properties": {
                "type": {"type": "string", "enum": ["overflow", "shutdown", "lifetime"]},
                "last_id": {"type": "string", "pattern": EVENT_ID},
            },
        },
        "SetRequest": {
            "type": "object",
            "required": ["key", "data"],
            "properties": {
                "key": key,
                "data": {"description": "Any JSON value, null included; at most "
                                        f"{settings.max_value_bytes} bytes as compact JSON."},
                "scope": body_scope,
                "scope_id": scope_id,
            },
        },
        "KeyRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": key, "scope": body_scope, "scope_id": scope_id},
        },
    }


def _parameters(settings: Settings) -> Json:
    def query(name: str, schema: Json, description: str, required: bool = False) -> Json:
        return {"name": name, "in": "query", "required": required, "schema": schema,
                "description": description}

    def scope_header(name: str, scope: str) -> Json:
        return _header_parameter(name, f"The {scope} scope id for requests without an "
                                       "explicit one.", False)

    return {
        "WorkflowId": scope_header("X-Workflow-ID", "workflow"),
        "SessionId": scope_header("X-Session-ID", "session"),
        "ActorId": scope_header("X-Actor-ID", "actor"),
        "Scope": query("scope", _or_empty(_schema("Scope")),
                       "Only events of this scope; empty means any."),
        "ScopeId": query("scope_id", {"type": "string"},
                         "Only events of this scope id; on `/memory/list` it defaults to the "
                         "scope's `X-*-ID` header."),
        "Patterns": query(
            "patterns", {"type": "string"},
            f"Comma-separated key globs (Go `path/filepath.Match`), at most "
            f"{settings.max_patterns} of at most {settings.max_pattern_length} characters; an "
            "event passes if its key matches any. A malformed glob is 400 `invalid_pattern`."),
        "LastEventIdQuery": query(
            "last_event_id", _or_empty(EVENT_ID_NUMBER),
            "Resume: replay every retained matching event after this id, then go live."),
    }


def _responses() -> Json:
    return {
        "Unauthorized": _error(
            401, "`unauthorized`: the server has `MEMORY_API_KEY` and the request did not "
                 "present it.",
            {"WWW-Authenticate": _response_header("`Bearer`.")}),
        "BodyTooLarge": _error(
            413, "`request_entity_too_large`: the body is larger than `MEMORY_MAX_BODY_BYTES`."),
        "Unavailable": _error(
            503, "`store_unavailable`: the store cannot be reached now; on the stream routes "
                 "also `too_many_streams`: this process holds `MEMORY_MAX_STREAMS` streams.",
            {"Retry-After": _response_header("Seconds to wait.",
                                             {"type": "integer", "minimum": 0})}),
    }


def _security_schemes() -> Json:
    return {
        "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer",
                   "description": "The API key as a bearer token."},
        "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key",
                        "description": "On the two stream routes only: browsers' EventSource "
                                       "cannot send headers."},
    }


# -- paths ------------------------------------------------------------------------------------


def _refs(kind: str, names: tuple[str, ...]) -> list[Json]:
    return [_ref(kind, name) for name in names]


def _memory_write(summary: str, description: str, body: str, answers: Json) -> Json:
    """``POST`` with a JSON body: ``answers`` add to (or refine) the errors every one can give."""
    return {
        "tags": ["memory"],
        "summary": summary,
        "description": description,
        "parameters": _refs("parameters", SCOPE_HEADERS),
        "requestBody": {"required": True, "content": _json(_schema(body))},
        "responses": {"401": _ref("responses", "Unauthorized"),
                      "413": _ref("responses", "BodyTooLarge"),
                      "503": _ref("responses", "Unavailable"),
                      **answers},
    }


def _memory_paths() -> Json:
    record = {"description": "The memory record.", "content": _json(_schema("MemoryRecord"))}
    not_found = _error(404, "`not_found`: no such key in the scopes searched.")
    return {
        "/memory/set": {"post": _memory_write(
            "Store a value",
            "Writes to the explicit scope, else the most specific scope whose header is present "
            "(workflow, session, actor), else global. The change and its event are written in "
            "one transaction.",
            "SetRequest",
            {"200": record,
             "400": _error(400, BAD_KEY + ", `missing_data`; `invalid_json` also for numbers "
                                "standard JSON cannot hold (NaN, Infinity, 1e999)."),
             "413": _error(413, "`value_too_large` (`data` over `MEMORY_MAX_VALUE_BYTES`) or "
                                "`request_entity_too_large` (body over "
                                "`MEMORY_MAX_BODY_BYTES`).")})},
        "/memory/get": {"post": _memory_write(
            "Read a value",
            "Searches the explicit scope, else workflow → session → actor → global (those whose "
            "header is present) and answers the first hit.",
            "KeyRequest",
            {"200": record, "400": _error(400, BAD_KEY + "."), "404": not_found})},
        "/memory/delete": {"post": _memory_write(
            "Delete a value",
            "Resolves its scope like `set` (no walk). The delete and its event are written in "
            "one transaction.",
            "KeyRequest",
            {"204": {"description": "Deleted."}, "400": _error(400, BAD_KEY + "."),
             "404": not_found})},
        "/memory/list": {"get": {
            "tags": ["memory"],
            "summary": "List a scope's records",
            "description": "`scope_id` defaults to the scope's header; with neither, every id of "
                           "the scope.",
            "parameters": [
                {"name": "scope", "in": "query", "required": True, "schema": _schema("Scope")},
                _ref("parameters", "ScopeId"),
                *_refs("parameters", SCOPE_HEADERS),
            ],
            "responses": {
                "200": {"description": "The records.",
                        "content": _json({"type": "array", "items": _schema("MemoryRecord")})},
                "400": _error(400, "`missing_scope`, `invalid_scope`, `invalid_scope_id`."),
                "401": _ref("responses", "Unauthorized"),
                "503": _ref("responses", "Unavailable"),
            },
        }},
    }


def _stream_operation(summary: str, description: str, parameters: list[Json],
                      answers: Json) -> Json:
    return {
        "tags": ["events"],
        "summary": summary,
        "description": description + " Filters come from the query only, never from the "
                                     "`X-*-ID` headers.",
        "parameters": [*_refs("parameters", FILTERS), _ref("parameters", "LastEventIdQuery"),
                       *parameters],
        "responses": {"400": _error(400, BAD_FILTER + ", `invalid_last_event_id`."),
                      "401": _ref("responses", "Unauthorized"),
                      "503": _ref("responses", "Unavailable"),
                      **answers},
    }


def _event_paths() -> Json:
    sse_frames = (
        "The headers and a first comment frame (`: connected` with a `retry:` line) are sent at "
        "once. Each event is a frame `id: <id>` / `data: <MemoryChange JSON>`. Silence longer "
        "than `MEMORY_HEARTBEAT_SECONDS` writes `: keepalive`. Control frames: `event: reset` "
        "(data: StreamReset), and a final `event: overflow|shutdown|lifetime` (data: "
        "StreamEnd) after which the stream ends.")
    return {
        "/memory/events/sse": {"get": _stream_operation(
            "Stream changes over Server-Sent Events",
            "Replays after `Last-Event-ID` (the header wins over `last_event_id`), then live.",
            [{"name": "Last-Event-ID", "in": "header", "required": False,
              "schema": _or_empty(EVENT_ID_NUMBER),
              "description": "Resume point, as EventSource sends it on reconnect; wins over "
                             "`last_event_id`."}],
            {"200": {
                "description": sse_frames,
                "headers": {"Cache-Control": _response_header("`no-cache`.", {"const": "no-cache"}),
                            "X-Accel-Buffering": _response_header("`no`.", {"const": "no"})},
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}})},
        "/memory/events/ws": {"get": _stream_operation(
            "Stream changes over WebSocket",
            "Each event is one text message holding MemoryChange JSON; control messages are "
            "StreamReset and StreamEnd with their `type`.",
            [_header_parameter("Upgrade", "`websocket`; a plain GET is 400.", True),
             _header_parameter("Connection", "`Upgrade`.", True),
             _header_parameter("Sec-WebSocket-Key", "RFC 6455 handshake key.", True),
             _header_parameter("Sec-WebSocket-Version", "`13`.", True),
             _header_parameter("Origin", "Checked against `MEMORY_CORS_ORIGINS` when set; "
                                         "the service's own origin is always allowed.", False)],
            {"101": {"description": "Switching Protocols: the WebSocket is open."},
             "400": _error(400, "`websocket_required` (no upgrade), " + BAD_FILTER
                           + ", `invalid_last_event_id`."),
             "403": _error(403, "`origin_not_allowed`.")})},
        "/memory/events/history": {"get": {
            "tags": ["events"],
            "summary": "Past events, oldest first",
            "description": "Without `after_id` the most recent `limit` matching events; with it "
                           "the first `limit` matching events after that id, to page forward. "
                           "Filters come from the query only.",
            "parameters": [
                *_refs("parameters", FILTERS),
                {"name": "since", "in": "query", "required": False,
                 "schema": {"type": "string"},
                 "description": "RFC 3339 / ISO 8601 time; without an offset it means UTC."},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "after_id", "in": "query", "required": False,
                 "schema": _or_empty(EVENT_ID_NUMBER),
                 "description": "Page forward: only events after this id."},
            ],
            "responses": {
                "200": {"description": "The events.",
                        "content": _json({"type": "array", "items": _schema("MemoryChange")})},
                "400": _error(400, BAD_FILTER + ", `invalid_since`, `invalid_limit`, "
                                                "`invalid_after_id`."),
                "401": _ref("responses", "Unauthorized"),
                "503": _ref("responses", "Unavailable"),
            },
        }},
    }


def _ops_paths() -> Json:
    ok = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    return {
        "/healthz": {"get": {
            "tags": ["operations"], "summary": "The process runs",
            "responses": {"200": {"description": "Always, while the process runs.",
                                  "content": _json(ok)}}}},
        "/readyz": {"get": {
            "tags": ["operations"], "summary": "The store answers",
            "responses": {
                "200": {"description": "The store answers.", "content": _json(ok)},
                "503": {"description": "The store does not answer.", "content": _json({
                    "allOf": [_schema("Error"),
                              {"required": ["status"],
                               "properties": {"status": {"const": "unavailable"},
                                              "error": {"const": "store_unavailable"},
                                              "code": {"const": 503}}}]})}}}},
        "/metrics": {"get": {
            "tags": ["operations"], "summary": "Prometheus metrics of every worker process",
            "responses": {"200": {"description": "Prometheus text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "tags": ["operations"], "summary": "This description",
            "responses": {"200": {"description": "OpenAPI 3.1.",
                                  "content": _json({"type": "object",
                                                    "required": ["openapi", "paths"]})}}}},
    }



def _security(settings: Settings, path: str) -> list[Json]:
    """Any of these presents the key; nothing is needed when ``MEMORY_API_KEY`` is unset."""
    if not settings.api_key:
        return []
    ways = [{"ApiKeyHeader": []}, {"Bearer": []}]
    return ways + [{"ApiKeyQuery": []}] if path in STREAM_PATHS else ways


def build(settings: Settings) -> Json:
    """The description of this server: its limits and, when ``MEMORY_API_KEY`` is set, its auth."""
    api = {**_memory_paths(), **_event_paths()}
    for path, item in api.items():
        for operation in item.values():
            operation["security"] = _security(settings, path)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "memory-events",
            "version": "1",
            "description": (
                "Scoped key/value memory for agents, with every change streamed live; "
                "wire-compatible with the AgentField control plane's memory API. Every error "
                "is JSON `{error, message, code}`; bad input is a 4xx, never a 500."),
        },
        "tags": [{"name": "memory"}, {"name": "events"}, {"name": "operations"}],
        "paths": {**{API_PREFIX + path: item for path, item in api.items()}, **_ops_paths()},
        "components": {
            "schemas": _schemas(settings),
            "parameters": _parameters(settings),
            "responses": _responses(),
            "securitySchemes": _security_schemes(),
        },
    }
