"""Auth and origins: who may call, from which page, and what is logged.

In process (the Flask test client, whose own origin is ``http://localhost``): the API key on
every route, CORS, and the origin check on every route. On a real server only what needs one:
WebSocket upgrades that are accepted (they need a socket), origins on a real WebSocket
handshake and on a cross-site form, with the default settings and with origins listed, and
gunicorn's access log never holding the key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Union
from urllib.parse import urlencode

import pytest
import requests
import websocket
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.wire import API_PREFIX as API

from .api import history_events, history_ids
from .conftest import Server, wait_until
from .test_memory_api import ERROR_FIELDS, everything

KEY = "mk-4f1c9e2b7d0a4c55b2e8"
ALLOWED = "https://app.example"
OTHER = "https://elsewhere.example"
OWN = "http://localhost"  # the test client's requests go to http://localhost/
#: one entry spelled with a trailing slash
CORS_ORIGINS = f"{ALLOWED}, http://localhost:3000/"
WS_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, x-api-key, last-event-id"}


@dataclass(frozen=True)
class Route:
    """One route, called so that, when let in, it answers ``works``."""
    method: str
    path: str
    body: dict | None = None
    params: dict = field(default_factory=dict)
    works: int = 200
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)

    @property
    def streams(self) -> bool:
        return self.path.startswith(f"{API}/memory/events/") and not self.path.endswith("history")

    @property
    def websocket(self) -> bool:
        return self.path.endswith("/ws")


#: the ``/api/v1`` routes, which need the key when one is set
ROUTES = {
    "set": Route("POST", f"{API}/memory/set", {"key": "present", "data": {"n": 1}}),
    "get": Route("POST", f"{API}/memory/get", {"key": "absent"}, works=404),
    "delete": Route("POST", f"{API}/memory/delete", {"key": "absent"}, works=204),
    "list": Route("GET", f"{API}/memory/list", params={"scope": "global"}),
    "history": Route("GET", f"{API}/memory/events/history"),
    "sse": Route("GET", f"{API}/memory/events/sse"),
    "ws": Route("GET", f"{API}/memory/events/ws", works=101),
}
STREAM_ROUTES = [name for name, route in ROUTES.items() if route.streams]
PLAIN_ROUTES = [name for name, route in ROUTES.items() if not route.streams]
#: what a page elsewhere could make a browser send: every route the service has
EVERY_ROUTE = {
    **ROUTES,
    "form-like post": Route("POST", f"{API}/memory/set", {"key": "from.elsewhere", "data": 1},
                            content_type="text/plain"),
    "preflight": Route("OPTIONS", f"{API}/memory/set", headers=PREFLIGHT),
    "healthz": Route("GET", "/healthz"),
    "readyz": Route("GET", "/readyz"),
    "metrics": Route("GET", "/metrics"),
    "openapi": Route("GET", "/openapi.json"),
    "page": Route("GET", "/"),
    "page asset": Route("GET", "/assets/app.js"),
}
#: an accepted WebSocket needs a socket: in process only its refusals can be seen
IN_PROCESS_WORKS = [name for name, route in EVERY_ROUTE.items() if not route.websocket]


@dataclass(frozen=True)
class Answer:
    """What a client got back, whichever transport it used; header names in lower case."""
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, response: Union[requests.Response, TestResponse],
           body: bytes | None = None) -> "Answer":
        if body is None:
            body = (response.get_data() if isinstance(response, TestResponse)
                    else response.content)
        return cls(response.status_code,
                   {k.lower(): v for k, v in response.headers.items()}, body)

    def error(self) -> dict:
        """The JSON error body, checked for its documented shape."""
        payload = json.loads(self.body)
        assert set(payload) == ERROR_FIELDS, payload
        assert payload["code"] == self.status and payload["message"], payload
        assert payload["details"] == payload["message"], payload
        return payload


def ws_answer(url: str, headers: dict[str, str] | None = None,
              params: dict | None = None) -> Answer:
    """Try a WebSocket upgrade with a real client: 101 when accepted, else the refusal.

    Without an ``Origin`` header the client sends the service's own origin, as a page would;
    ``"Origin": None`` sends none at all.
    """
    extra = dict(headers or {})
    no_origin = "Origin" in extra and extra["Origin"] is None
    origin = extra.pop("Origin", None)
    target = url.replace("http://", "ws://", 1) + "?" + urlencode(params or {})
    try:
        connection = websocket.create_connection(
            target, header=[f"{k}: {v}" for k, v in extra.items()], origin=origin,
            suppress_origin=no_origin, timeout=10)
    except websocket.WebSocketBadStatusException as exc:
        return Answer(exc.status_code, {k.lower(): v for k, v in (exc.resp_headers or {}).items()},
                      exc.resp_body or b"")
    connection.close()
    return Answer(101, {}, b"")


def call(target: Union[FlaskClient, Server], name: str, headers: dict[str, str] | None = None,
         params: dict | None = None) -> Answer:
    """Call a route the way its real clients do; a stream is opened and closed at once.

    In process a WebSocket route gets the upgrade headers, so its refusals are the handshake's.
    """
    route = EVERY_ROUTE[name]
    query = {**route.params, **(params or {})}
    data = None if route.body is None else json.dumps(route.body)
    sent = {"Content-Type": route.content_type, **route.headers, **(headers or {})}
    if isinstance(target, Server):
        if route.websocket:
            return ws_answer(target.url + route.path, headers, query)
        with requests.request(route.method, target.url + route.path, data=data, params=query,
                              headers=sent, stream=route.streams, timeout=10) as response:
            return Answer.of(response, b"" if route.streams and response.ok else None)
    if route.websocket:
        sent.update(WS_UPGRADE)
    with target.open(route.path, method=route.method, data=data, query_string=query,
                     headers=sent) as response:
        return Answer.of(response, b"" if route.streams and response.status_code < 400 else None)


def refused(answer: Answer, status: int, error: str) -> None:
    assert answer.status == status, answer
    assert answer.error()["error"] == error


def serving(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[Server]:
    """One server for a whole module: no test here depends on what another wrote."""
    directory = tmp_path_factory.mktemp("server")
    server = Server(f"sqlite:///{directory}/memory.db", log_path=directory / "server.log",
                    env={"MEMORY_HEARTBEAT_SECONDS": "0.5", **env})
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def guarded(app_factory) -> FlaskClient:
    """A key and an origin allowlist."""
    return app_factory(MEMORY_API_KEY=KEY, MEMORY_CORS_ORIGINS=CORS_ORIGINS).test_client()


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same settings under gunicorn, for real WebSocket handshakes."""
    yield from serving(tmp_path_factory, {"MEMORY_API_KEY": KEY,
                                          "MEMORY_CORS_ORIGINS": CORS_ORIGINS})


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The defaults under gunicorn: no key, no origins listed."""
    yield from serving(tmp_path_factory, {})


def subscribers(server: Server) -> float:
    return sum(server.metric("memory_events_subscribers", transport=transport)
               for transport in ("sse", "ws"))


KEY_HEADERS = {"X-API-Key": {"X-API-Key": KEY}, "Bearer": {"Authorization": f"Bearer {KEY}"},
               "bearer": {"Authorization": f"bearer {KEY}"}}


# -- auth ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROUTES)
def test_every_api_route_refuses_a_caller_without_the_key(guarded, name):
    answer = call(guarded, name)
    refused(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("form", KEY_HEADERS)
@pytest.mark.parametrize("name", [name for name in ROUTES if name != "ws"])
def test_every_api_route_works_with_the_key_in_a_header(guarded, name, form):
    assert call(guarded, name, headers=KEY_HEADERS[form]).status == ROUTES[name].works


def test_stream_routes_take_the_key_from_the_query(guarded):
    assert call(guarded, "sse", params={"api_key": KEY}).status == 200


@pytest.mark.parametrize("form", [*KEY_HEADERS, "query"])
def test_a_websocket_takes_the_key_from_a_header_or_the_query(guarded_server, form):
    if form == "query":
        assert call(guarded_server, "ws", params={"api_key": KEY}).status == 101
    else:
        assert call(guarded_server, "ws", headers=KEY_HEADERS[form]).status == 101


@pytest.mark.parametrize("name", PLAIN_ROUTES)
def test_other_routes_ignore_a_key_in_the_query(guarded, name):
    """Only ``EventSource`` needs the query form; elsewhere it would only leak keys into URLs."""
    refused(call(guarded, name, params={"api_key": KEY}), 401, "unauthorized")


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
    refused(answer, 401, "unauthorized")


def test_a_key_under_another_scheme_is_refused(guarded):
    refused(call(guarded, "list", headers={"Authorization": f"Basic {KEY}"}), 401, "unauthorized")


@pytest.mark.parametrize("name", ["healthz", "readyz", "metrics"])
def test_operations_routes_stay_open(guarded, name):
    assert call(guarded, name).status == 200


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
def cors_headers(headers: Mapping[str, str]) -> set[str]:
    return {name.lower() for name in headers if name.lower().startswith("access-control-")}


@pytest.mark.parametrize("name", EVERY_ROUTE)
def test_a_foreign_origin_is_refused_on_every_route(client, name):
    """By default only the service's own pages may call it: a page elsewhere can neither read
    nor write, by a form, a preflight, a stream or a WebSocket."""
    before = everything(client)
    answer = call(client, name, headers={"Origin": OTHER})
    refused(answer, 403, "origin_not_allowed")
    assert not cors_headers(answer.headers)
    assert everything(client) == before


@pytest.mark.parametrize("origin", ["null", OWN + ":8080", "https://localhost",
                                    "http://localhost.evil.example", "http://127.0.0.1"])
def test_an_origin_near_its_own_is_foreign(client, origin):
    refused(call(client, "form-like post", headers={"Origin": origin}), 403, "origin_not_allowed")
    assert everything(client) == ([], [])


@pytest.mark.parametrize("name", IN_PROCESS_WORKS)
@pytest.mark.parametrize("origin", [None, OWN], ids=["no Origin", "own"])
def test_the_services_own_origin_and_none_are_let_in(client, name, origin):
    """Non-browser clients send no ``Origin``, the service's own pages send its own; neither
    needs CORS headers. (An accepted WebSocket is on a real server: test_websocket_origins.)"""
    answer = call(client, name, headers={} if origin is None else {"Origin": origin})
    assert answer.status == EVERY_ROUTE[name].works, answer
    assert not cors_headers(answer.headers)


@pytest.mark.parametrize("origin", [OWN + "/", "HTTP://LOCALHOST", "Http://LocalHost/"])
def test_its_own_origin_matches_without_trailing_slash_or_case(client, origin):
    assert call(client, "form-like post", headers={"Origin": origin}).status == 200


@pytest.mark.parametrize("name", PLAIN_ROUTES + ["sse", "preflight", "healthz"])
@pytest.mark.parametrize("origin", [ALLOWED, "http://localhost:3000"])
def test_an_allowed_origin_is_echoed(guarded, name, origin):
    answer = call(guarded, name, headers={"Origin": origin, "X-API-Key": KEY})
    assert answer.status == EVERY_ROUTE[name].works
    assert answer.headers["access-control-allow-origin"] == origin
    assert "origin" in answer.headers["vary"].lower()


@pytest.mark.parametrize("listed,sent", [
    (ALLOWED, ALLOWED + "/"), (ALLOWED + "/", ALLOWED), ("HTTPS://App.Example", ALLOWED),
    (ALLOWED, "HTTPS://APP.EXAMPLE/")])
def test_a_listed_origin_matches_without_trailing_slash_or_case(app_factory, listed, sent):
    client = app_factory(MEMORY_CORS_ORIGINS=listed).test_client()
    answer = call(client, "list", headers={"Origin": sent})
    assert answer.status == 200, answer
    assert answer.headers["access-control-allow-origin"].lower() == ALLOWED


def test_an_allowed_origin_can_read_a_refusal(guarded):
    """A page must be able to tell that its key was wrong, not see an opaque network error."""
    answer = call(guarded, "list", headers={"Origin": ALLOWED})
    refused(answer, 401, "unauthorized")
    assert answer.headers["access-control-allow-origin"] == ALLOWED


def preflight(client: FlaskClient, path: str, origin: str, method: str) -> TestResponse:
    return client.options(path, headers={**PREFLIGHT, "Origin": origin,
                                         "Access-Control-Request-Method": method})


@pytest.mark.parametrize("path,method", [("/memory/set", "POST"), ("/memory/list", "GET"),
                                         ("/memory/events/sse", "GET")])
def test_preflight_needs_no_key_and_names_methods_and_headers(guarded, path, method):
    """Browsers send a preflight without credentials, so it must pass while a key is set."""
    response = preflight(guarded, API + path, ALLOWED, method)
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "origin" in response.headers["Vary"].lower()
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert method in methods
    allowed_headers = {h.strip().lower()
                       for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "authorization", "last-event-id", "x-agent-node-id",
            "x-actor-id", "x-workflow-id", "x-session-id"} <= allowed_headers


@pytest.mark.parametrize("origin", [OTHER, ALLOWED + ".evil.example", ALLOWED + ":8443",
                                    "http://app.example", "http://localhost:3001", "null"])
def test_an_unlisted_origin_is_refused_without_cors_headers(guarded, origin):
    answer = call(guarded, "list", headers={"Origin": origin, "X-API-Key": KEY})
    refused(answer, 403, "origin_not_allowed")
    assert not cors_headers(answer.headers)
    assert "origin" in answer.headers["vary"].lower(), "a cache must not reuse it for others"
    rejected = Answer.of(preflight(guarded, f"{API}/memory/set", origin, "POST"))
    refused(rejected, 403, "origin_not_allowed")
    assert not cors_headers(rejected.headers)


@pytest.mark.parametrize("name", ["ws", "form-like post"])
def test_by_default_a_real_server_lets_in_only_its_own_pages(open_server, name):
    """No origins listed: a page elsewhere can neither open the stream's WebSocket nor write
    with a form; the service's own pages (its ``http://127.0.0.1:PORT``) and clients that send
    no ``Origin`` can."""
    server, route = open_server, EVERY_ROUTE[name]
    before = (history_ids(server.url), subscribers(server))
    refused(call(server, name, headers={"Origin": OTHER}), 403, "origin_not_allowed")
    assert (history_ids(server.url), subscribers(server)) == before, "the refusal changed state"
    for origin in (server.url, None):
        assert call(server, name, headers={"Origin": origin}).status == route.works, origin
    if not route.websocket:
        assert [event["key"] for event in history_events(server.url)[-2:]] == \
            [route.body["key"]] * 2  # type: ignore[index]


def test_websocket_origins(guarded_server):
    """A real handshake: a listed origin and the service's own are let in, another is not."""
    headers = {"X-API-Key": KEY}
    assert call(guarded_server, "ws", headers={**headers, "Origin": ALLOWED}).status == 101
    assert call(guarded_server, "ws", headers={**headers, "Origin": guarded_server.url}
                ).status == 101
    refused(call(guarded_server, "ws", headers={**headers, "Origin": OTHER}), 403,
            "origin_not_allowed")
