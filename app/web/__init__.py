"""The web layer: the app factory, and the blueprints that turn HTTP into service calls.

``create_app`` builds a whole app. ``init_app`` installs the service, its error handling,
origin checks and blueprints into an app of your own.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from flask import Flask

# The terminal tools, offered as ``flask --app wsgi events``: they cost only click, which Flask
# loads anyway; the client under them loads when a command runs.
from ..client.cli import events_cli
from ..core.peer import START_RESPONSE
from ..core.service import Service
from ..settings import Settings
from ..wire import API_PREFIX, WS_PROTOCOL
from . import security
from .context import EXTENSION
from .errors import register_error_handlers
from .events_api import events
from .memory_api import memory
from .ops import ops
from .page import page
from .vector_api import vectors

__all__ = ["create_app", "init_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` takes the same names as the environment (``MEMORY_DB_URL``…)."""
    app = Flask(__name__, static_folder=None)
    init_app(app, config)
    return app


def init_app(app: Flask, config: Mapping[str, Any] | None = None) -> Service:
    """Install the service into ``app``: its routes under ``/api/v1``, the operations routes,
    the live page at ``/``, error handling and origin checks for the whole app."""
    settings = Settings.load(config)
    service = Service(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": settings.heartbeat_seconds,
                                         "max_message_size": 65536,
                                         "subprotocols": [WS_PROTOCOL]}
    app.extensions[EXTENSION] = service
    register_error_handlers(app)
    security.install(app, settings.cors_origins)
    for blueprint in (memory, vectors, events):
        app.register_blueprint(blueprint, url_prefix=API_PREFIX)
    app.register_blueprint(ops)
    app.register_blueprint(page)
    app.cli.add_command(events_cli)
    app.wsgi_app = _remember_start_response(app.wsgi_app)  # type: ignore[method-assign]
    return service


def _remember_start_response(wsgi_app: Callable) -> Callable:
    def remembering(environ: dict, start_response: Callable) -> Any:
        environ[START_RESPONSE] = start_response
        return wsgi_app(environ, start_response)
    return remembering
