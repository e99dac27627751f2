"""Vector memory: exact similarity search over each scope's vectors, kept in memory per process.

The control plane searches by brute force over rows it reads from the database on every query.
Here each process keeps a scope's vectors as one float32 matrix per dimension, brings it up to
date from the store's ordered record of vector changes (one indexed read when nothing changed),
and scores a query with one float32 matrix product, which numpy runs outside the GIL. The
float32 pass only narrows the field: every row it cannot rule out by a proven error bound is
scored again in float64, so the answer is what float64 brute force gives.

Everything heavy (building a matrix from the rows read, growing and compacting it, scoring)
goes through ``offload``, which under the gevent worker is a thread: the worker's event loop
only reads pages of changes from the database, with a pause between two.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..store import Store, StoredVector
from ..wire import dump, utc_text
from .pause import pause

Offload = Callable[..., Any]

#: vector changes read per query of the store while catching up: at 768 dimensions about
#: 600 KB, which SQLite reads in a few milliseconds on the worker's loop
CHANGES_PAGE = 200
#: matrices kept per process, least recently searched dropped first
CACHE_BYTES = 1 << 30
#: scopes kept per process, whatever their size
CACHE_SCOPES = 10_000
#: rows scored again in float64 per step, so a fallback to every row needs little memory
RESCORE_CHUNK = 4096
#: a compaction is worth it once this many rows and most of the matrix are dead
COMPACT_DEAD = 1024

_UNIT32 = 2.0 ** -24  # float32's unit roundoff
_UNIT64 = 2.0 ** -53  # float64's
_TINY32 = 2.0 ** -149  # float32's smallest step: the error of a product that underflows


def canonical(value: Any) -> str:
    """A JSON value as one text, so equal values (and only those) compare equal: keys sorted,
    and a number the same text however it was written (``2``, ``2.0`` and ``2e0`` are one)."""
    return json.dumps(_numbers(value), sort_keys=True, separators=(",", ":"))


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {field: _numbers(item) for field, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return value


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
    deleted row is only marked dead, and the rows are compacted when most are.

    A row is a few numbers in arrays and two strings in lists, not an object of its own: a
    scope of 50,000 vectors gives the garbage collector little to walk."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.data = np.empty((0, dim), dtype=np.float32)
        self.norms = np.empty(0, dtype=np.float64)
        self.stamps = np.empty((0, 2), dtype=np.float64)  # created_at, updated_at
        self.alive = np.zeros(0, dtype=bool)
        self.count = 0
        self.dead = 0
        self.keys: list[str] = []
        self.metadata: list[str] = []
        self.rows: dict[str, int] = {}  # key → its live row
        #: ``canonical({field: value})`` → the rows whose metadata has it
        self.postings: dict[str, list[int]] = {}

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.norms.nbytes + self.stamps.nbytes

    def extend(self, keys: list[str], metadata: list[str], stamps: np.ndarray,
               values: np.ndarray) -> None:
        """Append one row per key. The space grows by doubling, so filling a matrix copies
        each row about twice in all."""
        first, end = self.count, self.count + len(keys)
        if end > len(self.data):
            self._reserve(max(end, 2 * len(self.data), 16))
        self.data[first:end] = values
        self.norms[first:end] = np.linalg.norm(values.astype(np.float64), axis=1)
        self.stamps[first:end] = stamps
        self.alive[first:end] = True
        self.keys += keys
        self.metadata += metadata
        for row, (key, text) in enumerate(zip(keys, metadata), first):
            self.rows[key] = row
            for field, value in json.loads(text).items():
                self.postings.setdefault(canonical({field: value}), []).append(row)
        self.count = end

    def _reserve(self, capacity: int) -> None:
        """New arrays, so views taken before keep the old ones."""
        for name in ("data", "norms", "stamps", "alive"):
            old = getattr(self, name)
            new = np.zeros((capacity,) + old.shape[1:], dtype=old.dtype)
            new[:self.count] = old[:self.count]
            setattr(self, name, new)

    def kill(self, key: str) -> None:
        self.alive[self.rows.pop(key)] = False
        self.dead += 1

    def compacted(self) -> "Matrix":
        """The live rows alone, in a matrix of their own; searches running keep this one."""
        live = np.flatnonzero(self.alive[:self.count])
        fresh = Matrix(self.dim)
        fresh.extend([self.keys[row] for row in live], [self.metadata[row] for row in live],
                     self.stamps[live], self.data[live])
        return fresh

    def view(self) -> "View":
        """What one search reads, unchanged by writes made while it runs."""
        n = self.count
        return View(self.data[:n], self.norms[:n], self.stamps[:n], self.alive[:n].copy(),
                    self.keys, self.metadata, self.postings)


@dataclass(frozen=True, slots=True)
class View:
    """Keys, metadata and postings only grow, so sharing them is safe; the view sees its
    first rows."""
    data: np.ndarray
    norms: np.ndarray
    stamps: np.ndarray
    alive: np.ndarray
    keys: list[str]
    metadata: list[str]
    postings: dict[str, list[int]]

    def candidates(self, filters: dict[str, Any]) -> np.ndarray | None:
        """Rows whose metadata has every filter's field with an equal value (``None``: all)."""
        if not filters:
            return None
        found: np.ndarray | None = None
        for field, value in filters.items():
            rows = np.asarray(self.postings.get(canonical({field: value}), ()), dtype=np.int64)
            rows = rows[rows < len(self.alive)]
            found = rows if found is None else np.intersect1d(found, rows, assume_unique=True)
        assert found is not None
        return found[self.alive[found]]

    def hit(self, row: int, score: float, distance: float) -> Hit:
        created_at, updated_at = self.stamps[row]
        return Hit(self.keys[row], score, distance, self.metadata[row], float(created_at),
                   float(updated_at))


def search(view: View, query: np.ndarray, metric: str, top_k: int,
           filters: dict[str, Any]) -> list[tuple[int, float, float]]:
    """``(row, score, distance)`` of the best ``top_k``, best first, exactly as float64 brute
    force ranks them. Pure numpy: safe to run in another thread while the process serves
    requests.

    A float32 score is off by at most a bound ``_bounds`` proves, so a row whose float32 score
    plus its bound is below the ``top_k``-th best of the float32 scores minus theirs cannot be
    among the best. Every other row is scored again in float64: a handful in the common case,
    every row when the bounds are wide (near-identical vectors, tiny or overflowing values).
    """
    rows = view.candidates(filters)
    if rows is None:
        rows = np.flatnonzero(view.alive)
    if not len(rows):
        return []
    with np.errstate(all="ignore"):
        if len(rows) * 4 > len(view.alive):  # most rows: no copy, the product of them all
            products = (view.data @ query)[rows]
        else:
            products = view.data[rows] @ query
    norms = view.norms[rows]
    q_norm = float(np.linalg.norm(query.astype(np.float64)))
    keys, slack = _bounds(products.astype(np.float64), norms, q_norm, metric, len(query))
    if len(rows) > top_k:
        floor = np.partition(keys - slack, len(rows) - top_k)[len(rows) - top_k]
        near = np.flatnonzero(keys + slack >= floor)
    else:
        near = np.arange(len(rows))
    picked = rows[near]
    scores = _exact_scores(view.data, picked, query, norms[near], q_norm, metric)
    if len(picked) > top_k:  # only the rows tied with the k-th best or better are sorted
        keep = np.flatnonzero(scores >= np.partition(scores, len(scores) - top_k)[-top_k])
        picked, scores = picked[keep], scores[keep]
    distances = 1.0 - scores if metric == "cosine" else -scores
    order = sorted(range(len(picked)), key=lambda i: (-scores[i], distances[i],
                                                      view.keys[picked[i]]))
    return [(int(picked[i]), float(scores[i]), float(distances[i])) for i in order[:top_k]]


def _bounds(products: np.ndarray, norms: np.ndarray, q_norm: float, metric: str,
            dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A ranking key per row from float32 products (higher is better, in the metric's order)
    and how far from the exact key it may be.

    A float32 dot product of ``dim`` terms is off by at most ``dim·u/(1−dim·u)·Σ|vᵢqᵢ|`` (u is
    float32's unit roundoff, whatever the order of the sums), plus the steps of products that
    underflow; Cauchy–Schwarz bounds the sum by the norms, which are exact to float64. The
    margins on top cover float64's own rounding of the scores ranked in the end. A product
    that overflowed says nothing: its row always gets scored again.
    """
    gamma = dim * _UNIT32 / (1 - dim * _UNIT32) * (1 + 1e-6)
    error = gamma * norms * q_norm + 2 * dim * _TINY32
    finite = np.isfinite(products)
    products = np.where(finite, products, 0.0)
    if metric == "dot":
        keys, slack = products, error
    elif metric == "cosine":
        scale = norms * q_norm
        keys, slack = _over(products, scale), _over(error, scale) * (1 + 1e-9)
    else:  # −distance², less the query's constant |q|², and float64's own error in it
        squares = norms * norms
        keys = 2 * products - squares
        slack = 2 * error + (dim + 8) * _UNIT64 * (squares + q_norm * q_norm
                                                   + 2 * np.abs(products))
    return keys, np.where(finite, slack, np.inf)


def _exact_scores(data: np.ndarray, rows: np.ndarray, query: np.ndarray, norms: np.ndarray,
                  q_norm: float, metric: str) -> np.ndarray:
    """The metric's scores of ``rows`` in float64, a chunk of rows at a time."""
    q64 = query.astype(np.float64)
    found = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), RESCORE_CHUNK):
        block = data[rows[start:start + RESCORE_CHUNK]].astype(np.float64)
        found[start:start + len(block)] = (-np.linalg.norm(block - q64, axis=1)
                                           if metric == "l2" else block @ q64)
    return _over(found, norms * q_norm) if metric == "cosine" else found


def _over(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``values / scale``, and 0 where ``scale`` is 0: a cosine against a zero vector is 0."""
    nonzero = scale > 0
    return np.where(nonzero, values / np.where(nonzero, scale, 1.0), 0.0)


class ScopeIndex:
    """One scope's vectors in this process, as of ``seq`` in the store's record of changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counted = 0  # its bytes as the cache last counted them
        self.reset()

    def reset(self) -> None:
        """Forget everything; searches running keep what they took."""
        self.seq = 0
        self.matrices: dict[int, Matrix] = {}
        self.dims: dict[str, int] = {}  # key → the dimension of its vector

    @property
    def nbytes(self) -> int:
        return sum(matrix.nbytes for matrix in self.matrices.values())

    def apply(self, changes: list[StoredVector]) -> None:
        """One page of changes in ``seq`` order, each key at most once (each is a row of the
        store). Pure Python and numpy on this index alone: run it where the loop is not."""
        added: dict[int, list[StoredVector]] = {}
        for change in changes:
            old = self.dims.pop(change.key, None)
            if old is not None:
                self.matrices[old].kill(change.key)
            if change.embedding is not None:
                added.setdefault(len(change.embedding) // 4, []).append(change)
                self.dims[change.key] = len(change.embedding) // 4
        for dim, batch in added.items():
            embeddings = b"".join(change.embedding or b"" for change in batch)
            self.matrices.setdefault(dim, Matrix(dim)).extend(
                [change.key for change in batch], [change.metadata for change in batch],
                np.array([(change.created_at, change.updated_at) for change in batch]),
                np.frombuffer(embeddings, dtype="<f4").reshape(len(batch), dim))
        for dim, matrix in list(self.matrices.items()):
            if matrix.dead >= COMPACT_DEAD and matrix.dead >= matrix.count // 2:
                self.matrices[dim] = matrix.compacted()
        self.seq = changes[-1].seq


class VectorMemory:
    """Search and the indexes behind it, for one service in one process."""

    def __init__(self, store: Callable[[], Store], metric: str, offload: Offload) -> None:
        self._store = store
        self.metric = metric
        self._offload = offload  # where heavy work runs: a thread pool, off the event loop
        self._indexes: OrderedDict[tuple[str, str], ScopeIndex] = OrderedDict()
        self._bytes = 0  # the sum of the cached indexes' ``counted``
        self._lock = threading.Lock()

    def search(self, scope: str, scope_id: str, query: np.ndarray, top_k: int,
               filters: dict[str, Any]) -> list[Hit]:
        view = self._view(scope, scope_id, len(query))
        if view is None:
            return []
        found = self._offload(search, view, query, self.metric, top_k, filters)
        return [view.hit(row, score, distance) for row, score, distance in found]

    def _view(self, scope: str, scope_id: str, dim: int) -> View | None:
        """The scope's vectors of ``dim`` dimensions as the store has them now. Taken under
        the index's lock, so it never sees half of a page of changes."""
        name = (scope, scope_id)
        with self._lock:
            index = self._indexes.get(name)
            if index is not None:
                self._indexes.move_to_end(name)
        if index is None:
            index = ScopeIndex()
        with index.lock:
            self._catch_up(index, scope, scope_id)
            matrix = index.matrices.get(dim)
            self._keep(name, index)
            return matrix.view() if matrix is not None else None

    def _catch_up(self, index: ScopeIndex, scope: str, scope_id: str) -> None:
        """Read the scope's changes after ``index.seq``, a page at a time.

        Deletions are recorded for a while only (``vector_head`` says up to which ``seq`` of
        this scope they were forgotten). An index that had not read that far starts over, and
        so does one that was reading while more were forgotten: it may have missed one."""
        store = self._store()
        head, forgotten = store.vector_head(scope, scope_id)
        if index.seq < forgotten:
            index.reset()
        while index.seq < head:
            changes = store.vector_changes(scope, scope_id, index.seq, CHANGES_PAGE)
            if not changes:
                break
            self._offload(index.apply, changes)
            pause()
            head, now_forgotten = store.vector_head(scope, scope_id)
            if now_forgotten != forgotten:
                index.reset()
                forgotten = now_forgotten

    def _keep(self, name: tuple[str, str], index: ScopeIndex) -> None:
        """Cache an index that holds vectors, and only those, within ``CACHE_SCOPES`` and
        ``CACHE_BYTES``: a scope searched but empty costs nothing to find empty again."""
        with self._lock:
            if not index.dims:
                if self._indexes.get(name) is index:
                    del self._indexes[name]
                    self._bytes -= index.counted
                    index.counted = 0
                return
            if self._indexes.setdefault(name, index) is not index:
                return  # another search of the scope built one at the same time
            size = index.nbytes
            self._bytes += size - index.counted
            index.counted = size
            while len(self._indexes) > 1 and (len(self._indexes) > CACHE_SCOPES
                                              or self._bytes > CACHE_BYTES):
                _, dropped = self._indexes.popitem(last=False)
                self._bytes -= dropped.counted
                dropped.counted = 0
