"""The layers import only what they need: the client and its terminal tools nothing of the
server, the core and the store no web framework. Each check runs in a fresh interpreter, so
nothing imported here can hide a leak. The README's module table names every module there is."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from .conftest import ROOT

HEAVY = ("flask", "werkzeug", "flask_sock", "simple_websocket", "gevent", "prometheus_client",
         "numpy", "psycopg")
WEB = ("flask", "werkzeug", "flask_sock", "simple_websocket", "gevent")
SERVER_LAYERS = ("app.core", "app.store", "app.web", "app.server")
COMMANDS = ("tail", "watch", "set", "get", "delete", "list")
#: what ``-X importtime`` writes for each module imported: the last column is its name
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", re.MULTILINE)


def fresh(script: str) -> Any:
    """What a fresh interpreter prints last, as JSON, after running ``script``."""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def loaded_after(statement: str, modules: tuple[str, ...] = HEAVY) -> set[str]:
    """Which of ``modules`` a fresh interpreter has loaded after running ``statement``."""
    return set(fresh(f"import sys\n{statement}\nimport json\n"
                     f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))"))


def under(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    """The names in ``modules`` that are one of ``packages`` or inside one."""
    return {name for name in modules
            if any(name == package or name.startswith(package + ".") for package in packages)}


@pytest.mark.parametrize("statement", [
    "import app", "from app.client import MemoryClient", "import app.client.cli",
    "import app.client.__main__", "import app.wire"])
def test_the_client_loads_no_server(statement):
    assert loaded_after(statement) == set()


def test_every_client_module_loads_nothing_of_the_server_layers():
    loaded = fresh(
        "import importlib, json, pkgutil, sys\nimport app.client\n"
        "names = [m.name for m in pkgutil.walk_packages(app.client.__path__, 'app.client.')]\n"
        "for name in names:\n    importlib.import_module(name)\n"
        "print(json.dumps([names, sorted(sys.modules)]))")
    names, modules = loaded
    assert {"app.client.client", "app.client.cli", "app.client.__main__"} <= set(names)
    assert under(set(modules), SERVER_LAYERS) == set()


def test_python_m_app_client_offers_the_tools_without_loading_the_server():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "app.client", "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m app.client" in done.stdout
    listed = re.findall(r"^  (\w+)  ", done.stdout, re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
    imported = set(IMPORTED.findall(done.stderr))
    assert "app.client.cli" in imported
    assert under(imported, HEAVY) == set()
    assert under(imported, SERVER_LAYERS) == set()


def test_no_module_of_the_core_or_the_store_loads_a_web_framework():
    """Each module in turn, so the first that loads one is named."""
    names, leaks = fresh(
        "import importlib, json, pkgutil, sys\nimport app.core, app.store\n"
        f"web = {WEB!r}\n"
        "names = [m.name for package in (app.core, app.store)\n"
        "         for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.')]\n"
        "leaks = {}\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "    found = [m for m in web if m in sys.modules]\n"
        "    if found:\n        leaks[name] = found\n        break\n"
        "print(json.dumps([names, leaks]))")
    files = {f"app.{path.parent.name}.{path.stem}"
             for layer in ("core", "store") for path in (ROOT / "app" / layer).glob("*.py")
             if path.stem != "__init__"}
    assert set(names) == files
    assert leaks == {}


def test_the_server_hooks_load_nothing_until_a_worker_runs():
    assert loaded_after("from app.server.hooks import *") == set()


def test_the_package_names_the_factory_and_the_blueprints():
    kinds = fresh(
        "import json\n"
        "from app import create_app, init_app, memory, events, vectors, ops, page\n"
        "from app import Service, Settings\n"
        "print(json.dumps([type(b).__name__ for b in (memory, events, vectors, ops, page)]\n"
        "                 + [callable(f) for f in (create_app, init_app, Service, Settings)]))")
    assert kinds == ["Blueprint"] * 5 + [True] * 4


def test_the_app_factory_is_found_lazily_and_builds_the_app():
    assert loaded_after("from app import create_app") >= {"flask"}


def test_the_server_loads_neither_the_client_nor_numpy_until_it_needs_them():
    assert loaded_after("import wsgi", ("numpy", "requests")) == set()


def test_the_readme_names_every_module():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    named = {name if name.startswith("app/") else "app/" + name
             for name in re.findall(r"`((?:app/)?[\w/]+\.py)`", table)}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "app").rglob("*.py")}
    assert named == modules
