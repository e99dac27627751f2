"""Server adapters: gunicorn's hooks, and what its gevent worker lets a stream do."""
