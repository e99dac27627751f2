"""The store contract, held to SQLite and PostgreSQL alike: records with versions and time to
live, paged listing at a known position, the log and its paged reader, and vectors."""
from __future__ import annotations

import struct
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from app.core.broker import Broker
from app.core.errors import VersionConflict
from app.core.filters import EventFilter, LogFilter
from app.core.metrics import Metrics
from app.core.paging import FIRST_PAGE
from app.core.records import Author
from app.core.stream import Snapshot, SnapshotEnd, Stream
from app.settings import Settings
from app.store import Store, StoreUnavailable, open_store
from app.store import logreader, sql

from .conftest import every_store, wait_until

pytestmark = every_store

NOBODY = Author()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = open_store(db_url)
    yield opened
    opened.close()


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


def test_the_store_answers_across_connections(db_url, store):
    other = open_store(db_url)
    try:
        store.set("global", "global", "k", "1", NOBODY)
        wait_until(lambda: other.get("global", "global", "k") is not None)
    finally:
        other.close()


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
