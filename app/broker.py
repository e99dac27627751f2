"""In-process fan-out: one bounded queue per subscriber, fed by the log follower.

Publishing never waits for a subscriber. A subscriber whose queue is full is cut off at once:
its queue is emptied (so a frozen reader holds no memory) and it is told to end with
``overflow``; the client resumes from the last id it was sent and loses nothing.
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .events import Event


@dataclass(frozen=True, slots=True)
class Close:
    """Queued to end a stream: ``overflow``, ``shutdown``."""
    reason: str


class Subscriber:
    """One stream's mailbox: events in log order, at most ``maxsize`` waiting.

    A deque under a condition rather than ``queue.Queue``: a batch goes in with one lock and one
    wake-up, the reader takes everything waiting in one call, and it behaves the same whether
    ``threading`` is real or patched by gevent.
    """

    __slots__ = ("accepts", "start_id", "transport", "_maxsize", "_items", "_ready", "__weakref__")

    def __init__(self, accepts: Callable[[Event], bool], maxsize: int, start_id: int,
                 transport: str) -> None:
        self.accepts = accepts
        self.start_id = start_id
        self.transport = transport
        self._maxsize = maxsize
        self._items: deque[Event | Close] = deque()
        self._ready = threading.Condition(threading.Lock())

    def offer(self, events: list[Event]) -> bool:
        """Queue ``events``, or nothing and ``False`` if more than ``maxsize`` would wait."""
        with self._ready:
            if len(self._items) + len(events) > self._maxsize:
                return False
            self._items.extend(events)
            self._ready.notify()
            return True

    def close(self, reason: str) -> None:
        """Drop what is waiting (a stuck reader holds no memory) and queue the end."""
        with self._ready:
            self._items.clear()
            self._items.append(Close(reason))
            self._ready.notify()

    def take(self, timeout: float, limit: int) -> list[Event | Close]:
        """Up to ``limit`` waiting items, waiting at most ``timeout`` for the first."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            items = self._items
            return [items.popleft() for _ in range(min(limit, len(items)))]


class Broker:
    def __init__(self, head_id: int, maxsize: int) -> None:
        self.head_id = head_id
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        _BROKERS.add(self)

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, accepts: Callable[[Event], bool], transport: str) -> Subscriber:
        """Register a subscriber; every event published later than ``start_id`` reaches it."""
        with self._lock:
            subscriber = Subscriber(accepts, self.maxsize, self.head_id, transport)
            self._subscribers.add(subscriber)
            return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    def publish(self, events: list[Event]) -> None:
        """Hand events, in log order, to every subscriber whose filter accepts them."""
        overflowed: list[Subscriber] = []
        with self._lock:
            for subscriber in self._subscribers:
                accepted = [event for event in events if subscriber.accepts(event)]
                if accepted and not subscriber.offer(accepted):
                    subscriber.close("overflow")
                    overflowed.append(subscriber)
            for subscriber in overflowed:
                self._subscribers.discard(subscriber)
            if events:
                self.head_id = events[-1].id

    def close_all(self, reason: str) -> None:
        """End every stream of this broker (graceful shutdown)."""
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.close(reason)
            self._subscribers.clear()


_BROKERS: "weakref.WeakSet[Broker]" = weakref.WeakSet()


def close_all_streams(reason: str = "shutdown") -> None:
    """End the streams of every broker in this process; the server calls it on SIGTERM."""
    for broker in list(_BROKERS):
        broker.close_all(reason)
