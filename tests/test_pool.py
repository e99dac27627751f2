"""The store's connection pool: waiters are served in turn, and a failed connect does not
strand them."""
from __future__ import annotations

import threading

from app.store.pool import FairPool

from .conftest import wait_until


def test_a_returned_connection_goes_to_the_first_waiter_not_back_to_its_giver():
    pool = FairPool(lambda: object(), 1)
    held = pool.get()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.get()))
    waiter.start()
    wait_until(lambda: pool._waiting, message="a waiter")
    pool.put(held)
    again = threading.Thread(target=lambda: got.append(pool.get()))  # would barge in a queue
    again.start()
    waiter.join(5)
    assert got == [held]
    pool.put(got[0])
    again.join(5)
    assert got == [held, held]


def test_a_failed_connect_lets_a_waiter_open_its_own():
    attempts: list[int] = []
    gate = threading.Event()

    def connect() -> object:
        attempts.append(1)
        if len(attempts) == 1:
            gate.wait(5)
            raise OSError("too many open files")
        return object()

    pool = FairPool(connect, 1)
    failed: list[BaseException] = []

    def first() -> None:
        try:
            pool.get()
        except OSError as exc:
            failed.append(exc)

    got: list[object] = []
    threads = [threading.Thread(target=first),
               threading.Thread(target=lambda: got.append(pool.get()))]
    threads[0].start()
    wait_until(lambda: attempts, message="the first connect")
    threads[1].start()
    wait_until(lambda: pool._waiting, message="a waiter")
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(failed) == 1 and len(got) == 1 and len(attempts) == 2


def test_draining_closes_only_what_is_idle():
    pool = FairPool(lambda: object(), 2)
    kept, idle = pool.get(), pool.get()
    pool.put(idle)
    assert pool.drain() == [idle] and pool.drain() == []
    pool.put(kept)
