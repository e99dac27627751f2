"""The SSE stream against a real gunicorn: the control plane's stream bug report, ported."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from .api import SSE, SSEClient, put
from .conftest import ROOT, Server, free_port, scrape, wait_until
from .test_ws import AT_ONCE, SLOW_PINGS, seconds_until


def sse_subscribers(server: Server | str) -> float:
    """The gauge of open SSE streams of a server, or of the service at a URL."""
    url = server if isinstance(server, str) else server.url
    return scrape(url, "memory_events_subscribers", transport="sse")


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_filtered_stream_opens_at_once_and_delivers_only_matches(server_factory, worker_class):
    server = server_factory(worker_class=worker_class, env={"MEMORY_HEARTBEAT_SECONDS": "30"})
    with SSEClient(server.url + SSE, params={"patterns": "match.*"}) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert stream.response.headers["Cache-Control"] == "no-cache"
        assert stream.response.headers["X-Accel-Buffering"] == "no"
        first = stream.next(timeout=2)
        assert first.comments == ("connected",) and first.retry is not None
        put(server.url, "skip.this", 1)
        put(server.url, "match.foo", {"n": 2})
        event = stream.next_event(timeout=5)
        assert event.event == "message"
        assert event.json["key"] == "match.foo"
        assert event.json["data"] == {"n": 2}
        assert event.id == event.json["id"]


def test_invalid_pattern_is_refused_before_any_stream(client):
    response = client.get(SSE, query_string={"patterns": "[invalid"}, buffered=False)
    assert response.status_code == 400
    body = response.json
    assert body["error"] == "invalid_pattern" and body["code"] == 400
    assert "[invalid" in body["message"]


def seconds_to_let_a_closed_client_go(server: Server) -> float:
    """Open a stream, close it, and time how long from the close until the server lets it
    go."""
    stream = SSEClient(server.url + SSE, params={"patterns": "none.*"})
    assert stream.next(timeout=2).comments == ("connected",)
    assert sse_subscribers(server) == 1
    seconds = seconds_until(lambda: sse_subscribers(server) == 0, after=stream.close,
                            message="the subscriber gauge to drop to zero")
    assert server.metric("memory_events_disconnects_total", reason="client") == 1
    return seconds


def test_a_client_that_closes_is_let_go_at_once_under_gevent(server_factory):
    """No keepalive is due for far longer than the bound: the worker sees the close itself."""
    server = server_factory(env=SLOW_PINGS)
    seconds = seconds_to_let_a_closed_client_go(server)
    assert seconds < AT_ONCE, f"let go {seconds:.3f}s after the close"


def test_a_client_that_closes_is_let_go_at_the_next_keepalive_under_gthread(server_factory):
    server = server_factory(worker_class="gthread", env={"MEMORY_HEARTBEAT_SECONDS": "0.2"})
    assert seconds_to_let_a_closed_client_go(server) < 5


def test_keepalive_after_silence(server):
    with SSEClient(server.url + SSE) as stream:
        stream.next(timeout=2)
        assert stream.next(timeout=3).comments == ("keepalive",)


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_no_keepalive_while_changes_flow(server_factory, worker_class):
    """A keepalive follows silence only: changes written to the stream (by its own greenlet or
    straight from the publisher) count as writes."""
    server = server_factory(worker_class=worker_class, env={"MEMORY_HEARTBEAT_SECONDS": "1"})
    with SSEClient(server.url + SSE) as stream, \
            requests.Session() as session:
        stream.next(timeout=2)
        for n in range(15):  # 1.5 heartbeats of a change every 0.1 s
            put(server.url, f"k.{n}", n, session=session)
            time.sleep(0.1)
        frames = [stream.next(timeout=5) for _ in range(15)]
        assert [frame.comments for frame in frames if frame.comments] == []
        assert [frame.json["key"] for frame in frames] == [f"k.{n}" for n in range(15)]
        assert stream.next(timeout=3).comments == ("keepalive",)


def test_werkzeug_dev_server_streams_and_cleans_up(tmp_path):
    port = free_port()
    env = {**os.environ, "MEMORY_DB_URL": f"sqlite:///{tmp_path}/memory.db",
           "MEMORY_HEARTBEAT_SECONDS": "0.2"}
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "run",
                                "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), timeout=30, message="the dev server")
        with SSEClient(url + SSE, params={"patterns": "match.*"}) as stream:
            assert stream.next().comments == ("connected",)
            put(url, "skip.this", 1)
            put(url, "match.foo", 2)
            assert stream.events(1)[0]["key"] == "match.foo"
            assert sse_subscribers(url) == 1
        wait_until(lambda: sse_subscribers(url) == 0, timeout=5,
                   message="cleanup after disconnect")
    finally:
        process.terminate()
        process.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
