"""The event as it travels: parsed fields for filtering, its JSON and SSE frame encoded once."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone


def utc_text(epoch: float) -> str:
    """RFC 3339 with microseconds and a ``Z``: what every timestamp on the wire looks like."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dump(value: object) -> str:
    """Compact JSON, stored as text so it is embedded in events without parsing it again."""
    return json.dumps(value, separators=(",", ":"))


@dataclass(slots=True, eq=False)
class Event:
    id: int
    epoch: float
    scope: str
    scope_id: str
    key: str
    action: str
    data: str | None
    previous_data: str | None
    agent_id: str
    workflow_id: str
    _json: str | None = field(default=None, repr=False)
    _frame: bytes | None = field(default=None, repr=False)

    @property
    def json(self) -> str:
        """The event object on one line, built once per process however many read it."""
        if self._json is None:
            self._json = (
                '{"id":"%d","type":"memory_change","timestamp":"%s","scope":%s,"scope_id":%s,'
                '"key":%s,"action":"%s","data":%s,"previous_data":%s,'
                '"metadata":{"agent_id":%s,"workflow_id":%s}}'
                % (self.id, utc_text(self.epoch), dump(self.scope), dump(self.scope_id),
                   dump(self.key), self.action, self.data or "null",
                   self.previous_data or "null", dump(self.agent_id), dump(self.workflow_id)))
        return self._json

    @property
    def sse_frame(self) -> bytes:
        """``id:``/``data:`` frame; shared by every SSE subscriber this event reaches."""
        if self._frame is None:
            self._frame = b"id: %d\ndata: %s\n\n" % (self.id, self.json.encode())
        return self._frame


class Bundle:
    """Events written to a subscriber together, in log order.

    The broker makes one bundle per change and per distinct filter, and hands that same object
    to every subscriber with the filter, so the frames are joined, and the commit times sorted
    for the latency metric, once however many subscribers write them.
    """

    __slots__ = ("events", "_sse", "_chunk", "_epochs")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self._sse: bytes | None = None
        self._chunk: bytes | None = None
        self._epochs: list[float] | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def last_id(self) -> int:
        return self.events[-1].id

    @property
    def sse(self) -> bytes:
        """The events' SSE frames as one write."""
        if self._sse is None:
            self._sse = b"".join(event.sse_frame for event in self.events)
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        """The SSE frames as one HTTP/1.1 chunk, for writing past the server's own framing."""
        if self._chunk is None:
            self._chunk = b"%X\r\n%s\r\n" % (len(self.sse), self.sse)
        return self._chunk

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
