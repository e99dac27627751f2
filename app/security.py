"""API key and origin checks, and CORS headers for the allowed origins."""
from __future__ import annotations

import hmac

from flask import Flask, Response, request

from .errors import ApiError
from .service import current_service

STREAM_ENDPOINTS = {"events.events_sse", "events.events_ws", "events.events_ws_required"}
CORS_HEADERS = ("Content-Type, Authorization, X-API-Key, X-Workflow-ID, X-Session-ID, "
                "X-Actor-ID, Last-Event-ID")


def _presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.endpoint in STREAM_ENDPOINTS:  # EventSource cannot send headers
        return request.args.get("api_key")
    return None


def require_api_key() -> None:
    """``before_request`` of the API blueprints: 401 unless the configured key is presented."""
    expected = current_service().settings.api_key
    if not expected or request.method == "OPTIONS":
        return
    presented = _presented_key()
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "A valid API key is required (X-API-Key header or "
                                            "Authorization: Bearer).",
                       headers={"WWW-Authenticate": "Bearer"})


def same_origin_or_allowed(origin: str) -> bool:
    """The service's own origin always; others only when ``MEMORY_CORS_ORIGINS`` lists them."""
    allowed = current_service().settings.cors_origins
    origin = origin.rstrip("/")
    return not allowed or origin == request.host_url.rstrip("/") or origin in allowed


def install_cors(app: Flask) -> None:
    @app.after_request
    def _cors(response: Response) -> Response:
        allowed = current_service().settings.cors_origins
        if not allowed:
            return response
        # The answer depends on the Origin even when it grants nothing, so no cache may hand
        # one origin's answer to another.
        response.vary.add("Origin")
        origin = (request.headers.get("Origin") or "").rstrip("/")
        if origin not in allowed:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response
