"""Time to live: records whose time ran out are removed, each with one ``delete`` event.

Every process runs this in its log follower, so expiries are logged within a second even
when only one process is up. Removal is a conditional delete inside the store's write
transaction, so however many processes or hosts try at once, each expiry is logged once, and
it happens in small batches so writers and streams never wait behind a large one.
"""
from __future__ import annotations

import time

from ..store import Store
from .pause import pause

#: how often a process looks for the next expiry, which another process may have written
LOOK_SECONDS = 0.5
#: records removed per write transaction
BATCH = 100


class Expiry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._due: float | None = None
        self._looked_at = 0.0

    def wait_seconds(self, now: float) -> float:
        """How long the follower may sleep before this needs to run."""
        until_look = self._looked_at + LOOK_SECONDS - now
        if self._due is None:
            return max(0.0, until_look)
        return max(0.0, min(until_look, self._due - now))

    def run(self, now: float) -> int:
        """Remove what is due; returns how many records expired."""
        if now < self._looked_at + LOOK_SECONDS and (self._due is None or now < self._due):
            return 0
        removed = 0
        while True:
            count = self.store.expire(BATCH)
            removed += count
            if count < BATCH:
                break
            pause()
        self._due = self.store.next_expiry()
        self._looked_at = time.time()
        return removed
