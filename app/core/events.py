"""The event as it travels, and the bundles of events that subscribers share.

An event's payload is held once per process: its SSE frame is built when it is read from the
log, and every other form (the JSON of a WebSocket message or a history answer) is cut from
that frame when it is written, so a subscriber's backlog only refers to frames.
"""
from __future__ import annotations

from ..wire import event_json

#: a bundle grows up to about this many frame bytes before the broker starts another
BUNDLE_BYTES = 65536


class Event:
    """One entry of the log: the fields filters look at, and the frame every SSE reader shares."""

    __slots__ = ("id", "epoch", "scope", "scope_id", "key", "action", "sse_frame", "_start")

    def __init__(self, id: int, epoch: float, scope: str, scope_id: str, key: str,
                 action: str, data: str | None, previous_data: str | None, agent_id: str = "",
                 actor_id: str = "", workflow_id: str = "", reason: str | None = None) -> None:
        self.id = id
        self.epoch = epoch
        self.scope = scope
        self.scope_id = scope_id
        self.key = key
        self.action = action
        head = "id: %d\ndata: " % id
        self._start = len(head)
        self.sse_frame = (head + event_json(id, epoch, scope, scope_id, key, action, data,
                                            previous_data, agent_id, actor_id, workflow_id,
                                            reason) + "\n\n").encode()

    def __repr__(self) -> str:
        return f"Event(id={self.id}, key={self.key!r}, action={self.action!r})"

    @property
    def json_bytes(self) -> bytes:
        """The event object on one line, as UTF-8."""
        return self.sse_frame[self._start:-2]

    @property
    def json(self) -> str:
        return self.json_bytes.decode()

    @property
    def size(self) -> int:
        return len(self.sse_frame)


class Bundle:
    """Events written to a subscriber together, in log order.

    The broker makes one bundle per change and per distinct filter, and hands that same object
    to every subscriber with the filter, so its frames, and the commit times sorted for the
    latency metric, are joined and sorted once however many subscribers get it.
    """

    __slots__ = ("events", "size", "_epochs")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.size = sum(event.size for event in events)
        self._epochs: list[float] | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def last_id(self) -> int:
        return self.events[-1].id

    @property
    def sse(self) -> bytes:
        """The events' SSE frames as one write (a single event's own frame, not a copy)."""
        if len(self.events) == 1:
            return self.events[0].sse_frame
        return b"".join(event.sse_frame for event in self.events)

    @property
    def epochs(self) -> list[float]:
        """Commit times, ascending."""
        if self._epochs is None:
            self._epochs = sorted(event.epoch for event in self.events)
        return self._epochs

    def after(self, event_id: int) -> "Bundle | None":
        """The events newer than ``event_id``: this bundle, a part of it, or none."""
        if self.events[0].id > event_id:
            return self
        newer = [event for event in self.events if event.id > event_id]
        return Bundle(newer) if newer else None


def bundles(events: list[Event], limit: int = BUNDLE_BYTES) -> list[Bundle]:
    """``events`` in bundles of about ``limit`` bytes, so no single write or backlog entry
    holds much more than that (a larger event is a bundle of its own)."""
    out: list[Bundle] = []
    start, size = 0, 0
    for index, event in enumerate(events):
        if size and size + event.size > limit:
            out.append(Bundle(events[start:index]))
            start, size = index, 0
        size += event.size
    if start < len(events):
        out.append(Bundle(events[start:]))
    return out
