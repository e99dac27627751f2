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


class FairPool(Generic[C]):
    def __init__(self, connect: Callable[[], C], size: int) -> None:
        self._connect = connect
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[C] = []  # the most recently used first out: its pages are warm
        self._waiting: deque[list] = deque()  # [event, connection] handed over on put
        self._opened = 0

    def get(self) -> C:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            grow = self._opened < self._size
            if grow:
                self._opened += 1
            else:
                handoff = [threading.Event(), None]
                self._waiting.append(handoff)
        if grow:
            try:
                return self._connect()
            except BaseException:
                with self._lock:
                    self._opened -= 1
                raise
        handoff[0].wait()
        return handoff[1]

    def put(self, conn: C) -> None:
        with self._lock:
            if not self._waiting:
                self._idle.append(conn)
                return
            handoff = self._waiting.popleft()
        handoff[1] = conn
        handoff[0].set()

    def drain(self) -> list[C]:
        """The idle connections, taken out of the pool (to close them)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
        return idle
