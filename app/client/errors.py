"""The client's errors: one base, one type per status a caller handles differently."""
from __future__ import annotations

import re

import requests
import urllib3


class MemoryClientError(Exception):
    """Base of every error this client raises, so one ``except`` covers them all."""


class ConnectionFailed(MemoryClientError):
    """The server could not be reached, or did not answer in time."""


class ApiError(MemoryClientError):
    """The server answered with an error: its HTTP status, error code and message."""

    def __init__(self, status: int, error: str, message: str, body: dict | None = None) -> None:
        super().__init__(f"{error}: {message} (HTTP {status})")
        self.status = status
        self.error = error
        self.message = message
        self.body = body or {}

    @property
    def retryable(self) -> bool:
        """A state the server expects to pass (overload, restart), not a mistake in the call."""
        return self.status >= 500 or self.status in (408, 429)


class BadRequest(ApiError):
    """400: the call itself is wrong (a malformed pattern, a missing scope…)."""


class Unauthorized(ApiError):
    """401: the server wants an API key and got none, or a wrong one."""


class Forbidden(ApiError):
    """403: the request came from an origin the server does not allow."""


class NotFound(ApiError):
    """404: no memory under that key (or the URL is not this service)."""


class VersionConflict(ApiError):
    """409: a conditional write found another version, and wrote nothing. ``current`` is the
    record as it is now (``None``: there is none)."""

    @property
    def current(self) -> dict | None:
        return self.body.get("current")


class Unavailable(ApiError):
    """503: the server is up but cannot serve right now; retrying later may work."""


_ERROR_TYPES: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: VersionConflict,
    503: Unavailable}


def api_error(response: requests.Response) -> ApiError:
    """The server's ``{"error", "message"}`` body, or the status alone when a proxy answered."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, message = body["error"], str(body.get("message", ""))
    else:
        body = None
        error, message = f"http_{response.status_code}", (response.text.strip()[:200]
                                                          or response.reason or "")
    kind = _ERROR_TYPES.get(response.status_code, ApiError)
    return kind(response.status_code, error, message, body)


def reason(exc: Exception) -> str:
    """The operating system's words ("Connection refused") rather than urllib3's nesting."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if found:
        return found.group(1).strip()
    return str(exc.args[0]) if exc.args else type(exc).__name__
