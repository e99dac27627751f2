"""The SQL every database shares: memory records, the event log and vectors.

Each database says how to connect, how to open a write transaction (which holds the log's
write lock, so ids commit in id order) and a consistent read, and how to spell a few things.
"""
from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator, Sequence

from ..core.errors import VersionConflict
from ..core.events import Event
from ..core.filters import KeyRange, LogFilter, implied_scope_id, successor
from ..core.globs import shape
from ..core.pause import pause
from ..core.records import Author, Record
from ..wire import EXPIRED
from . import logreader
from .batch import GroupCommit
from .interface import Listing, StoredVector

EVENT_COLUMNS = ("id, epoch, scope, scope_id, key, action, data, previous_data, agent_id, "
                 "actor_id, workflow_id, reason")
RECORD_COLUMNS = "key, data, scope, scope_id, created_at, updated_at, version, expires_at"
INSERT_EVENTS = ("INSERT INTO events (epoch, scope, scope_id, key, action, data, previous_data, "
                 "agent_id, actor_id, workflow_id, reason)")
EVENT_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
VECTOR_COLUMNS = "scope, scope_id, key, embedding, metadata, created_at, updated_at, seq"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS memory (
        scope TEXT{collate} NOT NULL, scope_id TEXT{collate} NOT NULL,
        key TEXT{collate} NOT NULL, data TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope, scope_id, key))""",
    """CREATE TABLE IF NOT EXISTS events (
        id {id_column}, epoch DOUBLE PRECISION NOT NULL,
        scope TEXT NOT NULL, scope_id TEXT NOT NULL, key TEXT NOT NULL, action TEXT NOT NULL,
        data TEXT, previous_data TEXT, agent_id TEXT NOT NULL, workflow_id TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS log_meta (
        name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vectors (
        scope TEXT{collate} NOT NULL, scope_id TEXT{collate} NOT NULL,
        key TEXT{collate} NOT NULL, embedding {blob}, metadata TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        seq BIGINT NOT NULL, PRIMARY KEY (scope, scope_id, key))""",
)
#: columns added since the first version, created on start where missing
COLUMNS = (
    ("memory", "version", "BIGINT NOT NULL DEFAULT 0"),
    ("memory", "expires_at", "DOUBLE PRECISION"),
    ("events", "actor_id", "TEXT NOT NULL DEFAULT ''"),
    ("events", "reason", "TEXT"),
)
INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_scope ON events (scope, scope_id, id)",
    "DROP INDEX IF EXISTS events_epoch",  # by epoch alone: it could not serve ids
    "CREATE INDEX IF NOT EXISTS events_since ON events (epoch, id)",
    "CREATE INDEX IF NOT EXISTS events_key ON events (key{collate}, id)",
    "CREATE INDEX IF NOT EXISTS memory_key ON memory (key, scope, scope_id)",
    "CREATE INDEX IF NOT EXISTS memory_scope ON memory (scope, key, scope_id)",
    "CREATE INDEX IF NOT EXISTS memory_expiry ON memory (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS vectors_seq ON vectors (scope, scope_id, seq)",
    "CREATE INDEX IF NOT EXISTS vectors_deleted ON vectors (updated_at) WHERE embedding IS NULL",
)
META = ("trimmed_through", "vector_seq")
#: the version of records written before versions existed: the newest event logged for them
BACKFILL_VERSIONS = (
    "UPDATE memory SET version = COALESCE((SELECT MAX(e.id) FROM events e "
    "WHERE e.key = memory.key AND e.scope = memory.scope AND e.scope_id = memory.scope_id), "
    "(SELECT value FROM log_meta WHERE name = 'trimmed_through')) WHERE version = 0")
#: records whose time ran out (``memory_expiry`` serves it)
DUE = "expires_at IS NOT NULL AND expires_at <= ?"
#: removes up to a number of the records due at a moment, each at most once however many
#: try at the same time, and returns what their events need
EXPIRE = ("DELETE FROM memory WHERE (scope, scope_id, key) IN (SELECT scope, scope_id, key "
          f"FROM memory WHERE {DUE} ORDER BY expires_at LIMIT ?) "
          "RETURNING scope, scope_id, key, data, expires_at")
#: records read per statement when a listing has no limit
LIST_PAGE = 1000
#: index entries one statement of an index narrowing reads
INDEX_PAGE = logreader.WINDOW
#: events one trimming statement deletes, so a large trim never holds the write lock long
TRIM_BATCH = 5000
#: deleted vectors are kept this long, so other processes' caches learn of the deletion
VECTOR_TOMBSTONE_SECONDS = 3600.0
#: the key of a scope's record of its forgotten deletions: keys are never empty
FORGOTTEN_KEY = ""


def now() -> float:
    """Microseconds, as every timestamp on the wire shows, so ``since=<an event's timestamp>``
    always includes that event."""
    return round(time.time(), 6)


class SqlStore(ABC):
    """Queries shared by every SQL database. Subclasses provide connections and transactions."""

    #: placeholder style of the driver, ``?`` or ``%s``
    param = "?"
    #: the id column in ``CREATE TABLE events``: never reuses an id, even after a trim
    id_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    #: makes keys compare by code point, as SQLite's default does, whatever the locale
    collate = ""
    blob = "BLOB"
    #: how often a follower looks for writes it was not told about (other processes)
    poll_seconds = 0.25
    #: the longest a writer waiting for the write lock sleeps between two tries
    lock_retry_seconds: float
    #: a text column that no index can serve in a condition, so that a read bounded by the id
    #: range is planned on the primary key, whatever the planner guesses of the other indexes
    unindexed = "+{}"
    #: a key matching a loose pattern (``_like``): SQLite's ``GLOB`` is case-sensitive
    key_like = "{} GLOB ?"

    def __init__(self) -> None:
        #: memory writes made at the same moment in this process share a transaction
        self._group = GroupCommit(self._logging)
        #: the events the open write transaction logged
        self._logged: list[Event] = []
        self._committed: Callable[[list[Event]], None] | None = None

    # -- provided by each database -----------------------------------------------------------
    @abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A cursor for one read."""

    @abstractmethod
    def _consistent(self) -> AbstractContextManager[Any]:
        """Several reads that see one database snapshot."""

    @abstractmethod
    def _write(self, expiring: bool = False) -> AbstractContextManager[Any]:
        """A transaction that holds the log's write lock, so ids commit in id order.

        ``expiring``: the transaction removes expired records; it first takes the expiry gate
        without waiting and yields ``None`` (no transaction) when another process holds it, so
        writers never queue behind several processes' expiries.
        """

    @abstractmethod
    def _has_column(self, cur: Any, table: str, column: str) -> bool:
        """Whether an existing table has the column (schema upgrades add missing ones)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection; the store opens new ones if used again."""

    @staticmethod
    def _like(pattern: str) -> str:
        return shape(pattern, "*", "?", lambda c: f"[{c}]" if c in "*?[" else c)

    def _ids_in(self, column: str, ids: Sequence[int]) -> tuple[str, list]:
        """``column IN (ids)`` in this database's spelling."""
        return f"{column} IN ({','.join('?' * len(ids))})", list(ids)

    def watch(self, wake: Callable[[], None],
              committed: Callable[[list[Event]], None] | None = None) -> None:
        """Call ``wake`` when another process may have written (without such a signal the
        follower's poll finds those writes), and ``committed`` after each commit of this
        process that logged events."""
        self._committed = committed

    def audible(self, on: bool) -> None:
        """Whether other processes' commits should wake this one now; a store that cannot
        choose wakes it either way."""

    def checkpoint(self) -> Callable[[], None] | None:
        """File work the writes left for later, to run off the event loop, when it is due
        (never, where the database does it itself)."""
        return None

    @contextmanager
    def _logging(self, expiring: bool = False) -> Iterator[Any]:
        """A write transaction whose logged events are handed to ``committed`` once it has
        committed, so this process publishes its own changes without reading them back.

        ``_logged`` belongs to whoever holds the log's lock: an expiry that was not let in
        (``cur`` ``None``) holds nothing and leaves it alone.
        """
        with self._write(expiring) as cur:
            if cur is None:
                yield None
                return
            self._logged = []
            yield cur
            logged, self._logged = self._logged, []
        if self._committed is not None and logged:
            self._committed(logged)

    # -- shared ------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.param == "?" else text.replace("?", self.param)

    def _create_schema(self, cur: Any) -> None:
        for statement in SCHEMA:
            cur.execute(statement.format(id_column=self.id_column, collate=self.collate,
                                         blob=self.blob))
        added = set()
        for table, column, definition in COLUMNS:
            if not self._has_column(cur, table, column):
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                added.add((table, column))
        for statement in INDEXES:
            cur.execute(statement.format(collate=self.collate))
        for name in META:
            cur.execute(self._sql("INSERT INTO log_meta (name, value) VALUES (?, 0) "
                                  "ON CONFLICT (name) DO NOTHING"), (name,))
        if ("memory", "version") in added:
            cur.execute(BACKFILL_VERSIONS)

    def ping(self) -> None:
        with self._read() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    # -- memory ------------------------------------------------------------------------------
    def _row(self, cur: Any, scope: str, scope_id: str, key: str) -> Record | None:
        """The row as stored, expired or not."""
        cur.execute(self._sql(f"SELECT {RECORD_COLUMNS} FROM memory "
                              "WHERE scope = ? AND scope_id = ? AND key = ?"),
                    (scope, scope_id, key))
        row = cur.fetchone()
        return Record(*row) if row else None

    def get(self, scope: str, scope_id: str, key: str) -> Record | None:
        with self._read() as cur:
            record = self._row(cur, scope, scope_id, key)
        return record if record is not None and _live(record, now()) else None

    def list_page(self, scope: str, scope_id: str | None, prefix: str | None,
                  after: tuple[str, str] | None, limit: int | None) -> Listing:
        """Without ``limit``, the whole scope, still read a page at a time (in the one
        snapshot), so no single statement holds the worker for long."""
        records: list[Record] = []
        scope_id = implied_scope_id(scope, scope_id)
        filtered = scope_id is None and bool(prefix)
        with self._consistent() as cur:
            head = self._head_id(cur)
            while True:
                want = LIST_PAGE if limit is None else limit + 1 - len(records)
                walk_end = self._walk_end(cur, scope, after) if filtered else None
                sql, args = self._list_query(scope, scope_id, prefix, after, walk_end, want)
                cur.execute(self._sql(sql), tuple(args))
                rows = [Record(*row) for row in cur.fetchall()]
                records += rows
                if limit is not None and len(records) > limit:
                    break
                if len(rows) == want:
                    after = (rows[-1].scope_id, rows[-1].key)
                elif walk_end is not None:
                    after = walk_end
                else:
                    break
                pause()
        more = limit is not None and len(records) > limit
        records = records[:limit]
        return Listing(records, head, (records[-1].scope_id, records[-1].key) if more else None)

    def _list_query(self, scope: str, scope_id: str | None, prefix: str | None,
                    after: tuple[str, str] | None, walk_end: tuple[str, str] | None,
                    limit: int) -> tuple[str, list]:
        """A page of the primary key (scope, scope_id, key) from the cursor on. Within a scope
        id the prefix is part of the range. Across scope ids it can only filter (the order is
        by scope id first), so there the range ends at ``walk_end``: a page then reads the rows
        between its matches, at most ``LIST_PAGE`` per statement."""
        sql = f"SELECT {RECORD_COLUMNS} FROM memory WHERE scope = ?"
        args: list = [scope]
        if scope_id is not None:
            sql += " AND scope_id = ?"
            args.append(scope_id)
            sql, args = self._prefix(sql, args, prefix, after[1] if after else None)
        else:
            # the key's indexes would serve the prefix, but not the order
            sql, args = self._prefix(sql, args, prefix, column=self.unindexed.format("key"))
            if after is not None:
                sql += " AND (scope_id, key) > (?, ?)"
                args += [after[0], after[1]]
            if walk_end is not None:
                sql += " AND (scope_id, key) <= (?, ?)"
                args += [walk_end[0], walk_end[1]]
        sql += " AND (expires_at IS NULL OR expires_at > ?) ORDER BY scope_id, key LIMIT ?"
        return sql, args + [now(), limit]

    def _walk_end(self, cur: Any, scope: str,
                  after: tuple[str, str] | None) -> tuple[str, str] | None:
        """Where a walk of ``LIST_PAGE`` rows of the scope from ``after`` ends, read from the
        primary key alone; ``None`` when fewer rows are left."""
        sql, args = "SELECT scope_id, key FROM memory WHERE scope = ?", [scope]
        if after is not None:
            sql += " AND (scope_id, key) > (?, ?)"
            args += [after[0], after[1]]
        cur.execute(self._sql(f"{sql} ORDER BY scope_id, key LIMIT 1 OFFSET ?"),
                    (*args, LIST_PAGE - 1))
        row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def _prefix(self, sql: str, args: list, prefix: str | None, after: str | None = None,
                column: str = "key") -> tuple[str, list]:
        """Keys that start with ``prefix`` and come after ``after``, as one range."""
        if after is not None and not (prefix and after < prefix):
            sql += f" AND {column} > ?"
            args.append(after)
        elif prefix:
            sql += f" AND {column} >= ?"
            args.append(prefix)
        high = successor(prefix) if prefix else None
        if high is not None:
            sql += f" AND {column} < ?"
            args.append(high)
        return sql, args

    def records(self, where: LogFilter, after: tuple[str, str, str] | None,
                limit: int) -> list[Record]:
        """One snapshot page, in (key, scope, scope_id) order; each key range is walked in turn.

        What the filter fixes drops out of the order, and the rest is the cursor: ``key`` on
        the primary key within an exact scope id, ``(key, scope_id)`` on ``memory_scope``
        within a scope, ``(key, scope, scope_id)`` on ``memory_key`` otherwise. So the cursor
        is where an index range starts, and a page costs its own size.
        """
        fixed = {column: value for column, value in (("scope", where.scope),
                                                     ("scope_id", where.scope_id))
                 if value is not None}
        order = [column for column in ("key", "scope", "scope_id") if column not in fixed]
        resume = f"({', '.join(order)}) > ({', '.join('?' * len(order))})"
        resume_args = [value for column, value in zip(("key", "scope", "scope_id"), after or ())
                       if column in order]
        found: list[Record] = []
        for span in where.keys or (KeyRange("", None),):
            if after is not None and span.high is not None and after[0] >= span.high:
                continue
            if after is not None and after[0] >= span.low:
                sql, args = resume, list(resume_args)
            else:
                sql, args = "key >= ?", [span.low]
            if span.high is not None:
                sql += " AND key < ?"
                args.append(span.high)
            for column, value in fixed.items():
                sql += f" AND {column} = ?"
                args.append(value)
            args += [now(), limit - len(found)]
            with self._read() as cur:
                cur.execute(self._sql(f"SELECT {RECORD_COLUMNS} FROM memory WHERE {sql} AND "
                                      "(expires_at IS NULL OR expires_at > ?) "
                                      f"ORDER BY {', '.join(order)} LIMIT ?"), tuple(args))
                found += [Record(*row) for row in cur.fetchall()]
            if len(found) >= limit:
                break
        return found

    def _precheck(self, scope: str, scope_id: str, key: str, if_version: int | None) -> None:
        """Refuse a conditional write that cannot succeed without taking the write lock.

        Versions only grow, so a record read with another version will never have the one
        asked for again; only ``"0"`` (absent) can come back, by a delete, so that case is
        left to the check under the lock. A refusal here is true of the moment of the read.
        """
        if if_version:
            current = self.get(scope, scope_id, key)
            if current is None or current.version != if_version:
                raise VersionConflict(current)

    def set(self, scope: str, scope_id: str, key: str, data: str, author: Author,
            if_version: int | None = None, ttl_seconds: float | None = None) -> Record:
        self._precheck(scope, scope_id, key, if_version)
        return self._group.run(lambda cur: self._set(cur, scope, scope_id, key, data, author,
                                                     if_version, ttl_seconds))

    def _set(self, cur: Any, scope: str, scope_id: str, key: str, data: str, author: Author,
             if_version: int | None, ttl_seconds: float | None) -> Record:
        moment = now()
        old = self._current(cur, scope, scope_id, key, moment)
        _check_version(old, if_version)
        event_id = self._insert_event(cur, moment, scope, scope_id, key, "set", data,
                                      old.data if old else None, author)
        expires_at = round(moment + ttl_seconds, 6) if ttl_seconds else None
        if old is None:
            cur.execute(self._sql(
                "INSERT INTO memory (scope, scope_id, key, data, created_at, updated_at, "
                "version, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                (scope, scope_id, key, data, moment, moment, event_id, expires_at))
        else:
            cur.execute(self._sql("UPDATE memory SET data = ?, updated_at = ?, version = ?, "
                                  "expires_at = ? WHERE scope = ? AND scope_id = ? "
                                  "AND key = ?"),
                        (data, moment, event_id, expires_at, scope, scope_id, key))
        return Record(key, data, scope, scope_id, old.created_at if old else moment, moment,
                      event_id, expires_at)

    def delete(self, scope: str, scope_id: str, key: str, author: Author,
               if_version: int | None = None) -> Record | None:
        self._precheck(scope, scope_id, key, if_version)
        return self._group.run(lambda cur: self._delete(cur, scope, scope_id, key, author,
                                                        if_version))

    def _delete(self, cur: Any, scope: str, scope_id: str, key: str, author: Author,
                if_version: int | None) -> Record | None:
        moment = now()
        old = self._current(cur, scope, scope_id, key, moment)
        _check_version(old, if_version)
        if old is not None:
            self._remove(cur, old, moment, author, None)
        return old

    def _current(self, cur: Any, scope: str, scope_id: str, key: str,
                 moment: float) -> Record | None:
        """The live row inside a write; one whose time ran out is removed first, with its
        event, so every expiry is logged exactly once."""
        old = self._row(cur, scope, scope_id, key)
        if old is not None and not _live(old, moment):
            self._remove(cur, old, moment, Author(), EXPIRED)
            return None
        return old

    def _remove(self, cur: Any, old: Record, moment: float, author: Author,
                reason: str | None) -> None:
        cur.execute(self._sql("DELETE FROM memory WHERE scope = ? AND scope_id = ? AND key = ?"),
                    (old.scope, old.scope_id, old.key))
        self._insert_event(cur, moment, old.scope, old.scope_id, old.key, "delete", None,
                           old.data, author, reason)

    def expire(self, limit: int) -> int | None:
        """One batch: a conditional delete and one insert of the events, in one transaction,
        whose events are handed over as it commits; ``None`` when another process is
        expiring."""
        moment = now()
        with self._read() as cur:  # most passes find nothing: no write lock for them
            cur.execute(self._sql(f"SELECT 1 FROM memory WHERE {DUE} LIMIT 1"), (moment,))
            if cur.fetchone() is None:
                return 0
        with self._logging(expiring=True) as cur:
            return None if cur is None else self._expire(cur, moment, limit)

    def _expire(self, cur: Any, moment: float, limit: int) -> int:
        """Delete up to ``limit`` records due at ``moment`` and log their events, in the order
        they expired; how many there were."""
        cur.execute(self._sql(EXPIRE), (moment, limit))
        expired = sorted(cur.fetchall(), key=lambda row: (row[4], *row[:3]))
        if expired:
            self._log(cur, [(moment, scope, scope_id, key, "delete", None, data, "", "", "",
                             EXPIRED) for scope, scope_id, key, data, _ in expired])
        return len(expired)

    def next_expiry(self) -> float | None:
        with self._read() as cur:
            cur.execute("SELECT MIN(expires_at) FROM memory WHERE expires_at IS NOT NULL")
            return cur.fetchone()[0]

    def _insert_event(self, cur: Any, moment: float, scope: str, scope_id: str, key: str,
                      action: str, data: str | None, previous_data: str | None, author: Author,
                      reason: str | None = None) -> int:
        [event_id] = self._log(cur, [(moment, scope, scope_id, key, action, data, previous_data,
                                      author.agent_id, author.actor_id, author.workflow_id,
                                      reason)])
        return event_id

    def _log(self, cur: Any, rows: list[tuple]) -> list[int]:
        """Append events (``EVENT_VALUES`` each) in one statement and return their ids.

        The rows are inserted in order and ids are drawn as they are, under the log's write
        lock, so the ids sorted are the rows' (``RETURNING`` promises no order).
        """
        cur.execute(self._sql(INSERT_EVENTS + " VALUES " + ", ".join([EVENT_VALUES] * len(rows))
                              + " RETURNING id"), [value for row in rows for value in row])
        ids = sorted(row[0] for row in cur.fetchall())
        self._logged += [Event(event_id, *row) for event_id, row in zip(ids, rows)]
        return ids

    # -- the log -----------------------------------------------------------------------------
    def head_id(self) -> int:
        with self._read() as cur:
            return self._head_id(cur)

    def _head_id(self, cur: Any) -> int:
        cur.execute("SELECT MAX(id) FROM events")
        head = cur.fetchone()[0]
        return head if head is not None else self._meta(cur, "trimmed_through")

    def oldest_id(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT MIN(id) FROM events")
            oldest = cur.fetchone()[0]
            return oldest if oldest is not None else self._meta(cur, "trimmed_through") + 1

    def trimmed_through(self) -> int:
        with self._read() as cur:
            return self._meta(cur, "trimmed_through")

    def _meta(self, cur: Any, name: str) -> int:
        cur.execute(self._sql("SELECT value FROM log_meta WHERE name = ?"), (name,))
        return cur.fetchone()[0]

    def read_log(self, where: LogFilter, after_id: int, upto_id: int | None = None,
                 newest_first: bool = False, page: int = logreader.PAGE) -> Iterator[list[Event]]:
        return logreader.read_log(self, where, after_id, upto_id, newest_first, page)

    def log_after(self, after_id: int, limit: int) -> list[Event]:
        return self._events(f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id "
                            "LIMIT ?", [after_id, limit])

    def log_window(self, where: LogFilter, low: int, high: int, newest_first: bool,
                   limit: int) -> list[Event]:
        sql, args = self._matching(where)
        order = "DESC" if newest_first else ""
        return self._events(f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? AND id <= ?{sql} "
                            f"ORDER BY id {order} LIMIT ?", [low, high] + args + [limit])

    def log_ids(self, where: LogFilter, via: str, low: int, high: int,
                cap: int) -> list[int] | None:
        """Ids in ``(low, high]`` that an index offers, read without touching the rows, a page
        at a time (``_index_pages``); given up when more than ``cap`` ids lie in the range, or
        when more index entries were read than the range has positions: scanning the range
        then costs less."""
        if via == "keys" and where.keys is not None:
            reads = [self._index_pages(f"key{self.collate}", span.low, span.high, span.exact,
                                       low, high) for span in where.keys]
        elif via == "since" and where.since is not None:
            reads = [self._index_pages("epoch", where.since, None, False, low, high)]
        else:
            return None
        found: list[int] = []
        budget = high - low
        for read, ids in itertools.chain.from_iterable(reads):
            found += ids
            budget -= read
            if len(found) > cap or budget < 0:
                return None
        return found

    def _index_pages(self, column: str, start: Any, stop: Any | None, exact: bool, low: int,
                     high: int) -> Iterator[tuple[int, list[int]]]:
        """Ids in ``(low, high]`` whose ``column`` lies in ``[start, stop)`` (``exact``: equals
        ``start``), from the index on ``(column, id)``, one page of entries per statement with
        a pause between: yields how many entries each statement read and the ids it found.

        Within one value of the column the id range bounds the read. Across values it cannot
        (SQLite seeks no ``(value, id)`` pair when id is the row id), so the entries of the
        next values are read a page at a time and their ids filtered here; the page's last
        value goes on by id again, so a value with many entries outside the range costs at
        most one page.
        """
        value, after = start, low
        while True:
            ids = self._ids(f"SELECT id FROM events WHERE {column} = ? AND id > ? AND id <= ? "
                            "ORDER BY id LIMIT ?", [value, after, high, INDEX_PAGE])
            yield len(ids), ids
            if len(ids) == INDEX_PAGE:
                after = ids[-1]
            elif exact:
                return
            else:
                sql, args = f"SELECT {column}, id FROM events WHERE {column} > ?", [value]
                if stop is not None:
                    sql += f" AND {column} < ?"
                    args.append(stop)
                rows = self._fetch(f"{sql} ORDER BY {column}, id LIMIT ?", args + [INDEX_PAGE])
                yield len(rows), [row[1] for row in rows if low < row[1] <= high]
                if len(rows) < INDEX_PAGE:
                    return
                value, after = rows[-1][0], max(rows[-1][1], low)
            pause()

    def log_scope_ids(self, where: LogFilter, low: int, high: int, newest_first: bool,
                      limit: int) -> list[int]:
        return self._ids("SELECT id FROM events WHERE scope = ? AND scope_id = ? AND id > ? "
                         f"AND id <= ? ORDER BY id {'DESC' if newest_first else ''} LIMIT ?",
                         [where.scope, where.scope_id, low, high, limit])

    def log_by_ids(self, where: LogFilter, ids: list[int], newest_first: bool,
                   limit: int) -> list[Event]:
        among, args = self._ids_in("id", ids)
        sql, more = self._matching(where)
        order = "DESC" if newest_first else ""
        return self._events(f"SELECT {EVENT_COLUMNS} FROM events WHERE {among}{sql} "
                            f"ORDER BY id {order} LIMIT ?", args + more + [limit])

    def _matching(self, where: LogFilter) -> tuple[str, list]:
        """``where`` as conditions (each starting with `` AND``) on columns no index serves:
        the reads that use them are bounded by ids, which the primary key serves."""
        sql, args = "", []
        for column, value in (("scope", where.scope), ("scope_id", where.scope_id)):
            if value is not None:
                sql += f" AND {self.unindexed.format(column)} = ?"
                args.append(value)
        if where.since is not None:
            sql += " AND +epoch >= ?"
            args.append(where.since)
        key = self.unindexed.format("key") + self.collate
        if where.keys is not None:
            spans = []
            for span in where.keys:
                if span.high is None:
                    spans.append(f"{key} >= ?")
                    args.append(span.low)
                else:
                    spans.append(f"{key} >= ? AND {key} < ?")
                    args += [span.low, span.high]
            sql += " AND (" + " OR ".join(f"({text})" for text in spans) + ")"
        if where.patterns:
            sql += " AND (" + " OR ".join([self.key_like.format(key)] * len(where.patterns)) + ")"
            args += [self._like(pattern) for pattern in where.patterns]
        return sql, args

    def _fetch(self, sql: str, args: list) -> list[tuple]:
        with self._read() as cur:
            cur.execute(self._sql(sql), tuple(args))
            return cur.fetchall()

    def _events(self, sql: str, args: list) -> list[Event]:
        return [Event(*row) for row in self._fetch(sql, args)]

    def _ids(self, sql: str, args: list) -> list[int]:
        return [row[0] for row in self._fetch(sql, args)]

    def trim(self, older_than: float) -> int:
        """Drop events older than ``older_than``, ``TRIM_BATCH`` at a time with a pause
        between, and remember the newest id dropped; also forget vector deletions old enough
        for every cache to have seen them."""
        with self._write() as cur:
            # Each scope keeps, as its row under the key no vector can have, the newest seq of
            # its deletions forgotten: only caches of that scope that had not read so far
            # must start over (``vector_head``).
            moment = now()
            old = moment - VECTOR_TOMBSTONE_SECONDS
            cur.execute(self._sql(
                "INSERT INTO vectors (scope, scope_id, key, embedding, metadata, created_at, "
                "updated_at, seq) SELECT scope, scope_id, ?, NULL, '{}', ?, ?, MAX(seq) "
                "FROM vectors WHERE embedding IS NULL AND key <> ? AND updated_at < ? "
                "GROUP BY scope, scope_id ON CONFLICT (scope, scope_id, key) DO UPDATE SET "
                "updated_at = excluded.updated_at, seq = CASE WHEN excluded.seq > vectors.seq "
                "THEN excluded.seq ELSE vectors.seq END"),
                (FORGOTTEN_KEY, moment, moment, FORGOTTEN_KEY, old))
            cur.execute(self._sql("DELETE FROM vectors WHERE embedding IS NULL AND key <> ? "
                                  "AND updated_at < ?"), (FORGOTTEN_KEY, old))
        with self._read() as cur:
            cur.execute(self._sql("SELECT MAX(id) FROM events WHERE epoch < ?"), (older_than,))
            newest = cur.fetchone()[0]
        removed = 0
        while newest is not None:
            with self._write() as cur:
                cur.execute("SELECT MIN(id) FROM events")
                oldest = cur.fetchone()[0]
                if oldest is None or oldest > newest:
                    break
                through = min(newest, oldest + TRIM_BATCH - 1)
                cur.execute(self._sql("DELETE FROM events WHERE id <= ?"), (through,))
                removed += cur.rowcount
                cur.execute(self._sql("UPDATE log_meta SET value = ? WHERE name = "
                                      "'trimmed_through' AND value < ?"), (through, through))
            if through == newest:
                break
            pause()
        return removed

    # -- vectors -----------------------------------------------------------------------------
    def _next_vector_seq(self, cur: Any) -> int:
        cur.execute("UPDATE log_meta SET value = value + 1 WHERE name = 'vector_seq' "
                    "RETURNING value")
        return cur.fetchone()[0]

    def vector_set(self, scope: str, scope_id: str, key: str, embedding: bytes,
                   metadata: str) -> StoredVector:
        with self._write() as cur:
            moment, seq = now(), self._next_vector_seq(cur)
            cur.execute(self._sql(
                "INSERT INTO vectors (scope, scope_id, key, embedding, metadata, created_at, "
                "updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (scope, scope_id, key) DO UPDATE SET embedding = excluded.embedding, "
                "metadata = excluded.metadata, updated_at = excluded.updated_at, "
                "seq = excluded.seq, created_at = CASE WHEN vectors.embedding IS NULL "
                "THEN excluded.created_at ELSE vectors.created_at END RETURNING created_at"),
                (scope, scope_id, key, embedding, metadata, moment, moment, seq))
            created_at = cur.fetchone()[0]
        return StoredVector(scope, scope_id, key, embedding, metadata, created_at, moment, seq)

    def vector_get(self, scope: str, scope_id: str, key: str) -> StoredVector | None:
        with self._read() as cur:
            cur.execute(self._sql(f"SELECT {VECTOR_COLUMNS} FROM vectors WHERE scope = ? "
                                  "AND scope_id = ? AND key = ? AND embedding IS NOT NULL"),
                        (scope, scope_id, key))
            row = cur.fetchone()
        return _vector(row) if row else None

    def vector_delete(self, scope: str, scope_id: str, key: str) -> bool:
        return self._vector_forget("key = ?", [key], scope, scope_id) > 0

    def vector_delete_prefix(self, scope: str, scope_id: str, prefix: str) -> int:
        sql, args = self._prefix("1 = 1", [], prefix)
        return self._vector_forget(sql, args, scope, scope_id)

    def _vector_forget(self, condition: str, args: list, scope: str, scope_id: str) -> int:
        """Deleted vectors stay as rows without an embedding for a while, so every process's
        cache learns of the deletion by reading changes in ``seq`` order."""
        with self._write() as cur:
            seq = self._next_vector_seq(cur)
            cur.execute(self._sql(f"UPDATE vectors SET embedding = NULL, updated_at = ?, seq = ? "
                                  f"WHERE scope = ? AND scope_id = ? AND {condition} "
                                  "AND embedding IS NOT NULL"),
                        tuple([now(), seq, scope, scope_id] + args))
            return cur.rowcount

    def vector_changes(self, scope: str, scope_id: str, after_seq: int,
                       limit: int) -> list[StoredVector]:
        """About ``limit`` changes: more when the last ``seq`` of the page is shared (a
        namespace delete gives all its keys one), so that a reader who goes on after the last
        ``seq`` it got has missed none. Those are deletions, a few bytes each."""
        rows = f"SELECT {VECTOR_COLUMNS} FROM vectors WHERE scope = ? AND scope_id = ? AND seq"
        with self._read() as cur:
            cur.execute(self._sql(rows + " > ? ORDER BY seq LIMIT ?"),
                        (scope, scope_id, after_seq, limit))
            changes = [_vector(row) for row in cur.fetchall()]
            if len(changes) < limit:
                return changes
            last = changes[-1].seq
            cur.execute(self._sql(rows + " = ?"), (scope, scope_id, last))
            return ([change for change in changes if change.seq != last]
                    + [_vector(row) for row in cur.fetchall()])

    def vector_head(self, scope: str, scope_id: str) -> tuple[int, int]:
        with self._read() as cur:
            # the newest by the index, one entry, whatever the planner knows of the table; and
            # the scope's record of forgotten deletions, by the primary key; in one snapshot
            cur.execute(self._sql(
                "SELECT (SELECT seq FROM vectors WHERE scope = ? AND scope_id = ? "
                "ORDER BY seq DESC LIMIT 1), (SELECT seq FROM vectors WHERE scope = ? "
                "AND scope_id = ? AND key = ?)"), (scope, scope_id, scope, scope_id, FORGOTTEN_KEY))
            head, forgotten = cur.fetchone()
            return head or 0, forgotten or 0


def _live(record: Record, moment: float) -> bool:
    return record.expires_at is None or record.expires_at > moment


def _check_version(current: Record | None, if_version: int | None) -> None:
    """``0`` asks for no record at all: a record written before versions existed may still
    carry version 0, and it exists."""
    if if_version is None:
        return
    if if_version == 0:
        matches = current is None
    else:
        matches = current is not None and current.version == if_version
    if not matches:
        raise VersionConflict(current)


def _vector(row: Sequence[Any]) -> StoredVector:
    scope, scope_id, key, embedding, metadata, created_at, updated_at, seq = row
    return StoredVector(scope, scope_id, key, None if embedding is None else bytes(embedding),
                        metadata, created_at, updated_at, seq)
