"""The stream core shared by SSE and WebSocket: subscribe, replay, live, heartbeat, end.

A transport iterates a ``Stream`` and turns each item into its own framing; it writes
synchronously, so when the iteration resumes after a ``Batch`` the batch has been written.
Subscribing comes first, replay second, and live events already replayed are dropped by id, so
a resumed stream has no gap and no duplicate even while writers are busy.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Iterator, Union

from .broker import Close
from .direct import DirectWriter
from .events import Bundle
from .filters import EventFilter
from .metrics import DELIVERIES, DISCONNECTS, SUBSCRIBERS

REPLAY_PAGE = 500
BATCH_MAX = 256  # events per write, give or take a bundle


@dataclass(frozen=True, slots=True)
class Opened:
    """The subscription exists: a change committed from now on will be delivered."""


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing was written for a heartbeat interval."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Events to write at once, in log order."""
    bundles: list[Bundle]

    @property
    def last_id(self) -> int:
        return self.bundles[-1].last_id


@dataclass(frozen=True, slots=True)
class Reset:
    """The resume point is gone; the client must resync from ``/memory/list``."""
    reason: str
    oldest_id: int


@dataclass(frozen=True, slots=True)
class End:
    """The stream ends here; the client resumes after ``last_id``."""
    reason: str
    last_id: int


Item = Union[Opened, Idle, Batch, Reset, End]


class Stream:
    def __init__(self, service: "Service", selection: EventFilter,  # noqa: F821
                 last_event_id: int | None, transport: str,
                 writer: DirectWriter | None = None) -> None:
        self.service = service
        self.selection = selection
        self.last_event_id = last_event_id
        self.transport = transport
        self.writer = writer

    def __iter__(self) -> Iterator[Item]:
        service, settings = self.service, self.service.settings
        subscriber = service.broker.subscribe(self.selection, self.transport)
        SUBSCRIBERS.labels(self.transport).inc()
        reason = "client"
        lifetime = settings.stream_max_seconds * random.uniform(0.8, 1.0)
        deadline = time.monotonic() + lifetime
        try:
            yield Opened()
            if self.last_event_id is not None:
                resumed = True
                for item in self._replay(subscriber.start_id):
                    yield item
                    if isinstance(item, Batch):
                        subscriber.sent_id = item.last_id
                        self._delivered(item)
                    resumed = not isinstance(item, Reset)
                if resumed:  # a client ahead of this follower: skip what it already has
                    subscriber.floor = max(subscriber.floor, self.last_event_id)
            subscriber.attach(self.writer)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    reason = "lifetime"
                    yield End(reason, subscriber.last_id)
                    return
                quiet_until = subscriber.wrote_at + settings.heartbeat_seconds
                if now >= quiet_until:
                    yield Idle()
                    subscriber.wrote_at = time.monotonic()
                    continue
                items = subscriber.take(min(quiet_until, deadline) - now, BATCH_MAX)
                if not items:
                    continue
                close = items.pop() if isinstance(items[-1], Close) else None
                newer = [bundle.after(subscriber.floor) for bundle in items]
                batch = Batch([bundle for bundle in newer if bundle is not None])
                if batch.bundles:
                    yield batch
                    subscriber.sent_id = batch.last_id
                    subscriber.wrote_at = time.monotonic()
                    self._delivered(batch)
                if close is not None:
                    reason = close.reason
                    yield End(reason, subscriber.last_id)
                    return
        finally:
            service.broker.unsubscribe(subscriber)
            SUBSCRIBERS.labels(self.transport).dec()
            DISCONNECTS.labels(reason).inc()

    def _replay(self, upto: int) -> Iterator[Item]:
        """Logged events after ``last_event_id`` up to where live delivery starts.

        Retention may trim while a slow client is replayed; a page read after a trim that
        reached past the cursor could skip events, so that is a reset too.
        """
        store, cursor = self.service.store, self.last_event_id
        assert cursor is not None
        if cursor > upto and cursor > store.head_id():
            yield Reset("unknown_last_event_id", store.oldest_id())
            return
        while True:
            page = store.events(cursor, REPLAY_PAGE, upto_id=upto, where=self.selection.log)
            if store.trimmed_through() > cursor:
                yield Reset("history_trimmed", store.oldest_id())
                return
            if not page:
                return
            cursor = page[-1].id
            matching = [event for event in page if self.selection(event)]
            if matching:
                yield Batch([Bundle(matching)])

    def _delivered(self, batch: Batch) -> None:
        DELIVERIES.record(self.transport, batch.bundles)
