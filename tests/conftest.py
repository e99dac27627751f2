"""Fixtures for both tiers of the suite.

* In-process: ``app``/``client`` build the app with ``create_app`` on an in-memory SQLite store
  and call it through Flask's test client: validation, limits, error shapes and everything
  else that needs no socket.
* Real servers: ``server``/``server_factory`` start gunicorn on a free loopback port for real
  clients: streams, disconnects, shutdown, durability, several workers and hosts, the browser.

``db_url`` is a fresh SQLite database unless a test asks for every store with ``@every_store``
(or names one), in which case PostgreSQL runs too, on a private cluster started once.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.web.context import EXTENSION

ROOT = Path(__file__).resolve().parent.parent
#: no test may hang the suite: one that waits this long has failed
TEST_TIMEOUT_SECONDS = 120
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_SECONDS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> object:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Server:
    """A gunicorn process serving ``wsgi:app`` with its own settings and database."""

    def __init__(self, db_url: str, env: dict[str, str] | None = None, workers: int = 1,
                 worker_class: str = "gevent", port: int | None = None,
                 log_path: Path | None = None) -> None:
        self.db_url = db_url
        self.env = dict(env or {})
        self.workers = workers
        self.worker_class = worker_class
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = {**os.environ, "MEMORY_DB_URL": self.db_url, **self.env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        args = GUNICORN + ["-b", f"127.0.0.1:{self.port}", "-w", str(self.workers),
                           "-k", self.worker_class]
        if self.worker_class == "gthread":
            args += ["--threads", "32"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, timeout=30, message=f"server on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}; "
                                 f"log: {self.log_path}")
        try:
            return requests.get(self.url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the server to exit; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group: master and every worker at once."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from ``/metrics`` (0 when absent)."""
        return scrape(self.url, name, **labels)

    def children(self) -> list[int]:
        """The pids of gunicorn's worker processes now: its master's children."""
        assert self.process is not None
        pid = self.process.pid
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def worker_pids(self) -> list[int]:
        """The workers' pids, once all of them started."""
        return wait_until(lambda: len(pids := self.children()) == self.workers and pids,
                          message="every worker to start")  # type: ignore[return-value]

    def worker_of(self, client_port: int, pids: list[int]) -> int | None:
        """Which of ``pids`` holds the server end of the loopback connection from
        ``client_port``: the one whose descriptors include the socket inode ``/proc/net/tcp``
        lists for it (Linux). ``None`` while no worker has accepted it yet."""
        ends = (f"0100007F:{self.port:04X}", f"0100007F:{client_port:04X}")
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == ends:
                target = f"socket:[{fields[9]}]"
                break
        else:
            return None
        for pid in pids:
            for descriptor in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(descriptor) == target:
                        return pid
                except OSError:  # closed since it was listed
                    continue
        return None


def sample(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus text (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                     if labels else "") + " "
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(base_url: str, name: str, **labels: str) -> float:
    """One sample from the ``/metrics`` of the service at ``base_url`` (0 when absent)."""
    return sample(requests.get(base_url + "/metrics", timeout=5).text, name, **labels)


def _postgres_bin() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are: on the PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    debian = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    debian.sort(key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit()
                else 0)
    return debian[-1] if debian else None


POSTGRES_BIN = _postgres_bin()


def _postgres_available() -> bool:
    """CI sets ``MEMORY_TEST_REQUIRE_POSTGRES=1`` so a missing server fails the run instead of
    quietly proving everything on SQLite alone."""
    if POSTGRES_BIN is None and os.environ.get("MEMORY_TEST_REQUIRE_POSTGRES") == "1":
        raise RuntimeError("MEMORY_TEST_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries "
                           "(initdb) were found; install them (Debian: apt-get install postgresql)")
    return POSTGRES_BIN is not None


STORES = ["sqlite"] + (["postgres"] if _postgres_available() else [])
#: run a test on every store the machine has
every_store = pytest.mark.parametrize("db_url", STORES, indirect=True)
#: run a test on PostgreSQL only
postgres_only = pytest.mark.parametrize("db_url", STORES[1:], indirect=True)


class PostgresCluster:
    """A private PostgreSQL server in a temporary directory, on a free loopback port.

    Its databases collate text in natural-language order (ICU, as a production server's locale
    usually does), so nothing passes here only because the test server happens to sort bytes.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.directory = Path(tempfile.mkdtemp(prefix="memory-events-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_owner(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--locale=C", "--locale-provider=icu",
                        "--icu-locale=en-US", "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.port}\n"
                       "listen_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.directory}'\n"
                       "max_connections = 300\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _as_owner(self, args: list[str], check: bool = True) -> None:
        runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = runuser + [str(self.bin_dir / args[0])] + args[1:]
        result = subprocess.run(command, cwd=self.directory, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._as_owner(["pg_ctl", "-D", str(self.data), "-l", str(self.directory / "server.log"),
                        "-w", "start"])

    def stop(self, check: bool = True) -> None:
        self._as_owner(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"], check)

    def destroy(self) -> None:
        """Stop the server if it runs and remove every file it had."""
        self.stop(check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> list[tuple]:
        """One statement on the maintenance database, outside any transaction."""
        import psycopg
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Started once, by the first test that needs PostgreSQL."""
    assert POSTGRES_BIN is not None
    cluster = PostgresCluster(POSTGRES_BIN)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test: SQLite, or the store the test is parametrized
    with."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path}/memory.db"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = f"test_{uuid.uuid4().hex}"
    cluster.execute(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    cluster.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def server_factory(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on the test's database; every one is stopped when the test ends."""
    started: list[Server] = []

    def start(**kwargs: object) -> Server:
        kwargs.setdefault("db_url", db_url)
        kwargs.setdefault("log_path", tmp_path / f"server-{len(started)}.log")
        server = Server(**kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})


@pytest.fixture
def app_factory() -> Iterator[Callable[..., Flask]]:
    """Build in-process apps (in-memory SQLite unless ``MEMORY_DB_URL`` is given); each one's
    streams and log follower are stopped when the test ends."""
    built: list[Flask] = []

    def build(**config: str) -> Flask:
        app = create_app({"MEMORY_DB_URL": "sqlite:///:memory:", **config})
        built.append(app)
        return app

    yield build
    for app in built:
        app.extensions[EXTENSION].close()


@pytest.fixture
def client(app_factory: Callable[..., Flask]) -> FlaskClient:
    return app_factory().test_client()
