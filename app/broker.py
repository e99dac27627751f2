"""In-process fan-out: one bounded mailbox per subscriber, fed by the log follower.

Publishing never waits for a subscriber. Subscribers with the same filter form a group: each
change is filtered once per group, and the group's subscribers all get the same ``Bundle``, so
its frames are encoded and joined once. A subscriber whose mailbox would hold more than its
limit is cut off at once: the mailbox is emptied (so a frozen reader holds no memory) and it is
told to end with ``overflow``; the client resumes from the last id it was sent and loses nothing.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

from .direct import DirectWriter
from .events import Bundle, Event
from .filters import EventFilter
from .metrics import DELIVERIES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Close:
    """Queued to end a stream: ``overflow``, ``shutdown``."""
    reason: str


class Subscriber:
    """One stream's mailbox: bundles in log order, at most ``maxsize`` events waiting.

    A deque under a lock, with an event to wake the reader, rather than ``queue.Queue``: the
    reader takes everything waiting in one call and writes it at once. An event rather than a
    condition because every change wakes every subscriber it matches, and under gevent a
    condition's notify costs ten times an event's set. With a ``DirectWriter`` attached, a
    bundle offered while the reader waits with nothing queued is written at once instead.
    """

    __slots__ = ("selection", "start_id", "transport", "floor", "sent_id", "wrote_at", "_maxsize",
                 "_items", "_waiting", "_lock", "_ready", "_writer", "_idle", "__weakref__")

    def __init__(self, selection: EventFilter, maxsize: int, start_id: int,
                 transport: str) -> None:
        self.selection = selection
        self.start_id = start_id
        self.transport = transport
        self.floor = start_id  # events up to here are not for this stream
        self.sent_id: int | None = None  # the newest event written to it
        self.wrote_at = time.monotonic()  # when it was last written to
        self._maxsize = maxsize
        self._items: deque[Bundle | Close] = deque()
        self._waiting = 0  # events in ``_items``
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._writer: DirectWriter | None = None
        self._idle = False  # waiting in ``take`` with nothing queued and nothing unsent

    @property
    def last_id(self) -> int:
        """Where the client resumes: the newest event it was sent, or the floor."""
        return self.floor if self.sent_id is None else self.sent_id

    def attach(self, writer: DirectWriter | None) -> None:
        """Let offers write to the stream's socket directly while it waits (gevent only: a
        waiting stream and the publisher never run at once)."""
        if writer is not None and writer.usable:
            self._writer = writer
        self.wrote_at = time.monotonic()

    def offer(self, bundle: Bundle) -> bool:
        """Queue ``bundle``, or nothing and ``False`` if more than ``maxsize`` events would wait."""
        if self._idle and self._write(bundle):
            return True
        with self._lock:
            if self._waiting + len(bundle) > self._maxsize:
                return False
            self._items.append(bundle)
            self._waiting += len(bundle)
        self._ready.set()
        return True

    def _write(self, bundle: Bundle) -> bool:
        """Write ``bundle`` to the waiting stream; ``False`` leaves it to the stream."""
        assert self._writer is not None
        newer = bundle.after(self.floor)
        if newer is None:
            return True
        try:
            written = self._writer.write(newer)
        except Exception:  # never let one stream's socket stop the fan-out to the others
            log.exception("writing to a stream directly failed; it writes for itself now")
            self._writer, written = None, False
        if not written:
            self._idle = False  # the stream's own write will find out what went wrong
            return False
        self.sent_id = newer.last_id
        self.wrote_at = time.monotonic()
        if self._writer.unsent:  # the stream writes the rest before anything else
            self._idle = False
            self._ready.set()
        else:
            DELIVERIES.record(self.transport, [newer])
        return True

    def close(self, reason: str) -> None:
        """Drop what is waiting (a stuck reader holds no memory) and queue the end."""
        with self._lock:
            self._items.clear()
            self._items.append(Close(reason))
            self._waiting = 0
        self._idle = False
        self._ready.set()

    def take(self, timeout: float, limit: int) -> list[Bundle | Close]:
        """Waiting bundles, whole, until they hold ``limit`` events (or the end, if queued),
        after waiting at most ``timeout`` for the first."""
        self._ready.clear()  # before looking, so an offer made after the look still wakes us
        if not self._items:
            self._idle = self._writer is not None
            try:
                self._ready.wait(timeout)
            finally:
                self._idle = False
            if self._writer is not None:  # what a direct write left goes out before anything
                finished = self._writer.flush()
                if finished is not None:
                    DELIVERIES.record(self.transport, [finished])
        taken: list[Bundle | Close] = []
        events = 0
        with self._lock:
            while self._items and events < limit:
                item = self._items.popleft()
                taken.append(item)
                if isinstance(item, Bundle):
                    events += len(item)
            self._waiting -= events
        return taken


class Broker:
    def __init__(self, head_id: int, maxsize: int) -> None:
        self.head_id = head_id
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._groups: dict[EventFilter, set[Subscriber]] = {}
        self._count = 0
        _BROKERS.add(self)

    def __len__(self) -> int:
        return self._count

    def subscribe(self, selection: EventFilter, transport: str) -> Subscriber:
        """Register a subscriber; every event published later than ``start_id`` reaches it."""
        with self._lock:
            subscriber = Subscriber(selection, self.maxsize, self.head_id, transport)
            self._groups.setdefault(selection, set()).add(subscriber)
            self._count += 1
            return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._remove(subscriber)

    def _remove(self, subscriber: Subscriber) -> None:
        group = self._groups.get(subscriber.selection)
        if group is None or subscriber not in group:
            return
        group.remove(subscriber)
        self._count -= 1
        if not group:
            del self._groups[subscriber.selection]

    def publish(self, events: list[Event]) -> None:
        """Hand events, in log order, to every subscriber whose filter accepts them."""
        overflowed: list[Subscriber] = []
        with self._lock:
            for selection, group in self._groups.items():
                accepted = [event for event in events if selection(event)]
                if not accepted:
                    continue
                bundle = Bundle(accepted)
                overflowed += [subscriber for subscriber in group if not subscriber.offer(bundle)]
            for subscriber in overflowed:
                subscriber.close("overflow")
                self._remove(subscriber)
            if events:
                self.head_id = events[-1].id

    def close_all(self, reason: str) -> None:
        """End every stream of this broker (graceful shutdown)."""
        with self._lock:
            for group in self._groups.values():
                for subscriber in group:
                    subscriber.close(reason)
            self._groups.clear()
            self._count = 0


_BROKERS: "weakref.WeakSet[Broker]" = weakref.WeakSet()


def close_all_streams(reason: str = "shutdown") -> None:
    """End the streams of every broker in this process; the server calls it on SIGTERM."""
    for broker in list(_BROKERS):
        broker.close_all(reason)
