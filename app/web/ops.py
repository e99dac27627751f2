"""``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``: open, outside the API key."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from . import openapi
from .context import current_service

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@ops.get("/readyz")
def readyz() -> Response:
    """503 through the one error mapping when the store does not answer: the generic message
    and ``Retry-After``, and nothing of the driver's words (hosts, ports) on an open route."""
    current_service().store.ping()
    return jsonify(status="ok")


@ops.get("/metrics")
def metrics_text() -> Response:
    body, content_type = current_service().metrics.render()
    return Response(body, content_type=content_type)


@ops.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi.build(current_service().settings))
