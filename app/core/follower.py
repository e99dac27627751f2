"""One follower per process reads the durable log in order and feeds the broker.

A write in this process hands its events over as it commits, and they are published at once
when nothing came between; writes from other processes (or hosts) are found by a cheap poll, or
sooner when the store can signal them. Because everything live comes from the log,
history, resume and fan-out across processes are one path with one order. The follower also
keeps the log to its retention and removes records whose time ran out.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from ..store import Store, StoreUnavailable
from .broker import Broker
from .events import Event
from .expiry import Expiry
from .filters import LogFilter

log = logging.getLogger(__name__)

TRIM_EVERY_SECONDS = 60.0  # or a quarter of the retention, when that is shorter
#: how long a process goes without subscribers before other processes stop waking it
QUIET_SECONDS = 5.0


class Follower:
    def __init__(self, store: Store, broker: Broker, poll_seconds: float,
                 retention_seconds: float, expired: Callable[[int], None],
                 background: Callable[[Callable[[], Any]], None]) -> None:
        self.store = store
        self._background = background  # starts file work off the event loop
        self.broker = broker
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self.expiry = Expiry(store)
        self._expired = expired
        self._wake = threading.Event()
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._next_trim = 0.0
        self._stopped = False
        self._audible = False  # the store was asked to wake this process for others' commits
        self._quiet_since: float | None = None
        self._hearing = threading.Lock()

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
            self.store.watch(self.wake, self.committed)
            threading.Thread(target=self._run, name="memory-log-follower", daemon=True).start()
            self._pid = os.getpid()

    def wake(self) -> None:
        """Something was logged that this process has not seen: read the log now."""
        self._wake.set()

    def listen(self) -> None:
        """A stream is about to open where none is: other processes' commits wake this one
        again, and the broker starts from the log's head, which nobody followed meanwhile."""
        self._hear_others(True)
        self.broker.skip_to(self.store.head_id())

    def committed(self, events: list[Event]) -> None:
        """A commit of this process logged ``events``. They are published at once, by the
        writer, when they follow what was published last; otherwise (or should publishing
        fail: the commit stands) the log is read."""
        try:
            published = self.broker.publish_next(events)
        except Exception:
            log.exception("publishing a commit failed; the log will be read instead")
            published = False
        if not published:
            self.wake()

    def stop(self) -> None:
        """Stop reading (the service is closing); a stopped follower never starts again."""
        self._stopped = True
        self._pid = os.getpid()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(min(self.poll_seconds, self.expiry.wait_seconds(time.time())))
            self._wake.clear()
            if self._stopped:
                return
            try:
                self._catch_up()
                expired = self.expiry.run(time.time())
                if expired:
                    self._expired(expired)
                    self._catch_up()
                self._maybe_trim()
                checkpoint = self.store.checkpoint()
                if checkpoint is not None:
                    self._background(checkpoint)
                self._quieten()
            except StoreUnavailable as exc:
                log.warning("event log unavailable, retrying: %s", exc.detail)
                self._retry_soon()
            except Exception:  # the follower must outlive any single bad read
                log.exception("log follower failed; retrying")
                self._retry_soon()

    def _retry_soon(self) -> None:
        """Back off briefly, then read again without waiting for another wake-up."""
        time.sleep(min(1.0, self.poll_seconds * 10))
        self._wake.set()

    def _catch_up(self) -> None:
        if not len(self.broker):
            return  # nobody listens in this process: the first stream moves the head
        for events in self.store.read_log(LogFilter(), self.broker.head_id):
            self.broker.publish(events)

    def _quieten(self) -> None:
        """Once nobody has listened here for ``QUIET_SECONDS``, other processes' commits stop
        waking this one: on a shared core, each such wake-up costs the writer."""
        since = self._quiet_since
        if len(self.broker):
            self._hear_others(True)
        elif since is None:
            self._quiet_since = time.monotonic()
        elif time.monotonic() - since >= QUIET_SECONDS:
            self._hear_others(False)

    def _hear_others(self, on: bool) -> None:
        """Under a lock: with threads, a stream may open while the follower quietens (it
        clears ``_quiet_since`` first, and then the follower leaves the doorbell alone)."""
        with self._hearing:
            if on:
                self._quiet_since = None
            elif self._quiet_since is None or len(self.broker):
                return
            if on is not self._audible:
                self.store.audible(on)
                self._audible = on

    def _maybe_trim(self) -> None:
        now = time.time()
        if now < self._next_trim:
            return
        self._next_trim = now + min(TRIM_EVERY_SECONDS, self.retention_seconds / 4)
        removed = self.store.trim(now - self.retention_seconds)
        if removed:
            log.info("retention removed %d events", removed)
