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

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
READ_SIZE = 65536


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


# -- Server-Sent Events ---------------------------------------------------------------------
@dataclass(frozen=True)
class SseFrame:
    event: str
    data: str
    id: str | None


_LINE_END = re.compile(rb"\r\n|\n|\r")


class SseParser:
    """Incremental ``text/event-stream`` parser: bytes in, complete frames out.

    The format allows lines to end in CRLF, LF or CR, and the network may split a line (or a
    CRLF) anywhere, so only whole lines are parsed and a trailing CR waits for the next chunk.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseFrame]:
        self._buffer += chunk
        complete = len(self._buffer) - self._buffer.endswith(b"\r")
        frames, start = [], 0
        for end in _LINE_END.finditer(self._buffer, 0, complete):
            frame = self._line(self._buffer[start:end.start()])
            if frame is not None:
                frames.append(frame)
            start = end.end()
        self._buffer = self._buffer[start:]
        return frames

    def _line(self, raw: bytes) -> SseFrame | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseFrame | None:
        """A blank line ends a frame; one without data (comments, ``retry:``) is not an event."""
        frame = (SseFrame(self._event or "message", "\n".join(self._data), self._id)
                 if self._data else None)
        self._event, self._data, self._id = "", [], None
        return frame


def _frames(response: requests.Response) -> Iterator[SseFrame]:
    """Frames as soon as their bytes arrive: ``read1`` returns what is there instead of waiting
    for a full buffer, whether or not the body is chunked."""
    parser = SseParser()
    while chunk := response.raw.read1(READ_SIZE, decode_content=True):
        yield from parser.feed(chunk)


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
    last_event_id: str | None
    retry_in: float = 0.0


DROPPED = (urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class _Ending:
    reason: str
    resume_after: str | None
    planned: bool


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
    """What ``subscribe`` returns: an iterator of events that can be closed before it starts.

    A generator that never started cannot run its clean-up, so the stream opened by
    ``subscribe`` is closed here too.
    """

    def __init__(self, events: Generator[dict, None, None], first: requests.Response) -> None:
        self._events = events
        self._first = first

    def __next__(self) -> dict:
        return next(self._events)

    def close(self) -> None:
        self._events.close()
        self._first.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

        If the events after the resume point were already trimmed from the server's log, the
        iterator yields ``{"type": "reset", "reason": …, "oldest_id": …}``: changes were
        missed, and the caller should reload its state with ``list``. Live events follow.

        ``idle_timeout`` is how long silence means a dead connection; keep it above the
        server's heartbeat interval. Stop by leaving the loop or calling ``close()`` on the
        iterator, from the thread that iterates: the HTTP response is closed at once.
        """
        query = _filters(patterns, scope, scope_id)
        cursor = str(last_event_id) if last_event_id is not None else self._head_id()
        response = self._open_stream(query, cursor, idle_timeout)
        return Subscription(
            self._follow(response, query, cursor, backoff, idle_timeout, on_status), response)

    def _head_id(self) -> str | None:
        """The newest id in the log, so that even a connection dropped before the first event
        resumes from the moment of subscribing. ``None`` for an empty log."""
        newest = self._call("GET", "/memory/events/history", params={"limit": "1"})
        return str(newest[-1]["id"]) if newest else None

    def _open_stream(self, query: dict[str, str], cursor: str | None,
                     idle_timeout: float) -> requests.Response:
        headers = {"Accept": "text/event-stream"}
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
        return self._request("GET", "/memory/events/sse", params=query, headers=headers,
                             stream=True, timeout=(self.timeout, idle_timeout))

    def _follow(self, response: requests.Response, query: dict[str, str], cursor: str | None,
                backoff: Backoff, idle_timeout: float,
                on_status: Callable[[StreamStatus], None] | None
                ) -> Generator[dict, None, None]:
        try:
            while True:
                ending = yield from self._deliver(response)
                response.close()
                cursor = ending.resume_after or cursor
                response = self._reconnect(query, cursor, ending, backoff, idle_timeout,
                                           on_status)
        finally:
            response.close()

    @staticmethod
    def _deliver(response: requests.Response) -> Generator[dict, None, _Ending]:
        """Yield one connection's events; return how it ended and where to resume."""
        seen: str | None = None
        try:
            for frame in _frames(response):
                if frame.event == "message":
                    event = json.loads(frame.data)
                    seen = frame.id or str(event.get("id"))
                    yield event
                elif frame.event == "reset":
                    yield {"type": "reset", **_json_object(frame.data)}
                else:
                    ending = _json_object(frame.data)
                    if "last_id" in ending:
                        return _Ending(frame.event, str(ending["last_id"]), planned=True)
        except DROPPED as exc:
            return _Ending(f"connection lost ({_reason(exc)})", seen, planned=False)
        return _Ending("the server closed the stream", seen, planned=False)

    def _reconnect(self, query: dict[str, str], cursor: str | None, ending: _Ending,
                   backoff: Backoff, idle_timeout: float,
                   on_status: Callable[[StreamStatus], None] | None) -> requests.Response:
        """Open the stream again after ``cursor``. A planned end is followed at once; failures
        back off, and the attempt count starts over with each connection that opens."""
        attempt, reason = 0, ending.reason
        delay = 0.0 if ending.planned else backoff.delay(attempt)
        while True:
            if on_status is not None:
                on_status(StreamStatus("disconnected", reason, cursor, delay))
            time.sleep(delay)
            try:
                response = self._open_stream(query, cursor, idle_timeout)
            except ConnectionFailed as exc:
                reason = str(exc)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                reason = str(exc)
            else:
                if on_status is not None:
                    on_status(StreamStatus("reconnected", ending.reason, cursor))
                return response
            attempt += 1
            delay = backoff.delay(attempt)

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
