"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

It is built from the running settings, so the limits and the auth it states are the ones this
server enforces; ``tests/test_openapi.py`` keeps it and the routes in step, and the fuzz tests
hold every answer to it. Each error answer names, in its description, every ``error`` code it
can carry, as backquoted snake_case words: the tests hold the codes answered to those lists.
"""
from __future__ import annotations

from typing import Any

from ..settings import Settings
from ..wire import (AGENT_ID_HEADER, API_PREFIX, EVENT_TYPE, EXPIRED, HISTORY_LIMIT,
                    MAX_HISTORY_LIMIT, MAX_ID, MAX_LIST_LIMIT, SCOPE_ID_HEADERS, SCOPES,
                    WS_PROTOCOL, Control, EndReason, ResetReason)
from .params import MAX_TTL_SECONDS
from .vector_api import DEFAULT_TOP_K, MAX_DIMENSIONS, MAX_TOP_K

Json = dict[str, Any]

ERROR_CODE = "^[a-z][a-z0-9_]*$"
EVENT_ID = "^[0-9]+$"
EVENT_ID_NUMBER = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
#: the smallest magnitude float32 rounds to infinity: 2**128 - 2**103 (FLT_MAX + half an ulp)
FLOAT32_OVERFLOW = float(2**128 - 2**103)
#: what ``str.strip`` removes: scope names are read trimmed, and a blank one means "not given"
SPACE = "[\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
SCOPE_NAMES = "(" + "|".join(SCOPES) + ")"
STREAM_PATHS = ("/memory/events/sse", "/memory/events/ws")
SCOPE_HEADERS = ("WorkflowId", "SessionId", "ActorId")
#: what every operation takes: the origin check covers every route
COMMON = ("Origin",)
WRITE_HEADERS = (*SCOPE_HEADERS, "AgentNodeId")
FILTERS = ("Scope", "ScopeId", "Patterns")
STREAM_PARAMETERS = (*FILTERS, "LastEventIdQuery", "Snapshot")

# The errors (``error`` codes) each kind of 400 can carry, named in the descriptions.
BAD_SCOPE = ("`invalid_scope`, `invalid_scope_id`, `missing_scope_id` (a non-global scope "
             "without an id), `missing_scope` (`scope_id` without `scope`)")
BAD_BODY = "`invalid_json`, `invalid_body` (not an object)"
BAD_KEY = BAD_BODY + ", `missing_key`, `invalid_key`, `key_too_long`, " + BAD_SCOPE
BAD_FILTER = "`invalid_scope`, `invalid_scope_id`, `invalid_pattern` (naming the glob), " \
             "`too_many_patterns`"
BAD_STREAM = BAD_FILTER + ", `invalid_last_event_id`, `invalid_snapshot`"
BAD_NUMBERS = ("`invalid_json` also for numbers standard JSON cannot hold (NaN, Infinity, "
               "1e999)")


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Json:
    return _ref("schemas", name)


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _response_header(description: str, schema: Json | None = None,
                     required: bool = True) -> Json:
    return {"description": description, "required": required,
            "schema": schema or {"type": "string"}}


RETRY_AFTER = _response_header("Seconds to wait.", {"type": "integer", "minimum": 0})


def _error(status: int, description: str, headers: Json | None = None,
           extra: Json | None = None) -> Json:
    """A JSON error answer whose ``code`` is the HTTP status; ``description`` names its errors;
    ``extra`` is what this answer adds to the Error schema."""
    parts = [_schema("Error"), {"properties": {"code": {"const": status}}}]
    response = {"description": description,
                "content": _json({"allOf": parts + ([extra] if extra else [])})}
    if headers:
        response["headers"] = headers
    return response


def _scope_input(required: bool = False, null: bool = False) -> Json:
    """A scope name as a request gives it: surrounding white space is ignored, and unless
    ``required`` a blank (or, with ``null``, a null) one means "not given"."""
    names = SCOPE_NAMES if required else SCOPE_NAMES + "?"
    text = {"type": "string", "pattern": f"^{SPACE}*{names}{SPACE}*$"}
    schema = {"anyOf": [text, {"type": "null"}]} if null else text
    return {**schema, "description": "One of " + ", ".join(f"`{s}`" for s in SCOPES)
            + " (surrounding white space is ignored)" + ("" if required else
                                                          "; blank means not given") + "."}


def _or_empty(schema: Json) -> Json:
    """A query or header value that may also be empty, which means "not given"."""
    return {"anyOf": [schema, {"const": ""}]}


def _header_parameter(name: str, description: str, required: bool,
                      schema: Json | None = None) -> Json:
    return {"name": name, "in": "header", "required": required,
            "schema": schema or {"type": "string"}, "description": description}


def _query(name: str, schema: Json, description: str, required: bool = False) -> Json:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


# -- components -------------------------------------------------------------------------------

def _embedding(description: str) -> Json:
    return {"type": "array", "minItems": 1, "maxItems": MAX_DIMENSIONS,
            "items": {"type": "number", "exclusiveMinimum": -FLOAT32_OVERFLOW,
                      "exclusiveMaximum": FLOAT32_OVERFLOW},
            "description": description + f" At most {MAX_DIMENSIONS} numbers, each stored as "
                                         "float32: one whose magnitude rounds past float32's "
                                         "largest is refused."}


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
    body_scope = {**_scope_input(null=True),
                  "description": "Absent, null or blank: the most specific scope whose `X-*-ID` "
                                 "header is present (workflow, session, actor), else global. "
                                 "Surrounding white space is ignored."}
    scope_id = {"type": ["string", "null"],
                "description": "Defaults to the scope's `X-*-ID` header; blank or null means "
                               "absent."}
    version = {"type": "string", "pattern": EVENT_ID,
               "description": "The id (decimal) of the event that last changed the record."}
    if_version = {
        "anyOf": [{"type": "string", "pattern": "^[0-9]{1,19}$"},
                  {"type": "integer", "minimum": 0, "maximum": MAX_ID}, {"type": "null"}],
        "description": "Write only if the record's `version` is this one; `\"0\"`: only if the "
                       "key does not exist. Otherwise 409 `version_conflict` with the current "
                       "record, and nothing is written. Null means absent."}
    metadata = {"type": "object", "description": "Any JSON object."}
    stored_vector = {"key": {"type": "string"}, "scope": _schema("Scope"),
                     "scope_id": {"type": "string"}, "metadata": metadata}
    return {
        "Error": {
            "type": "object",
            "description": "Every error the service answers with.",
            "required": ["error", "message", "details", "code"],
            "properties": {
                "error": {"type": "string", "pattern": ERROR_CODE,
                          "description": "A stable snake_case code to branch on."},
                "message": {"type": "string", "description": "A sentence for people."},
                "details": {"type": "string",
                            "description": "The same sentence as `message`: the field "
                                           "AgentField's clients read."},
                "code": {"type": "integer", "minimum": 400, "maximum": 599,
                         "description": "The HTTP status, repeated."},
            },
        },
        "Scope": scope,
        "MemoryRecord": {
            "type": "object",
            "required": ["key", "data", "scope", "scope_id", "created_at", "updated_at",
                         "version", "expires_at"],
            "properties": {
                "key": {"type": "string"},
                "data": {"description": "The stored JSON value, null included."},
                "scope": _schema("Scope"),
                "scope_id": {"type": "string"},
                "created_at": timestamp,
                "updated_at": timestamp,
                "version": version,
                "expires_at": {"type": ["string", "null"], "format": "date-time",
                               "description": "When the record expires (RFC 3339, as the "
                                              "other times), or null: no time to live."},
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
                "type": {"const": EVENT_TYPE},
                "timestamp": timestamp,
                "scope": _schema("Scope"),
                "scope_id": {"type": "string"},
                "key": {"type": "string"},
                "action": {"type": "string", "enum": ["set", "delete"]},
                "data": {"description": "The new value; null on delete."},
                "previous_data": {"description": "The value before the change, or null."},
                "metadata": {
                    "type": "object",
                    "description": "Who made the change, as the control plane fills it; each "
                                   "is `\"\"` when its header was absent.",
                    "required": ["agent_id", "actor_id", "workflow_id"],
                    "additionalProperties": False,
                    "properties": {
                        "agent_id": {"type": "string",
                                     "description": f"From `{AGENT_ID_HEADER}`."},
                        "actor_id": {"type": "string",
                                     "description": f"From `{SCOPE_ID_HEADERS['actor']}`."},
                        "workflow_id": {"type": "string", "description":
                                        f"From `{SCOPE_ID_HEADERS['workflow']}`."},
                        "reason": {"const": EXPIRED,
                                   "description": "Only on the `delete` that removes a record "
                                                  "whose time to live ran out."},
                    },
                },
            },
        },
        "StreamReset": {
            "type": "object",
            "description": "Control message: events after the resume point are gone from the "
                           "log; resync from `/memory/list` (or resubscribe with `snapshot=1`), "
                           "live events follow. On SSE it is the data of `event: reset` "
                           "(without `type`); a `snapshot=1` stream sends a fresh snapshot "
                           "instead.",
            "required": ["reason", "oldest_id"],
            "properties": {
                "type": {"const": Control.RESET.value},
                "reason": {"type": "string", "enum": [reason.value for reason in ResetReason]},
                "oldest_id": {"type": "string", "pattern": EVENT_ID},
            },
        },
        "SnapshotRecord": {
            "type": "object",
            "description": "Control message (WebSocket protocol clients): one current record of "
                           "a `snapshot=1` stream. On SSE the data of `event: snapshot` is the "
                           "MemoryRecord itself.",
            "required": ["type", "record"],
            "properties": {"type": {"const": Control.SNAPSHOT.value},
                           "record": _schema("MemoryRecord")},
        },
        "SnapshotEnd": {
            "type": "object",
            "description": "Control message: every current record passing the filters was sent; "
                           "they reflect the log up to `last_id`, and the events after it "
                           "follow. On SSE it is the data of `event: snapshot_end` (without "
                           "`type`), whose `id:` is `last_id`.",
            "required": ["last_id"],
            "properties": {"type": {"const": Control.SNAPSHOT_END.value},
                           "last_id": {"type": "string", "pattern": EVENT_ID}},
        },
        "StreamEnd": {
            "type": "object",
            "description": "Control message: the stream ends; reconnect with `last_event_id` "
                           "= `last_id` and lose nothing. On SSE it is the data of `event: "
                           "overflow` (or `shutdown`, `lifetime`), without `type`. A plain "
                           "WebSocket client gets it, with `type`, as the close reason.",
            "required": ["last_id"],
            "properties": {
                "type": {"type": "string", "enum": [reason.value for reason in EndReason
                                                    if reason is not EndReason.CLIENT]},
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
                "if_version": if_version,
                "ttl_seconds": {
                    "type": ["number", "null"], "exclusiveMinimum": 0,
                    "maximum": MAX_TTL_SECONDS,
                    "description": "Time to live: the record is gone this many seconds from "
                                   "now, its removal logged as a `delete` with `metadata.reason` "
                                   f"`{EXPIRED}`. A `set` without it clears it. Null means "
                                   f"absent. At most {MAX_TTL_SECONDS:,.0f} (about a century); "
                                   "anything else is 400 `invalid_ttl_seconds`, except a number "
                                   "no double holds (`1e999`), which is `invalid_json` as "
                                   "anywhere in a body."},
            },
        },
        "KeyRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": key, "scope": body_scope, "scope_id": scope_id},
        },
        "DeleteRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": key, "scope": body_scope, "scope_id": scope_id,
                           "if_version": if_version},
        },
        "VectorSetRequest": {
            "type": "object",
            "required": ["key", "embedding"],
            "properties": {
                "key": key,
                "embedding": _embedding("The vector."),
                "metadata": {"type": ["object", "null"],
                             "description": "Any JSON object, kept with the vector and "
                                            "matched by search `filters`; null or absent is "
                                            "`{}`."},
                "scope": body_scope,
                "scope_id": scope_id,
            },
        },
        "VectorStored": {
            "type": "object",
            "description": "What `set` stored: an upsert that keeps `created_at`.",
            "required": ["key", "scope", "scope_id", "metadata"],
            "properties": stored_vector,
        },
        "Vector": {
            "type": "object",
            "required": ["key", "scope", "scope_id", "embedding", "metadata", "created_at",
                         "updated_at"],
            "properties": {**stored_vector,
                           "embedding": {"type": "array", "items": {"type": "number"},
                                         "description": "As stored: float32 values."},
                           "created_at": timestamp, "updated_at": timestamp},
        },
        "NamespaceDeleteRequest": {
            "type": "object",
            "required": ["namespace"],
            "properties": {
                "namespace": {**key, "description": "Every key that starts with this, taken "
                                                   "literally."},
                "scope": body_scope,
                "scope_id": scope_id,
            },
        },
        "NamespaceDeleted": {
            "type": "object",
            "required": ["namespace", "deleted", "scope", "scope_id", "status"],
            "properties": {
                "namespace": {"type": "string"},
                "deleted": {"type": "integer", "minimum": 0,
                            "description": "How many vectors were deleted."},
                "scope": _schema("Scope"),
                "scope_id": {"type": "string"},
                "status": {"const": "deleted"},
            },
        },
        "VectorSearchRequest": {
            "type": "object",
            "required": ["query_embedding"],
            "properties": {
                "query_embedding": _embedding("The query; stored vectors of another dimension "
                                              "are skipped."),
                "top_k": {"type": ["integer", "null"], "maximum": MAX_TOP_K,
                          "default": DEFAULT_TOP_K,
                          "description": f"How many hits at most; 0 or less (or null) means "
                                         f"{DEFAULT_TOP_K}."},
                "filters": {"type": ["object", "null"],
                            "description": "Keeps vectors whose `metadata` has every given key "
                                           "with an equal JSON value (numbers by value: `2` "
                                           "equals `2.0`)."},
                "threshold": {"description": "Accepted for the control plane's clients, and "
                                             "ignored."},
                "scope": body_scope,
                "scope_id": scope_id,
            },
        },
        "VectorHit": {
            "type": "object",
            "required": ["key", "scope", "scope_id", "score", "distance", "metadata",
                         "created_at", "updated_at"],
            "properties": {
                **stored_vector,
                "score": {"type": "number",
                          "description": "Higher is better: the cosine similarity (0 against "
                                         "a zero vector), the dot product, or minus the "
                                         "euclidean distance, as `MEMORY_VECTOR_METRIC` "
                                         f"(`{settings.vector_metric}` here) says."},
                "distance": {"type": "number",
                             "description": "1 − cosine, −dot, or the euclidean distance."},
                "created_at": timestamp,
                "updated_at": timestamp,
            },
        },
    }


def _parameters(settings: Settings) -> Json:
    def scope_header(scope: str) -> Json:
        return _header_parameter(SCOPE_ID_HEADERS[scope], f"The {scope} scope id for requests "
                                                          "without an explicit one.", False)

    return {
        "WorkflowId": scope_header("workflow"),
        "SessionId": scope_header("session"),
        "ActorId": scope_header("actor"),
        "AgentNodeId": _header_parameter(
            AGENT_ID_HEADER, f"The agent making the change: the event's `metadata.agent_id` (as "
                             f"`{SCOPE_ID_HEADERS['actor']}` is its `actor_id` and "
                             f"`{SCOPE_ID_HEADERS['workflow']}` its `workflow_id`).", False),
        "Origin": _header_parameter(
            "Origin", "Sent by browsers. Another origin than the service's own (scheme://host "
                      "of the request) that `MEMORY_CORS_ORIGINS` does not list is 403 "
                      "`origin_not_allowed`, on every route; without it nothing is checked.",
            False),
        "Scope": _query("scope", _scope_input(),
                        "Only events of this scope; blank means any."),
        "ScopeId": _query("scope_id", {"type": "string"},
                          "Only events of this scope id; on `/memory/list` it defaults to the "
                          "scope's `X-*-ID` header."),
        "Patterns": _query(
            "patterns", {"type": "string"},
            f"Comma-separated key globs (Go `path/filepath.Match`), at most "
            f"{settings.max_patterns} of at most {settings.max_pattern_length} characters; an "
            "event passes if its key matches any. A malformed glob is 400 `invalid_pattern`."),
        "LastEventIdQuery": _query(
            "last_event_id", _or_empty(EVENT_ID_NUMBER),
            "Resume: replay every retained matching event after this id, then go live."),
        "Snapshot": _query(
            "snapshot", _or_empty({"type": "integer", "enum": [0, 1], "default": 0}),
            "`1`: a stream that is not resuming first sends every current record passing the "
            "filters, then `snapshot_end` with the log position they reflect, then the events "
            "after it. One that resumes replays instead; one that cannot resume sends a fresh "
            "snapshot where it would have sent `reset`. On the WebSocket only clients of the "
            f"`{WS_PROTOCOL}` subprotocol get a snapshot: any other client (the AgentField "
            "SDKs) gets events only, and `snapshot=1` changes nothing for it. Anything but 0 "
            "or 1 is 400 `invalid_snapshot`."),
    }


def _responses() -> Json:
    return {
        "Unauthorized": _error(
            401, "`unauthorized`: the server has `MEMORY_API_KEY` and the request did not "
                 "present it.",
            {"WWW-Authenticate": _response_header("`Bearer`.")}),
        "ForeignOrigin": _error(
            403, "`origin_not_allowed`: the `Origin` header names another origin than the "
                 "service's own, and `MEMORY_CORS_ORIGINS` does not list it."),
        "BodyTooLarge": _error(
            413, "`request_entity_too_large`: the body is larger than `MEMORY_MAX_BODY_BYTES`."),
        "VersionConflict": _error(
            409, "`version_conflict`: `if_version` is not the record's version; nothing was "
                 "written. `current` is the record as it is (null: there is none).",
            extra={"required": ["current"],
                   "properties": {"current": {"anyOf": [_schema("MemoryRecord"),
                                                        {"type": "null"}]}}}),
        "Unavailable": _error(
            503, "`store_unavailable`: the store cannot be reached now; on the stream routes "
                 "also `too_many_streams`: this process holds `MEMORY_MAX_STREAMS` streams.",
            {"Retry-After": RETRY_AFTER}),
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


def _api_operation(tag: str, summary: str, description: str, parameters: list[Json],
                   answers: Json, body: str | None = None) -> Json:
    """An ``/api/v1`` operation: ``answers`` add to (or refine) what every one can answer."""
    operation = {
        "tags": [tag],
        "summary": summary,
        "description": description,
        "parameters": [*parameters, *_refs("parameters", COMMON)],
        "responses": {"401": _ref("responses", "Unauthorized"),
                      "403": _ref("responses", "ForeignOrigin"),
                      "503": _ref("responses", "Unavailable"),
                      **({"413": _ref("responses", "BodyTooLarge")} if body else {}),
                      **answers},
    }
    if body:
        operation["requestBody"] = {"required": True, "content": _json(_schema(body))}
    return operation


def _memory_write(summary: str, description: str, body: str, answers: Json,
                  headers: tuple[str, ...] = SCOPE_HEADERS, tag: str = "memory") -> Json:
    """``POST`` (or ``DELETE``) with a JSON body."""
    return _api_operation(tag, summary, description, _refs("parameters", headers), answers,
                          body)


def _memory_paths() -> Json:
    record = {"description": "The memory record.", "content": _json(_schema("MemoryRecord"))}
    return {
        "/memory/set": {"post": _memory_write(
            "Store a value",
            "Writes to the explicit scope, else the most specific scope whose header is present "
            "(workflow, session, actor), else global. The change and its event are written in "
            "one transaction.",
            "SetRequest",
            {"200": record,
             "400": _error(400, BAD_KEY + ", `missing_data`, `invalid_if_version`, "
                                "`invalid_ttl_seconds`; " + BAD_NUMBERS + "."),
             "409": _ref("responses", "VersionConflict"),
             "413": _error(413, "`value_too_large` (`data` over `MEMORY_MAX_VALUE_BYTES`) or "
                                "`request_entity_too_large` (body over "
                                "`MEMORY_MAX_BODY_BYTES`).")},
            WRITE_HEADERS)},
        "/memory/get": {"post": _memory_write(
            "Read a value",
            "Searches the explicit scope, else workflow → session → actor → global (those whose "
            "header is present) and answers the first hit.",
            "KeyRequest",
            {"200": record, "400": _error(400, BAD_KEY + "; " + BAD_NUMBERS + "."),
             "404": _error(404, "`not_found`: no such key in the scopes searched; also an "
                                "explicit non-global scope without an id (body or header), "
                                "which names no scope to search.")})},
        "/memory/delete": {"post": _memory_write(
            "Delete a value",
            "Resolves its scope like `set` (no walk). The delete and its event are written in "
            "one transaction; deleting a key that does not exist writes nothing and logs no "
            "event.",
            "DeleteRequest",
            {"204": {"description": "Deleted, or there was nothing to delete."},
             "400": _error(400, BAD_KEY + ", `invalid_if_version`; " + BAD_NUMBERS + "."),
             "409": _ref("responses", "VersionConflict")},
            WRITE_HEADERS)},
        "/memory/list": {"get": _api_operation(
            "memory", "List a scope's records",
            "Ordered by scope id, then key. `scope_id` defaults to the scope's header; with "
            "neither, every id of the scope. Listing, then streaming with `Last-Event-ID` set "
            "to the first page's `X-Last-Event-ID`, converges to the exact state.",
            [_query("scope", _scope_input(required=True), "The scope to list.", required=True),
             _ref("parameters", "ScopeId"),
             _query("prefix", {"type": "string"}, "Only keys that start with this."),
             _query("limit", _or_empty({"type": "integer", "minimum": 1,
                                        "maximum": MAX_LIST_LIMIT}),
                    "Records per page; without it the whole scope is answered at once."),
             _query("cursor", {"type": "string"},
                    "Where the page starts: opaque, taken from the previous page's `Link`."),
             *_refs("parameters", SCOPE_HEADERS)],
            {"200": {"description": "The records.",
                     "headers": {
                         "X-Last-Event-ID": _response_header(
                             "The newest event the listing reflects.",
                             {"type": "string", "pattern": EVENT_ID}),
                         "Link": _response_header(
                             "When more records follow (RFC 8288): `<url>; rel=\"next\"`, the "
                             "URL of the next page, with its `cursor`.",
                             {"type": "string", "pattern": '^<[^>]+>; rel="next"$'}, False)},
                     "content": _json({"type": "array", "items": _schema("MemoryRecord")})},
             "400": _error(400, "`missing_scope`, `invalid_scope`, `invalid_scope_id`, "
                                "`invalid_prefix`, `invalid_limit`, `invalid_cursor`.")})},
    }


def _vector_paths(settings: Settings) -> Json:
    by_key = [{"name": "key", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1,
                          "maxLength": settings.max_key_length},
               "description": "The key; it may contain `/`."},
              _query("scope", _scope_input(),
                     "Absent or blank: the most specific scope whose `X-*-ID` header is "
                     "present, else global."),
              _query("scope_id", {"type": "string"}, "Defaults to the scope's `X-*-ID` header."),
              *_refs("parameters", SCOPE_HEADERS)]
    bad_key_query = ("`invalid_key`, `key_too_long`, `invalid_scope`, `invalid_scope_id`, "
                     "`missing_scope` (`scope_id` without `scope`)")
    stored = {"description": "The vector as stored.", "content": _json(_schema("VectorStored"))}
    bad_embedding = ("`missing_embedding`, `invalid_embedding` (not a non-empty list of finite "
                     "numbers, or too long), `invalid_metadata` (not an object)")
    deleted = {"204": {"description": "Deleted, or there was nothing to delete."}}

    def set_vector(summary: str) -> Json:
        return _memory_write(
            summary, "An upsert: a vector stored again keeps its `created_at`. Scopes "
                     "resolve as for memory writes.", "VectorSetRequest",
            {"200": stored,
             "400": _error(400, BAD_KEY + ", " + bad_embedding + "; " + BAD_NUMBERS + ".")},
            tag="vectors")

    return {
        "/memory/vector": {"post": set_vector("Store a vector")},
        "/memory/vector/set": {"post": set_vector("Store a vector (the SDKs' path)")},
        "/memory/vector/{key}": {
            "get": _api_operation(
                "vectors", "Read a vector",
                "From the explicit scope, else the most specific scope whose header is present, "
                "else global (no walk).", by_key,
                {"200": {"description": "The vector.", "content": _json(_schema("Vector"))},
                 "400": _error(400, bad_key_query + "."),
                 "404": _error(404, "`not_found`: no vector under that key there; also an "
                                    "explicit non-global scope without an id.")}),
            "delete": _api_operation(
                "vectors", "Delete a vector",
                "Resolves its scope like a write.", by_key,
                {**deleted, "400": _error(400, bad_key_query + ", `missing_scope_id`."),
                 "404": _error(404, "`not_found`: only for an empty key (`/memory/vector/`), "
                                    "which names no vector.")}),
        },
        "/memory/vector/delete": {"post": _memory_write(
            "Delete a vector (body)", "The body's scope is honoured.", "KeyRequest",
            {**deleted, "400": _error(400, BAD_KEY + "; " + BAD_NUMBERS + ".")},
            tag="vectors")},
        "/memory/vector/namespace": {"delete": _memory_write(
            "Delete every vector whose key starts with a prefix",
            "In the one scope the body resolves to.", "NamespaceDeleteRequest",
            {"200": {"description": "What was deleted.",
                     "content": _json(_schema("NamespaceDeleted"))},
             "400": _error(400, BAD_BODY + ", `missing_namespace`, `invalid_namespace`, "
                                "`namespace_too_long`, " + BAD_SCOPE + "; " + BAD_NUMBERS
                           + ".")},
            tag="vectors")},
        "/memory/vector/search": {"post": _memory_write(
            "Nearest vectors",
            f"Exact search over the scope's vectors of the query's dimension, scored by "
            f"`MEMORY_VECTOR_METRIC` (`{settings.vector_metric}` here).",
            "VectorSearchRequest",
            {"200": {"description": "The hits, best first.",
                     "content": _json({"type": "array", "maxItems": MAX_TOP_K,
                                       "items": _schema("VectorHit")})},
             "400": _error(400, BAD_BODY + ", `missing_query_embedding`, "
                                "`invalid_query_embedding`, `invalid_filters` (not an object), "
                                "`invalid_top_k` (not a whole number, or over "
                                f"{MAX_TOP_K}), " + BAD_SCOPE + "; " + BAD_NUMBERS + ".")},
            tag="vectors")},
    }


def _stream_operation(summary: str, description: str, parameters: list[Json],
                      answers: Json) -> Json:
    return _api_operation(
        "events", summary,
        description + " Filters come from the query only, never from the `X-*-ID` headers.",
        [*_refs("parameters", STREAM_PARAMETERS), *parameters],
        {"400": _error(400, BAD_STREAM + "."), **answers})


def _event_paths() -> Json:
    sse_frames = (
        "The headers and a first comment frame (`: connected` with a `retry:` line) are sent at "
        "once. Each event is a frame `id: <id>` / `data: <MemoryChange JSON>`. Silence longer "
        "than `MEMORY_HEARTBEAT_SECONDS` writes `: keepalive`. With `snapshot=1`: first one "
        "`event: snapshot` frame per current record (data: MemoryRecord), then `event: "
        "snapshot_end` with `id: <N>` (data: SnapshotEnd). Control frames: `event: reset` "
        "(data: StreamReset), and a final `event: overflow|shutdown|lifetime` (data: "
        "StreamEnd) after which the stream ends.")
    ws_messages = (
        "Each event is one text message holding MemoryChange JSON. A client that asks for the "
        f"`{WS_PROTOCOL}` subprotocol also gets control messages, JSON objects with a `type`: "
        "StreamReset, SnapshotRecord and SnapshotEnd (`snapshot=1`), and a final StreamEnd "
        "(`overflow`, `shutdown` or `lifetime`). Any other client (the AgentField SDKs) gets "
        "events only, with or without `snapshot=1` (it is sent no snapshot, no reset), and "
        "its stream never ends by lifetime: an overflow closes the socket "
        "with 1008 and a shutdown with 1001, the close reason being StreamEnd JSON "
        "(`{\"type\":\"overflow\",\"last_id\":\"N\"}`).")
    return {
        "/memory/events/sse": {"get": _stream_operation(
            "Stream changes over Server-Sent Events",
            "Replays after `Last-Event-ID` (the header wins over `last_event_id`), then live.",
            [_header_parameter("Last-Event-ID", "Resume point, as EventSource sends it on "
                                                "reconnect; wins over `last_event_id`.", False,
                               _or_empty(EVENT_ID_NUMBER))],
            {"200": {
                "description": sse_frames,
                "headers": {"Cache-Control": _response_header("`no-cache`.", {"const": "no-cache"}),
                            "X-Accel-Buffering": _response_header("`no`.", {"const": "no"})},
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}})},
        "/memory/events/ws": {"get": _stream_operation(
            "Stream changes over WebSocket", ws_messages,
            [_header_parameter("Upgrade", "`websocket`; a plain GET is 400.", True),
             _header_parameter("Connection", "`Upgrade`.", True),
             _header_parameter("Sec-WebSocket-Key", "RFC 6455 handshake key.", True),
             _header_parameter("Sec-WebSocket-Version", "`13`.", True),
             _header_parameter("Sec-WebSocket-Protocol",
                               f"`{WS_PROTOCOL}`: get control messages as well as events.",
                               False)],
            {"101": {"description": "Switching Protocols: the WebSocket is open.",
                     "headers": {"Sec-WebSocket-Protocol": _response_header(
                         f"`{WS_PROTOCOL}` when the client offered it.",
                         {"const": WS_PROTOCOL}, False)}},
             "400": _error(400, "`websocket_required` (no upgrade), `invalid_handshake` (no "
                                "`Sec-WebSocket-Key` or a version other than 13), "
                           + BAD_STREAM + ".")})},
        "/memory/events/history": {"get": _api_operation(
            "events", "Past events, oldest first",
            "Without `after_id` the most recent `limit` matching events; with it the first "
            "`limit` matching events after that id, to page forward. Filters come from the "
            "query only.",
            [*_refs("parameters", FILTERS),
             _query("since", {"type": "string"},
                    "RFC 3339 / ISO 8601 time; without an offset it means UTC."),
             _query("limit", _or_empty({"type": "integer", "minimum": 1,
                                        "maximum": MAX_HISTORY_LIMIT,
                                        "default": HISTORY_LIMIT}), "How many events at most."),
             _query("after_id", _or_empty(EVENT_ID_NUMBER),
                    "Page forward: only events after this id.")],
            {"200": {"description": "The events.",
                     "content": _json({"type": "array", "items": _schema("MemoryChange")})},
             "400": _error(400, BAD_FILTER + ", `invalid_since`, `invalid_limit`, "
                                             "`invalid_after_id`.")})},
    }


def _ops_paths() -> Json:
    ok = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}

    def operation(summary: str, responses: Json) -> Json:
        return {"tags": ["operations"], "summary": summary,
                "parameters": _refs("parameters", COMMON),
                "responses": {**responses, "403": _ref("responses", "ForeignOrigin")}}

    return {
        "/healthz": {"get": operation("The process runs", {
            "200": {"description": "Always, while the process runs.", "content": _json(ok)}})},
        "/readyz": {"get": operation("The store answers", {
            "200": {"description": "The store answers.", "content": _json(ok)},
            "503": _error(503, "`store_unavailable`: the store does not answer.",
                          {"Retry-After": RETRY_AFTER})})},
        "/metrics": {"get": operation("Prometheus metrics of every worker process", {
            "200": {"description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": operation("This description", {
            "200": {"description": "OpenAPI 3.1.",
                    "content": _json({"type": "object", "required": ["openapi", "paths"]})}})},
    }


def _security(settings: Settings, path: str) -> list[Json]:
    """Any of these presents the key; nothing is needed when ``MEMORY_API_KEY`` is unset."""
    if not settings.api_key:
        return []
    ways = [{"ApiKeyHeader": []}, {"Bearer": []}]
    return ways + [{"ApiKeyQuery": []}] if path in STREAM_PATHS else ways


def build(settings: Settings) -> Json:
    """The description of this server: its limits and, when ``MEMORY_API_KEY`` is set, its auth."""
    api = {**_memory_paths(), **_vector_paths(settings), **_event_paths()}
    for path, item in api.items():
        for operation in item.values():
            operation["security"] = _security(settings, path)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "memory-events",
            "version": "1",
            "description": (
                "Scoped key/value memory and vector memory for agents, with every memory change "
                "streamed live; wire-compatible with the AgentField control plane's memory API. "
                "Every error is JSON `{error, message, details, code}` (`details` repeats "
                "`message`); bad input is a 4xx, never a 500."),
        },
        "tags": [{"name": "memory"}, {"name": "vectors"}, {"name": "events"},
                 {"name": "operations"}],
        "paths": {**{API_PREFIX + path: item for path, item in api.items()}, **_ops_paths()},
        "components": {
            "schemas": _schemas(settings),
            "parameters": _parameters(settings),
            "responses": _responses(),
            "securitySchemes": _security_schemes(),
        },
    }
