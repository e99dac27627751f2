"""The Python client: one-line calls, typed errors, and a live stream that resumes by itself.

It needs ``requests`` and nothing of the server (``app.wire`` is plain constants), so
importing it loads no web framework, no gevent and no metrics.
"""
from .client import (ApiError, Backoff, BadRequest, ConnectionFailed, MemoryClient,
                     MemoryClientError, NotFound, StreamStatus, Subscription, Unauthorized,
                     Unavailable)
from .sse import SseFrame, SseParser

__all__ = ["ApiError", "Backoff", "BadRequest", "ConnectionFailed", "MemoryClient",
           "MemoryClientError", "NotFound", "SseFrame", "SseParser", "StreamStatus",
           "Subscription", "Unauthorized", "Unavailable"]
