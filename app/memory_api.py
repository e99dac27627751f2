"""``/memory/set|get|delete|list``: the control plane's memory API."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import ApiError
from .events import dump
from .scopes import candidates, check_scope, header_id, optional_text, text
from .security import require_api_key
from .service import current_service
from .store import Record

memory = Blueprint("memory", __name__)
memory.before_request(require_api_key)


def _json(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="application/json")


def _raw_body() -> bytes:
    """The request body. Werkzeug hands over only the first ``MAX_CONTENT_LENGTH`` bytes of a
    chunked body (no Content-Length), so one byte more is looked for to refuse it as too large."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if (request.content_length is None and limit is not None and len(raw) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return raw


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large")
    return number


def _body() -> dict[str, Any]:
    """The body as a JSON object. Python's parser also takes ``NaN`` and ``Infinity`` (and turns
    ``1e999`` into infinity), which other clients could not read back, and fails on deep nesting
    with ``RecursionError``; all are the caller's mistake, answered 400."""
    try:
        body = json.loads(_raw_body(), parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ApiError(400, "invalid_json", "The request body is nested too deeply.") from None
    except ValueError:
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The request body must be a JSON object.")
    return body


def _key(body: dict[str, Any]) -> str:
    key = body.get("key")
    if key is None:
        raise ApiError(400, "missing_key", "'key' is required.")
    key = text(key, "key")
    if not key:
        raise ApiError(400, "invalid_key", "'key' must be a non-empty string.")
    limit = current_service().settings.max_key_length
    if len(key) > limit:
        raise ApiError(400, "key_too_long", f"'key' is longer than {limit} characters.")
    return key


def _metadata() -> tuple[str, str]:
    """``metadata.agent_id`` and ``metadata.workflow_id`` of the event a change causes."""
    return (request.headers.get("X-Actor-ID", "").strip(),
            request.headers.get("X-Workflow-ID", "").strip())


def _write_scope(body: dict[str, Any]) -> tuple[str, str]:
    return candidates(body.get("scope"), body.get("scope_id"), request.headers)[0]


@memory.post("/memory/set")
def set_memory() -> Response:
    body = _body()
    key = _key(body)
    if "data" not in body:
        raise ApiError(400, "missing_data", "'data' is required (null is a valid value).")
    data = dump(body["data"])
    limit = current_service().settings.max_value_bytes
    if len(data) > limit:
        raise ApiError(413, "value_too_large", f"'data' is larger than {limit} bytes as JSON.")
    scope, scope_id = _write_scope(body)
    record = current_service().set(scope, scope_id, key, data, *_metadata())
    return _json(record.as_json())


@memory.post("/memory/get")
def get_memory() -> Response:
    body = _body()
    key = _key(body)
    store = current_service().store
    for scope, scope_id in candidates(body.get("scope"), body.get("scope_id"), request.headers):
        record = store.get(scope, scope_id, key)
        if record is not None:
            return _json(record.as_json())
    raise ApiError(404, "not_found", f"No memory under key '{key}'.")


@memory.post("/memory/delete")
def delete_memory() -> Response:
    body = _body()
    key = _key(body)
    scope, scope_id = _write_scope(body)
    if current_service().delete(scope, scope_id, key, *_metadata()) is None:
        raise ApiError(404, "not_found", f"No memory under key '{key}' in {scope}/{scope_id}.")
    return Response(status=204)


@memory.get("/memory/list")
def list_memory() -> Response:
    scope = check_scope(request.args.get("scope"))
    if scope is None:
        raise ApiError(400, "missing_scope", "'scope' is required: workflow, session, actor "
                                             "or global.")
    # Without an id in the query or the scope's header: every id of that scope.
    scope_id = (optional_text(request.args.get("scope_id"), "scope_id")
                or header_id(scope, request.headers))
    records: list[Record] = current_service().store.list(scope, scope_id)
    return _json("[" + ",".join(record.as_json() for record in records) + "]")
