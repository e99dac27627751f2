"""Vector search: exact whatever the data, current in every process, cheap to keep, and never
holding up the worker that runs it.

Search is checked against float64 brute force. The per-process index is checked against the
store in process (two indexes on one database stand for two worker processes), and through
real servers: one with two workers, and one whose first search loads a large scope while a
ticker checks that the worker goes on answering.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient

from app.core import vectors
from app.core.vectors import ScopeIndex, VectorMemory, search
from app.store import Store, StoredVector, open_store, sql

from .conftest import Server, every_store, wait_until

API = "/api/v1/memory"
METRICS = ["cosine", "dot", "l2"]


def inline(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


# -- exact search ------------------------------------------------------------------------------

def index_of(data: np.ndarray, metadata: list[dict]) -> ScopeIndex:
    """An index of ``data``'s rows, keys ``k00000``…, filled a page at a time as from a store."""
    index = ScopeIndex()
    changes = [StoredVector("global", "global", f"k{n:05}", row.astype("<f4").tobytes(),
                            json.dumps(metadata[n]), 0.0, 0.0, n + 1)
               for n, row in enumerate(data)]
    for start in range(0, len(changes), vectors.CHANGES_PAGE):
        index.apply(changes[start:start + vectors.CHANGES_PAGE])
    return index


def brute_force(data: np.ndarray, query: np.ndarray, metric: str, rows: np.ndarray,
                top_k: int) -> list[tuple[str, float]]:
    """(key, score) of the best ``top_k`` of ``rows``, everything in float64."""
    stored = data[rows].astype(np.float32).astype(np.float64)
    wanted = query.astype(np.float64)
    if metric == "l2":
        scores = -np.linalg.norm(stored - wanted, axis=1)
    else:
        scores = stored @ wanted
        if metric == "cosine":
            scale = np.linalg.norm(stored, axis=1) * np.linalg.norm(wanted)
            scores = np.where(scale > 0, scores / np.where(scale > 0, scale, 1.0), 0.0)
    hits = sorted(((f"k{row:05}", float(score)) for row, score in zip(rows, scores)),
                  key=lambda hit: (-hit[1], hit[0]))
    return hits[:top_k]


def data_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(stored rows, query), each a float32 array."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "random":
        data = rng.standard_normal((3000, 64))
        return data.astype(np.float32), rng.standard_normal(64).astype(np.float32)
    base = rng.standard_normal(768)
    base /= np.linalg.norm(base)
    scale = {"near duplicates": 1.0, "near duplicates, norms near 1000": 1000.0,
             "tiny values": 1e-25, "huge values": 3e19}[name]

    def near() -> np.ndarray:  # a millionth of the norm away: float32 scores cannot tell
        return base + 1e-6 / np.sqrt(len(base)) * rng.standard_normal(base.shape)

    data = np.stack([near() for _ in range(400)]) * scale
    return data.astype(np.float32), (near() * scale).astype(np.float32)


DATA_SETS = ["random", "near duplicates", "near duplicates, norms near 1000", "tiny values",
             "huge values"]


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "filtered"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("name", DATA_SETS)
def test_search_ranks_exactly_as_float64_brute_force(name, metric, filtered):
    data, query = data_set(name)
    metadata = [{"even": n % 2 == 0} for n in range(len(data))]
    view = index_of(data, metadata).matrices[data.shape[1]].view()
    rows = np.arange(0, len(data), 2 if filtered else 1)
    for top_k in (1, 10, 50):
        got = search(view, query, metric, top_k, {"even": True} if filtered else {})
        want = brute_force(data, query, metric, rows, top_k)
        assert [view.keys[row] for row, _, _ in got] == [key for key, _ in want], \
            (name, metric, top_k)
        for (_, score, distance), (_, expected) in zip(got, want):
            assert score == pytest.approx(expected, rel=1e-9, abs=1e-300)
            assert distance == pytest.approx({"cosine": 1 - expected, "dot": -expected,
                                              "l2": -expected}[metric], rel=1e-9, abs=1e-12)


def test_search_skips_dead_rows_and_ranks_ties_by_key():
    data = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    index = index_of(data, [{}] * 4)
    index.apply([StoredVector("global", "global", "k00001", None, "{}", 0.0, 0.0, 5)])
    view = index.matrices[2].view()
    for metric in METRICS:
        found = [view.keys[row] for row, _, _ in search(view, data[0], metric, 3, {})]
        assert found == ["k00000", "k00002", "k00003"], metric


# -- metadata filters ----------------------------------------------------------------------------

def test_filters_match_equal_json_values_however_numbers_are_written(client: FlaskClient):
    headers = {"X-Workflow-ID": "wf"}
    for key, metadata in [("float", {"n": 2.0, "tags": [1.0, {"x": 3}]}),
                          ("int", {"n": 2, "tags": [1, {"x": 3.0}]}),
                          ("bool", {"n": True, "tags": [True, {"x": 3}]}),
                          ("text", {"n": "2"}), ("half", {"n": 2.5})]:
        response = client.post(API + "/vector", headers=headers,
                               json={"key": key, "embedding": [1, 0], "metadata": metadata})
        assert response.status_code == 200, response.get_data(as_text=True)

    def found(filters: str) -> list[str]:
        response = client.post(API + "/vector/search", headers=headers,
                               data='{"query_embedding": [1, 0], "filters": %s}' % filters,
                               content_type="application/json")
        assert response.status_code == 200, response.get_data(as_text=True)
        return sorted(hit["key"] for hit in response.get_json())

    for filters, keys in [('{"n": 2}', ["float", "int"]), ('{"n": 2.0}', ["float", "int"]),
                          ('{"n": 2e0}', ["float", "int"]), ('{"n": 20e-1}', ["float", "int"]),
                          ('{"n": 2.5}', ["half"]), ('{"n": "2"}', ["text"]),
                          ('{"n": true}', ["bool"]), ('{"n": 1}', []),
                          ('{"tags": [1, {"x": 3}]}', ["float", "int"]),
                          ('{"tags": [1.0, {"x": 3.0}], "n": 2}', ["float", "int"]),
                          ('{"tags": [true, {"x": 3}]}', ["bool"])]:
        assert found(filters) == keys, filters


# -- the index in each process -------------------------------------------------------------------

@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = open_store(db_url)
    yield opened
    opened.close()


def put_vector(store: Store, scope_id: str, key: str, values: list[float]) -> None:
    store.vector_set("session", scope_id, key, np.asarray(values, dtype="<f4").tobytes(), "{}")


def found(memory: VectorMemory, scope_id: str) -> list[str]:
    query = np.asarray([1.0, 0.0], dtype="<f4")
    return [hit.key for hit in memory.search("session", scope_id, query, 10, {})]


def forget_every_deletion(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trim that finds every deletion old enough for the caches to have seen it."""
    monkeypatch.setattr(sql, "VECTOR_TOMBSTONE_SECONDS", -1.0)
    store.trim(0.0)


def reads_of_changes(store: Store, monkeypatch: pytest.MonkeyPatch,
                     then: Callable[[], None] = lambda: None) -> list[int]:
    """The ``after_seq`` of every read of changes from now on; ``then`` runs after the first."""
    reads: list[int] = []
    read = store.vector_changes

    def counted(scope: str, scope_id: str, after_seq: int, limit: int) -> list[StoredVector]:
        changes = read(scope, scope_id, after_seq, limit)
        reads.append(after_seq)
        if len(reads) == 1:
            then()
        return changes

    monkeypatch.setattr(store, "vector_changes", counted)
    return reads


@every_store
def test_an_old_deletion_elsewhere_leaves_a_scopes_index_as_it_is(store, monkeypatch):
    put_vector(store, "busy", "v", [1, 0])
    put_vector(store, "quiet", "gone", [0, 1])
    memory = VectorMemory(lambda: store, "cosine", inline)
    assert found(memory, "busy") == ["v"]
    store.vector_delete("session", "quiet", "gone")
    forget_every_deletion(store, monkeypatch)
    reads = reads_of_changes(store, monkeypatch)
    for _ in range(3):
        assert found(memory, "busy") == ["v"]
    assert reads == [], "the index was read again from the start"


@every_store
def test_a_deletion_forgotten_before_a_process_read_it_starts_its_index_over(store,
                                                                            monkeypatch):
    put_vector(store, "s", "a", [1, 0])
    put_vector(store, "s", "b", [0.6, 0.8])
    memory = VectorMemory(lambda: store, "cosine", inline)
    assert found(memory, "s") == ["a", "b"]
    store.vector_delete("session", "s", "a")
    forget_every_deletion(store, monkeypatch)
    assert found(memory, "s") == ["b"]
    put_vector(store, "s", "a", [1, 0])  # the key comes back, with a new record of it
    assert found(memory, "s") == ["a", "b"]


@every_store
def test_a_deletion_forgotten_while_a_process_reads_changes_is_not_missed(store, monkeypatch):
    monkeypatch.setattr(vectors, "CHANGES_PAGE", 1)
    put_vector(store, "s", "a", [1, 0])
    put_vector(store, "s", "b", [0.6, 0.8])
    memory = VectorMemory(lambda: store, "cosine", inline)
    assert found(memory, "s") == ["a", "b"]
    put_vector(store, "s", "c", [0.8, 0.6])
    store.vector_delete("session", "s", "a")
    # the first page brings c; before the second one is read, a's deletion is forgotten
    reads_of_changes(store, monkeypatch, then=lambda: forget_every_deletion(store, monkeypatch))
    assert found(memory, "s") == ["c", "b"]


@every_store
def test_a_namespace_deleted_at_once_is_read_whole_across_pages(store, monkeypatch):
    """The keys of one namespace delete share one change of the store; reading the changes a
    few at a time must not stop in the middle of them."""
    monkeypatch.setattr(vectors, "CHANGES_PAGE", 3)
    for number in range(8):
        put_vector(store, "s", f"doc/{number}", [1, number / 10])
    put_vector(store, "s", "other", [0, 1])
    memory = VectorMemory(lambda: store, "cosine", inline)
    assert len(found(memory, "s")) == 9
    assert store.vector_delete_prefix("session", "s", "doc/") == 8
    assert found(memory, "s") == ["other"]
    assert found(VectorMemory(lambda: store, "cosine", inline), "s") == ["other"]


def test_scopes_without_vectors_are_not_kept(store):
    memory = VectorMemory(lambda: store, "cosine", inline)
    for number in range(50):
        assert found(memory, f"empty-{number}") == []
    put_vector(store, "full", "v", [1, 0])
    assert found(memory, "full") == ["v"]
    assert list(memory._indexes) == [("session", "full")]
    store.vector_delete("session", "full", "v")
    assert found(memory, "full") == []
    assert list(memory._indexes) == []


def test_the_cache_keeps_the_scopes_searched_last(store, monkeypatch):
    monkeypatch.setattr(vectors, "CACHE_SCOPES", 3)
    memory = VectorMemory(lambda: store, "cosine", inline)
    for number in range(5):
        put_vector(store, f"s{number}", "v", [1, 0])
        assert found(memory, f"s{number}") == ["v"]
    assert found(memory, "s2") == ["v"]
    assert [scope_id for _, scope_id in memory._indexes] == ["s3", "s4", "s2"]

    monkeypatch.setattr(vectors, "CACHE_BYTES", 1)  # smaller than any: the last one stays
    assert found(memory, "s0") == ["v"]
    assert [scope_id for _, scope_id in memory._indexes] == ["s0"]
    assert memory._bytes == memory._indexes[("session", "s0")].nbytes


# -- real servers --------------------------------------------------------------------------------

class Workers:
    """Requests to a server of several workers, each on a connection of its own, and which
    worker answered it, from gunicorn's access log (``%(p)s``, the worker's pid)."""

    def __init__(self, server_factory: Callable[..., Server], log: Path, **kwargs: Any) -> None:
        self.log = log
        args = f"--access-logfile {log} --access-logformat '%(p)s %(q)s'"
        self.server = server_factory(workers=2, env={"GUNICORN_CMD_ARGS": args}, **kwargs)

    def send(self, method: str, path: str, body: dict) -> tuple[int, Any, str]:
        """Status, JSON answer and the pid of the worker that answered."""
        tag = uuid.uuid4().hex
        response = requests.request(method, f"{self.server.url}{API}{path}?tag={tag}",
                                    json=body, headers={"Connection": "close"}, timeout=30)
        pid = wait_until(lambda: re.search(rf"^(\S+) tag={tag}$", self.log.read_text(), re.M),
                         message="the access log line").group(1)  # type: ignore[union-attr]
        return response.status_code, response.json() if response.content else None, pid

    def everywhere(self, path: str, body: dict) -> dict[str, Any]:
        """The answer of each of the two workers to the same request: sent until both have
        answered it."""
        answers: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while len(answers) < 2:
            assert time.monotonic() < deadline, f"only {list(answers)} answered"
            status, answer, pid = self.send("POST", path, body)
            assert status == 200, answer
            answers[pid] = answer
        return answers


@every_store
def test_every_worker_finds_what_another_one_changed(server_factory, tmp_path):
    workers = Workers(server_factory, tmp_path / "access.log")
    scope = {"scope": "session", "scope_id": "s-1"}

    def each_worker_finds(expected: list[tuple[str, dict]]) -> None:
        answers = workers.everywhere("/vector/search", {"query_embedding": [1, 0],
                                                         "top_k": 100, **scope})
        for pid, hits in answers.items():
            assert [(hit["key"], hit["metadata"]) for hit in hits] == expected, pid

    def change(method: str, path: str, body: dict, status: int) -> None:
        got, answer, _ = workers.send(method, path, {**body, **scope})
        assert got == status, answer

    each_worker_finds([])
    stored = {"doc/1": [1, 0.1], "doc/2": [1, 0.2], "docs": [1, 0.3], "other": [1, 0.4]}
    for key, embedding in stored.items():
        change("POST", "/vector", {"key": key, "embedding": embedding, "metadata": {"v": 1}},
               200)
    each_worker_finds([(key, {"v": 1}) for key in stored])
    change("POST", "/vector/set", {"key": "doc/2", "embedding": [1, 0.05],
                                   "metadata": {"v": 2}}, 200)
    each_worker_finds([("doc/2", {"v": 2}), ("doc/1", {"v": 1}), ("docs", {"v": 1}),
                       ("other", {"v": 1})])
    change("POST", "/vector/delete", {"key": "docs"}, 204)
    each_worker_finds([("doc/2", {"v": 2}), ("doc/1", {"v": 1}), ("other", {"v": 1})])
    change("DELETE", "/vector/namespace", {"namespace": "doc/"}, 200)
    each_worker_finds([("other", {"v": 1})])
    status, answer, _ = workers.send("DELETE", "/vector/namespace", {"namespace": "doc/",
                                                                     **scope})
    assert status == 200 and answer["deleted"] == 0, answer


#: a scope large enough that building its index on the event loop stalled the worker for
#: half a second
LARGE_SCOPE = 50_000
LARGE_DIM = 768
#: the longest the worker may leave /healthz unanswered while it loads that scope
WORST_GAP_SECONDS = 0.25


def fill_sqlite(db_url: str, count: int, dim: int) -> np.ndarray:
    """``count`` vectors in one scope, written in one transaction (the API would take long)."""
    open_store(db_url).close()  # the schema
    data = np.random.default_rng(7).standard_normal((count, dim)).astype("<f4")
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        conn.executemany(
            "INSERT INTO vectors (scope, scope_id, key, embedding, metadata, created_at, "
            "updated_at, seq) VALUES ('global', 'global', ?, ?, ?, 0, 0, ?)",
            ((f"k{n}", row.tobytes(), json.dumps({"n": n, "even": n % 2 == 0}), n + 1)
             for n, row in enumerate(data)))
        conn.execute("UPDATE log_meta SET value = ? WHERE name = 'vector_seq'", (count,))
    return data


def test_loading_a_large_scope_never_stops_the_worker_answering(server_factory, db_url):
    data = fill_sqlite(db_url, LARGE_SCOPE, LARGE_DIM)
    server = server_factory()
    # the worker's first vector request imports numpy; the index is what is measured here
    assert requests.post(server.url + API + "/vector/search", timeout=60, json={
        "query_embedding": [1.0], "scope": "session", "scope_id": "elsewhere"}).json() == []
    answered: list[float] = []
    done = threading.Event()

    def tick() -> None:
        with requests.Session() as http:
            while not done.wait(0.005):
                assert http.get(server.url + "/healthz", timeout=30).status_code == 200
                answered.append(time.monotonic())

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    wait_until(lambda: len(answered) > 5, message="the ticker's first answers")
    started = time.monotonic()
    response = requests.post(server.url + API + "/vector/search", timeout=60, json={
        "query_embedding": data[123].tolist(), "top_k": 3, "scope": "global"})
    finished = time.monotonic()
    done.set()
    ticker.join(30)
    assert response.status_code == 200, response.text
    assert response.json()[0]["key"] == "k123"
    during = [moment for moment in answered if started <= moment <= finished]
    gaps = np.diff([started] + during + [finished])
    assert len(during) > 5, f"the ticker got {len(during)} answers in {finished - started:.2f}s"
    assert gaps.max() < WORST_GAP_SECONDS, (
        f"/healthz went unanswered for {gaps.max() * 1000:.0f} ms while the index loaded "
        f"(in {(finished - started) * 1000:.0f} ms)")
