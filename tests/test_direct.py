"""Tests for app.direct: a bundle written to a socket without waiting, in HTTP/1.1 chunked
framing, the rest left for a blocking flush; and the servers that never get a direct writer."""
from __future__ import annotations

import socket
import subprocess
import sys

import gevent
from gevent import socket as gsocket

from app.direct import START_RESPONSE, DirectWriter
from app.events import Bundle, Event

from .conftest import ROOT
from .test_overflow import _dechunk


class StandInResponse:
    """The parts of gunicorn's response the writer reads and updates."""
    headers_sent = True
    chunked = True
    sent = 0


def bundle_of(*sizes: int) -> Bundle:
    return Bundle([Event(n + 1, 0.0, "global", "global", "k", "set", '"%s"' % ("x" * size),
                         None, "", "") for n, size in enumerate(sizes)])


def test_a_bundle_goes_out_as_one_http_chunk():
    ours, theirs = gsocket.socketpair()
    response = StandInResponse()
    writer = DirectWriter(ours, response)
    bundle = bundle_of(10, 20)
    assert writer.write(bundle)
    assert writer.unsent == b"" and writer.flush() is None
    received = theirs.recv(1 << 16)
    assert _dechunk(received) == [bundle.sse]
    assert response.sent == len(bundle.sse)


def test_what_the_socket_cannot_take_now_is_flushed_whole():
    ours, theirs = gsocket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = DirectWriter(ours, StandInResponse())
    bundle = bundle_of(300_000)
    assert writer.write(bundle)  # at once, whatever fits
    assert writer.unsent and writer.pending is bundle

    def read_all() -> bytes:
        data = b""
        while not data.endswith(b"\r\n") or len(data) < len(bundle.sse_chunk):
            data += theirs.recv(1 << 16)
        return data
    reader = gevent.spawn(read_all)
    assert writer.flush() is bundle
    assert _dechunk(reader.get(timeout=10)) == [bundle.sse]
    assert writer.unsent == b"" and writer.pending is None


def test_a_write_to_a_closed_peer_fails_without_raising():
    ours, theirs = gsocket.socketpair()
    theirs.close()
    assert not DirectWriter(ours, StandInResponse()).write(bundle_of(10))


CHOOSE = """
import socket, ssl, sys
from gunicorn.http.wsgi import Response
from app.direct import START_RESPONSE, DirectWriter
if sys.argv[1] == "gevent":
    from gevent import monkey; monkey.patch_all()
    import socket, ssl
plain, _ = socket.socketpair()
tls = ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="x",
                                              do_handshake_on_connect=False)
for sock in (plain, tls):
    response = Response(None, sock, None)
    writer = DirectWriter.for_request({"gunicorn.socket": sock,
                                       START_RESPONSE: response.start_response})
    print(sock is plain, writer is not None)
"""


def writers_given(worker: str) -> list[str]:
    """Whether a plain and a TLS gunicorn socket get a writer, in a process set up as
    gunicorn's ``worker`` sets its workers up."""
    done = subprocess.run([sys.executable, "-c", CHOOSE, worker], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_gunicorns_gevent_worker_gets_a_writer_for_plain_http_only():
    assert writers_given("gevent") == ["True True", "False False"]


def test_threads_and_other_servers_never_get_a_writer():
    assert writers_given("gthread") == ["True False", "False False"]
    ours, _ = socket.socketpair()
    # the development server: no gunicorn socket
    assert DirectWriter.for_request({"werkzeug.socket": ours}) is None
    # a middleware that wraps start_response hides gunicorn's response
    assert DirectWriter.for_request({"gunicorn.socket": ours,
                                     START_RESPONSE: lambda *args: None}) is None
