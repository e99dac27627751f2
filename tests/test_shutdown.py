"""Graceful shutdown: SIGTERM ends every stream with a final frame at once, and nothing is lost.

Servers here run with a graceful timeout and a keep-alive far above ``DEADLINE``: a stream the
server failed to end, or a connection it kept open after ending one, would keep it alive until
then, so stopping within the deadline proves the streams were ended, not waited out.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import requests

from app.client.sse import SseFrame, SseParser

from .api import SSE, SSEClient, put
from .conftest import Server, wait_until
from .test_ws import subscribe, until_end

GRACEFUL_TIMEOUT = 30
DEADLINE = 10
ENV = {"MEMORY_HEARTBEAT_SECONDS": "0.5", "GUNICORN_CMD_ARGS":
       f"--graceful-timeout {GRACEFUL_TIMEOUT} --keep-alive {GRACEFUL_TIMEOUT}"}


class WholeBody:
    """An SSE response read to its very end in a thread, its frames parsed as they arrive.

    ``error`` is set when the body broke off without HTTP's final chunk, which is what a client
    sees when the server process dies instead of ending the stream.
    """

    def __init__(self, server: Server, params: dict | None = None) -> None:
        self.params = params or {}
        self.response = requests.get(server.url + SSE, params=self.params, stream=True,
                                     timeout=3 * DEADLINE)
        assert self.response.status_code == 200, self.response.text
        self.parser = SseParser()
        self.frames: list[SseFrame] = []
        self.error: Exception | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                self.frames += self.parser.feed(chunk)
        except requests.RequestException as exc:
            self.error = exc
        finally:
            self.ended.set()

    def opened(self) -> bool:
        return any(frame.comments == ("connected",) for frame in self.frames)

    def got(self, event_id: int) -> bool:
        return any(frame.id == str(event_id) for frame in self.frames)

    def final_last_id(self, deadline: float) -> int:
        """The ``last_id`` of the ``shutdown`` frame, which must close a cleanly ended body.

        Only a running server writes the final chunk, so a clean end also shows that the stream
        ended before the server exited.
        """
        assert self.ended.wait(max(0.0, deadline - time.monotonic())), "the stream did not end"
        assert self.error is None, f"the stream broke off instead of ending: {self.error}"
        assert self.parser.feed(b"\n") == [], "the body ends inside a frame"
        final = self.frames[-1]
        assert final.event == "shutdown", f"the body ends with {final}, not a shutdown frame"
        return int(final.json["last_id"])


def resumed_keys(server: Server, stream: WholeBody, last_id: int, count: int) -> list[str]:
    """The keys of the ``count`` events a client resuming after ``last_id`` is sent first."""
    with SSEClient(server.url + SSE, params=stream.params,
                   headers={"Last-Event-ID": str(last_id)}) as resumed:
        return [event["key"] for event in resumed.events(count)]


def test_sigterm_ends_every_stream_at_once_and_clients_resume_after_a_restart(server_factory):
    server = server_factory(env=ENV)
    for n in range(1, 4):
        put(server.url, f"before.{n}", n)
    live = WholeBody(server)
    replaying = WholeBody(server, {"last_event_id": "0"})
    idle = WholeBody(server, {"patterns": "down.*,restarted.*"})
    put(server.url, "live.4", 4)
    for stream in (live, replaying):
        wait_until(lambda: stream.got(4), message="event 4 on every stream")
    wait_until(idle.opened, message="the idle stream to open")

    server.send(signal.SIGTERM)
    deadline = time.monotonic() + DEADLINE
    assert [s.final_last_id(deadline) for s in (live, replaying, idle)] == [4, 4, 3], \
        "the last event sent, or the log's head at subscription when none was sent"
    assert server.process.wait(max(0.0, deadline - time.monotonic())) == 0

    stand_in = server_factory(env=ENV)
    for n in range(5, 8):
        put(stand_in.url, f"down.{n}", n)
    stand_in.stop()
    server.start()
    put(server.url, "restarted.8", 8)
    missed = ["down.5", "down.6", "down.7", "restarted.8"]
    assert resumed_keys(server, live, 4, 4) == missed
    assert resumed_keys(server, idle, 3, 4) == missed


def test_a_stopped_worker_ends_its_streams_counts_them_and_its_successor_takes_over(
        server_factory):
    """The counter is per process, and gunicorn removes every process's file when the master
    exits, so it is read after stopping one worker: the master starts a successor, which sums
    the file the stopped worker left behind."""
    server = server_factory(env=ENV)
    put(server.url, "before", 1)
    streams = [WholeBody(server), WholeBody(server)]
    ws = subscribe(server, protocol=True)
    for stream in streams:
        wait_until(stream.opened, message="every SSE stream to open")
    [stopped] = server.children()

    os.kill(stopped, signal.SIGTERM)
    deadline = time.monotonic() + DEADLINE
    # Until its next look at the signal the stopping worker still accepts; a stream it opens
    # then must end too, or it would hold the worker until the graceful timeout.
    late = WholeBody(server)
    assert [stream.final_last_id(deadline) for stream in streams] == [1, 1]
    assert until_end(ws, "shutdown") == ([], "1")
    ws.drop()
    wait_until(lambda: stopped not in server.children(), timeout=deadline - time.monotonic(),
               message="the stopped worker to exit")

    put(server.url, "after", 2)
    assert resumed_keys(server, streams[0], 1, 1) == ["after"]
    # The late stream either ended on the stopping worker or is live on its successor.
    wait_until(lambda: late.ended.is_set() or late.got(2),
               message="the late stream to end or to get the next event")
    stopped_served_late = late.ended.is_set()
    if stopped_served_late:
        assert late.final_last_id(deadline) == 1
    ended = len(streams) + 1 + stopped_served_late
    wait_until(lambda: server.metric("memory_events_disconnects_total", reason="shutdown")
               == ended, message="every stream it ended counted as shutdown")
    late.response.close()


def test_a_connection_kept_alive_between_requests_does_not_hold_a_stopping_worker(
        server_factory):
    server = server_factory(env={"GUNICORN_CMD_ARGS": "--keep-alive 60"})
    with requests.Session() as session:  # the client keeps the connection for its next request
        assert session.get(server.url + "/healthz", timeout=10).status_code == 200
        assert server.process is not None
        started = time.monotonic()
        server.send(signal.SIGTERM)
        server.process.wait(30)  # it would wait out the keep-alive: 60 s
    assert time.monotonic() - started < 20
