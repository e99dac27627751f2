"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``-b``/``-w`` override)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # wherever gunicorn starts
from app.server.hooks import *  # noqa: E402,F401,F403  (the service's server hooks)

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
