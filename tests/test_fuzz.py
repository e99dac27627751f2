"""Hostile input against a real server: whatever arrives, the answer is one ``/openapi.json``
describes, never a 500 and never a stack trace.

schemathesis derives requests for every route from the description itself; the two stream
routes would hold a generic client forever, so their query validation, the WebSocket handshake
and the memory API's JSON bodies get their own ``hypothesis`` strategies. Example counts are
bounded so the whole module stays well under a minute.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
import websocket
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               negative_data_rejection,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from app.wire import SCOPES

from .conftest import Server
from .test_openapi import API, Description

STREAM_ROUTES = r"/memory/events/(sse|ws)$"
SSE = API + "/memory/events/sse"
WS = API + "/memory/events/ws"
# A Python traceback, raw or inside a JSON string (quotes escaped).
STACK_TRACE = re.compile(r'Traceback \(most recent call last\)|File \\?"[^"\\]+\\?", line \d+')


def fuzz(examples: int) -> settings:
    """One server serves every example; the database is off so runs leave no files behind."""
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def assert_no_stack_trace(body: bytes | str | None) -> None:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body or ""
    assert not STACK_TRACE.search(text), f"stack trace in the answer: {text[:500]}"


@pytest.fixture
def description(server: Server) -> Description:
    return Description.of(server)


# -- every route but the streams, from the description ----------------------------------------

def no_stack_trace(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                   case: schemathesis.Case) -> None:
    assert_no_stack_trace(response.content)


# Answers as described, and nothing the description rules out is accepted.
CHECKS = [not_a_server_error, no_stack_trace, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


#: gunicorn's ``limit_request_line``: a longer request line gets its 414 before the app sees it
#: (``test_limits`` checks that answer)
REQUEST_LINE_LIMIT = 4094


def fits_the_request_line(case: schemathesis.Case) -> bool:
    request = case.as_transport_kwargs(base_url="http://127.0.0.1")
    prepared = requests.Request(request["method"], request["url"],
                                params=request.get("params")).prepare()
    return len(f"{prepared.method} {prepared.path_url} HTTP/1.1") <= REQUEST_LINE_LIMIT


def described_routes(server: Server) -> schemathesis.BaseSchema:
    """The description the server serves, minus the streams, which never end by themselves."""
    return schemathesis.openapi.from_url(server.url + "/openapi.json").exclude(
        path_regex=STREAM_ROUTES)


def test_boundary_requests_are_answered_as_described(server: Server) -> None:
    """schemathesis' coverage cases: each limit, each enum, each missing or mistyped part."""
    schema = described_routes(server)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for case in schema.iter_coverage_cases(
                operation, generation_modes=list(GenerationMode),
                generation_config=schema.config.generation_for(operation=operation)):
            if not fits_the_request_line(case):
                continue
            try:
                case.call_and_validate(checks=CHECKS)
            except schemathesis.errors.FailureGroup as failure:
                failures.append(str(failure))
    if failures:
        pytest.fail("\n".join(failures))


def test_random_requests_are_answered_as_described(server: Server) -> None:
    """Requests that fit the description and requests that break it, across all routes."""
    schema = described_routes(server)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE),
                      schema.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @fuzz(200)
    def answers_as_described(case: schemathesis.Case) -> None:
        assume(fits_the_request_line(case))
        case.call_and_validate(checks=CHECKS)

    answers_as_described()


# -- stream query validation ------------------------------------------------------------------

QUERY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
GLOB = st.text(alphabet="*?[]^\\-!/ .,aZ9é\U0001F600", max_size=24)
EVENT_ID = st.one_of(st.integers(min_value=-5, max_value=2**70).map(str), QUERY_TEXT)
STREAM_QUERY = st.fixed_dictionaries({}, optional={
    "patterns": st.one_of(GLOB, QUERY_TEXT, st.lists(GLOB, max_size=40).map(",".join),
                          st.integers(200, 300).map(lambda n: "a" * n)),
    "scope": st.one_of(st.sampled_from(SCOPES), QUERY_TEXT),
    "scope_id": QUERY_TEXT,
    "last_event_id": EVENT_ID,
})
# What ``requests`` sends as a header value: latin-1 text without whitespace or controls.
HEADER_TEXT = st.text(st.one_of(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                st.characters(min_codepoint=0xA1, max_codepoint=0xFF)),
                      max_size=20)
LAST_EVENT_ID_HEADER = st.one_of(st.integers(min_value=-5, max_value=2**70).map(str),
                                 HEADER_TEXT)


def check_refusal(description: Description, path: str, status: int,
                  headers: Mapping[str, str], body: bytes | None) -> None:
    """A stream that does not open is a described JSON 4xx."""
    assert_no_stack_trace(body)
    assert 400 <= status < 500, f"answered {status}: {body!r}"
    description.check(path, "GET", status, headers, body)


@given(query=STREAM_QUERY, last_event_id=st.none() | LAST_EVENT_ID_HEADER)
@fuzz(40)
def test_sse_query_opens_a_stream_or_is_a_json_4xx(server: Server, description: Description,
                                                   query: dict[str, str],
                                                   last_event_id: str | None) -> None:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    note(f"GET {SSE} query={query!r} headers={headers!r}")
    with requests.get(server.url + SSE, params=query, headers=headers, stream=True,
                      timeout=10) as response:
        if response.status_code != 200:
            check_refusal(description, SSE, response.status_code, response.headers,
                          response.content)
            return
        description.check(SSE, "GET", 200, response.headers, None)
        assert next(response.iter_lines()) == b": connected"


@given(query=STREAM_QUERY)
@fuzz(30)
def test_websocket_query_opens_a_socket_or_is_a_json_4xx(server: Server,
                                                         description: Description,
                                                         query: dict[str, str]) -> None:
    url = server.url.replace("http", "ws", 1) + WS + "?" + urlencode(query)
    note(f"GET {url}")
    try:
        connection = websocket.create_connection(url, timeout=10)
    except websocket.WebSocketBadStatusException as refused:
        check_refusal(description, WS, refused.status_code,
                      CaseInsensitiveDict(refused.resp_headers), refused.resp_body)
    else:
        description.answer(WS, "GET", connection.getstatus())
        connection.close()


HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


@given(kept=st.sets(st.sampled_from(sorted(HANDSHAKE))),
       changed=st.dictionaries(st.sampled_from(sorted(HANDSHAKE)), HEADER_TEXT, max_size=2))
# Handshakes every run tries, whatever the random draw: each part missing or wrong.
@example(kept=set(HANDSHAKE) - {"Sec-WebSocket-Version"}, changed={})
@example(kept=set(HANDSHAKE) - {"Sec-WebSocket-Key"}, changed={})
@example(kept=set(HANDSHAKE), changed={"Sec-WebSocket-Version": "8"})
@example(kept={"Upgrade"}, changed={})
@fuzz(30)
def test_websocket_handshake_is_accepted_or_a_json_4xx(server: Server, description: Description,
                                                       kept: set[str],
                                                       changed: dict[str, str]) -> None:
    headers = {name: HANDSHAKE[name] for name in kept} | changed
    note(f"GET {WS} headers={headers!r}")
    with requests.get(server.url + WS, headers=headers, stream=True, timeout=10) as response:
        if response.status_code == 101:
            description.answer(WS, "GET", 101)
        else:
            check_refusal(description, WS, response.status_code, response.headers,
                          response.content)


# -- memory API bodies ------------------------------------------------------------------------


def _encode(text: str) -> str:
    """A JSON string; lone surrogates travel as ``\\ud800`` escapes, which JSON allows."""
    return json.dumps(text)


def _object(fields: dict[str, str]) -> str:
    """A JSON object from already encoded values; names may hold anything, surrogates too."""
    return "{" + ",".join(f"{_encode(name)}:{value}" for name, value in fields.items()) + "}"


SURROGATE = st.characters(categories=["Cs"])
ANY_TEXT = st.text(st.one_of(st.characters(), SURROGATE), max_size=16)
NUMBER = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(300, 5000).map(lambda digits: "9" * digits),
    st.sampled_from(["1e999", "-1e999", "1E400", "0.1e-400", "-0", "NaN", "Infinity",
                     "-Infinity", "18446744073709551616", "1.7976931348623157e308"]),
)


SCALAR = st.one_of(st.sampled_from(["null", "true", "false"]), NUMBER, ANY_TEXT.map(_encode))
JSON_TEXT = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(ANY_TEXT, inner, max_size=4).map(_object)),
    max_leaves=16)
DEEP = st.integers(1, 120_000).flatmap(lambda depth: st.sampled_from([
    "[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))


BODY = st.one_of(JSON_TEXT, DEEP, st.binary(max_size=64),
                 st.dictionaries(st.sampled_from(["key", "data", "scope", "scope_id"]) | ANY_TEXT,
                                 JSON_TEXT | DEEP, max_size=5).map(_object))
SCOPE_HEADERS = st.fixed_dictionaries({}, optional={
    name: HEADER_TEXT for name in ("X-Workflow-ID", "X-Session-ID", "X-Actor-ID")})
PLACE = st.fixed_dictionaries({}, optional={"scope": st.sampled_from(SCOPES),
                                            "scope_id": ANY_TEXT})


def post(server: Server, description: Description, route: str, body: str | bytes,
         headers: dict[str, str]) -> tuple[int, Any]:
    """Send ``body``; the answer must be a described one, never a 500 or a stack trace."""
    raw = body if isinstance(body, bytes) else body.encode()
    note(f"POST {route} headers={headers!r} body={raw[:2000]!r}")
    response = requests.post(server.url + API + route, data=raw,
                             headers={"Content-Type": "application/json", **headers}, timeout=10)
    assert_no_stack_trace(response.content)
    assert response.status_code < 500, f"{route} {raw[:300]!r}: {response.text}"
    return response.status_code, description.check(API + route, "POST", response.status_code,
                                                    response.headers, response.content)


@given(route=st.sampled_from(["/memory/set", "/memory/get", "/memory/delete"]), body=BODY,
       headers=SCOPE_HEADERS)
@fuzz(100)
def test_any_body_is_answered_as_described(server: Server, description: Description,
                                           route: str, body: str | bytes,
                                           headers: dict[str, str]) -> None:
    post(server, description, route, body, headers)


@given(key=ANY_TEXT, data=NUMBER | JSON_TEXT | DEEP, place=PLACE, headers=SCOPE_HEADERS)
# Every run tries a number JSON cannot hold, a lone surrogate and a NUL (PostgreSQL text).
@example(key="k", data="1e999", place={}, headers={})
@example(key="k", data="1", place={"scope": "session", "scope_id": "\ud800"}, headers={})
@example(key="k\x00", data='"\\u0000"', place={"scope": "actor", "scope_id": "\x00"}, headers={})
@fuzz(100)
def test_a_stored_value_reads_back_as_sent(server: Server, description: Description, key: str,
                                           data: str, place: dict[str, str],
                                           headers: dict[str, str]) -> None:
    """Whatever ``set`` accepts, ``get`` returns unchanged; whatever it refuses is a 4xx."""
    address = {"key": _encode(key), **{name: _encode(value) for name, value in place.items()}}
    status, record = post(server, description, "/memory/set", _object({**address, "data": data}),
                          headers)
    if status != 200:
        return
    assert (record["key"], record["data"]) == (key, json.loads(data))
    assert post(server, description, "/memory/get", _object(address), headers) == (200, record)
