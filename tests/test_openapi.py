"""``/openapi.json`` stays true: it is a valid OpenAPI 3.1 document, it lists exactly the app's
routes, what the app answers is what it describes (every error code included), the limits it
states are the limits enforced, and it describes the auth.

Everything but the stream frames runs in-process on the ``client``/``app_factory`` test
clients; the SSE and WebSocket frames need a real server.
"""
from __future__ import annotations

import json
import math
import re
import signal
import struct
from contextlib import closing
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest
import requests
import websocket
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from requests.structures import CaseInsensitiveDict
from websocket import ABNF

from app.store import StoreUnavailable
from app.web.context import EXTENSION
from app.wire import MAX_ID, WS_PROTOCOL

from .conftest import Server, wait_until
from .api import SSEClient

API = "/api/v1"
SPEC_URI = "urn:memory-events:openapi"
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}  # added by Flask to every route, not API operations
KEY = "s3cret-key"
OWN_ORIGIN = "http://localhost"  # the test client's host
FOREIGN_ORIGIN = "http://elsewhere.example"
#: the codes a described error answer names: backquoted snake_case words
NAMED_CODE = re.compile(r"`([a-z][a-z0-9_]*)`")
#: Flask's ``<converter:name>`` is OpenAPI's ``{name}``
FLASK_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
#: headers of the service's own that an answer may carry only where they are described
ANSWER_HEADERS = ("X-Last-Event-ID", "Link", "Retry-After", "WWW-Authenticate",
                  "Sec-WebSocket-Protocol", "X-Accel-Buffering")
HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


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
    """The served OpenAPI document, used to judge answers (in-process or from a server)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.raw = document
        self.document = _absolute_refs(document)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)

    @classmethod
    def of(cls, client: FlaskClient) -> "Description":
        response = client.get("/openapi.json")
        assert response.status_code == 200, response.text
        return cls(response.json)

    def operations(self) -> set[tuple[str, str]]:
        return {(path, method.upper()) for path, item in self.document["paths"].items()
                for method in item}

    def operation(self, path: str, method: str) -> dict[str, Any]:
        return self.document["paths"][path][method.lower()]

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver().lookup(node["$ref"]).contents
        return node

    def schema(self, name: str) -> dict[str, Any]:
        return self.document["components"]["schemas"][name]

    def answer(self, path: str, method: str, status: int) -> dict[str, Any]:
        """The described response, failing when ``status`` is not one the route may give."""
        responses = self.operation(path, method)["responses"]
        assert str(status) in responses, f"{method} {path} answered {status}, not described"
        return self.resolve(responses[str(status)])

    def validate(self, instance: Any, schema: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator(
            schema, registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(instance)

    def validate_component(self, instance: Any, name: str) -> None:
        schema = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
        self.validate(instance, schema)
        self.assert_fields_described(instance, schema)

    def _branches(self, instance: Any, schema: dict[str, Any]) -> list[dict[str, Any]]:
        """The schemas that together describe ``instance``: ``schema`` through its ``$ref``
        and ``allOf``, and the ``anyOf``/``oneOf`` alternatives ``instance`` matches."""
        schema = self.resolve(schema)
        found = [schema]
        for part in schema.get("allOf", []):
            found += self._branches(instance, part)
        for part in schema.get("anyOf", []) + schema.get("oneOf", []):
            if jsonschema.Draft202012Validator(part, registry=self.registry).is_valid(instance):
                found += self._branches(instance, part)
        return found

    def assert_fields_described(self, instance: Any, schema: dict[str, Any],
                                where: str = "") -> None:
        """Every field of an answer is one its schema names, at any depth (an object schema
        without ``properties`` holds any JSON object)."""
        branches = self._branches(instance, schema)
        if isinstance(instance, dict):
            properties: dict[str, list[dict[str, Any]]] = {}
            for branch in branches:
                for name, sub in branch.get("properties", {}).items():
                    properties.setdefault(name, []).append(sub)
            if properties:
                extra = set(instance) - set(properties)
                assert not extra, f"undescribed fields {sorted(extra)} at {where or '/'}"
            for name, value in instance.items():
                for sub in properties.get(name, []):
                    self.assert_fields_described(value, sub, f"{where}/{name}")
        elif isinstance(instance, list):
            for branch in branches:
                if "items" in branch:
                    for index, item in enumerate(instance):
                        self.assert_fields_described(item, branch["items"], f"{where}/{index}")

    def assert_accepted_request_described(self, path: str, method: str,
                                          query: Mapping[str, Any], body: Any) -> None:
        """A request the service accepted is one its description allows: its JSON body fits
        the request schema, and each query value its parameter (as text, or as the number
        the text spells)."""
        operation = self.operation(path, method)
        if body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            self.validate(body, schema)
        parameters = {p["name"]: p for p in map(self.resolve, operation.get("parameters", []))
                      if p["in"] == "query"}
        for name, value in query.items():
            if name not in parameters:
                continue  # a security scheme's
            schema = parameters[name]["schema"]
            validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
            text = str(value)
            number = int(text) if re.fullmatch(r"-?[0-9]+", text) else None
            assert validator.is_valid(text) or (number is not None
                                                and validator.is_valid(number)), (
                f"{method} {path} accepted {name}={text!r}, which its description rules out")

    def assert_inputs_described(self, path: str, method: str, query: Mapping[str, Any],
                                headers: Mapping[str, str]) -> None:
        """Every query value and service header a request sends is a described parameter
        (or the key of a described security scheme)."""
        operation = self.operation(path, method)
        parameters = [self.resolve(p) for p in operation.get("parameters", [])]
        schemes = self.document["components"]["securitySchemes"]
        ways = {name for requirement in operation.get("security", []) for name in requirement}
        names = {(p["in"], p["name"].lower()) for p in parameters}
        names |= {(schemes[w]["in"], schemes[w]["name"].lower()) for w in ways
                  if schemes[w]["type"] == "apiKey"}
        for name in query:
            assert ("query", name.lower()) in names, f"{method} {path}: `{name}` not described"
        for name in headers:
            if name.lower() in ("content-type", "authorization"):  # the body's, the bearer's
                continue
            if name.lower() == "x-api-key" and not ways:
                continue  # a key the server does not ask for: ignored
            assert ("header", name.lower()) in names, f"{method} {path}: {name} not described"

    def check(self, path: str, method: str, status: int, headers: Mapping[str, str],
              body: bytes | None) -> Any:
        """Fail unless the answer is one described for the route; return its JSON body.

        ``body`` is ``None`` for a stream, whose content is checked frame by frame instead.
        An error's ``error`` code must be one its description names.
        """
        described = self.answer(path, method, status)
        for name in ANSWER_HEADERS:
            assert name not in headers or name in described.get("headers", {}), (
                f"{method} {path} {status} sends {name}, which is not described")
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
        self.assert_fields_described(document, content[media_type]["schema"])
        if status >= 400:
            assert document["code"] == status
            assert document["details"] == document["message"]
            named = set(NAMED_CODE.findall(described["description"]))
            assert document["error"] in named, (
                f"{method} {path} {status} answered `{document['error']}`, which its "
                f"description does not name (it names {sorted(named)})")
        return document

    def call(self, client: FlaskClient, method: str, path: str, status: int,
             url: str | None = None, **kwargs: Any) -> Any:
        """Send a request to the operation ``path`` (at ``url`` when its path has parameters),
        expect ``status``, check the answer; return its JSON body."""
        self.assert_inputs_described(path, method, kwargs.get("query_string") or {},
                                     kwargs.get("headers") or {})
        response = client.open(url or path, method=method, **kwargs)
        assert response.status_code == status, f"{method} {url or path}: {response.text}"
        if status < 400:
            query = kwargs.get("query_string") or {}
            self.assert_accepted_request_described(
                path, method, query if isinstance(query, Mapping) else
                dict(parse_qsl(query, keep_blank_values=True)), kwargs.get("json"))
        return self.check(path, method, status, response.headers, response.get_data())


@pytest.fixture
def description(client: FlaskClient) -> Description:
    return Description.of(client)


def test_description_is_valid_openapi(app_factory: Callable[..., Flask]) -> None:
    for config in ({}, {"MEMORY_API_KEY": KEY}, {"MEMORY_MAX_KEY_LENGTH": "8"}):
        validate_openapi(Description.of(app_factory(**config).test_client()).raw)


def described_path(rule: str) -> str:
    return FLASK_PARAMETER.sub(r"{\1}", rule)


def test_every_api_route_is_described_and_every_description_is_a_route(
        app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    description = Description.of(app.test_client())
    routes = {(described_path(rule.rule), method) for rule in app.url_map.iter_rules()
              for method in rule.methods - AUTOMATIC_METHODS}
    api_routes = {(path, method) for path, method in routes if path.startswith(API + "/")}
    described = description.operations()
    assert {op for op in described if op[0].startswith(API + "/")} == api_routes
    assert described <= routes
    assert {path for path, _ in described} >= {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    for path, method in described:  # a path parameter is described as one
        for name in re.findall(r"{([^}]+)}", path):
            assert any(p.get("in") == "path" and p["name"] == name
                       for p in map(description.resolve,
                                    description.operation(path, method)["parameters"]))


def test_memory_answers_are_described(client: FlaskClient, description: Description) -> None:
    call = description.call
    workflow = {"X-Workflow-ID": "wf-1", "X-Actor-ID": "agent-7"}
    record = call(client, "POST", API + "/memory/set", 200,
                  json={"key": "user.1", "data": {"name": "Ada"}}, headers=workflow)
    assert (record["scope"], record["scope_id"], record["data"]) == ("workflow", "wf-1",
                                                                     {"name": "Ada"})
    assert record["expires_at"] is None and int(record["version"]) > 0
    # Scope names are read trimmed, and a blank one means none.
    padded = call(client, "POST", API + "/memory/set", 200,
                  json={"key": "pad", "data": 1, "scope": "\u3000session\t", "scope_id": "s"})
    assert (padded["scope"], padded["scope_id"]) == ("session", "s")
    assert call(client, "POST", API + "/memory/get", 200,
                json={"key": "pad", "scope": "\x1e"}, headers={"X-Session-ID": "s"}) == padded
    assert call(client, "GET", API + "/memory/list", 200,
                query_string={"scope": " session ", "scope_id": "s"}) == [padded]
    call(client, "POST", API + "/memory/delete", 204, json={"key": "pad", "scope": " session",
                                                            "scope_id": "s"})
    call(client, "POST", API + "/memory/set", 400, json={"key": "user.1"})
    call(client, "POST", API + "/memory/set", 400, data=b"{not json")
    call(client, "POST", API + "/memory/set", 400, json=["not", "an", "object"])
    call(client, "POST", API + "/memory/set", 400, json={"key": "k", "data": 1, "scope": "moon"})
    call(client, "POST", API + "/memory/set", 400, json={"key": "k", "data": 1,
                                                         "if_version": "v1"})
    call(client, "POST", API + "/memory/set", 400, json={"key": "k", "data": 1,
                                                         "ttl_seconds": 0})
    call(client, "POST", API + "/memory/set", 400, json={"key": "k", "data": 1,
                                                         "ttl_seconds": "60"})
    assert call(client, "POST", API + "/memory/get", 200, json={"key": "user.1"},
                headers=workflow) == record
    call(client, "POST", API + "/memory/get", 404, json={"key": "user.1"})
    # An explicit scope with no id names no scope: nothing is found.
    call(client, "POST", API + "/memory/get", 404, json={"key": "user.1", "scope": "workflow"})
    call(client, "POST", API + "/memory/get", 400, json={"key": "user.1", "scope_id": "wf-1"})
    listed = call(client, "GET", API + "/memory/list", 200,
                  query_string={"scope": "workflow", "scope_id": "wf-1"})
    assert listed == [record]
    call(client, "GET", API + "/memory/list", 400)
    call(client, "POST", API + "/memory/delete", 204, json={"key": "user.1"}, headers=workflow)
    # Nothing to delete is still 204, and logs nothing.
    call(client, "POST", API + "/memory/delete", 204, json={"key": "user.1"}, headers=workflow)
    call(client, "POST", API + "/memory/delete", 400, json={"key": ""})
    changes = [(event["key"], event["action"])
               for event in call(client, "GET", API + "/memory/events/history", 200)]
    assert changes == [("user.1", "set"), ("pad", "set"), ("pad", "delete"),
                       ("user.1", "delete")]


def test_conditional_writes_answer_409_with_the_current_record(
        client: FlaskClient, description: Description) -> None:
    call = description.call
    set_path, delete_path = API + "/memory/set", API + "/memory/delete"
    first = call(client, "POST", set_path, 200, json={"key": "k", "data": 1, "if_version": "0"})
    conflict = call(client, "POST", set_path, 409, json={"key": "k", "data": 2,
                                                         "if_version": "0"})
    assert conflict["error"] == "version_conflict" and conflict["current"] == first
    second = call(client, "POST", set_path, 200, json={"key": "k", "data": 2,
                                                       "if_version": first["version"]})
    assert int(second["version"]) > int(first["version"])
    stale = call(client, "POST", set_path, 409, json={"key": "k", "data": 3,
                                                      "if_version": int(first["version"])})
    assert stale["current"] == second
    assert call(client, "POST", delete_path, 409, json={"key": "k", "if_version": "0"}
                )["current"] == second
    missing = call(client, "POST", delete_path, 409, json={"key": "gone", "if_version": "7"})
    assert missing["current"] is None
    call(client, "POST", delete_path, 400, json={"key": "k", "if_version": [1]})
    call(client, "POST", delete_path, 204, json={"key": "k", "if_version": second["version"]})
    assert call(client, "POST", set_path, 409, json={"key": "k", "data": 4,
                                                     "if_version": second["version"]}
                )["current"] is None


def test_event_metadata_and_expiry_are_described(client: FlaskClient,
                                                 description: Description) -> None:
    call = description.call
    history = API + "/memory/events/history"
    author = {"X-Agent-Node-ID": "node-1", "X-Actor-ID": "actor-1", "X-Workflow-ID": "wf-1"}
    record = call(client, "POST", API + "/memory/set", 200,
                  json={"key": "short", "data": "lived", "scope": "global",
                        "ttl_seconds": 0.05}, headers=author)
    assert record["expires_at"] is not None and record["expires_at"] > record["updated_at"]
    [written] = call(client, "GET", history, 200)
    assert written["metadata"] == {"agent_id": "node-1", "actor_id": "actor-1",
                                   "workflow_id": "wf-1"}

    def expired() -> list[dict]:
        return call(client, "GET", history, 200, query_string={"after_id": written["id"]})

    [removal] = wait_until(expired, timeout=5, message="the expiry to be logged")
    assert (removal["action"], removal["key"], removal["data"]) == ("delete", "short", None)
    assert removal["metadata"]["reason"] == "expired"
    call(client, "POST", API + "/memory/get", 404, json={"key": "short"})


def test_list_pages_and_headers_are_described(client: FlaskClient,
                                              description: Description) -> None:
    call, path = description.call, API + "/memory/list"
    for key in ("a.1", "a.2", "a.3", "b.1"):
        call(client, "POST", API + "/memory/set", 200, json={"key": key, "data": key})
    head = call(client, "GET", API + "/memory/events/history", 200)[-1]["id"]

    keys, query, pages = [], {"scope": "global", "prefix": "a.", "limit": "2"}, 0
    while query is not None:
        response = client.get(path, query_string=query)
        page = description.check(path, "GET", response.status_code, response.headers,
                                 response.get_data())
        assert response.headers["X-Last-Event-ID"] == head
        keys += [record["key"] for record in page]
        pages += 1
        link = response.headers.get("Link")
        if link is None:
            query = None
            continue
        target = urlsplit(re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1))
        assert target.path == path
        query = target.query
    assert (keys, pages) == (["a.1", "a.2", "a.3"], 2)

    unpaged = client.get(path, query_string={"scope": "global"})
    assert "Link" not in unpaged.headers
    assert [r["key"] for r in description.check(path, "GET", 200, unpaged.headers,
                                                unpaged.get_data())] == ["a.1", "a.2", "a.3",
                                                                         "b.1"]
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "two"}, {"cursor": "not-a-cursor"},
                {"scope": "moon"}, {"prefix": "a\x00"}):
        call(client, "GET", path, 400, query_string={"scope": "global", **bad})


def test_vector_answers_are_described(client: FlaskClient, description: Description) -> None:
    call = description.call
    vector = API + "/memory/vector"
    by_key = vector + "/{key}"
    session = {"X-Session-ID": "s-1"}
    stored = call(client, "POST", vector, 200,
                  json={"key": "doc/1", "embedding": [1, 0, 0], "metadata": {"tag": "a"}},
                  headers=session)
    assert stored == {"key": "doc/1", "scope": "session", "scope_id": "s-1",
                      "metadata": {"tag": "a"}}
    call(client, "POST", vector + "/set", 200,
         json={"key": "doc/2", "embedding": [0.6, 0.8, 0], "metadata": {"tag": "b"},
               "scope": "session", "scope_id": "s-1"})
    call(client, "POST", vector + "/set", 200,
         json={"key": "other", "embedding": [1, 1], "scope": "session", "scope_id": "s-1"})
    got = call(client, "GET", by_key, 200, url=vector + "/doc/1", headers=session)
    assert (got["embedding"], got["metadata"], got["scope"]) == ([1, 0, 0], {"tag": "a"},
                                                                 "session")
    call(client, "GET", by_key, 200, url=vector + "/doc%2F1",
         query_string={"scope": "session", "scope_id": "s-1"})
    call(client, "GET", by_key, 404, url=vector + "/doc/1")  # global: not there
    call(client, "GET", by_key, 404, url=vector + "/doc/1", query_string={"scope": "session"})
    call(client, "GET", by_key, 400, url=vector + "/doc/1", query_string={"scope": "moon"})

    search = vector + "/search"
    hits = call(client, "POST", search, 200, headers=session,
                json={"query_embedding": [1, 0, 0], "top_k": 5, "threshold": 0.99})
    assert [hit["key"] for hit in hits] == ["doc/1", "doc/2"]  # best first; 2-d one skipped
    assert hits[0]["score"] == pytest.approx(1) and hits[0]["distance"] == pytest.approx(0)
    assert [hit["key"] for hit in call(client, "POST", search, 200, headers=session,
                                       json={"query_embedding": [1, 0, 0], "threshold": None,
                                             "filters": {"tag": "b"}, "top_k": 0})] == ["doc/2"]
    assert call(client, "POST", search, 200, json={"query_embedding": [1, 0, 0]}) == []
    # Vectors are no memory records and no events.
    assert call(client, "GET", API + "/memory/list", 200,
                query_string={"scope": "session", "scope_id": "s-1"}) == []
    assert call(client, "GET", API + "/memory/events/history", 200) == []

    for route, body in (
            (vector, {"embedding": [1]}),  # missing_key
            (vector, {"key": "k"}),  # missing_embedding
            (vector, {"key": "k", "embedding": []}),
            (vector, {"key": "k", "embedding": ["1"]}),
            (vector, {"key": "k", "embedding": [True]}),
            (vector, {"key": "k", "embedding": [1e39]}),  # past float32
            (vector, {"key": "k", "embedding": [1], "metadata": [1]}),
            (vector + "/set", {"key": "k", "embedding": [1], "scope": "moon"}),
            (search, {}),
            (search, {"query_embedding": "1,2"}),
            (search, {"query_embedding": [1], "filters": "tag=a"}),
            (search, {"query_embedding": [1], "top_k": 1.5}),
            (search, {"query_embedding": [1], "top_k": "3"}),
            (vector + "/delete", {}),
            (vector + "/namespace", {}),
            (vector + "/namespace", {"namespace": ""})):
        method = "DELETE" if route.endswith("/namespace") else "POST"
        call(client, method, route, 400, json=body)

    call(client, "DELETE", by_key, 204, url=vector + "/doc/1", headers=session)
    call(client, "DELETE", by_key, 204, url=vector + "/doc/1", headers=session)  # absent
    call(client, "DELETE", by_key, 400, url=vector + "/doc/1", query_string={"scope": "actor"})
    call(client, "POST", vector + "/delete", 204,
         json={"key": "other", "scope": "session", "scope_id": "s-1"})
    call(client, "POST", vector + "/delete", 204, json={"key": "other"})  # absent
    deleted = call(client, "DELETE", vector + "/namespace", 200,
                   json={"namespace": "doc/", "scope": "session", "scope_id": "s-1"})
    assert deleted == {"namespace": "doc/", "deleted": 1, "scope": "session", "scope_id": "s-1",
                       "status": "deleted"}
    call(client, "GET", by_key, 404, url=vector + "/doc/2", headers=session)


#: a request each API operation answers with success (or, for the WebSocket, which needs a
#: socket, its plain-GET refusal, which comes after the key and origin checks)
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    (API + "/memory/set", "POST"): {"json": {"key": "k", "data": 1}},
    (API + "/memory/get", "POST"): {"json": {"key": "k"}},
    (API + "/memory/delete", "POST"): {"json": {"key": "k"}},
    (API + "/memory/list", "GET"): {"query_string": {"scope": "global"}},
    (API + "/memory/vector", "POST"): {"json": {"key": "v", "embedding": [1, 2]}},
    (API + "/memory/vector/set", "POST"): {"json": {"key": "v", "embedding": [1, 2]}},
    (API + "/memory/vector/{key}", "GET"): {"url": API + "/memory/vector/v"},
    (API + "/memory/vector/{key}", "DELETE"): {"url": API + "/memory/vector/v"},
    (API + "/memory/vector/delete", "POST"): {"json": {"key": "v"}},
    (API + "/memory/vector/namespace", "DELETE"): {"json": {"namespace": "v"}},
    (API + "/memory/vector/search", "POST"): {"json": {"query_embedding": [1, 2]}},
    (API + "/memory/events/history", "GET"): {},
    (API + "/memory/events/sse", "GET"): {"buffered": False},
    (API + "/memory/events/ws", "GET"): {},
    ("/healthz", "GET"): {},
    ("/readyz", "GET"): {},
    ("/metrics", "GET"): {},
    ("/openapi.json", "GET"): {},
}
SCHEME_CREDENTIALS: dict[str, dict[str, Any]] = {
    "ApiKeyHeader": {"headers": {"X-API-Key": KEY}},
    "Bearer": {"headers": {"Authorization": f"Bearer {KEY}"}},
    "ApiKeyQuery": {"query_string": {"api_key": KEY}},
}


def _with(example: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(example)
    for part, values in extra.items():
        merged[part] = {**example.get(part, {}), **values}
    return merged


def send(client: FlaskClient, description: Description, path: str, method: str,
         described_inputs: bool = True, **request: Any) -> int:
    """Send an example, check its answer is described, and let go of a stream at once."""
    target = request.pop("url", path)
    if described_inputs:
        description.assert_inputs_described(path, method, request.get("query_string") or {},
                                            request.get("headers") or {})
    response = client.open(target, method=method, **request)
    if response.status_code < 400 and described_inputs:
        description.assert_accepted_request_described(
            path, method, request.get("query_string") or {}, request.get("json"))
    streaming = request.get("buffered") is False and response.status_code == 200
    try:
        description.check(path, method, response.status_code, response.headers,
                          None if streaming else response.get_data())
    finally:
        response.close()
    return response.status_code


def test_operations_answers_are_described(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    client, description = app.test_client(), Description.of(app.test_client())
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        description.call(client, "GET", path, 200)

    def unavailable() -> None:
        raise StoreUnavailable("connection to server at 10.0.0.7, port 5432 failed")

    app.extensions[EXTENSION].store.ping = unavailable
    answer = description.call(client, "GET", "/readyz", 503)  # with Retry-After, as described
    assert "10.0.0.7" not in answer["message"], "an open route tells nothing of the database"


def test_every_route_refuses_a_foreign_origin_as_described(
        client: FlaskClient, description: Description) -> None:
    assert set(EXAMPLES) == description.operations()
    for (path, method), example in sorted(EXAMPLES.items()):
        parameters = map(description.resolve, description.operation(path, method)["parameters"])
        assert any((p["in"], p["name"]) == ("header", "Origin") for p in parameters), (
            f"{method} {path} does not describe Origin")
        refused = send(client, description, path, method,
                       **_with(example, {"headers": {"Origin": FOREIGN_ORIGIN}}))
        assert refused == 403, f"{method} {path} answered {refused} to a foreign origin"
        assert send(client, description, path, method,
                    **_with(example, {"headers": {"Origin": OWN_ORIGIN}})) != 403
    # A WebSocket upgrade from another site is refused before the handshake.
    description.call(client, "GET", API + "/memory/events/ws", 403,
                     headers={**HANDSHAKE, "Origin": FOREIGN_ORIGIN})


def test_stream_and_history_refusals_are_described(client: FlaskClient,
                                                   description: Description) -> None:
    call = description.call
    history, sse, ws = (API + "/memory/events/" + name for name in ("history", "sse", "ws"))
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_id": "x"}, {"since": "yesterday"},
                {"patterns": "[invalid"}, {"scope": "moon"}, {"scope_id": "a\x00"}):
        call(client, "GET", history, 400, query_string=bad)
    for path in (sse, ws):
        for bad in ({"patterns": "[invalid"}, {"patterns": ",".join("abcdefghijklmnopqrstuvwxyz"
                                                                     "0123456789")},
                    {"last_event_id": "-1"}, {"last_event_id": str(MAX_ID + 1)},
                    {"snapshot": "2"}, {"snapshot": "yes"}, {"scope": "moon"}):
            call(client, "GET", path, 400, query_string=bad,
                 headers=HANDSHAKE if path == ws else {})
    call(client, "GET", sse, 400, headers={"Last-Event-ID": "soon"})
    call(client, "GET", ws, 400)  # no upgrade
    call(client, "GET", ws, 400, headers={**HANDSHAKE, "Sec-WebSocket-Version": "8"})
    call(client, "GET", ws, 400, headers={name: value for name, value in HANDSHAKE.items()
                                          if name != "Sec-WebSocket-Key"})


def test_limits_described_are_the_limits_enforced(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(MEMORY_MAX_KEY_LENGTH="8", MEMORY_MAX_BODY_BYTES="100000",
                      MEMORY_MAX_VALUE_BYTES="100", MEMORY_MAX_STREAMS="1",
                      MEMORY_MAX_PATTERNS="2", MEMORY_MAX_PATTERN_LENGTH="5")
    client = app.test_client()
    description = Description.of(client)
    call = description.call
    schemas = description.document["components"]["schemas"]
    key_limits = {name: schemas[name]["properties"][field]["maxLength"]
                  for name, field in (("SetRequest", "key"), ("KeyRequest", "key"),
                                      ("DeleteRequest", "key"), ("VectorSetRequest", "key"),
                                      ("NamespaceDeleteRequest", "namespace"))}
    assert set(key_limits.values()) == {8}, key_limits
    set_path = API + "/memory/set"
    call(client, "POST", set_path, 200, json={"key": "k" * 8, "data": 1})
    call(client, "POST", set_path, 400, json={"key": "k" * 9, "data": 1})
    call(client, "POST", API + "/memory/vector", 200, json={"key": "k" * 8, "embedding": [1]})
    call(client, "POST", API + "/memory/vector", 400, json={"key": "k" * 9, "embedding": [1]})
    call(client, "DELETE", API + "/memory/vector/namespace", 400, json={"namespace": "n" * 9})
    by_key = API + "/memory/vector/{key}"
    [key_parameter] = [p for p in description.operation(by_key, "GET")["parameters"]
                       if p.get("in") == "path"]
    assert key_parameter["schema"]["maxLength"] == 8
    call(client, "GET", by_key, 200, url=API + "/memory/vector/" + "k" * 8)
    call(client, "GET", by_key, 400, url=API + "/memory/vector/" + "k" * 9)

    value = schemas["SetRequest"]["properties"]["data"]["description"]
    assert "at most 100 bytes" in value
    call(client, "POST", set_path, 200, json={"key": "k", "data": "v" * 98})  # 100 as JSON
    call(client, "POST", set_path, 413, json={"key": "k", "data": "v" * 99})
    call(client, "POST", set_path, 413, data=b'{"key":"k","data":"' + b"v" * 100_000 + b'"}')
    call(client, "POST", API + "/memory/vector/search", 413,
         data=b'{"query_embedding":[' + b"1," * 50_000 + b"1]}")

    ttl = schemas["SetRequest"]["properties"]["ttl_seconds"]
    call(client, "POST", set_path, 200, json={"key": "k", "data": 1,
                                              "ttl_seconds": ttl["maximum"]})
    call(client, "POST", set_path, 400, json={"key": "k", "data": 1,
                                              "ttl_seconds": ttl["maximum"] * 1.01})
    call(client, "POST", set_path, 400, json={"key": "k", "data": 1,
                                              "ttl_seconds": ttl["exclusiveMinimum"]})

    embedding = schemas["VectorSetRequest"]["properties"]["embedding"]
    dimensions = embedding["maxItems"]
    call(client, "POST", API + "/memory/vector", 200,
         json={"key": "wide", "embedding": [1] * dimensions})
    call(client, "POST", API + "/memory/vector", 400,
         json={"key": "wide", "embedding": [1] * (dimensions + 1)})
    bound = embedding["items"]["exclusiveMaximum"]
    assert embedding["items"]["exclusiveMinimum"] == -bound
    largest = math.nextafter(bound, 0)  # rounds to float32's largest
    call(client, "POST", API + "/memory/vector", 200, json={"key": "big", "embedding": [largest]})
    call(client, "POST", API + "/memory/vector", 400, json={"key": "big", "embedding": [bound]})
    call(client, "POST", API + "/memory/vector", 400, json={"key": "big", "embedding": [-bound]})
    top_k = schemas["VectorSearchRequest"]["properties"]["top_k"]["maximum"]
    search = API + "/memory/vector/search"
    call(client, "POST", search, 200, json={"query_embedding": [1], "top_k": top_k})
    call(client, "POST", search, 400, json={"query_embedding": [1], "top_k": top_k + 1})

    def query_limit(path: str, name: str) -> dict[str, Any]:
        [parameter] = [description.resolve(p) for p in description.operation(path, "GET")[
            "parameters"] if description.resolve(p)["name"] == name]
        return parameter["schema"]["anyOf"][0]

    for path in (API + "/memory/list", API + "/memory/events/history"):
        limit = query_limit(path, "limit")
        query = {"scope": "global"} if path.endswith("list") else {}
        for value, status in ((limit["minimum"], 200), (limit["maximum"], 200),
                              (limit["minimum"] - 1, 400), (limit["maximum"] + 1, 400)):
            call(client, "GET", path, status, query_string={**query, "limit": value})

    patterns = description.document["components"]["parameters"]["Patterns"]["description"]
    assert "at most 2 of at most 5 characters" in patterns
    history = API + "/memory/events/history"
    call(client, "GET", history, 200, query_string={"patterns": "abcde,b"})
    call(client, "GET", history, 400, query_string={"patterns": "a,b,c"})
    call(client, "GET", history, 400, query_string={"patterns": "abcdef"})

    sse = API + "/memory/events/sse"
    held = client.get(sse, buffered=False)
    try:
        assert next(iter(held.response)).startswith(b": connected")
        call(client, "GET", sse, 503)
    finally:
        held.close()
    wait_until(lambda: send(client, description, sse, "GET", buffered=False) == 200,
               message="the stream's slot to be free again")


def test_auth_is_described_and_each_described_way_is_accepted(
        app_factory: Callable[..., Flask]) -> None:
    """Each way of presenting the key works exactly where it is described."""
    client = app_factory(MEMORY_API_KEY=KEY).test_client()
    description = Description.of(client)
    assert set(EXAMPLES) == description.operations()
    assert set(SCHEME_CREDENTIALS) == set(description.document["components"]["securitySchemes"])
    for path, method in sorted(description.operations()):
        operation = description.operation(path, method)
        example = EXAMPLES[path, method]
        if not path.startswith(API + "/"):
            assert not operation.get("security")
            assert send(client, description, path, method, **example) == 200
            continue
        refused = send(client, description, path, method, **example)
        assert refused == 401, f"{method} {path} answered {refused} without the key"
        described = {name for requirement in operation.get("security", [])
                     for name in requirement}
        assert described, f"{method} {path} does not describe its auth"
        for scheme, credentials in SCHEME_CREDENTIALS.items():
            status = send(client, description, path, method, described_inputs=False,
                          **_with(example, credentials))
            if scheme in described:
                assert status != 401, f"{scheme} refused on {method} {path}"
            else:
                assert status == 401, f"{scheme}, not described, accepted on {method} {path}"
        wrong = _with(example, {"headers": {"X-API-Key": KEY + "x"}})
        assert send(client, description, path, method, **wrong) == 401


def test_without_a_key_no_operation_asks_for_one(description: Description) -> None:
    assert all(not operation.get("security") for item in description.document["paths"].values()
               for operation in item.values())


# -- the stream frames, on a real server ------------------------------------------------------

def http_description(server: Server) -> Description:
    response = requests.get(server.url + "/openapi.json", timeout=5)
    assert response.status_code == 200, response.text
    return Description(response.json())


def put(server: Server, key: str, data: Any) -> dict:
    response = requests.post(server.url + API + "/memory/set", json={"key": key, "data": data},
                             timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def ws_connect(server: Server, query: str, protocol: bool) -> websocket.WebSocket:
    options = {"subprotocols": [WS_PROTOCOL]} if protocol else {}
    return websocket.create_connection(server.url.replace("http", "ws", 1) + API
                                       + "/memory/events/ws?" + query, timeout=10, **options)


def ws_frame(connection: websocket.WebSocket) -> tuple[int, bytes]:
    """The next text or close frame (pings are answered by the library)."""
    while True:
        opcode, frame = connection.recv_data_frame(control_frame=True)
        if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_CLOSE):
            return opcode, frame.data


def ws_message(connection: websocket.WebSocket) -> dict:
    opcode, data = ws_frame(connection)
    assert opcode == ABNF.OPCODE_TEXT, f"expected a message, got {opcode}: {data!r}"
    return json.loads(data)


def check_handshake(description: Description, connection: websocket.WebSocket,
                    protocol: bool) -> None:
    headers = CaseInsensitiveDict(connection.getheaders())
    description.check(API + "/memory/events/ws", "GET", connection.getstatus(), headers, None)
    assert headers.get("Sec-WebSocket-Protocol") == (WS_PROTOCOL if protocol else None)


def test_stream_frames_are_described(server: Server) -> None:
    description = http_description(server)
    sse = API + "/memory/events/sse"
    first = put(server, "a", [1, None])
    put(server, "b", {"x": "y"})

    with SSEClient(server.url + sse, params={"last_event_id": "0"}) as stream:
        description.check(sse, "GET", stream.response.status_code, stream.response.headers, None)
        for event in stream.events(2):
            description.validate_component(event, "MemoryChange")
    with SSEClient(server.url + sse, headers={"Last-Event-ID": str(2**40)}) as stream:
        reset = stream.next_event()
        assert reset.event == "reset"
        description.validate_component(reset.json, "StreamReset")
    with SSEClient(server.url + sse, params={"snapshot": "1"}) as stream:
        snapshot = [stream.next_event(), stream.next_event()]
        assert [frame.event for frame in snapshot] == ["snapshot", "snapshot"]
        for frame in snapshot:
            description.validate_component(frame.json, "MemoryRecord")
        assert snapshot[0].json == first
        end = stream.next_event()
        assert end.event == "snapshot_end"
        description.validate_component(end.json, "SnapshotEnd")
        assert end.id == end.json["last_id"]
        put(server, "c", 3)
        [live] = stream.events(1)
        description.validate_component(live, "MemoryChange")
        assert int(live["id"]) > int(end.id)

    with closing(ws_connect(server, "snapshot=1", protocol=True)) as connection:
        check_handshake(description, connection, protocol=True)
        records = [ws_message(connection) for _ in range(3)]
        for message in records:
            description.validate_component(message, "SnapshotRecord")
        end = ws_message(connection)
        assert end["type"] == "snapshot_end"
        description.validate_component(end, "SnapshotEnd")
    with closing(ws_connect(server, f"last_event_id={2**40}", protocol=True)) as connection:
        reset = ws_message(connection)
        assert reset["type"] == "reset"
        description.validate_component(reset, "StreamReset")
    with closing(ws_connect(server, "last_event_id=0&snapshot=1", protocol=False)) as connection:
        check_handshake(description, connection, protocol=False)
        for _ in range(3):  # events only: a plain client gets no snapshot, nor reset
            description.validate_component(ws_message(connection), "MemoryChange")
    unknown = f"snapshot=1&last_event_id={2**40}"
    with closing(ws_connect(server, unknown, protocol=False)) as connection:
        put(server, "d", 4)
        event = ws_message(connection)
        assert event["key"] == "d"
        description.validate_component(event, "MemoryChange")


def test_stream_endings_are_described(server: Server) -> None:
    """A shutdown ends each kind of stream as described: SSE and protocol WebSocket clients
    get StreamEnd as a last message, plain WebSocket clients as the close reason."""
    description = http_description(server)
    sse = SSEClient(server.url + API + "/memory/events/sse")
    protocol = ws_connect(server, "", protocol=True)
    plain = ws_connect(server, "", protocol=False)
    try:
        assert sse.next().comments == ("connected",)
        server.send(signal.SIGTERM)
        end = sse.next_event()
        assert end.event == "shutdown"
        description.validate_component(end.json, "StreamEnd")
        message = ws_message(protocol)
        assert message["type"] == "shutdown"
        description.validate_component(message, "StreamEnd")
        opcode, data = ws_frame(plain)
        assert opcode == ABNF.OPCODE_CLOSE
        assert struct.unpack("!H", data[:2])[0] == 1001
        reason = json.loads(data[2:])
        assert reason["type"] == "shutdown"
        description.validate_component(reason, "StreamEnd")
    finally:
        sse.close()
        protocol.close()
        plain.close()
