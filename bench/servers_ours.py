"""What ``bench.cost``, ``bench.vectors`` and ``bench.state`` share: fresh databases on both
stores, this service under gunicorn, its worker processes, a ``/healthz`` ticker in its own
process, a keep-alive HTTP connection with timing, and the table they print.

Everything binds to 127.0.0.1 on free ports, every wait has a deadline, and everything started
here is stopped when the ``ExitStack`` it was registered on closes. ``python -m
bench.servers_ours ticker PORT`` is the ticker's own process (the benchmarks start it).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Sequence

from tests.conftest import POSTGRES_BIN, PostgresCluster, Server

from .procs import ROOT, rss_kb, tree
from .stats import percentile

LOGS = ROOT / "bench" / "results" / "logs"
STORES = ("sqlite", "postgres")
#: how often the ticker asks ``/healthz``
TICK_SECONDS = 0.02


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def postgres_cluster() -> PostgresCluster:
    """A private PostgreSQL cluster (the tests', on a free loopback port), started; the caller
    destroys it."""
    if POSTGRES_BIN is None:
        raise SystemExit("no PostgreSQL server binaries (initdb) found: "
                         "apt-get install postgresql, or leave PostgreSQL out")
    cluster = PostgresCluster(POSTGRES_BIN)
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


class Databases:
    """A fresh, empty database per call: a SQLite file in a temporary directory, or a new
    database on one private PostgreSQL cluster, started on first use."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.directory = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="bench-ours-")))
        self.cluster: PostgresCluster | None = None

    def url(self, store: str) -> str:
        if store == "sqlite":
            return f"sqlite:///{self.directory}/{uuid.uuid4().hex[:8]}.db"
        if self.cluster is None:
            self.cluster = postgres_cluster()
            self.stack.callback(self.cluster.destroy)
        name = f"bench_{uuid.uuid4().hex[:12]}"
        self.cluster.execute(f"CREATE DATABASE {name}")
        return self.cluster.url(name)

    def execute(self, url: str, sql: str) -> None:
        """One statement outside any transaction (``VACUUM``), on PostgreSQL only."""
        if url.startswith("postgresql"):
            import psycopg
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql)


def start_server(stack: ExitStack, db_url: str, name: str, workers: int = 1,
                 env: dict[str, str] | None = None) -> Server:
    """``gunicorn -c gunicorn.conf.py wsgi:app -w N`` from the checkout, default settings plus
    ``env``; its output goes to ``bench/results/logs/NAME.log``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    log.write_bytes(b"")
    server = Server(db_url, env=env, workers=workers, log_path=log)
    stack.callback(server.kill)
    server.start()
    deadline = time.monotonic() + 30
    while len(worker_pids(server)) < workers:  # /readyz answers once one worker is up
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {workers} workers never came up; see {log}")
        time.sleep(0.05)
    return server


def stop_server(server: Server) -> None:
    server.stop(timeout=15)


def worker_pids(server: Server) -> list[int]:
    """The gunicorn workers: the master's children."""
    assert server.process is not None
    master = server.process.pid
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def worker_rss_kb(server: Server) -> int:
    return rss_kb(worker_pids(server))


def server_rss_kb(server: Server) -> int:
    assert server.process is not None
    return rss_kb(tree(server.process.pid))


# -- HTTP ----------------------------------------------------------------------------------

class Http:
    """One keep-alive connection; each call returns (status, headers, body, seconds), the time
    from just before the request is written to the last byte of the answer."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, bytes, float]:
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
                self.conn.connect()
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.monotonic()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()  # a keep-alive connection the server closed: once more, fresh
                if attempt:
                    raise
                continue
            elapsed = time.monotonic() - started
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data, \
                elapsed
        raise AssertionError("unreachable")

    def post_json(self, path: str, value: Any, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict, bytes, float]:
        return self.request("POST", path, json.dumps(value).encode(), headers)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def put(http: Http, key: str, data: Any, **extra: Any) -> dict:
    status, _, body, _ = http.post_json("/api/v1/memory/set", {"key": key, "data": data, **extra})
    if status != 200:
        raise AssertionError(f"set {key}: {status} {body[:200]!r}")
    return json.loads(body)


def raw_stream(port: int, path: str, headers: dict[str, str] | None = None,
               rcvbuf: int | None = None, timeout: float = 30.0) -> socket.socket:
    """A socket with a ``GET path`` written on it, nothing read yet."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_until(sock: socket.socket, needle: bytes, deadline: float,
               buffer: bytes = b"") -> bytes:
    """Read until ``needle`` has arrived (the whole buffer is returned), or fail at
    ``deadline``."""
    while needle not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{needle!r} did not arrive in time")
        sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"the stream ended before {needle!r}")
        buffer += chunk
    return buffer


# -- the ticker ----------------------------------------------------------------------------

class Ticker:
    """``GET /healthz`` every 20 ms on one keep-alive connection, from a process of its own so
    the benchmark's client threads never delay it. It notes when each answer arrived; the gap
    between two answers is how long the worker that serves it could not answer."""

    def __init__(self, port: int) -> None:
        self.samples: list[tuple[float, float]] = []  # (sent, answered), time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.servers_ours", "ticker", str(port)], cwd=ROOT,
            stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while len(self.samples) < 5:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("the /healthz ticker never got an answer")
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sent, answered = line.split()
            self.samples.append((float(sent), float(answered)))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)

    def gap(self, start: float, end: float) -> tuple[float, float]:
        """The longest time between two answers, and the longest answer, of the pings that
        were in flight or answered between ``start`` and ``end``, in ms."""
        samples = list(self.samples)
        worst_gap = worst_answer = 0.0
        for (_, before), (sent, answered) in zip(samples, samples[1:]):
            if answered < start or before > end:
                continue
            worst_gap = max(worst_gap, answered - before)
            worst_answer = max(worst_answer, answered - sent)
        return worst_gap * 1000, worst_answer * 1000


def _tick(port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    http = Http(port, timeout=60)
    start, n = time.monotonic(), 0
    while not stop.is_set():
        n += 1
        wait = start + n * TICK_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent = time.monotonic()
        try:
            status, _, _, _ = http.request("GET", "/healthz")
        except OSError:
            http.close()
            continue
        answered = time.monotonic()
        if status == 200:
            print(f"{sent:.6f} {answered:.6f}", flush=True)
        if answered - start > (n + 1) * TICK_SECONDS:  # late: do not send a burst to catch up
            start, n = answered, 0


# -- results -------------------------------------------------------------------------------

def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.2f}"


def p(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q)


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= limit else "not met"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, results: dict) -> Path:
    path = ROOT / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    return path


def commit() -> str:
    """The commit measured, and whether the service's code differs from it (a copy made by
    ``git archive`` has no repository: it names its commit in ``BENCH_COMMIT``)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "app", "wsgi.py", "gunicorn.conf.py")
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return head + (" with uncommitted changes in app/" if changed else "")


def header(title: str) -> str:
    return (f"{title} — commit {commit()}, {os.cpu_count()} cores, "
            f"Python {sys.version.split()[0]}, load {load()}")


def run_stores(name: str, title: str, note: str, stores: list[str], args: argparse.Namespace,
               run_store: Any, summarise: Any, **extra: Any) -> None:
    """Run ``run_store`` on each store with fresh databases, then print the table and save it
    as ``name`` (``extra`` goes into the saved numbers and to ``summarise``)."""
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        dbs = Databases(stack)
        for store in stores:
            results[store] = run_store(store, args, dbs, stack)
    print(f"\nload after the run: {load()}\n")
    print(title)
    print(note + "\n")
    print(summarise(results, args, **extra))
    path = save(name, {"title": title, "args": vars(args), "results": results, **extra})
    print(f"\nnumbers: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description="the /healthz ticker's process")
    parser.add_argument("role", choices=["ticker"])
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    _tick(args.port)


if __name__ == "__main__":
    main()
