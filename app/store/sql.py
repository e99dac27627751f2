"""The SQL every database shares: memory records, the event log and vectors.

Each database says how to connect, how to open a write transaction (which holds the log's
write lock, so ids commit in id order) and a consistent read, and how to spell a few things.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from ..core.errors import VersionConflict
from ..core.events import Event
from ..core.filters import KeyRange, LogFilter, successor
from ..core.globs import shape
from ..core.records import Author, Record
from ..core.pause import pause
from . import logreader
from .batch import GroupCommit
from .interface import Listing, StoredVector

EXPIRED = "expired"

EVENT_COLUMNS = ("id, epoch, scope, scope_id, key, action, data, previous_data, agent_id, "
                 "actor_id, workflow_id, reason")
RECORD_COLUMNS = "key, data, scope, scope_id, created_at, updated_at, version, expires_at"
INSERT_EVENT = ("INSERT INTO events (epoch, scope, scope_id, key, action, data, previous_data, "
                "agent_id, actor_id, workflow_id, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
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
    "CREATE INDEX IF NOT EXISTS memory_expiry ON memory (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS vectors_seq ON vectors (scope, scope_id, seq)",
)
META = ("trimmed_through", "vector_seq", "vectors_forgotten_through")
#: the version of records written before versions existed: the newest event logged for them
BACKFILL_VERSIONS = (
    "UPDATE memory SET version = COALESCE((SELECT MAX(e.id) FROM events e "
    "WHERE e.key = memory.key AND e.scope = memory.scope AND e.scope_id = memory.scope_id), "
    "(SELECT value FROM log_meta WHERE name = 'trimmed_through')) WHERE version = 0")
#: records read per statement when a listing has no limit
LIST_PAGE = 1000
#: events one trimming statement deletes, so a large trim never holds the write lock long
TRIM_BATCH = 5000
#: deleted vectors are kept this long, so other processes' caches learn of the deletion
VECTOR_TOMBSTONE_SECONDS = 3600.0


def now() -> float:
    """Microseconds, as every timestamp on the wire shows, so ``since=<an event's timestamp>``
    always includes that event."""
    return round(time.time(), 6)


class SqlStore:
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

    def __init__(self) -> None:
        #: memory writes made at the same moment in this process share a transaction
        self._group = GroupCommit(self._logging)
        #: the events the open write transaction logged; ``None``: some were logged unseen
        self._logged: list[Event] | None = []
        self._committed: Callable[[list[Event] | None], None] | None = None

    # -- provided by each database -----------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    @contextmanager
    def _consistent(self) -> Iterator[Any]:
        """Several reads that see one database snapshot."""
        raise NotImplementedError
        yield

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A transaction that holds the log's write lock, so ids commit in id order."""
        raise NotImplementedError
        yield

    def _has_column(self, cur: Any, table: str, column: str) -> bool:
        raise NotImplementedError

    #: a key matching a loose pattern (``_like``): SQLite's ``GLOB`` is case-sensitive
    key_like = "key GLOB ?"

    @staticmethod
    def _like(pattern: str) -> str:
        return shape(pattern, "*", "?", lambda c: f"[{c}]" if c in "*?[" else c)

    def _ids_in(self, column: str, ids: Sequence[int]) -> tuple[str, list]:
        """``column IN (ids)`` in this database's spelling."""
        return f"{column} IN ({','.join('?' * len(ids))})", list(ids)

    def close(self) -> None:
        raise NotImplementedError

    def watch(self, wake: Callable[[], None],
              committed: Callable[[list[Event] | None], None] | None = None) -> None:
        """Call ``wake`` when another process may have written (without such a signal the
        follower's poll finds those writes), and ``committed`` after each commit of this
        process that logged events."""
        self._committed = committed

    @contextmanager
    def _logging(self) -> Iterator[Any]:
        """A write transaction whose logged events are handed to ``committed`` once it has
        committed, so this process publishes its own changes without reading them back."""
        with self._write() as cur:
            self._logged = []
            yield cur
            logged, self._logged = self._logged, []
        if self._committed is not None and logged != []:
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
        with self._consistent() as cur:
            head = self._head_id(cur)
            while True:
                want = LIST_PAGE if limit is None else limit + 1 - len(records)
                sql, args = self._list_query(scope, scope_id, prefix, after, want)
                cur.execute(self._sql(sql), tuple(args))
                rows = [Record(*row) for row in cur.fetchall()]
                records += rows
                if len(rows) < want or (limit is not None and len(records) > limit):
                    break
                after = (rows[-1].scope_id, rows[-1].key)
                pause()
        more = limit is not None and len(records) > limit
        records = records[:limit]
        return Listing(records, head, (records[-1].scope_id, records[-1].key) if more else None)

    def _list_query(self, scope: str, scope_id: str | None, prefix: str | None,
                    after: tuple[str, str] | None, limit: int) -> tuple[str, list]:
        sql = f"SELECT {RECORD_COLUMNS} FROM memory WHERE scope = ?"
        args: list = [scope]
        # The cursor is where the primary key's range starts, so a page costs its own size.
        if scope_id is not None:
            sql += " AND scope_id = ?"
            args.append(scope_id)
            sql, args = self._prefix(sql, args, prefix, after[1] if after else None)
        else:
            sql, args = self._prefix(sql, args, prefix)
            if after is not None:
                sql += " AND (scope_id, key) > (?, ?)"
                args += [after[0], after[1]]
        sql += " AND (expires_at IS NULL OR expires_at > ?) ORDER BY scope_id, key LIMIT ?"
        return sql, args + [now(), limit]

    def _prefix(self, sql: str, args: list, prefix: str | None,
                after: str | None = None) -> tuple[str, list]:
        """Keys that start with ``prefix`` and come after ``after``, as one range."""
        if after is not None and not (prefix and after < prefix):
            sql += " AND key > ?"
            args.append(after)
        elif prefix:
            sql += " AND key >= ?"
            args.append(prefix)
        high = successor(prefix) if prefix else None
        if high is not None:
            sql += " AND key < ?"
            args.append(high)
        return sql, args

    def records(self, where: LogFilter, after: tuple[str, str, str] | None,
                limit: int) -> list[Record]:
        """One snapshot page, in (key, scope, scope_id) order: by the primary key within an
        exact scope, else by the key index; each key range is walked in turn."""
        ranges = where.keys or (KeyRange("", None),)
        found: list[Record] = []
        for span in ranges:
            if after is not None and span.high is not None and after[0] >= span.high:
                continue
            resume = after is not None and after[0] >= span.low
            sql = f"SELECT {RECORD_COLUMNS} FROM memory WHERE "  # one lower bound: the index's
            sql += "(key, scope, scope_id) > (?, ?, ?)" if resume else "key >= ?"
            args: list = list(after) if resume else [span.low]  # type: ignore[arg-type]
            if span.high is not None:
                sql += " AND key < ?"
                args.append(span.high)
            for column, value in (("scope", where.scope), ("scope_id", where.scope_id)):
                if value is not None:
                    sql += f" AND {column} = ?"
                    args.append(value)
            sql += (" AND (expires_at IS NULL OR expires_at > ?) "
                    "ORDER BY key, scope, scope_id LIMIT ?")
            args += [now(), limit - len(found)]
            with self._read() as cur:
                cur.execute(self._sql(sql), tuple(args))
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

    def expire(self, limit: int) -> int:
        moment = now()
        due = self._sql("SELECT scope, scope_id, key FROM memory "
                        "WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?")
        with self._read() as cur:  # most passes find nothing: no write lock for them
            cur.execute(due, (moment, 1))
            if cur.fetchone() is None:
                return 0
        with self._logging() as cur:  # two statements for the whole batch, not a few per record
            cur.execute(self._sql(f"SELECT {RECORD_COLUMNS} FROM memory WHERE expires_at IS NOT "
                                  "NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?"),
                        (moment, limit))
            expired = [Record(*row) for row in cur.fetchall()]
            cur.executemany(self._sql("DELETE FROM memory WHERE scope = ? AND scope_id = ? "
                                      "AND key = ?"),
                            [(old.scope, old.scope_id, old.key) for old in expired])
            self._log_many(cur, [(moment, old.scope, old.scope_id, old.key, "delete", None,
                                  old.data, "", "", "", EXPIRED) for old in expired])
        return len(expired)

    def next_expiry(self) -> float | None:
        with self._read() as cur:
            cur.execute("SELECT MIN(expires_at) FROM memory WHERE expires_at IS NOT NULL")
            return cur.fetchone()[0]

    def _insert_event(self, cur: Any, moment: float, scope: str, scope_id: str, key: str,
                      action: str, data: str | None, previous_data: str | None, author: Author,
                      reason: str | None = None) -> int:
        values = (moment, scope, scope_id, key, action, data, previous_data, author.agent_id,
                  author.actor_id, author.workflow_id, reason)
        cur.execute(self._sql(INSERT_EVENT + " RETURNING id"), values)
        event_id = cur.fetchone()[0]
        if self._logged is not None:
            self._logged.append(Event(event_id, *values))
        return event_id

    def _log_many(self, cur: Any, rows: list[tuple]) -> None:
        """Events whose ids nobody waits for, in one statement; the follower reads them."""
        cur.executemany(self._sql(INSERT_EVENT), rows)
        self._logged = None

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
        sql, args = self._where(where)
        order = "DESC" if newest_first else ""
        return self._events(f"{sql} AND id > ? AND id <= ? ORDER BY id {order} LIMIT ?",
                            args + [low, high, limit])

    def log_ids(self, where: LogFilter, via: str, low: int, high: int,
                cap: int) -> list[int] | None:
        """Each narrowing reads one index only, never the rows, and at most ``cap + 1`` ids."""
        if via == "keys" and where.keys is not None:
            ids: list[int] = []
            for span in where.keys:
                sql, args = self._key_range("SELECT id FROM events WHERE", span)
                found = self._ids(sql + " LIMIT ?", args + [cap + 1 - len(ids)])
                ids += found
                if len(ids) > cap:
                    return None
            return ids
        if via == "scope" and where.scope is not None and where.scope_id is not None:
            found = self._ids("SELECT id FROM events WHERE scope = ? AND scope_id = ? AND id > ? "
                              "AND id <= ? LIMIT ?",
                              [where.scope, where.scope_id, low, high, cap + 1])
            return found if len(found) <= cap else None
        if via == "since" and where.since is not None:
            found = self._ids("SELECT id FROM events WHERE epoch >= ? LIMIT ?",
                              [where.since, cap + 1])
            return found if len(found) <= cap else None
        return None

    def log_by_ids(self, where: LogFilter, ids: list[int], newest_first: bool) -> list[Event]:
        sql, args = self._where(where)
        among, more = self._ids_in("id", ids)
        return self._events(f"{sql} AND {among} ORDER BY id {'DESC' if newest_first else ''}",
                            args + more)

    def _key_range(self, sql: str, span: KeyRange) -> tuple[str, list]:
        column = f"key{self.collate}"
        sql += f" {column} >= ?"
        args: list = [span.low]
        if span.high is not None:
            sql += f" AND {column} < ?"
            args.append(span.high)
        return sql, args

    def _where(self, where: LogFilter) -> tuple[str, list]:
        sql, args = f"SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1", []
        for column, value in (("scope", where.scope), ("scope_id", where.scope_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if where.since is not None:
            sql += " AND epoch >= ?"
            args.append(where.since)
        if where.keys is not None:
            spans = [self._key_range("", span) for span in where.keys]
            sql += " AND (" + " OR ".join(f"({text})" for text, _ in spans) + ")"
            args += [arg for _, values in spans for arg in values]
        if where.patterns:
            sql += " AND (" + " OR ".join([self.key_like] * len(where.patterns)) + ")"
            args += [self._like(pattern) for pattern in where.patterns]
        return sql, args

    def _events(self, sql: str, args: list) -> list[Event]:
        with self._read() as cur:
            cur.execute(self._sql(sql), tuple(args))
            return [Event(*row) for row in cur.fetchall()]

    def _ids(self, sql: str, args: list) -> list[int]:
        with self._read() as cur:
            cur.execute(self._sql(sql), tuple(args))
            return [row[0] for row in cur.fetchall()]

    def trim(self, older_than: float) -> int:
        """Drop events older than ``older_than``, ``TRIM_BATCH`` at a time with a pause
        between, and remember the newest id dropped; also forget vector deletions old enough
        for every cache to have seen them."""
        with self._write() as cur:
            cur.execute(self._sql("SELECT MAX(seq) FROM vectors WHERE embedding IS NULL "
                                  "AND updated_at < ?"), (now() - VECTOR_TOMBSTONE_SECONDS,))
            forgotten = cur.fetchone()[0]
            if forgotten is not None:
                cur.execute(self._sql("DELETE FROM vectors WHERE embedding IS NULL AND seq <= ?"),
                            (forgotten,))
                cur.execute(self._sql("UPDATE log_meta SET value = ? "
                                      "WHERE name = 'vectors_forgotten_through'"), (forgotten,))
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
        with self._read() as cur:
            cur.execute(self._sql(f"SELECT {VECTOR_COLUMNS} FROM vectors WHERE scope = ? "
                                  "AND scope_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
                        (scope, scope_id, after_seq, limit))
            return [_vector(row) for row in cur.fetchall()]

    def vector_head(self, scope: str, scope_id: str) -> tuple[int, int]:
        with self._read() as cur:
            # the newest by the index, one entry, whatever the planner knows of the table
            cur.execute(self._sql("SELECT seq FROM vectors WHERE scope = ? AND scope_id = ? "
                                  "ORDER BY seq DESC LIMIT 1"), (scope, scope_id))
            row = cur.fetchone()
            head = row[0] if row else 0
            return head, self._meta(cur, "vectors_forgotten_through")


def _live(record: Record, moment: float) -> bool:
    return record.expires_at is None or record.expires_at > moment


def _check_version(current: Record | None, if_version: int | None) -> None:
    if if_version is not None and (current.version if current else 0) != if_version:
        raise VersionConflict(current)


def _vector(row: Sequence[Any]) -> StoredVector:
    scope, scope_id, key, embedding, metadata, created_at, updated_at, seq = row
    return StoredVector(scope, scope_id, key, None if embedding is None else bytes(embedding),
                        metadata, created_at, updated_at, seq)
