"""Hostile input: whatever arrives, the answer is one ``/openapi.json`` describes (every error
code included), never a 500 and never a stack trace.

schemathesis derives requests for every route from the description itself and calls the WSGI
app in-process. The two stream routes would hold a generic client forever, so their query
validation and the WebSocket handshake get their own ``hypothesis`` strategies: the SSE query
in-process (its first frame shows the stream opened), the WebSocket against a real server (an
accepted socket needs one); the JSON bodies of the memory and vector routes get theirs too,
in-process. Example
counts are bounded so the whole module stays well under a minute.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

import numpy as np
import pytest
import requests
import schemathesis
import websocket
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, currently_in_test_context, example, given, note, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               negative_data_rejection,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from app.wire import API_PREFIX as API
from app.wire import SCOPES, WS_PROTOCOL

from .api import SSE, WS, parse
from .conftest import Server
from .test_openapi import Description, http_description

STREAM_ROUTES = r"/memory/events/(sse|ws)$"
# A Python traceback, raw or inside a JSON string (quotes escaped).
STACK_TRACE = re.compile(r'Traceback \(most recent call last\)|File \\?"[^"\\]+\\?", line \d+')


#: ``MEMORY_FUZZ_SCALE=20`` runs twenty times as many examples, for a deeper search by hand
SCALE = float(os.environ.get("MEMORY_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """The database is off so runs leave no files behind."""
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_no_stack_trace(body: bytes | str | None) -> None:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body or ""
    assert not STACK_TRACE.search(text), f"stack trace in the answer: {text[:500]}"


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def description(client: FlaskClient) -> Description:
    return Description.of(client)


# -- every route but the streams, from the description, in-process ---------------------------

def no_stack_trace(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                   case: schemathesis.Case) -> None:
    assert_no_stack_trace(response.content)


def described_exactly(description: Description) -> Callable[..., None]:
    """The test suite's own reading of the description: the headers, the body, and that an
    error's code is one its answer names and its ``details`` repeats its ``message``."""
    def check(ctx: schemathesis.CheckContext, response: schemathesis.Response,
              case: schemathesis.Case) -> None:
        if case.method.upper() != case.operation.method.upper():
            return  # a method the path does not have: another route's answer, or a 405
        headers = CaseInsensitiveDict({name: values[0]
                                       for name, values in response.headers.items()})
        description.check(case.operation.path, case.method, response.status_code, headers,
                          response.content)
    return check


def checks(description: Description) -> list[Callable[..., Any]]:
    """Answers as described, and nothing the description rules out is accepted."""
    return [not_a_server_error, no_stack_trace, status_code_conformance,
            content_type_conformance, response_headers_conformance,
            response_schema_conformance, negative_data_rejection,
            described_exactly(description)]


def described_routes(app: Flask) -> schemathesis.BaseSchema:
    """The description the app serves, minus the streams, which never end by themselves."""
    return schemathesis.openapi.from_wsgi("/openapi.json", app).exclude(
        path_regex=STREAM_ROUTES)


def test_boundary_requests_are_answered_as_described(app: Flask,
                                                     description: Description) -> None:
    """schemathesis' coverage cases: each limit, each enum, each missing or mistyped part."""
    schema = described_routes(app)
    failures, operations = [], set()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.add((operation.path, operation.method.upper()))
        for case in schema.iter_coverage_cases(
                operation, generation_modes=list(GenerationMode),
                generation_config=schema.config.generation_for(operation=operation)):
            try:
                case.call_and_validate(checks=checks(description))
            except schemathesis.errors.FailureGroup as failure:
                failures.append(str(failure))
    assert {API + "/memory/vector/search", API + "/memory/list"} <= {p for p, _ in operations}
    if failures:
        pytest.fail("\n".join(failures))


def test_random_requests_are_answered_as_described(app: Flask,
                                                   description: Description) -> None:
    """Requests that fit the description and requests that break it, as many for each
    operation, so that no route is left with a handful."""
    schema = described_routes(app)
    every_check = checks(description)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                          operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

        @given(case=cases)
        @fuzz(30)
        def answers_as_described(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=every_check)

        try:
            answers_as_described()
        except Exception as failure:  # noqa: BLE001 - every operation is tried, all reported
            failures.append(f"{operation.label}: {failure}")
    if failures:
        pytest.fail("\n\n".join(failures))


# -- stream queries: SSE in-process, the WebSocket (which needs a socket) on a real server ----

QUERY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
GLOB = st.text(alphabet="*?[]^\\-!/ .,aZ9é\U0001F600", max_size=24)
EVENT_ID = st.one_of(st.integers(min_value=-5, max_value=2**70).map(str), QUERY_TEXT)
STREAM_QUERY = st.fixed_dictionaries({}, optional={
    "patterns": st.one_of(GLOB, QUERY_TEXT, st.lists(GLOB, max_size=40).map(",".join),
                          st.integers(200, 300).map(lambda n: "a" * n)),
    "scope": st.one_of(st.sampled_from(SCOPES), QUERY_TEXT),
    "scope_id": QUERY_TEXT,
    "last_event_id": EVENT_ID,
    "snapshot": st.one_of(st.sampled_from(["0", "1", "", " 1", "2", "-1", "true"]), QUERY_TEXT),
})
# What ``requests`` sends as a header value: latin-1 text without whitespace or controls.
HEADER_TEXT = st.text(st.one_of(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                st.characters(min_codepoint=0xA1, max_codepoint=0xFF)),
                      max_size=20)
LAST_EVENT_ID_HEADER = st.one_of(st.integers(min_value=-5, max_value=2**70).map(str),
                                 HEADER_TEXT)


@pytest.fixture
def live(server: Server) -> Description:
    return http_description(server)


def check_refusal(description: Description, path: str, status: int,
                  headers: Mapping[str, str], body: bytes | None) -> None:
    """A stream that does not open is a described JSON 4xx."""
    assert_no_stack_trace(body)
    assert 400 <= status < 500, f"answered {status}: {body!r}"
    description.check(path, "GET", status, headers, body)


@given(query=STREAM_QUERY, last_event_id=st.none() | LAST_EVENT_ID_HEADER)
@example(query={"snapshot": "1"}, last_event_id=None)
@example(query={"snapshot": "yes"}, last_event_id=None)
@fuzz(40)
def test_sse_query_opens_a_stream_or_is_a_json_4xx(client: FlaskClient, description: Description,
                                                   query: dict[str, str],
                                                   last_event_id: str | None) -> None:
    """In process: the stream's first frame, or its refusal, is all there is to see."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    note(f"GET {SSE} query={query!r} headers={headers!r}")
    with client.get(SSE, query_string=query, headers=headers, buffered=False) as response:
        if response.status_code != 200:
            check_refusal(description, SSE, response.status_code, response.headers,
                          response.get_data())
            return
        description.check(SSE, "GET", 200, response.headers, None)
        assert next(parse(response.response)).comments == ("connected",)


@given(query=STREAM_QUERY, protocol=st.booleans())
@fuzz(30)
def test_websocket_query_opens_a_socket_or_is_a_json_4xx(server: Server, live: Description,
                                                         query: dict[str, str],
                                                         protocol: bool) -> None:
    url = server.url.replace("http", "ws", 1) + WS + "?" + urlencode(query)
    note(f"GET {url} protocol={protocol}")
    options = {"subprotocols": [WS_PROTOCOL]} if protocol else {}
    try:
        connection = websocket.create_connection(url, timeout=10, **options)
    except websocket.WebSocketBadStatusException as refused:
        check_refusal(live, WS, refused.status_code,
                      CaseInsensitiveDict(refused.resp_headers), refused.resp_body)
    else:
        live.check(WS, "GET", connection.getstatus(),
                   CaseInsensitiveDict(connection.getheaders()), None)
        connection.close()


HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Protocol": WS_PROTOCOL}
PROTOCOL_OFFER = st.sampled_from([WS_PROTOCOL, f"chat, {WS_PROTOCOL}", "chat", "",
                                  WS_PROTOCOL.upper()])


@given(kept=st.sets(st.sampled_from(sorted(HANDSHAKE))),
       changed=st.dictionaries(st.sampled_from(sorted(HANDSHAKE)), HEADER_TEXT, max_size=2),
       offer=st.none() | PROTOCOL_OFFER)
# Handshakes every run tries, whatever the random draw: each part missing or wrong.
@example(kept=set(HANDSHAKE) - {"Sec-WebSocket-Version"}, changed={}, offer=None)
@example(kept=set(HANDSHAKE) - {"Sec-WebSocket-Key"}, changed={}, offer=None)
@example(kept=set(HANDSHAKE), changed={"Sec-WebSocket-Version": "8"}, offer=None)
@example(kept={"Upgrade"}, changed={}, offer=None)
@example(kept=set(HANDSHAKE), changed={}, offer="chat")
@fuzz(30)
def test_websocket_handshake_is_accepted_or_a_json_4xx(server: Server, live: Description,
                                                       kept: set[str], changed: dict[str, str],
                                                       offer: str | None) -> None:
    headers = {name: HANDSHAKE[name] for name in kept} | changed
    if offer is not None:
        headers["Sec-WebSocket-Protocol"] = offer
    note(f"GET {WS} headers={headers!r}")
    with requests.get(server.url + WS, headers=headers, stream=True, timeout=10) as response:
        if response.status_code == 101:
            live.check(WS, "GET", 101, response.headers, None)
            offered = [name.strip() for name in headers.get("Sec-WebSocket-Protocol",
                                                            "").split(",")]
            assert (response.headers.get("Sec-WebSocket-Protocol")
                    == (WS_PROTOCOL if WS_PROTOCOL in offered else None))
        else:
            check_refusal(live, WS, response.status_code, response.headers,
                          response.content)


def test_a_protocol_offer_that_is_not_ascii_is_answered_as_described(
        server: Server, live: Description) -> None:
    """Header values are latin-1 on the wire; an offer outside ASCII is no protocol this
    service speaks, so the socket opens without one, or the handshake is a JSON 4xx."""
    for offer in ("\xa1", f"{WS_PROTOCOL}, caf\xe9"):
        headers = {**HANDSHAKE, "Sec-WebSocket-Protocol": offer}
        with requests.get(server.url + WS, headers=headers, stream=True,
                          timeout=10) as response:
            if response.status_code == 101:
                live.check(WS, "GET", 101, response.headers, None)
            else:
                check_refusal(live, WS, response.status_code, response.headers,
                              response.content)


# -- memory and vector bodies, in-process -----------------------------------------------------


def _encode(text: str) -> str:
    """A JSON string; lone surrogates travel as ``\\ud800`` escapes, which JSON allows."""
    return json.dumps(text)


def _object(fields: dict[str, str]) -> str:
    """A JSON object from already encoded values; names may hold anything, surrogates too."""
    return "{" + ",".join(f"{_encode(name)}:{value}" for name, value in fields.items()) + "}"


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


SURROGATE = st.characters(categories=["Cs"])
ANY_TEXT = st.text(st.one_of(st.characters(), SURROGATE), max_size=16)
HUGE_NUMBERS = ["1e999", "-1e999", "1E400", "0.1e-400", "-0", "NaN", "Infinity", "-Infinity",
                "18446744073709551616", "1.7976931348623157e308", "3.4028235677973366e38",
                "3.4028234663852886e38", "1" + "0" * 400, "-1" + "0" * 400]
NUMBER = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(300, 5000).map(lambda digits: "9" * digits),
    st.sampled_from(HUGE_NUMBERS),
)


SCALAR = st.one_of(st.sampled_from(["null", "true", "false"]), NUMBER, ANY_TEXT.map(_encode))
JSON_TEXT = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.dictionaries(ANY_TEXT, inner, max_size=4).map(_object)),
    max_leaves=16)
DEEP = st.integers(1, 120_000).flatmap(lambda depth: st.sampled_from([
    "[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))
VERSION = st.one_of(st.integers(-3, 2**64).map(str), st.integers(-3, 2**64).map(_encode),
                    st.sampled_from(['"0"', '" 1 "', '"1.0"', '"٣"', '""', "1.5", "true"]),
                    JSON_TEXT)
TTL = st.one_of(NUMBER, st.sampled_from(["0", "-1", "0.001", "3200000000", "3200000001",
                                         '"60"', "true"]), JSON_TEXT)
EMBEDDING = st.one_of(st.lists(NUMBER, min_size=1, max_size=6).map(_array),
                      st.lists(SCALAR, max_size=4).map(_array), JSON_TEXT)
TOP_K = st.one_of(NUMBER, st.sampled_from(["0", "-5", "1000", "1001", "2.0", "2.5", '"3"',
                                           "true"]), JSON_TEXT)
#: field names the routes read, with values that are near the mark or anything at all
FIELDS = {"key": ANY_TEXT.map(_encode) | JSON_TEXT, "data": JSON_TEXT | DEEP,
          "scope": st.sampled_from(SCOPES).map(_encode) | JSON_TEXT,
          "scope_id": ANY_TEXT.map(_encode) | JSON_TEXT, "if_version": VERSION,
          "ttl_seconds": TTL, "embedding": EMBEDDING, "query_embedding": EMBEDDING,
          "metadata": JSON_TEXT, "filters": JSON_TEXT, "top_k": TOP_K, "threshold": JSON_TEXT,
          "namespace": ANY_TEXT.map(_encode) | JSON_TEXT}
BODY = st.one_of(
    JSON_TEXT, DEEP, st.binary(max_size=64),
    st.dictionaries(st.sampled_from(sorted(FIELDS)) | ANY_TEXT, JSON_TEXT | DEEP,
                    max_size=5).map(_object),
    st.fixed_dictionaries({}, optional=FIELDS).map(_object))
SCOPE_HEADERS = st.fixed_dictionaries({}, optional={
    name: HEADER_TEXT for name in ("X-Workflow-ID", "X-Session-ID", "X-Actor-ID",
                                   "X-Agent-Node-ID")})
PLACE = st.fixed_dictionaries({}, optional={"scope": st.sampled_from(SCOPES),
                                            "scope_id": ANY_TEXT})
BODY_ROUTES = [("POST", "/memory/set"), ("POST", "/memory/get"), ("POST", "/memory/delete"),
               ("POST", "/memory/vector"), ("POST", "/memory/vector/set"),
               ("POST", "/memory/vector/delete"), ("DELETE", "/memory/vector/namespace"),
               ("POST", "/memory/vector/search")]


def send(client: FlaskClient, description: Description, route: str, body: str | bytes,
         headers: dict[str, str], method: str = "POST") -> tuple[int, Any]:
    """Send ``body``; the answer must be a described one, never a 500 or a stack trace."""
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    request = f"{method} {route} headers={headers!r} body={raw[:2000]!r}"
    if currently_in_test_context():
        note(request)
    response = client.open(API + route, method=method, data=raw,
                           headers={"Content-Type": "application/json", **headers})
    assert_no_stack_trace(response.get_data())
    assert response.status_code < 500, f"{method} {route} {raw[:300]!r}: {response.text}"
    return response.status_code, description.check(API + route, method, response.status_code,
                                                    response.headers, response.get_data())


#: a whole number no float holds (Python's JSON reads it as an int)
HUGE = "1" + "0" * 400


@pytest.mark.parametrize("route,body", [
    ("/memory/vector", '{"key":"k","embedding":[%s]}' % HUGE),
    ("/memory/vector/set", '{"key":"k","embedding":[1,-%s]}' % HUGE),
    ("/memory/vector/search", '{"query_embedding":[%s]}' % HUGE),
    ("/memory/vector/search", '{"query_embedding":[1],"top_k":%s}' % HUGE),
    ("/memory/set", '{"key":"k","data":1,"ttl_seconds":%s}' % HUGE),
    ("/memory/set", '{"key":"k","data":1,"if_version":%s}' % HUGE),
])
def test_numbers_no_float_holds_are_a_described_4xx(client: FlaskClient,
                                                    description: Description, route: str,
                                                    body: str) -> None:
    status, _ = send(client, description, route, body, {})
    assert status == 400


@given(route=st.sampled_from(BODY_ROUTES), body=BODY, headers=SCOPE_HEADERS)
@fuzz(200)
def test_any_body_is_answered_as_described(client: FlaskClient, description: Description,
                                           route: tuple[str, str], body: str | bytes,
                                           headers: dict[str, str]) -> None:
    method, path = route
    send(client, description, path, body, headers, method)


@given(key=ANY_TEXT, data=NUMBER | JSON_TEXT | DEEP, place=PLACE, headers=SCOPE_HEADERS,
       ttl=st.none() | st.sampled_from(["3600", "0.5e3", "86400.25", "0"]))
# Every run tries a number JSON cannot hold, a lone surrogate and a NUL (PostgreSQL text).
@example(key="k", data="1e999", place={}, headers={}, ttl=None)
@example(key="k", data="1", place={"scope": "session", "scope_id": "\ud800"}, headers={},
         ttl=None)
@example(key="k\x00", data='"\\u0000"', place={"scope": "actor", "scope_id": "\x00"}, headers={},
         ttl=None)
@fuzz(100)
def test_a_stored_value_reads_back_as_sent(client: FlaskClient, description: Description,
                                           key: str, data: str, place: dict[str, str],
                                           headers: dict[str, str], ttl: str | None) -> None:
    """Whatever ``set`` accepts, ``get`` returns unchanged and ``if_version`` with its version
    replaces; whatever it refuses is a 4xx."""
    address = {"key": _encode(key), **{name: _encode(value) for name, value in place.items()}}
    extra = {"ttl_seconds": ttl} if ttl is not None else {}
    status, record = send(client, description, "/memory/set",
                          _object({**address, "data": data, **extra}), headers)
    if status != 200:
        return
    assert (record["key"], record["data"]) == (key, json.loads(data))
    assert (record["expires_at"] is None) == (ttl is None)
    assert send(client, description, "/memory/get", _object(address), headers) == (200, record)
    status, replaced = send(client, description, "/memory/set",
                            _object({**address, "data": "null",
                                     "if_version": _encode(record["version"])}), headers)
    assert status == 200 and replaced["expires_at"] is None
    assert int(replaced["version"]) > int(record["version"])
    status, conflict = send(client, description, "/memory/delete",
                            _object({**address, "if_version": _encode(record["version"])}),
                            headers)
    assert (status, conflict["current"]) == (409, replaced)


FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-2**60, 2**60)


@given(key=ANY_TEXT, embedding=st.lists(FINITE, min_size=1, max_size=8), place=PLACE,
       headers=SCOPE_HEADERS, metadata=st.dictionaries(st.text(max_size=5),
                                                       st.integers() | st.text(max_size=5),
                                                       max_size=3))
@fuzz(60)
def test_a_stored_vector_reads_back_and_is_found(client: FlaskClient, description: Description,
                                                 key: str, embedding: list[float],
                                                 place: dict[str, str], headers: dict[str, str],
                                                 metadata: dict[str, Any]) -> None:
    """Whatever vector ``set`` accepts, ``get`` returns as float32 and a search by the same
    vector with its metadata as filters finds it."""
    address = {"key": _encode(key), **{name: _encode(value) for name, value in place.items()}}
    status, stored = send(client, description, "/memory/vector",
                          _object({**address, "embedding": json.dumps(embedding),
                                   "metadata": json.dumps(metadata)}), headers)
    if status != 200:
        return
    assert (stored["key"], stored["metadata"]) == (key, metadata)
    query = {"scope": stored["scope"], "scope_id": stored["scope_id"]}
    response = client.get(API + "/memory/vector/" + requests.utils.quote(key, safe=""),
                          query_string=query, headers=headers)
    got = description.check(API + "/memory/vector/{key}", "GET", response.status_code,
                            response.headers, response.get_data())
    assert response.status_code == 200, got
    assert np.array_equal(np.float32(got["embedding"]), np.float32(embedding))
    status, hits = send(client, description, "/memory/vector/search",
                        _object({"query_embedding": json.dumps(embedding),
                                 "filters": json.dumps(metadata), "top_k": "1000",
                                 **{name: _encode(value) for name, value in query.items()}}),
                        {})
    assert status == 200 and key in [hit["key"] for hit in hits]


#: keys a vector can be stored under, which its ``/memory/vector/{key}`` URL must reach
PATH_KEYS = ["plain", "a/b", "a//b", "trailing/", "/leading", "line\nbreak", "tab\tthere",
             "return\r", "100%", "?query#fragment", "\U0001F600", " spaced "]


@pytest.mark.parametrize("key", PATH_KEYS)
def test_a_vector_key_in_the_path_reaches_its_vector(client: FlaskClient,
                                                     description: Description,
                                                     key: str) -> None:
    status, _ = send(client, description, "/memory/vector",
                     json.dumps({"key": key, "embedding": [1, 2]}), {})
    assert status == 200
    url, path = API + "/memory/vector/" + requests.utils.quote(key, safe=""), \
        API + "/memory/vector/{key}"
    response = client.get(url)
    got = description.check(path, "GET", response.status_code, response.headers,
                            response.get_data())
    assert response.status_code == 200 and got["key"] == key, got
    response = client.delete(url)
    description.check(path, "DELETE", response.status_code, response.headers,
                      response.get_data())
    assert response.status_code == 204
    response = client.get(url)
    description.check(path, "GET", response.status_code, response.headers, response.get_data())
    assert response.status_code == 404
