"""memory-events: scoped key/value memory for agents, with every change streamed live."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from .cli import events_cli
from .direct import remember_start_response
from .errors import error_response, register_error_handlers
from .events_api import events
from .memory_api import memory
from .ops import ops
from .page import page
from .security import install_cors
from .service import EXTENSION, Service
from .settings import Settings
from .store import StoreUnavailable

__all__ = ["create_app", "events", "memory", "ops", "page", "Service", "Settings"]

API_PREFIX = "/api/v1"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` takes the same names as the environment (``MEMORY_DB_URL``…)."""
    settings = Settings.load(config)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": settings.heartbeat_seconds,
                                         "max_message_size": 65536}
    app.extensions[EXTENSION] = Service(settings)
    register_error_handlers(app)
    app.register_error_handler(
        StoreUnavailable,
        lambda exc: error_response(503, "store_unavailable",
                                   "The store is unavailable; retry shortly.",
                                   {"Retry-After": "1"}))
    install_cors(app)
    app.register_blueprint(memory, url_prefix=API_PREFIX)
    app.register_blueprint(events, url_prefix=API_PREFIX)
    app.register_blueprint(ops)
    app.cli.add_command(events_cli)
    app.register_blueprint(page)
    app.wsgi_app = remember_start_response(app.wsgi_app)
    return app
