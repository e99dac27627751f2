"""A small pool of connections that serves waiters in the order they came.

A queue lets a thread that has just put a connection back take it again before a thread
that was already waiting wakes up, so under load some requests wait for seconds while others
never do. Here a returned connection goes straight to the first waiter.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, TypeVar

C = TypeVar("C")


class _Handoff(Generic[C]):
    """What a waiter is given: a connection, or leave to open one (``None``)."""
    __slots__ = ("ready", "conn")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.conn: C | None = None


class FairPool(Generic[C]):
    def __init__(self, connect: Callable[[], C], size: int) -> None:
        self._connect = connect
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[C] = []  # the most recently used first out: its pages are warm
        self._waiting: deque[_Handoff[C]] = deque()
        self._opened = 0

    def get(self) -> C:
        handoff: _Handoff[C] | None = None
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._opened < self._size:
                self._opened += 1
            else:
                handoff = _Handoff()
                self._waiting.append(handoff)
        if handoff is None:
            return self._open()
        handoff.ready.wait()
        return handoff.conn if handoff.conn is not None else self._open()

    def _open(self) -> C:
        """Connect in a slot already counted; a failure frees the slot for the next waiter."""
        try:
            return self._connect()
        except BaseException:
            with self._lock:
                if self._waiting:  # it opens one itself rather than wait for none to return
                    self._waiting.popleft().ready.set()
                else:
                    self._opened -= 1
            raise

    def put(self, conn: C) -> None:
        with self._lock:
            if not self._waiting:
                self._idle.append(conn)
                return
            handoff = self._waiting.popleft()
        handoff.conn = conn
        handoff.ready.set()

    def drain(self) -> list[C]:
        """The idle connections, taken out of the pool (to close them)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
        return idle
