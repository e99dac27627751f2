"""Writing a change straight to a waiting SSE stream's socket, from the greenlet that publishes it.

Waking a stream's greenlet to write one change costs more than the write: with a thousand
subscribers, a change then reaches the last of them only after a thousand switches, and writes
answered in the meantime pile up behind it. So under gunicorn's gevent worker, while a stream
waits with nothing queued, the broker writes each new bundle to its socket itself, as the HTTP
chunk gunicorn would have sent, without ever waiting: what the socket cannot take at once is
left for the stream's greenlet, which writes it before anything else. Everywhere else (threads,
the development server, HTTP/1.0) the stream's own greenlet or thread writes everything.
"""
from __future__ import annotations

import socket
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

    __slots__ = ("_sock", "_response", "unsent")

    def __init__(self, sock: Any, response: Any) -> None:
        self._sock = sock
        self._response = response
        self.unsent = b""

    @classmethod
    def for_request(cls, environ: dict) -> "DirectWriter | None":
        """A writer when the server is gunicorn on gevent, else ``None``."""
        from gevent import monkey
        sock = environ.get("gunicorn.socket")
        response = getattr(environ.get(START_RESPONSE), "__self__", None)
        if sock is None or not hasattr(response, "chunked"):
            return None  # not gunicorn
        if not monkey.is_module_patched("socket"):
            return None  # real threads: a stream and the publisher may run at once
        return cls(sock, response)

    @property
    def usable(self) -> bool:
        """Headers sent, in chunked framing: the only framing this writer speaks."""
        return self._response.headers_sent and self._response.chunked

    def write(self, bundle: Bundle) -> bool:
        """Write ``bundle`` or as much as the socket takes now; ``False`` if it fails."""
        data = bundle.sse_chunk
        try:
            sent = self._sock.send(data, socket.MSG_NOSIGNAL, timeout=0.0)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        self._response.sent += len(bundle.sse)  # what gunicorn's access log counts
        self.unsent = data[sent:]
        return True

    def flush(self) -> None:
        """Write what a direct write left over, waiting for the socket as long as it takes."""
        if self.unsent:
            data, self.unsent = self.unsent, b""
            self._sock.sendall(data)
