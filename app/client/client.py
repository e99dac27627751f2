"""A Python client for the memory service: one-line calls, typed errors, and a live stream that
resumes by itself.

    from app.client import MemoryClient

    memory = MemoryClient("http://127.0.0.1:8080")
    memory.set("user.1", {"name": "Ada"})
    memory.get("user.1")                       # {'name': 'Ada'}
    for event in memory.subscribe("user.*"):   # every change, as it happens, none lost
        print(event["key"], event["data"])
    for state in memory.watch("user.*", scope="global"):   # the current values, kept exact
        print(state)
"""
from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

import requests

from ..wire import AGENT_ID_HEADER, API_PREFIX, MAX_LIST_LIMIT, SCOPE_ID_HEADERS
from .errors import ApiError, ConnectionFailed, NotFound, api_error, reason
from .stream import Backoff, StreamStatus, Subscription, _Stream
from .watch import Watch

DEFAULT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0


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


class MemoryClient:
    """Calls to one server over one ``requests.Session`` (so connections are reused).

    ``workflow_id``, ``session_id`` and ``actor_id`` go out as ``X-Workflow-ID``,
    ``X-Session-ID`` and ``X-Actor-ID`` on every call: they pick the default scope of writes,
    the scopes ``get`` searches, and the metadata of the events a change causes, with
    ``agent_id`` (``X-Agent-Node-ID``).
    """

    def __init__(self, base_url: str, api_key: str | None = None,
                 workflow_id: str | None = None, session_id: str | None = None,
                 actor_id: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 agent_id: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must look like http://host:port; got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        headers = {"X-API-Key": api_key, SCOPE_ID_HEADERS["workflow"]: workflow_id,
                   SCOPE_ID_HEADERS["session"]: session_id, SCOPE_ID_HEADERS["actor"]: actor_id,
                   AGENT_ID_HEADER: agent_id}
        self.session.headers.update({name: value for name, value in headers.items() if value})

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "MemoryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- memory ---------------------------------------------------------------------------
    def set(self, key: str, data: Any, scope: str | None = None, scope_id: str | None = None,
            *, if_version: str | int | None = None, ttl_seconds: float | None = None) -> dict:
        """Store ``data`` (any JSON value, ``None`` included); returns the stored record.

        ``if_version`` writes only if the record's ``version`` is still that one (``"0"``:
        only if there is no record), else raises ``VersionConflict`` with ``.current``.
        ``ttl_seconds`` makes the record vanish that long after this write.
        """
        body = {**_scoped(key, scope, scope_id), "data": data}
        if if_version is not None:
            body["if_version"] = str(if_version)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return self._call("POST", "/memory/set", json=body)

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

    def delete(self, key: str, scope: str | None = None, scope_id: str | None = None, *,
               if_version: str | int | None = None) -> None:
        """Remove ``key``; a key that is not there is no error (the server answers 204 either
        way, as the control plane does). ``if_version`` as for ``set``."""
        body = _scoped(key, scope, scope_id)
        if if_version is not None:
            body["if_version"] = str(if_version)
        self._call("POST", "/memory/delete", json=body)

    def list(self, scope: str, scope_id: str | None = None,
             prefix: str | None = None) -> list[dict]:
        """Every record in ``scope`` (of one ``scope_id``, or of all when it is omitted) whose
        key starts with ``prefix``, fetched page by page."""
        return [record for page in self.pages(scope, scope_id, prefix) for record in page]

    def pages(self, scope: str, scope_id: str | None = None, prefix: str | None = None,
              limit: int = MAX_LIST_LIMIT) -> Iterator[list[dict]]:
        """``list`` one page at a time, each request costing only its own page."""
        params: dict[str, str] = {**_filters(None, scope, scope_id), "limit": str(limit)}
        if prefix is not None:
            params["prefix"] = prefix
        url: str | None = self.base_url + API_PREFIX + "/memory/list"
        while url is not None:
            with self._request("GET", url, params=params) as response:
                yield response.json()
                url = response.links.get("next", {}).get("url")
            params = {}

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
                                    start or "0", backoff, on_status, from_empty_log=not start))

    def watch(self, patterns: str | Iterable[str] | None = None, scope: str | None = None,
              scope_id: str | None = None, *, backoff: Backoff = Backoff(),
              idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
              on_status: Callable[[StreamStatus], None] | None = None) -> Watch:
        """A live copy of the records passing the filters: iterate to get the current values
        by key each time they change, starting with the snapshot.

            for state in memory.watch("user.*", scope="global"):
                print(state)                  # {"user.1": {...}, "user.2": {...}}

        The stream opens with ``snapshot=1``: the current records, then every change after
        the position they reflect, resumed across drops, restarts and lifetimes without loss;
        when resuming is impossible the server sends a fresh snapshot, which replaces the
        state. Stop by leaving the loop or calling ``close()``.
        """
        query = {**_filters(patterns, scope, scope_id), "snapshot": "1"}
        stream = _Stream(functools.partial(self._open_stream, query, idle_timeout), None,
                         backoff, on_status)
        return Watch(stream, scope == "global" or (scope is not None and scope_id is not None))

    def _head_id(self) -> str | None:
        """The newest id in the log, so that even a connection dropped before the first event
        resumes from the moment of subscribing (``None`` for an empty log)."""
        newest = self._call("GET", "/memory/events/history", params={"limit": "1"})
        return str(newest[-1]["id"]) if newest else None

    def _open_stream(self, query: dict[str, str], idle_timeout: float,
                     cursor: str | None) -> requests.Response:
        headers = {"Accept": "text/event-stream"}
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
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
        """``path`` under the API, or a whole URL the server gave (a ``Link``)."""
        url = path if "://" in path else self.base_url + API_PREFIX + path
        try:
            response = self.session.request(method, url, timeout=timeout or self.timeout,
                                            **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {reason(exc)}") from exc
        if response.status_code >= 400:
            with response:
                raise api_error(response)
        return response
