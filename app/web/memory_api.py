"""``/memory/set|get|delete|list``: the control plane's memory API, with versions, time to live
and paged listing."""
from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from ..core.errors import Invalid, NotFound
from ..core.scopes import author, candidates, check_scope, header_id, optional_text, text
from ..wire import MAX_LIST_LIMIT
from . import params
from .context import current_service
from .security import require_api_key

memory = Blueprint("memory", __name__)
memory.before_request(require_api_key)


def json_response(body: str, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(body, status=status, mimetype="application/json", headers=headers)


@memory.post("/memory/set")
def set_memory() -> Response:
    service = current_service()
    fields = params.body()
    key = params.key(fields, service.settings)
    data = params.data(fields, service.settings)
    scope, scope_id = params.write_scope(fields)
    record = service.set(scope, scope_id, key, data, author(request.headers),
                         params.if_version(fields), params.ttl_seconds(fields))
    return json_response(record.json)


@memory.post("/memory/get")
def get_memory() -> Response:
    service = current_service()
    fields = params.body()
    key = params.key(fields, service.settings)
    record = service.get(key, candidates(fields.get("scope"), fields.get("scope_id"),
                                         request.headers, reading=True))
    if record is None:
        raise NotFound("not_found", f"No memory under key '{key}'.")
    return json_response(record.json)


@memory.post("/memory/delete")
def delete_memory() -> Response:
    service = current_service()
    fields = params.body()
    key = params.key(fields, service.settings)
    scope, scope_id = params.write_scope(fields)
    service.delete(scope, scope_id, key, author(request.headers), params.if_version(fields))
    return Response(status=204)


def _cursor(value: str | None) -> tuple[str, str] | None:
    """The opaque ``cursor`` of a ``Link: rel="next"``: where the next page starts."""
    if value is None or not value.strip():
        return None
    try:
        after = json.loads(base64.urlsafe_b64decode(value.strip().encode() + b"=="))
        if not (isinstance(after, list) and len(after) == 2):
            raise ValueError("not a cursor")
        return text(after[0], "cursor"), text(after[1], "cursor")
    except (ValueError, binascii.Error, RecursionError, Invalid):
        raise Invalid("invalid_cursor", "'cursor' must be a value from a previous answer's "
                                        "Link header.") from None


def _next_link(after: tuple[str, str]) -> str:
    token = base64.urlsafe_b64encode(json.dumps(list(after)).encode()).rstrip(b"=").decode()
    query = {**request.args.to_dict(), "cursor": token}
    return f'<{request.base_url}?{urlencode(query)}>; rel="next"'


@memory.get("/memory/list")
def list_memory() -> Response:
    scope = check_scope(request.args.get("scope"))
    if scope is None:
        raise Invalid("missing_scope", "'scope' is required: workflow, session, actor or global.")
    # Without an id in the query or the scope's header: every id of that scope.
    scope_id = (optional_text(request.args.get("scope_id"), "scope_id")
                or header_id(scope, request.headers))
    prefix = request.args.get("prefix")
    prefix = text(prefix, "prefix") or None if prefix is not None else None
    limit = params.optional_int("limit", 1, MAX_LIST_LIMIT)
    listing = current_service().list(scope, scope_id, prefix, _cursor(request.args.get("cursor")),
                                     limit)
    headers = {"X-Last-Event-ID": str(listing.head_id)}
    if listing.next_after is not None:
        headers["Link"] = _next_link(listing.next_after)
    return json_response("[" + ",".join(record.json for record in listing.records) + "]",
                         headers=headers)
