"""SQLite: the embedded default. WAL mode, short transactions, a few pooled connections."""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

from ..core.events import Event
from .doorbell import Doorbell
from .interface import StoreUnavailable
from .pool import FairPool
from .sql import SqlStore

log = logging.getLogger(__name__)

MEMORY = ":memory:"
#: how long a write waits for another process's to end before it answers 503
LOCK_SECONDS = 10.0
#: the first and the longest pause between two tries of the write lock
LOCK_PAUSE = (0.0002, 0.002)
#: commits after which the follower moves the write-ahead log into the database, off the loop
CHECKPOINT_COMMITS = 200
#: pages the writing connection lets the log grow to before it does so itself, should those
#: checkpoints fall behind (SQLite's own default, 1,000, would put one in every 125th write)
AUTOCHECKPOINT_PAGES = 20_000
#: the file beside the database whose lock lets one process at a time remove expired records
EXPIRY_GATE = "-expiry"


class SqliteStore(SqlStore):
    """A file database shared by every worker process on one machine.

    sqlite3 calls block the gevent hub while they run, so every statement is short (the log
    reader pages). ``BEGIN IMMEDIATE`` takes the write lock up front, so ids commit in id order,
    which is what lets a follower read the log by ``id > cursor`` without missing anything.
    Writers from several processes wait for the lock in short cooperative pauses (see
    ``_begin_write``) rather than in SQLite's busy handler, and answer 503 after ``LOCK_SECONDS``.

    ``sqlite:///:memory:`` keeps everything in this process, on one connection that lives as
    long as the store: for tests and trials, not for a server with several workers.
    """

    pool_size = 4
    lock_retry_seconds = LOCK_PAUSE[1]

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._in_memory = path == MEMORY
        if not self._in_memory:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._pool = FairPool(self._open, 1 if self._in_memory else self.pool_size)
        self._doorbell = None if self._in_memory else Doorbell(path)
        self._writing = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        self._commits = 0  # since the last checkpoint
        with self._write() as cur:
            self._create_schema(cur)
        if not self._in_memory:
            self.close()  # connections are opened again on use, so none crosses a fork

    def _connect(self, timeout: float = LOCK_SECONDS) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=timeout)
        if not self._in_memory:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives any crash of the process (kill -9); only a power loss
            # can drop the last commits, and it never corrupts the file.
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                yield cur
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(str(exc)) from exc
            finally:
                cur.close()

    @contextmanager
    def _consistent(self) -> Iterator[Any]:
        with self._read() as cur:
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    @contextmanager
    def _writer(self) -> Iterator[sqlite3.Connection]:
        """The process's one writing connection: SQLite lets one writer in at a time anyway.
        It never waits inside SQLite for the lock (see ``_begin_write``)."""
        if self._in_memory:  # one connection holds the whole database
            with self._connection() as conn:
                yield conn
            return
        with self._writing:
            if self._write_conn is None:
                try:
                    self._write_conn = self._connect(timeout=0)
                    self._write_conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
                except sqlite3.Error as exc:
                    raise StoreUnavailable(str(exc)) from exc
            yield self._write_conn

    @staticmethod
    def _begin_write(cur: sqlite3.Cursor) -> None:
        """Take the write lock, waiting for another process's write to end.

        SQLite's own busy handler waits by sleeping inside the call, which under gevent stops
        every request and stream of the worker, in steps of up to 100 ms. So the lock is tried
        without waiting, and the wait between tries is a sleep that lets the worker go on
        (where more writes gather to share the next transaction).
        """
        deadline = time.monotonic() + LOCK_SECONDS
        pause = LOCK_PAUSE[0]
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreUnavailable(str(exc)) from exc
            time.sleep(pause)
            pause = min(pause * 2, LOCK_PAUSE[1])

    @contextmanager
    def _write(self, expiring: bool = False) -> Iterator[Any]:
        with ExitStack() as gate:
            if expiring and not gate.enter_context(self._expiry_gate()):
                yield None
                return
            with self._writer() as conn:
                cur = conn.cursor()
                self._begin_write(cur)
                try:
                    yield cur
                    conn.commit()
                except BaseException as exc:
                    conn.rollback()  # also after a failed commit: never pool a connection
                    if isinstance(exc, sqlite3.OperationalError):  # disk full, I/O error, busy
                        raise StoreUnavailable(str(exc)) from exc
                    raise
                finally:
                    cur.close()
            self._commits += 1
        if self._doorbell is not None:
            try:
                self._doorbell.ring()
            except OSError:  # committed: the others' poll finds it, only later
                log.warning("could not ring the other processes' doorbells", exc_info=True)

    @contextmanager
    def _expiry_gate(self) -> Iterator[bool]:
        """Whether this process may remove expired records now, by a lock on a file beside
        the database that is never waited for. The write lock alone would let every process
        expire in turn, each batch right after another's, with writers waiting behind all of
        them. The file is opened for each batch, so no lock is shared across a fork."""
        if self._in_memory:  # one process
            yield True
            return
        gate = os.open(self.path + EXPIRY_GATE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(gate)  # which lets go of the lock

    def _has_column(self, cur: Any, table: str, column: str) -> bool:
        cur.execute(f"PRAGMA table_info({table})")
        return any(row[1] == column for row in cur.fetchall())

    def watch(self, wake: Callable[[], None],
              committed: Callable[[list[Event]], None] | None = None) -> None:
        super().watch(wake, committed)
        if self._doorbell is None:
            return
        try:
            self._doorbell.listen(wake)
        except OSError as exc:  # the poll still finds other processes' writes, only later
            log.warning("no doorbell at %s (%s); polling every %ss",
                        self._doorbell.directory, exc, self.poll_seconds)

    def checkpoint(self) -> Callable[[], None] | None:
        if self._in_memory or self._commits < CHECKPOINT_COMMITS:
            return None
        self._commits = 0
        return self._checkpoint

    def _checkpoint(self) -> None:
        """A passive checkpoint, which waits for no reader or writer. It writes and syncs the
        database file, which would stall the commit that happened to trigger it: the follower
        has it run off the event loop instead."""
        conn = self._open()  # its own: the pool's locks are the event loop's
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def audible(self, on: bool) -> None:
        if self._doorbell is None:
            return
        try:
            self._doorbell.audible(on)
        except OSError:  # the poll still finds other processes' writes, only later
            log.warning("could not rename this process's doorbell", exc_info=True)

    def close(self) -> None:
        with self._writing:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None
        for conn in self._pool.drain():
            conn.close()
