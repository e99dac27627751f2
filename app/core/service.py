"""The service one app runs: settings, store, broker, log follower and metrics, wired once.

It is what every transport calls, and it knows no framework: the web layer turns requests
into these calls and the errors they raise into answers.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from importlib import import_module
from typing import TYPE_CHECKING, Any, Callable

from ..settings import Settings
from ..store import Listing, Store, open_store
from ..wire import EndReason
from .broker import Broker
from .errors import Unavailable
from .events import Event
from .filters import EventFilter
from .follower import Follower
from .metrics import Metrics
from .peer import Peer
from .records import Author, Record
from .stream import Stream

if TYPE_CHECKING:
    from .vectors import VectorMemory

log = logging.getLogger(__name__)


def _here(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


class Service:
    """Opens the store on first use, so commands that never touch it (a tail of a remote
    server, ``--help``) create no database, and nothing opened here crosses a fork."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.broker = Broker(settings.subscriber_queue, settings.subscriber_bytes,
                             self.metrics.deliveries.record)
        self._opening = threading.Lock()
        self._store: Store | None = None
        self._follower: Follower | None = None
        self._vectors: VectorMemory | None = None
        #: how CPU and file work runs while the caller waits (vector searches), and how work
        #: nobody waits for starts (checkpoints): a server adapter whose requests share one
        #: thread's event loop hands both to a thread pool
        self.offload: Callable[..., Any] = _here
        self.background: Callable[[Callable[[], Any]], Any] = _here

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._opening:
                opened = self._store is None
                if opened:
                    self._store = open_store(self.settings.db_url)
            if opened:
                self._follow()
        return self._store  # type: ignore[return-value]

    @property
    def vectors(self) -> VectorMemory:
        """Vector memory, loaded on first use: numpy is no small import, and it is imported
        off the event loop, where the searches run."""
        if self._vectors is None:
            VectorMemory = self.offload(import_module, f"{__package__}.vectors").VectorMemory
            with self._opening:
                if self._vectors is None:
                    self._vectors = VectorMemory(lambda: self.store, self.settings.vector_metric,
                                                 self.offload)
        return self._vectors

    @property
    def follower(self) -> Follower:
        if self._follower is None:
            store = self.store
            with self._opening:
                if self._follower is None:
                    self._follower = Follower(
                        store, self.broker, self.settings.poll_seconds or store.poll_seconds,
                        self.settings.retention_hours * 3600.0, self.metrics.published.inc,
                        lambda work: self.background(work))
        return self._follower

    # -- memory ------------------------------------------------------------------------------
    def get(self, key: str, scopes: list[tuple[str, str]]) -> Record | None:
        """The record in the first of ``scopes`` that holds ``key``."""
        for scope, scope_id in scopes:
            record = self.store.get(scope, scope_id, key)
            if record is not None:
                return record
        return None

    def list(self, scope: str, scope_id: str | None, prefix: str | None = None,
             after: tuple[str, str] | None = None, limit: int | None = None) -> Listing:
        return self.store.list_page(scope, scope_id, prefix, after, limit)

    def set(self, scope: str, scope_id: str, key: str, data: str, author: Author,
            if_version: int | None = None, ttl_seconds: float | None = None) -> Record:
        self._follow()
        record = self.store.set(scope, scope_id, key, data, author, if_version, ttl_seconds)
        self.metrics.published.inc()
        return record

    def delete(self, scope: str, scope_id: str, key: str, author: Author,
               if_version: int | None = None) -> Record | None:
        self._follow()
        old = self.store.delete(scope, scope_id, key, author, if_version)
        if old is not None:
            self.metrics.published.inc()
        return old

    def _follow(self) -> None:
        """Start this process's follower, which hears of every commit the store makes and
        expires records whether anyone writes or not; nothing here may fail a request."""
        try:
            self.follower.ensure_running()
        except Exception:  # the next stream starts it; the log has every change
            log.exception("could not start the log follower")

    # -- the log -----------------------------------------------------------------------------
    def history(self, selection: EventFilter, since: float | None, limit: int,
                after_id: int | None) -> list[Event]:
        """Matching events oldest first: the last ``limit``, or the first ``limit`` after an id."""
        store = self.store
        where = replace(selection.log, since=since)
        head, page = store.head_id(), min(limit, 500)
        if after_id is None:
            pages = store.read_log(where, store.trimmed_through(), head, True, page)
        else:
            pages = store.read_log(where, max(after_id, store.trimmed_through()), head, False,
                                   page)
        found: list[Event] = []
        for events in pages:
            found += [event for event in events if selection(event)]
            if len(found) >= limit:
                break
        found = found[:limit]
        return found if after_id is not None else found[::-1]

    def stream(self, selection: EventFilter, last_event_id: int | None, transport: str,
               peer: Peer | None = None, snapshot: bool = False,
               lifetime: bool = True) -> Stream:
        """A stream, checked before it starts: a store that is down or a full server is an
        error here, not a stream that ends at once."""
        self.follower.ensure_running()
        self.metrics.deliveries.start()
        if not len(self.broker):
            self.follower.listen()
        if len(self.broker) >= self.settings.max_streams:
            raise Unavailable("too_many_streams", "This server holds as many streams as it may; "
                                                  "retry shortly.", retry_after=5)
        return Stream(self.store, self.broker, self.settings, self.metrics, selection,
                      last_event_id, transport, peer, snapshot, lifetime)

    def close(self, reason: EndReason = EndReason.SHUTDOWN) -> None:
        """End every stream now and refuse to keep new ones open, and stop following the log:
        the server is stopping. Requests that need no stream still work."""
        self.broker.close(reason)
        if self._follower is not None:
            self._follower.stop()
