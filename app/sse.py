"""Server-Sent Events framing of a ``Stream``."""
from __future__ import annotations

import json
from typing import Iterator

from flask import Response

from .stream import Batch, End, Idle, Opened, Reset, Stream

RETRY_MS = 1000
CONNECTED = b": connected\nretry: %d\n\n" % RETRY_MS
KEEPALIVE = b": keepalive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def control_frame(event: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data).encode())


def frames(stream: Stream) -> Iterator[bytes]:
    """Each yield is one write. The first, a comment, is what makes the server send headers."""
    for item in stream:
        if isinstance(item, Batch):
            yield b"".join(event.sse_frame for event in item.events)
        elif isinstance(item, Idle):
            yield KEEPALIVE
        elif isinstance(item, Opened):
            yield CONNECTED
        elif isinstance(item, Reset):
            yield control_frame("reset", {"reason": item.reason, "oldest_id": str(item.oldest_id)})
        elif isinstance(item, End):
            yield control_frame(item.reason, {"last_id": str(item.last_id)})
            return


def sse_response(stream: Stream) -> Response:
    response = Response(frames(stream), mimetype="text/event-stream", headers=HEADERS,
                        direct_passthrough=True)
    response.headers["Content-Type"] = "text/event-stream"
    return response
