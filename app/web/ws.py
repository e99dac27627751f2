"""WebSocket framing of a ``Stream``: one text message per event.

Clients that ask for the ``memory-events.v1`` subprotocol also get control messages (reset,
snapshot, the final overflow, shutdown or lifetime). Every other client, such as AgentField's,
gets events only, exactly as the control plane sends them: its stream never ends by lifetime,
and an overflow or shutdown just closes the socket, with the resume point in the close reason.

simple-websocket runs a thread per connection that reads the client's frames and answers pings
and closes; it pings at the heartbeat interval and drops a peer that stops answering. When
that thread ends (a close frame, the connection's end, a missed pong) it closes the socket, and
that is how the stream hears at once that its client is gone.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from collections import deque
from contextlib import closing, suppress
from typing import Any, Callable, Iterable

from simple_websocket import ConnectionClosed, Server
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from ..core.peer import DirectWrite
from ..core.stream import Batch, End, Item, Reset, Snapshot, SnapshotEnd
from ..wire import Control, EndReason

log = logging.getLogger(__name__)

#: the close code after a stream's end; a normal closure unless listed
PROTOCOL_CLOSE = {EndReason.SHUTDOWN: CloseReason.GOING_AWAY}
#: plain clients get no final message, so the code says why
PLAIN_CLOSE = {EndReason.SHUTDOWN: CloseReason.GOING_AWAY,
               EndReason.OVERFLOW: CloseReason.POLICY_VIOLATION}
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

    def __init__(self, sock: socket.socket, timeout: float | None,
                 closed: Callable[[], None]) -> None:
        sock.settimeout(timeout)
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = closed

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def close(self) -> None:
        """Called by the connection's reader thread as it ends: the client is gone."""
        self._sock.close()
        self._closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class SocketPeer:
    """The stream's view of its WebSocket: known before the handshake, bound after it."""

    def __init__(self) -> None:
        self._closed: Callable[[], None] | None = None

    def direct_writer(self) -> DirectWrite | None:
        return None

    def watch_close(self, closed: Callable[[], None]) -> Callable[[], None]:
        self._closed = closed
        return self._unwatch

    def _unwatch(self) -> None:
        self._closed = None

    def hung_up(self) -> None:
        if self._closed is not None:
            self._closed()


def control(kind: str, **fields: Any) -> str:
    """A control message: a JSON object whose ``type`` no event has."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def messages(item: Item, protocol: bool) -> list[str]:
    """The text messages ``item`` becomes for this client."""
    if isinstance(item, Batch):
        return [event.json for bundle in item.bundles for event in bundle.events]
    if not protocol:
        return []
    if isinstance(item, Snapshot):
        return [control(Control.SNAPSHOT, record=json.loads(record.json))
                for record in item.records]
    if isinstance(item, SnapshotEnd):
        return [control(Control.SNAPSHOT_END, last_id=str(item.last_id))]
    if isinstance(item, Reset):
        return [control(Control.RESET, reason=item.reason.value,
                        oldest_id=str(item.oldest_id))]
    if isinstance(item, End) and item.reason is not EndReason.CLIENT:
        return [control(item.reason.value, last_id=str(item.last_id))]
    return []


def serve(ws: Server, items: Iterable[Item], protocol: bool, peer: SocketPeer) -> None:
    """Write the stream to ``ws`` until either side ends it; the stream cleans up either way.

    ``items`` is the stream's iterator: the subscription was made before the handshake. The
    stream is closed (unsubscribed, counted) before the close frame is sent.
    """
    ws.sock = WholeFrames(ws.sock, 2 * ws.ping_interval if ws.ping_interval else None,
                          peer.hung_up)
    # The client's messages mean nothing here; a buffer that keeps none drops each one as soon
    # as the connection's thread has parsed it, so a chatty client costs no memory.
    ws.input_buffer = deque(maxlen=0)
    if not ws.connected:  # the reader ended before the socket was wrapped
        peer.hung_up()
    ending = _write(ws, items, protocol)
    if ending is None:
        ws.connected = False  # part of a frame may be on the wire: write nothing more
        return
    with suppress(*CLIENT_GONE):
        ws.close(*ending)


def _write(ws: Server, items: Iterable[Item], protocol: bool
           ) -> tuple[int, str | None] | None:
    """Write items until the stream ends; the close code and reason to send, or None if the
    client left."""
    with closing(iter(items)) as stream:
        try:
            for item in stream:
                if not ws.connected:
                    return None
                for message in messages(item, protocol):
                    ws.send(message)
                if isinstance(item, End):
                    return _closing(item, protocol)
        except CLIENT_GONE:
            return None
        except Exception:
            log.exception("WebSocket stream failed")
            return CloseReason.INTERNAL_ERROR, None
    return CloseReason.NORMAL_CLOSURE, None


def _closing(end: End, protocol: bool) -> tuple[int, str | None] | None:
    if end.reason is EndReason.CLIENT:
        return None
    if protocol:
        return PROTOCOL_CLOSE.get(end.reason, CloseReason.NORMAL_CLOSURE), None
    return (PLAIN_CLOSE.get(end.reason, CloseReason.NORMAL_CLOSURE),
            control(end.reason.value, last_id=str(end.last_id)))
