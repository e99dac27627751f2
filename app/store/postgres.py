"""PostgreSQL: one database shared by every process on every host, so one log orders them all.

Imported only when a ``postgresql://`` URL is opened, which happens in a worker after gevent has
patched the standard library: psycopg then waits on sockets through gevent (it checks for the
patch at import), so a query parks its greenlet instead of stalling the hub.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool

from ..core.events import Event
from ..core.globs import shape
from .interface import StoreUnavailable
from .sql import EVENT_COLUMNS, EXPIRE, EXPIRED, INSERT_EVENTS, SqlStore

log = logging.getLogger(__name__)

#: the channel every committed event is announced on
CHANNEL = "memory_events"
#: the advisory lock each write transaction takes first (a constant spelling "memevlog")
LOG_LOCK = int.from_bytes(b"memevlog", "big")
#: the advisory lock of the process that removes expired records ("memevexp")
EXPIRY_LOCK = int.from_bytes(b"memevexp", "big")
#: how long a request waits for a pooled connection before it answers 503
POOL_TIMEOUT_SECONDS = 2.0
#: a pooled connection idle for longer than this is tested before it is handed out
CHECK_IDLE_SECONDS = 1.0
#: how long the pool retries one lost connection before giving it up; the next request that
#: finds the pool empty starts a fresh attempt at once, so a restarted server is found quickly
RECONNECT_SECONDS = 4.0
#: the listening connection's first and longest pause between attempts to reconnect
LISTEN_RETRY_SECONDS = (0.2, 5.0)
#: how often the listening connection looks whether the store was closed
LISTEN_CHECK_SECONDS = 1.0
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": 2,
    # The listening connection is silent for as long as nobody writes: keepalives are how it
    # notices a server that vanished without closing the socket.
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
}
#: A write never queues forever behind a stuck writer, and a writer stuck inside a transaction
#: (a frozen or cut-off host) is ended by the server, which releases the log lock. Every read
#: here is a page of an index range in the index's order, which stops at its limit; a bitmap
#: scan reads the whole range and sorts it, and the planner picks one whenever it believes the
#: range small, as it does of every table it has no statistics for yet.
SESSION_SETUP = ("SET lock_timeout = '5s'; "
                 "SET idle_in_transaction_session_timeout = '15s'; "
                 "SET enable_bitmapscan = off")


class PostgresStore(SqlStore):
    """The memory rows and the event log in PostgreSQL, behind the same queries as SQLite.

    **Commit order.** Followers read the log by ``id > cursor``, so an id must never become
    visible after a larger one: a follower that already moved past it would skip it for good.
    A sequence alone does not promise that — two transactions can draw ids 7 and 8 and commit 8
    first. So every write transaction starts with ``pg_advisory_xact_lock(LOG_LOCK)``: writers
    across all hosts take turns, each draws its id while holding the lock, and the lock is only
    released after the commit is visible. Ids therefore become visible in id order (gaps from
    rolled-back transactions are harmless: nothing ever fills them). The same lock serialises
    schema creation, where two hosts running ``CREATE TABLE IF NOT EXISTS`` at once could
    otherwise collide, and makes each read-then-write of a memory row atomic. A batch of
    expiries first tries a second lock, ``EXPIRY_LOCK``, without waiting: one process on one
    host removes expired records at a time, and the others never queue for the log's lock
    to do the same.

    **Wake-ups.** Each event's transaction also runs ``NOTIFY``, delivered only on commit, with
    the writing process's token. One listening connection per process turns the other
    processes' notifications into follower wake-ups (its own commits are handed over
    directly); the follower reads the log itself, so a notification lost while reconnecting
    costs only latency (the listener wakes the follower after every reconnect, and the
    follower also polls).

    **Failures.** Any connection failure or pool timeout becomes ``StoreUnavailable`` (503 and
    ``Retry-After`` for requests, a retry for the follower). Timeouts are short so requests do
    not pile up while the server is away, and a checked-out connection that has been idle for
    a while is tested first, so the first requests after a restart do not fail on connections
    the restart broke (one in steady use is not: the test is a round trip).
    """

    param = "%s"
    id_column = "BIGSERIAL PRIMARY KEY"
    collate = ' COLLATE "C"'
    blob = "BYTEA"
    poll_seconds = 1.0
    #: writers queue for the log's lock and are let in in turn
    lock_retry_seconds = 0.0
    pool_size = 5

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._token = uuid.uuid4().hex  # names this process's notifications
        self._notified = False  # in the open write transaction
        self._closed = threading.Event()
        self._pool = ConnectionPool(
            url, min_size=1, max_size=self.pool_size, open=False, name="memory-events",
            timeout=POOL_TIMEOUT_SECONDS, reconnect_timeout=RECONNECT_SECONDS,
            kwargs={"autocommit": True, **CONNECTION_OPTIONS},
            configure=self._configure, check=self._check, reset=self._returned)
        self._used: weakref.WeakKeyDictionary[psycopg.Connection, float] = (
            weakref.WeakKeyDictionary())
        self._pool.open()
        try:
            with self._write() as cur:
                self._create_schema(cur)
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        conn.execute(SESSION_SETUP)

    def _returned(self, conn: psycopg.Connection) -> None:
        self._used[conn] = time.monotonic()

    def _check(self, conn: psycopg.Connection) -> None:
        if time.monotonic() - self._used.get(conn, 0.0) > CHECK_IDLE_SECONDS:
            ConnectionPool.check_connection(conn)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:  # pool timeouts are OperationalErrors too
            raise StoreUnavailable(str(exc)) from exc

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._connection() as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def _consistent(self) -> Iterator[Any]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cur

    @contextmanager
    def _write(self, expiring: bool = False) -> Iterator[Any]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            if expiring:  # before the log lock, so a process that is not let in never queues
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (EXPIRY_LOCK,))
                if not cur.fetchone()[0]:
                    yield None
                    return
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
            self._notified = False
            yield cur

    def _log(self, cur: Any, rows: list[tuple]) -> list[int]:
        ids = super()._log(cur, rows)
        self._notify(cur)
        return ids

    def _expire(self, cur: Any, moment: float, limit: int) -> int:
        """One statement: the delete feeds the insert of the events inside the server, so the
        log's lock is held for the least time and no row crosses the network twice."""
        cur.execute(self._sql(f"WITH gone AS ({EXPIRE}) {INSERT_EVENTS} "
                              "SELECT ?, scope, scope_id, key, 'delete', NULL, data, '', '', '', ? "
                              "FROM gone ORDER BY expires_at, scope, scope_id, key "
                              f"RETURNING {EVENT_COLUMNS}"), (moment, limit, moment, EXPIRED))
        events = sorted((Event(*row) for row in cur.fetchall()), key=lambda event: event.id)
        if events:
            self._logged += events
            self._notify(cur)
        return len(events)

    def _notify(self, cur: Any) -> None:
        """Once per transaction: the others read everything it logged when woken."""
        if not self._notified:
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
            self._notified = True

    def _has_column(self, cur: Any, table: str, column: str) -> bool:
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = %s AND column_name = %s", (table, column))
        return cur.fetchone() is not None

    unindexed = "COALESCE({}, '')"  # every text column is NOT NULL: the column itself
    key_like = "{} LIKE %s"

    @staticmethod
    def _like(pattern: str) -> str:
        return shape(pattern, "%", "_", lambda c: "\\" + c if c in "%_\\" else c)

    def _ids_in(self, column: str, ids: Sequence[int]) -> tuple[str, list]:
        return f"{column} = ANY(%s)", [list(ids)]

    def watch(self, wake: Callable[[], None],
              committed: Callable[[list[Event]], None] | None = None) -> None:
        super().watch(wake, committed)
        threading.Thread(target=self._listen, args=(wake,), name="memory-events-listener",
                         daemon=True).start()

    def _listen(self, wake: Callable[[], None]) -> None:
        """Hold this process's listening connection until the store closes, reconnecting
        with backoff."""
        first, longest = LISTEN_RETRY_SECONDS
        pause = first
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **CONNECTION_OPTIONS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    pause = first
                    wake()  # for whatever was committed while this process was not listening
                    while not self._closed.is_set():
                        for notice in conn.notifies(timeout=LISTEN_CHECK_SECONDS):
                            if notice.payload != self._token:
                                wake()
            except psycopg.Error as exc:
                if self._closed.is_set():
                    return
                log.warning("listening on %s failed, retrying in %.1fs: %s", CHANNEL, pause, exc)
            self._closed.wait(pause)
            pause = min(pause * 2, longest)

    def close(self) -> None:
        self._closed.set()
        self._pool.close()
