"""The stream core shared by SSE and WebSocket: subscribe, replay or snapshot, live, end.

A transport iterates a ``Stream`` and turns each item into its own framing; it writes
synchronously, so when the iteration resumes after an item, that item has been written.
Subscribing comes first, the replay or snapshot second, and live events the client already has
are dropped by id, so a stream has no gap and no duplicate even while writers are busy.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

from ..settings import Settings
from ..store import Store
from ..wire import EndReason, ResetReason
from .broker import Broker
from .events import BUNDLE_BYTES, Bundle, bundles
from .filters import EventFilter
from .metrics import Metrics
from .paging import FIRST_PAGE, next_page
from .peer import Peer
from .records import Record
from .subscriber import Close, Subscriber

BATCH_EVENTS = 256  # events per write, give or take a bundle
SNAPSHOT_PAGE = 500


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


@dataclass(frozen=True, slots=True)
class Reset:
    """The resume point is gone; events after it were missed."""
    reason: ResetReason
    oldest_id: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Current records that pass the filters."""
    records: list[Record]


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """Every current record was sent; they reflect the log up to ``last_id``."""
    last_id: int


@dataclass(frozen=True, slots=True)
class End:
    """The stream ends here; the client resumes after ``last_id``."""
    reason: EndReason
    last_id: int


Item = Union[Opened, Idle, Batch, Reset, Snapshot, SnapshotEnd, End]


def _as_is(item: Item) -> Item:
    return item


class Stream:
    """One subscriber's stream. ``lifetime=False`` keeps it open for as long as the client
    stays (for clients that cannot resume); ``snapshot=True`` sends the current records first.

    ``frame``, which a transport may set before iterating, turns each item into what it
    writes, so that an idle stream's stack holds one generator, not two.
    """

    __slots__ = ("store", "broker", "settings", "metrics", "selection", "last_event_id",
                 "transport", "peer", "snapshot", "lifetime", "reason", "frame")

    def __init__(self, store: Store, broker: Broker, settings: Settings, metrics: Metrics,
                 selection: EventFilter, last_event_id: int | None, transport: str,
                 peer: Peer | None = None, snapshot: bool = False, lifetime: bool = True) -> None:
        self.store = store
        self.broker = broker
        self.settings = settings
        self.metrics = metrics
        self.selection = selection
        self.last_event_id = last_event_id
        self.transport = transport
        self.peer = peer
        self.snapshot = snapshot
        self.lifetime = lifetime
        self.reason = EndReason.CLIENT  # why it ended, once it has
        self.frame: Callable[[Item], Any] = _as_is

    def __iter__(self) -> Iterator[Any]:
        subscriber = self.broker.subscribe(self.selection, self.transport)
        self.selection = subscriber.selection  # the group's: the request's copy can go
        self.metrics.opened(self.transport)
        self.reason = EndReason.CLIENT
        unwatch = self.peer.watch_close(subscriber.hang_up) if self.peer else None
        frame = self.frame
        try:
            yield frame(Opened())
            reset = None
            # Until a replay or a snapshot is whole, an end tells the client to resume from
            # where it stood; each releases that hold once it is.
            if self.last_event_id is not None:
                subscriber.hold(self.last_event_id)
                reset = yield from self._replay(subscriber, frame)
                if reset is not None and self.snapshot:
                    yield from self._snapshot(subscriber, frame)
                elif reset is not None:
                    subscriber.release()  # the client hears of the gap, and goes on live
                    yield frame(reset)
            elif self.snapshot:
                subscriber.hold(0)  # it has nothing: the log from its start brings it all
                yield from self._snapshot(subscriber, frame)
            # Live, in this frame rather than a generator of its own: an idle stream keeps its
            # whole stack while it waits, and each level costs memory.
            heartbeat = self.settings.heartbeat_seconds
            deadline = float("inf")
            if self.lifetime:
                deadline = (time.monotonic()
                            + self.settings.stream_max_seconds * random.uniform(0.8, 1.0))
            if self.peer is not None:
                subscriber.attach(self.peer.direct_writer())
            while True:
                now = time.monotonic()
                if now >= deadline:
                    yield frame(self._end(EndReason.LIFETIME, subscriber))
                    return
                quiet_until = subscriber.wrote_at + heartbeat
                if now >= quiet_until:
                    yield frame(Idle())
                    subscriber.wrote()
                    continue
                items = subscriber.take(min(quiet_until, deadline) - now, BATCH_EVENTS,
                                        BUNDLE_BYTES)
                if not items:
                    continue
                close = items.pop() if isinstance(items[-1], Close) else None
                batch = subscriber.newer(items)  # type: ignore[arg-type]
                if batch:
                    yield frame(Batch(batch))
                    subscriber.sent(batch)
                if close is not None:
                    yield frame(self._end(close.reason, subscriber))
                    return
        finally:
            if unwatch is not None:
                unwatch()
            self.broker.unsubscribe(subscriber)
            # a reader cut off for overflow may die writing what it had before it hears so
            self.metrics.closed(self.transport, subscriber.ended or self.reason)

    def _end(self, reason: EndReason, subscriber: Subscriber) -> End:
        """The last item; its reason is kept first, as the transport stops iterating at it."""
        self.reason = reason
        return End(reason, subscriber.last_id)

    def _replay(self, subscriber: Subscriber, frame: Callable[[Item], Any]) -> Iterator[Any]:
        """Logged events after ``last_event_id`` up to where live delivery starts; returns a
        ``Reset`` when they cannot all be had.

        Retention may trim while a slow client is replayed: any trim past the resume point
        during the replay may have taken events before they were read, so that is a reset too.
        """
        store, cursor, upto = self.store, self.last_event_id, subscriber.start_id
        assert cursor is not None
        if cursor > upto and cursor > store.head_id():
            return Reset(ResetReason.UNKNOWN_LAST_EVENT_ID, store.oldest_id())
        if store.trimmed_through() > cursor:
            return Reset(ResetReason.HISTORY_TRIMMED, store.oldest_id())
        for page in store.read_log(self.selection.log, cursor, upto):
            if subscriber.ended is not None:  # the client left, or the server is stopping
                return None
            if store.trimmed_through() > cursor:
                return Reset(ResetReason.HISTORY_TRIMMED, store.oldest_id())
            cursor = page[-1].id
            for bundle in bundles([event for event in page if self.selection(event)]):
                yield frame(Batch([bundle]))
                subscriber.sent([bundle], replayed=True)
        if store.trimmed_through() > self.last_event_id:
            return Reset(ResetReason.HISTORY_TRIMMED, store.oldest_id())
        subscriber.skip_through(self.last_event_id)  # a client ahead of this process's follower
        subscriber.release()
        return None

    def _snapshot(self, subscriber: Subscriber, frame: Callable[[Item], Any]) -> Iterator[Any]:
        """Every current record passing the filter, as of log position N, then N.

        Pages are read one query at a time, not in one long transaction, and hold fewer
        records when the values are large. A record whose version is newer than N changed
        after N, so it is left out: the live events after N, which the stream sends next,
        carry its change. A stream that ends before the snapshot is whole tells the client
        to resume from where it stood before (``hold``): the log brings it up to date, or,
        where it was trimmed, a new snapshot.
        """
        position = self.store.head_id()
        subscriber.skip_through(position)
        after, limit = None, FIRST_PAGE
        while subscriber.ended is None:
            page = self.store.records(self.selection.log, after, limit)
            records = [r for r in page if r.version <= position and self.selection(r)]
            if records:
                yield frame(Snapshot(records))
                subscriber.wrote()
            if len(page) < limit:
                break
            after = (page[-1].key, page[-1].scope, page[-1].scope_id)
            limit = next_page(len(page), sum(len(r.data) for r in page), SNAPSHOT_PAGE)
        if subscriber.ended is None:
            yield frame(SnapshotEnd(position))
            subscriber.release()
            subscriber.wrote()
