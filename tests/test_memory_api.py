"""The memory API against a real gunicorn: round trips, scope resolution, and caller mistakes.

Cases that can share one server's state run as subtests of one test, so a table of twenty cases
starts one server rather than twenty. The small client functions here are shared with the
history and operations tests.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import NamedTuple

import pytest
import requests

from .conftest import Server

MEMORY = "/api/v1/memory"
SCOPES = ("workflow", "session", "actor", "global")
RECORD_FIELDS = {"key", "data", "scope", "scope_id", "created_at", "updated_at"}
ALL_HEADERS = {"X-Workflow-ID": "w1", "X-Session-ID": "s1", "X-Actor-ID": "a1"}


def call(server: Server, op: str, body: object, headers: dict[str, str] | None = None
         ) -> requests.Response:
    """POST ``body`` to ``/memory/<op>``: JSON-encoded, or sent as is when it is bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(f"{server.url}{MEMORY}/{op}", data=data, timeout=10,
                         headers={"Content-Type": "application/json", **(headers or {})})


def stored(server: Server, key: str, data: object, headers: dict[str, str] | None = None,
           **scope: str) -> dict:
    """Set ``key`` and return the record the server answered with."""
    response = call(server, "set", {"key": key, "data": data, **scope}, headers)
    assert response.status_code == 200, response.text
    record = response.json()
    assert set(record) == RECORD_FIELDS
    return record


def fetched(server: Server, key: str, headers: dict[str, str] | None = None,
            **scope: str) -> dict | None:
    """The record ``get`` finds, or ``None`` on its 404."""
    response = call(server, "get", {"key": key, **scope}, headers)
    if response.status_code == 404:
        assert_error(response, 404, "not_found")
        return None
    assert response.status_code == 200, response.text
    return response.json()


def listed(server: Server, scope: str, scope_id: str | None = None) -> list[dict]:
    params = {"scope": scope} if scope_id is None else {"scope": scope, "scope_id": scope_id}
    response = requests.get(f"{server.url}{MEMORY}/list", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def history(server: Server, headers: dict[str, str] | None = None, **params: object
            ) -> list[dict]:
    response = requests.get(f"{server.url}{MEMORY}/events/history", params=params,
                            headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: requests.Response, status: int, error: str) -> None:
    """The one error shape: JSON ``{"error", "message", "code"}`` with the status."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message", "code"}
    assert (body["error"], body["code"]) == (error, status)
    assert body["message"].strip()


def records(server: Server, key: str | None = None) -> list[dict]:
    """Every record of every scope, or those under ``key``."""
    found = [record for scope in SCOPES for record in listed(server, scope)]
    return [record for record in found if key is None or record["key"] == key]


def everything(server: Server) -> tuple[list[dict], list[dict]]:
    """The whole observable state: every event and every record."""
    return history(server, limit=1000), records(server)


def ordered(found: list[dict]) -> list[dict]:
    """Records in a fixed order, as the contract leaves the order of ``list`` open."""
    return sorted(found, key=lambda record: (record["scope_id"], record["key"]))


def moment(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


# -- round trips ---------------------------------------------------------------------------------

JSON_VALUES = [None, True, False, 0, -7, 2**63, 1.5, -0.25, 1e300, "", "text ✓ 😀", [],
               [1, "two", None, [3.5]], {}, {"name": "Ada", "tags": ["x"], "nested": {"n": None}}]


def test_every_json_value_round_trips(server):
    for index, value in enumerate(JSON_VALUES):
        key = f"value.{index}"
        record = stored(server, key, value)
        assert (record["key"], record["data"], record["scope"], record["scope_id"]) == (
            key, value, "global", "global")
        assert fetched(server, key) == record
        [event] = history(server, patterns=key)
        assert (event["data"], event["previous_data"]) == (value, None)
    assert {r["key"]: r["data"] for r in listed(server, "global")} == {
        f"value.{i}": v for i, v in enumerate(JSON_VALUES)}


def test_update_keeps_created_at_and_moves_updated_at(server):
    first = stored(server, "user.1", {"v": 1})
    assert first["created_at"] == first["updated_at"]
    second = stored(server, "user.1", {"v": 2})
    assert second["created_at"] == first["created_at"]
    assert moment(second["updated_at"]) > moment(first["updated_at"])
    assert fetched(server, "user.1") == second
    assert listed(server, "global") == [second]


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


def test_set_resolves_its_scope(server, subtests):
    for key, (headers, body, (scope, scope_id)) in WRITE_SCOPES.items():
        with subtests.test(key):
            record = stored(server, key, 1, headers, **body)
            assert (record["scope"], record["scope_id"]) == (scope, scope_id)
            assert records(server, key) == [record]
            assert record in listed(server, scope, scope_id)
            assert fetched(server, key, scope=scope, scope_id=scope_id) == record


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
]


def test_get_walks_from_the_most_specific_scope(server, subtests):
    for scope, scope_id in (("global", "global"), ("actor", "a1"), ("session", "s1"),
                            ("workflow", "w1")):
        stored(server, "k", scope, scope=scope, scope_id=scope_id)
    stored(server, "only.global", "global")
    for headers, body, found in GET_WALKS:
        with subtests.test(headers=headers, body=body):
            record = fetched(server, "k", headers, **body)
            assert (record and record["data"]) == found
    assert fetched(server, "only.global", ALL_HEADERS)["data"] == "global"
    assert fetched(server, "unknown", ALL_HEADERS) is None


def test_delete_resolves_like_set_without_walking(server):
    old = stored(server, "k", {"v": 1})
    assert_error(call(server, "delete", {"key": "k"}, {"X-Actor-ID": "a1"}), 404, "not_found")
    assert fetched(server, "k") == old
    assert call(server, "delete", {"key": "k"}).status_code == 204
    assert fetched(server, "k") is None
    assert_error(call(server, "delete", {"key": "k"}), 404, "not_found")
    assert records(server) == []


def test_delete_removes_only_its_scope(server, subtests):
    kept = [stored(server, "k", "actor", scope="actor", scope_id="a1"), stored(server, "k", "g")]
    for name, headers, body in (("by header", {"X-Session-ID": "s1", "X-Actor-ID": "a1"}, {}),
                                ("explicit", {}, {"scope": "session", "scope_id": "s1"})):
        with subtests.test(name):
            stored(server, "k", "session", scope="session", scope_id="s1")
            response = call(server, "delete", {"key": "k", **body}, headers)
            assert response.status_code == 204 and response.content == b""
            assert records(server) == kept


def test_list_filters_by_scope_and_scope_id(server):
    a1 = [stored(server, key, key, {"X-Actor-ID": "a1"}) for key in ("x", "y")]
    a2 = [stored(server, "x", "other", {"X-Actor-ID": "a2"})]
    stored(server, "x", "global")
    assert ordered(listed(server, "actor")) == a1 + a2
    assert ordered(listed(server, "actor", "a1")) == a1
    assert listed(server, "actor", "a2") == a2
    assert listed(server, "actor", "a3") == []
    assert listed(server, "session") == []


def test_list_refuses_a_bad_scope(server, subtests):
    for params, error in (({}, "missing_scope"), ({"scope_id": "a1"}, "missing_scope"),
                          ({"scope": "team"}, "invalid_scope")):
        with subtests.test(params=params):
            response = requests.get(f"{server.url}{MEMORY}/list", params=params, timeout=10)
            assert_error(response, 400, error)


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
              "missing_scope_id", headers={"X-Actor-ID": "a1"} if scope != "actor" else {})
      for scope in ("workflow", "session", "actor")),
    Mistake("oversized body", {"key": "k", "data": "x" * MAX_BODY_BYTES},
            "request_entity_too_large", 413),
    Mistake("missing data", {"key": "k"}, "missing_data", ops=("set",)),
    Mistake("data too large", {"key": "k", "data": "x" * MAX_VALUE_BYTES}, "value_too_large",
            413, ops=("set",)),
]


@pytest.fixture
def limited_server(server_factory) -> Server:
    """A server with small size limits, holding one record the mistakes must leave alone."""
    server = server_factory(env={"MEMORY_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
                                 "MEMORY_MAX_VALUE_BYTES": str(MAX_VALUE_BYTES)})
    stored(server, "k", "kept")
    return server


def test_mistake_is_a_json_error_and_changes_nothing(limited_server, subtests):
    for mistake in MISTAKES:
        for op in mistake.ops:
            with subtests.test(mistake.name, op=op):
                before = everything(limited_server)
                response = call(limited_server, op, mistake.body, mistake.headers)
                assert_error(response, mistake.status, mistake.error)
                assert everything(limited_server) == before


def test_oversized_chunked_body_is_refused(limited_server):
    before = everything(limited_server)
    padding = b" " * MAX_BODY_BYTES
    chunks = iter([b'{"key": "k", "data": "new"}', padding])  # an iterator is sent chunked
    response = requests.post(f"{limited_server.url}{MEMORY}/set", data=chunks, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert "Content-Length" not in response.request.headers
    assert_error(response, 413, "request_entity_too_large")
    assert everything(limited_server) == before


def test_wrong_route_or_method_is_a_json_error(server, subtests):
    for method, path, status, error in (("GET", "/set", 405, "method_not_allowed"),
                                        ("POST", "/list", 405, "method_not_allowed"),
                                        ("POST", "/nothing", 404, "not_found")):
        with subtests.test(method=method, path=path):
            response = requests.request(method, f"{server.url}{MEMORY}{path}", json={},
                                        timeout=10)
            assert_error(response, status, error)
