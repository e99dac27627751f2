"""The TypeScript and Go AgentField SDKs' requests, replayed exactly, and what each SDK needs back.

Neither SDK can be installed here, so each request is rebuilt from the SDK's source in
github.com/Agent-Field/agentfield, each test naming the function it replays:

* TypeScript (axios + ws): ``sdk/typescript/src/memory/MemoryClient.ts`` (``buildHeaders``,
  ``set``/``get``/``delete``/``listKeys``, ``setVector`` → ``POST /vector/set``,
  ``deleteVector`` → ``POST /vector/delete``, ``searchVector``), ``MemoryInterface.ts`` (the
  ``get`` that walks the scopes) and ``MemoryEventClient.ts`` (the WebSocket: ``x-*`` and
  ``authorization`` headers only; ``history``);
* Go: ``sdk/go/agent/control_plane_memory_backend.go`` (``applyHeaders``, ``Set``/``Get``/
  ``Delete``/``List``, ``SetVector`` → ``POST /vector``, ``GetVector`` and ``DeleteVector`` →
  ``/vector/<url.PathEscape(key)>?scope=``, ``SearchVector``).

Headers as each sends them (Go's ``Header.Set`` canonicalises names, ``X-Session-Id``, and it
authenticates with ``Authorization: Bearer``; TypeScript sends the ids of its execution metadata
on every call), bodies byte for byte where that matters (Go's ``json.Marshal`` of a map sorts
keys and writes ``"metadata":null``, ``"filters":null``, ``"threshold"`` and ``"top_k":0``).

Everything but the WebSocket runs in process on the Flask test client, the vector replays on
every store. Also here: bad vector input is a 400 with a JSON error naming the mistake, never
a 500.
"""
from __future__ import annotations

import json
import queue
import signal
import threading
from typing import Any

import numpy as np
import pytest
import requests
import websocket
from flask.testing import FlaskClient
from websocket import ABNF

from .conftest import Server, every_store, wait_until

API = "/api/v1/memory"
ERROR_FIELDS = {"error", "message", "details", "code"}
RECORD_FIELDS = {"key", "data", "scope", "scope_id", "created_at", "updated_at", "version",
                 "expires_at"}
EVENT_FIELDS = {"id", "type", "timestamp", "scope", "scope_id", "key", "action", "data",
                "previous_data", "metadata"}


def send(client: FlaskClient, method: str, path: str, body: bytes | None,
         headers: dict[str, str], follow_redirects: bool = False):
    """One request as the SDK writes it: these exact body bytes and headers. (Go's http.Client
    follows redirects, 307/308 with the same method; axios in Node too.)"""
    return client.open(path, method=method, data=body, headers=headers,
                       follow_redirects=follow_redirects)


def js(value: Any) -> bytes:
    """``JSON.stringify``: insertion order, no spaces."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_of(response) -> dict:
    """A JSON error in the contract's shape."""
    assert response.mimetype == "application/json", response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= ERROR_FIELDS, body
    assert body["code"] == response.status_code and body["details"] == body["message"], body
    assert body["message"].strip(), body
    return body


# ------------------------------------------------------------------------------------------------
# TypeScript (axios)

TS_KEY = "k-ts"
#: the agent's defaultHeaders, and the ids of its execution metadata (no actor id: its walk then
#: asks for the actor scope without an X-Actor-ID)
TS_DEFAULT_HEADERS = {"X-API-Key": TS_KEY, "X-Custom": "c", "Other": "o"}
TS_METADATA = {"workflow": "wf-ts", "session": "sess-ts", "actor": None}
TS_HEADER = {"workflow": "X-Workflow-ID", "session": "X-Session-ID", "actor": "X-Actor-ID"}


def ts_headers(scope: str | None = None, scope_id: str | None = None,
               body: bool = True) -> dict[str, str]:
    """``MemoryClient.buildHeaders``: defaultHeaders, the metadata's ids, then the scope's own
    header set to its id; then what axios adds."""
    headers = {**TS_DEFAULT_HEADERS, "X-Workflow-ID": "wf-ts", "X-Session-ID": "sess-ts",
               "X-Run-ID": "run-ts", "X-Execution-ID": "exec-ts", "X-Agent-Node-ID": "node-ts"}
    scope_id = scope_id or (TS_METADATA.get(scope) if scope else None)
    if scope in TS_HEADER and scope_id:
        headers[TS_HEADER[scope]] = scope_id
    headers.update({"Accept": "application/json, text/plain, */*", "User-Agent": "axios/1.21.1",
                    "Accept-Encoding": "gzip, compress, deflate, br"})
    if body:
        headers["Content-Type"] = "application/json"
    return headers


def ts_walk(client: FlaskClient, key: str, first: tuple[str, str | None] | None = None
            ) -> tuple[Any, list[int]]:
    """``MemoryInterface.getWithFallback``: one explicit-scope ``get`` per candidate — the
    interface's own scope first, then workflow, session, actor, global with the metadata's
    ids, each once — until one answers with ``data``. Any status but 200 or 404 throws."""
    order: list[tuple[str, str | None]] = []
    for candidate in [first or ("workflow", TS_METADATA["workflow"])] + [
            (scope, TS_METADATA.get(scope)) for scope in ("workflow", "session", "actor")] + [
            ("global", "global")]:
        if candidate not in order:
            order.append(candidate)
    statuses = []
    for scope, scope_id in order:
        response = send(client, "POST", API + "/get", js({"key": key, "scope": scope}),
                        ts_headers(scope, scope_id))
        statuses.append(response.status_code)
        if response.status_code == 404:
            continue
        assert response.status_code == 200, (
            f"the TypeScript walk throws on {response.status_code} for scope {scope} "
            f"(id {scope_id!r}): {response.get_data(as_text=True)}")
        data = response.get_json().get("data")
        if data is not None:
            return data, statuses
    return None, statuses


@pytest.fixture
def ts(db_url, app_factory) -> FlaskClient:  # the app stops before its database goes
    return app_factory(MEMORY_API_KEY=TS_KEY, MEMORY_DB_URL=db_url).test_client()


def test_ts_set_get_delete_list(ts):
    # MemoryClient.set goes to the interface's scope, named in the body
    response = send(ts, "POST", API + "/set", js({"key": "k", "data": {"a": 1},
                                                  "scope": "workflow"}), ts_headers("workflow"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert (response.get_json()["scope"], response.get_json()["scope_id"]) == ("workflow", "wf-ts")

    # MemoryInterface.get walks the scopes; every miss must be a 404, including the actor scope whose id is unknown
    assert ts_walk(ts, "k") == ({"a": 1}, [200])
    send(ts, "POST", API + "/set", js({"key": "g", "data": "G", "scope": "global"}),
         ts_headers("global"))
    assert ts_walk(ts, "g") == ("G", [404, 404, 404, 200])
    assert ts_walk(ts, "absent") == (None, [404, 404, 404, 404])
    # globalScope.get walks too, starting with global
    assert ts_walk(ts, "k", first=("global", "global")) == ({"a": 1}, [404, 200])

    # session(S).get: its scope first, with X-Session-ID: S
    send(ts, "POST", API + "/set", js({"key": "s", "data": 2, "scope": "session"}),
         ts_headers("session", "s-9"))
    assert ts_walk(ts, "s", first=("session", "s-9")) == (2, [200])
    assert ts_walk(ts, "s") == (None, [404, 404, 404, 404])  # not the metadata's session
    assert ts_walk(ts, "k", first=("session", "s-9")) == ({"a": 1}, [404, 200])

    # MemoryClient.listKeys maps an array of records to their keys
    response = send(ts, "GET", API + "/list?scope=workflow", None,
                    ts_headers("workflow", body=False))
    assert response.status_code == 200 and isinstance(response.get_json(), list)
    assert [record["key"] for record in response.get_json()] == ["k"]

    # MemoryClient.delete: 2xx also for a key that is already gone (a 404 would throw)
    for _ in range(2):
        response = send(ts, "POST", API + "/delete", js({"key": "k", "scope": "workflow"}),
                        ts_headers("workflow"))
        assert response.status_code == 204, response.get_data(as_text=True)
    assert ts_walk(ts, "k") == (None, [404, 404, 404, 404])


def test_ts_walk_needs_404_for_an_explicit_scope_without_its_id(ts):
    for scope in ("workflow", "session", "actor"):
        headers = ts_headers()
        headers.pop(TS_HEADER[scope], None)
        response = send(ts, "POST", API + "/get", js({"key": "k", "scope": scope}), headers)
        assert response.status_code == 404, (scope, response.get_data(as_text=True))
        assert error_of(response)["error"] == "not_found"


@every_store
def test_ts_vectors(ts):
    # MemoryClient.setVector, metadata given, null or left out; embeddings are JS numbers
    for body, scope in [({"key": "v1", "embedding": [1, 0], "metadata": {"t": "x"},
                          "scope": "workflow"}, "workflow"),
                        ({"key": "v2", "embedding": [0.6, 0.8], "metadata": None,
                          "scope": "workflow"}, "workflow"),
                        ({"key": "v3", "embedding": [0.5], "scope": "global"}, "global")]:
        response = send(ts, "POST", API + "/vector/set", js(body), ts_headers(scope))
        assert response.status_code == 200, response.get_data(as_text=True)
        answer = response.get_json()
        assert answer["key"] == body["key"] and answer["scope"] == scope
        assert answer["scope_id"] == ("wf-ts" if scope == "workflow" else "global")

    # MemoryClient.searchVector returns the answer as is: an array (scope from the headers when the
    # body names none)
    def search(body: dict) -> list[dict]:
        response = send(ts, "POST", API + "/vector/search", js(body), ts_headers())
        assert response.status_code == 200, response.get_data(as_text=True)
        results = response.get_json()
        assert isinstance(results, list), results
        return results

    hits = search({"query_embedding": [1, 0], "top_k": 3, "filters": {"t": "x"}})
    assert [(h["key"], h["scope"], h["scope_id"]) for h in hits] == [("v1", "workflow", "wf-ts")]
    hits = search({"query_embedding": [1, 0], "top_k": 10})
    assert [h["key"] for h in hits] == ["v1", "v2"]
    assert [h["score"] for h in hits] == pytest.approx([1.0, 0.6])
    assert hits[1]["metadata"] == {}
    assert [h["key"] for h in search({"query_embedding": [0.5], "top_k": 10,
                                      "scope": "global"})] == ["v3"]

    # MemoryClient.deleteVector, by body scope
    for key, scope in [("v1", "workflow"), ("v3", "global"), ("v3", "global")]:
        response = send(ts, "POST", API + "/vector/delete", js({"key": key, "scope": scope}),
                        ts_headers(scope))
        assert response.status_code == 204, response.get_data(as_text=True)
    assert [h["key"] for h in search({"query_embedding": [1, 0], "top_k": 10})] == ["v2"]
    assert search({"query_embedding": [0.5], "top_k": 10, "scope": "global"}) == []


def test_ts_history(ts):
    for key, scope in [("a1", "global"), ("b", "global"), ("c", "global"), ("a2", "workflow")]:
        send(ts, "POST", API + "/set", js({"key": key, "data": 1, "scope": scope}),
             ts_headers(scope))
    # MemoryEventClient.history (toISOString: milliseconds and Z)
    query = ("?limit=100&patterns=a*,b&since=2026-01-01T00:00:00.000Z&scope=global"
             "&scope_id=global")
    response = send(ts, "GET", API + "/events/history" + query, None, ts_headers(body=False))
    assert response.status_code == 200, response.get_data(as_text=True)
    events = response.get_json()
    assert [(e["key"], e["scope"]) for e in events] == [("a1", "global"), ("b", "global")]
    assert all(set(e) == EVENT_FIELDS for e in events)
    assert events[0]["metadata"] == {"agent_id": "node-ts", "actor_id": "",
                                     "workflow_id": "wf-ts"}
    future = query.replace("2026-01-01", "2999-01-01")
    assert send(ts, "GET", API + "/events/history" + future, None,
                ts_headers(body=False)).get_json() == []


# ------------------------------------------------------------------------------------------------
# Go (net/http)

GO_TOKEN = "tok-go"
GO_IDS = {"session": "sess-go", "actor": "actor-go", "workflow": "wf-go"}


def go_headers(scope: str, scope_id: str | None = None, token: str | None = GO_TOKEN
               ) -> dict[str, str]:
    """``applyHeaders``: the names as Go writes them, one scope header (none for global)."""
    headers = {"User-Agent": "Go-http-client/1.1", "Content-Type": "application/json",
               "Accept": "application/json", "X-Agent-Node-Id": "node-go",
               "Accept-Encoding": "gzip"}
    if token:
        headers["Authorization"] = "Bearer " + token
    name = {"workflow": "X-Workflow-Id", "session": "X-Session-Id", "actor": "X-Actor-Id"}
    if scope in name:
        headers[name[scope]] = scope_id or GO_IDS[scope]
    return headers


@pytest.fixture
def go(db_url, app_factory) -> FlaskClient:  # the app stops before its database goes
    return app_factory(MEMORY_API_KEY=GO_TOKEN, MEMORY_DB_URL=db_url).test_client()


def go_fields(record: Any) -> dict:
    """What ``memoryAPIResponse`` decodes: string key/scope/scope_id/created_at/updated_at
    (null would do; a number would fail the whole decode), and ``data``."""
    assert isinstance(record, dict) and "data" in record, record
    for field in ("key", "scope", "scope_id", "created_at", "updated_at"):
        assert isinstance(record.get(field), (str, type(None))), (field, record)
    return record


def go_record(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return go_fields(response.get_json())


def test_go_bearer_token(go):
    body = b'{"key":"k","scope":"session"}'
    assert send(go, "POST", API + "/get", body, go_headers("session")).status_code == 404
    for token in (None, "wrong"):
        response = send(go, "POST", API + "/get", body, go_headers("session", token=token))
        assert response.status_code == 401 and error_of(response)


def test_go_memory(go):
    # Set: json.Marshal sorts the keys and adds no newline
    response = send(go, "POST", API + "/set", b'{"data":{"a":1},"key":"k","scope":"session"}',
                    go_headers("session"))
    assert (go_record(response)["scope"], go_record(response)["scope_id"]) == \
        ("session", "sess-go")
    response = send(go, "POST", API + "/set", b'{"data":false,"key":"f","scope":"session"}',
                    go_headers("session"))
    assert go_record(response)["data"] is False

    # Get; 404 is "not found"
    record = go_record(send(go, "POST", API + "/get", b'{"key":"k","scope":"session"}',
                            go_headers("session")))
    assert record["data"] == {"a": 1} and set(record) == RECORD_FIELDS
    assert send(go, "POST", API + "/get", b'{"key":"k","scope":"session"}',
                go_headers("session", "another-session")).status_code == 404
    assert send(go, "POST", API + "/get", b'{"key":"nope","scope":"session"}',
                go_headers("session")).status_code == 404

    # UserScope() is the actor scope
    response = send(go, "POST", API + "/set", b'{"data":"blue","key":"color","scope":"actor"}',
                    go_headers("actor"))
    assert (go_record(response)["scope"], go_record(response)["scope_id"]) == \
        ("actor", "actor-go")
    send(go, "POST", API + "/set", b'{"data":[1],"key":"g","scope":"global"}',
         go_headers("global"))

    # GlobalScope().List: an array of records with string fields
    response = send(go, "GET", API + "/list?scope=global", None, go_headers("global"))
    assert response.status_code == 200 and isinstance(response.get_json(), list)
    for item in response.get_json():
        go_fields(item)
    assert [item["key"] for item in response.get_json()] == ["g"]

    # Delete: 204 (404 would do too), also when nothing is there
    for _ in range(2):
        response = send(go, "POST", API + "/delete", b'{"key":"k","scope":"session"}',
                        go_headers("session"))
        assert response.status_code == 204, response.get_data(as_text=True)
    assert send(go, "POST", API + "/get", b'{"key":"k","scope":"session"}',
                go_headers("session")).status_code == 404

    # The events carry the Go agent's node id from X-Agent-Node-Id.
    response = send(go, "GET", API + "/events/history?limit=100", None, go_headers("global"))
    metadata = {(e["key"], e["action"]): e["metadata"] for e in response.get_json()}
    assert metadata[("k", "set")] == {"agent_id": "node-go", "actor_id": "", "workflow_id": ""}
    assert metadata[("color", "set")] == {"agent_id": "node-go", "actor_id": "actor-go",
                                          "workflow_id": ""}
    assert ("k", "delete") in metadata and len(response.get_json()) == 5  # one delete event


ESCAPED = "a%2Fb%20c"  # url.PathEscape("a/b c")


def go_vector(response) -> tuple[list[float], dict | None]:
    """What GetVector decodes: ``{embedding []float32, metadata map}``."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body["embedding"], list)
    assert all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in body["embedding"])
    assert isinstance(body["metadata"], (dict, type(None))), body
    return body["embedding"], body["metadata"]


@every_store
def test_go_vectors(go):
    # SetVector, the RESTful route; float32 values; "metadata":null when nil
    for body in [b'{"embedding":[1,0],"key":"a/b c","metadata":null,"scope":"session"}',
                 b'{"embedding":[0.6,0.8],"key":"v2","metadata":{"t":"x"},"scope":"session"}',
                 b'{"embedding":[0.1,-0.33333334],"key":"v3","metadata":null,"scope":"session"}']:
        response = send(go, "POST", API + "/vector", body, go_headers("session"))
        assert response.status_code == 200, response.get_data(as_text=True)

    # GetVector, the key path-escaped; 404 is "not found"
    path = f"{API}/vector/{ESCAPED}?scope=session"
    assert go_vector(send(go, "GET", path, None, go_headers("session"))) == ([1.0, 0.0], {})
    embedding, metadata = go_vector(send(go, "GET", f"{API}/vector/v3?scope=session", None,
                                         go_headers("session")))
    assert np.float32(embedding).tolist() == np.float32([0.1, -0.33333334]).tolist()
    assert metadata == {}
    assert go_vector(send(go, "GET", f"{API}/vector/v2?scope=session", None,
                          go_headers("session")))[1] == {"t": "x"}
    for missing in [f"{API}/vector/nope?scope=session",
                    f"{API}/vector/{ESCAPED}?scope=global"]:
        assert send(go, "GET", missing, None, go_headers(missing.rsplit("=")[-1])
                    ).status_code == 404
    assert send(go, "GET", path, None, go_headers("session", "other")).status_code == 404

    # SearchVector with zero options: top_k 0 means 10, filters null, threshold ignored
    for number in range(12):
        body = json.dumps({"embedding": [1, number / 10], "key": f"n{number:02}",
                           "metadata": None, "scope": "session"},
                          separators=(",", ":"), sort_keys=True).encode()
        send(go, "POST", API + "/vector", body, go_headers("session"))
    response = send(go, "POST", API + "/vector/search",
                    b'{"filters":null,"query_embedding":[1,0],"scope":"session","threshold":0,'
                    b'"top_k":0}', go_headers("session"))
    assert response.status_code == 200, response.get_data(as_text=True)
    hits = response.get_json()
    assert len(hits) == 10 and hits[0]["key"] in ("a/b c", "n00")
    for hit in hits:
        assert isinstance(hit["key"], str) and isinstance(hit["scope"], str)
        assert isinstance(hit["scope_id"], str) and isinstance(hit["metadata"], (dict, type(None)))
        assert isinstance(hit["score"], float) and not isinstance(hit["score"], bool)
    # opts.Scope = global: the body says global while the header stays the session's
    for body in [b'{"embedding":[1,0],"key":"g1","metadata":{"t":"x"},"scope":"global"}',
                 b'{"embedding":[0,1],"key":"g2","metadata":{"t":"x"},"scope":"global"}',
                 b'{"embedding":[1,1],"key":"g3","metadata":{"t":"y"},"scope":"global"}']:
        send(go, "POST", API + "/vector", body, go_headers("global"))
    response = send(go, "POST", API + "/vector/search",
                    b'{"filters":{"t":"x"},"query_embedding":[1,0],"scope":"global",'
                    b'"threshold":0.5,"top_k":3}', go_headers("session"))
    hits = response.get_json()
    # the control plane ignores threshold: g2 (score 0) is still a hit
    assert [(h["key"], h["scope"], h["scope_id"]) for h in hits] == [
        ("g1", "global", "global"), ("g2", "global", "global")]
    assert [h["score"] for h in hits] == pytest.approx([1.0, 0.0])

    # DeleteVector, path-escaped; 204 (404 would do too), also when already gone
    for _ in range(2):
        response = send(go, "DELETE", path, None, go_headers("session"))
        assert response.status_code == 204, response.get_data(as_text=True)
    assert send(go, "GET", path, None, go_headers("session")).status_code == 404
    assert send(go, "GET", f"{API}/vector/v2?scope=session", None,
                go_headers("session")).status_code == 200


#: keys as Go's url.PathEscape writes them into GetVector's and DeleteVector's path
GO_PATH_KEYS = {"a/b c": "a%2Fb%20c", "/leading": "%2Fleading", "a//b": "a%2F%2Fb",
                "trailing/": "trailing%2F", "line\nbreak": "line%0Abreak", "100%": "100%25",
                "?q#f": "%3Fq%23f", "\U0001F600": "%F0%9F%98%80", "x=1&y": "x=1&y"}


@every_store
@pytest.mark.parametrize("key", GO_PATH_KEYS, ids=[repr(k) for k in GO_PATH_KEYS])
def test_go_vector_path_reaches_its_own_vector(go, key):
    """GetVector and DeleteVector put the key in the path; whatever the key, that path must
    reach that vector, and never, through a redirect the Go client follows, another one."""
    neighbour = key.strip("/").replace("//", "/").replace("\n", "") or "x"
    for number, name in enumerate([key, neighbour] if neighbour != key else [key]):
        body = json.dumps({"embedding": [1, number], "key": name, "metadata": {"n": number},
                           "scope": "session"}, separators=(",", ":"), sort_keys=True).encode()
        assert send(go, "POST", API + "/vector", body, go_headers("session")).status_code == 200
    path = f"{API}/vector/{GO_PATH_KEYS[key]}?scope=session"
    problems = []

    def where(response) -> str:
        return (f"{response.status_code} {response.get_data(as_text=True)[:120]!r}"
                + (f", redirected to {[r.request.path for r in response.history]}"
                   if response.history else ""))

    response = send(go, "GET", path, None, go_headers("session"), follow_redirects=True)
    if response.status_code != 200 or response.get_json().get("key") != key:
        problems.append(f"GetVector: GET {path} -> {where(response)}")
    else:
        assert go_vector(response) == ([1.0, 0.0], {"n": 0})
    response = send(go, "DELETE", path, None, go_headers("session"), follow_redirects=True)
    if response.status_code != 204 or response.history:
        problems.append(f"DeleteVector: DELETE {path} -> {where(response)}")
    response = send(go, "POST", API + "/vector/search", b'{"filters":null,"query_embedding":'
                    b'[1,0],"scope":"session","threshold":0,"top_k":1000}', go_headers("session"))
    left = {hit["key"] for hit in response.get_json()}
    if key in left:
        problems.append(f"after DeleteVector({key!r}) the vector is still there "
                        f"(and Go took the answer for success)")
    if neighbour != key and neighbour not in left:
        problems.append(f"after DeleteVector({key!r}) the vector {neighbour!r} is gone")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# MemoryEventClient's WebSocket (TypeScript, ws): headers only, no query, no subprotocol; real server

WS_PATH = API + "/events/ws"


class PlainSocket:
    """A WebSocket client as the TypeScript SDK opens it: only ``x-*``/``authorization``
    headers, no query, no ``Sec-WebSocket-Protocol``, no Origin. (ws also offers
    permessage-deflate, which websocket-client cannot speak; the Python SDK's tests run with
    it.) A thread reads every frame."""

    def __init__(self, server: Server, headers: dict[str, str]) -> None:
        url = "ws" + server.url.removeprefix("http") + WS_PATH
        self.conn = websocket.create_connection(url, header=headers, timeout=10,
                                                suppress_origin=True, enable_multithread=True)
        self.handshake = {k.lower(): v for k, v in self.conn.getheaders().items()}
        self.conn.settimeout(None)
        self.frames: queue.Queue[tuple[int, bytes]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                opcode, frame = self.conn.recv_data_frame(control_frame=True)
                if opcode not in (ABNF.OPCODE_PING, ABNF.OPCODE_PONG):
                    self.frames.put((opcode, frame.data))
                if opcode == ABNF.OPCODE_CLOSE:
                    return
        except (websocket.WebSocketException, OSError) as exc:
            self.frames.put((-1, repr(exc).encode()))

    def frame(self, timeout: float = 10) -> tuple[int, bytes]:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no WebSocket frame within {timeout}s") from None

    def events_until(self, key: str) -> list[dict]:
        """Every message up to the event for ``key``; each must be an event."""
        found = []
        while not found or found[-1]["key"] != key:
            opcode, data = self.frame()
            assert opcode == ABNF.OPCODE_TEXT, (opcode, data)
            message = json.loads(data)
            assert isinstance(message, dict) and set(message) == EVENT_FIELDS, message
            assert message["type"] == "memory_change" and message["key"], message
            found.append(message)
        return found


def test_ts_websocket_gets_only_event_frames(server_factory):
    server = server_factory(env={"MEMORY_API_KEY": TS_KEY, "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    sockets = [PlainSocket(server, {"X-API-Key": TS_KEY, "X-Custom": "c"}),
               PlainSocket(server, {"Authorization": f"Bearer {TS_KEY}"})]
    for plain in sockets:
        assert "sec-websocket-protocol" not in plain.handshake, plain.handshake  # ws would fail
    wait_until(lambda: server.metric("memory_events_subscribers", transport="ws") == 2,
               message="both sockets subscribed")
    http = requests.Session()

    def request(method: str, path: str, body: bytes | None, headers: dict[str, str]
                ) -> tuple[int, Any]:
        """Status and JSON body; the response is closed, so that ``http.close()`` below leaves
        no idle keep-alive connection, which would hold gunicorn's worker on SIGTERM for its
        whole keep-alive time."""
        with http.request(method, server.url + path, data=body, headers=headers,
                          timeout=10) as response:
            return response.status_code, response.json() if response.content else None

    # Changes, and around them requests that change nothing: none of those may send a frame.
    expected = []
    for key, data in [("task", {"step": 1}), ("task", {"step": 2})]:
        assert request("POST", API + "/set", js({"key": key, "data": data, "scope": "workflow"}),
                       ts_headers("workflow"))[0] == 200
        expected.append((key, "set"))
    # Go's vector calls through gunicorn: the path-escaped key arrives as "a/b c"
    vector = f"{API}/vector/{ESCAPED}?scope=session"
    go_auth = go_headers("session", token=TS_KEY)
    assert request("POST", API + "/vector", b'{"embedding":[1,0],"key":"a/b c",'
                   b'"metadata":null,"scope":"session"}', go_auth)[0] == 200
    status, found = request("GET", vector, None, go_auth)
    assert status == 200 and found["key"] == "a/b c", found
    assert found["embedding"] == [1.0, 0.0]
    assert request("DELETE", vector, None, go_auth)[0] == 204
    assert request("GET", vector, None, go_auth)[0] == 404
    assert request("POST", API + "/delete", js({"key": "never", "scope": "workflow"}),
                   ts_headers("workflow"))[0] == 204
    assert request("POST", API + "/set", js({"key": "task", "data": 0, "scope": "workflow",
                                             "if_version": "0"}), ts_headers("workflow"))[0] == 409
    assert request("POST", API + "/set", js({"key": "x"}), ts_headers())[0] == 400
    assert request("POST", API + "/delete", js({"key": "task", "scope": "workflow"}),
                   ts_headers("workflow"))[0] == 204
    expected.append(("task", "delete"))
    assert request("POST", API + "/set", b'{"data":true,"key":"end","scope":"session"}',
                   go_auth)[0] == 200
    expected.append(("end", "set"))

    log = request("GET", API + "/events/history?limit=1000", None, ts_headers(body=False))[1]
    for plain in sockets:
        seen = plain.events_until("end")
        assert [(e["key"], e["action"]) for e in seen] == expected
        assert seen == log  # each frame is the logged event, exactly

    # SIGTERM: a plain client gets no final message, only the close: 1001 with the resume id
    http.close()
    assert server.stop(signal.SIGTERM) == 0
    for plain in sockets:
        opcode, data = plain.frame()
        assert opcode == ABNF.OPCODE_CLOSE, (opcode, data)
        code = int.from_bytes(data[:2], "big")
        assert code == 1001, data
        assert json.loads(data[2:]) == {"type": "shutdown", "last_id": log[-1]["id"]}


# ------------------------------------------------------------------------------------------------
# bad vector input: 400 with a JSON error, never a 500

#: (raw JSON text of the embedding, error codes allowed); NaN, Infinity and 1e400 are not JSON
#: (Python's parser would take them), so a refusal of the whole body is right for those too
NOT_JSON = {"invalid_json", "invalid_{f}"}
BAD_EMBEDDINGS = {
    "empty": ("[]", {"invalid_{f}"}),
    "NaN": ("[NaN]", NOT_JSON),
    "NaN-second": ("[1, NaN]", NOT_JSON),
    "Infinity": ("[Infinity]", NOT_JSON),
    "-Infinity": ("[-Infinity]", NOT_JSON),
    "1e400": ("[1e400]", NOT_JSON),
    "1e39-float32-overflow": ("[1e39]", {"invalid_{f}"}),
    "-1e39": ("[0, -1e39]", {"invalid_{f}"}),
    "16001-dimensions": ("[" + ",".join(["0.5"] * 16001) + "]", {"invalid_{f}"}),
    "string": ('["1"]', {"invalid_{f}"}),
    "string-second": ('[1, "2"]', {"invalid_{f}"}),
    "true": ("[true]", {"invalid_{f}"}),
    "null-inside": ("[null]", {"invalid_{f}"}),
    "nested": ("[[1]]", {"invalid_{f}"}),
    "object": ('{"0": 1}', {"invalid_{f}"}),
    "text": ('"1,2"', {"invalid_{f}"}),
    "number": ("1", {"invalid_{f}"}),
    "null": ("null", {"missing_{f}", "invalid_{f}"}),
    "missing": (None, {"missing_{f}", "invalid_{f}"}),
}
SET_ROUTES = ["/vector", "/vector/set"]


def check_refused(response, codes: set[str], field: str) -> None:
    assert response.status_code == 400, (response.status_code, response.get_data(as_text=True))
    body = error_of(response)
    assert body["error"] in codes, body
    if body["error"] != "invalid_json":  # a body that is not JSON names no field
        assert f"'{field}'" in body["message"], body


def nothing_stored(client: FlaskClient) -> None:
    headers = {"X-Workflow-ID": "wf"}
    assert client.get(API + "/vector/x", headers=headers).status_code == 404
    response = client.post(API + "/vector/search", json={"query_embedding": [1.0, 0.0]},
                           headers=headers)
    assert response.status_code == 200 and response.get_json() == []


@pytest.mark.parametrize("route", SET_ROUTES)
@pytest.mark.parametrize("embedding, codes", BAD_EMBEDDINGS.values(), ids=BAD_EMBEDDINGS)
def test_bad_embedding_is_refused(client, route, embedding, codes):
    body = '{"key": "x"' + (f', "embedding": {embedding}' if embedding is not None else "") + "}"
    response = client.post(API + route, data=body, content_type="application/json",
                           headers={"X-Workflow-ID": "wf"})
    check_refused(response, {c.format(f="embedding") for c in codes}, "embedding")
    nothing_stored(client)


@pytest.mark.parametrize("embedding, codes", BAD_EMBEDDINGS.values(), ids=BAD_EMBEDDINGS)
def test_bad_query_embedding_is_refused(client, embedding, codes):
    body = ('{"top_k": 3' + (f', "query_embedding": {embedding}' if embedding is not None else "")
            + "}")
    response = client.post(API + "/vector/search", data=body, content_type="application/json",
                           headers={"X-Workflow-ID": "wf"})
    check_refused(response, {c.format(f="query_embedding") for c in codes}, "query_embedding")


BAD_FIELDS = [
    # (route, body, error codes, the field the message names)
    ("/vector", '{"embedding": [1]}', {"missing_key"}, "key"),
    ("/vector/set", '{"embedding": [1]}', {"missing_key"}, "key"),
    ("/vector/set", '{"key": "", "embedding": [1]}', {"invalid_key"}, "key"),
    ("/vector/set", '{"key": 5, "embedding": [1]}', {"invalid_key"}, "key"),
    ("/vector/set", '{"key": "x", "embedding": [1], "metadata": [1]}', {"invalid_metadata"},
     "metadata"),
    ("/vector/set", '{"key": "x", "embedding": [1], "metadata": "x"}', {"invalid_metadata"},
     "metadata"),
    ("/vector/delete", "{}", {"missing_key"}, "key"),
    ("/vector/search", '{"query_embedding": [1], "filters": [1]}', {"invalid_filters"},
     "filters"),
    ("/vector/search", '{"query_embedding": [1], "filters": "t=x"}', {"invalid_filters"},
     "filters"),
    ("/vector/search", '{"query_embedding": [1], "filters": 5}', {"invalid_filters"}, "filters"),
    ("/vector/search", '{"query_embedding": [1], "filters": true}', {"invalid_filters"},
     "filters"),
    ("/vector/search", '{"query_embedding": [1], "top_k": 1001}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": "x"}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": "5"}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": true}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": 1.5}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": [1]}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": 1e400}', {"invalid_json",
                                                                    "invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "top_k": NaN}', {"invalid_json",
                                                                  "invalid_top_k"}, "top_k"),
    ("/vector/search", '[{"query_embedding": [1]}]', {"invalid_body"}, "body"),
    ("/vector/search", "{", {"invalid_json"}, "body"),
    ("/vector/search", '{"query_embedding": [1], "top_k": 1e300}', {"invalid_top_k"}, "top_k"),
    ("/vector/search", '{"query_embedding": [1], "scope": "session"}', {"missing_scope_id"},
     "scope_id"),
    ("/vector/set", '{"key": "x", "embedding": [1], "scope": "actor"}', {"missing_scope_id"},
     "scope_id"),
    ("/vector/set", '{"key": "x", "embedding": [1], "scope_id": 5}', {"invalid_scope_id"},
     "scope_id"),
    ("/vector/delete", '{"key": ""}', {"invalid_key"}, "key"),
    ("DELETE /vector/namespace", "{}", {"missing_namespace"}, "namespace"),
    ("DELETE /vector/namespace", '{"namespace": ""}', {"invalid_namespace"}, "namespace"),
    ("DELETE /vector/namespace", '{"namespace": 5}', {"invalid_namespace"}, "namespace"),
    ("DELETE /vector/namespace", '{"namespace": "x", "scope": "session"}',
     {"missing_scope_id"}, "scope_id"),
]


@pytest.mark.parametrize("route, body, codes, field", BAD_FIELDS,
                         ids=[f"{r}:{b[:40]}" for r, b, _, _ in BAD_FIELDS])
def test_bad_vector_request_is_refused(client, route, body, codes, field):
    """``route`` is a path, for ``POST``, or a method and a path."""
    method, _, path = route.rpartition(" ")
    response = client.open(API + path, method=method or "POST", data=body,
                           content_type="application/json", headers={"X-Workflow-ID": "wf"})
    assert response.status_code == 400, (response.status_code, response.get_data(as_text=True))
    error = error_of(response)
    assert error["error"] in codes, error
    if field != "body" and error["error"] != "invalid_json":
        assert f"'{field}'" in error["message"], error
    nothing_stored(client)


def test_vector_input_at_the_limits_is_accepted(client):
    headers = {"X-Workflow-ID": "wf"}
    largest = [3.4e38, -3.4e38, 5e-324, 0]
    for key, embedding in [("wide", [0.5] * 16000), ("large", largest), ("ints", [1, 2])]:
        response = client.post(API + "/vector/set", json={"key": key, "embedding": embedding},
                               headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert len(client.get(API + "/vector/wide", headers=headers).get_json()["embedding"]) == 16000
    for top_k in [1000, 1, 0, -5, 1.0, None]:
        response = client.post(API + "/vector/search", headers=headers,
                               json={"query_embedding": [1, 2], "top_k": top_k,
                                     "filters": None})
        assert response.status_code == 200, (top_k, response.get_data(as_text=True))
        assert [hit["key"] for hit in response.get_json()] == ["ints"]
