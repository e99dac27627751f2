"""The Python client: one-line calls, typed errors, and a live stream that resumes by itself.

It needs ``requests`` and nothing of the server (``app.wire`` is plain constants), so
importing it loads no web framework, no gevent and no metrics. Names load when first used, so
the server, which registers the CLI in ``app.client.cli``, does not load ``requests``.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {"MemoryClient": "client", "Backoff": "stream", "StreamStatus": "stream",
          "Subscription": "stream", "Watch": "watch", "SseFrame": "sse", "SseParser": "sse",
          **dict.fromkeys(("ApiError", "BadRequest", "ConnectionFailed", "Forbidden",
                           "MemoryClientError", "NotFound", "Unauthorized", "Unavailable",
                           "VersionConflict"), "errors")}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'app.client' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
