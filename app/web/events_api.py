"""``/memory/events/sse``, ``/memory/events/ws`` and ``/memory/events/history``."""
from __future__ import annotations

from typing import NoReturn

from flask import Blueprint, Response, g, request
from flask_sock import Sock
from simple_websocket import Server

from ..core.filters import EventFilter, from_query
from ..core.peer import ENVIRON_KEY, Peer
from ..core.stream import Stream
from ..wire import HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_ID, WS_PROTOCOL
from . import params, sse, ws
from .context import current_service
from .errors import Refused
from .security import require_api_key

events = Blueprint("events", __name__)
events.before_request(require_api_key)  # first: before the WebSocket guard
sock = Sock()

WS_ENDPOINT = "events.events_ws"


def _selection() -> EventFilter:
    settings = current_service().settings
    return from_query(request.args, settings.max_patterns, settings.max_pattern_length)


def _last_event_id() -> int | None:
    value = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if value is None or not value.strip():
        return None
    return params.int_value(value.strip(), "invalid_last_event_id", "last_event_id", 0, MAX_ID)


def _open_stream(transport: str, peer: Peer | None, controls: bool = True) -> Stream:
    """Validate everything before a stream starts, so mistakes are plain 4xx answers.

    A client that gets no control messages (a plain WebSocket client) gets no snapshot, which
    it could not tell from events, and no end by lifetime, from which it could not resume;
    ``snapshot=1`` is still checked, and means nothing more for it.
    """
    selection, last_event_id = _selection(), _last_event_id()
    snapshot = params.flag("snapshot") and controls
    return current_service().stream(selection, last_event_id, transport, peer, snapshot,
                                    controls)


@events.get("/memory/events/sse")
def events_sse() -> Response:
    stream = _open_stream("sse", request.environ.get(ENVIRON_KEY))
    sse.bound_stalled_writes(request.environ, current_service().settings.heartbeat_seconds)
    return sse.sse_response(stream)


def _protocol_client() -> bool:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    if not offered.isascii():
        raise Refused(400, "invalid_handshake", "Sec-WebSocket-Protocol must be ASCII tokens.")
    return WS_PROTOCOL in (name.strip() for name in offered.split(","))


@events.before_request
def _websocket_guard() -> None:
    """Refuse a bad WebSocket request with a JSON error before the handshake happens, and
    subscribe before it, so the client is subscribed once it sees the socket open."""
    if request.endpoint != WS_ENDPOINT:
        return
    if (not request.headers.get("Sec-WebSocket-Key") or not request.headers.get("Host")
            or request.headers.get("Sec-WebSocket-Version") != "13"):
        raise Refused(400, "invalid_handshake", "A WebSocket upgrade needs Host, "
                                                "Sec-WebSocket-Key and Sec-WebSocket-Version: 13.")
    g.memory_protocol = _protocol_client()
    g.memory_peer = ws.SocketPeer()
    g.memory_stream = iter(_open_stream("ws", g.memory_peer, controls=g.memory_protocol))
    next(g.memory_stream)  # Opened


@events.get("/memory/events/ws")
def events_ws_required() -> NoReturn:
    """The same path without an upgrade: routing sends plain requests here, not to the socket."""
    raise Refused(400, "websocket_required",
                  "This route speaks WebSocket; send an Upgrade: websocket request.")


@sock.route("/memory/events/ws", bp=events)
def events_ws(connection: Server) -> None:
    ws.serve(connection, g.memory_stream, g.memory_protocol, g.memory_peer)


@events.get("/memory/events/history")
def events_history() -> Response:
    selection = _selection()
    limit = params.optional_int("limit", 1, MAX_HISTORY_LIMIT, default=HISTORY_LIMIT)
    after_id = params.optional_int("after_id", 0, MAX_ID)
    found = current_service().history(selection, params.since(request.args.get("since")),
                                      limit, after_id)
    return Response(b"[" + b",".join(event.json_bytes for event in found) + b"]",
                    mimetype="application/json")
