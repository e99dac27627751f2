"""``/openapi.json`` stays true: it lists exactly the app's routes, it is a valid OpenAPI 3.1
document, and what a real server answers is what it describes."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import jsonschema
import pytest
import requests
import websocket
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from requests.structures import CaseInsensitiveDict

from app import create_app

from .conftest import Server
from .sse import SSEClient

API = "/api/v1"
SPEC_URI = "urn:memory-events:openapi"
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}  # added by Flask to every route, not API operations
KEY = "s3cret-key"


def strict_json(text: str) -> Any:
    """JSON as every other language reads it: ``NaN`` and ``Infinity`` are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _absolute_refs(node: Any) -> Any:
    """The document with every ``#/…`` reference made absolute, so any part of it validates
    on its own through the registry."""
    if isinstance(node, dict):
        return {name: (SPEC_URI + value if name == "$ref" and value.startswith("#")
                       else _absolute_refs(value)) for name, value in node.items()}
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    return node


class Description:
    """The served OpenAPI document, used to judge real answers."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = _absolute_refs(document)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)

    @classmethod
    def of(cls, server: Server) -> "Description":
        response = requests.get(server.url + "/openapi.json", timeout=5)
        assert response.status_code == 200, response.text
        return cls(response.json())

    def operations(self) -> set[tuple[str, str]]:
        return {(path, method.upper()) for path, item in self.document["paths"].items()
                for method in item}

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver().lookup(node["$ref"]).contents
        return node

    def answer(self, path: str, method: str, status: int) -> dict[str, Any]:
        """The described response, failing when ``status`` is not one the route may give."""
        responses = self.document["paths"][path][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {path} answered {status}, not described"
        return self._resolve(responses[str(status)])

    def validate(self, instance: Any, schema: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator(
            schema, registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(instance)

    def validate_component(self, instance: Any, name: str) -> None:
        self.validate(instance, {"$ref": f"{SPEC_URI}#/components/schemas/{name}"})

    def check(self, path: str, method: str, status: int, headers: Mapping[str, str],
              body: bytes | None) -> Any:
        """Fail unless the answer is one described for the route; return its JSON body.

        ``body`` is ``None`` for a stream, whose content is checked frame by frame instead.
        """
        described = self.answer(path, method, status)
        for name, header in described.get("headers", {}).items():
            if header.get("required"):
                assert name in headers, f"{name} missing from {method} {path} {status}"
            if name in headers:
                value: Any = headers[name]
                if header["schema"].get("type") == "integer":
                    value = int(value)
                self.validate(value, header["schema"])
        content = described.get("content")
        if not content:
            assert not body, f"{method} {path} {status} should have no body"
            return None
        media_type = headers.get("Content-Type", "").split(";")[0].strip()
        assert media_type in content, f"{media_type} is not described for {method} {path} {status}"
        if media_type != "application/json" or body is None:
            return None
        document = strict_json(body.decode())
        self.validate(document, content[media_type]["schema"])
        if status >= 400:
            assert document["code"] == status
        return document

    def call(self, server: Server, method: str, path: str, status: int, **kwargs: Any) -> Any:
        """Send a request, expect ``status``, check the answer; return its JSON body."""
        response = requests.request(method, server.url + path, timeout=5, **kwargs)
        assert response.status_code == status, response.text
        return self.check(path, method, status, response.headers, response.content)


@pytest.fixture
def description(server: Server) -> Description:
    return Description.of(server)


def test_description_is_valid_openapi(server: Server) -> None:
    validate_openapi(requests.get(server.url + "/openapi.json", timeout=5).json())


def test_every_api_route_is_described_and_every_description_is_a_route(
        server: Server, description: Description) -> None:
    app = create_app({"MEMORY_DB_URL": server.db_url})
    routes = {(rule.rule, method) for rule in app.url_map.iter_rules()
              for method in rule.methods - AUTOMATIC_METHODS}
    api_routes = {(path, method) for path, method in routes if path.startswith(API + "/")}
    described = description.operations()
    assert {op for op in described if op[0].startswith(API + "/")} == api_routes
    assert described <= routes
    assert {path for path, _ in described} >= {"/healthz", "/readyz", "/metrics", "/openapi.json"}


def test_memory_answers_are_described(server: Server, description: Description) -> None:
    call = description.call
    workflow = {"X-Workflow-ID": "wf-1", "X-Actor-ID": "agent-7"}
    record = call(server, "POST", API + "/memory/set", 200,
                  json={"key": "user.1", "data": {"name": "Ada"}}, headers=workflow)
    assert (record["scope"], record["scope_id"], record["data"]) == ("workflow", "wf-1",
                                                                     {"name": "Ada"})
    call(server, "POST", API + "/memory/set", 400, json={"key": "user.1"})
    call(server, "POST", API + "/memory/set", 400, data=b"{not json")
    call(server, "POST", API + "/memory/set", 400, json={"key": "k", "data": 1, "scope": "moon"})
    call(server, "POST", API + "/memory/get", 200, json={"key": "user.1"}, headers=workflow)
    call(server, "POST", API + "/memory/get", 404, json={"key": "user.1"})
    listed = call(server, "GET", API + "/memory/list", 200,
                  params={"scope": "workflow", "scope_id": "wf-1"})
    assert [item["key"] for item in listed] == ["user.1"]
    call(server, "GET", API + "/memory/list", 400)
    call(server, "POST", API + "/memory/delete", 204, json={"key": "user.1"}, headers=workflow)
    call(server, "POST", API + "/memory/delete", 404, json={"key": "user.1"}, headers=workflow)


def test_event_answers_and_frames_are_described(server: Server,
                                                description: Description) -> None:
    call = description.call
    history = API + "/memory/events/history"
    call(server, "POST", API + "/memory/set", 200, json={"key": "a", "data": [1, None]},
         headers={"X-Actor-ID": "agent-7"})
    call(server, "POST", API + "/memory/delete", 204, json={"key": "a"},
         headers={"X-Actor-ID": "agent-7"})
    events = call(server, "GET", history, 200, params={"limit": 10})
    assert [event["action"] for event in events] == ["set", "delete"]
    for bad in ({"limit": 0}, {"after_id": "x"}, {"since": "yesterday"},
                {"patterns": "[invalid"}, {"scope": "moon"}):
        call(server, "GET", history, 400, params=bad)

    sse = API + "/memory/events/sse"
    call(server, "GET", sse, 400, params={"patterns": "[invalid"})
    with SSEClient(server.url + sse, params={"last_event_id": "0"}) as stream:
        description.check(sse, "GET", stream.response.status_code, stream.response.headers, None)
        for frame in stream.events(2):
            description.validate_component(frame, "MemoryChange")
    with SSEClient(server.url + sse, headers={"Last-Event-ID": str(2**40)}) as stream:
        reset = stream.next_event()
        assert reset.event == "reset"
        description.validate_component(reset.json, "StreamReset")

    ws = API + "/memory/events/ws"
    call(server, "GET", ws, 400)
    ws_url = server.url.replace("http", "ws", 1) + ws
    connection = websocket.create_connection(ws_url + "?last_event_id=0", timeout=5)
    try:
        description.answer(ws, "GET", connection.getstatus())
        for _ in range(2):
            description.validate_component(json.loads(connection.recv()), "MemoryChange")
    finally:
        connection.close()
    connection = websocket.create_connection(ws_url + f"?last_event_id={2**40}", timeout=5)
    try:
        description.validate_component(json.loads(connection.recv()), "StreamReset")
    finally:
        connection.close()


def test_operations_answers_are_described(server: Server, description: Description) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        description.call(server, "GET", path, 200)


def test_limits_described_are_the_limits_enforced(server_factory: Callable[..., Server]) -> None:
    server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5",
                                 "MEMORY_MAX_KEY_LENGTH": "8", "MEMORY_MAX_BODY_BYTES": "2048",
                                 "MEMORY_MAX_VALUE_BYTES": "100", "MEMORY_MAX_STREAMS": "1",
                                 "MEMORY_CORS_ORIGINS": "http://allowed.example"})
    description = Description.of(server)
    schemas = description.document["components"]["schemas"]
    assert schemas["SetRequest"]["properties"]["key"]["maxLength"] == 8
    set_path = API + "/memory/set"
    description.call(server, "POST", set_path, 200, json={"key": "k" * 8, "data": 1})
    description.call(server, "POST", set_path, 400, json={"key": "k" * 9, "data": 1})
    description.call(server, "POST", set_path, 413, json={"key": "k", "data": "v" * 200})
    description.call(server, "POST", set_path, 413, json={"key": "k", "data": "v" * 3000})

    ws = API + "/memory/events/ws"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.url.replace("http", "ws", 1) + ws, timeout=5,
                                    origin="http://elsewhere.example")
    description.check(ws, "GET", refused.value.status_code,
                      CaseInsensitiveDict(refused.value.resp_headers), refused.value.resp_body)

    sse = API + "/memory/events/sse"
    with SSEClient(server.url + sse) as stream:
        stream.next()
        description.call(server, "GET", sse, 503)


#: a request each API operation answers with success when it carries the key
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    (API + "/memory/set", "POST"): {"json": {"key": "k", "data": 1}},
    (API + "/memory/get", "POST"): {"json": {"key": "k"}},
    (API + "/memory/delete", "POST"): {"json": {"key": "k"}},
    (API + "/memory/list", "GET"): {"params": {"scope": "global"}},
    (API + "/memory/events/history", "GET"): {},
    (API + "/memory/events/sse", "GET"): {"stream": True},
    (API + "/memory/events/ws", "GET"): {"stream": True, "headers": {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}},
}
SCHEME_CREDENTIALS: dict[str, dict[str, Any]] = {
    "ApiKeyHeader": {"headers": {"X-API-Key": KEY}},
    "Bearer": {"headers": {"Authorization": f"Bearer {KEY}"}},
    "ApiKeyQuery": {"params": {"api_key": KEY}},
}


def _with(example: dict[str, Any], credentials: dict[str, Any]) -> dict[str, Any]:
    merged = dict(example)
    for part, values in credentials.items():
        merged[part] = {**example.get(part, {}), **values}
    return merged


def test_auth_is_described_and_each_described_way_is_accepted(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory(env={"MEMORY_API_KEY": KEY})
    description = Description.of(server)
    for path, method in sorted(description.operations()):
        operation = description.document["paths"][path][method.lower()]
        if not path.startswith(API + "/"):
            assert not operation.get("security")
            description.call(server, method, path, 200)
            continue
        example = EXAMPLES[path, method]
        refused = requests.request(method, server.url + path, timeout=5, **example)
        assert refused.status_code == 401, f"{method} {path}: {refused.text}"
        description.check(path, method, 401, refused.headers, refused.content)
        assert operation["security"], f"{method} {path} does not describe its auth"
        for requirement in operation["security"]:
            (scheme,) = requirement
            with requests.request(method, server.url + path, timeout=5,
                                  **_with(example, SCHEME_CREDENTIALS[scheme])) as accepted:
                assert accepted.status_code != 401, f"{scheme} refused on {method} {path}"
                description.check(path, method, accepted.status_code, accepted.headers, None)


def test_without_a_key_no_operation_asks_for_one(description: Description) -> None:
    assert all(not operation.get("security") for item in description.document["paths"].values()
               for operation in item.values())
