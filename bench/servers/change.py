"""The event every peer publishes: the fields this service's own event carries, so a frame costs
about the same number of bytes everywhere."""
from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from typing import Any

_ids = itertools.count(1)


def change_event(body: dict[str, Any]) -> tuple[int, str]:
    """The next id and the event JSON for a ``{"key", "data"}`` publish body."""
    event_id = next(_ids)
    return event_id, json.dumps({
        "id": str(event_id), "type": "memory_change",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "scope": "global", "scope_id": "global", "key": body["key"], "action": "set",
        "data": body["data"], "previous_data": None,
        "metadata": {"agent_id": "", "actor_id": "", "workflow_id": ""},
    }, separators=(",", ":"))
