"""In-process fan-out: one bounded mailbox per subscriber, fed by the log follower.

Publishing never waits for a subscriber. Subscribers with the same filter form a group: each
change is filtered once per group, and the group's subscribers all get the same bundles, so
their frames are encoded and chunked once. A subscriber whose mailbox would hold more than its
bounds is cut off at once: the mailbox is emptied (so a frozen reader holds no memory) and it
is told to end with ``overflow``; the client resumes from the last id it was sent.

A closed broker (the server is stopping) has ended every stream, and ends every new one at once.
"""
from __future__ import annotations

import threading

from ..wire import EndReason
from .events import Event, bundles
from .filters import EventFilter
from .subscriber import REFUSED, WRITTEN, Delivered, Subscriber


class Broker:
    def __init__(self, max_events: int, max_bytes: int, delivered: Delivered) -> None:
        self.head_id = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._delivered = delivered
        self._lock = threading.Lock()
        self._groups: dict[EventFilter, set[Subscriber]] = {}
        self._canonical: dict[EventFilter, EventFilter] = {}  # each group's own filter
        self._count = 0
        self._closed: EndReason | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def subscribe(self, selection: EventFilter, transport: str) -> Subscriber:
        """Register a subscriber; every event published after ``head_id`` reaches it. Its
        ``selection`` is the group's own, so equal filters are held once."""
        with self._lock:
            if self._closed is None:
                selection = self._canonical.setdefault(selection, selection)
            subscriber = Subscriber(selection, self.head_id, transport, self.max_events,
                                    self.max_bytes, self._delivered)
            if self._closed is not None:
                subscriber.close(self._closed)
                return subscriber
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
            del self._canonical[subscriber.selection]

    def skip_to(self, head_id: int) -> bool:
        """Move the head to ``head_id`` without the events, if no one subscribes: a subscriber
        that comes later starts after it, and the events up to it were committed before."""
        with self._lock:
            if self._count:
                return False
            self.head_id = max(self.head_id, head_id)
            return True

    def publish(self, events: list[Event]) -> None:
        """Hand events, in log order, to every subscriber whose filter accepts them; those
        published before are left out."""
        with self._lock:
            if events and events[0].id <= self.head_id:
                events = [event for event in events if event.id > self.head_id]
            self._publish(events)

    def publish_next(self, events: list[Event]) -> bool:
        """Publish ``events`` if they follow the head with no gap (``False``: the log must be
        read). With nobody subscribed, only the head moves: every id up to the last of them
        was committed before they were."""
        with self._lock:
            if not self._count:
                self.head_id = max(self.head_id, events[-1].id)
                return True
            if events[0].id != self.head_id + 1:
                return False
            self._publish(events)
            return True

    def _publish(self, events: list[Event]) -> None:
        """Under the lock: offer each event to the groups that want it, in order."""
        overflowed: list[Subscriber] = []
        for selection, group in self._groups.items():
            accepted = [event for event in events if selection(event)]
            if not accepted:
                continue
            for bundle in bundles(accepted):
                cut: list[Subscriber] = []
                written: dict[str, int] = {}
                for subscriber in group:
                    outcome = subscriber.offer(bundle)
                    if outcome == WRITTEN:
                        written[subscriber.transport] = written.get(subscriber.transport, 0) + 1
                    elif outcome == REFUSED:
                        cut.append(subscriber)
                for transport, count in written.items():  # counted once for all of them
                    self._delivered(transport, [bundle], True, count)
                if cut:  # no later bundle may reach them: that would leave a gap
                    group.difference_update(cut)
                    overflowed += cut
        for subscriber in overflowed:
            subscriber.close(EndReason.OVERFLOW)
            self._count -= 1
        for selection in [s for s, group in self._groups.items() if not group]:
            del self._groups[selection]
            del self._canonical[selection]
        if events:
            self.head_id = events[-1].id

    def close(self, reason: EndReason = EndReason.SHUTDOWN) -> None:
        """End every stream, and every stream opened from now on (graceful shutdown)."""
        with self._lock:
            self._closed = reason
            for group in self._groups.values():
                for subscriber in group:
                    subscriber.close(reason)
            self._groups.clear()
            self._canonical.clear()
            self._count = 0
