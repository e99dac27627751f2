"""The service's Prometheus metrics, owned by the service that updates them.

Each ``Metrics`` has its own registry, so several apps in one process (tests, an embedding app)
never collide. Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker imports
prometheus_client (the server hooks do it), so each process writes its values to files there and
``render`` sums every worker's.
"""
from __future__ import annotations

import bisect
import os
import threading
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

from ..wire import EndReason
from .events import Bundle

TRANSPORTS = ("sse", "ws")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_SECONDS = 0.5


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.subscribers = Gauge("memory_events_subscribers", "Open event streams.",
                                 ["transport"], multiprocess_mode="livesum",
                                 registry=self.registry)
        self.published = Counter("memory_events_published", "Changes committed to the event log.",
                                 registry=self.registry)
        self.delivered = Counter("memory_events_delivered", "Events written to subscribers.",
                                 ["transport"], registry=self.registry)
        self.disconnects = Counter("memory_events_disconnects", "Streams that ended, by reason.",
                                   ["reason"], registry=self.registry)
        self.delivery_seconds = Histogram(
            "memory_events_delivery_seconds",
            "From the commit of a change to its frame being written.", buckets=BUCKETS,
            registry=self.registry)
        for transport in TRANSPORTS:
            self.subscribers.labels(transport)
            self.delivered.labels(transport)
        for reason in EndReason:
            self.disconnects.labels(reason.value)
        self.deliveries = Deliveries(self)

    def opened(self, transport: str) -> None:
        self.subscribers.labels(transport).inc()

    def closed(self, transport: str, reason: EndReason) -> None:
        self.subscribers.labels(transport).dec()
        self.disconnects.labels(reason.value).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self.deliveries.flush()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Deliveries:
    """Delivery counts and latencies, added up in memory and handed to Prometheus in bulk.

    One delivery per event per subscriber is the hottest path of the service; a Prometheus
    update there (a lock and, across processes, a write to a shared file) cost more than writing
    the frame. Totals are flushed every ``FLUSH_SECONDS`` and whenever ``/metrics`` is read.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(TRANSPORTS, 0)
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._flusher: int | None = None  # the process whose flusher runs: a fork has none

    def record(self, transport: str, bundles: list[Bundle], timed: bool = True,
               subscribers: int = 1) -> None:
        """``bundles``: what was just written to each of ``subscribers``; ``timed``: count
        their latencies too (a replay's are not)."""
        now = time.time()
        with self._lock:
            for bundle in bundles:
                self._counts[transport] += len(bundle) * subscribers
                if timed:
                    self._sum += add_latencies(self._buckets, bundle.epochs, now,
                                               subscribers)

    def start(self) -> None:
        """Flush in the background from now on, in this process (a fork has no flusher)."""
        if self._flusher != os.getpid():
            self._flusher = os.getpid()
            threading.Thread(target=self._flush_forever, name="memory-metrics",
                             daemon=True).start()

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
                self._metrics.delivered.labels(transport).inc(count)
        # The histogram has no bulk observe; its bucket and sum values are incremented directly.
        histogram = self._metrics.delivery_seconds
        for value, count in zip(histogram._buckets, buckets):
            if count:
                value.inc(count)
        if total:
            histogram._sum.inc(total)


def add_latencies(buckets: list[int], epochs: list[float], now: float, times: int = 1) -> float:
    """Count each ``now - epoch`` ``times`` into its bucket and return their sum (negative
    ones, from a clock behind another host's, as zero).

    A bundle's events were committed moments apart, so they usually share one bucket, found
    from the youngest and the oldest; otherwise each bucket they span gets its count from one
    search of the sorted epochs, instead of one search per event.
    """
    first = bisect.bisect_left(BUCKETS, now - epochs[-1])
    last = bisect.bisect_left(BUCKETS, now - epochs[0])
    counted = 0
    for index in range(first, last):
        within = len(epochs) - bisect.bisect_left(epochs, now - BUCKETS[index])
        buckets[index] += (within - counted) * times
        counted = within
    buckets[last] += (len(epochs) - counted) * times
    return sum(max(0.0, now - epoch) for epoch in epochs) * times
