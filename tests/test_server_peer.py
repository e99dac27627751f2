"""The gevent worker's peer: a bundle written to a socket without waiting, in HTTP/1.1 chunked
framing, the rest left for a blocking flush; the responses that never get a direct writer; and
a client's close seen by the loop."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import gevent
from gevent import socket as gsocket

from app.core.events import Bundle, Event
from app.core.peer import START_RESPONSE
from app.server.direct import DirectWriter
from app.server.peer import GeventPeer

from .conftest import ROOT


def dechunk(body: bytes) -> list[bytes]:
    """The chunks of an HTTP chunked body, each as it was framed: what these tests check."""
    parts = []
    while body:
        size_line, rest = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        parts.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n", "broken chunked framing"
        body = rest[size + 2:]
    return parts


class StandInResponse:
    """The parts of gunicorn's response the writer reads and updates."""
    headers_sent = True
    chunked = True
    sent = 0

    def start_response(self, *args: object) -> None:
        """What the app was called with."""


def bundle_of(*sizes: int) -> Bundle:
    return Bundle([Event(n + 1, 0.0, "global", "global", "k", "set", '"%s"' % ("x" * size),
                         None) for n, size in enumerate(sizes)])


def test_a_bundle_goes_out_as_one_http_chunk():
    ours, theirs = gsocket.socketpair()
    response = StandInResponse()
    writer = DirectWriter(ours, response)
    bundle = bundle_of(10, 20)
    assert writer.write(bundle)
    assert not writer.unsent and writer.flush() is None
    assert dechunk(theirs.recv(1 << 16)) == [bundle.sse]
    assert response.sent == len(bundle.sse)


def test_what_the_socket_cannot_take_now_is_flushed_whole():
    ours, theirs = gsocket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = DirectWriter(ours, StandInResponse())
    bundle = bundle_of(300_000)
    chunk_size = len(b"%X\r\n" % bundle.size) + bundle.size + 2
    assert writer.write(bundle)  # at once, whatever fits
    assert writer.unsent

    def read_all() -> bytes:
        data = b""
        while len(data) < chunk_size:
            data += theirs.recv(1 << 16)
        return data
    reader = gevent.spawn(read_all)
    assert writer.flush() is bundle
    assert dechunk(reader.get(timeout=10)) == [bundle.sse]
    assert not writer.unsent


def test_streams_that_take_turns_each_get_the_chunk_of_their_own_bundle():
    pairs = [gsocket.socketpair() for _ in range(3)]
    bundle = bundle_of(10)
    for ours, theirs in pairs:
        assert DirectWriter(ours, StandInResponse()).write(bundle)
        assert dechunk(theirs.recv(1 << 16)) == [bundle.sse]
    other = bundle_of(20)
    ours, theirs = pairs[0]
    assert DirectWriter(ours, StandInResponse()).write(other)
    assert dechunk(theirs.recv(1 << 16)) == [other.sse]


def test_a_write_to_a_closed_peer_fails_without_raising():
    ours, theirs = gsocket.socketpair()
    theirs.close()
    assert not DirectWriter(ours, StandInResponse()).write(bundle_of(10))


def test_only_gunicorns_own_chunked_plain_response_gets_a_writer():
    ours, _ = gsocket.socketpair()
    response = StandInResponse()
    environ = {START_RESPONSE: response.start_response}
    assert isinstance(GeventPeer(ours, response, environ).direct_writer(), DirectWriter)
    wrapped = {START_RESPONSE: lambda *args: None}  # a middleware wrapped start_response
    assert GeventPeer(ours, response, wrapped).direct_writer() is None
    tls = ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="x",
                                                   do_handshake_on_connect=False)
    assert GeventPeer(tls, response, environ).direct_writer() is None  # only the server may
    response.chunked = False
    assert GeventPeer(ours, response, environ).direct_writer() is None


def test_the_loop_sees_a_client_close_and_stops_watching_when_asked():
    ours, theirs = gsocket.socketpair()
    closed: list[str] = []
    peer = GeventPeer(ours, StandInResponse(), {})
    peer.watch_close(lambda: closed.append("closed"))
    gevent.sleep(0.05)
    assert closed == []
    theirs.close()
    gevent.sleep(0.05)
    assert closed == ["closed"]
    second, other = gsocket.socketpair()
    stop = GeventPeer(second, StandInResponse(), {}).watch_close(lambda: closed.append("late"))
    stop()
    other.close()
    gevent.sleep(0.05)
    assert closed == ["closed"]


HOOKS = """
import sys
if sys.argv[1] == "gevent":
    from gevent import monkey; monkey.patch_all()
from app.server import hooks

class Worker:
    alive = True
    def __init__(self):
        self.wsgi = lambda environ, start_response: [environ.get("memory_events.peer")]
    def handle_exit(self, sig, frame):
        pass

worker = Worker()
hooks.post_worker_init(worker)
environ = {"gunicorn.socket": __import__("socket").socket()}
print(type(worker.wsgi(environ, lambda *args: None)[0]).__name__)
"""


def peer_under(worker: str) -> str:
    """The peer a request gets in a process set up as gunicorn's ``worker`` class sets up its
    workers."""
    done = subprocess.run([sys.executable, "-c", HOOKS, worker], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_only_the_gevent_worker_gives_streams_a_peer():
    assert peer_under("gevent") == "GeventPeer"
    assert peer_under("gthread") == "NoneType"
