"""Every limit is a setting, and going past it is a clear JSON 4xx (or 503), never a hang."""
from __future__ import annotations

import json
from typing import Iterator

import pytest
import requests

from .conftest import Server, wait_until
from .sse import SSEClient
from .test_security import Answer, serving, ws_answer

API = "/api/v1"
MAX_BODY = 2048
MAX_KEY = 16
MAX_VALUE = 64
MAX_PATTERNS = 3
MAX_PATTERN = 8


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory, {
        "MEMORY_MAX_BODY_BYTES": str(MAX_BODY), "MEMORY_MAX_KEY_LENGTH": str(MAX_KEY),
        "MEMORY_MAX_VALUE_BYTES": str(MAX_VALUE), "MEMORY_MAX_PATTERNS": str(MAX_PATTERNS),
        "MEMORY_MAX_PATTERN_LENGTH": str(MAX_PATTERN)})


def post(server: Server, path: str, body: object) -> Answer:
    return Answer.of(requests.post(server.url + API + path, json=body, timeout=10))


def refused(answer: Answer, status: int, error: str) -> None:
    assert answer.status == status, answer
    assert answer.error()["error"] == error


def written(server: Server, key: str) -> bool:
    """Whether ``key`` has a row or any event: a refused write must leave neither."""
    row = post(server, "/memory/get", {"key": key}).status == 200
    log = requests.get(server.url + API + "/memory/events/history", timeout=10).json()
    return row or any(event["key"] == key for event in log)


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


def body_of_size(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes, with a key and value under their limits."""
    head = b'{"key":"body","data":"x","pad":"'
    return head + b"p" * (size - len(head) - 2) + b'"}'


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_size(limited, chunked):
    def send(body: bytes) -> Answer:
        data = iter([body[:100], body[100:]]) if chunked else body
        return Answer.of(requests.post(limited.url + API + "/memory/set", data=data, timeout=10,
                                       headers={"Content-Type": "application/json"}))
    assert send(body_of_size(MAX_BODY)).status == 200
    refused(send(body_of_size(MAX_BODY + 1)), 413, "request_entity_too_large")


# -- patterns and history limit --------------------------------------------------------------
def call_events(server: Server, route: str, params: dict) -> Answer:
    """Call ``/memory/events/`` ``sse``, ``ws`` or ``history``; a stream is closed at once."""
    url = server.url + API + "/memory/events/" + route
    if route == "ws":
        return ws_answer(url, params=params)
    with requests.get(url, params=params, stream=True, timeout=10) as response:
        return Answer.of(response, b"" if route != "history" and response.ok else None)


WORKS = {"sse": 200, "ws": 101, "history": 200}


@pytest.mark.parametrize("route", WORKS)
def test_number_of_patterns(limited, route):
    enough = ",".join(f"p{n}.*" for n in range(MAX_PATTERNS))
    assert call_events(limited, route, {"patterns": enough}).status == WORKS[route]
    assert call_events(limited, route, {"patterns": enough + ", ,,"}).status == WORKS[route]
    refused(call_events(limited, route, {"patterns": enough + ",one.more"}),
            400, "too_many_patterns")


@pytest.mark.parametrize("route", WORKS)
def test_pattern_length(limited, route):
    assert call_events(limited, route, {"patterns": "a" * MAX_PATTERN}).status == WORKS[route]
    refused(call_events(limited, route, {"patterns": "b" * (MAX_PATTERN + 1)}),
            400, "invalid_pattern")


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_history_limit_in_range(limited, limit):
    assert call_events(limited, "history", {"limit": limit}).status == 200


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "ten", "1.5", ""])
def test_history_limit_out_of_range(limited, limit):
    refused(call_events(limited, "history", {"limit": limit}), 400, "invalid_limit")


@pytest.mark.parametrize("route", ["history", "sse"])
def test_a_request_line_past_the_servers_limit_gets_414(limited, route):
    """gunicorn's ``limit_request_line`` (4094 bytes) answers before the app: a clear 414."""
    response = requests.get(limited.url + API + f"/memory/events/{route}",
                            params={"patterns": "a" * 4100}, timeout=10)
    assert response.status_code == 414
    assert "Traceback" not in response.text


# -- concurrent streams ----------------------------------------------------------------------
def try_sse(server: Server) -> SSEClient | None:
    """A stream when one is granted; a refusal must be the documented 503, not a hang."""
    stream = SSEClient(server.url + API + "/memory/events/sse")
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
    refused(ws_answer(server.url + API + "/memory/events/ws"), 503, "too_many_streams")
    assert requests.post(server.url + API + "/memory/set", json={"key": "k", "data": 1},
                         timeout=10).status_code == 200, "only streams are limited"

    granted.pop().close()
    granted.append(wait_until(lambda: try_sse(server), message="a stream to be granted again"))
    assert granted[-1].next().comments == ("connected",)
    assert try_sse(server) is None
    for stream in granted:
        stream.close()
