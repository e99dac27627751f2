"""Writing a change straight to a waiting SSE stream's socket, from the greenlet that publishes it.

Waking a stream's greenlet to write one change costs more than the write: with a thousand
subscribers, a change then reaches the last of them only after a thousand switches, and writes
answered in the meantime pile up behind it. So under gunicorn's gevent worker, while a stream
waits with nothing queued, the broker writes each new bundle to its socket itself, as the HTTP
chunk gunicorn would have sent, without ever waiting: what the socket cannot take at once is
left for the stream's greenlet, which writes it before anything else.
"""
from __future__ import annotations

from typing import Any

from ..core.events import Bundle


class _LastChunk:
    """The HTTP chunk of the bundle written last: the broker writes one bundle to every waiting
    stream of a group in one pass, so they all share one chunk, and nothing older is kept."""
    __slots__ = ("bundle", "chunk")

    def __init__(self) -> None:
        self.bundle: Bundle | None = None
        self.chunk = b""

    def of(self, bundle: Bundle) -> bytes:
        if bundle is not self.bundle:
            self.bundle, self.chunk = bundle, b"%X\r\n%s\r\n" % (bundle.size, bundle.sse)
        return self.chunk


_last = _LastChunk()  # one per process: direct writes all happen on the event loop's thread


class DirectWriter:
    """One SSE response's socket, written to without waiting, in gunicorn's chunked framing."""

    __slots__ = ("_sock", "_send", "_response", "_unsent", "_pending")

    def __init__(self, sock: Any, response: Any) -> None:
        self._sock = sock
        # gevent keeps the operating system's socket non-blocking underneath its own, so a
        # send on that one never waits and skips gevent's wrapper
        self._send = getattr(sock, "_sock", sock).send
        self._response = response
        self._unsent: bytes | memoryview = b""  # the tail of ``_pending``'s chunk
        self._pending: Bundle | None = None

    @property
    def unsent(self) -> bool:
        return bool(self._unsent)

    def write(self, bundle: Bundle) -> bool:
        data = _last.of(bundle)
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        self._response.sent += bundle.size  # what gunicorn's access log counts
        if sent < len(data):
            self._unsent, self._pending = memoryview(data)[sent:], bundle
        return True

    def flush(self) -> Bundle | None:
        if not self._unsent:
            return None
        data, bundle = self._unsent, self._pending
        self._unsent, self._pending = b"", None
        self._sock.sendall(data)
        return bundle
