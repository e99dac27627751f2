"""Time to live: records whose time ran out are removed, each with one ``delete`` event.

Every process runs this in its log follower, so expiries are logged within a second even
when only one process is up, but one process at a time does the work (the store lets in one
and tells the others so). Removal is a conditional delete inside the store's write
transaction, so however many processes or hosts try at once, each expiry is logged once.

Many records expiring at once must not stall writers: each batch is one short transaction,
whose events streams get as it commits, and between two batches the expiry pauses longer
than a waiting writer sleeps between two tries of the write lock, so writers get in.
"""
from __future__ import annotations

import time

from ..store import Store

#: how often a process looks for the next expiry, which another process may have written
LOOK_SECONDS = 0.5
#: records removed per write transaction: what a writer may wait behind
BATCH = 100
#: between two batches, beyond the store's ``lock_retry_seconds``: the worker serves what
#: waits for it
PAUSE_SECONDS = 0.001
#: the work of one pass at most; the follower's other duties run before the next
PASS_SECONDS = 0.25


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
        """Remove what is due, for up to ``PASS_SECONDS``; returns how many records expired.

        When another process is removing them, this one looks again after ``LOOK_SECONDS``
        (in case that process stops), not at once.
        """
        if now < self._looked_at + LOOK_SECONDS and (self._due is None or now < self._due):
            return 0
        removed, ends = 0, time.monotonic() + PASS_SECONDS
        while True:
            count = self.store.expire(BATCH)
            if count is not None:
                removed += count
            if count is None or count < BATCH or time.monotonic() > ends:
                break
            time.sleep(self.store.lock_retry_seconds + PAUSE_SECONDS)
        self._due = None if count is None else self.store.next_expiry()
        self._looked_at = time.time()
        return removed
