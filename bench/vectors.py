"""Vector search cost: ``python -m bench.vectors``.

On SQLite and on PostgreSQL, one gevent worker, default settings (cosine): three scopes of 1k,
10k and 50k random vectors of 768 dimensions (the 1k written through ``POST
/api/v1/memory/vector``, the others through the store's ``vector_set`` for speed). A fresh
worker's first vector request (a search of an empty scope) imports numpy: it is timed apart,
with the ticker's worst gap, so what follows measures the indexes alone. For each scope:

* the first search, which loads the scope's index from the database, and the worst gap of a
  ``/healthz`` ticker (every 20 ms, its own process) meanwhile: the worker must go on serving
  others while it reads and builds the index (target ≤ 50 ms, as in a search storm);
* then ``--searches`` searches one after another (``top_k`` 10), each timed from the client
  (request written → answer read), p50/p99; each query is a stored vector plus a little noise,
  and its best hit must be that vector;
* a search storm: ``--searchers`` clients searching the 50k scope at once for
  ``--storm-seconds``, with the ticker's worst gap, searches/s and the storm's p50/p99.

The matrix product alone (numpy in a fresh process, the same shapes, with OpenBLAS's default
threads and with one) is printed beside, as the floor a search on this machine cannot go under.
PostgreSQL gets ``VACUUM ANALYZE vectors`` after the fill, as autovacuum would have done to a
table that grew over time (``--no-analyze`` measures the freshly filled table).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

import numpy as np

from app.store import open_store

from .servers_ours import (
    STORES,
    Databases,
    Http,
    Ticker,
    header,
    p,
    run_stores,
    start_server,
    stop_server,
    table,
    verdict,
)

DIM = 768
SEARCH = "/api/v1/memory/vector/search"
TARGETS_MS = {10_000: 10.0, 50_000: 50.0}
GAP_TARGET_MS = 50.0
QUERIES = 64  # distinct query bodies, cycled
NOISE = 0.01


def vectors_for(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM), dtype=np.float32)


def scope_id(count: int) -> str:
    return f"v{count}"


def insert_api(port: int, data: np.ndarray, sid: str) -> float:
    http = Http(port)
    started = time.monotonic()
    for n, row in enumerate(data):
        status, _, body, _ = http.post_json("/api/v1/memory/vector", {
            "key": f"k{n}", "embedding": row.tolist(), "metadata": {"n": n},
            "scope": "actor", "scope_id": sid})
        if status != 200:
            raise AssertionError(f"vector set: {status} {body[:200]!r}")
    http.close()
    return time.monotonic() - started


def insert_store(url: str, data: np.ndarray, sid: str) -> float:
    store = open_store(url)
    started = time.monotonic()
    try:
        for n, row in enumerate(data):
            store.vector_set("actor", sid, f"k{n}", row.astype("<f4").tobytes(),
                             json.dumps({"n": n}))
    finally:
        store.close()
    return time.monotonic() - started


def query_bodies(data: np.ndarray, sid: str, seed: int) -> list[tuple[bytes, str]]:
    """(body, key of the vector it was made from)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(data), size=min(QUERIES, len(data)), replace=False)
    bodies = []
    for n in picks:
        query = data[n] + NOISE * rng.standard_normal(DIM, dtype=np.float32)
        bodies.append((json.dumps({"query_embedding": [float(x) for x in query], "top_k": 10,
                                   "scope": "actor", "scope_id": sid}).encode(), f"k{n}"))
    return bodies


def search_once(http: Http, body: bytes, expect: str | None) -> tuple[float, bool]:
    status, _, answer, elapsed = http.request("POST", SEARCH, body)
    if status != 200:
        raise AssertionError(f"search: {status} {answer[:200]!r}")
    hits = json.loads(answer)
    if len(hits) != 10:
        raise AssertionError(f"search answered {len(hits)} hits")
    return elapsed, expect is None or hits[0]["key"] == expect


FLOOR_SCRIPT = """
import json, sys, time
import numpy as np
found = {}
for count in map(int, sys.argv[1:]):
    matrix = np.random.default_rng(99).standard_normal((count, %d), dtype=np.float32)
    query = matrix[0].copy()
    times = []
    for _ in range(30):
        started = time.perf_counter()
        matrix @ query
        times.append(time.perf_counter() - started)
    found[count] = sorted(times)[len(times) // 2]
print(json.dumps(found))
""" % DIM


def matmul_floor(sizes: list[int], blas_threads: str | None) -> dict[int, float]:
    """Seconds of ``matrix @ query`` alone, the median of 30, for each size × 768 float32, in
    a fresh process (with ``OPENBLAS_NUM_THREADS`` set when ``blas_threads`` is)."""
    env = {**os.environ}
    env.pop("OPENBLAS_NUM_THREADS", None)
    if blas_threads:
        env["OPENBLAS_NUM_THREADS"] = blas_threads
    out = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT, *map(str, sizes)], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return {int(k): v for k, v in json.loads(out).items()}


def settled_gap(ticker: Ticker, start: float, end: float) -> tuple[float, float]:
    """``ticker.gap(start, end)`` once the ticker has reported an answer after ``end``: the
    ping in flight at ``end`` is the one a stall held up, and it reaches ``samples`` only
    when it is answered."""
    deadline = time.monotonic() + 30
    while not ticker.samples or ticker.samples[-1][1] <= end:
        if time.monotonic() > deadline:
            raise AssertionError("the /healthz ticker stopped answering")
        time.sleep(0.01)
    return ticker.gap(start, end)


def storm(port: int, bodies: list[tuple[bytes, str]], searchers: int, seconds: float,
          ticker: Ticker) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.monotonic()
    end = start + seconds

    def searcher(offset: int) -> None:
        http = Http(port)
        n = offset
        try:
            while time.monotonic() < end:
                body, _ = bodies[n % len(bodies)]
                latencies.append(search_once(http, body, None)[0])
                n += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            http.close()

    threads = [threading.Thread(target=searcher, args=(n * 7,), daemon=True)
               for n in range(searchers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    finished = time.monotonic()
    if errors:
        raise AssertionError(f"storm: {errors[0]}")
    gap, worst_ping = settled_gap(ticker, start, finished)
    return {"searches": len(latencies), "seconds": finished - start,
            "p50_ms": p(latencies, 50) * 1000, "p99_ms": p(latencies, 99) * 1000,
            "gap_ms": gap, "worst_ping_ms": worst_ping}


def run_store(store: str, args: argparse.Namespace, dbs: Databases,
              stack: ExitStack) -> dict[str, Any]:
    url = dbs.url(store)
    env = {"OPENBLAS_NUM_THREADS": args.blas_threads} if args.blas_threads else None
    server = start_server(stack, url, f"vectors-{store}", env=env)
    found: dict[str, Any] = {"sizes": {}}
    datasets = {}
    for count in args.sizes:
        data = vectors_for(count, count)
        datasets[count] = data
        sid = scope_id(count)
        if count <= args.api_insert:
            seconds = insert_api(server.port, data, sid)
            how = "API"
        else:
            seconds = insert_store(url, data, sid)
            how = "store"
        found["sizes"][count] = {"insert_seconds": seconds, "insert_via": how}
        print(f"  {store}: {count:,} vectors inserted through the {how} in {seconds:.1f} s "
              f"({count / seconds:,.0f}/s)", flush=True)
    stop_server(server)  # a fresh worker: no index in memory yet
    if args.analyze:
        # as autovacuum would have by then: without statistics PostgreSQL answers each
        # search's MAX(seq) of the scope by reading the scope's whole index range
        dbs.execute(url, "VACUUM ANALYZE vectors")
    server = start_server(stack, url, f"vectors-{store}", env=env)
    bodies = {count: query_bodies(datasets[count], scope_id(count), count + 1)
              for count in args.sizes}
    http = Http(server.port)
    ticker = Ticker(server.port)
    try:
        started = time.monotonic()  # the worker's first vector request imports numpy
        status, _, answer, elapsed = http.request("POST", SEARCH, json.dumps({
            "query_embedding": [1.0], "scope": "actor", "scope_id": "empty"}).encode())
        if status != 200 or json.loads(answer) != []:
            raise AssertionError(f"search of an empty scope: {status} {answer[:200]!r}")
        found["import_ms"] = elapsed * 1000
        found["import_gap_ms"] = settled_gap(ticker, started, started + elapsed)[0]
        for count in args.sizes:  # the warm-up search loads the index
            body, key = bodies[count][0]
            started = time.monotonic()
            elapsed, right = search_once(http, body, key)
            found["sizes"][count].update(
                first_ms=elapsed * 1000,
                first_gap_ms=settled_gap(ticker, started, started + elapsed)[0])
    finally:
        ticker.stop()
    for count in args.sizes:
        times, right = [], 0
        for n in range(args.searches):
            body, key = bodies[count][n % len(bodies[count])]
            elapsed, ok = search_once(http, body, key)
            times.append(elapsed)
            right += ok
        found["sizes"][count].update(p50_ms=p(times, 50) * 1000, p99_ms=p(times, 99) * 1000,
                                     max_ms=max(times) * 1000, top1_right=right,
                                     searches=len(times))
        print(f"  {store}: {count:,}: p50 {found['sizes'][count]['p50_ms']:.2f} ms, "
              f"p99 {found['sizes'][count]['p99_ms']:.2f} ms", flush=True)
    http.close()
    largest = max(args.sizes)
    ticker = Ticker(server.port)
    try:
        time.sleep(0.5)
        found["idle_gap_ms"] = settled_gap(ticker, time.monotonic() - 0.4, time.monotonic())[0]
        found["storm"] = storm(server.port, bodies[largest], args.searchers, args.storm_seconds,
                               ticker)
    finally:
        ticker.stop()
    found["storm"]["size"] = largest
    stop_server(server)
    return found


def summarise(results: dict[str, Any], args: argparse.Namespace,
              floors: dict[str, dict[int, float]]) -> str:
    stores = list(results)
    blank = ["–"] * (1 + len(stores))
    rows = [["a worker's first vector request, which imports numpy (ms)"]
            + [f"{results[s]['import_ms']:.0f}" for s in stores] + blank,
            ["… worst /healthz gap during it (ms)"]
            + [f"{results[s]['import_gap_ms']:.1f}" for s in stores] + blank]
    for count in args.sizes:
        sizes = [results[s]["sizes"][count] for s in stores]
        target = TARGETS_MS.get(count)
        rows.append([f"{count:,} vectors: search p50 (ms)"] + [f"{x['p50_ms']:.2f}" for x in sizes]
                    + blank)
        rows.append([f"{count:,} vectors: search p99 (ms)"] + [f"{x['p99_ms']:.2f}" for x in sizes]
                    + ([f"≤ {target:g}"] + [verdict(x["p99_ms"], target) for x in sizes]
                       if target else blank))
        rows.append([f"{count:,} vectors: best hit is the query's source"]
                    + [f"{x['top1_right']}/{x['searches']}" for x in sizes] + blank)
        rows.append([f"{count:,} vectors: first search, loading the index (ms)"]
                     + [f"{x['first_ms']:.0f}" for x in sizes] + blank)
        rows.append(["… worst /healthz gap during it (ms)"]
                    + [f"{x['first_gap_ms']:.1f}" for x in sizes] + [f"≤ {GAP_TARGET_MS:g}"]
                    + [verdict(x["first_gap_ms"], GAP_TARGET_MS) for x in sizes])
        rows.append([f"{count:,} vectors: inserted, per second"]
                    + [f"{count / x['insert_seconds']:,.0f} ({x['insert_via']})" for x in sizes]
                    + blank)
        for name, floor in floors.items():
            rows.append([f"{count:,} vectors: numpy `matrix @ query` alone, {name} (ms)"]
                        + [f"{floor[count] * 1000:.2f}"] * len(stores) + blank)
    storms = [results[s]["storm"] for s in stores]
    label = f"storm, {args.searchers} searchers on {max(args.sizes):,} for {args.storm_seconds:g} s"
    rows.append([f"{label}: worst /healthz gap (ms)"] + [f"{x['gap_ms']:.1f}" for x in storms]
                + [f"≤ {GAP_TARGET_MS:g}"] + [verdict(x["gap_ms"], GAP_TARGET_MS) for x in storms])
    rows.append(["… worst /healthz answer (ms)"] + [f"{x['worst_ping_ms']:.1f}" for x in storms]
                + blank)
    rows.append(["… /healthz gap when idle (ms)"]
                + [f"{results[s]['idle_gap_ms']:.1f}" for s in stores] + blank)
    rows.append(["… searches/s"] + [f"{x['searches'] / x['seconds']:.0f}" for x in storms] + blank)
    rows.append(["… search p50 / p99 in the storm (ms)"]
                + [f"{x['p50_ms']:.1f} / {x['p99_ms']:.1f}" for x in storms] + blank)
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    headers = ["measure"] + [names[s] for s in stores] + ["target"] + [names[s] for s in stores]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--sizes", default="1000,10000,50000",
                        help="vectors per scope, comma separated")
    parser.add_argument("--api-insert", type=int, default=1000,
                        help="scopes up to this size are written through the API")
    parser.add_argument("--searches", type=int, default=300, help="timed searches per scope")
    parser.add_argument("--searchers", type=int, default=4)
    parser.add_argument("--storm-seconds", type=float, default=5.0)
    parser.add_argument("--no-analyze", dest="analyze", action="store_false",
                        help="search PostgreSQL's freshly filled table without VACUUM ANALYZE")
    parser.add_argument("--blas-threads", help="OPENBLAS_NUM_THREADS for the server (default: "
                                               "the server's own, 1)")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    stores = [s for s in args.stores.split(",") if s]
    blas = (f", OPENBLAS_NUM_THREADS={args.blas_threads}" if args.blas_threads
            else ", default settings")
    blas += "" if args.analyze else ", PostgreSQL without VACUUM ANALYZE after the fill"
    title = header(f"bench.vectors: {DIM} dimensions, cosine, top_k 10, 1 gevent worker{blas}")
    print(title, flush=True)
    floors = {"OpenBLAS default threads": matmul_floor(args.sizes, None),
              "OpenBLAS 1 thread": matmul_floor(args.sizes, "1")}
    run_stores("vectors", title,
               "Search times from the client: request written → answer read, after one "
               "warm-up search per scope.",
               stores, args, run_store, summarise, floors=floors)


if __name__ == "__main__":
    main()
