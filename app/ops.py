"""``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``: open, outside the API key."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from . import metrics, openapi
from .service import current_service
from .store import StoreUnavailable

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        current_service().store.ping()
    except StoreUnavailable as exc:
        return jsonify(status="unavailable", error="store_unavailable", message=str(exc),
                       code=503), 503
    return jsonify(status="ok"), 200


@ops.get("/metrics")
def metrics_text() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@ops.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi.build(current_service().settings))
