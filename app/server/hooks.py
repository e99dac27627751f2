"""gunicorn's server hooks for this service: ``from app.server.hooks import *`` in a gunicorn
config file gives an app that embeds the service the same behaviour as ``gunicorn.conf.py``:

* metrics summed over every worker (``PROMETHEUS_MULTIPROC_DIR``, made and removed here
  unless you set it);
* enough open files for ``worker_connections`` streams;
* under the gevent worker, direct writes to waiting streams, closes noticed at once, and
  vector searches, index builds and SQLite checkpoints run in a thread, off the event loop;
* numpy's matrix products on one thread each (``OPENBLAS_NUM_THREADS`` and its kin, unless
  set);
* on SIGTERM, every stream ends at once with a final ``shutdown`` frame, and so does every
  stream opened while the worker stops.

Nothing heavy is imported until a worker runs, so the master never loads the app's modules
before gevent patches them.
"""
from __future__ import annotations

import gc
import os
import resource
import shutil
import signal
import socket
import tempfile
import weakref
from typing import Any, Callable

__all__ = ["on_starting", "post_worker_init", "post_request", "child_exit", "on_exit"]

MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_OWN_DIR = "MEMORY_EVENTS_OWN_METRICS_DIR"


def on_starting(server: Any) -> None:
    """In the master, before any worker exists."""
    # A worker's vector searches run side by side in its thread pool, and several workers on
    # the cores: BLAS threads on top of those only fight over them (a search's p99 at 10,000
    # vectors went from 6 ms to 8-17 ms on 2 cores). Set them to override.
    for variable in BLAS_THREADS:
        os.environ.setdefault(variable, "1")
    if MULTIPROC not in os.environ:
        os.environ[MULTIPROC] = os.environ[_OWN_DIR] = tempfile.mkdtemp(
            prefix="memory-events-metrics-")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = server.cfg.worker_connections + 1024
    if soft >= wanted:
        return
    try:  # the hard limit too, where allowed (as root, or by a raised system limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if os.environ.get(_OWN_DIR):
        shutil.rmtree(os.environ[_OWN_DIR], ignore_errors=True)


def post_worker_init(worker: Any) -> None:
    """Tune the collector, give gevent streams their peer, and end every stream on SIGTERM."""
    # Thousands of open streams are thousands of long-lived objects; a full collection walking
    # them all stalled new streams for tens of milliseconds. What exists after start-up is never
    # garbage, and the older generations are collected far less often. The youngest still is
    # every 10,000 allocations: little of a request outlives it, so each pass is short.
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    services = _services(worker.wsgi)
    from gevent import monkey
    if monkey.is_module_patched("socket"):
        import gevent

        from .peer import with_peers
        # the connections kept alive between two requests, closed on SIGTERM
        worker.memory_events_idle = idle = weakref.WeakSet()
        worker.wsgi = with_peers(worker.wsgi, idle.discard)
        pool = gevent.get_hub().threadpool
        for service in services:  # numpy scores, SQLite checkpoints, in threads
            service.offload = lambda function, *args: pool.apply(function, args)
            service.background = pool.spawn
    stop_worker = worker.handle_exit

    def close() -> None:
        for service in services:
            service.close()
        for sock in list(getattr(worker, "memory_events_idle", ())):
            _shut_reading(sock)  # a client's next request belongs on a worker that stays

    def handle_exit(sig: int, frame: Any) -> None:
        stopping = worker.alive
        stop_worker(sig, frame)
        if stopping:  # not in the handler: it may have interrupted a holder of the locks
            _soon(close)

    worker.handle_exit = handle_exit
    signal.signal(signal.SIGTERM, handle_exit)


def post_request(worker: Any, req: Any, environ: dict, resp: Any) -> None:
    """A response that ends while the worker stops (a stream told ``shutdown``) closes its
    connection, and so does, on SIGTERM, a connection kept alive between two requests. Kept
    alive, either would hold the stopping worker for the keep-alive time, and a client that
    reconnects on it at once (``EventSource`` does) would open a new stream on a stopping
    worker instead of reaching one that stays.

    The request's environ is emptied at the end: it and what it holds (the request, the
    response, the stream's peer) refer to each other, and would otherwise wait for the garbage
    collector, whose passes over thousands of finished requests stalled the worker for tens
    of milliseconds."""
    sock = environ.get("gunicorn.socket")
    idle = getattr(worker, "memory_events_idle", None)
    if sock is not None and not worker.alive:
        _shut_reading(sock)
    elif sock is not None and idle is not None:
        idle.add(sock)
    environ.clear()


def _soon(task: Callable[[], None]) -> None:
    """Run ``task`` outside a signal handler: in a greenlet of its own under gevent, where the
    handler runs in whichever greenlet it interrupted, else in a thread."""
    from gevent import monkey
    if monkey.is_module_patched("threading"):
        import gevent
        gevent.spawn(task)
    else:
        import threading
        threading.Thread(target=task, daemon=True).start()


def _shut_reading(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # the client is gone already


def _services(wsgi: Any) -> list:
    """The service of every Flask app reachable from gunicorn's app: itself, through a
    middleware that keeps the app it wraps as ``.app`` or ``.wsgi_app``, or a mount of
    Werkzeug's ``DispatcherMiddleware``."""
    from ..web.context import EXTENSION
    found, seen, todo = [], set(), [wsgi]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        extensions = getattr(item, "extensions", None)
        if isinstance(extensions, dict) and EXTENSION in extensions:
            found.append(extensions[EXTENSION])
        todo += [getattr(item, name) for name in ("app", "wsgi_app") if hasattr(item, name)]
        todo += list(getattr(item, "mounts", {}).values())
    return found
