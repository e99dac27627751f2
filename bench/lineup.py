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

    def pids(self) -> list[int]:
        """Every process serving, Redis included."""
        return [pid for process in self.processes for pid in tree(process.pid)]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.workdir is not None:
            self.workdir.cleanup()


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    start: Callable[[Path, set[int] | None], Running]
    #: the only workloads it runs (``None``: every one that applies)
    workloads: tuple[str, ...] | None = None


def _publish_once(running: Running) -> bool:
    loop = Loop()
    writer = Writer(loop, running.port, running.publish_path, key="warmup")
    writer.post(0)
    loop.run(lambda: not writer.busy, time.monotonic() + 2)
    loop.close()
    return writer.completed == 1


def _wait_ready(running: Running) -> None:
    """Until publishes succeed: the app is loaded and its store (or Redis) answers."""
    deadline, warm = time.monotonic() + START_SECONDS, 0
    while time.monotonic() < deadline:
        for process in running.processes:
            if not process.alive():
                running.stop()
                raise RuntimeError(f"{process.args[:4]} exited with {process.popen.returncode}")
        if _publish_once(running):
            warm += 1
            if warm == WARMUP_WRITES:
                return
        else:
            time.sleep(0.05)
    running.stop()
    raise RuntimeError(f"server on port {running.port} not ready after {START_SECONDS}s")


#: the server for 100,000 streams: 2 workers of 60,000 connections each, and keepalives often
#: enough to watch them flow
HUGE_ENV = {"MEMORY_MAX_STREAMS": "60000", "MEMORY_HEARTBEAT_SECONDS": "20",
            "GUNICORN_CMD_ARGS": "--worker-connections 60000 --backlog 4096"}


def _ours(workers: int, extra: dict[str, str] | None = None,
          name: str = "") -> Callable[[Path, set[int] | None], Running]:
    def start(logs: Path, cpus: set[int] | None) -> Running:
        port, workdir = free_port(), tempfile.TemporaryDirectory(prefix="bench-memory-")
        env = {"MEMORY_DB_URL": f"sqlite:///{workdir.name}/memory.db",
               "MEMORY_HEARTBEAT_SECONDS": HEARTBEAT_SECONDS,
               # The 10,000-stream workload opens its 200 timed streams on top of 10,000 held.
               "MEMORY_MAX_STREAMS": "11000", **(extra or {})}
        process = Process([PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app",
                           "-b", f"127.0.0.1:{port}", "-w", str(workers)],
                          env, logs / f"{name or f'ours-{workers}w'}.log", cpus,
                          cwd=OURS_DIR[0])
        running = Running(port, [process], "/api/v1/memory/events/sse", "/api/v1/memory/set",
                          opens_at_once=True, workdir=workdir)
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
                   "--worker-connections", "20000", "-b", f"127.0.0.1:{port}",
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


def _raw(logs: Path, cpus: set[int] | None) -> Running:
    port = free_port()
    process = Process([PYTHON, "-m", "bench.servers.raw_gevent", str(port)], {},
                      logs / "raw-gevent.log", cpus)
    running = Running(port, [process], "/stream", "/publish", opens_at_once=True)
    _wait_ready(running)
    return running


SERVERS = {server.name: server for server in (
    Server("ours-1w", "this service, 1 worker", _ours(1)),
    Server("ours-2w", "this service, 2 workers", _ours(2)),
    Server("ours-100k", "this service, 2 workers sized for 100,000 streams",
           _ours(2, HUGE_ENV, "ours-100k"), workloads=("hold100k",)),
    Server("raw", "raw gevent", _raw),
    Server("starlette", "sse-starlette + uvicorn", _starlette),
    Server("flask-sse", "flask-sse + Redis", _flask_sse),
)}
