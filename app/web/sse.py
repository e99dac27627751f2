"""Server-Sent Events framing of a ``Stream``."""
from __future__ import annotations

import contextlib
import json
import socket

from flask import Response

from ..core.stream import (Batch, End, Idle, Item, Opened, Reset, Snapshot, SnapshotEnd,
                           Stream)
from ..wire import Control, EndReason

RETRY_MS = 1000
CONNECTED = b": connected\nretry: %d\n\n" % RETRY_MS
KEEPALIVE = b": keepalive\n\n"
#: one record of a snapshot, whose JSON fills the ``%s``
SNAPSHOT_FRAME = b"event: %s\ndata: %%s\n\n" % Control.SNAPSHOT.encode()
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux


def control_frame(event: str, data: dict, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data).encode())


def frame(item: Item) -> bytes:
    """One write; the first, a comment, is what makes the server send the headers."""
    if isinstance(item, Batch):
        return b"".join(bundle.sse for bundle in item.bundles)
    if isinstance(item, Idle):
        return KEEPALIVE
    if isinstance(item, Opened):
        return CONNECTED
    if isinstance(item, Snapshot):
        return b"".join(SNAPSHOT_FRAME % record.json.encode() for record in item.records)
    if isinstance(item, SnapshotEnd):
        return control_frame(Control.SNAPSHOT_END, {"last_id": str(item.last_id)},
                             item.last_id)
    if isinstance(item, Reset):
        return control_frame(Control.RESET, {"reason": item.reason.value,
                                             "oldest_id": str(item.oldest_id)})
    assert isinstance(item, End)  # the stream's last item
    if item.reason is EndReason.CLIENT:  # a client that left hears nothing more
        return b""
    return control_frame(item.reason.value, {"last_id": str(item.last_id)})


def bound_stalled_writes(environ: dict, heartbeat_seconds: float) -> None:
    """Let a write to a client that went silent fail instead of waiting forever.

    The server's socket has no timeout, so a client that vanished without a reset (a cut
    network, a sleeping laptop) or stopped reading would hold its stream until TCP gave up, a
    quarter of an hour later. Unacknowledged data now fails the connection after two heartbeats
    (the keepalive comments are that data), and a write blocked by a full window fails after
    two heartbeats or five seconds, whichever is longer.
    """
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT,
                        max(1000, int(2000 * heartbeat_seconds)))
    sock.settimeout(max(5.0, 2 * heartbeat_seconds))


def sse_response(stream: Stream) -> Response:
    stream.frame = frame
    response = Response(iter(stream), mimetype="text/event-stream", headers=HEADERS,
                        direct_passthrough=True)
    response.headers["Content-Type"] = "text/event-stream"
    return response
