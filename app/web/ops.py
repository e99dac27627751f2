"""``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``: open, outside the API key."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..store import StoreUnavailable
from . import openapi
from .context import current_service

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        current_service().store.ping()
    except StoreUnavailable as exc:
        return jsonify(status="unavailable", error=exc.code, message=exc.detail,
                       details=exc.detail, code=503), 503
    return jsonify(status="ok"), 200


@ops.get("/metrics")
def metrics_text() -> Response:
    body, content_type = current_service().metrics.render()
    return Response(body, content_type=content_type)


@ops.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi.build(current_service().settings))
