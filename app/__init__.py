"""memory-events: scoped key/value memory for agents, with every change streamed live.

Importing ``app`` loads nothing heavy: the web app, its blueprints and the server hooks are
loaded when first named, so ``app.client`` stays a client that needs only ``requests``.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["create_app", "init_app", "memory", "events", "vectors", "ops", "page", "Service",
           "Settings"]

_WHERE = {"create_app": "app.web", "init_app": "app.web", "memory": "app.web.memory_api",
          "events": "app.web.events_api", "vectors": "app.web.vector_api", "ops": "app.web.ops",
          "page": "app.web.page", "Service": "app.core.service", "Settings": "app.settings"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
