"""``/memory/events/sse``, ``/memory/events/ws`` and ``/memory/events/history``."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import NoReturn

from flask import Blueprint, Response, g, request
from flask_sock import Sock
from simple_websocket import Server

from . import sse, ws
from .direct import DirectWriter
from .errors import ApiError
from .events import Event
from .filters import EventFilter, from_query
from .security import require_api_key, same_origin_or_allowed
from .service import current_service
from .store import LogFilter
from .stream import Stream

events = Blueprint("events", __name__)
events.before_request(require_api_key)  # first: before the WebSocket guard
sock = Sock()

HISTORY_PAGE = 500
WS_ENDPOINT = "events.events_ws"


MAX_ID = 2**63 - 1  # ids are 64-bit signed integers in every store


def _int_arg(value: str | None, error: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value or "")
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ApiError(400, error,
                       f"'{name}' must be a whole number from {low} to {high}; got {value!r}.")
    return number


def _last_event_id() -> int | None:
    value = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if value is None or not value.strip():
        return None
    return _int_arg(value.strip(), "invalid_last_event_id", "last_event_id", 0, MAX_ID)


def _open_stream(transport: str, writer: DirectWriter | None = None) -> Stream:
    """Validate everything before a stream starts, so mistakes are plain 4xx answers."""
    service = current_service()
    selection = from_query(request.args, service.settings)
    service.follower.ensure_running()  # here, so a store that is down is a 503 like any other
    last_event_id = _last_event_id()
    if len(service.broker) >= service.settings.max_streams:
        raise ApiError(503, "too_many_streams", "This server holds as many streams as it may; "
                       "retry shortly.", headers={"Retry-After": "5"})
    return Stream(service, selection, last_event_id, transport, writer)


@events.get("/memory/events/sse")
def events_sse() -> Response:
    stream = _open_stream("sse", DirectWriter.for_request(request.environ))
    sse.bound_stalled_writes(request.environ, current_service().settings.heartbeat_seconds)
    return sse.sse_response(stream)


@events.before_request
def _websocket_guard() -> None:
    """Refuse a bad WebSocket request with a JSON error before the handshake happens."""
    if request.endpoint != WS_ENDPOINT:
        return
    if (not request.headers.get("Sec-WebSocket-Key")
            or request.headers.get("Sec-WebSocket-Version") != "13"):
        raise ApiError(400, "invalid_handshake", "A WebSocket upgrade needs Sec-WebSocket-Key and "
                                                 "Sec-WebSocket-Version: 13.")
    origin = request.headers.get("Origin")
    if origin and not same_origin_or_allowed(origin):
        raise ApiError(403, "origin_not_allowed", f"Origin '{origin}' is not allowed.")
    stream = iter(_open_stream("ws"))
    next(stream)  # Opened: subscribed before the handshake tells the client the socket is open
    g.memory_stream = stream


@events.get("/memory/events/ws")
def events_ws_required() -> NoReturn:
    """The same path without an upgrade: routing sends plain requests here, not to the socket."""
    raise ApiError(400, "websocket_required",
                   "This route speaks WebSocket; send an Upgrade: websocket request.")


@sock.route("/memory/events/ws", bp=events)
def events_ws(connection: Server) -> None:
    ws.serve(connection, g.memory_stream)


def _since(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text[-1:] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "invalid_since", f"'since' must be an RFC 3339 / ISO 8601 time; "
                                             f"got {value!r}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def history_events(selection: EventFilter, since: float | None, limit: int,
                   after_id: int | None) -> list[Event]:
    """Matching events oldest first: the last ``limit``, or the first ``limit`` after an id."""
    store = current_service().store
    where = LogFilter(selection.scope, selection.scope_id, since)
    found: list[Event] = []
    cursor = after_id
    while len(found) < limit:
        if after_id is not None:
            page = store.events(cursor, HISTORY_PAGE, where=where)
        else:
            page = store.events_before(cursor, HISTORY_PAGE, where=where)
        found.extend(event for event in page if selection(event))
        if len(page) < HISTORY_PAGE:
            break
        cursor = page[-1].id
    found = found[:limit]
    return found if after_id is not None else found[::-1]


@events.get("/memory/events/history")
def events_history() -> Response:
    selection = from_query(request.args, current_service().settings)
    args = request.args
    limit = _int_arg(args.get("limit", "100"), "invalid_limit", "limit", 1, 1000)
    after_id = (None if args.get("after_id") in (None, "")
                else _int_arg(args.get("after_id"), "invalid_after_id", "after_id", 0, MAX_ID))
    found = history_events(selection, _since(args.get("since")), limit, after_id)
    return Response("[" + ",".join(event.json for event in found) + "]",
                    mimetype="application/json")
