"""The service one app instance runs: settings, store, broker and log follower, wired once."""
from __future__ import annotations

from flask import current_app

from .broker import Broker
from .follower import Follower
from .metrics import PUBLISHED
from .settings import Settings
from .store import Record, open_store

EXTENSION = "memory_events"


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings.db_url)
        self.broker = Broker(0, settings.subscriber_queue)
        self.follower = Follower(self.store, self.broker, settings.poll_seconds,
                                 settings.retention_hours * 3600.0)

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
        PUBLISHED.inc()
        self.follower.ensure_running()
        self.follower.wake()


def current_service() -> Service:
    return current_app.extensions[EXTENSION]
