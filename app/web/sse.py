"""Server-Sent Events framing of a ``Stream``."""
from __future__ import annotations

import contextlib
import json
import socket
from typing import Iterator

from flask import Response

from ..core.stream import (Batch, End, Idle, Item, Opened, Reset, Snapshot, SnapshotEnd,
                           Stream)
from ..wire import EndReason

RETRY_MS = 1000
CONNECTED = b": connected\nretry: %d\n\n" % RETRY_MS
KEEPALIVE = b": keepalive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux


def control_frame(event: str, data: dict, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data).encode())


def frames(stream: Stream) -> Iterator[bytes]:
    """Each yield is one write. The first, a comment, is what makes the server send headers."""
    with contextlib.closing(iter(stream)) as items:
        yield from _frames(items)


def _frames(items: Iterator[Item]) -> Iterator[bytes]:
    for item in items:
        if isinstance(item, Batch):
            yield b"".join(bundle.sse for bundle in item.bundles)
        elif isinstance(item, Idle):
            yield KEEPALIVE
        elif isinstance(item, Opened):
            yield CONNECTED
        elif isinstance(item, Snapshot):
            yield b"".join(b"event: snapshot\ndata: %s\n\n" % record.json.encode()
                           for record in item.records)
        elif isinstance(item, SnapshotEnd):
            yield control_frame("snapshot_end", {"last_id": str(item.last_id)}, item.last_id)
        elif isinstance(item, Reset):
            yield control_frame("reset", {"reason": item.reason.value,
                                          "oldest_id": str(item.oldest_id)})
        elif isinstance(item, End):
            if item.reason is not EndReason.CLIENT:  # a client that left hears nothing more
                yield control_frame(item.reason.value, {"last_id": str(item.last_id)})
            return


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
    response = Response(frames(stream), mimetype="text/event-stream", headers=HEADERS,
                        direct_passthrough=True)
    response.headers["Content-Type"] = "text/event-stream"
    return response
