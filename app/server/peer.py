"""What gunicorn's gevent worker lets a stream do with its own connection.

Under that worker every stream and the publisher share one thread, so a stream that waits can
be written to by the publisher directly, and the loop can watch the socket for the client's
close without a greenlet of its own. Elsewhere (threads, the development server) nothing here
is installed and streams do everything themselves.
"""
from __future__ import annotations

import socket
import ssl
from typing import Any, Callable

from ..core.peer import ENVIRON_KEY, START_RESPONSE
from .direct import DirectWriter

PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class GeventPeer:
    __slots__ = ("_sock", "_response", "_environ", "_watcher")

    def __init__(self, sock: Any, response: Any, environ: dict) -> None:
        self._sock = sock
        self._response = response
        self._environ = environ

    @property
    def _plain(self) -> bool:
        return not isinstance(self._sock, ssl.SSLSocket)

    def direct_writer(self) -> DirectWriter | None:
        """A writer for plain HTTP/1.1 chunked responses that gunicorn itself started; a
        middleware that wraps ``start_response`` (as one that rewrites bodies must) hides
        gunicorn's response, and so turns this off."""
        called_with = getattr(self._environ.get(START_RESPONSE), "__self__", None)
        if (called_with is not self._response or not self._plain
                or not (self._response.headers_sent and self._response.chunked)):
            return None
        return DirectWriter(self._sock, self._response)

    def watch_close(self, closed: Callable[[], None]) -> Callable[[], None]:
        """Call ``closed`` from the loop when the client's end of the connection closes."""
        if not self._plain:
            return _nothing
        import gevent
        self._watcher = watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        watcher.start(self._readable, closed)  # a bound method: an idle stream holds no closure
        return watcher.close

    def _readable(self, closed: Callable[[], None]) -> None:
        try:
            data = getattr(self._sock, "_sock", self._sock).recv(1, PEEK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._watcher.stop()  # gone, or it sent something and its close can no longer be seen
        if not data:
            closed()


def _nothing() -> None:
    """Nothing to stop."""


def with_peers(wsgi_app: Callable, busy: Callable[[Any], None]) -> Callable:
    """Wrap gunicorn's WSGI app so each request can find its ``GeventPeer``; ``busy`` hears of
    each connection that carries a request."""
    def app(environ: dict, start_response: Callable) -> Any:
        sock = environ["gunicorn.socket"]
        busy(sock)
        environ[ENVIRON_KEY] = GeventPeer(sock, getattr(start_response, "__self__", None),
                                          environ)
        return wsgi_app(environ, start_response)
    return app
