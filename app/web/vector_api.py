"""``/memory/vector…``: the control plane's vector memory."""
from __future__ import annotations

from flask import Blueprint

from .security import require_api_key

vectors = Blueprint("vectors", __name__)
vectors.before_request(require_api_key)
