"""Every limit is a setting, and going past it is a clear JSON 4xx (or 503), never a hang.

In process wherever the app alone answers. On a real server: gunicorn's request-line limit, a
chunked body as gunicorn hands it over, WebSocket upgrades that are accepted, and the number of
concurrent streams.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator

import pytest
import requests
from flask.testing import FlaskClient

from .conftest import Server, wait_until
from .api import SSEClient
from .test_memory_api import call, history
from .test_security import WS_UPGRADE, Answer, refused, serving, ws_answer

API = "/api/v1"
EVENTS = API + "/memory/events/"
MAX_BODY = 2048
MAX_KEY = 16
MAX_VALUE = 64
MAX_PATTERNS = 3
MAX_PATTERN = 8
LIMITS = {"MEMORY_MAX_BODY_BYTES": str(MAX_BODY), "MEMORY_MAX_KEY_LENGTH": str(MAX_KEY),
          "MEMORY_MAX_VALUE_BYTES": str(MAX_VALUE), "MEMORY_MAX_PATTERNS": str(MAX_PATTERNS),
          "MEMORY_MAX_PATTERN_LENGTH": str(MAX_PATTERN)}


@pytest.fixture
def limited(app_factory) -> FlaskClient:
    return app_factory(**LIMITS).test_client()


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same limits under gunicorn, for what only a real server shows."""
    yield from serving(tmp_path_factory, LIMITS)


def post(client: FlaskClient, path: str, body: object) -> Answer:
    return Answer.of(client.post(API + path, json=body))


def written(target: FlaskClient | Server, key: str) -> bool:
    """Whether ``key`` has a row or any event: a refused write must leave neither. (A key
    past the limit cannot be read back either, so a refused ``get`` counts as no row.)"""
    return (call(target, "get", {"key": key}).status_code == 200
            or any(event["key"] == key for event in history(target, limit=1000)))


def value_of_size(size: int) -> str:
    """A string whose compact JSON (with its quotes) is ``size`` bytes."""
    return "v" * (size - 2)


# -- keys and values -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/memory/set", "/memory/get", "/memory/delete"])
def test_key_length(limited, path):
    at_limit, over = "k" * MAX_KEY, "o" * (MAX_KEY + 1)
    assert post(limited, path, {"key": at_limit, "data": 1}).status in (200, 204, 404)
    refused(post(limited, path, {"key": over, "data": 1}), 400, "key_too_long")
    assert not written(limited, over)


def test_key_length_counts_characters(limited):
    assert post(limited, "/memory/set", {"key": "é" * MAX_KEY, "data": 1}).status == 200


def test_value_size(limited):
    assert post(limited, "/memory/set", {"key": "fits", "data": value_of_size(MAX_VALUE)}
                ).status == 200
    refused(post(limited, "/memory/set", {"key": "too.big", "data": value_of_size(MAX_VALUE + 1)}),
            413, "value_too_large")
    assert not written(limited, "too.big")


def test_value_size_is_measured_as_stored_json(limited):
    """Non-ASCII text is stored escaped (``\\u00e9``), six bytes a character."""
    data = "é" * (MAX_VALUE // 6)
    assert len(json.dumps(data)) <= MAX_VALUE < len(json.dumps(data + "é"))
    assert post(limited, "/memory/set", {"key": "accents", "data": data}).status == 200
    refused(post(limited, "/memory/set", {"key": "accents.2", "data": data + "é"}),
            413, "value_too_large")


def body_of_size(size: int, key: str = "body") -> bytes:
    """A JSON object of exactly ``size`` bytes, with a key and value under their limits."""
    head = b'{"key":"' + key.encode() + b'","data":"x","pad":"'
    return head + b"p" * (size - len(head) - 2) + b'"}'


def test_body_size(limited):
    def send(body: bytes) -> Answer:
        return Answer.of(limited.post(API + "/memory/set", data=body,
                                      content_type="application/json"))
    assert send(body_of_size(MAX_BODY)).status == 200
    refused(send(body_of_size(MAX_BODY + 1, "over")), 413, "request_entity_too_large")
    assert not written(limited, "over")


def test_chunked_body_size(limited_server):
    """Without a Content-Length the limit holds as gunicorn hands the body over."""
    def send(body: bytes) -> Answer:
        chunks = iter([body[:100], body[100:]])  # an iterator is sent chunked
        response = requests.post(limited_server.url + API + "/memory/set", data=chunks,
                                 timeout=10, headers={"Content-Type": "application/json"})
        assert "Content-Length" not in response.request.headers
        return Answer.of(response)
    assert send(body_of_size(MAX_BODY, "chunked")).status == 200
    refused(send(body_of_size(MAX_BODY + 1, "chunked.over")), 413, "request_entity_too_large")
    assert not written(limited_server, "chunked.over")


@pytest.mark.parametrize("ttl,error", [
    ("3200000000", None), ("3200000000.5", "invalid_ttl_seconds"),
    ("1e300", "invalid_ttl_seconds"), ("0", "invalid_ttl_seconds"),
    ("1e999", "invalid_json"), ("-1e999", "invalid_json")])
def test_ttl_seconds_is_at_most_about_a_century(limited, ttl, error):
    """3.2e9 seconds at most. A number no double holds is no JSON other clients can read, so
    it is ``invalid_json`` in this field as in any other: the description says both."""
    key = f"ttl.{ttl}"
    answer = Answer.of(limited.post(API + "/memory/set", content_type="application/json",
                                    data=f'{{"key":"{key}","data":1,"ttl_seconds":{ttl}}}'))
    if error is None:
        assert answer.status == 200
        return
    refused(answer, 400, error)
    assert not written(limited, key)
    described = limited.get("/openapi.json").json["components"]["schemas"]["SetRequest"][
        "properties"]["ttl_seconds"]["description"]
    assert "At most 3,200,000,000" in described and f"`{error}`" in described

# -- patterns and history limit --------------------------------------------------------------
#: an events route called with a query: what it answers, and what it answers when it works
EventsCall = tuple[Callable[[dict], Answer], int]


def open_in_process(client: FlaskClient, route: str, params: dict) -> Answer:
    """``sse`` or ``history`` through the test client; a stream is closed at once."""
    with client.get(EVENTS + route, query_string=params) as response:
        return Answer.of(response, b"" if route == "sse" and response.status_code == 200
                         else None)


@pytest.fixture(params=["sse", "history", "ws"])
def events(request: pytest.FixtureRequest, limited: FlaskClient) -> EventsCall:
    """``sse`` and ``history`` in process; ``ws`` on the real server, as an accepted WebSocket
    needs a socket."""
    route = request.param
    if route == "ws":
        server: Server = request.getfixturevalue("limited_server")
        return (lambda params: ws_answer(server.url + EVENTS + "ws", params=params)), 101
    return (lambda params: open_in_process(limited, route, params)), 200


def test_number_of_patterns(events):
    request_with, works = events
    enough = ",".join(f"p{n}.*" for n in range(MAX_PATTERNS))
    assert request_with({"patterns": enough}).status == works
    assert request_with({"patterns": enough + ", ,,"}).status == works
    refused(request_with({"patterns": enough + ",one.more"}), 400, "too_many_patterns")


def test_pattern_length(events):
    request_with, works = events
    assert request_with({"patterns": "a" * MAX_PATTERN}).status == works
    refused(request_with({"patterns": "b" * (MAX_PATTERN + 1)}), 400, "invalid_pattern")


def test_a_websocket_handshake_is_refused_in_process_before_it_happens(limited):
    """The same refusals come before the upgrade in process too, as plain JSON 400s."""
    for params, error in (({"patterns": "b" * (MAX_PATTERN + 1)}, "invalid_pattern"),
                          ({"patterns": "a,b,c,d"}, "too_many_patterns")):
        refused(Answer.of(limited.get(EVENTS + "ws", query_string=params, headers=WS_UPGRADE)),
                400, error)


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_history_limit_in_range(limited, limit):
    assert open_in_process(limited, "history", {"limit": limit}).status == 200


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "ten", "1.5"])
def test_history_limit_out_of_range(limited, limit):
    refused(open_in_process(limited, "history", {"limit": limit}), 400, "invalid_limit")


def test_a_blank_history_limit_means_the_default(limited):
    """``?limit=`` is "not given", as every other blank query value is (the OpenAPI schema
    says so): the newest 100 events."""
    for n in range(101):
        post(limited, "/memory/set", {"key": f"k{n}", "data": n})
    newest = history(limited)
    assert len(newest) == 100 and newest[0]["key"] == "k1"
    assert history(limited, limit="") == newest


@pytest.mark.parametrize("route", ["history", "sse"])
def test_a_request_line_past_the_servers_limit_gets_414(limited_server, route):
    """gunicorn's ``limit_request_line`` (4094 bytes) answers before the app: a clear 414."""
    response = requests.get(limited_server.url + EVENTS + route,
                            params={"patterns": "a" * 4100}, timeout=10)
    assert response.status_code == 414
    assert "Traceback" not in response.text


# -- concurrent streams ----------------------------------------------------------------------
def try_sse(server: Server) -> SSEClient | None:
    """A stream when one is granted; a refusal must be the documented 503, not a hang."""
    stream = SSEClient(server.url + EVENTS + "sse")
    if stream.response.status_code == 200:
        return stream
    answer = Answer.of(stream.response)
    stream.close()
    refused(answer, 503, "too_many_streams")
    assert int(answer.headers["retry-after"]) > 0
    return None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_streams_beyond_the_limit_get_503_and_retry_after(server_factory):
    """Each refusal arrives within the client's timeout: a stream over the limit is answered,
    not left waiting, and the limit frees up as soon as a stream is gone."""
    server = server_factory(env={"MEMORY_MAX_STREAMS": "2", "MEMORY_HEARTBEAT_SECONDS": "0.2"})
    granted = [try_sse(server), try_sse(server)]
    assert None not in granted

    assert try_sse(server) is None
    refused(ws_answer(server.url + EVENTS + "ws"), 503, "too_many_streams")
    assert requests.post(server.url + API + "/memory/set", json={"key": "k", "data": 1},
                         timeout=10).status_code == 200, "only streams are limited"

    granted.pop().close()
    granted.append(wait_until(lambda: try_sse(server), message="a stream to be granted again"))
    assert granted[-1].next().comments == ("connected",)
    assert try_sse(server) is None
    for stream in granted:
        stream.close()
