"""In-process fan-out: one bounded queue per subscriber, fed by the log follower.

Publishing never waits for a subscriber. A subscriber whose queue is full is cut off at once:
its queue is emptied (so a frozen reader holds no memory) and it is told to end with
``overflow``; the client resumes from the last id it was sent and loses nothing.
"""
from __future__ import annotations

import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

from .events import Event


@dataclass(frozen=True, slots=True)
class Close:
    """Queued to end a stream: ``overflow``, ``shutdown``."""
    reason: str


class Subscriber:
    __slots__ = ("accepts", "queue", "start_id", "transport", "closed", "__weakref__")

    def __init__(self, accepts: Callable[[Event], bool], maxsize: int, start_id: int,
                 transport: str) -> None:
        self.accepts = accepts
        self.queue: queue.Queue[Event | Close] = queue.Queue(maxsize)
        self.start_id = start_id
        self.transport = transport
        self.closed = False

    def close(self, reason: str) -> None:
        """Drop what is waiting and queue the end; called with the broker's lock held."""
        self.closed = True
        with self.queue.mutex:
            self.queue.queue.clear()
            self.queue.unfinished_tasks = 0
        self.queue.put_nowait(Close(reason))


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

    def publish(self, events: Iterable[Event]) -> None:
        """Hand events, in log order, to every subscriber whose filter accepts them."""
        overflowed: list[Subscriber] = []
        with self._lock:
            for event in events:
                for subscriber in self._subscribers:
                    if subscriber.closed or not subscriber.accepts(event):
                        continue
                    try:
                        subscriber.queue.put_nowait(event)
                    except queue.Full:
                        subscriber.close("overflow")
                        overflowed.append(subscriber)
                self.head_id = event.id
            for subscriber in overflowed:
                self._subscribers.discard(subscriber)

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
