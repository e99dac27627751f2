"""The peer servers the benchmark runs beside this service, one small file each.

Every peer offers the same two routes: ``GET /stream`` (an SSE stream of every change) and
``POST /publish`` with the body this service's ``/memory/set`` takes, ``{"key", "data"}``.
"""
