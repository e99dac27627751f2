"""One stream's mailbox: bundles in log order, bounded in events and in bytes.

A list under a lock, with an event to wake the reader, rather than ``queue.Queue``: the reader
takes everything waiting in one call and writes it at once. An event rather than a condition
because every change wakes every subscriber it matches, and under gevent a condition's notify
costs ten times an event's set. With a direct writer attached, a bundle offered while the
reader waits with nothing queued is written at once instead.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..wire import EndReason
from .events import Bundle
from .filters import EventFilter
from .peer import DirectWrite

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Close:
    """Queued to end a stream."""
    reason: EndReason


#: hears of what was written: transport, bundles, whether to time them, to how many subscribers
Delivered = Callable[[str, list[Bundle], bool, int], None]

#: what ``offer`` did with a bundle: refused it (over the bounds), took it (queued it, or dealt
#: with it entirely), or wrote it whole to the waiting stream, which the caller counts
REFUSED, TAKEN, WRITTEN = 0, 1, 2


class Subscriber:
    __slots__ = ("selection", "start_id", "transport", "_floor", "_sent_id", "_held", "_wrote_at",
                 "_max_events", "_max_bytes", "_items", "_events", "_bytes", "_lock", "_ready",
                 "_writer", "_idle", "_delivered", "ended", "__weakref__")

    def __init__(self, selection: EventFilter, start_id: int, transport: str, max_events: int,
                 max_bytes: int, delivered: Delivered) -> None:
        self.selection = selection
        self.start_id = start_id
        self.transport = transport
        self._floor = start_id  # events up to here are not for this stream
        self._sent_id: int | None = None  # the newest event written to it
        self._held: int | None = None  # where the client stood, while a replay or snapshot runs
        self._wrote_at = time.monotonic()
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._items: list[Bundle | Close] = []  # a deque would cost an idle stream 600 bytes
        self._events = 0  # events in ``_items``
        self._bytes = 0  # frame bytes in ``_items``
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._writer: DirectWrite | None = None
        self._idle = False  # waiting in ``take`` with nothing queued and nothing unsent
        self._delivered = delivered
        #: why the broker or the client ended it, first reason only
        self.ended: EndReason | None = None

    # -- what the stream keeps track of --------------------------------------------------
    @property
    def last_id(self) -> int:
        """Where the client resumes: the newest event it was sent, or the floor when that is
        newer (a snapshot after a replay reflects more than the events it replayed). While a
        replay or a snapshot is under way the floor does not count yet: the client has only
        what it had before, and what was sent since."""
        if self._held is not None:
            return self._held if self._sent_id is None else max(self._held, self._sent_id)
        return self._floor if self._sent_id is None else max(self._floor, self._sent_id)

    def hold(self, at: int) -> None:
        """A replay or a snapshot begins: until ``release``, the client would resume from
        ``at`` (or the newest event sent since), not from the floor."""
        if self._held is None:
            self._held = at

    def release(self) -> None:
        """The replay or snapshot is complete: the floor counts again."""
        self._held = None

    @property
    def wrote_at(self) -> float:
        """When the stream was last written to (monotonic)."""
        return self._wrote_at

    def skip_through(self, event_id: int) -> None:
        """Events up to ``event_id`` reached the client another way (a replay)."""
        self._floor = max(self._floor, event_id)

    def sent(self, bundles: list[Bundle], replayed: bool = False) -> None:
        """``bundles`` were written to the client; replayed ones are old, and their age is no
        delivery latency."""
        self._sent_id = bundles[-1].last_id
        self._wrote_at = time.monotonic()
        self._delivered(self.transport, bundles, not replayed, 1)

    def wrote(self) -> None:
        """Something other than events was written (a keepalive, a snapshot)."""
        self._wrote_at = time.monotonic()

    def newer(self, bundles: list[Bundle]) -> list[Bundle]:
        """What of ``bundles`` the client does not have yet."""
        found = (bundle.after(self._floor) for bundle in bundles)
        return [bundle for bundle in found if bundle is not None]

    # -- the mailbox -----------------------------------------------------------------------
    def attach(self, writer: DirectWrite | None) -> None:
        """Let offers write to the stream's socket directly while it waits (gevent only: a
        waiting stream and the publisher never run at once)."""
        self._writer = writer
        self._wrote_at = time.monotonic()

    def offer(self, bundle: Bundle) -> int:
        """Write ``bundle`` to the stream if it waits with nothing queued, else queue it;
        ``REFUSED`` (and nothing done) if more than the bounds would wait. An ended stream
        takes nothing more."""
        if self.ended is not None:
            return TAKEN
        if self._idle:
            outcome = self._write(bundle)
            if outcome:
                return outcome
        with self._lock:
            if (self._events + len(bundle) > self._max_events
                    or self._bytes + bundle.size > self._max_bytes):
                return REFUSED
            self._items.append(bundle)
            self._events += len(bundle)
            self._bytes += bundle.size
        self._ready.set()
        return TAKEN

    def _write(self, bundle: Bundle) -> int:
        """Write ``bundle`` to the waiting stream; ``REFUSED`` leaves it to the stream."""
        writer = self._writer
        assert writer is not None
        newer = bundle.after(self._floor)
        if newer is None:
            return TAKEN
        try:
            written = writer.write(newer)
        except Exception:  # never let one stream's socket stop the fan-out to the others
            log.exception("writing to a stream directly failed; it writes for itself now")
            self._writer, written = None, False
        if not written:
            self._idle = False  # the stream's own write will find out what went wrong
            return REFUSED
        self._sent_id = newer.last_id
        self._wrote_at = time.monotonic()
        if writer.unsent:  # the stream writes the rest before anything else
            self._idle = False
            self._ready.set()
            return TAKEN
        if newer is bundle:
            return WRITTEN
        self._delivered(self.transport, [newer], True, 1)
        return TAKEN

    def close(self, reason: EndReason) -> None:
        """Drop what is waiting (a stuck reader holds no memory) and queue the end."""
        self.ended = self.ended or reason
        with self._lock:
            self._items.clear()
            self._items.append(Close(reason))
            self._events = self._bytes = 0
        self._idle = False
        self._ready.set()

    def hang_up(self) -> None:
        """The client closed its connection."""
        self.close(EndReason.CLIENT)

    def take(self, timeout: float, max_events: int, max_bytes: int) -> list[Bundle | Close]:
        """Waiting bundles, whole, until they hold ``max_events`` events or ``max_bytes``
        bytes (at least one bundle, or the end if queued), after waiting at most ``timeout``."""
        self._ready.clear()  # before looking, so an offer made after the look still wakes us
        if not self._items:
            self._idle = self._writer is not None
            try:
                self._ready.wait(timeout)
            finally:
                self._idle = False
            if self._writer is not None and self._writer.unsent:
                finished = self._writer.flush()  # what a direct write left goes out first
                if finished is not None:
                    self._delivered(self.transport, [finished], True, 1)
        events = size = count = 0
        with self._lock:
            for item in self._items:
                if count and (events >= max_events or size >= max_bytes):
                    break
                count += 1
                if isinstance(item, Close):
                    break  # the end: nothing after it counts
                if isinstance(item, Bundle):
                    events += len(item)
                    size += item.size
            taken, self._items[:count] = self._items[:count], []
            self._events -= events
            self._bytes -= size
        return taken
