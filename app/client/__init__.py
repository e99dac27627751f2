"""The Python client: one-line calls, typed errors, and a live stream that resumes by itself.

It needs ``requests`` and nothing of the server (``app.wire`` is plain constants), so
importing it loads no web framework, no gevent and no metrics.
"""
from .client import MemoryClient
from .errors import (ApiError, BadRequest, ConnectionFailed, Forbidden, MemoryClientError,
                     NotFound, Unauthorized, Unavailable, VersionConflict)
from .sse import SseFrame, SseParser
from .stream import Backoff, StreamStatus, Subscription
from .watch import Watch

__all__ = ["ApiError", "Backoff", "BadRequest", "ConnectionFailed", "Forbidden", "MemoryClient",
           "MemoryClientError", "NotFound", "SseFrame", "SseParser", "StreamStatus",
           "Subscription", "Unauthorized", "Unavailable", "VersionConflict", "Watch"]
