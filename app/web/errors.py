"""One error shape for every failure: ``{"error", "message", "details", "code"}``.

The core raises its own errors; this is the one place that says which status each kind gets.
``details`` repeats the message because that is the field AgentField's clients read.
"""
from __future__ import annotations

import json

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ..core.errors import (Invalid, NotFound, ServiceError, TooLarge, Unavailable,
                           VersionConflict)

STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (TooLarge, 413), (Invalid, 400), (NotFound, 404), (VersionConflict, 409),
    (Unavailable, 503))


class Refused(ServiceError):
    """A refusal only the web layer knows of (authentication, origins, handshakes)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.headers = headers or {}


def error_response(status: int, error: str, message: str,
                   headers: dict[str, str] | None = None, current: str | None = None) -> Response:
    """``current``: the JSON text of the record a conditional write found."""
    body = json.dumps({"error": error, "message": message, "details": message, "code": status},
                      separators=(",", ":"))
    if current is not None:
        body = body[:-1] + ',"current":' + current + "}"
    response = Response(body, status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def service_error(exc: ServiceError) -> Response:
    if isinstance(exc, Refused):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    status = next(code for kind, code in STATUS if isinstance(exc, kind))
    if isinstance(exc, VersionConflict):
        current = "null" if exc.current is None else exc.current.json
        return error_response(status, exc.code, exc.message, current=current)
    if isinstance(exc, Unavailable):
        return error_response(status, exc.code, exc.message, {"Retry-After": str(exc.retry_after)})
    return error_response(status, exc.code, exc.message)


def _snake(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").replace("'", "").split())


def register_error_handlers(app: Flask) -> None:
    """Turn every exception into the JSON error body, so no caller ever sees HTML or a trace."""
    app.register_error_handler(ServiceError, service_error)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = dict(exc.get_headers())
        return error_response(status, _snake(exc.name), exc.description or exc.name,
                              {name: headers[name] for name in ("Allow", "Retry-After")
                               if name in headers})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "The server failed to handle the request.")
