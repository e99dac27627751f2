"""A live copy of the memory a stream selects: a snapshot, then every change, kept exact."""
from __future__ import annotations

from typing import Any, Hashable, Iterator

from ..wire import EVENT_TYPE, Control
from .stream import _Stream

Key = Hashable


class Watch(Iterator[dict]):
    """What ``MemoryClient.watch`` returns: iterating yields ``state``, the current values by
    key, each time it changes (first once the snapshot is in).

    ``state`` and ``records`` are the same dicts throughout, updated in place: copy one to
    keep a moment. Their keys are the memory keys when the watch names one scope
    (``scope="global"``, or a scope with its ``scope_id``), else ``(scope, scope_id, key)``
    tuples. ``last_event_id`` is the log position the state reflects.

    ``records`` holds what the stream tells of each record: every field but ``expires_at``,
    which the events that change a record do not carry. None is needed to stay exact: an
    expiry arrives as a ``delete``.

    Across reconnects the stream resumes from that position, or, when the server no longer
    holds the events after it, sends a fresh snapshot that replaces the state whole, so the
    copy is exact whatever happened in between.
    """

    def __init__(self, stream: _Stream, one_scope: bool) -> None:
        self._stream = stream
        self._one_scope = one_scope
        self.state: dict[Key, Any] = {}
        self.records: dict[Key, dict] = {}
        self._changes = self._follow()

    @property
    def last_event_id(self) -> str | None:
        return self._stream.last_event_id

    def _key(self, item: dict) -> Key:
        return item["key"] if self._one_scope else (item["scope"], item["scope_id"], item["key"])

    def _follow(self) -> Iterator[dict]:
        incoming: dict[Key, dict] = {}
        connection = self._stream.connections
        for item in self._stream.follow():
            if self._stream.connections != connection:  # a snapshot cut off is no snapshot
                connection, incoming = self._stream.connections, {}
            kind = item.get("type")
            if kind == Control.SNAPSHOT:
                record = item["record"]
                record.pop("expires_at", None)
                incoming[self._key(record)] = record
            elif kind == Control.SNAPSHOT_END:
                self.records.clear()
                self.records.update(incoming)
                self.state.clear()
                self.state.update((key, record["data"]) for key, record in incoming.items())
                incoming = {}
                yield self.state
            elif kind == EVENT_TYPE:
                self._apply(item)
                yield self.state

    def _apply(self, event: dict) -> None:
        key = self._key(event)
        if event["action"] == "delete":
            self.records.pop(key, None)
            self.state.pop(key, None)
            return
        known = self.records.get(key)
        # A set of a key the copy does not hold created it.
        created_at = event["timestamp"] if known is None else known["created_at"]
        self.records[key] = {"key": event["key"], "data": event["data"],
                             "scope": event["scope"], "scope_id": event["scope_id"],
                             "created_at": created_at, "updated_at": event["timestamp"],
                             "version": event["id"]}
        self.state[key] = event["data"]

    def __next__(self) -> dict:
        return next(self._changes)

    def close(self) -> None:
        self._changes.close()
        self._stream.response.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
