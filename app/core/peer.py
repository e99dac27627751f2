"""What a server adapter can do for a stream's connection, when it can.

The core never imports a server: an adapter (``app.server``) hands a stream a ``Peer`` through
the request, and the stream uses whichever of its powers are there.
"""
from __future__ import annotations

from typing import Callable, Protocol

from .events import Bundle

#: where a WSGI server adapter leaves a request's ``Peer``
ENVIRON_KEY = "memory_events.peer"
#: where the app keeps the ``start_response`` it was called with, so an adapter can tell
#: whether a middleware stands between the server and the app
START_RESPONSE = "memory_events.start_response"


class DirectWrite(Protocol):
    """Writes a bundle to a waiting stream's connection from the publishing greenlet, without
    ever waiting; what the connection cannot take at once is left for the stream to flush."""

    @property
    def unsent(self) -> bool:
        """Part of the last bundle still waits to be written."""

    def write(self, bundle: Bundle) -> bool:
        """Write ``bundle``, or as much as the connection takes now; ``False`` if it failed."""

    def flush(self) -> Bundle | None:
        """Write what ``write`` left over, waiting as long as it takes; the bundle that is
        then written in full, if there was one."""


class Peer(Protocol):
    def direct_writer(self) -> DirectWrite | None:
        """A direct writer for this connection, if the server allows one now."""

    def watch_close(self, closed: Callable[[], None]) -> Callable[[], None]:
        """Call ``closed`` as soon as the client closes the connection; returns a function
        that stops watching."""
