"""WebSocket framing of a ``Stream``: one text message per event, JSON control messages.

simple-websocket runs a thread per connection that reads the client's frames and answers pings
and closes; it pings at the heartbeat interval and drops a peer that stops answering, so liveness
needs nothing from the stream. This module writes the stream's items and makes sharing the socket
with that thread safe.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from collections import deque
from contextlib import closing, suppress
from typing import Any, Iterable

from simple_websocket import ConnectionClosed, Server
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from .stream import Batch, End, Item, Reset

log = logging.getLogger(__name__)

#: the close code after a stream's final control message; a normal closure unless listed
CLOSE_CODES = {"shutdown": CloseReason.GOING_AWAY}
#: what a write to a connection the client already left can raise
CLIENT_GONE = (ConnectionClosed, LocalProtocolError, OSError)


class WholeFrames:
    """A connection's socket, written by one thread at a time and never in part.

    simple-websocket writes each frame with a single ``send``, which under gevent (or with a
    timeout) can write only part of it when the client reads slowly, and its own thread writes
    pings and close replies to the socket the stream writes to. Either would corrupt the framing.
    A write that cannot finish within ``timeout`` seconds fails: a client that stopped reading is
    let go within the bound that applies to one that stopped answering pings.
    """

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        sock.settimeout(timeout)
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def control(kind: str, **fields: str) -> str:
    """A control message: a JSON object whose ``type`` no event has."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def messages(item: Item) -> list[str]:
    """The text messages ``item`` becomes; ``Opened`` and ``Idle`` become none."""
    if isinstance(item, Batch):
        return [event.json for bundle in item.bundles for event in bundle.events]
    if isinstance(item, Reset):
        return [control("reset", reason=item.reason, oldest_id=str(item.oldest_id))]
    if isinstance(item, End):
        return [control(item.reason, last_id=str(item.last_id))]
    return []


def serve(ws: Server, items: Iterable[Item]) -> None:
    """Write the stream to ``ws`` until either side ends it; the stream cleans up either way.

    ``items`` is a ``Stream``, or its iterator when the subscription was made before the
    handshake. The stream is closed (unsubscribed, counted) before the close frame is sent.
    """
    ws.sock = WholeFrames(ws.sock, 2 * ws.ping_interval if ws.ping_interval else None)
    # The client's messages mean nothing here; a buffer that keeps none drops each one as soon
    # as the connection's thread has parsed it, so a chatty client costs no memory.
    ws.input_buffer = deque(maxlen=0)
    code = _write(ws, items)
    if code is None:
        ws.connected = False  # part of a frame may be on the wire: write nothing more
        return
    with suppress(*CLIENT_GONE):
        ws.close(code)


def _write(ws: Server, items: Iterable[Item]) -> int | None:
    """Write items until the stream ends; the close code to send, or None if the client left.

    A client that left is seen at the next item at the latest, and the stream's heartbeat
    yields one every interval.
    """
    with closing(iter(items)) as stream:
        try:
            for item in stream:
                if not ws.connected:
                    return None
                for message in messages(item):
                    ws.send(message)
                if isinstance(item, End):
                    return CLOSE_CODES.get(item.reason, CloseReason.NORMAL_CLOSURE)
        except CLIENT_GONE:
            return None
        except Exception:
            log.exception("WebSocket stream failed")
            return CloseReason.INTERNAL_ERROR
    return CloseReason.NORMAL_CLOSURE
