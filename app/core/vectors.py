"""Vector memory: exact similarity search over each scope's vectors, kept in memory per process.

The control plane searches by brute force over rows it reads from the database on every query.
Here each process keeps a scope's vectors as one float32 matrix per dimension, brings it up to
date from the store's ordered record of vector changes (one indexed read when nothing changed),
and scores a query with one matrix product, which numpy runs outside the GIL. Results stay
exact: the best candidates of the float32 pass are scored again in float64 before ranking.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..store import Store, StoredVector
from .pause import pause
from ..wire import dump, utc_text

Offload = Callable[..., Any]

METRICS = ("cosine", "dot", "l2")
#: vector changes read (and applied) per query while catching up: a short hold of the worker
CHANGES_PAGE = 500
#: matrices kept per process, least recently searched dropped first
CACHE_BYTES = 1 << 30
#: how many more candidates than asked for are scored again exactly
RESCORE = 32


def canonical(value: Any) -> str:
    """A JSON value as one text, so equal values (and only those) compare equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Hit:
    key: str
    score: float
    distance: float
    metadata: str
    created_at: float
    updated_at: float

    def json(self, scope: str, scope_id: str) -> str:
        return ('{"key":%s,"scope":%s,"scope_id":%s,"score":%s,"distance":%s,"metadata":%s,'
                '"created_at":"%s","updated_at":"%s"}'
                % (dump(self.key), dump(scope), dump(scope_id), dump(self.score),
                   dump(self.distance), self.metadata, utc_text(self.created_at),
                   utc_text(self.updated_at)))


class Matrix:
    """The vectors of one scope and one dimension: rows only ever appended, so a search that
    took a view of the first ``count`` rows is never disturbed by later writes; a replaced or
    deleted row is only marked dead, and the rows are compacted when most are."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.data = np.empty((16, dim), dtype=np.float32)
        self.norms = np.empty(16, dtype=np.float64)
        self.alive = np.zeros(16, dtype=bool)
        self.count = 0
        self.dead = 0
        self.rows: list[StoredVector] = []
        self.postings: dict[tuple[str, str], list[int]] = {}

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.norms.nbytes

    def append(self, vector: StoredVector, values: np.ndarray) -> int:
        if self.count == len(self.data):
            grow = max(16, self.count)
            self.data = np.concatenate([self.data, np.empty((grow, self.dim), np.float32)])
            self.norms = np.concatenate([self.norms, np.empty(grow)])
            self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
        row = self.count
        self.data[row] = values
        self.norms[row] = float(np.linalg.norm(values.astype(np.float64)))
        self.alive[row] = True
        self.rows.append(vector)
        for field, value in json.loads(vector.metadata).items():
            self.postings.setdefault((field, canonical(value)), []).append(row)
        self.count += 1
        return row

    def kill(self, row: int) -> None:
        self.alive[row] = False
        self.dead += 1

    def view(self) -> "View":
        """What one search reads, unchanged by writes made while it runs."""
        n = self.count
        return View(self.data[:n], self.norms[:n], self.alive[:n].copy(), self.rows,
                    self.postings)


@dataclass(frozen=True, slots=True)
class View:
    """Rows and postings only grow, so sharing them is safe; the view sees its first rows."""
    data: np.ndarray
    norms: np.ndarray
    alive: np.ndarray
    rows: list[StoredVector]
    postings: dict[tuple[str, str], list[int]]

    def candidates(self, filters: dict[str, Any]) -> np.ndarray | None:
        """Rows whose metadata has every filter's field with an equal value (``None``: all)."""
        if not filters:
            return None
        found: np.ndarray | None = None
        for field, value in filters.items():
            rows = np.asarray(self.postings.get((field, canonical(value)), ()), dtype=np.int64)
            rows = rows[rows < len(self.alive)]
            found = rows if found is None else np.intersect1d(found, rows, assume_unique=True)
        assert found is not None
        return found[self.alive[found]]


def search(view: View, query: np.ndarray, metric: str, top_k: int,
           filters: dict[str, Any]) -> list[tuple[int, float, float]]:
    """``(row, score, distance)`` of the best ``top_k``, best first. Pure numpy: safe to run in
    another thread while the process serves requests."""
    rows = view.candidates(filters)
    every = rows is None
    if every:
        rows = np.flatnonzero(view.alive)
    if not len(rows):
        return []
    data = view.data if every else view.data[rows]  # a filter picks few rows: copy just those
    with np.errstate(over="ignore", invalid="ignore"):
        products = (data @ query).astype(np.float64)
    if not np.isfinite(products).all():  # values near float32's limits: score in float64
        products = data.astype(np.float64) @ query.astype(np.float64)
    if every:
        products = products[rows]
    q_norm = float(np.linalg.norm(query.astype(np.float64)))
    scores = _scores(products, view.norms[rows], q_norm, metric)
    keep = min(len(rows), top_k + RESCORE)
    best = np.argpartition(-scores, keep - 1)[:keep] if keep < len(rows) else np.arange(len(rows))
    exact = view.data[rows[best]].astype(np.float64) @ query.astype(np.float64)
    rescored = _scores(exact, view.norms[rows[best]], q_norm, metric)
    distances = 1.0 - rescored if metric == "cosine" else -rescored
    order = sorted(range(len(best)), key=lambda i: (-rescored[i], distances[i],
                                                    view.rows[rows[best[i]]].key))
    return [(int(rows[best[i]]), float(rescored[i]), float(distances[i]))
            for i in order[:top_k]]


def _scores(products: np.ndarray, norms: np.ndarray, q_norm: float, metric: str) -> np.ndarray:
    """The control plane's scores: cosine similarity (0 against a zero vector), the dot
    product, or minus the euclidean distance. Distances follow: 1 − cosine, −dot, or the
    euclidean distance."""
    if metric == "dot":
        return products
    if metric == "cosine":
        scale = norms * q_norm
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(scale > 0, products / np.where(scale > 0, scale, 1), 0.0)
    return -np.sqrt(np.maximum(norms ** 2 + q_norm ** 2 - 2 * products, 0.0))


class ScopeIndex:
    """One scope's vectors in this process, as of ``seq`` in the store's record of changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything; searches running keep what they took."""
        self.seq = 0
        self.matrices: dict[int, Matrix] = {}
        self.where: dict[str, tuple[int, int]] = {}  # key → (dim, row)

    @property
    def nbytes(self) -> int:
        return sum(matrix.nbytes for matrix in self.matrices.values())

    def apply(self, change: StoredVector) -> None:
        old = self.where.pop(change.key, None)
        if old is not None:
            self.matrices[old[0]].kill(old[1])
        if change.embedding is not None:
            values = np.frombuffer(change.embedding, dtype="<f4")
            matrix = self.matrices.get(len(values))
            if matrix is None:
                matrix = self.matrices[len(values)] = Matrix(len(values))
            row = matrix.append(replace(change, embedding=None), values)  # held once: here
            self.where[change.key] = (len(values), row)
        self.seq = change.seq

    def compact(self) -> None:
        """Rebuild a matrix whose rows are mostly dead; searches running keep the old one."""
        for dim, matrix in list(self.matrices.items()):
            if matrix.dead < 1024 or matrix.dead < matrix.count // 2:
                continue
            fresh = Matrix(dim)
            for row in np.flatnonzero(matrix.alive[:matrix.count]):
                vector = matrix.rows[row]
                self.where[vector.key] = (dim, fresh.append(vector, matrix.data[row]))
            self.matrices[dim] = fresh


class VectorMemory:
    """Search and the indexes behind it, for one service in one process."""

    def __init__(self, store: Callable[[], Store], metric: str, offload: Offload) -> None:
        self._store = store
        self.metric = metric
        self._offload = offload  # where a search runs: a thread pool, off the event loop
        self._indexes: OrderedDict[tuple[str, str], ScopeIndex] = OrderedDict()
        self._lock = threading.Lock()

    def search(self, scope: str, scope_id: str, query: np.ndarray, top_k: int,
               filters: dict[str, Any]) -> list[Hit]:
        index = self._current(scope, scope_id)
        matrix = index.matrices.get(len(query))
        if matrix is None:
            return []
        view = matrix.view()
        found = self._offload(search, view, query, self.metric, top_k, filters)
        return [Hit(view.rows[row].key, score, distance, view.rows[row].metadata,
                    view.rows[row].created_at, view.rows[row].updated_at)
                for row, score, distance in found]

    def _current(self, scope: str, scope_id: str) -> ScopeIndex:
        """The scope's index, brought up to date with the store."""
        store = self._store()
        with self._lock:
            index = self._indexes.get((scope, scope_id))
            if index is None:
                index = self._indexes[(scope, scope_id)] = ScopeIndex()
            self._indexes.move_to_end((scope, scope_id))
        with index.lock:
            head, forgotten = store.vector_head(scope, scope_id)
            if index.seq < forgotten:  # deletions it has not seen are no longer recorded
                index.reset()
            while index.seq < head:
                changes = store.vector_changes(scope, scope_id, index.seq, CHANGES_PAGE)
                if not changes:
                    break
                for change in changes:
                    index.apply(change)
                if index.seq < head:
                    pause()
            index.compact()
        self._evict()
        return index

    def _evict(self) -> None:
        with self._lock:
            total = sum(index.nbytes for index in self._indexes.values())
            while total > CACHE_BYTES and len(self._indexes) > 1:
                _, dropped = self._indexes.popitem(last=False)
                total -= dropped.nbytes
