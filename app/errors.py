"""One error shape for every failure: ``{"error", "message", "code"}`` with the HTTP status."""
from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """A mistake the caller can fix (4xx) or a state it can wait out (503)."""

    def __init__(self, status: int, error: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}


def error_response(status: int, error: str, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error=error, message=message, code=status)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _snake(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").replace("'", "").split())


def register_error_handlers(app: Flask) -> None:
    """Turn every exception into the JSON error body, so no caller ever sees HTML or a trace."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.error, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = error_response(status, _snake(exc.name), exc.description or exc.name)
        for name in ("Allow", "Retry-After"):
            if exc.get_headers() and name in dict(exc.get_headers()):
                response.headers[name] = dict(exc.get_headers())[name]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "The server failed to handle the request.")
