"""The store contract, held to SQLite (a file, and one connection in memory) and PostgreSQL
alike: records with versions and time to live, paged listing at a known position, the log and
its paged reader, what each read costs (by its query plan), and vectors."""
from __future__ import annotations

import sqlite3
import struct
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from app.core import expiry
from app.core.broker import Broker
from app.core.errors import VersionConflict
from app.core.events import Event
from app.core.filters import EventFilter, LogFilter
from app.core.metrics import Metrics
from app.core.paging import FIRST_PAGE
from app.core.records import Author
from app.core.stream import Snapshot, SnapshotEnd, Stream
from app.settings import Settings
from app.store import Store, StoreUnavailable, open_store
from app.store import logreader, sql
from app.store.postgres import EXPIRY_LOCK
from app.store.sqlite import LOCK_PAUSE, SqliteStore

from .conftest import STORES, wait_until

MEMORY = "memory"
MEMORY_URL = "sqlite:///:memory:"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every store, and the one in memory too for what needs no second connection to it."""
    if "db_url" in metafunc.fixturenames:
        kinds = STORES if "other" in metafunc.fixturenames else [*STORES, MEMORY]
        metafunc.parametrize("db_url", kinds, indirect=True)

NOBODY = Author()


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """The conftest's databases, and one that lives in this process only."""
    if request.param == MEMORY:
        return MEMORY_URL
    return request.getfixturevalue("db_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = open_store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def other(db_url: str) -> Iterator[Store]:
    """The same database opened again, as another process opens it (a database in memory
    belongs to its one connection: tests that use this one do not run on it)."""
    opened = open_store(db_url)
    yield opened
    opened.close()


def test_every_store_is_a_store(store):
    assert isinstance(store, Store)
    with pytest.raises(TypeError):  # the SQL alone, without a database under it
        sql.SqlStore()  # type: ignore[abstract]


def fill_log(store: Store, count: int, key: str = "bulk.{n}", scope: str = "global") -> None:
    """Append ``count`` events straight into the log, as fast as the database takes them."""
    rows = [(time.time(), scope, "global", key.format(n=n), "set", "1", None, "", "", "", None)
            for n in range(count)]
    with store._write() as cur:  # type: ignore[attr-defined]
        cur.executemany(store._sql(  # type: ignore[attr-defined]
            "INSERT INTO events (epoch, scope, scope_id, key, action, data, previous_data, "
            "agent_id, actor_id, workflow_id, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            rows)


def all_events(store: Store, where: LogFilter = LogFilter(), after: int = 0,
               newest_first: bool = False, page: int = 500) -> list[int]:
    return [event.id for events in store.read_log(where, after, store.head_id(), newest_first,
                                                  page) for event in events]


# -- records ---------------------------------------------------------------------------------

def test_a_record_carries_the_id_of_the_event_that_last_changed_it(store):
    first = store.set("global", "global", "k", '{"v":1}', Author("node", "actor", "wf"))
    second = store.set("global", "global", "k", '{"v":2}', NOBODY)
    assert (first.version, second.version) == (1, 2)
    assert second.created_at == first.created_at and store.get("global", "global", "k") == second
    [set1, set2] = next(store.read_log(LogFilter(), 0))
    metadata = b'"metadata":{"agent_id":"node","actor_id":"actor","workflow_id":"wf"}'
    assert metadata in set1.json_bytes
    assert b'"previous_data":{"v":1}' in set2.json_bytes


def test_compare_and_set_writes_only_on_the_expected_version(store):
    with pytest.raises(VersionConflict) as missing:
        store.set("global", "global", "k", "1", NOBODY, if_version=7)
    assert missing.value.current is None
    created = store.set("global", "global", "k", "1", NOBODY, if_version=0)
    with pytest.raises(VersionConflict) as exists:
        store.set("global", "global", "k", "2", NOBODY, if_version=0)
    assert exists.value.current == created
    updated = store.set("global", "global", "k", "2", NOBODY, if_version=created.version)
    with pytest.raises(VersionConflict):
        store.delete("global", "global", "k", NOBODY, if_version=created.version)
    assert store.delete("global", "global", "k", NOBODY, if_version=updated.version) == updated
    assert store.head_id() == 3  # two sets and a delete; every refusal wrote nothing


def test_if_version_0_refuses_a_record_kept_at_version_0(store):
    """Records from before versions existed may keep version 0: they exist all the same."""
    with store._write() as cur:  # type: ignore[attr-defined]
        cur.execute("INSERT INTO memory (scope, scope_id, key, data, created_at, updated_at, "
                    "version) VALUES ('global', 'global', 'old', '1', 0, 0, 0)")
    with pytest.raises(VersionConflict) as exists:
        store.set("global", "global", "old", "2", NOBODY, if_version=0)
    assert exists.value.current is not None and exists.value.current.version == 0
    with pytest.raises(VersionConflict):
        store.delete("global", "global", "old", NOBODY, if_version=0)
    assert store.get("global", "global", "old").data == "1" and store.head_id() == 0


def test_deleting_what_is_not_there_logs_nothing(store):
    assert store.delete("global", "global", "nothing", NOBODY) is None
    assert store.head_id() == 0


def test_an_expired_record_is_gone_at_once_and_its_removal_logged_once(store):
    store.set("global", "global", "lease", '"mine"', NOBODY, ttl_seconds=0.2)
    kept = store.set("global", "global", "kept", "1", NOBODY, ttl_seconds=3600)
    assert kept.expires_at is not None and store.next_expiry() is not None
    time.sleep(0.25)
    assert store.get("global", "global", "lease") is None
    assert [r.key for r in store.list_page("global", None, None, None, None).records] == ["kept"]
    assert store.expire(100) == 1 and store.expire(100) == 0
    [*_, removal] = next(store.read_log(LogFilter(), 0))
    assert removal.action == "delete" and removal.key == "lease"
    assert b'"reason":"expired"' in removal.json_bytes
    assert b'"previous_data":"mine"' in removal.json_bytes


def test_a_write_to_an_expired_key_logs_the_expiry_first(store):
    store.set("global", "global", "k", '"old"', NOBODY, ttl_seconds=0.1)
    time.sleep(0.15)
    fresh = store.set("global", "global", "k", '"new"', NOBODY, if_version=0)
    assert fresh.expires_at is None and store.expire(100) == 0
    actions = [(e.action, e.id) for e in next(store.read_log(LogFilter(), 0))]
    assert actions == [("set", 1), ("delete", 2), ("set", 3)]


def due(store: Any, count: int) -> None:
    """``count`` records whose time ran out long ago, written straight into the table."""
    with store._write() as cur:
        cur.executemany(store._sql(
            "INSERT INTO memory (scope, scope_id, key, data, created_at, updated_at, version, "
            "expires_at) VALUES ('global', 'global', ?, '1', 0, 0, 0, ?)"),
            [(f"lease.{n}", 1.0 + n) for n in range(count)])


def test_each_batch_of_expiries_is_handed_over_as_it_commits(store):
    """So this process's streams get them at once, batch by batch, without reading them back."""
    handed: list[list[Event]] = []
    sql.SqlStore.watch(store, lambda: None, handed.append)  # no listener: only the hand-over
    due(store, 5)
    assert store.expire(3) == 3 and store.expire(3) == 2 and store.expire(3) == 0
    assert [[e.key for e in batch] for batch in handed] == [
        ["lease.0", "lease.1", "lease.2"], ["lease.3", "lease.4"]]
    logged = [e.json for e in next(store.read_log(LogFilter(), 0))]
    assert [e.json for batch in handed for e in batch] == logged
    assert all('"action":"delete"' in e and '"reason":"expired"' in e for e in logged)


def test_one_process_at_a_time_removes_expired_records(store, other):
    """The others are told so at once, without waiting for the write lock."""
    due(store, 1)
    with store._logging(expiring=True) as cur:  # type: ignore[attr-defined]
        assert cur is not None
        assert other.expire(100) is None
    assert other.expire(100) == 1 and store.expire(100) == 0


@contextmanager
def expiring_elsewhere(other: Any) -> Iterator[None]:
    """Another process holds the expiry gate, and nothing else."""
    if isinstance(other, SqliteStore):
        with other._expiry_gate() as admitted:
            assert admitted
            yield
        return
    with other._read() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (EXPIRY_LOCK,))
        try:
            yield
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (EXPIRY_LOCK,))


def test_an_expiry_that_is_not_let_in_leaves_an_open_write_alone(store, other):
    """Its events are still handed over when it commits."""
    handed: list[list[Event]] = []
    sql.SqlStore.watch(store, lambda: None, handed.append)
    due(store, 1)
    with expiring_elsewhere(other):
        with store._logging() as cur:  # type: ignore[attr-defined]
            written = store._set(cur, "global", "global", "k", "1", NOBODY, None, None)
            assert store.expire(100) is None
    assert [[event.id for event in batch] for batch in handed] == [[written.version]]


def test_a_process_that_finds_another_expiring_looks_again_later(store, other):
    due(store, 1)
    later = expiry.Expiry(other)
    with store._logging(expiring=True):  # type: ignore[attr-defined]
        assert later.run(time.time()) == 0
    assert later.wait_seconds(time.time()) > expiry.LOOK_SECONDS / 2


def test_an_expiry_pass_stops_at_its_time_budget_and_the_next_follows_at_once(
        store, monkeypatch):
    """A pass lets the follower publish and trim in between."""
    monkeypatch.setattr(expiry, "BATCH", 2)
    monkeypatch.setattr(expiry, "PASS_SECONDS", 0.0)
    due(store, 5)
    runner = expiry.Expiry(store)
    assert runner.run(time.time()) == 2 and runner.wait_seconds(time.time()) == 0
    assert runner.run(time.time()) == 2 and runner.run(time.time()) == 1
    assert runner.run(time.time()) == 0 and store.next_expiry() is None


def test_batches_of_expiries_are_further_apart_than_a_writer_waits_for_the_lock(
        store, monkeypatch):
    """A writer of another process that found the lock taken tries again within
    ``lock_retry_seconds``: between two batches it gets in."""
    if isinstance(store, SqliteStore):
        assert store.lock_retry_seconds == LOCK_PAUSE[1]
    monkeypatch.setattr(expiry, "BATCH", 2)
    due(store, 5)
    started = time.monotonic()
    assert expiry.Expiry(store).run(time.time()) == 5
    assert time.monotonic() - started > 2 * store.lock_retry_seconds  # two pauses


def test_listing_pages_in_order_with_a_prefix_and_says_where_the_log_stood(store):
    for key in ("a.2", "b.1", "a.1", "a.3"):
        store.set("global", "global", key, "1", NOBODY)
    first = store.list_page("global", "global", "a.", None, 2)
    assert [r.key for r in first.records] == ["a.1", "a.2"] and first.head_id == 4
    rest = store.list_page("global", "global", "a.", first.next_after, 2)
    assert [r.key for r in rest.records] == ["a.3"] and rest.next_after is None
    whole = store.list_page("global", None, None, None, None)
    assert [r.key for r in whole.records] == ["a.1", "a.2", "a.3", "b.1"]
    assert whole.next_after is None


def test_snapshot_pages_walk_key_ranges_in_key_order(store):
    for key in ("x.1", "user.2", "user.1", "users", "user.3"):
        store.set("global", "global", key, "1", NOBODY)
    store.set("actor", "a1", "user.1", "2", NOBODY)
    where = EventFilter(patterns=("user.*", "x.1")).log
    first = store.records(where, None, 2)
    after = (first[-1].key, first[-1].scope, first[-1].scope_id)
    rest = store.records(where, after, 10)
    assert [(r.key, r.scope) for r in first + rest] == [
        ("user.1", "actor"), ("user.1", "global"), ("user.2", "global"), ("user.3", "global"),
        ("x.1", "global")]


# -- the log ---------------------------------------------------------------------------------

class Spy:
    """The store as a ``LogSource`` that counts the rows each query returns."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def counted(*args: Any) -> Any:
            found = method(*args)
            self.rows.append((name, 0 if found is None else len(found)))
            return found
        return counted


def test_a_selective_read_of_a_large_log_reads_only_what_it_returns(store):
    fill_log(store, logreader.WINDOW * 3)
    store.set("global", "global", "rare.1", "1", NOBODY)
    fill_log(store, logreader.WINDOW)
    spy = Spy(store)
    rare = EventFilter(patterns=("rare.*",)).log
    found = [e.key for page in logreader.read_log(spy, rare, 0, store.head_id()) for e in page]
    assert found == ["rare.1"]
    assert sum(rows for _, rows in spy.rows) <= 2, spy.rows  # one id, one row


def test_the_newest_event_alone_costs_one_row(store):
    fill_log(store, logreader.WINDOW * 2)
    spy = Spy(store)
    [newest] = next(logreader.read_log(spy, LogFilter(), 0, store.head_id(), True, 1))
    assert newest.id == store.head_id() and sum(rows for _, rows in spy.rows) == 1


def test_reads_that_no_index_narrows_scan_in_windows_of_bounded_rows(store):
    fill_log(store, logreader.WINDOW * 2 + 10)
    spy = Spy(store)
    suffix = EventFilter(patterns=("*.7",)).log  # no literal prefix: no key index helps,
    found = [e.key for page in logreader.read_log(spy, suffix, 0, store.head_id()) for e in page]
    assert found == ["bulk.7"]  # but the database still applies the glob loosely
    windows = [rows for name, rows in spy.rows if name == "log_window"]
    assert len(windows) >= 3 and max(windows) <= 1


def test_every_plan_returns_the_same_events_in_order(store, subtests):
    fill_log(store, 300, key="a.{n}")
    fill_log(store, 300, key="b.{n}", scope="actor")
    head = store.head_id()
    for name, where in (("keys", EventFilter(patterns=("a.1*", "b.2*")).log),
                        ("scope", LogFilter("actor", "global")),
                        ("everything", LogFilter())):
        for newest_first in (False, True):
            with subtests.test(name, newest_first=newest_first):
                by_window = [e.id for page in logreader._windows(store, where, 0, head,
                                                                  newest_first, 37)
                             for e in page]
                assert all_events(store, where, 0, newest_first, page=37) == by_window
                assert by_window == sorted(by_window, reverse=newest_first)


def test_pages_of_large_events_hold_fewer_of_them(store):
    big = '"%s"' % ("x" * 200_000)
    for n in range(60):
        store.set("global", "global", f"big.{n}", big, NOBODY)
    pages = [len(page) for page in store.read_log(LogFilter(), 0)]
    assert sum(pages) == 60 and max(pages) <= FIRST_PAGE and max(pages[1:]) <= 20


def test_snapshot_pages_of_large_values_hold_fewer_records(store):
    big = '"%s"' % ("x" * 200_000)
    for n in range(60):
        store.set("global", "global", f"big.{n}", big, NOBODY)
    stream = Stream(store, Broker(1000, 1 << 30, lambda *_: None), Settings(), Metrics(),
                    EventFilter(), None, "sse", snapshot=True)
    pages = []
    for item in stream:
        if isinstance(item, SnapshotEnd):
            break
        if isinstance(item, Snapshot):
            pages.append(len(item.records))
    assert sum(pages) == 60 and max(pages) <= FIRST_PAGE and max(pages[1:]) <= 21


def test_trimming_forgets_old_events_and_remembers_how_far(store):
    store.set("global", "global", "old", "1", NOBODY)
    time.sleep(0.01)
    cutoff = time.time()
    store.set("global", "global", "new", "1", NOBODY)
    assert store.trim(cutoff) == 1
    assert (store.trimmed_through(), store.oldest_id(), store.head_id()) == (1, 2, 2)


def test_a_large_trim_commits_in_batches_that_readers_see(store, monkeypatch):
    fill_log(store, 10, key="old.{n}")
    time.sleep(0.01)
    cutoff = time.time()
    store.set("global", "global", "new", "1", NOBODY)
    seen: list[int] = []
    monkeypatch.setattr(sql, "TRIM_BATCH", 4)
    monkeypatch.setattr(sql, "pause", lambda: seen.append(store.trimmed_through()))
    assert store.trim(cutoff) == 10
    assert seen == [4, 8]
    assert (store.trimmed_through(), store.oldest_id(), store.head_id()) == (10, 11, 11)


def test_a_key_index_narrows_by_the_ids_asked_for_not_the_whole_log(store, monkeypatch):
    """Many events of the key before the range, two in it: the two are read by id, the range
    is not scanned."""
    monkeypatch.setattr(logreader, "CAP", 50)
    fill_log(store, 200, key="rare.{n}")
    fill_log(store, 200, key="counter")
    start = store.head_id()
    fill_log(store, logreader.WINDOW * 3)
    store.set("global", "global", "rare.x", "1", NOBODY)
    store.set("global", "global", "counter", "1", NOBODY)
    for pattern, key in (("rare.*", "rare.x"), ("counter", "counter")):
        spy = Spy(store)
        where = EventFilter(patterns=(pattern,)).log
        found = [e.key for page in logreader.read_log(spy, where, start, store.head_id())
                 for e in page]
        assert found == [key]
        assert [name for name, _ in spy.rows] == ["log_ids", "log_by_ids"], spy.rows


def test_a_key_index_is_read_in_pages_and_given_up_when_it_costs_more_than_a_scan(
        store, monkeypatch):
    monkeypatch.setattr(sql, "INDEX_PAGE", 8)
    fill_log(store, 100, key="a.{n}")
    fill_log(store, 20, key="b.{n}")
    fill_log(store, 5, key="a.{n}")
    head, where = store.head_id(), EventFilter(patterns=("a.*",)).log
    with statements(store) as seen:
        ids = store.log_ids(where, "keys", 0, head, logreader.CAP)
    assert ids is not None and sorted(ids) == [*range(1, 101), *range(121, 126)]
    assert len(seen) > 105 / 8  # one page of the index per statement
    # the last 25 positions hold 5 of its events, after 100 entries outside them
    assert store.log_ids(where, "keys", head - 25, head, logreader.CAP) is None


def test_an_exact_scope_is_read_as_its_index_gives_its_ids(store):
    """Its index holds its ids in id order, so sparse or dense it costs what the reader takes:
    no window is scanned, and the newest few are one page of ids and their rows (``global``
    names its scope id too)."""
    fill_log(store, logreader.WINDOW * 3)
    for n in range(3):
        store.set("actor", "a1", f"k.{n}", "1", NOBODY)
        fill_log(store, 10)
    spy = Spy(store)
    found = [e.key for page in logreader.read_log(spy, LogFilter("actor", "a1"), 0,
                                                  store.head_id()) for e in page]
    assert found == ["k.0", "k.1", "k.2"]
    assert [name for name, _ in spy.rows if name != "log_ids"] == ["log_scope_ids",
                                                                     "log_by_ids"]
    spy = Spy(store)
    newest = next(logreader.read_log(spy, EventFilter("global").log, 0, store.head_id(), True,
                                     10))
    assert [e.id for e in newest] == list(range(store.head_id(), store.head_id() - 10, -1))
    assert [name for name, _ in spy.rows if name != "log_ids"] == ["log_scope_ids",
                                                                     "log_by_ids"]


def test_ids_are_fetched_a_page_at_a_time_however_few_rows_are_wanted(store):
    """``history?limit=1&patterns=a.*.z``: the key range ``a.`` offers many ids whose events
    the glob refuses; they cost a few queries, not one each."""
    store.set("global", "global", "a.1.z", "1", NOBODY)
    fill_log(store, 3 * logreader.PAGE, key="a.{n}.y")
    fill_log(store, logreader.WINDOW * 2)
    spy = Spy(store)
    where = EventFilter(patterns=("a.*.z",)).log
    [[found]] = list(logreader.read_log(spy, where, 0, store.head_id(), True, 1))
    assert found.key == "a.1.z"
    assert sum(name == "log_by_ids" for name, _ in spy.rows) <= 4, spy.rows


# -- what a read costs -------------------------------------------------------------------------

class Recorded:
    """A cursor that notes every statement run through it."""

    def __init__(self, cursor: Any, seen: list[tuple[str, tuple]]) -> None:
        self._cursor = cursor
        self._seen = seen

    def execute(self, statement: str, args: Any = ()) -> Any:
        self._seen.append((statement, tuple(args)))
        return self._cursor.execute(statement, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@contextmanager
def statements(store: Any) -> Iterator[list[tuple[str, tuple]]]:
    """The statements the store reads with meanwhile, each with its arguments."""
    seen: list[tuple[str, tuple]] = []

    def recording(opener: Any) -> Any:
        @contextmanager
        def opened() -> Iterator[Recorded]:
            with opener() as cur:
                yield Recorded(cur, seen)
        return opened

    store._read, store._consistent = recording(store._read), recording(store._consistent)
    try:
        yield seen
    finally:
        del store._read, store._consistent


#: what a plan shows when it reads a whole table, or an index range it must then sort
WHOLE = ("SCAN ", "TEMP B-TREE", "Seq Scan", "Sort", "Bitmap")


def plan(store: Any, statement: str, args: tuple) -> str:
    """How the database runs a statement: SQLite's query plan, PostgreSQL's ``EXPLAIN``."""
    explain = "EXPLAIN QUERY PLAN " if isinstance(store, SqliteStore) else "EXPLAIN "
    with store._read() as cur:
        cur.execute(explain + statement, args)
        return "\n".join(str(row[-1]) for row in cur.fetchall())


def uses(store: Any, found: str, name: str) -> bool:
    """Whether a plan reads the index ``name`` (SQLite has its own names for primary keys)."""
    if isinstance(store, SqliteStore):
        name = {"events_pkey": "INTEGER PRIMARY KEY",
                "memory_pkey": "sqlite_autoindex_memory_1"}.get(name, name)
    return name in found


def chooses(store: Any) -> bool:
    """Whether the planner picks among indexes by its own rules, which a test can hold it
    to. PostgreSQL weighs them by statistics, and a table of a few hundred rows gives it
    nothing to weigh: there only what no plan may do is checked."""
    return isinstance(store, SqliteStore)


def ranges(store: Any, seen: list[tuple[str, tuple]], table: str) -> list[tuple[str, str]]:
    """The statements that read ``table`` by a condition, with their plans, none of which
    may read the whole table or sort what it read."""
    plans = [(statement, plan(store, statement, args)) for statement, args in seen
             if f"FROM {table} WHERE" in statement]
    assert plans, seen
    for statement, found in plans:
        assert not any(mark in found for mark in WHOLE), f"{statement}\n{found}"
    return plans


LOG_READS = {
    "scope": LogFilter("actor"),
    "scope and keys": EventFilter("actor", patterns=("a.1*",)).log,
    "scope and time": LogFilter("actor", since=0.0),
    "scope and scope id": LogFilter("actor", "global"),
    "global": EventFilter("global").log,
}


@pytest.mark.parametrize("name", LOG_READS)
def test_log_reads_range_over_the_ids_they_read(store, name, monkeypatch):
    """Rows are read by the primary key, over a window of ids or a list of them, whatever
    else the filter names (no other index is left for the planner to choose); an index
    narrows to ids first, never reading rows, in pages that are small beside the log."""
    monkeypatch.setattr(sql, "INDEX_PAGE", 64)
    fill_log(store, 300, key="a.{n}", scope="actor")
    fill_log(store, logreader.WINDOW * 3)
    where = LOG_READS[name]
    for newest_first in (False, True):
        with statements(store) as seen:
            all_events(store, where, newest_first=newest_first)
        for statement, found in ranges(store, seen, "events"):
            if statement.startswith(f"SELECT {sql.EVENT_COLUMNS}"):
                assert uses(store, found, "events_pkey"), f"{statement}\n{found}"


SNAPSHOTS = {  # what the filter fixes: the index whose range a page is
    "scope": (LogFilter("actor"), "memory_scope"),
    "scope and keys": (EventFilter("actor", patterns=("k.1*",)).log, "memory_scope"),
    "scope and scope id": (LogFilter("actor", "a1"), "memory_pkey"),
    "global": (EventFilter("global").log, "memory_pkey"),
    "keys": (EventFilter(patterns=("k.1*",)).log, "memory_key"),
}


def fill_records(store: Any, count: int) -> list[tuple[str, str, str]]:
    """``count`` records over every scope and a few scope ids, written straight into the
    table; their (key, scope, scope_id)."""
    rows = []
    for n in range(count):
        scope = ("global", "actor", "session")[n % 3]
        rows.append((scope, "global" if scope == "global" else f"{scope[0]}{n % 4}",
                     f"k.{n:03d}"))
    with store._write() as cur:
        cur.executemany(store._sql(
            "INSERT INTO memory (scope, scope_id, key, data, created_at, updated_at, version) "
            "VALUES (?, ?, ?, '1', 0, 0, 0)"), rows)
    return [(key, scope, scope_id) for scope, scope_id, key in rows]


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_snapshot_pages_are_index_ranges_from_their_cursor(store, name):
    records = fill_records(store, 300)
    where, used = SNAPSHOTS[name]
    selection = EventFilter(where.scope, where.scope_id, where.patterns)
    expected = sorted(r for r in records
                      if selection(SimpleNamespace(key=r[0], scope=r[1], scope_id=r[2])))
    walked, after = [], None
    with statements(store) as seen:
        while True:
            page = store.records(where, after, 7)
            walked += [(r.key, r.scope, r.scope_id) for r in page]
            if len(page) < 7:
                break
            after = walked[-1]
    assert walked == expected
    plans = ranges(store, seen, "memory")
    assert not chooses(store) or all(uses(store, found, used) for _, found in plans), plans


LISTINGS = {  # scope, scope id, prefix
    "scope": ("actor", None, None),
    "scope id and prefix": ("actor", "a1", "k.1"),
    "global and prefix": ("global", None, "k.1"),
    "scope and prefix": ("actor", None, "k.1"),
}


@pytest.mark.parametrize("name", LISTINGS)
def test_list_pages_are_ranges_of_the_primary_key(store, name, monkeypatch):
    """A prefix across scope ids can only filter the walk (the order is by scope id first),
    so that walk goes on in ranges of at most ``LIST_PAGE`` rows, each closed at both ends."""
    monkeypatch.setattr(sql, "LIST_PAGE", 20)
    records = fill_records(store, 300)
    scope, scope_id, prefix = LISTINGS[name]
    expected = sorted((sid, key) for key, s, sid in records if s == scope
                      and (scope_id is None or sid == scope_id)
                      and (prefix is None or key.startswith(prefix)))
    walked, after, calls = [], None, 0
    with statements(store) as seen:
        while True:
            calls += 1
            listing = store.list_page(scope, scope_id, prefix, after, 7)
            walked += [(r.scope_id, r.key) for r in listing.records]
            after = listing.next_after
            if after is None:
                break
    assert walked == expected
    plans = ranges(store, seen, "memory")
    assert not chooses(store) or all(uses(store, found, "memory_pkey") for _, found in plans)
    if scope == "actor" and scope_id is None and prefix is not None:
        pages = [(statement, found) for statement, found in plans
                 if statement.startswith(f"SELECT {sql.RECORD_COLUMNS}")]
        closed = [found for statement, found in pages if "(scope_id, key) <=" in statement]
        assert closed and all("(scope_id,key)<" in found or "ROW(scope_id, key) <=" in found
                              for found in closed), closed
        # only a walk's last statement, with fewer rows left than a walk, may be open
        assert len(pages) - len(closed) <= calls


# -- vectors ---------------------------------------------------------------------------------

def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_vectors_upsert_keep_created_at_and_record_every_change_in_order(store):
    first = store.vector_set("session", "s1", "doc.1", floats(1, 0), '{"t":"a"}')
    again = store.vector_set("session", "s1", "doc.1", floats(0, 1), '{"t":"b"}')
    store.vector_set("session", "s1", "doc.2", floats(1, 1), "{}")
    assert again.created_at == first.created_at and again.seq > first.seq
    got = store.vector_get("session", "s1", "doc.1")
    assert got is not None and got.embedding == floats(0, 1) and got.metadata == '{"t":"b"}'
    assert store.vector_get("session", "s2", "doc.1") is None
    assert store.vector_delete("session", "s1", "doc.1") and not store.vector_delete(
        "session", "s1", "doc.1")
    changes = store.vector_changes("session", "s1", first.seq, 100)
    assert [(c.key, c.embedding is None) for c in changes] == [("doc.2", False),
                                                               ("doc.1", True)]
    head, forgotten = store.vector_head("session", "s1")
    assert head == changes[-1].seq and forgotten == 0


def test_a_namespace_delete_takes_exactly_the_keys_with_that_prefix(store):
    for key in ("docs/a", "docs/b", "docs_c", "other"):
        store.vector_set("global", "global", key, floats(1), "{}")
    assert store.vector_delete_prefix("global", "global", "docs/") == 2
    left = [c.key for c in store.vector_changes("global", "global", 0, 100) if c.embedding]
    assert sorted(left) == ["docs_c", "other"]


def test_the_store_answers_across_connections(store, other):
    store.set("global", "global", "k", "1", NOBODY)
    wait_until(lambda: other.get("global", "global", "k") is not None)


# -- group commit ----------------------------------------------------------------------------

def test_writes_that_arrive_together_share_one_transaction_and_keep_their_own_answers(store):
    store.set("global", "global", "taken", "0", NOBODY)
    opened, gate, entered = [], threading.Event(), threading.Event()
    transaction = store._group._transaction  # type: ignore[attr-defined]

    @contextmanager
    def counted():
        opened.append(1)
        if len(opened) == 1:  # the first holds its transaction while the others arrive
            entered.set()
            gate.wait(10)
        with transaction() as cur:
            yield cur
    store._group._transaction = counted  # type: ignore[attr-defined]
    answers: dict[str, object] = {}

    def write(n: int) -> None:
        try:
            answers[f"k.{n}"] = store.set("global", "global", f"k.{n}", str(n), NOBODY).version
        except VersionConflict as conflict:
            answers[f"k.{n}"] = conflict

    def refused() -> None:
        try:
            store.set("global", "global", "taken", "1", NOBODY, if_version=0)
        except VersionConflict as conflict:
            answers["taken"] = conflict

    first = threading.Thread(target=write, args=(0,))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=write, args=(n,)) for n in range(1, 16)]
    others.append(threading.Thread(target=refused))
    for thread in others:
        thread.start()
    wait_until(lambda: len(store._group._waiting) == 16,  # type: ignore[attr-defined]
               message=f"16 waiting writes: {store._group._waiting}")
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(opened) == 2  # the first alone, then the sixteen that waited for it
    assert isinstance(answers.pop("taken"), VersionConflict)
    assert sorted(answers.values()) == list(range(2, 18))  # each its own event
    assert store.get("global", "global", "taken").data == "0"


def test_a_transaction_that_fails_fails_every_write_in_it(store):
    @contextmanager
    def broken():
        raise StoreUnavailable("disk full")
        yield
    store._group._transaction = broken  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable):
        store.set("global", "global", "k", "1", NOBODY)
    store._group._transaction = store._write  # type: ignore[attr-defined]
    assert store.set("global", "global", "k", "1", NOBODY).version == 1


def test_sqlite_leaves_checkpoints_to_the_follower(tmp_path):
    """A commit never moves the write-ahead log into the database, which syncs the disk and
    would stall it (SQLite's own default does so every 1,000 pages of log): every
    ``CHECKPOINT_COMMITS`` commits the store hands that work out instead, for the follower to
    run in a thread."""
    from app.store.sqlite import CHECKPOINT_COMMITS
    path = tmp_path / "checkpoints.db"
    store = SqliteStore(str(path))
    try:
        commits = 0
        while (work := store.checkpoint()) is None:
            store.set("global", "global", f"k.{commits}", "1", NOBODY)
            commits += 1
        assert commits == CHECKPOINT_COMMITS - 1  # the schema's creation was the first
        assert store.checkpoint() is None  # handed out once
        with sqlite3.connect(path) as other:
            logged = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert logged > 1000  # every frame since the first commit: none of them restarted it
        for n in range(50):
            store.set("global", "global", f"again.{n}", "1", NOBODY)
        work()
        store.set("global", "global", "after", "1", NOBODY)  # a log moved whole starts over
        with sqlite3.connect(path) as other:
            logged = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert logged < 50
    finally:
        store.close()
