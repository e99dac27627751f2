"""WebSocket framing of a ``Stream``: one text message per event, JSON control messages."""
from __future__ import annotations

import json
import threading

from simple_websocket import ConnectionClosed, Server

from .stream import Batch, End, Idle, Reset, Stream


def _discard_incoming(ws: Server) -> None:
    """Read and drop whatever the client sends, so nothing piles up in the server."""
    try:
        while ws.connected:
            ws.receive()
    except ConnectionClosed:
        pass


def serve(ws: Server, stream: Stream) -> None:
    """Write the stream to ``ws`` until either side ends it; the stream cleans up either way."""
    threading.Thread(target=_discard_incoming, args=(ws,), daemon=True).start()
    items = iter(stream)
    try:
        for item in items:
            if not ws.connected:
                return
            if isinstance(item, Batch):
                for event in item.events:
                    ws.send(event.json)
            elif isinstance(item, Reset):
                ws.send(json.dumps({"type": "reset", "reason": item.reason,
                                    "oldest_id": str(item.oldest_id)}))
            elif isinstance(item, End):
                ws.send(json.dumps({"type": item.reason, "last_id": str(item.last_id)}))
                return
            elif isinstance(item, Idle):
                continue  # liveness is the ping/pong of simple-websocket
    finally:
        items.close()
