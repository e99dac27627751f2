"""The store: memory rows and the ordered event log, behind one interface for every database.

Everything above this module speaks ``Store``; the SQL lives in ``SqlStore`` once, and each
database only says how to connect, how to open a write transaction and how to spell a few things.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..events import Event, dump, utc_text


def _now() -> float:
    """Microseconds, as every timestamp on the wire shows, so ``since=<an event's timestamp>``
    always includes that event."""
    return round(time.time(), 6)


class StoreUnavailable(Exception):
    """The database cannot be reached now; callers answer 503 and try again later."""


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    data: str
    scope: str
    scope_id: str
    created_at: float
    updated_at: float

    def as_json(self) -> str:
        return ('{"key":%s,"data":%s,"scope":%s,"scope_id":%s,"created_at":"%s","updated_at":"%s"}'
                % (dump(self.key), self.data, dump(self.scope), dump(self.scope_id),
                   utc_text(self.created_at), utc_text(self.updated_at)))


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The SQL-side part of an event filter; globs are applied by the caller."""
    scope: str | None = None
    scope_id: str | None = None
    since: float | None = None


_EVENT_COLUMNS = ("id, epoch, scope, scope_id, key, action, data, previous_data, "
                  "agent_id, workflow_id")

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
    "CREATE INDEX IF NOT EXISTS events_scope ON events (scope, scope_id, id)",
    "CREATE INDEX IF NOT EXISTS events_epoch ON events (epoch)",
    """CREATE TABLE IF NOT EXISTS log_meta (
        name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
)


class SqlStore:
    """Queries shared by every SQL database. Subclasses provide connections and transactions."""

    #: placeholder style of the driver, ``?`` or ``%s``
    param = "?"
    #: the id column in ``CREATE TABLE events``: never reuses an id, even after a trim
    id_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    #: makes memory keys sort by code point, as SQLite's default does, whatever the locale
    collate = ""
    #: how often a follower looks for writes it was not told about (other processes)
    poll_seconds = 0.05

    # -- provided by each database -----------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A transaction that holds the log's write lock, so ids commit in id order."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process may have written. Without such a signal (SQLite)
        the follower's poll finds those writes."""

    # -- shared ------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.param == "?" else text.replace("?", self.param)

    def _create_schema(self, cur: Any) -> None:
        for statement in SCHEMA:
            cur.execute(statement.format(id_column=self.id_column, collate=self.collate))
        cur.execute(self._sql("INSERT INTO log_meta (name, value) VALUES ('trimmed_through', 0) "
                              "ON CONFLICT (name) DO NOTHING"))

    def _insert_event(self, cur: Any, values: tuple) -> int:
        cur.execute(self._sql("INSERT INTO events (epoch, scope, scope_id, key, action, data, "
                              "previous_data, agent_id, workflow_id) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"), values)
        return cur.fetchone()[0]

    def ping(self) -> None:
        with self._read() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    def get(self, scope: str, scope_id: str, key: str) -> Record | None:
        with self._read() as cur:
            return self._get(cur, scope, scope_id, key)

    def _get(self, cur: Any, scope: str, scope_id: str, key: str) -> Record | None:
        cur.execute(self._sql("SELECT key, data, scope, scope_id, created_at, updated_at "
                              "FROM memory WHERE scope = ? AND scope_id = ? AND key = ?"),
                    (scope, scope_id, key))
        row = cur.fetchone()
        return Record(*row) if row else None

    def list(self, scope: str, scope_id: str | None) -> list[Record]:
        sql = "SELECT key, data, scope, scope_id, created_at, updated_at FROM memory WHERE scope = ?"
        args: tuple = (scope,)
        if scope_id is not None:
            sql += " AND scope_id = ?"
            args += (scope_id,)
        with self._read() as cur:
            cur.execute(self._sql(sql + " ORDER BY scope_id, key"), args)
            return [Record(*row) for row in cur.fetchall()]

    def set(self, scope: str, scope_id: str, key: str, data: str,
            agent_id: str, workflow_id: str) -> Record:
        """Write the row and its event in one transaction."""
        with self._write() as cur:
            now = _now()
            old = self._get(cur, scope, scope_id, key)
            if old is None:
                cur.execute(self._sql("INSERT INTO memory (scope, scope_id, key, data, created_at, "
                                      "updated_at) VALUES (?, ?, ?, ?, ?, ?)"),
                            (scope, scope_id, key, data, now, now))
            else:
                cur.execute(self._sql("UPDATE memory SET data = ?, updated_at = ? "
                                      "WHERE scope = ? AND scope_id = ? AND key = ?"),
                            (data, now, scope, scope_id, key))
            self._insert_event(cur, (now, scope, scope_id, key, "set", data,
                                     old.data if old else None, agent_id, workflow_id))
        return Record(key, data, scope, scope_id, old.created_at if old else now, now)

    def delete(self, scope: str, scope_id: str, key: str,
               agent_id: str, workflow_id: str) -> Record | None:
        """Remove the row and log its event; ``None`` (and no event) when there was no row."""
        with self._write() as cur:
            old = self._get(cur, scope, scope_id, key)
            if old is None:
                return None
            cur.execute(self._sql("DELETE FROM memory WHERE scope = ? AND scope_id = ? AND key = ?"),
                        (scope, scope_id, key))
            self._insert_event(cur, (_now(), scope, scope_id, key, "delete", None, old.data,
                                     agent_id, workflow_id))
        return old

    # -- the log -----------------------------------------------------------------------------
    def head_id(self) -> int:
        """The newest id in the log (or the newest trimmed one when the log is empty)."""
        with self._read() as cur:
            cur.execute("SELECT MAX(id) FROM events")
            head = cur.fetchone()[0]
            return head if head is not None else self._trimmed_through(cur)

    def oldest_id(self) -> int:
        """The first id a reader can still get: the oldest retained, else the next to come."""
        with self._read() as cur:
            cur.execute("SELECT MIN(id) FROM events")
            oldest = cur.fetchone()[0]
            return oldest if oldest is not None else self._trimmed_through(cur) + 1

    def trimmed_through(self) -> int:
        """Every id up to this one may have been removed by retention."""
        with self._read() as cur:
            return self._trimmed_through(cur)

    def _trimmed_through(self, cur: Any) -> int:
        cur.execute("SELECT value FROM log_meta WHERE name = 'trimmed_through'")
        return cur.fetchone()[0]

    def events(self, after_id: int, limit: int, upto_id: int | None = None,
               where: LogFilter = LogFilter()) -> list[Event]:
        """Events with ``after_id < id <= upto_id`` passing ``where``, oldest first."""
        sql, args = self._where(where)
        sql += " AND id > ?"
        args.append(after_id)
        if upto_id is not None:
            sql += " AND id <= ?"
            args.append(upto_id)
        return self._events(sql + " ORDER BY id LIMIT ?", args + [limit])

    def events_before(self, before_id: int | None, limit: int,
                      where: LogFilter = LogFilter()) -> list[Event]:
        """Events with ``id < before_id`` passing ``where``, newest first."""
        sql, args = self._where(where)
        if before_id is not None:
            sql += " AND id < ?"
            args.append(before_id)
        return self._events(sql + " ORDER BY id DESC LIMIT ?", args + [limit])

    def _where(self, where: LogFilter) -> tuple[str, list]:
        sql, args = f"SELECT {_EVENT_COLUMNS} FROM events WHERE 1 = 1", []
        for column, value in (("scope", where.scope), ("scope_id", where.scope_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if where.since is not None:
            sql += " AND epoch >= ?"
            args.append(where.since)
        return sql, args

    def _events(self, sql: str, args: list) -> list[Event]:
        with self._read() as cur:
            cur.execute(self._sql(sql), tuple(args))
            return [Event(*row) for row in cur.fetchall()]

    def trim(self, older_than: float) -> int:
        """Drop events older than ``older_than`` (epoch) and remember the newest id dropped."""
        with self._write() as cur:
            cur.execute(self._sql("SELECT MAX(id) FROM events WHERE epoch < ?"), (older_than,))
            newest = cur.fetchone()[0]
            if newest is None:
                return 0
            cur.execute(self._sql("DELETE FROM events WHERE id <= ?"), (newest,))
            removed = cur.rowcount
            cur.execute(self._sql("UPDATE log_meta SET value = ? "
                                  "WHERE name = 'trimmed_through' AND value < ?"), (newest, newest))
            return removed


Store = SqlStore
