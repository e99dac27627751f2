"""Where a request finds the service its app was built with."""
from __future__ import annotations

from flask import current_app

from ..core.service import Service

EXTENSION = "memory_events"


def current_service() -> Service:
    return current_app.extensions[EXTENSION]
