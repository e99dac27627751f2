"""Group commit: the writes a process's requests make at the same moment share one transaction.

Each write still runs its own statements and checks, in the order the requests arrived, and
its answer waits for the commit, so "answered means durable" holds as before; what is shared is
the write lock, the transaction and the commit, which cost more than the statements. A write
that is refused (a version conflict) writes nothing of its own and does not disturb the others
(it may have logged the expiry of a record whose time ran out, which stands either way); a
transaction that fails fails every write in it.

The first writer to arrive leads: it lets the others that are ready join, commits them all,
and hands the lead to the first of those that arrived meanwhile. With threads, the others
arrive while the leader's statements run (SQLite lets go of the GIL); under gevent they run
only when it yields, so there the leader first gives them one pass of the scheduler.
"""
from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from typing import Any, Callable, Generic, TypeVar

from ..core.errors import ServiceError

T = TypeVar("T")
Write = Callable[[Any], Any]


class _Slot(Generic[T]):
    __slots__ = ("write", "done", "lead", "result", "error")

    def __init__(self, write: Callable[[Any], T]) -> None:
        self.write = write
        self.done = threading.Event()
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    def __init__(self, transaction: Callable[[], AbstractContextManager[Any]]) -> None:
        self._transaction = transaction
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._leading = False
        #: greenlets, not threads: only a yield lets other writes reach the queue
        self._cooperative = time.sleep.__module__.startswith("gevent")

    def run(self, write: Callable[[Any], T]) -> T:
        """``write(cursor)`` inside a write transaction; its result once committed."""
        slot: _Slot[T] = _Slot(write)
        with self._lock:
            self._waiting.append(slot)
            slot.lead = not self._leading
            self._leading = True
        if not slot.lead:
            slot.done.wait()
        if slot.lead:  # first to arrive, or handed the lead by the writer before it
            self._commit()
        return slot.outcome()

    def _commit(self) -> None:
        if self._cooperative:
            time.sleep(0)  # the requests that are ready reach their write and join this one
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            with self._transaction() as cur:
                for slot in batch:
                    try:
                        slot.result = slot.write(cur)
                    except ServiceError as refused:  # raised before it wrote its change
                        slot.error = refused
        except BaseException as failed:
            for slot in batch:
                slot.error = failed
        with self._lock:
            if self._waiting:
                self._waiting[0].lead = True
                self._waiting[0].done.set()
            else:
                self._leading = False
        for slot in batch:
            slot.done.set()
