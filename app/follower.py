"""One follower per process reads the durable log in order and feeds the broker.

Writes in this process wake it at once; writes from other processes (or hosts) are found by a
cheap poll, or sooner when the store can signal them. Because everything live comes from the log,
history, resume and fan-out across processes are one path with one order.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from .broker import Broker
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

BATCH = 500
TRIM_EVERY_SECONDS = 60.0  # or a quarter of the retention, when that is shorter


class Follower:
    def __init__(self, store: Store, broker: Broker, poll_seconds: float,
                 retention_seconds: float) -> None:
        self.store = store
        self.broker = broker
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self._wake = threading.Event()
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._next_trim = 0.0

    def ensure_running(self) -> None:
        """Start the follower in this process if it is not running here yet.

        Called on first use rather than at import, so it always starts after a fork.
        """
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self.broker.head_id = self.store.head_id()
            self.store.watch(self.wake)
            threading.Thread(target=self._run, name="memory-log-follower", daemon=True).start()
            self._pid = os.getpid()

    def wake(self) -> None:
        """A write committed in this process: read the log now."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                self._catch_up()
                self._maybe_trim()
            except StoreUnavailable as exc:
                log.warning("event log unavailable, retrying: %s", exc)
                self._retry_soon()
            except Exception:  # the follower must outlive any single bad read
                log.exception("log follower failed; retrying")
                self._retry_soon()

    def _retry_soon(self) -> None:
        """Back off briefly, then read again without waiting for another wake-up."""
        time.sleep(min(1.0, self.poll_seconds * 10))
        self._wake.set()

    def _catch_up(self) -> None:
        while True:
            events = self.store.events(self.broker.head_id, BATCH)
            if not events:
                return
            self.broker.publish(events)
            if len(events) < BATCH:
                return

    def _maybe_trim(self) -> None:
        now = time.time()
        if now < self._next_trim:
            return
        self._next_trim = now + min(TRIM_EVERY_SECONDS, self.retention_seconds / 4)
        removed = self.store.trim(now - self.retention_seconds)
        if removed:
            log.info("retention removed %d events", removed)
