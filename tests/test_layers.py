"""The layers import only what they need: the client no server, the core and store no web
framework. Each check runs in a fresh interpreter, so nothing imported here can hide a leak."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

HEAVY = ("flask", "werkzeug", "flask_sock", "simple_websocket", "gevent", "prometheus_client",
         "numpy", "psycopg")


def loaded_after(statement: str, modules: tuple[str, ...] = HEAVY) -> set[str]:
    """Which of ``modules`` a fresh interpreter has loaded after running ``statement``."""
    script = (f"import sys\n{statement}\nimport json\n"
              f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("statement", [
    "import app", "from app.client import MemoryClient", "import app.client.cli",
    "import app.wire"])
def test_the_client_loads_no_server(statement):
    assert loaded_after(statement) == set()


def test_the_core_and_the_store_load_no_web_framework():
    loaded = loaded_after("import app.core.service, app.store.sqlite, app.store.postgres")
    assert loaded.isdisjoint({"flask", "werkzeug", "flask_sock", "simple_websocket", "gevent"})


def test_the_server_hooks_load_nothing_until_a_worker_runs():
    assert loaded_after("from app.server.hooks import *") == set()


def test_the_app_factory_is_found_lazily_and_builds_the_app():
    assert loaded_after("from app import create_app") >= {"flask"}


def test_the_server_loads_neither_the_client_nor_numpy_until_it_needs_them():
    assert loaded_after("import wsgi", ("numpy", "requests")) == set()
