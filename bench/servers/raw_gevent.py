"""The raw limit: a gevent ``StreamServer``, just enough HTTP, pre-encoded frames to every socket.

No framework, no queue, no per-subscriber greenlet doing work: a publish encodes the frame once
and writes it to each open stream from the publishing greenlet, so a writer's next change is read
only once the previous one has reached every socket. Whatever a real service adds on
top of this costs something; this is the floor for Python + gevent on the machine.

``python -m bench.servers.raw_gevent PORT``
"""
from __future__ import annotations

import json
import socket as stdsocket
import sys

from gevent.server import StreamServer
from gevent.socket import socket

from bench.servers.change import change_event

STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Connection: close\r\n\r\n: connected\n\n")
PUBLISHED = b"HTTP/1.1 204 No Content\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
streams: set[socket] = set()


def publish(body: bytes) -> None:
    event_id, event = change_event(json.loads(body))
    frame = b"id: %d\ndata: %s\n\n" % (event_id, event.encode())
    for conn in list(streams):
        try:
            conn.sendall(frame)
        except OSError:
            streams.discard(conn)


def hold_stream(conn: socket) -> None:
    streams.add(conn)
    conn.sendall(STREAM_HEAD)
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        streams.discard(conn)


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def handle(conn: socket, _address: tuple) -> None:
    """Requests one after another on a keep-alive connection; a stream GET keeps the socket."""
    buffered = b""
    while True:
        while b"\r\n\r\n" not in buffered:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffered += chunk
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        method, path = head.split(b" ", 2)[:2]
        if method == b"GET" and path.split(b"?")[0] == b"/stream":
            hold_stream(conn)
            return
        if method != b"POST" or path != b"/publish":
            conn.sendall(NOT_FOUND)
            return
        length = content_length(head)
        while len(buffered) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffered += chunk
        # Answered first, as a service acknowledges a write once it is stored: the writer's
        # next change travels while this one fans out.
        conn.sendall(PUBLISHED)
        publish(buffered[:length])
        buffered = buffered[length:]


def listener(port: int) -> socket:
    """Loopback, and no Nagle delay on accepted sockets (they inherit it), as gunicorn does."""
    sock = socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
    sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    return sock


if __name__ == "__main__":
    StreamServer(listener(int(sys.argv[1])), handle).serve_forever()
