"""Prometheus metrics, summed over every worker process.

Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
this module, so each process writes its values to files there and ``/metrics`` sums them; a
single-process server (the dev server, an embedding app) uses the default registry.
"""
from __future__ import annotations

import bisect
import os
import threading
import time

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

from .events import Bundle

SUBSCRIBERS = Gauge("memory_events_subscribers", "Open event streams.", ["transport"],
                    multiprocess_mode="livesum")
PUBLISHED = Counter("memory_events_published", "Changes committed to the event log.")
DELIVERED = Counter("memory_events_delivered", "Events written to subscribers.", ["transport"])
DISCONNECTS = Counter("memory_events_disconnects", "Streams that ended, by reason.", ["reason"])
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_SECONDS = Histogram(
    "memory_events_delivery_seconds", "From the commit of a change to its frame being written.",
    buckets=BUCKETS)

for _transport in ("sse", "ws"):
    SUBSCRIBERS.labels(_transport)
    DELIVERED.labels(_transport)
for _reason in ("client", "overflow", "shutdown", "lifetime"):
    DISCONNECTS.labels(_reason)


FLUSH_SECONDS = 0.5


class Deliveries:
    """Delivery counts and latencies, added up in memory and handed to Prometheus in bulk.

    One delivery per event per subscriber is the hottest path of the service; a Prometheus
    update there (a lock and, across processes, a write to a shared file) cost more than writing
    the frame. Totals are flushed every ``FLUSH_SECONDS`` and whenever ``/metrics`` is read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"sse": 0, "ws": 0}
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._flushing = False
        # A forked worker starts with the parent's flag but without its flusher thread.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._flushing = False

    def record(self, transport: str, bundles: list[Bundle]) -> None:
        """``bundles``: what was just written to one subscriber."""
        now = time.time()
        with self._lock:
            for bundle in bundles:
                self._counts[transport] += len(bundle)
                self._sum += _add_latencies(self._buckets, bundle.epochs, now)
        if not self._flushing:
            self._start_flusher()

    def _start_flusher(self) -> None:
        self._flushing = True
        threading.Thread(target=self._flush_forever, name="memory-metrics", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, buckets, total = self._counts, self._buckets, self._sum
            self._counts = dict.fromkeys(counts, 0)
            self._buckets = [0] * len(buckets)
            self._sum = 0.0
        for transport, count in counts.items():
            if count:
                DELIVERED.labels(transport).inc(count)
        # The histogram has no bulk observe; its bucket and sum values are incremented directly.
        for value, count in zip(DELIVERY_SECONDS._buckets, buckets):
            if count:
                value.inc(count)
        if total:
            DELIVERY_SECONDS._sum.inc(total)


def _add_latencies(buckets: list[int], epochs: list[float], now: float) -> float:
    """Count each ``now - epoch`` into its bucket and return their sum (negative ones, from a
    clock behind another host's, as zero).

    A bundle's events were committed moments apart, so they usually share one bucket, found
    from the youngest and the oldest; otherwise each bucket they span gets its count from one
    search of the sorted epochs, instead of one search per event.
    """
    first = bisect.bisect_left(BUCKETS, now - epochs[-1])
    last = bisect.bisect_left(BUCKETS, now - epochs[0])
    counted = 0
    for index in range(first, last):
        within = len(epochs) - bisect.bisect_left(epochs, now - BUCKETS[index])
        buckets[index] += within - counted
        counted = within
    buckets[last] += len(epochs) - counted
    return sum(max(0.0, now - epoch) for epoch in epochs)


DELIVERIES = Deliveries()


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    DELIVERIES.flush()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
