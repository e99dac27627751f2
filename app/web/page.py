"""The live page at ``/``: static HTML, CSS and JavaScript that watch the event stream.

The page is only files; it talks to the same ``/api/v1`` routes every other client uses, so it
needs no API key to load and holds no data of its own. Its assets live under ``assets/`` and
are linked relatively, so the page keeps working when the app is mounted under a prefix.
"""
from __future__ import annotations

from flask import Blueprint, Response

page = Blueprint("page", __name__, static_folder="static", static_url_path="/assets")

# Everything the page loads comes from this server; nothing inline, nothing from elsewhere.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")


@page.get("/")
def index() -> Response:
    return page.send_static_file("index.html")


@page.after_request
def _lock_down(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
