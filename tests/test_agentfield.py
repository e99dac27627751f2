"""The real AgentField Python SDK (agentfield==0.1.144) against a real server.

The SDK runs in its own virtualenv, ``.venv-agentfield`` (from
``tests/agentfield/requirements.txt``), apart from the service's, as ``tests/agentfield/driver.py``:
the test sends it one JSON command a line and reads answers and event callbacks back, each wait
bounded. Without that virtualenv these tests fail, saying how to make it.

What an agent does with its memory, end to end: set/get/exists/delete/list_keys in every scope,
vectors (set, cosine, dot and l2 search with filters and ``top_k``, delete in one scope only), and a
``"*"`` subscription that sees every change and nothing else, also across a server restart.
"""
from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import requests

from .conftest import ROOT, Server, every_store, wait_until

SDK_VENV = ROOT / ".venv-agentfield"
SDK_PYTHON = SDK_VENV / "bin" / "python"
DRIVER = Path(__file__).resolve().parent / "agentfield" / "driver.py"
SDK_VERSION = "0.1.144"
CREATE_VENV = ("python3 -m venv .venv-agentfield && "
               ".venv-agentfield/bin/pip install -r tests/agentfield/requirements.txt")
API = "/api/v1/memory"

#: the execution context of the agent under test: every SDK request carries these ids
CONTEXT = {"run_id": "run-1", "execution_id": "exec-1", "workflow_id": "wf-1",
           "session_id": "sess-1", "actor_id": "actor-1", "agent_node_id": "node-1"}
#: the metadata the events of the SDK's own writes carry, from those headers
SDK_METADATA = {"agent_id": "node-1", "actor_id": "actor-1", "workflow_id": "wf-1"}
ABSENT = "<absent>"  # a default no stored value equals


class SdkError(AssertionError):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


class Sdk:
    """One SDK process: its memory objects bound to ``CONTEXT`` and ``base_url``."""

    def __init__(self, base_url: str, log_path: Path, api_key: str | None = None,
                 context: dict[str, str] | None = None) -> None:
        config = {"base_url": base_url, "api_key": api_key, "context": context or CONTEXT}
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.pop("PYTHONPATH", None)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen([str(SDK_PYTHON), str(DRIVER), json.dumps(config)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log, env=env, cwd=ROOT, text=True,
                                        bufsize=1)
        self._answers: queue.Queue[dict] = queue.Queue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.callbacks: list[dict] = []  # {"callback": label, "event": {...}}, as they ran
        self._next_id = 0
        self._sending = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._answer(timeout=60, what="the SDK driver to start")
        assert ready.get("ready"), ready
        self.versions = ready

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "callback" in message:
                with self._changed:
                    self.callbacks.append(message)
                    self._changed.notify_all()
            else:
                self._answers.put(message)
        self._answers.put({"exited": self.process.wait()})

    def _answer(self, timeout: float, what: str) -> dict:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                 f"SDK log: {self.log()[-2000:]}") from None
        if "exited" in answer:
            raise AssertionError(f"the SDK driver exited ({answer['exited']}) waiting for "
                                 f"{what}; its log: {self.log()[-4000:]}")
        return answer

    def command(self, op: str, timeout: float = 30, agent: str | None = None,
                **fields: Any) -> Any:
        with self._sending:
            self._next_id += 1
            message = {"id": self._next_id, "op": op, **fields}
            if agent is not None:
                message["as"] = agent
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
            answer = self._answer(timeout, f"{op} {fields}")
        assert answer.get("id") == message["id"], answer
        if not answer["ok"]:
            raise SdkError(answer["error"], answer["message"])
        return answer["value"]

    def call(self, target: Any, method: str, *args: Any, agent: str | None = None,
             **kwargs: Any) -> Any:
        """``target.method(*args, **kwargs)`` in the SDK; an exception there raises SdkError."""
        return self.command("call", agent=agent, target=target, method=method, args=list(args),
                            kwargs=kwargs)

    def on_change(self, target: Any, patterns: str | list[str], label: str) -> None:
        self.command("on_change", target=target, patterns=patterns, label=label)

    def subscribe(self, patterns: str | list[str], label: str, **scope: str) -> None:
        self.command("subscribe", patterns=patterns, label=label, **scope)

    def other_agent(self, name: str, **config: Any) -> Callable[..., Any]:
        """Another agent's objects in the same process (no second interpreter start), built
        from the first one's config with ``config`` (``api_key``, ``context``) replacing parts;
        returns its ``call``."""
        self.command("open", name=name, config=config)
        return lambda target, method, *args, **kwargs: self.call(target, method, *args,
                                                                 agent=name, **kwargs)

    def seen(self, label: str) -> list[dict]:
        with self._lock:
            return [c["event"] for c in self.callbacks if c["callback"] == label]

    def wait_for_key(self, label: str, key: str, timeout: float = 15) -> list[dict]:
        """Every event ``label``'s callback got, once one has had ``key``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(c["callback"] == label and c["event"]["key"] == key
                          for c in self.callbacks):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"callback {label!r} never saw key {key!r} within "
                                         f"{timeout}s; it saw {self.callbacks}; "
                                         f"SDK log: {self.log()[-2000:]}")
                self._changed.wait(left)
        return self.seen(label)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()  # the driver exits when its stdin ends
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@pytest.fixture
def sdk_factory(tmp_path: Path) -> Iterator[Callable[..., Sdk]]:
    """Start SDK processes (each stopped when the test ends). Without the SDK's virtualenv the
    test fails, saying how to make it: these tests are never skipped."""
    started: list[Sdk] = []

    def start(server: Server, **kwargs: Any) -> Sdk:
        if not SDK_PYTHON.exists():
            pytest.fail(f"The AgentField SDK's virtualenv is missing: {SDK_PYTHON} does not "
                        f"exist. Create it in the project root with:\n    {CREATE_VENV}",
                        pytrace=False)
        sdk = Sdk(server.url, tmp_path / f"sdk-{len(started)}.log", **kwargs)
        started.append(sdk)
        assert sdk.versions["agentfield"] == SDK_VERSION, (
            f"{SDK_PYTHON} has agentfield {sdk.versions['agentfield']}, not {SDK_VERSION}; "
            f"recreate it with: {CREATE_VENV}")
        return sdk

    yield start
    for sdk in started:
        sdk.close()


# ------------------------------------------------------------------------------------------------
# plain HTTP looks at what the SDK did


def stored(server: Server, scope: str, scope_id: str, key: str) -> dict | None:
    """The record under exactly that scope, read with plain HTTP (no headers)."""
    response = requests.post(server.url + API + "/get", timeout=10,
                             json={"key": key, "scope": scope, "scope_id": scope_id})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def listed(server: Server, scope: str, scope_id: str) -> list[str]:
    response = requests.get(server.url + API + "/list", timeout=10,
                            params={"scope": scope, "scope_id": scope_id})
    assert response.status_code == 200, response.text
    return [record["key"] for record in response.json()]


def history(server: Server, **params: Any) -> list[dict]:
    response = requests.get(server.url + API + "/events/history", timeout=10,
                            params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------------------------
# memory

#: (SDK target, the scope and id its writes must land in); the ids differ from the context's
#: headers, so a scoped client's own id must win over them
MEMORY_TARGETS = [
    ("mem", ("workflow", "wf-1")),  # no scope: the SDK always sends X-Workflow-ID
    (["workflow", "w-9"], ("workflow", "w-9")),
    (["session", "s-9"], ("session", "s-9")),
    (["actor", "a-9"], ("actor", "a-9")),
    ("global", ("global", "global")),
]


@every_store
def test_memory_calls_work_in_every_scope(server, sdk_factory):
    sdk = sdk_factory(server)
    for target, (scope, scope_id) in MEMORY_TARGETS:
        where = f"{target} -> {scope}/{scope_id}"
        value = {"scope": scope, "n": [1, 2.5, None, True, "ü"]}
        assert sdk.call(target, "set", "k", value) is None, where
        record = stored(server, scope, scope_id, "k")
        assert record is not None and record["data"] == value, where
        assert sdk.call(target, "get", "k", ABSENT) == value, where
        assert sdk.call(target, "exists", "k") is True, where
        assert sdk.call(target, "get", "missing", ABSENT) == ABSENT, where
        assert sdk.call(target, "exists", "missing") is False, where
        sdk.call(target, "set", f"only.{scope}.{scope_id}", 0)  # falsy data is still data
        assert sdk.call(target, "get", f"only.{scope}.{scope_id}", ABSENT) == 0, where
        if target != "mem":  # MemoryInterface has no list_keys; its scoped clients do
            assert sorted(sdk.call(target, "list_keys")) == ["k", f"only.{scope}.{scope_id}"], \
                where

    # The writes above went to five places and nowhere else.
    for _, (scope, scope_id) in MEMORY_TARGETS:
        assert sorted(listed(server, scope, scope_id)) == ["k", f"only.{scope}.{scope_id}"]
    assert stored(server, "session", "sess-1", "k") is None  # the context's ids were overridden
    assert stored(server, "actor", "actor-1", "k") is None

    # MemoryInterface's explicit scope arguments reach the same places.
    assert sdk.call("mem", "get", "k", ABSENT, scope="session", scope_id="s-9")["scope"] == \
        "session"
    assert sdk.call("mem", "get", "k", ABSENT, scope="global")["scope"] == "global"

    # An unscoped get walks workflow → session → actor → global from the context's ids.
    for scope, scope_id in [("global", "global"), ("actor", "actor-1"), ("session", "sess-1")]:
        sdk.call([scope, scope_id] if scope != "global" else "global", "set", "walk", scope)
        assert sdk.call("mem", "get", "walk", ABSENT) == scope
    sdk.call("mem", "set", "walk", "workflow")
    for expected in ["workflow", "session", "actor", "global"]:
        assert sdk.call("mem", "get", "walk", ABSENT) == expected
        assert sdk.call("mem", "exists", "walk") is True
        target = {"workflow": "mem", "session": ["session", "sess-1"],
                  "actor": ["actor", "actor-1"], "global": "global"}[expected]
        sdk.call(target, "delete", "walk")
    assert sdk.call("mem", "get", "walk", ABSENT) == ABSENT
    assert sdk.call("mem", "exists", "walk") is False

    # delete removes the key from its scope only; deleting a missing key does not raise.
    for number, (target, (scope, scope_id)) in enumerate(MEMORY_TARGETS):
        assert sdk.call(target, "delete", "k") is None
        assert stored(server, scope, scope_id, "k") is None
        if target == "mem":  # the walk goes on to the next scope that has it: global
            assert sdk.call(target, "get", "k", ABSENT)["scope"] == "global"
        else:
            assert sdk.call(target, "get", "k", ABSENT) == ABSENT
            assert sdk.call(target, "exists", "k") is False
        for _, later in MEMORY_TARGETS[number + 1:]:
            assert stored(server, *later, "k") is not None, (scope, later)
        assert sdk.call(target, "delete", "k") is None  # already gone: 204, no MemoryAccessError
        assert sdk.call(target, "delete", "never-set") is None
        if target != "mem":
            assert sdk.call(target, "list_keys") == [f"only.{scope}.{scope_id}"]
    assert sdk.call("mem", "delete", "never-set", scope="session", scope_id="s-9") is None


# ------------------------------------------------------------------------------------------------
# vectors

VECTOR_TARGETS = MEMORY_TARGETS
QUERY = [1.0, 0.25]


def _rotate(vector: list[float], turns: float) -> list[float]:
    angle = 2 * math.pi * turns
    x, y = vector
    return [x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)]


def vectors_of(number: int, scope: str) -> dict[str, tuple[list[float], dict]]:
    """The vectors put in one scope: each scope's are turned a little, so every scope ranks
    differently and a result from another scope cannot pass for this one's."""
    turn = 0.013 * number
    return {
        "v1": (_rotate([1.0, 0.0], turn), {"kind": "a", "n": 1, "scope": scope}),
        "v2": (_rotate([2.4, 0.9], turn), {"kind": "b", "n": 2, "scope": scope}),
        "v3": (_rotate([0.1, 0.45], turn), {"kind": "a", "n": 3, "scope": scope}),
        "v4": (_rotate([-2.0, 0.2], turn), {"kind": "b", "nested": {"x": [1, 2]}}),
        "v5": (_rotate([0.45, -0.3], turn), {}),  # the SDK sends no metadata for {}
        # the query's own direction, short: first by cosine, not by dot product or distance
        "v6": ([x * (0.4 + 0.01 * number) for x in QUERY], {"kind": "b", "n": 6.0}),
        "odd": ([1.0, 0.25, 0.5], {"kind": "a"}),  # another dimension: never a hit
    }


def f32(values: list[float]) -> np.ndarray:
    """What the service keeps of an embedding: float32."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def expected_hits(metric: str, vectors: dict[str, tuple[list[float], dict]], query: list[float],
                  top_k: int = 10, filters: dict | None = None) -> list[tuple[str, float, float]]:
    """(key, score, distance), best first, by the contract's formulas."""
    q = f32(query)
    hits = []
    for key, (embedding, metadata) in vectors.items():
        if len(embedding) != len(query):
            continue
        if any(field not in metadata or metadata[field] != value
               for field, value in (filters or {}).items()):
            continue
        v = f32(embedding)
        if metric == "cosine":
            score = float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))
            distance = 1 - score
        elif metric == "l2":
            distance = float(np.linalg.norm(v - q))
            score = -distance
        else:
            score = float(v @ q)
            distance = -score
        hits.append((key, score, distance))
    hits.sort(key=lambda hit: (-hit[1], hit[2], hit[0]))
    return hits[:top_k]


def check_hits(results: Any, expected: list[tuple[str, float, float]], scope: str, scope_id: str,
               vectors: dict[str, tuple[list[float], dict]], where: str) -> None:
    assert isinstance(results, list), f"{where}: {results!r}"
    assert [hit["key"] for hit in results] == [key for key, _, _ in expected], \
        f"{where}: got {[(h['key'], h['score']) for h in results]}, want {expected}"
    for hit, (key, score, distance) in zip(results, expected):
        assert hit["score"] == pytest.approx(score, abs=1e-6), (where, hit)
        assert hit["distance"] == pytest.approx(distance, abs=1e-6), (where, hit)
        assert (hit["scope"], hit["scope_id"]) == (scope, scope_id), (where, hit)
        assert hit["metadata"] == vectors[key][1], (where, hit)
        assert isinstance(hit["created_at"], str) and isinstance(hit["updated_at"], str), hit


def vector_scenario(server: Server, sdk: Sdk, metric: str) -> None:
    placed = {}  # target index → the vectors its scope holds
    for number, (target, (scope, scope_id)) in enumerate(VECTOR_TARGETS):
        placed[number] = vectors_of(number, scope)
        for key, (embedding, metadata) in placed[number].items():
            assert sdk.call(target, "set_vector", key, embedding, metadata) is None

    def check_scope(number: int) -> None:
        target, (scope, scope_id) = VECTOR_TARGETS[number]
        vectors = placed[number]
        where = f"{metric} {target}"
        everything = expected_hits(metric, vectors, QUERY)
        check_hits(sdk.call(target, "similarity_search", QUERY), everything, scope, scope_id,
                   vectors, where)
        check_hits(sdk.call(target, "similarity_search", QUERY, top_k=2), everything[:2],
                   scope, scope_id, vectors, where + " top_k=2")
        for filters in [{"kind": "a"}, {"kind": "b"}, {"kind": "a", "n": 3},
                        {"nested": {"x": [1, 2]}}, {"n": "1"}, {"missing": None},
                        {"n": 6}]:  # equal to the 6.0 stored
            check_hits(sdk.call(target, "similarity_search", QUERY, top_k=10, filters=filters),
                       expected_hits(metric, vectors, QUERY, filters=filters), scope, scope_id,
                       vectors, f"{where} filters={filters}")
        check_hits(sdk.call(target, "similarity_search", QUERY, top_k=1, filters={"kind": "a"}),
                   expected_hits(metric, vectors, QUERY, top_k=1, filters={"kind": "a"}),
                   scope, scope_id, vectors, where + " top_k=1 with filters")
        # a query of the other dimension finds only the vector of that dimension
        check_hits(sdk.call(target, "similarity_search", [1.0, 0.25, 0.5]), [
            ("odd", *expected_hits(metric, {"odd": vectors["odd"]}, [1.0, 0.25, 0.5])[0][1:])],
            scope, scope_id, vectors, where + " 3 dimensions")

    for number in placed:
        check_scope(number)
    # MemoryInterface's scope arguments search the same scopes.
    check_hits(sdk.call("mem", "similarity_search", QUERY, scope="session", scope_id="s-9"),
               expected_hits(metric, placed[2], QUERY), "session", "s-9", placed[2],
               "mem.similarity_search(scope=session)")
    check_hits(sdk.call("mem", "similarity_search", QUERY, 3, scope="global"),
               expected_hits(metric, placed[4], QUERY, top_k=3), "global", "global", placed[4],
               "mem.similarity_search(scope=global)")

    # An upsert replaces the vector in its scope only and keeps created_at.
    before = {hit["key"]: hit for hit in sdk.call("global", "similarity_search", QUERY)}
    placed[4]["v3"] = ([1.0, 0.2], {"kind": "a", "n": 33})
    sdk.call("global", "set_vector", "v3", *placed[4]["v3"])
    after = {hit["key"]: hit for hit in sdk.call("global", "similarity_search", QUERY)}
    assert after["v3"]["created_at"] == before["v3"]["created_at"]
    assert after["v3"]["updated_at"] >= before["v3"]["updated_at"]
    for number in placed:
        check_scope(number)

    # delete_vector takes the vector out of its own scope and no other.
    for number, (target, (scope, scope_id)) in enumerate(VECTOR_TARGETS):
        assert sdk.call(target, "delete_vector", "v1") is None
        del placed[number]["v1"]
        for other in placed:
            check_scope(other)
        assert sdk.call(target, "delete_vector", "v1") is None  # absent: still fine
        assert sdk.call(target, "delete_vector", "never-set") is None

    # Vectors are not memory: no records, no events.
    for _, (scope, scope_id) in VECTOR_TARGETS:
        assert listed(server, scope, scope_id) == []
    assert history(server) == []


@every_store
def test_vectors_with_cosine_the_default(server, sdk_factory):
    vector_scenario(server, sdk_factory(server), "cosine")


@every_store
@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_vectors_with_another_metric(server_factory, sdk_factory, metric):
    server = server_factory(env={"MEMORY_VECTOR_METRIC": metric})
    vector_scenario(server, sdk_factory(server), metric)


def test_the_metrics_rank_the_test_vectors_differently():
    """The vector tests tell the metrics apart only if their data ranks differently."""
    for number, (_, (scope, _)) in enumerate(VECTOR_TARGETS):
        vectors = vectors_of(number, scope)
        ranked = {metric: [key for key, _, _ in expected_hits(metric, vectors, QUERY)]
                  for metric in ("cosine", "dot", "l2")}
        for one, other in [("cosine", "dot"), ("cosine", "l2"), ("dot", "l2")]:
            assert ranked[one][:2] != ranked[other][:2], (scope, one, other)


# ------------------------------------------------------------------------------------------------
# events

WAIT_CONNECTED = 45  # the SDK retries after 1, 2, 4, 8 and 16 s, then gives up


def ws_subscribers(server: Server) -> float:
    return server.metric("memory_events_subscribers", transport="ws")


def connected(server: Server, sdk: Sdk, timeout: float = WAIT_CONNECTED) -> None:
    wait_until(lambda: ws_subscribers(server) == 1 and sdk.command("state")["connected"],
               timeout=timeout, interval=0.05, message="the SDK's WebSocket to be open")


class Writes:
    """Changes made while the SDK listens, through the SDK and through plain HTTP, each with
    the event it must cause; and requests that change nothing and must cause none."""

    def __init__(self, server: Server, sdk: Sdk, api_key: str | None = None) -> None:
        self.server, self.sdk = server, sdk
        self.http = requests.Session()
        if api_key:
            self.http.headers["X-API-Key"] = api_key
        #: the events due: scope, scope_id, key, action, data, previous_data, metadata
        self.expected: list[dict] = []
        self.values: dict[tuple[str, str, str], Any] = {}

    def _change(self, scope: str, scope_id: str, key: str, action: str, data: Any,
                metadata: dict) -> None:
        previous = self.values.get((scope, scope_id, key))
        if action == "set":
            self.values[(scope, scope_id, key)] = data
        else:
            self.values.pop((scope, scope_id, key), None)
        self.expected.append({"scope": scope, "scope_id": scope_id, "key": key,
                              "action": action, "data": data, "previous_data": previous,
                              "metadata": metadata})

    @staticmethod
    def sdk_metadata(target: Any) -> dict:
        """A scoped client sends its own id in its scope's header, which the event reports."""
        field = {"actor": "actor_id", "workflow": "workflow_id"}.get(
            target[0] if isinstance(target, list) else "")
        return {**SDK_METADATA, field: target[1]} if field else SDK_METADATA

    def sdk_set(self, target: Any, where: tuple[str, str], key: str, data: Any) -> None:
        self.sdk.call(target, "set", key, data)
        self._change(*where, key, "set", data, self.sdk_metadata(target))

    def sdk_delete(self, target: Any, where: tuple[str, str], key: str) -> None:
        existed = (*where, key) in self.values
        self.sdk.call(target, "delete", key)
        if existed:  # a delete of nothing is no change
            self._change(*where, key, "delete", None, self.sdk_metadata(target))

    def http_set(self, scope: str, scope_id: str, key: str, data: Any) -> None:
        headers = {"X-Agent-Node-ID": "node-http", "X-Actor-ID": "actor-http"}
        response = self.http.post(self.server.url + API + "/set", headers=headers, timeout=10,
                                  json={"key": key, "data": data, "scope": scope,
                                        "scope_id": scope_id})
        assert response.status_code == 200, response.text
        self._change(scope, scope_id, key, "set", data,
                     {"agent_id": "node-http", "actor_id": "actor-http", "workflow_id": ""})

    def http_delete(self, scope: str, scope_id: str, key: str) -> None:
        response = self.http.post(self.server.url + API + "/delete", timeout=10,
                                  json={"key": key, "scope": scope, "scope_id": scope_id})
        assert response.status_code == 204, response.text
        if (scope, scope_id, key) in self.values:
            self._change(scope, scope_id, key, "delete", None,
                         {"agent_id": "", "actor_id": "", "workflow_id": ""})

    def no_changes(self, tag: str) -> None:
        """Requests that write nothing: none may reach a subscriber."""
        sdk, url = self.sdk, self.server.url + API
        sdk.call("mem", "delete", f"missing.{tag}")
        sdk.call("global", "delete", f"missing.{tag}")
        sdk.call("mem", "get", f"missing.{tag}", ABSENT)
        sdk.call("mem", "exists", f"missing.{tag}")
        sdk.call(["session", "s-9"], "list_keys")
        sdk.call("mem", "set_vector", f"vec.{tag}", [1.0, 2.0], {"t": tag})
        sdk.call("global", "set_vector", f"vec.{tag}", [1.0, 2.0])
        sdk.call("mem", "similarity_search", [1.0, 2.0])
        sdk.call("mem", "delete_vector", f"vec.{tag}")
        sdk.call("global", "delete_vector", f"vec.{tag}")
        sdk.call("events", "history", limit=5)
        taken = next(iter(self.values))
        refused = [
            self.http.post(url + "/set", timeout=10,  # the key exists: a conflict
                           json={"key": taken[2], "data": 1, "scope": taken[0],
                                 "scope_id": taken[1], "if_version": "0"}),
            self.http.post(url + "/set", json={"key": "no-data"}, timeout=10),
            self.http.post(url + "/delete", json={"key": f"missing.{tag}", "scope": "global"},
                           timeout=10),
        ]
        assert [r.status_code for r in refused] == [409, 400, 204], [r.text for r in refused]

    def round(self, tag: str) -> None:
        """A mix of changes in every scope, ending with the key ``end.<tag>``."""
        workflow, session, actor = ("workflow", "wf-1"), ("session", "s-9"), ("actor", "a-9")
        glob = ("global", "global")
        self.sdk_set("mem", workflow, f"task.{tag}", {"step": 1})
        self.sdk_set("mem", workflow, f"task.{tag}", {"step": 2})
        self.sdk_set(["session", "s-9"], session, f"notes.{tag}", "text")
        self.sdk_set(["actor", "a-9"], actor, f"prefs.{tag}", [1, 2])
        self.sdk_set("global", glob, f"cfg.{tag}", {"on": True})
        self.http_set("session", "s-other", f"notes.{tag}", 7)
        self.no_changes(tag)
        self.sdk_set("global", glob, f"cfg.{tag}", None)  # null is a value too
        self.sdk_delete("mem", workflow, f"task.{tag}")
        self.sdk_delete("mem", workflow, f"task.{tag}")  # gone already: no event
        self.sdk_delete(["session", "s-9"], session, f"notes.{tag}")
        self.http_delete("session", "s-other", f"notes.{tag}")
        self.sdk_set(["workflow", "w-9"], ("workflow", "w-9"), f"a/b c.{tag}", "ü")
        self.sdk_set("mem", workflow, f"end.{tag}", True)


SEMANTIC = ("scope", "scope_id", "key", "action", "data", "previous_data", "metadata")


def check_events(seen: list[dict], expected: list[dict], log: list[dict], where: str) -> None:
    """``seen`` (what a "*" callback got) is exactly ``expected``, in order, and each one is the
    logged event, field for field."""
    assert [{f: event[f] for f in SEMANTIC} for event in seen] == expected, where
    by_id = {event["id"]: event for event in log}
    for event in seen:
        assert by_id.get(event["id"]) == event, \
            f"{where}: {event} is not the logged {by_id.get(event['id'])}"
    ids = [int(event["id"]) for event in seen]
    assert ids == sorted(set(ids)), f"{where}: ids out of order or repeated: {ids}"


def check_callbacks_are_changes(sdk: Sdk, log: list[dict]) -> None:
    """Every callback that ever ran had a real change: a non-empty key, set or delete, and an
    event the log holds."""
    logged = {event["id"]: event for event in log}
    for callback in sdk.callbacks:
        event = callback["event"]
        assert event["key"] and event["action"] in ("set", "delete"), callback
        assert event["type"] == "memory_change" and logged.get(event["id"]) == event, callback
    assert "Error in event listener" not in sdk.log(), sdk.log()[-3000:]


@every_store
def test_star_subscription_sees_every_change_and_only_changes_across_a_restart(server_factory,
                                                                              sdk_factory):
    env = {"MEMORY_HEARTBEAT_SECONDS": "0.5"}
    first = server_factory(env=env)
    sdk = sdk_factory(first)
    sdk.on_change("mem", "*", "on_change")       # @app.memory.on_change("*")
    sdk.subscribe("*", "subscribe")              # MemoryEventClient.subscribe("*", cb)
    sdk.on_change("global", "*", "global")       # @app.memory.global_scope.on_change("*")
    sdk.on_change(["session", "s-9"], "*", "session")  # @app.memory.session("s-9").on_change
    sdk.on_change("events", ["task.*", "cfg.*"], "patterns")
    connected(first, sdk, timeout=15)

    writes = Writes(first, sdk)
    writes.round("1")
    seen = sdk.wait_for_key("on_change", "end.1")
    log = history(first)
    check_events(seen, writes.expected, log, "before the restart")
    assert sdk.wait_for_key("subscribe", "end.1") == seen
    assert sdk.seen("global") == [e for e in seen if e["scope"] == "global"]
    assert sdk.seen("session") == [e for e in seen
                                   if (e["scope"], e["scope_id"]) == ("session", "s-9")]
    assert sdk.seen("patterns") == [e for e in seen if e["key"].split(".")[0] in ("task", "cfg")]
    # the SDK's own history() reads the same log
    assert sdk.call("events", "history", limit=100) == log[-100:]
    assert sdk.call("events", "history", patterns="cfg.*", limit=100) == \
        [e for e in log if e["key"].startswith("cfg.")]
    # since: an aware datetime goes out as +00:00, a naive one with no offset (UTC here)
    assert sdk.call("events", "history", since={"__datetime__": "2020-01-01T00:00:00+00:00"},
                    limit=3) == log[-3:]
    assert sdk.call("events", "history", since={"__datetime__": "2999-01-01T00:00:00"}) == []
    check_callbacks_are_changes(sdk, log)

    # SIGTERM; the same port and database again. The SDK reconnects by itself (no resume).
    before = len(sdk.callbacks)
    assert first.stop(signal.SIGTERM) == 0
    second = server_factory(env=env, port=first.port)
    connected(second, sdk)
    assert sdk.callbacks[before:] == [], "a callback ran while the server was away"

    writes.expected = []
    writes.server = second
    writes.round("2")
    seen_after = sdk.wait_for_key("on_change", "end.2")[len(seen):]
    log = history(second)
    check_events(seen_after, writes.expected, log, "after the restart")
    assert int(seen_after[0]["id"]) > int(seen[-1]["id"]), "the log's ids went backwards"
    assert sdk.wait_for_key("subscribe", "end.2") == seen + seen_after
    assert sdk.seen("global") == [e for e in seen + seen_after if e["scope"] == "global"]
    assert sdk.seen("session") == [e for e in seen + seen_after
                                   if (e["scope"], e["scope_id"]) == ("session", "s-9")]
    check_callbacks_are_changes(sdk, log)
    assert ws_subscribers(second) == 1  # one socket for every subscription, as before


def test_api_key_reaches_every_call(server_factory, sdk_factory):
    """The SDK sends the key as X-API-Key, on HTTP calls and on the WebSocket handshake."""
    server = server_factory(env={"MEMORY_API_KEY": "k-compat", "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    sdk = sdk_factory(server, api_key="k-compat")
    sdk.call("mem", "set", "k", {"a": 1})
    assert sdk.call("mem", "get", "k", ABSENT) == {"a": 1}
    assert sdk.call(["workflow", "wf-1"], "list_keys") == ["k"]
    sdk.call("mem", "set_vector", "v", [1.0, 0.0])
    assert [hit["key"] for hit in sdk.call("mem", "similarity_search", [1.0, 0.0])] == ["v"]
    sdk.call("mem", "delete_vector", "v")
    assert [event["key"] for event in sdk.call("events", "history")] == ["k"]
    sdk.on_change("mem", "*", "all")
    connected(server, sdk, timeout=15)
    sdk.call("mem", "delete", "k")
    assert [(e["key"], e["action"]) for e in sdk.wait_for_key("all", "k")] == [("k", "delete")]

    keyless = sdk.other_agent("keyless", api_key=None)
    with pytest.raises(SdkError) as refused:
        keyless("mem", "set", "k", 1)
    assert refused.value.error == "MemoryAccessError" and "401" in str(refused.value)
    with pytest.raises(SdkError, match="MemoryAccessError"):
        keyless("mem", "get", "k", ABSENT)  # 401, not a 404 that would read as "absent"
    assert keyless("mem", "exists", "k") is False
    assert keyless("events", "history") == []
    wrong = sdk.other_agent("wrong-key", api_key="not-the-key")
    with pytest.raises(SdkError, match="401"):
        wrong("global", "set_vector", "v", [1.0])
