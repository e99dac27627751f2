"""The service one app instance runs: settings, store, broker and log follower, wired once."""
from __future__ import annotations

import logging
import threading

from flask import current_app

from .broker import Broker
from .follower import Follower
from .metrics import PUBLISHED
from .settings import Settings
from .store import Record, Store, open_store

EXTENSION = "memory_events"
log = logging.getLogger(__name__)


class Service:
    """Opens the store on first use, so commands that never touch it (a tail of a remote
    server, ``--help``) create no database, and nothing opened here crosses a fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = Broker(0, settings.subscriber_queue)
        self._opening = threading.Lock()
        self._store: Store | None = None
        self._follower: Follower | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._opening:
                if self._store is None:
                    self._store = open_store(self.settings.db_url)
        return self._store

    @property
    def follower(self) -> Follower:
        if self._follower is None:
            store = self.store
            with self._opening:
                if self._follower is None:
                    self._follower = Follower(
                        store, self.broker, self.settings.poll_seconds or store.poll_seconds,
                        self.settings.retention_hours * 3600.0)
        return self._follower

    def set(self, scope: str, scope_id: str, key: str, data: str,
            agent_id: str, workflow_id: str) -> Record:
        record = self.store.set(scope, scope_id, key, data, agent_id, workflow_id)
        self._committed()
        return record

    def delete(self, scope: str, scope_id: str, key: str,
               agent_id: str, workflow_id: str) -> Record | None:
        old = self.store.delete(scope, scope_id, key, agent_id, workflow_id)
        if old is not None:
            self._committed()
        return old

    def _committed(self) -> None:
        """The change is durable; nothing here may turn its answer into an error."""
        PUBLISHED.inc()
        try:
            self.follower.ensure_running()
        except Exception:  # the next stream or write starts it; the log has the change
            log.exception("could not start the log follower")
            return
        self.follower.wake()


def current_service() -> Service:
    return current_app.extensions[EXTENSION]
