"""The controls: what gunicorn's gevent worker costs by itself, and with Flask on top.

Both keep changes in memory (no database, no log) and hand each one to every open stream's
list, waking its greenlet, as a hand-rolled queue would. ``wsgi`` is a bare WSGI callable;
``flask_app`` is the same behind Flask's routing, request and response objects. Against this
service, under the same worker and the same workloads, they show how much of a request's time
is the server and the framework, and how much is the service's own work.

``gunicorn -k gevent -w 1 bench.servers.bare:wsgi`` (or ``:flask_app``)
"""
from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator

from flask import Flask, Response, request

from bench.servers.change import change_event

CONNECTED = b": connected\n\n"


class _Mailbox:
    __slots__ = ("frames", "ready")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.ready = threading.Event()


_streams: set[_Mailbox] = set()


def publish(body: bytes) -> None:
    event_id, event = change_event(json.loads(body))
    frame = b"id: %d\ndata: %s\n\n" % (event_id, event.encode())
    for mailbox in _streams:
        mailbox.frames.append(frame)
        mailbox.ready.set()


def stream() -> Iterator[bytes]:
    """Subscribed before the first frame, so the comment means "subscribed"."""
    mailbox = _Mailbox()
    _streams.add(mailbox)
    try:
        yield CONNECTED
        while True:
            mailbox.ready.wait()
            mailbox.ready.clear()
            frames, mailbox.frames = mailbox.frames, []
            yield b"".join(frames)
    finally:
        _streams.discard(mailbox)


def wsgi(environ: dict, start_response: Callable) -> Any:
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    if path == "/publish" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        publish(environ["wsgi.input"].read(length))
        start_response("204 No Content", [])
        return []
    if path == "/stream" and method == "GET":
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache")])
        return stream()
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


flask_app = Flask(__name__)


@flask_app.post("/publish")
def _publish() -> Response:
    publish(request.get_data())
    return Response(status=204)


@flask_app.get("/stream")
def _stream() -> Response:
    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
