"""The memory API in process: round trips, scope resolution, versions, time to live, paged
listing and caller mistakes.

Nothing here needs a socket, so every test runs on the Flask test client over an in-memory
SQLite store. Cases that can share one app's state run as subtests of one test. The small client
functions below take either that test client or a real ``Server``, and are shared with the
history and operations tests.
"""
from __future__ import annotations

import base64
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import NamedTuple, Union

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.web.context import EXTENSION
from app.wire import SCOPES

from .api import MEMORY
from .conftest import Server, wait_until

RECORD_FIELDS = {"key", "data", "scope", "scope_id", "created_at", "updated_at", "version",
                 "expires_at"}
ERROR_FIELDS = {"error", "message", "details", "code"}
ALL_HEADERS = {"X-Workflow-ID": "w1", "X-Session-ID": "s1", "X-Actor-ID": "a1"}
NEXT_LINK = re.compile(r'<([^>]*)>;\s*rel="next"')

#: where a call goes: the in-process test client, or a real server
Target = Union[FlaskClient, Server]
Response = Union[TestResponse, requests.Response]


def send(target: Target, method: str, path: str, data: bytes | str | None = None,
         params: dict | None = None, headers: dict[str, str] | None = None) -> Response:
    """One request to ``target``; ``path`` may also be a whole URL from a ``Link`` header."""
    if isinstance(target, Server):
        url = path if "://" in path else target.url + path
        return requests.request(method, url, data=data, params=params, headers=headers,
                                timeout=10)
    return target.open(path, method=method, data=data, query_string=params, headers=headers)


def payload(response: Response) -> object:
    """The JSON body of either kind of response."""
    return response.get_json() if isinstance(response, TestResponse) else response.json()


def call(target: Target, op: str, body: object, headers: dict[str, str] | None = None
         ) -> Response:
    """POST ``body`` to ``/memory/<op>``: JSON-encoded, or sent as is when it is bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body)
    return send(target, "POST", f"{MEMORY}/{op}", data=data,
                headers={"Content-Type": "application/json", **(headers or {})})


def record_of(response: Response) -> dict:
    """The record a 200 answer carries, checked for its fields."""
    assert response.status_code == 200, response.text
    record = payload(response)
    assert set(record) == RECORD_FIELDS
    return record


def stored(target: Target, key: str, data: object, headers: dict[str, str] | None = None,
           **fields: object) -> dict:
    """Set ``key`` (``fields``: scope, scope_id, if_version, ttl_seconds) and return the record
    the service answered with."""
    return record_of(call(target, "set", {"key": key, "data": data, **fields}, headers))


def fetched(target: Target, key: str, headers: dict[str, str] | None = None,
            **scope: str) -> dict | None:
    """The record ``get`` finds, or ``None`` on its 404."""
    response = call(target, "get", {"key": key, **scope}, headers)
    if response.status_code == 404:
        assert_error(response, 404, "not_found")
        return None
    return record_of(response)


def deleted(target: Target, key: str, headers: dict[str, str] | None = None,
            **fields: object) -> None:
    """Delete ``key``, which answers 204 with no body whether or not there was a record."""
    response = call(target, "delete", {"key": key, **fields}, headers)
    assert response.status_code == 204, response.text
    assert response.headers.get("Content-Length", "0") == "0"


def listing(target: Target, **params: object) -> Response:
    """``GET /memory/list`` with ``params``, whatever it answers."""
    return send(target, "GET", f"{MEMORY}/list", params=params)


def listed(target: Target, scope: str, scope_id: str | None = None, **params: object
           ) -> list[dict]:
    """The records ``list`` answers (``params``: prefix, limit, cursor)."""
    query = {"scope": scope, **params}
    if scope_id is not None:
        query["scope_id"] = scope_id
    response = listing(target, **query)
    assert response.status_code == 200, response.text
    return payload(response)


def history(target: Target, headers: dict[str, str] | None = None, **params: object
            ) -> list[dict]:
    response = send(target, "GET", f"{MEMORY}/events/history", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return payload(response)


def assert_error(response: Response, status: int, error: str) -> dict:
    """The one error shape: JSON ``{"error", "message", "details", "code"}`` with the status
    (a 409 adds ``current``); returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = payload(response)
    assert set(body) == ERROR_FIELDS | ({"current"} if status == 409 else set()), body
    assert (body["error"], body["code"]) == (error, status)
    assert body["message"].strip()
    assert body["details"] == body["message"]
    return body


def records(target: Target, key: str | None = None) -> list[dict]:
    """Every record of every scope, or those under ``key``."""
    found = [record for scope in SCOPES for record in listed(target, scope)]
    return [record for record in found if key is None or record["key"] == key]


def everything(target: Target) -> tuple[list[dict], list[dict]]:
    """The whole observable state: every event and every record."""
    return history(target, limit=1000), records(target)


def ordered(found: list[dict]) -> list[dict]:
    """Records in the order ``list`` answers them: by scope id, then key."""
    return sorted(found, key=lambda record: (record["scope_id"], record["key"]))


def moment(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


# -- round trips ---------------------------------------------------------------------------------

JSON_VALUES = [None, True, False, 0, -7, 2**63, 1.5, -0.25, 1e300, "", "text ✓ 😀", [],
               [1, "two", None, [3.5]], {}, {"name": "Ada", "tags": ["x"], "nested": {"n": None}}]


def test_every_json_value_round_trips(client):
    for index, value in enumerate(JSON_VALUES):
        key = f"value.{index}"
        record = stored(client, key, value)
        assert (record["key"], record["data"], record["scope"], record["scope_id"],
                record["expires_at"]) == (key, value, "global", "global", None)
        assert fetched(client, key) == record
        [event] = history(client, patterns=key)
        assert (event["data"], event["previous_data"]) == (value, None)
    assert {r["key"]: r["data"] for r in listed(client, "global")} == {
        f"value.{i}": v for i, v in enumerate(JSON_VALUES)}


def test_update_keeps_created_at_and_moves_updated_at(client):
    first = stored(client, "user.1", {"v": 1})
    assert first["created_at"] == first["updated_at"]
    second = stored(client, "user.1", {"v": 2})
    assert second["created_at"] == first["created_at"]
    assert moment(second["updated_at"]) > moment(first["updated_at"])
    assert fetched(client, "user.1") == second
    assert listed(client, "global") == [second]


def test_version_is_the_id_of_the_event_that_last_changed_the_record(client):
    versions = []
    for value in (1, 2):
        record = stored(client, "k", value)
        assert record["version"] == history(client, limit=1)[0]["id"]
        versions.append(int(record["version"]))
    stored(client, "other", 1)
    assert versions[0] < versions[1]
    assert fetched(client, "k")["version"] == str(versions[1])
    assert [r["version"] for r in listed(client, "global") if r["key"] == "k"] == [str(versions[1])]


WRITE_SCOPES = {
    "no header: global": ({}, {}, ("global", "global")),
    "actor": ({"X-Actor-ID": "a1"}, {}, ("actor", "a1")),
    "session over actor": ({"X-Session-ID": "s1", "X-Actor-ID": "a1"}, {}, ("session", "s1")),
    "workflow over actor": ({"X-Workflow-ID": "w1", "X-Actor-ID": "a1"}, {}, ("workflow", "w1")),
    "workflow over all": (ALL_HEADERS, {}, ("workflow", "w1")),
    "explicit scope and id win over headers": (ALL_HEADERS, {"scope": "actor", "scope_id": "a9"},
                                               ("actor", "a9")),
    "explicit scope takes its id from its header": (ALL_HEADERS, {"scope": "session"},
                                                    ("session", "s1")),
    "global always has id global": ({}, {"scope": "global", "scope_id": "other"},
                                    ("global", "global")),
    "explicit global despite headers": (ALL_HEADERS, {"scope": "global"}, ("global", "global")),
}


def test_set_resolves_its_scope(client, subtests):
    for key, (headers, body, (scope, scope_id)) in WRITE_SCOPES.items():
        with subtests.test(key):
            record = stored(client, key, 1, headers, **body)
            assert (record["scope"], record["scope_id"]) == (scope, scope_id)
            assert records(client, key) == [record]
            assert record in listed(client, scope, scope_id)
            assert fetched(client, key, scope=scope, scope_id=scope_id) == record


GET_WALKS = [
    ({}, {}, "global"),
    ({"X-Actor-ID": "a1"}, {}, "actor"),
    ({"X-Actor-ID": "a2"}, {}, "global"),
    ({"X-Session-ID": "s1", "X-Actor-ID": "a1"}, {}, "session"),
    ({"X-Session-ID": "s2", "X-Actor-ID": "a1"}, {}, "actor"),
    (ALL_HEADERS, {}, "workflow"),
    ({"X-Workflow-ID": "w2", "X-Session-ID": "s1", "X-Actor-ID": "a1"}, {}, "session"),
    ({"X-Workflow-ID": "w2", "X-Session-ID": "s2", "X-Actor-ID": "a2"}, {}, "global"),
    (ALL_HEADERS, {"scope": "actor"}, "actor"),
    (ALL_HEADERS, {"scope": "session", "scope_id": "s2"}, None),
    ({"X-Actor-ID": "a2"}, {"scope": "actor"}, None),
    # an explicit scope without its id holds nothing, as the control plane answers it
    ({}, {"scope": "workflow"}, None),
    ({"X-Actor-ID": "a1"}, {"scope": "session"}, None),
]


def test_get_walks_from_the_most_specific_scope(client, subtests):
    for scope, scope_id in (("global", "global"), ("actor", "a1"), ("session", "s1"),
                            ("workflow", "w1")):
        stored(client, "k", scope, scope=scope, scope_id=scope_id)
    stored(client, "only.global", "global")
    for headers, body, found in GET_WALKS:
        with subtests.test(headers=headers, body=body):
            record = fetched(client, "k", headers, **body)
            assert (record and record["data"]) == found
    assert fetched(client, "only.global", ALL_HEADERS)["data"] == "global"
    assert fetched(client, "unknown", ALL_HEADERS) is None


def test_delete_resolves_like_set_without_walking(client):
    """A delete that finds nothing in its own scope answers 204 and logs nothing, as the
    control plane's default store does; it never falls through to another scope."""
    old = stored(client, "k", {"v": 1})
    before = everything(client)
    deleted(client, "k", {"X-Actor-ID": "a1"})
    assert everything(client) == before
    deleted(client, "k")
    assert fetched(client, "k") is None
    log = history(client)
    assert [(event["action"], event["previous_data"]) for event in log] == [
        ("set", None), ("delete", old["data"])]
    for key in ("k", "never"):
        deleted(client, key)
    assert everything(client) == (log, [])


def test_delete_removes_only_its_scope(client, subtests):
    kept = [stored(client, "k", "actor", scope="actor", scope_id="a1"), stored(client, "k", "g")]
    for name, headers, body in (("by header", {"X-Session-ID": "s1", "X-Actor-ID": "a1"}, {}),
                                ("explicit", {}, {"scope": "session", "scope_id": "s1"})):
        with subtests.test(name):
            stored(client, "k", "session", scope="session", scope_id="s1")
            deleted(client, "k", headers, **body)
            assert records(client) == kept


# -- conditional writes --------------------------------------------------------------------------

def conditional(op: str, key: str, if_version: str) -> dict:
    """The body of a ``set`` or ``delete`` that only happens at ``if_version``."""
    return {"key": key, "if_version": if_version, **({"data": "new"} if op == "set" else {})}


def test_a_write_at_the_current_version_happens(client):
    first = stored(client, "k", 1)
    second = stored(client, "k", 2, if_version=first["version"])
    assert (second["data"], second["created_at"]) == (2, first["created_at"])
    assert int(second["version"]) > int(first["version"])
    deleted(client, "k", if_version=second["version"])
    assert fetched(client, "k") is None
    assert [event["action"] for event in history(client)] == ["set", "set", "delete"]


def test_if_version_0_means_the_key_must_not_exist(client):
    created = stored(client, "k", 1, if_version="0")
    assert fetched(client, "k") == created
    in_another_scope = stored(client, "k", 2, {"X-Actor-ID": "a1"}, if_version="0")
    assert (in_another_scope["scope"], in_another_scope["scope_id"]) == ("actor", "a1")
    before = everything(client)
    deleted(client, "absent", if_version="0")
    assert everything(client) == before, "a delete that finds nothing logs nothing"


def test_a_write_at_another_version_is_refused_and_changes_nothing(client, subtests):
    stale = stored(client, "k", 1)
    current = stored(client, "k", 2)
    for op in ("set", "delete"):
        for name, key, if_version, found in (
                ("a stale version", "k", stale["version"], current),
                ("a version never issued", "k", "999999", current),
                ("0 while the key exists", "k", "0", current),
                ("a version of a key that is absent", "absent", current["version"], None)):
            with subtests.test(name, op=op):
                before = everything(client)
                refusal = assert_error(call(client, op, conditional(op, key, if_version)), 409,
                                       "version_conflict")
                assert refusal["current"] == found
                assert everything(client) == before


# -- time to live --------------------------------------------------------------------------------

def without_sweeper(app: Flask) -> FlaskClient:
    """A client of ``app`` whose log follower never runs: an expired record stays in the store,
    so only the read path can hide it."""
    app.extensions[EXTENSION].follower.stop()
    return app.test_client()


def test_ttl_seconds_sets_expires_at(client, subtests):
    for ttl in (60, 0.5, 86400 * 365):
        with subtests.test(ttl=ttl):
            record = stored(client, f"ttl.{ttl}", 1, ttl_seconds=ttl)
            lifetime = moment(record["expires_at"]) - moment(record["updated_at"])
            assert abs(lifetime - timedelta(seconds=ttl)) <= timedelta(milliseconds=1)
            assert fetched(client, record["key"]) == record
            assert record in listed(client, "global")


def test_an_expired_record_is_gone_at_once_for_get_and_list(app_factory):
    client = without_sweeper(app_factory())
    kept = stored(client, "kept", 1)
    record = stored(client, "k", 1, ttl_seconds=0.2)
    assert listed(client, "global") == [record, kept]
    wait_until(lambda: fetched(client, "k") is None, timeout=2, message="the record to expire")
    assert datetime.now(timezone.utc) >= moment(record["expires_at"])
    assert listed(client, "global") == [kept]
    assert listed(client, "global", prefix="k", limit=1) == [kept]


def test_a_later_set_without_ttl_clears_it(client):
    stored(client, "cleared", 1, ttl_seconds=0.2)
    stored(client, "extended", 1, ttl_seconds=0.2)
    cleared = stored(client, "cleared", 2)
    extended = stored(client, "extended", 2, ttl_seconds=3600)
    assert cleared["expires_at"] is None
    stored(client, "witness", 1, ttl_seconds=0.2)  # expires after the first two would have
    wait_until(lambda: fetched(client, "witness") is None, timeout=2,
               message="the witness to expire")
    assert [fetched(client, "cleared"), fetched(client, "extended")] == [cleared, extended]


# -- listing -------------------------------------------------------------------------------------

def next_url(response: Response) -> str | None:
    """The ``Link: <url>; rel="next"`` of a ``list`` answer, if more pages follow."""
    link = response.headers.get("Link")
    if link is None:
        return None
    found = NEXT_LINK.fullmatch(link.strip())
    assert found, link
    return found.group(1)


def pages(target: Target, **params: object) -> list[Response]:
    """Every page of a listing, following each answer's next link until there is none."""
    return following(target, listing(target, **params))


def following(target: Target, first: Response) -> list[Response]:
    """``first`` and every page its next links lead to."""
    answers = [first]
    while (url := next_url(answers[-1])) is not None:
        assert len(answers) < 100, "the links never end"
        answers.append(send(target, "GET", url))
    for answer in answers:
        assert answer.status_code == 200, answer.text
    return answers


def test_list_filters_by_scope_and_scope_id(client):
    a1 = [stored(client, key, key, {"X-Actor-ID": "a1"}) for key in ("x", "y")]
    a2 = [stored(client, "x", "other", {"X-Actor-ID": "a2"})]
    stored(client, "x", "global")
    assert listed(client, "actor") == a1 + a2
    assert listed(client, "actor", "a1") == a1
    assert listed(client, "actor", "a2") == a2
    assert listed(client, "actor", "a3") == []
    assert listed(client, "session") == []


def test_list_prefix_keeps_the_keys_that_start_with_it(client, subtests):
    keys = ["user", "user.1", "user.2", "users.x", "order.1", "50%_off", "50x", "é.1", "éa"]
    for key in keys:
        stored(client, key, key)
    stored(client, "user.9", "actor", scope="actor", scope_id="a1")
    for prefix in ("user.", "user", "50%", "50%_", "é.", "é", "nothing", "user.1"):
        with subtests.test(prefix=prefix):
            found = [record["key"] for record in listed(client, "global", prefix=prefix)]
            assert found == sorted(key for key in keys if key.startswith(prefix))


def test_list_pages_through_every_record_once(client, subtests):
    for actor in ("a1", "a2", "a3"):
        for key in ("x", "y", "z.1", "z.2"):
            stored(client, key, [actor, key], scope="actor", scope_id=actor)
    stored(client, "x", "global")
    for params in ({"scope": "actor"}, {"scope": "actor", "prefix": "z."},
                   {"scope": "actor", "scope_id": "a2"}):
        whole = listed(client, **params)
        assert whole == ordered(whole) and whole
        for limit in (1, 2, 3, len(whole), 1000):
            with subtests.test(params=params, limit=limit):
                answers = pages(client, **params, limit=limit)
                found = [record for answer in answers for record in payload(answer)]
                assert found == whole
                assert len(answers) == math.ceil(len(whole) / limit)
                assert all(len(payload(answer)) == limit for answer in answers[:-1])


def test_a_walk_sees_what_is_written_after_its_cursor(client):
    for n in range(6):
        stored(client, f"k{n}", n)
    first = listing(client, scope="global", limit=2)
    assert [record["key"] for record in payload(first)] == ["k0", "k1"]
    stored(client, "a", "behind the cursor")
    latest = stored(client, "k9", "ahead of the cursor")
    rest = following(client, first)
    keys = [record["key"] for answer in rest[1:] for record in payload(answer)]
    assert keys == ["k2", "k3", "k4", "k5", "k9"]
    assert {answer.headers["X-Last-Event-ID"] for answer in rest[1:]} == {latest["version"]}


def test_every_list_answer_names_the_newest_event_it_reflects(client):
    assert listing(client, scope="global").headers["X-Last-Event-ID"] == "0"
    for n in range(3):
        stored(client, f"k{n}", n)
    stored(client, "elsewhere", 1, scope="actor", scope_id="a1")
    newest = history(client, limit=1)[0]["id"]
    answers = pages(client, scope="global", limit=1)
    assert [answer.headers["X-Last-Event-ID"] for answer in answers] == [newest] * 3
    deleted(client, "k0")
    [deletion] = history(client, limit=1)
    assert listing(client, scope="session").headers["X-Last-Event-ID"] == deletion["id"]


def cursor(value: object) -> str:
    """A cursor-shaped token (URL-safe base64 of JSON) that no answer ever handed out."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


LIST_MISTAKES = [
    ({}, "missing_scope"),
    ({"scope_id": "a1"}, "missing_scope"),
    ({"scope": "team"}, "invalid_scope"),
    *(({"scope": "global", "limit": value}, "invalid_limit")
      for value in ("0", "1001", "x", "-1", "1.5")),
    *(({"scope": "global", "cursor": value}, "invalid_cursor")
      for value in ("not a cursor!", "%%%", cursor({}), cursor(["global"]), cursor([1, 2]))),
]


def test_list_refuses_a_bad_query(client, subtests):
    stored(client, "k", 1)
    for params, error in LIST_MISTAKES:
        with subtests.test(params=params):
            assert_error(listing(client, **params), 400, error)


# -- caller mistakes -----------------------------------------------------------------------------

MAX_BODY_BYTES = 4096
MAX_VALUE_BYTES = 1024
NESTED = "[" * 1500 + "]" * 1500


class Mistake(NamedTuple):
    name: str
    body: object
    error: str
    status: int = 400
    ops: tuple[str, ...] = ("set", "get", "delete")
    headers: dict[str, str] = {}


MISTAKES = [
    Mistake("empty body", b"", "invalid_json"),
    Mistake("truncated JSON", b'{"key": "k", "data": ', "invalid_json"),
    Mistake("form encoded", b"key=k&data=1", "invalid_json"),
    Mistake("not UTF-8", b"\xff\xfe{", "invalid_json"),
    Mistake("NaN", b'{"key": "k", "data": NaN}', "invalid_json"),
    Mistake("Infinity", b'{"key": "k", "data": -Infinity}', "invalid_json"),
    Mistake("nested too deep", f'{{"key": "k", "data": {NESTED}}}'.encode(), "invalid_json"),
    Mistake("array body", ["k", 1], "invalid_body"),
    Mistake("string body", "k", "invalid_body"),
    Mistake("null body", None, "invalid_body"),
    Mistake("missing key", {"data": 1}, "missing_key"),
    Mistake("null key", {"key": None, "data": 1}, "missing_key"),
    Mistake("number key", {"key": 7, "data": 1}, "invalid_key"),
    Mistake("array key", {"key": ["k"], "data": 1}, "invalid_key"),
    Mistake("empty key", {"key": "", "data": 1}, "invalid_key"),
    Mistake("unknown scope", {"key": "k", "data": 1, "scope": "team"}, "invalid_scope"),
    Mistake("scope not a string", {"key": "k", "data": 1, "scope": 3}, "invalid_scope"),
    *(Mistake(f"{scope} without its id", {"key": "k", "data": 1, "scope": scope},
              "missing_scope_id", headers={"X-Actor-ID": "a1"} if scope != "actor" else {},
              ops=("set", "delete"))  # a get finds nothing there: see GET_WALKS
      for scope in ("workflow", "session", "actor")),
    Mistake("oversized body", {"key": "k", "data": "x" * MAX_BODY_BYTES},
            "request_entity_too_large", 413),
    Mistake("missing data", {"key": "k"}, "missing_data", ops=("set",)),
    Mistake("data too large", {"key": "k", "data": "x" * MAX_VALUE_BYTES}, "value_too_large",
            413, ops=("set",)),
    *(Mistake(f"if_version {value!r}", {"key": "k", "data": 1, "if_version": value},
              "invalid_if_version", ops=("set", "delete"))
      for value in ("abc", "-1", -1, "1.5", 1.5, "1e3", "", True, ["1"])),
    *(Mistake(f"ttl_seconds {value!r}", {"key": "k", "data": 1, "ttl_seconds": value},
              "invalid_ttl_seconds", ops=("set",))
      for value in (0, 0.0, -1, -0.5, 1e12, 1e300, "60", True, [60], {})),
]


@pytest.fixture
def limited(app_factory) -> FlaskClient:
    """An app with small size limits, holding one record the mistakes must leave alone."""
    client = app_factory(MEMORY_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                         MEMORY_MAX_VALUE_BYTES=str(MAX_VALUE_BYTES)).test_client()
    stored(client, "k", "kept")
    return client


def test_mistake_is_a_json_error_and_changes_nothing(limited, subtests):
    for mistake in MISTAKES:
        for op in mistake.ops:
            with subtests.test(mistake.name, op=op):
                before = everything(limited)
                response = call(limited, op, mistake.body, mistake.headers)
                assert_error(response, mistake.status, mistake.error)
                assert everything(limited) == before


def test_wrong_route_or_method_is_a_json_error(client, subtests):
    for method, path, status, error in (("GET", "/set", 405, "method_not_allowed"),
                                        ("POST", "/list", 405, "method_not_allowed"),
                                        ("POST", "/nothing", 404, "not_found")):
        with subtests.test(method=method, path=path):
            response = send(client, method, f"{MEMORY}{path}", data="{}",
                            headers={"Content-Type": "application/json"})
            assert_error(response, status, error)
