"""Who may call: the API key, and which browser origins; CORS headers for the allowed ones.

A browser sends ``Origin`` with every cross-site request it makes on a page's behalf (and with
every WebSocket upgrade), so a request that carries another site's origin is refused whatever it
is: a page elsewhere can neither read the streams nor write memory. Requests without ``Origin``
(every non-browser client) are not affected.
"""
from __future__ import annotations

import hmac

from flask import Flask, Response, request

from ..wire import AGENT_ID_HEADER, SCOPE_ID_HEADERS
from .context import current_service
from .errors import Refused

STREAM_ENDPOINTS = {"events.events_sse", "events.events_ws", "events.events_ws_required"}
#: what a page on an allowed origin may read of an answer: paging, the listing's position
EXPOSED_HEADERS = "Link, X-Last-Event-ID, Retry-After"
CORS_HEADERS = ", ".join(("Content-Type", "Authorization", "X-API-Key",
                          *SCOPE_ID_HEADERS.values(), AGENT_ID_HEADER, "Last-Event-ID"))


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
        raise Refused(401, "unauthorized", "A valid API key is required (X-API-Key header or "
                                           "Authorization: Bearer).",
                      headers={"WWW-Authenticate": "Bearer"})


def allowed_origin(origin: str) -> bool:
    """The service's own origin, or one ``MEMORY_CORS_ORIGINS`` lists."""
    origin = origin.rstrip("/").lower()
    return (origin == request.host_url.rstrip("/").lower()
            or origin in current_service().settings.cors_origins)


def refuse_foreign_origins() -> None:
    """``before_request`` of the whole app."""
    origin = request.headers.get("Origin")
    if origin is not None and not allowed_origin(origin):
        raise Refused(403, "origin_not_allowed",
                      f"Origin '{origin}' is not allowed; list it in MEMORY_CORS_ORIGINS.")


def install(app: Flask, allowed: tuple[str, ...]) -> None:
    """The origin check, and CORS headers when some other origins are allowed."""
    app.before_request(refuse_foreign_origins)
    if not allowed:
        return

    @app.after_request
    def _cors(response: Response) -> Response:
        response.vary.add("Origin")
        origin = (request.headers.get("Origin") or "").rstrip("/")
        if origin.lower() not in allowed:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response
