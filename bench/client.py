"""A cheap load client: non-blocking sockets in one epoll loop, frames counted, not parsed.

The client must cost far less than the servers it measures, or it measures itself. So a stream
does one ``recv`` per readiness event, counts frames by their blank line (``\\n\\n``) and records
``(time, frames so far)``; which change arrived when is worked out after the run, from the order
of frames. Writers are keep-alive HTTP connections driven by the same loop.
"""
from __future__ import annotations

import errno
import itertools
import select
import socket
import time
from typing import Callable

HOST = "127.0.0.1"
RECV_BYTES = 262144
URGENT_EVERY = 64
IN, OUT, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP | select.EPOLLERR
now = time.monotonic
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux's number


class Loop:
    """One epoll loop for every connection of a workload.

    Writers are served first: their connections sit in a second epoll, nested in the main one
    and checked every ``URGENT_EVERY`` stream events, so a server is never kept waiting for its
    next change while the client works through a thousand readable streams.
    """

    def __init__(self, sources: tuple[str, ...] = ()) -> None:
        """``sources``: loopback addresses to connect from in turn, for more connections than
        one address has ports (about 28,000 with Linux's default ``ip_local_port_range``).
        The port is chosen at ``connect`` (``IP_BIND_ADDRESS_NO_PORT``), so one that another
        server port still has in ``TIME_WAIT`` serves again."""
        self._sources = itertools.cycle(sources) if sources else None
        self.epoll = select.epoll()
        self.urgent = select.epoll()
        self.epoll.register(self.urgent.fileno(), IN)
        self.connections: dict[int, "Connection"] = {}

    def source(self) -> str | None:
        return next(self._sources) if self._sources is not None else None

    def watch(self, conn: "Connection", events: int) -> None:
        fd = conn.sock.fileno()
        epoll = self.urgent if conn.urgent else self.epoll
        if fd in self.connections:
            epoll.modify(fd, events)
        else:
            self.connections[fd] = conn
            epoll.register(fd, events)

    def forget(self, conn: "Connection") -> None:
        fd = conn.sock.fileno()
        if self.connections.pop(fd, None) is not None:
            (self.urgent if conn.urgent else self.epoll).unregister(fd)

    def _serve_urgent(self) -> None:
        for fd, events in self.urgent.poll(0):
            conn = self.connections.get(fd)
            if conn is not None:
                conn.ready(events)

    def run(self, done: Callable[[], bool], deadline: float) -> bool:
        """Serve events until ``done()`` or ``deadline``; whether ``done()`` came true."""
        connections, poll, urgent = self.connections, self.epoll.poll, self._serve_urgent
        while not done():
            left = deadline - now()
            if left <= 0:
                return False
            urgent()
            for n, (fd, events) in enumerate(poll(min(left, 0.05))):
                if n % URGENT_EVERY == URGENT_EVERY - 1:
                    urgent()
                conn = connections.get(fd)
                if conn is not None:
                    conn.ready(events)
        return True

    def wait(self, seconds: float) -> None:
        """Serve events for ``seconds``."""
        self.run(lambda: False, now() + seconds)

    def close(self) -> None:
        for conn in list(self.connections.values()):
            conn.close()
        self.epoll.close()
        self.urgent.close()


class Connection:
    """A non-blocking socket: what is sent before it is up waits, then goes out in order."""

    urgent = False

    def __init__(self, loop: Loop, port: int) -> None:
        self.loop = loop
        self.port = port
        self.error: str | None = None
        self.open()

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        source = self.loop.source()
        if source is not None:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            self.sock.bind((source, 0))
        self.outgoing = b""
        self.up = False
        self.closed = False
        code = self.sock.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail(f"connect: {errno.errorcode.get(code, code)}")
            return
        self.loop.watch(self, OUT)

    def send(self, data: bytes) -> None:
        self.outgoing += data
        if self.up:
            self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outgoing) if self.outgoing else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        self.outgoing = self.outgoing[sent:]
        self.loop.watch(self, IN | OUT if self.outgoing else IN)

    def ready(self, events: int) -> None:
        if events & OUT:
            self.up = True
            self._flush()
        if events & (IN | HUP) and not self.closed:
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                self.fail(f"recv: {exc}")
                return
            if data:
                self.received(data)
            else:
                self.ended()

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def ended(self) -> None:
        self.fail("closed by server")

    def fail(self, reason: str) -> None:
        if self.error is None and not self.closed:
            self.error = reason
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.forget(self)
            self.sock.close()


class Stream(Connection):
    """An SSE stream: times its headers and first body byte, then counts frames as they come.

    ``marks`` (when not ``None``) gets ``(time, frames so far)`` for every read, from which the
    arrival of each frame is recovered afterwards.
    """

    def __init__(self, loop: Loop, port: int, path: str) -> None:
        self.started = now()
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                        f"Accept: text/event-stream\r\n\r\n").encode()
        self.head = b""
        self.headers_at: float | None = None
        self.first_byte_at: float | None = None
        self.status = 0
        self.frames = 0
        self.ends_newline = False
        self.last = b""
        self.marks: list[tuple[float, int]] | None = None
        super().__init__(loop, port)
        self.send(self.request)

    def received(self, data: bytes) -> None:
        if self.headers_at is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.headers_at = now()
            self.status = int(self.head[9:12])
            if self.status != 200:
                self.fail(f"status {self.status}")
                return
            data, self.head = self.head[end + 4:], b""
            if not data:
                return
        if self.first_byte_at is None:
            self.first_byte_at = now()
        # A blank line split across two reads ends one read with "\n" and starts the next with it.
        self.frames += data.count(b"\n\n") + (self.ends_newline and data[0] == 10)
        self.ends_newline = data[-1] == 10
        self.last = data if len(data) >= 512 else self.last[-512:] + data
        if self.marks is not None:
            self.marks.append((now(), self.frames))

    def record(self) -> int:
        """Start recording arrivals; returns the frame count so far (the baseline)."""
        self.marks = []
        return self.frames

    def last_marker(self) -> int | None:
        """The change number in the last frame received (see ``Writer.change``): the first
        marker of that frame, since an event may also carry the previous value's."""
        body = self.last.rstrip(b"\r\n")
        start = body.find(b"@", body.rfind(b"\n\n") + 1)
        end = body.find(b"@", start + 1)
        try:
            return int(body[start + 1:end])
        except ValueError:
            return None


class Writer(Connection):
    """A keep-alive HTTP connection sending POSTs one at a time; reconnects if the server closed
    it between requests. ``sent_at[n]`` is when change ``n`` was handed to the socket."""

    urgent = True

    def __init__(self, loop: Loop, port: int, path: str, key: str = "bench",
                 on_done: Callable[["Writer"], None] | None = None) -> None:
        self.path = path
        self.key = key
        self.on_done = on_done
        self.busy = False
        self.buffered = b""
        self.sent_at: dict[int, float] = {}
        self.round_trips: list[float] = []
        self.current = -1
        self.completed = 0
        self.failures = 0
        super().__init__(loop, port)

    def change(self, number: int) -> bytes:
        """The ``{"key", "data"}`` body of change ``number``; its value carries ``@number@``."""
        body = b'{"key":"%s","data":"@%d@"}' % (self.key.encode(), number)
        return (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s"
                % (self.path.encode(), HOST.encode(), self.port, len(body), body))

    def post(self, number: int) -> None:
        if self.closed:
            self.open()
        self.busy = True
        self.current = number
        self.sent_at[number] = now()
        self.send(self.change(number))

    def received(self, data: bytes) -> None:
        self.buffered += data
        end = self.buffered.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffered[:end]
        total = end + 4 + _content_length(head)
        if len(self.buffered) < total:
            return
        self.buffered = self.buffered[total:]
        self._finish(200 <= int(head[9:12]) < 300)

    def ended(self) -> None:
        self.close()
        if self.busy:
            self._finish(False)

    def _finish(self, ok: bool) -> None:
        self.busy = False
        if ok:
            self.round_trips.append(now() - self.sent_at[self.current])
            self.completed += 1
        else:
            self.failures += 1
        if self.on_done is not None:
            self.on_done(self)


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            return int(line[15:])
    return 0


def every(seconds: float, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check`` run at most once per ``seconds``: scanning 10,000 streams per event costs."""
    due = [0.0]

    def throttled() -> bool:
        t = now()
        if t < due[0]:
            return False
        due[0] = t + seconds
        return check()
    return throttled
