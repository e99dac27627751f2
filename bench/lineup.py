"""The servers measured side by side: how to start each one, and how to tell it is ready.

Each start is fresh (new process, new database or Redis), so what one workload leaves behind,
such as streams the server has not yet noticed are gone, never weighs on the next.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .client import Loop, Writer
from .holders import layout
from .procs import ROOT, Process, free_port, tree

PYTHON = sys.executable
HEARTBEAT_SECONDS = "60"  # longer than any workload: no keepalive frame lands among the counted ones
START_SECONDS = 30.0
#: the checkout whose service is measured; another one (``--ours DIR``) compares a change
OURS_DIR = [ROOT]
WARMUP_WRITES = 4  # each on a new connection, so every worker of a small pool serves one


@dataclass
class Running:
    """One started server: its port, its processes, and how to check subscriptions."""
    port: int
    processes: list[Process]
    stream_path: str
    publish_path: str
    opens_at_once: bool
    subscribers: Callable[[], int] | None = None
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    #: a second server on the same database (``ours-pair``), for delivery across processes
    other_port: int | None = None
    #: what else to stop, after the processes (a private PostgreSQL cluster)
    cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def pids(self) -> list[int]:
        """Every process serving, Redis included."""
        return [pid for process in self.processes for pid in tree(process.pid)]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for step in self.cleanup:
            step()
        if self.workdir is not None:
            self.workdir.cleanup()


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    start: Callable[[Path, set[int] | None], Running]
    #: the only workloads it runs (``None``: every one that applies)
    workloads: tuple[str, ...] | None = None
    #: kept to the servers' cores; several workers pinned to one core could only take turns
    pinned: bool = True


def _publish_once(running: Running, port: int) -> bool:
    loop = Loop()
    writer = Writer(loop, port, running.publish_path, key="warmup")
    writer.post(0)
    loop.run(lambda: not writer.busy, time.monotonic() + 2)
    loop.close()
    return writer.completed == 1


def _wait_ready(running: Running) -> None:
    """Until publishes succeed on every port: the app is loaded and its store (or Redis)
    answers."""
    for port in (running.port, running.other_port):
        if port is None:
            continue
        deadline, warm = time.monotonic() + START_SECONDS, 0
        while warm < WARMUP_WRITES:
            for process in running.processes:
                if not process.alive():
                    running.stop()
                    raise RuntimeError(f"{process.args[:4]} exited with "
                                       f"{process.popen.returncode}")
            if time.monotonic() > deadline:
                running.stop()
                raise RuntimeError(f"server on port {port} not ready after {START_SECONDS}s")
            if _publish_once(running, port):
                warm += 1
            else:
                time.sleep(0.05)


#: how ``ours-100k`` is sized (``python -m bench`` sets it from ``--huge-streams``): workers of
#: at most 17,000 connections each, under the file limit with room
HUGE = [layout(100_000)]
#: keepalives often enough to watch them flow within the run
HUGE_HEARTBEAT_SECONDS = 20.0
HUGE_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


def _ours_huge(logs: Path, cpus: set[int] | None) -> Running:
    size = HUGE[0]
    env = {"MEMORY_MAX_STREAMS": str(size.per_process),
           "MEMORY_HEARTBEAT_SECONDS": f"{HUGE_HEARTBEAT_SECONDS:g}"}
    args = ["--worker-connections", str(size.per_process), "--backlog", str(HUGE_BACKLOG)]
    return _ours(size.workers, env, "ours-100k", args)(logs, cpus)


def _ours(workers: int, extra: dict[str, str] | None = None, name: str = "",
          args: list[str] | None = None) -> Callable[[Path, set[int] | None], Running]:
    def start(logs: Path, cpus: set[int] | None) -> Running:
        port, workdir = free_port(), tempfile.TemporaryDirectory(prefix="bench-memory-")
        env = {"MEMORY_DB_URL": f"sqlite:///{workdir.name}/memory.db",
               "MEMORY_HEARTBEAT_SECONDS": HEARTBEAT_SECONDS,
               # The 10,000-stream workload opens its 200 timed streams on top of 10,000 held.
               "MEMORY_MAX_STREAMS": "11000", **(extra or {})}
        process = Process([PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app",
                           "-b", f"127.0.0.1:{port}", "-w", str(workers), *(args or [])],
                          env, logs / f"{name or f'ours-{workers}w'}.log", cpus,
                          cwd=OURS_DIR[0])
        running = Running(port, [process], "/api/v1/memory/events/sse", "/api/v1/memory/set",
                          opens_at_once=True, workdir=workdir)
        _wait_ready(running)
        return running
    return start


def _ours_pair(store: str) -> Callable[[Path, set[int] | None], Running]:
    """Two servers of 1 worker each (two gunicorn masters: two processes, as two hosts would
    be) on one database: a SQLite file, or a private PostgreSQL cluster (``tests.conftest``'s,
    which runs without fsync)."""
    def start(logs: Path, cpus: set[int] | None) -> Running:
        workdir = tempfile.TemporaryDirectory(prefix="bench-memory-")
        cleanup: list[Callable[[], None]] = []
        if store == "sqlite":
            db_url = f"sqlite:///{workdir.name}/memory.db"
        else:
            from .servers_ours import postgres_cluster
            cluster = postgres_cluster()
            cleanup.append(cluster.destroy)
            cluster.execute("CREATE DATABASE bench")
            db_url = cluster.url("bench")
        name = f"ours-pair-{store}"
        ports = [free_port(), free_port()]
        processes = [Process([PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app",
                              "-b", f"127.0.0.1:{port}", "-w", "1"],
                             {"MEMORY_DB_URL": db_url,
                              "MEMORY_HEARTBEAT_SECONDS": HEARTBEAT_SECONDS},
                             logs / f"{name}-{n}.log", cpus, cwd=OURS_DIR[0])
                     for n, port in enumerate(ports)]
        running = Running(ports[0], processes, "/api/v1/memory/events/sse", "/api/v1/memory/set",
                          opens_at_once=True, workdir=workdir, other_port=ports[1],
                          cleanup=cleanup)
        _wait_ready(running)
        return running
    return start


def _flask_sse(logs: Path, cpus: set[int] | None) -> Running:
    import redis
    redis_port, port = free_port(), free_port()
    redis_server = Process(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--maxclients", "15000",
                            "--protected-mode", "yes"], {}, logs / "redis.log", cpus)
    app = Process([PYTHON, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                   "--worker-connections", "20000", "--no-control-socket", "-b", f"127.0.0.1:{port}",
                   "bench.servers.flask_sse_app:app"],
                  {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}, logs / "flask-sse.log", cpus)
    client = redis.Redis(host="127.0.0.1", port=redis_port)

    def subscribers() -> int:
        return int(client.pubsub_numsub("sse")[0][1])

    running = Running(port, [redis_server, app], "/stream", "/publish", opens_at_once=False,
                      subscribers=subscribers)
    _wait_ready(running)
    return running


def _starlette(logs: Path, cpus: set[int] | None) -> Running:
    port = free_port()
    process = Process([PYTHON, "-m", "uvicorn", "bench.servers.starlette_app:app",
                       "--host", "127.0.0.1", "--port", str(port), "--backlog", "4096",
                       "--log-level", "warning", "--no-access-log"],
                      {"SSE_PING_SECONDS": HEARTBEAT_SECONDS}, logs / "sse-starlette.log", cpus)
    running = Running(port, [process], "/stream", "/publish", opens_at_once=True)
    _wait_ready(running)
    return running


def _bare(entry: str, name: str) -> Callable[[Path, set[int] | None], Running]:
    def start(logs: Path, cpus: set[int] | None) -> Running:
        port = free_port()
        process = Process([PYTHON, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                           "--worker-connections", "20000", "--backlog", "4096",
                           "--no-control-socket",
                           "-b", f"127.0.0.1:{port}", f"bench.servers.bare:{entry}"],
                          {}, logs / f"{name}.log", cpus)
        running = Running(port, [process], "/stream", "/publish", opens_at_once=True)
        _wait_ready(running)
        return running
    return start


def _raw(logs: Path, cpus: set[int] | None) -> Running:
    port = free_port()
    process = Process([PYTHON, "-m", "bench.servers.raw_gevent", str(port)], {},
                      logs / "raw-gevent.log", cpus)
    running = Running(port, [process], "/stream", "/publish", opens_at_once=True)
    _wait_ready(running)
    return running


SERVERS = {server.name: server for server in (
    Server("ours-1w", "this service, 1 worker", _ours(1)),
    Server("ours-2w", "this service, 2 workers, on every core", _ours(2), pinned=False),
    Server("raw", "raw gevent", _raw),
    Server("starlette", "sse-starlette + uvicorn", _starlette),
    Server("flask-sse", "flask-sse + Redis", _flask_sse),
    Server("bare-wsgi", "control: bare WSGI app, gunicorn gevent",
           _bare("wsgi", "bare-wsgi")),
    Server("bare-flask", "control: bare Flask app, gunicorn gevent",
           _bare("flask_app", "bare-flask")),
    Server("ours-pair", "this service: 2 servers × 1 worker on one SQLite file",
           _ours_pair("sqlite"), workloads=("crossproc",)),
    Server("ours-pair-pg", "this service: 2 servers × 1 worker on one PostgreSQL database",
           _ours_pair("postgres"), workloads=("crossproc",)),
    # last: what its 100,000 connections leave behind (TIME_WAIT, slab) weighs on no peer
    Server("ours-100k", "this service, workers sized for 100,000 streams", _ours_huge,
           workloads=("hold100k",)),
)}
