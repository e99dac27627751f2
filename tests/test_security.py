"""Auth and origins against a real server: who may call, from which page, and what is logged."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlencode

import pytest
import requests
import websocket

from .conftest import Server, wait_until

API = "/api/v1"
KEY = "mk-4f1c9e2b7d0a4c55b2e8"
ALLOWED = "https://app.example"
OTHER = "https://elsewhere.example"


@dataclass(frozen=True)
class Route:
    """One ``/api/v1`` route, called so that with a valid key it answers ``works``."""
    method: str
    path: str
    body: dict | None = None
    params: dict = field(default_factory=dict)
    works: int = 200

    @property
    def streams(self) -> bool:
        return self.path.startswith("/memory/events/") and not self.path.endswith("history")


ROUTES = {
    "set": Route("POST", "/memory/set", {"key": "present", "data": {"n": 1}}),
    "get": Route("POST", "/memory/get", {"key": "absent"}, works=404),
    "delete": Route("POST", "/memory/delete", {"key": "absent"}, works=404),
    "list": Route("GET", "/memory/list", params={"scope": "global"}),
    "history": Route("GET", "/memory/events/history"),
    "sse": Route("GET", "/memory/events/sse"),
    "ws": Route("GET", "/memory/events/ws", works=101),
}
STREAM_ROUTES = [name for name, route in ROUTES.items() if route.streams]
PLAIN_ROUTES = [name for name, route in ROUTES.items() if not route.streams]


@dataclass(frozen=True)
class Answer:
    """What a client got back, whichever transport it used; header names in lower case."""
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, response: requests.Response, body: bytes | None = None) -> "Answer":
        return cls(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                   response.content if body is None else body)

    def error(self) -> dict:
        """The JSON error body, checked for its documented shape."""
        payload = json.loads(self.body)
        assert set(payload) == {"error", "message", "code"}, payload
        assert payload["code"] == self.status and payload["message"], payload
        return payload


def ws_answer(url: str, headers: dict[str, str] | None = None,
              params: dict | None = None) -> Answer:
    """Try a WebSocket upgrade with a real client: 101 when accepted, else the refusal.

    Without an ``Origin`` header the client sends the service's own origin, as a page would.
    """
    extra = dict(headers or {})
    origin = extra.pop("Origin", None)
    target = url.replace("http://", "ws://", 1) + "?" + urlencode(params or {})
    try:
        connection = websocket.create_connection(
            target, header=[f"{k}: {v}" for k, v in extra.items()], origin=origin, timeout=10)
    except websocket.WebSocketBadStatusException as exc:
        return Answer(exc.status_code, {k.lower(): v for k, v in (exc.resp_headers or {}).items()},
                      exc.resp_body or b"")
    connection.close()
    return Answer(101, {}, b"")


def call(server: Server, name: str, headers: dict[str, str] | None = None,
         params: dict | None = None) -> Answer:
    """Call a route the way its real clients do; a stream is opened and closed at once."""
    route = ROUTES[name]
    url = server.url + API + route.path
    query = {**route.params, **(params or {})}
    if name == "ws":
        return ws_answer(url, headers, query)
    with requests.request(route.method, url, json=route.body, params=query, headers=headers,
                          stream=route.streams, timeout=10) as response:
        return Answer.of(response, b"" if route.streams and response.ok else None)


def serving(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[Server]:
    """One server for a whole module: no test here depends on what another wrote."""
    directory = tmp_path_factory.mktemp("server")
    server = Server(f"sqlite:///{directory}/memory.db", log_path=directory / "server.log",
                    env={"MEMORY_HEARTBEAT_SECONDS": "0.5", **env})
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Neither a key nor an origin allowlist: the defaults."""
    yield from serving(tmp_path_factory, {})


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A key and an origin allowlist (one entry spelled with a trailing slash)."""
    yield from serving(tmp_path_factory, {
        "MEMORY_API_KEY": KEY, "MEMORY_CORS_ORIGINS": f"{ALLOWED}, http://localhost:3000/"})


# -- auth ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROUTES)
def test_every_api_route_refuses_a_caller_without_the_key(guarded, name):
    answer = call(guarded, name)
    assert answer.status == 401
    assert answer.error()["error"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("form", ["X-API-Key", "Bearer", "bearer"])
@pytest.mark.parametrize("name", ROUTES)
def test_every_api_route_works_with_the_key_in_a_header(guarded, name, form):
    headers = {"X-API-Key": KEY} if form == "X-API-Key" else {"Authorization": f"{form} {KEY}"}
    assert call(guarded, name, headers=headers).status == ROUTES[name].works


@pytest.mark.parametrize("name", STREAM_ROUTES)
def test_stream_routes_take_the_key_from_the_query(guarded, name):
    assert call(guarded, name, params={"api_key": KEY}).status == ROUTES[name].works


@pytest.mark.parametrize("name", PLAIN_ROUTES)
def test_other_routes_ignore_a_key_in_the_query(guarded, name):
    """Only ``EventSource`` needs the query form; elsewhere it would only leak keys into URLs."""
    assert call(guarded, name, params={"api_key": KEY}).status == 401


WRONG_KEYS = {
    "same length": KEY[:-1] + ("0" if KEY[-1] != "0" else "1"),
    "prefix": KEY[:-1],
    "longer": KEY + "0",
    "other case": KEY.upper(),
    "unrelated": "x",
}


@pytest.mark.parametrize("wrong", WRONG_KEYS.values(), ids=WRONG_KEYS.keys())
@pytest.mark.parametrize("form", ["X-API-Key", "Bearer", "query"])
def test_a_wrong_key_is_refused(guarded, wrong, form):
    assert len(WRONG_KEYS["same length"]) == len(KEY)
    if form == "query":
        answer = call(guarded, "sse", params={"api_key": wrong})
    elif form == "Bearer":
        answer = call(guarded, "list", headers={"Authorization": f"Bearer {wrong}"})
    else:
        answer = call(guarded, "list", headers={"X-API-Key": wrong})
    assert answer.status == 401
    assert answer.error()["error"] == "unauthorized"


def test_a_key_under_another_scheme_is_refused(guarded):
    assert call(guarded, "list", headers={"Authorization": f"Basic {KEY}"}).status == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_operations_routes_stay_open(guarded, path):
    assert requests.get(guarded.url + path, timeout=10).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_key_never_reaches_the_log(server_factory):
    """Every form of the key, accepted or not, on a server that logs every request."""
    server = server_factory(env={"MEMORY_API_KEY": KEY, "MEMORY_HEARTBEAT_SECONDS": "0.2",
                                 "GUNICORN_CMD_ARGS": "--access-logfile - --log-level debug"})
    forms = [{"headers": {"X-API-Key": KEY}}, {"headers": {"Authorization": f"Bearer {KEY}"}},
             {"params": {"api_key": KEY}}]
    for name in ROUTES:
        for form in forms:
            call(server, name, **form)
    log = Path(server.log_path)

    def logged_calls() -> list[str]:
        """Access log lines, which quote the request line: ``"GET /path HTTP/1.1"``."""
        return [line for line in log.read_text().splitlines()
                if f" {API}/" in line and '"' in line]

    # gunicorn writes no access line for a WebSocket: flask-sock ends it by unwinding the
    # request handling, past the access log.
    wait_until(lambda: len(logged_calls()) == (len(ROUTES) - 1) * len(forms),
               message="the access log to list every call")
    assert KEY not in log.read_text()


# -- CORS and origins ------------------------------------------------------------------------
def preflight(server: Server, path: str, origin: str, method: str = "POST") -> requests.Response:
    return requests.options(server.url + API + path, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, x-api-key, last-event-id"})


def cors_headers(headers: Mapping[str, str]) -> set[str]:
    return {name.lower() for name in headers if name.lower().startswith("access-control-")}


@pytest.mark.parametrize("name", PLAIN_ROUTES + ["sse"])
def test_no_cors_headers_by_default(open_server, name):
    answer = call(open_server, name, headers={"Origin": ALLOWED})
    assert answer.status == ROUTES[name].works
    assert not cors_headers(answer.headers)
    assert not cors_headers(preflight(open_server, ROUTES[name].path, ALLOWED).headers)


@pytest.mark.parametrize("name", PLAIN_ROUTES + ["sse"])
@pytest.mark.parametrize("origin", [ALLOWED, "http://localhost:3000"])
def test_an_allowed_origin_is_echoed(guarded, name, origin):
    answer = call(guarded, name, headers={"Origin": origin, "X-API-Key": KEY})
    assert answer.status == ROUTES[name].works
    assert answer.headers["access-control-allow-origin"] == origin
    assert "origin" in answer.headers["vary"].lower()


def test_an_allowed_origin_can_read_a_refusal(guarded):
    """A page must be able to tell that its key was wrong, not see an opaque network error."""
    answer = call(guarded, "list", headers={"Origin": ALLOWED})
    assert answer.status == 401
    assert answer.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize("path,method", [("/memory/set", "POST"), ("/memory/list", "GET"),
                                         ("/memory/events/sse", "GET")])
def test_preflight_needs_no_key_and_names_methods_and_headers(guarded, path, method):
    """Browsers send a preflight without credentials, so it must pass while a key is set."""
    response = preflight(guarded, path, ALLOWED, method)
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "origin" in response.headers["Vary"].lower()
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert method in methods
    allowed_headers = {h.strip().lower()
                       for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "authorization", "last-event-id"} <= allowed_headers


@pytest.mark.parametrize("origin", [OTHER, ALLOWED + ".evil.example", ALLOWED + ":8443",
                                    "http://app.example", "null"])
def test_another_origin_gets_no_cors_headers(guarded, origin):
    answer = call(guarded, "list", headers={"Origin": origin, "X-API-Key": KEY})
    assert answer.status == 200
    assert not cors_headers(answer.headers)
    assert "origin" in answer.headers["vary"].lower(), "a cache must not reuse it for others"
    assert not cors_headers(preflight(guarded, "/memory/set", origin).headers)


def test_websocket_origins(guarded, open_server):
    """With an allowlist: listed origins and the service's own; without one, any origin."""
    headers = {"X-API-Key": KEY}
    assert call(guarded, "ws", headers={**headers, "Origin": ALLOWED}).status == 101
    assert call(guarded, "ws", headers={**headers, "Origin": guarded.url}).status == 101
    refused = call(guarded, "ws", headers={**headers, "Origin": OTHER})
    assert refused.status == 403
    assert refused.error()["error"] == "origin_not_allowed"
    assert call(open_server, "ws", headers={"Origin": OTHER}).status == 101
