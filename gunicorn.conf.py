"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``-b``/``-w`` override)."""
import os
import resource
import shutil
import signal
import tempfile

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


def post_worker_init(worker):
    """On SIGTERM, end every stream with a final frame before gunicorn stops the worker."""
    stop_worker = worker.handle_exit

    def handle_exit(sig, frame):
        stop_worker(sig, frame)
        import threading
        from app.broker import close_all_streams
        threading.Thread(target=close_all_streams, daemon=True).start()

    worker.handle_exit = handle_exit
    signal.signal(signal.SIGTERM, handle_exit)
