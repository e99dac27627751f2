"""Prometheus metrics, summed over every worker process.

Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
this module, so each process writes its values to files there and ``/metrics`` sums them; a
single-process server (the dev server, an embedding app) uses the default registry.
"""
from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

SUBSCRIBERS = Gauge("memory_events_subscribers", "Open event streams.", ["transport"],
                    multiprocess_mode="livesum")
PUBLISHED = Counter("memory_events_published", "Changes committed to the event log.")
DELIVERED = Counter("memory_events_delivered", "Events written to subscribers.", ["transport"])
DISCONNECTS = Counter("memory_events_disconnects", "Streams that ended, by reason.", ["reason"])
DELIVERY_SECONDS = Histogram(
    "memory_events_delivery_seconds", "From the commit of a change to its frame being written.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

for _transport in ("sse", "ws"):
    SUBSCRIBERS.labels(_transport)
    DELIVERED.labels(_transport)
for _reason in ("client", "overflow", "shutdown", "lifetime"):
    DISCONNECTS.labels(_reason)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
