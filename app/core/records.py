"""A memory record: one key's current value in one scope, and who wrote it where."""
from __future__ import annotations

from dataclasses import dataclass

from ..wire import record_json


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    data: str  # JSON text, embedded in answers as it is
    scope: str
    scope_id: str
    created_at: float
    updated_at: float
    version: int  # the id of the event that last changed it
    expires_at: float | None = None

    @property
    def json(self) -> str:
        return record_json(self.key, self.data, self.scope, self.scope_id, self.created_at,
                           self.updated_at, self.version, self.expires_at)


@dataclass(frozen=True, slots=True)
class Author:
    """Who made a change, as the event's ``metadata`` names them."""
    agent_id: str = ""
    actor_id: str = ""
    workflow_id: str = ""
