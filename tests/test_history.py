"""The event log seen through ``/memory/events/history``: one event per change, with its fields,
filtered, limited and paged as the contract says."""
from __future__ import annotations

import re
from datetime import timedelta, timezone

import requests

from .conftest import Server
from .test_memory_api import (ALL_HEADERS, MEMORY, assert_error, call, history, moment,
                              stored)

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


def numbered(server: Server, count: int) -> list[dict]:
    """``count`` sets alternating between keys ``even.N`` and ``odd.N``; the whole log."""
    for n in range(count):
        stored(server, f"{('even', 'odd')[n % 2]}.{n}", n)
    return history(server, limit=1000)


# -- one event per change ------------------------------------------------------------------------

def test_a_set_writes_one_event_with_its_fields(server):
    headers = {"X-Workflow-ID": "wf-1", "X-Actor-ID": "agent-7"}
    stored(server, "user.1", {"name": "Ada"}, headers)
    [created] = history(server)
    assert_event(created, scope="workflow", scope_id="wf-1", key="user.1", action="set",
                 data={"name": "Ada"}, previous_data=None,
                 metadata={"agent_id": "agent-7", "workflow_id": "wf-1"})
    stored(server, "user.1", [2], scope="workflow", scope_id="wf-1")
    [first, updated] = history(server)
    assert first == created
    assert_event(updated, scope="workflow", scope_id="wf-1", key="user.1", action="set",
                 data=[2], previous_data={"name": "Ada"},
                 metadata={"agent_id": "", "workflow_id": ""})


def test_metadata_comes_from_the_headers_whatever_the_scope(server, subtests):
    for name, headers, body, metadata in (
            ("no headers", {}, {}, {"agent_id": "", "workflow_id": ""}),
            ("actor only", {"X-Actor-ID": "agent-7"}, {},
             {"agent_id": "agent-7", "workflow_id": ""}),
            ("all headers", ALL_HEADERS, {}, {"agent_id": "a1", "workflow_id": "w1"}),
            ("explicit global", ALL_HEADERS, {"scope": "global"},
             {"agent_id": "a1", "workflow_id": "w1"})):
        with subtests.test(name):
            stored(server, name, 1, headers, **body)
            [event] = history(server, patterns=name)
            assert_event(event, key=name, metadata=metadata)


def test_a_delete_writes_one_event_and_a_missing_key_none(server):
    stored(server, "k", {"v": 1}, {"X-Actor-ID": "a1"})
    assert call(server, "delete", {"key": "k"}, {"X-Actor-ID": "a1"}).status_code == 204
    [created, deleted] = history(server)
    assert_event(deleted, scope="actor", scope_id="a1", key="k", action="delete", data=None,
                 previous_data={"v": 1}, metadata={"agent_id": "a1", "workflow_id": ""})
    assert_error(call(server, "delete", {"key": "k"}, {"X-Actor-ID": "a1"}), 404, "not_found")
    assert_error(call(server, "delete", {"key": "never"}), 404, "not_found")
    assert history(server) == [created, deleted]


def test_ids_strictly_grow_across_scopes_and_actions(server):
    for headers in ({}, {"X-Actor-ID": "a1"}, {"X-Session-ID": "s1"}, ALL_HEADERS):
        stored(server, "k", 1, headers)
        stored(server, "k", 2, headers)
        assert call(server, "delete", {"key": "k"}, headers).status_code == 204
    found = ids(history(server))
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


def test_history_filters_by_scope_id_and_patterns(server, subtests):
    for scope, scope_id, key in SEEDED:
        stored(server, key, 1, scope=scope, scope_id=scope_id)
    for params, expected in FILTERS:
        with subtests.test(params=params):
            assert places(history(server, **params)) == [SEEDED[i] for i in expected]


def test_history_ignores_the_scope_headers(server):
    for headers in ({}, {"X-Actor-ID": "a1"}, {"X-Session-ID": "s1"}, {"X-Workflow-ID": "w1"}):
        stored(server, "k", 1, headers)
    everything = history(server)
    assert len(everything) == 4
    assert history(server, ALL_HEADERS) == everything
    assert history(server, {"X-Actor-ID": "a2"}, scope="actor") == [everything[1]]


def test_since_takes_rfc3339_offsets_and_naive_utc(server_factory, subtests):
    server = server_factory(env={"TZ": "Asia/Kolkata"})  # naive must not mean local time
    first, *rest = numbered(server, 3)
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
            assert history(server, since=since) == expected


def test_since_an_events_own_timestamp_includes_it(server):
    """The wire shows microseconds; an event must not fall out of ``since`` set to its own
    timestamp because the log keeps its time more finely than it shows it."""
    for event in numbered(server, 20):
        assert event in history(server, since=event["timestamp"]), event


# -- limit and paging ----------------------------------------------------------------------------

def test_limit_defaults_to_100_most_recent_oldest_first(server):
    log = numbered(server, 105)
    assert ids(log) == sorted(ids(log)) and len(log) == 105
    assert history(server) == log[-100:]
    assert history(server, limit=1) == log[-1:]
    assert history(server, limit=7) == log[-7:]
    assert history(server, limit=1000) == log
    odd = [event for event in log if event["key"].startswith("odd.")]
    assert history(server, patterns="odd.*", limit=5) == odd[-5:]


def test_after_id_pages_forward_without_gap_or_duplicate(server, subtests):
    log = numbered(server, 25)
    for params, expected in (({}, log),
                             ({"patterns": "odd.*"}, [e for e in log if e["key"][0] == "o"])):
        with subtests.test(params=params):
            pages, after_id = [], "0"
            while len(pages) <= len(expected):  # bounded: a paging bug must not loop forever
                page = history(server, after_id=after_id, limit=4, **params)
                if not page:
                    break
                pages.append(page)
                after_id = page[-1]["id"]
            assert [event for page in pages for event in page] == expected
            assert [len(page) for page in pages[:-1]] == [4] * (len(pages) - 1)
    assert history(server, after_id=log[-1]["id"]) == []
    assert history(server, after_id=log[9]["id"], limit=3) == log[10:13]


INVALID = [
    *(("limit", value, "invalid_limit") for value in ("0", "1001", "-1", "abc", "1.5")),
    *(("after_id", value, "invalid_after_id") for value in ("abc", "-1", "1.5", str(2**64))),
    *(("since", value, "invalid_since")
      for value in ("yesterday", "2026-13-01T00:00:00Z", "2026-11-26T25:00:00",
                    "2026-11-26T10:00:00+25:00")),
    *(("patterns", value, "invalid_pattern") for value in ("[invalid", "ok.*, []a]", "a\\")),
    ("scope", "team", "invalid_scope"),
]


def test_history_refuses_what_does_not_parse(server, subtests):
    stored(server, "k", 1)
    for name, value, error in INVALID:
        with subtests.test(name, value=value):
            response = requests.get(f"{server.url}{MEMORY}/events/history",
                                    params={name: value}, timeout=10)
            assert_error(response, 400, error)
            assert value.split(",")[-1].strip() in response.json()["message"]
