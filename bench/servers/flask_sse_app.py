"""flask-sse as its documentation sets it up: the blueprint at ``/stream``, Redis pub/sub behind it.

Run under ``gunicorn -k gevent`` with ``REDIS_URL`` pointing at a Redis server.
"""
from __future__ import annotations

import os

from flask import Flask, request
from flask_sse import sse

from bench.servers.change import change_event

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish() -> tuple[str, int]:
    event_id, event = change_event(request.get_json(force=True))
    sse.publish(event, id=event_id)
    return "", 204
