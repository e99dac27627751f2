"""The event log seen through ``/memory/events/history``, in process: one event per change,
with its fields and metadata, filtered, limited and paged as the contract says."""
from __future__ import annotations

import re
import time
from datetime import timedelta, timezone
from typing import Iterator

import pytest

from .conftest import wait_until
from .test_memory_api import (ALL_HEADERS, MEMORY, Target, assert_error, deleted, history, moment,
                              send, stored)

EVENT_FIELDS = {"id", "type", "timestamp", "scope", "scope_id", "key", "action", "data",
                "previous_data", "metadata"}
DECIMAL = re.compile(r"(0|[1-9][0-9]*)")
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


def assert_event(event: dict, **expected: object) -> None:
    """A well-formed ``memory_change`` event carrying the ``expected`` values."""
    assert set(event) == EVENT_FIELDS
    assert isinstance(event["id"], str) and DECIMAL.fullmatch(event["id"]), event["id"]
    assert event["type"] == "memory_change"
    assert RFC3339_UTC.fullmatch(event["timestamp"]), event["timestamp"]
    assert {name: event[name] for name in expected} == expected


def ids(events: list[dict]) -> list[int]:
    return [int(event["id"]) for event in events]


def places(events: list[dict]) -> list[tuple[str, str, str]]:
    return [(event["scope"], event["scope_id"], event["key"]) for event in events]


def numbered(target: Target, count: int) -> list[dict]:
    """``count`` sets alternating between keys ``even.N`` and ``odd.N``; the whole log."""
    for n in range(count):
        stored(target, f"{('even', 'odd')[n % 2]}.{n}", n)
    return history(target, limit=1000)


def log_of_length(target: Target, count: int) -> list[dict] | None:
    """The whole log once it holds ``count`` events, else ``None``."""
    log = history(target)
    return log if len(log) >= count else None


def metadata(agent: str = "", actor: str = "", workflow: str = "", **extra: str) -> dict:
    return {"agent_id": agent, "actor_id": actor, "workflow_id": workflow, **extra}


# -- one event per change ------------------------------------------------------------------------

def test_a_set_writes_one_event_with_its_fields(client):
    headers = {"X-Workflow-ID": "wf-1", "X-Actor-ID": "actor-7", "X-Agent-Node-ID": "node-3"}
    record = stored(client, "user.1", {"name": "Ada"}, headers)
    [created] = history(client)
    assert_event(created, id=record["version"], scope="workflow", scope_id="wf-1", key="user.1",
                 action="set", data={"name": "Ada"}, previous_data=None,
                 metadata=metadata("node-3", "actor-7", "wf-1"))
    stored(client, "user.1", [2], scope="workflow", scope_id="wf-1")
    [first, updated] = history(client)
    assert first == created
    assert_event(updated, scope="workflow", scope_id="wf-1", key="user.1", action="set",
                 data=[2], previous_data={"name": "Ada"}, metadata=metadata())


def test_metadata_comes_from_the_headers_whatever_the_scope(client, subtests):
    node = {"X-Agent-Node-ID": "node-3"}
    for name, headers, body, expected in (
            ("no headers", {}, {}, metadata()),
            ("agent node only", node, {}, metadata(agent="node-3")),
            ("actor only", {"X-Actor-ID": "actor-7"}, {}, metadata(actor="actor-7")),
            ("session only", {"X-Session-ID": "s1"}, {}, metadata()),
            ("all headers", {**ALL_HEADERS, **node}, {}, metadata("node-3", "a1", "w1")),
            ("explicit global", {**ALL_HEADERS, **node}, {"scope": "global"},
             metadata("node-3", "a1", "w1")),
            ("explicit scope and id", {"X-Actor-ID": "a1"},
             {"scope": "workflow", "scope_id": "w9"}, metadata(actor="a1"))):
        with subtests.test(name):
            stored(client, name, 1, headers, **body)
            [event] = history(client, patterns=name)
            assert_event(event, key=name, metadata=expected)


def test_a_delete_writes_one_event_and_a_missing_key_none(client):
    headers = {"X-Actor-ID": "a1", "X-Agent-Node-ID": "node-3"}
    stored(client, "k", {"v": 1}, {"X-Actor-ID": "a1"})
    deleted(client, "k", headers)
    [created, removed] = history(client)
    assert_event(removed, scope="actor", scope_id="a1", key="k", action="delete", data=None,
                 previous_data={"v": 1}, metadata=metadata("node-3", "a1"))
    deleted(client, "k", headers)
    deleted(client, "never")
    deleted(client, "never", if_version="0")
    assert history(client) == [created, removed]


def test_an_expiry_is_logged_as_a_delete_with_reason_expired(client):
    record = stored(client, "k", {"v": 1}, {"X-Agent-Node-ID": "node-3"}, ttl_seconds=0.2)
    [created, expired] = wait_until(lambda: log_of_length(client, 2), timeout=3,
                                    message="the expiry to be logged")
    assert_event(expired, scope="global", scope_id="global", key="k", action="delete",
                 data=None, previous_data={"v": 1}, metadata=metadata(reason="expired"))
    assert created["metadata"] == metadata("node-3")
    lag = moment(expired["timestamp"]) - moment(record["expires_at"])
    assert timedelta(0) <= lag < timedelta(seconds=1)
    stored(client, "k", 2)
    assert history(client, limit=1)[0]["previous_data"] is None, "the expired value is gone"


def test_ids_strictly_grow_across_scopes_and_actions(client):
    for headers in ({}, {"X-Actor-ID": "a1"}, {"X-Session-ID": "s1"}, ALL_HEADERS):
        stored(client, "k", 1, headers)
        stored(client, "k", 2, headers)
        deleted(client, "k", headers)
    found = ids(history(client))
    assert len(found) == 12
    assert all(earlier < later for earlier, later in zip(found, found[1:])), found


# -- filters -------------------------------------------------------------------------------------

SEEDED = [("global", "global", "user.1"), ("global", "global", "user.2"),
          ("global", "global", "order.1"), ("global", "global", "user/x"),
          ("actor", "a1", "user.1"), ("actor", "a2", "user.1"), ("session", "s1", "order.2")]

FILTERS = [
    ({"scope": "global"}, [0, 1, 2, 3]),
    ({"scope": "actor"}, [4, 5]),
    ({"scope": "actor", "scope_id": "a1"}, [4]),
    ({"scope_id": "s1"}, [6]),
    ({"scope": "actor", "scope_id": "s1"}, []),
    ({"patterns": "user.*"}, [0, 1, 4, 5]),
    ({"patterns": "user*"}, [0, 1, 4, 5]),
    ({"patterns": "user/?"}, [3]),
    ({"patterns": " order.? , ,user.2 "}, [1, 2, 6]),
    ({"patterns": "[uo]*.1"}, [0, 2, 4, 5]),
    ({"patterns": "nothing.*"}, []),
    ({"scope": "actor", "patterns": "user.1,order.*", "scope_id": "a2"}, [5]),
]


def test_history_filters_by_scope_id_and_patterns(client, subtests):
    for scope, scope_id, key in SEEDED:
        stored(client, key, 1, scope=scope, scope_id=scope_id)
    for params, expected in FILTERS:
        with subtests.test(params=params):
            assert places(history(client, **params)) == [SEEDED[i] for i in expected]


def test_history_ignores_the_scope_headers(client):
    for headers in ({}, {"X-Actor-ID": "a1"}, {"X-Session-ID": "s1"}, {"X-Workflow-ID": "w1"}):
        stored(client, "k", 1, headers)
    everything = history(client)
    assert len(everything) == 4
    assert history(client, ALL_HEADERS) == everything
    assert history(client, {"X-Actor-ID": "a2"}, scope="actor") == [everything[1]]


@pytest.fixture
def local_time_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is five and a half hours from UTC, so a naive time read
    as local time would be seen to be wrong."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    assert time.timezone == -19800
    yield
    monkeypatch.undo()
    time.tzset()


def test_since_takes_rfc3339_offsets_and_naive_utc(client, local_time_far_from_utc, subtests):
    first, *rest = numbered(client, 3)
    after_first = moment(first["timestamp"]) + timedelta(microseconds=1)
    plus_two = timezone(timedelta(hours=2))
    minus_five_thirty = timezone(-timedelta(hours=5, minutes=30))
    for name, since, expected in (
            ("Z", after_first.isoformat().replace("+00:00", "Z"), rest),
            ("+02:00", after_first.astimezone(plus_two).isoformat(), rest),
            ("-05:30", after_first.astimezone(minus_five_thirty).isoformat(), rest),
            ("naive is UTC", after_first.replace(tzinfo=None).isoformat(), rest),
            ("naive, one hour earlier", (after_first - timedelta(hours=1)).replace(
                tzinfo=None).isoformat(), [first, *rest]),
            ("before everything", "2000-01-01T00:00:00Z", [first, *rest]),
            ("future", (after_first + timedelta(days=1)).isoformat(), [])):
        with subtests.test(name, since=since):
            assert history(client, since=since) == expected


def test_since_an_events_own_timestamp_includes_it(client):
    """The wire shows microseconds; an event must not fall out of ``since`` set to its own
    timestamp because the log keeps its time more finely than it shows it."""
    for event in numbered(client, 20):
        assert event in history(client, since=event["timestamp"]), event


# -- limit and paging ----------------------------------------------------------------------------

def test_limit_defaults_to_100_most_recent_oldest_first(client):
    log = numbered(client, 105)
    assert ids(log) == sorted(ids(log)) and len(log) == 105
    assert history(client) == log[-100:]
    assert history(client, limit=7) == log[-7:]
    assert history(client, limit=1000) == log
    odd = [event for event in log if event["key"].startswith("odd.")]
    assert history(client, patterns="odd.*", limit=5) == odd[-5:]


def test_limit_1_is_the_newest_matching_event(client):
    log = numbered(client, 5)
    assert history(client, limit=1) == log[-1:]
    stored(client, "even.9", 9)
    deleted(client, "odd.1")
    [deletion] = history(client, limit=1)
    assert_event(deletion, key="odd.1", action="delete")
    assert history(client, limit=1, patterns="even.*") == [history(client)[-2]]
    assert history(client, limit=1, patterns="even.*", after_id=log[0]["id"]) == log[2:3]


def test_after_id_pages_forward_without_gap_or_duplicate(client, subtests):
    log = numbered(client, 25)
    for params, expected in (({}, log),
                             ({"patterns": "odd.*"}, [e for e in log if e["key"][0] == "o"])):
        with subtests.test(params=params):
            pages, after_id = [], "0"
            while len(pages) <= len(expected):  # bounded: a paging bug must not loop forever
                page = history(client, after_id=after_id, limit=4, **params)
                if not page:
                    break
                pages.append(page)
                after_id = page[-1]["id"]
            assert [event for page in pages for event in page] == expected
            assert [len(page) for page in pages[:-1]] == [4] * (len(pages) - 1)
    assert history(client, after_id=log[-1]["id"]) == []
    assert history(client, after_id=log[9]["id"], limit=3) == log[10:13]


INVALID = [
    *(("limit", value, "invalid_limit") for value in ("0", "1001", "-1", "abc", "1.5")),
    *(("after_id", value, "invalid_after_id") for value in ("abc", "-1", "1.5", str(2**64))),
    *(("since", value, "invalid_since")
      for value in ("yesterday", "2026-13-01T00:00:00Z", "2026-11-26T25:00:00",
                    "2026-11-26T10:00:00+25:00")),
    *(("patterns", value, "invalid_pattern") for value in ("[invalid", "ok.*, []a]", "a\\")),
    ("scope", "team", "invalid_scope"),
]


def test_history_refuses_what_does_not_parse(client, subtests):
    stored(client, "k", 1)
    for name, value, error in INVALID:
        with subtests.test(name, value=value):
            response = send(client, "GET", f"{MEMORY}/events/history", params={name: value})
            body = assert_error(response, 400, error)
            assert value.split(",")[-1].strip() in body["message"]
