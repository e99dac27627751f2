"""``/memory/vector…``: the control plane's vector memory, every route its three SDKs call.

Where this differs from the control plane, it is on purpose: ``POST /vector/delete`` honours
the body's ``scope`` (the control plane reads it from the query only, so its SDKs' scoped
deletes hit the workflow scope); bad input is a 400 where the control plane gives a 500, and
so are a ``top_k`` over ``MAX_TOP_K`` and more than ``MAX_DIMENSIONS``, which it takes; filters
match equal JSON values only; a namespace is a literal prefix, not a ``LIKE`` pattern.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from flask import Blueprint, Response, request
from werkzeug.routing import PathConverter

from ..core.errors import Invalid, NotFound
from ..core.scopes import candidates
from ..store import StoredVector
from ..wire import dump, utc_text
from . import params
from .context import current_service
from .memory_api import json_response
from .security import require_api_key

vectors = Blueprint("vectors", __name__)
vectors.before_request(require_api_key)


class AnyKey(PathConverter):
    """A key in the path as clients escape it: any text, a leading ``/``, repeated slashes and
    line breaks included (Go's client escapes them all, and they all name other keys)."""
    regex = "(?s:.+)"
    part_isolating = False  # it spans slashes, though its pattern names none


vectors.record_once(lambda state: state.app.url_map.converters.setdefault("key", AnyKey))

#: pgvector's limit, and well past any embedding model's
MAX_DIMENSIONS = 16000
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10


def _numpy() -> Any:
    """numpy, which a server that never sees a vector never loads; the first time, it is
    imported with vector memory, off the event loop."""
    current_service().vectors  # noqa: B018  (loading it is the point)
    import numpy
    return numpy


def _embedding(fields: dict[str, Any], name: str) -> "np.ndarray":
    value = fields.get(name)
    if value is None:
        raise Invalid(f"missing_{name}", f"'{name}' is required: a list of numbers.")
    if not isinstance(value, list) or not value:
        raise Invalid(f"invalid_{name}", f"'{name}' must be a non-empty list of numbers.")
    if len(value) > MAX_DIMENSIONS:
        raise Invalid(f"invalid_{name}", f"'{name}' has {len(value)} dimensions; at most "
                                         f"{MAX_DIMENSIONS} are allowed.")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise Invalid(f"invalid_{name}", f"'{name}' must hold numbers only.")
    np = _numpy()
    try:
        with np.errstate(over="ignore"):
            values = np.asarray(value, dtype=np.float64).astype("<f4")
    except OverflowError:  # a whole number past any float
        values = np.array([np.inf], dtype="<f4")
    if not np.isfinite(values).all():
        raise Invalid(f"invalid_{name}", f"'{name}' holds a number too large for float32.")
    return values


def _object(fields: dict[str, Any], name: str) -> dict[str, Any]:
    value = fields.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"invalid_{name}", f"'{name}' must be a JSON object.")
    return value


def _scope(fields: dict[str, Any]) -> tuple[str, str]:
    return params.write_scope(fields)


def _query_scopes(reading: bool = False) -> list[tuple[str, str]]:
    """``?scope=&scope_id=`` with the headers, resolved as for memory."""
    return candidates(request.args.get("scope"), request.args.get("scope_id"), request.headers,
                      reading)


def _vector_json(vector: StoredVector) -> str:
    values = _numpy().frombuffer(vector.embedding or b"", dtype="<f4")
    return ('{"key":%s,"scope":%s,"scope_id":%s,"embedding":[%s],"metadata":%s,'
            '"created_at":"%s","updated_at":"%s"}'
            % (dump(vector.key), dump(vector.scope), dump(vector.scope_id),
               ",".join(map(str, values)), vector.metadata, utc_text(vector.created_at),
               utc_text(vector.updated_at)))


@vectors.post("/memory/vector")
@vectors.post("/memory/vector/set")
def set_vector() -> Response:
    service = current_service()
    fields = params.body()
    key = params.key(fields, service.settings)
    embedding = _embedding(fields, "embedding")
    metadata = dump(_object(fields, "metadata"))
    scope, scope_id = _scope(fields)
    service.store.vector_set(scope, scope_id, key, embedding.tobytes(), metadata)
    return json_response('{"key":%s,"scope":%s,"scope_id":%s,"metadata":%s}'
                         % (dump(key), dump(scope), dump(scope_id), metadata))


@vectors.get("/memory/vector/<key:key>", merge_slashes=False)
def get_vector(key: str) -> Response:
    params.key({"key": key}, current_service().settings)
    scopes = _query_scopes(reading=True)  # the first is where a write would have gone
    vector = current_service().store.vector_get(*scopes[0], key) if scopes else None
    if vector is None:
        raise NotFound("not_found", f"No vector under key '{key}'.")
    return json_response(_vector_json(vector))


@vectors.delete("/memory/vector/<key:key>", merge_slashes=False)
def delete_vector(key: str) -> Response:
    params.key({"key": key}, current_service().settings)
    current_service().store.vector_delete(*_query_scopes()[0], key)
    return Response(status=204)


@vectors.post("/memory/vector/delete")
def delete_vector_by_body() -> Response:
    fields = params.body()
    key = params.key(fields, current_service().settings)
    current_service().store.vector_delete(*_scope(fields), key)
    return Response(status=204)


@vectors.delete("/memory/vector/namespace")
def delete_namespace() -> Response:
    fields = params.body()
    namespace = params.key(fields, current_service().settings, "namespace")
    scope, scope_id = _scope(fields)
    deleted = current_service().store.vector_delete_prefix(scope, scope_id, namespace)
    return json_response('{"namespace":%s,"deleted":%d,"scope":%s,"scope_id":%s,'
                         '"status":"deleted"}' % (dump(namespace), deleted, dump(scope),
                                                  dump(scope_id)))


@vectors.post("/memory/vector/search")
def search_vectors() -> Response:
    service = current_service()
    fields = params.body()
    query = _embedding(fields, "query_embedding")
    filters = _object(fields, "filters")
    top_k = fields.get("top_k")
    if top_k is None:
        top_k = DEFAULT_TOP_K
    if (isinstance(top_k, bool) or not isinstance(top_k, (int, float))
            or (isinstance(top_k, float) and not top_k.is_integer()) or top_k > MAX_TOP_K):
        raise Invalid("invalid_top_k", f"'top_k' must be a whole number up to {MAX_TOP_K} "
                                       f"(0 or less means {DEFAULT_TOP_K}).")
    top_k = int(top_k) if top_k > 0 else DEFAULT_TOP_K
    scope, scope_id = _scope(fields)
    hits = service.vectors.search(scope, scope_id, query, top_k, filters)
    return json_response("[" + ",".join(hit.json(scope, scope_id) for hit in hits) + "]")
