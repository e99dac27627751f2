"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``-b``/``-w`` override)."""
import gc
import os
import resource
import shutil
import signal
import socket
import tempfile
import time

bind = [os.environ.get("MEMORY_BIND", "127.0.0.1:8080")]
worker_class = "gevent"
workers = 1
# Each open stream holds one connection; an idle stream costs a greenlet and a socket.
worker_connections = 20000
# Streams end within a second of SIGTERM (they get a final frame and clients resume), so the
# graceful timeout only has to cover ordinary requests.
graceful_timeout = 10
timeout = 30
keepalive = 5
# No preload: the app (its store connections, its log follower) is built in each worker.
preload_app = False
control_socket_disable = True
# The request path without its query string, so an ``api_key`` never reaches a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'

# Many idle streams need many descriptors.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_wanted = worker_connections + 1024 if _hard == resource.RLIM_INFINITY else min(
    _hard, worker_connections + 1024)
if _soft < _wanted:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_wanted, _hard))

# Metrics from every worker are summed through files in one directory, set before any worker
# imports prometheus_client. A directory the user chose is left alone.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="memory-events-metrics-")


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def _in_background(task):
    """Run ``task`` outside a signal handler. Under gevent the handler runs inside the event
    loop, where anything that waits (even ``Thread.start``) raises, so it gets a greenlet."""
    from gevent import monkey
    if monkey.is_module_patched("threading"):
        import gevent
        gevent.spawn(task)
    else:
        import threading
        threading.Thread(target=task, daemon=True).start()


# How often a stopping worker ends streams opened after the signal.
_SWEEP_SECONDS = 0.1


def _end_streams_until_exit():
    """End every stream now and keep doing so until the process exits: a stopping worker
    still accepts connections until gunicorn's loop next looks at ``alive`` (up to a second
    later), and a stream opened then would otherwise hold it until the graceful timeout."""
    from app.broker import close_all_streams
    while True:
        close_all_streams()
        time.sleep(_SWEEP_SECONDS)


def post_worker_init(worker):
    """Tune the collector, and on SIGTERM end every stream with a final frame before gunicorn
    stops the worker."""
    # Thousands of open streams are thousands of long-lived objects; a full collection walking
    # them all stalled new streams for tens of milliseconds. What exists after start-up is never
    # garbage, and collections run far less often.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    stop_worker = worker.handle_exit

    def handle_exit(sig, frame):
        first = worker.alive
        stop_worker(sig, frame)
        if first:
            _in_background(_end_streams_until_exit)

    worker.handle_exit = handle_exit
    signal.signal(signal.SIGTERM, handle_exit)


def post_request(worker, req, environ, resp):
    """A response that ends while the worker stops (a stream told ``shutdown``) closes its
    connection. Kept alive, it would hold the worker for the keep-alive time, and a client that
    reconnects on it at once (``EventSource`` does) would open a new stream on a stopping worker
    instead of reaching one that stays."""
    if not worker.alive:
        try:
            environ["gunicorn.socket"].shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the client is gone already
