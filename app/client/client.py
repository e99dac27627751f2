"""A Python client for the memory service: one-line calls, typed errors, and a live stream that
resumes by itself.

    from app.client import MemoryClient

    memory = MemoryClient("http://127.0.0.1:8080")
    memory.set("user.1", {"name": "Ada"})
    memory.get("user.1")                       # {'name': 'Ada'}
    for event in memory.subscribe("user.*"):   # every change, as it happens, none lost
        print(event["key"], event["data"])

It depends only on ``requests`` (and the ``urllib3`` under it), so it can be copied into a
project that does not install the server.
"""
from __future__ import annotations

import functools
import json
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Generator, Iterable, Iterator
from urllib.parse import urlsplit

import requests
import urllib3

from ..wire import API_PREFIX
from .sse import frames

DEFAULT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0


# -- errors -----------------------------------------------------------------------------------
class MemoryClientError(Exception):
    """Base of every error this client raises, so one ``except`` covers them all."""


class ConnectionFailed(MemoryClientError):
    """The server could not be reached, or did not answer in time."""


class ApiError(MemoryClientError):
    """The server answered with an error: its HTTP status, error code and message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{error}: {message} (HTTP {status})")
        self.status = status
        self.error = error
        self.message = message

    @property
    def retryable(self) -> bool:
        """A state the server expects to pass (overload, restart), not a mistake in the call."""
        return self.status >= 500 or self.status in (408, 429)


class BadRequest(ApiError):
    """400: the call itself is wrong (a malformed pattern, a missing scope…)."""


class Unauthorized(ApiError):
    """401: the server wants an API key and got none, or a wrong one."""


class NotFound(ApiError):
    """404: no memory under that key (or the URL is not this service)."""


class Unavailable(ApiError):
    """503: the server is up but cannot serve right now; retrying later may work."""


_ERROR_TYPES: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 503: Unavailable}


def _api_error(response: requests.Response) -> ApiError:
    """The server's ``{"error", "message"}`` body, or the status alone when a proxy answered."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, message = body["error"], str(body.get("message", ""))
    else:
        error, message = f"http_{response.status_code}", (response.text.strip()[:200]
                                                          or response.reason or "")
    return _ERROR_TYPES.get(response.status_code, ApiError)(response.status_code, error, message)


def _reason(exc: Exception) -> str:
    """The operating system's words ("Connection refused") rather than urllib3's nesting."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if found:
        return found.group(1).strip()
    return str(exc.args[0]) if exc.args else type(exc).__name__


# -- reconnecting ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter and a cap.

    Full jitter (a uniform delay between zero and the exponential bound) spreads out the
    clients a server restart cut off all at once, so they do not come back in step.
    """
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap, self.base * 2.0 ** min(attempt, 32)))


@dataclass(frozen=True)
class StreamStatus:
    """What ``subscribe(on_status=…)`` reports about the connection behind the events.

    ``state`` is ``"disconnected"`` (``reason`` says why; the next attempt is ``retry_in``
    seconds away) or ``"reconnected"``. ``last_event_id`` is where the stream resumes.
    """
    state: str
    reason: str
    last_event_id: str
    retry_in: float = 0.0


DROPPED = (urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class _Ending:
    """How one connection ended: why, where to resume, and whether it went well.

    ``planned`` ends (``overflow``, ``shutdown``, ``lifetime``) carry the server's resume id.
    A connection went ``well`` when it delivered something or lived its whole lifetime; one
    that did neither (a stopping server that takes the connection and ends it at once) counts
    as a failed attempt, so reconnecting backs off instead of spinning.
    """
    reason: str
    well: bool
    resume_after: str | None = None

    @property
    def planned(self) -> bool:
        return self.resume_after is not None


def _json_object(text: str) -> dict:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _since(value: datetime | str | None) -> str | None:
    """A naive ``datetime`` is local time, as everywhere in Python; it goes out in UTC."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value


def _filters(patterns: str | Iterable[str] | None, scope: str | None,
             scope_id: str | None) -> dict[str, str]:
    joined = patterns if isinstance(patterns, str) or patterns is None else ",".join(patterns)
    return {name: value for name, value in
            (("patterns", joined), ("scope", scope), ("scope_id", scope_id)) if value}


def _scoped(key: str, scope: str | None, scope_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key}
    if scope is not None:
        body["scope"] = scope
    if scope_id is not None:
        body["scope_id"] = scope_id
    return body


class Subscription(Iterator[dict]):
    """What ``MemoryClient.subscribe`` returns: the events of one subscription, across as many
    connections as it takes. ``last_event_id`` is where it would resume (persist it to
    resume after a restart of the caller).

    The connection state lives apart from this wrapper, so the generator holds no reference
    back to it: dropping the wrapper (leaving a ``for`` loop over ``subscribe()``) frees the
    generator at once, and its clean-up closes the HTTP response.
    """

    def __init__(self, stream: "_Stream") -> None:
        self._stream = stream
        self._events = stream.follow()

    @property
    def last_event_id(self) -> str:
        return self._stream.last_event_id

    def __next__(self) -> dict:
        return next(self._events)

    def close(self) -> None:
        """Close the HTTP response (also when iteration never started: a generator that never
        ran cannot clean up after itself)."""
        self._events.close()
        self._stream.response.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Stream:
    """One subscription's connection, and the reconnecting that keeps it going."""

    def __init__(self, open_stream: Callable[[str], requests.Response],
                 last_event_id: str | None, backoff: Backoff,
                 on_status: Callable[[StreamStatus], None] | None) -> None:
        # ``None``: the log was empty when subscribing, so all it will ever hold is news.
        self._from_empty_log = last_event_id is None
        self.last_event_id = "0" if last_event_id is None else last_event_id
        self._open_stream = open_stream
        self._backoff = backoff
        self._on_status = on_status
        self._attempt = 0
        self.response = open_stream(self.last_event_id)

    def follow(self) -> Generator[dict, None, None]:
        try:
            while True:
                ending = yield from self._deliver()
                self.response.close()
                self.last_event_id = ending.resume_after or self.last_event_id
                self._attempt = 0 if ending.well else self._attempt + 1
                self._reconnect(ending)
        finally:
            self.response.close()

    def _deliver(self) -> Generator[dict, None, _Ending]:
        """Yield one connection's events; return how it ended."""
        seen = False
        try:
            for frame in frames(self.response):
                if not frame.is_event:
                    continue
                if frame.event == "message":
                    event = json.loads(frame.data)
                    self.last_event_id = frame.id or str(event.get("id"))
                    seen, self._from_empty_log = True, False
                    yield event
                elif frame.event == "reset":
                    reset = _json_object(frame.data)
                    if self._from_empty_log and "oldest_id" in reset:
                        # Only what came before the subscription was trimmed: everything kept
                        # came after it, so resume from the oldest kept and miss nothing.
                        self._from_empty_log = False
                        return _Ending("reset", True, str(int(reset["oldest_id"]) - 1))
                    yield {"type": "reset", **reset}
                else:
                    ending = _json_object(frame.data)
                    if "last_id" in ending:
                        return _Ending(frame.event, seen or frame.event == "lifetime",
                                       str(ending["last_id"]))
        except DROPPED as exc:
            return _Ending(f"connection lost ({_reason(exc)})", seen)
        return _Ending("the server closed the stream", seen)

    def _reconnect(self, ending: _Ending) -> None:
        """Open the stream again after ``last_event_id``: at once after a planned end of a
        good connection, else after a backoff that grows with each failed attempt."""
        reason = ending.reason
        delay = 0.0 if ending.planned and self._attempt == 0 else self._backoff.delay(
            self._attempt)
        while True:
            self._report(StreamStatus("disconnected", reason, self.last_event_id, delay))
            time.sleep(delay)
            try:
                self.response = self._open_stream(self.last_event_id)
            except ConnectionFailed as exc:
                reason = str(exc)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                reason = str(exc)
            else:
                self._report(StreamStatus("reconnected", ending.reason, self.last_event_id))
                return
            self._attempt += 1
            delay = self._backoff.delay(self._attempt)

    def _report(self, status: StreamStatus) -> None:
        if self._on_status is not None:
            self._on_status(status)


# -- the client -----------------------------------------------------------------------------
class MemoryClient:
    """Calls to one server over one ``requests.Session`` (so connections are reused).

    ``workflow_id``, ``session_id`` and ``actor_id`` go out as ``X-Workflow-ID``,
    ``X-Session-ID`` and ``X-Actor-ID`` on every call: they pick the default scope of writes,
    the scopes ``get`` searches, and the metadata of the events a change causes.
    """

    def __init__(self, base_url: str, api_key: str | None = None,
                 workflow_id: str | None = None, session_id: str | None = None,
                 actor_id: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must look like http://host:port; got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        headers = {"X-API-Key": api_key, "X-Workflow-ID": workflow_id,
                   "X-Session-ID": session_id, "X-Actor-ID": actor_id}
        self.session.headers.update({name: value for name, value in headers.items() if value})

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "MemoryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- memory ---------------------------------------------------------------------------
    def set(self, key: str, data: Any, scope: str | None = None,
            scope_id: str | None = None) -> dict:
        """Store ``data`` (any JSON value, ``None`` included); returns the stored record."""
        return self._call("POST", "/memory/set", json={**_scoped(key, scope, scope_id),
                                                       "data": data})

    def record(self, key: str, scope: str | None = None, scope_id: str | None = None) -> dict:
        """The whole record (``data``, ``scope``, ``scope_id``, times); ``NotFound`` if absent."""
        return self._call("POST", "/memory/get", json=_scoped(key, scope, scope_id))

    def get(self, key: str, default: Any = None, scope: str | None = None,
            scope_id: str | None = None) -> Any:
        """The value under ``key``, or ``default`` when there is none.

        Without ``scope`` the server searches workflow, session, actor, then global.
        """
        try:
            return self.record(key, scope, scope_id)["data"]
        except NotFound:
            return default

    def delete(self, key: str, scope: str | None = None, scope_id: str | None = None) -> None:
        """Remove ``key``. A key that is not there raises ``NotFound``: deleting what does not
        exist usually means a wrong key or scope, which a caller wants to hear about."""
        self._call("POST", "/memory/delete", json=_scoped(key, scope, scope_id))

    def list(self, scope: str, scope_id: str | None = None) -> list[dict]:
        """Every record in ``scope`` (of one ``scope_id``, or of all when it is omitted)."""
        return self._call("GET", "/memory/list", params=_filters(None, scope, scope_id))

    def history(self, patterns: str | Iterable[str] | None = None, scope: str | None = None,
                scope_id: str | None = None, since: datetime | str | None = None,
                limit: int | None = None, after_id: int | str | None = None) -> list[dict]:
        """Logged events, oldest first: the latest ``limit``, or the first ``limit`` after
        ``after_id`` (to page forward). ``since`` is a ``datetime`` or an RFC 3339 string."""
        params = _filters(patterns, scope, scope_id)
        for name, value in (("since", _since(since)), ("limit", limit), ("after_id", after_id)):
            if value is not None:
                params[name] = str(value)
        return self._call("GET", "/memory/events/history", params=params)

    # -- the live stream ------------------------------------------------------------------
    def subscribe(self, patterns: str | Iterable[str] | None = None, scope: str | None = None,
                  scope_id: str | None = None, last_event_id: int | str | None = None, *,
                  backoff: Backoff = Backoff(), idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                  on_status: Callable[[StreamStatus], None] | None = None) -> "Subscription":
        """Every change passing the filters, from now on (or after ``last_event_id``), in order.

        The stream is open when this returns, so a change made after the call is delivered
        even if iteration starts later; a bad pattern, a wrong key or an unreachable server
        raises here. Each item is the event as the server sent it (``"type": "memory_change"``).

        When the connection drops, the server ends the stream (``overflow``, ``shutdown``,
        ``lifetime``) or restarts, the iterator reconnects by itself with ``Last-Event-ID``
        and carries on with no event lost or repeated, retrying with ``backoff`` for as long as
        it takes; ``on_status`` hears of each disconnect and reconnect. Errors that retrying
        cannot fix (401, 400) are raised from the iteration.

        If events after the resume point (``last_event_id``, or the last event delivered) were
        already trimmed from the server's log, the iterator yields
        ``{"type": "reset", "reason": …, "oldest_id": …}``: changes were missed, and the
        caller should reload its state with ``list``. Live events follow.

        ``idle_timeout`` is how long silence means a dead connection; keep it above the
        server's heartbeat interval. Stop by leaving the loop or calling ``close()`` on the
        iterator, from the thread that iterates: the HTTP response is closed at once.
        """
        query = _filters(patterns, scope, scope_id)
        start = str(last_event_id) if last_event_id is not None else self._head_id()
        return Subscription(_Stream(functools.partial(self._open_stream, query, idle_timeout),
                                    start, backoff, on_status))

    def _head_id(self) -> str | None:
        """The newest id in the log, so that even a connection dropped before the first event
        resumes from the moment of subscribing (``None`` for an empty log)."""
        newest = self._call("GET", "/memory/events/history", params={"limit": "1"})
        return str(newest[-1]["id"]) if newest else None

    def _open_stream(self, query: dict[str, str], idle_timeout: float,
                     cursor: str) -> requests.Response:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": cursor}
        return self._request("GET", "/memory/events/sse", params=query, headers=headers,
                             stream=True, timeout=(self.timeout, idle_timeout))

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the decoded JSON answer, or ``None`` for an empty (204) one."""
        with self._request(method, path, **kwargs) as response:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise ApiError(response.status_code, "invalid_response",
                               f"expected JSON from {response.url}, got "
                               f"{response.text[:100]!r}") from None

    def _request(self, method: str, path: str, *, timeout: Any = None,
                 **kwargs: Any) -> requests.Response:
        url = self.base_url + API_PREFIX + path
        try:
            response = self.session.request(method, url, timeout=timeout or self.timeout,
                                            **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {_reason(exc)}") from exc
        if response.status_code >= 400:
            with response:
                raise _api_error(response)
        return response
