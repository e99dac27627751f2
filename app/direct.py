"""Writing a change straight to a waiting SSE stream's socket, from the greenlet that publishes it.

Waking a stream's greenlet to write one change costs more than the write: with a thousand
subscribers, a change then reaches the last of them only after a thousand switches, and writes
answered in the meantime pile up behind it. So under gunicorn's gevent worker, while a stream
waits with nothing queued, the broker writes each new bundle to its socket itself, as the HTTP
chunk gunicorn would have sent, without ever waiting: what the socket cannot take at once is
left for the stream's greenlet, which writes it before anything else. Everywhere else (threads,
the development server, TLS, HTTP/1.0, WebSocket) the stream's own greenlet or thread writes.
"""
from __future__ import annotations

import ssl
from typing import Any, Callable

from .events import Bundle

START_RESPONSE = "memory_events.start_response"


def remember_start_response(wsgi_app: Callable) -> Callable:
    """Wrap the WSGI app so a stream can find the server's response object."""
    def app(environ: dict, start_response: Callable) -> Any:
        environ[START_RESPONSE] = start_response
        return wsgi_app(environ, start_response)
    return app


class DirectWriter:
    """One SSE response's socket, written to without waiting, in gunicorn's chunked framing."""

    __slots__ = ("_sock", "_response", "unsent", "pending")

    def __init__(self, sock: Any, response: Any) -> None:
        self._sock = sock
        self._response = response
        self.unsent: bytes | memoryview = b""  # the tail of ``pending``'s chunk
        self.pending: Bundle | None = None

    @classmethod
    def for_request(cls, environ: dict) -> "DirectWriter | None":
        """A writer when gunicorn's gevent worker serves this request in plain HTTP, else
        ``None``. A middleware around the app that wraps ``start_response`` (as one that
        rewrites bodies must) hides gunicorn's response, and so turns this off too."""
        sock = environ.get("gunicorn.socket")
        if sock is None:
            return None  # not gunicorn
        from gevent import monkey
        from gunicorn.http.wsgi import Response
        response = getattr(environ.get(START_RESPONSE), "__self__", None)
        if not isinstance(response, Response) or isinstance(sock, ssl.SSLSocket):
            return None  # a wrapped start_response, or TLS, which only the server may write
        if not monkey.is_module_patched("socket"):
            return None  # real threads: a stream and the publisher may run at once
        return cls(sock, response)

    @property
    def usable(self) -> bool:
        """Headers sent, in chunked framing: the only framing this writer speaks."""
        return self._response.headers_sent and self._response.chunked

    def write(self, bundle: Bundle) -> bool:
        """Write ``bundle``, or as much as the socket takes now; ``False`` if writing fails."""
        data = bundle.sse_chunk
        try:
            sent = self._sock.send(data, 0, timeout=0.0)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        self._response.sent += len(bundle.sse)  # what gunicorn's access log counts
        if sent < len(data):
            self.unsent, self.pending = memoryview(data)[sent:], bundle
        return True

    def flush(self) -> Bundle | None:
        """Write what a direct write left over, waiting for the socket as long as it takes;
        returns the bundle that is then written in full, if there was one."""
        if not self.unsent:
            return None
        data, bundle = self.unsent, self.pending
        self.unsent, self.pending = b"", None
        self._sock.sendall(data)
        return bundle
