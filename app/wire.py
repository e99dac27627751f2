"""What travels on the wire, defined once: the API prefix, headers, id bounds and page sizes,
the kinds of control frame and the reasons a stream ends, and the JSON of records and events.

Only the standard library is imported here, so the server and the client share it.
"""
from __future__ import annotations

import json
import time
from enum import Enum

API_PREFIX = "/api/v1"
#: ids are 64-bit signed integers in every store
MAX_ID = 2**63 - 1
#: the scopes memory lives in, most specific first
SCOPES = ("workflow", "session", "actor", "global")
#: the request header naming each scope's id, also the event's metadata for workflow and actor
SCOPE_ID_HEADERS = {"workflow": "X-Workflow-ID", "session": "X-Session-ID",
                    "actor": "X-Actor-ID"}
#: the request header naming the agent that makes a change: the event's ``metadata.agent_id``
AGENT_ID_HEADER = "X-Agent-Node-ID"
#: history's ``limit``: its default and its largest
HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1000
#: the largest ``limit`` of a ``/memory/list`` page
MAX_LIST_LIMIT = 1000
#: the WebSocket subprotocol whose clients get control messages as well as events
WS_PROTOCOL = "memory-events.v1"
#: every event's ``type``
EVENT_TYPE = "memory_change"
#: ``metadata.reason`` of the ``delete`` that removes a record whose time to live ran out
EXPIRED = "expired"


class Control(str, Enum):
    """A frame that is not an event and does not end the stream: the SSE event name, or the
    ``type`` of a WebSocket control message."""
    SNAPSHOT = "snapshot"
    SNAPSHOT_END = "snapshot_end"
    RESET = "reset"


class EndReason(str, Enum):
    """Why a stream ended; also the SSE event name of its final frame (``client`` has none)."""
    CLIENT = "client"
    OVERFLOW = "overflow"
    SHUTDOWN = "shutdown"
    LIFETIME = "lifetime"


class ResetReason(str, Enum):
    """Why a stream cannot resume where the client asked."""
    HISTORY_TRIMMED = "history_trimmed"
    UNKNOWN_LAST_EVENT_ID = "unknown_last_event_id"


def utc_text(epoch: float) -> str:
    """RFC 3339 with microseconds and a ``Z``: what every timestamp on the wire looks like."""
    seconds = int(epoch)
    micro = round((epoch - seconds) * 1e6)
    if micro == 1_000_000:
        seconds, micro = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % micro


def dump(value: object) -> str:
    """Compact JSON, stored as text so it is embedded in answers without parsing it again."""
    if type(value) is str:
        return _text(value)  # what ``dumps`` gives for a string, without its overhead
    return json.dumps(value, separators=(",", ":"))


_text = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def record_json(key: str, data: str, scope: str, scope_id: str, created_at: float,
                updated_at: float, version: int, expires_at: float | None) -> str:
    """A memory record; ``data`` is already JSON text."""
    expires = "null" if expires_at is None else '"%s"' % utc_text(expires_at)
    return ('{"key":%s,"data":%s,"scope":%s,"scope_id":%s,"created_at":"%s","updated_at":"%s",'
            '"version":"%d","expires_at":%s}'
            % (dump(key), data, dump(scope), dump(scope_id), utc_text(created_at),
               utc_text(updated_at), version, expires))


_EVENT = ('{"id":"%d","type":"' + EVENT_TYPE + '","timestamp":"%s","scope":%s,"scope_id":%s,'
          '"key":%s,"action":"%s","data":%s,"previous_data":%s,'
          '"metadata":{"agent_id":%s,"actor_id":%s,"workflow_id":%s%s}}')


def event_json(event_id: int, epoch: float, scope: str, scope_id: str, key: str, action: str,
               data: str | None, previous_data: str | None, agent_id: str, actor_id: str,
               workflow_id: str, reason: str | None) -> str:
    """A memory change; ``data`` and ``previous_data`` are already JSON text (or ``None``)."""
    extra = "" if reason is None else ',"reason":%s' % dump(reason)
    return _EVENT % (event_id, utc_text(epoch), dump(scope), dump(scope_id), dump(key), action,
                     data or "null", previous_data or "null", dump(agent_id), dump(actor_id),
                     dump(workflow_id), extra)
