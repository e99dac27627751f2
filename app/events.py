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
