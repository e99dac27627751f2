"""Reads that cost their answer, and readers that cannot hurt a worker:
``python -m bench.cost``.

On SQLite and on PostgreSQL, one gevent worker with the default settings, a log of 1,000,000
events (``bulk.N``, filled straight through the store as ``tests/test_store.py`` does, with one
``rare.1`` written through the API half-way):

* the time from opening ``GET /memory/events/sse?patterns=rare.*`` with ``Last-Event-ID: 1``
  to its first event, and the time of ``GET /memory/events/history?patterns=rare.*&limit=10``;
* the worst gap between answers of a ``/healthz`` ticker (every 20 ms, its own process) while
  each of them runs, including whatever the worker still does for a stream after it closed;
* the same two with a glob that has no literal prefix (``*rare.*``), which no index narrows,
  reported without a target;
* the worker's RSS growth while 10 frozen SSE readers (raw sockets that read the headers, then
  never read), each on its own ``?scope=actor&scope_id=aN``, are sent 900 values of 200 KB
  each, and how many of them were overflowed: each is sent far more than
  ``MEMORY_SUBSCRIBER_BYTES``, so a reader that was not is flagged (``NOT MET``).

Each query runs ``--rounds`` times; the table shows the median and the worst, and a target is
judged on the worst. PostgreSQL gets ``VACUUM ANALYZE events`` after the fill, as autovacuum
would have done to a log that grew over days.
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.parse
from contextlib import ExitStack
from typing import Any

from app.store import open_store

from .servers_ours import (
    STORES,
    Databases,
    Http,
    Ticker,
    header,
    put,
    raw_stream,
    read_until,
    run_stores,
    start_server,
    stop_server,
    table,
    verdict,
    worker_rss_kb,
)

SSE = "/api/v1/memory/events/sse"
HISTORY = "/api/v1/memory/events/history"
SELECTIVE = "rare.*"
NO_PREFIX = "*rare.*"
TARGET_MS = 50.0
SUBSCRIBER_BYTES = 4 << 20  # MEMORY_SUBSCRIBER_BYTES' default
#: a reader sent this many times the bound must have been overflowed
OVERFLOW_FACTOR = 10
FILL_BATCH = 50_000
QUERY_DEADLINE = 120.0


def fill_log(url: str, count: int, first: int) -> float:
    """Append ``count`` events ``bulk.N`` straight into the log; returns the seconds taken."""
    started = time.monotonic()
    store = open_store(url)
    try:
        for low in range(first, first + count, FILL_BATCH):
            high = min(first + count, low + FILL_BATCH)
            moment = time.time()
            rows = [(moment, "global", "global", f"bulk.{n}", "set", "1", None, "", "", "", None)
                    for n in range(low, high)]
            with store._write() as cur:  # type: ignore[attr-defined]
                cur.executemany(store._sql(  # type: ignore[attr-defined]
                    "INSERT INTO events (epoch, scope, scope_id, key, action, data, "
                    "previous_data, agent_id, actor_id, workflow_id, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"), rows)
    finally:
        store.close()
    return time.monotonic() - started


def metric(http: Http, name: str) -> float:
    _, _, body, _ = http.request("GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_streams_gone(http: Http, timeout: float = 60.0) -> float:
    """Wait until the worker holds no SSE stream; returns when that was seen."""
    deadline = time.monotonic() + timeout
    while metric(http, 'memory_events_subscribers{transport="sse"}') > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("a closed stream was never let go")
        time.sleep(0.02)
    return time.monotonic()


def first_event(port: int, glob: str, control: Http) -> tuple[float, float, float]:
    """Open the resuming stream; returns (seconds to the first event, start, when the worker
    was done with the stream after it was closed)."""
    path = f"{SSE}?patterns={urllib.parse.quote(glob)}"
    started = time.monotonic()
    sock = raw_stream(port, path, {"Last-Event-ID": "1"})
    try:
        read_until(sock, b'"key":"rare.1"', started + QUERY_DEADLINE)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    return elapsed, started, wait_streams_gone(control, QUERY_DEADLINE)


def history(http: Http, glob: str) -> tuple[float, float]:
    query = urllib.parse.urlencode({"patterns": glob, "limit": 10})
    started = time.monotonic()
    status, _, body, elapsed = http.request("GET", f"{HISTORY}?{query}")
    if status != 200 or [e["key"] for e in json.loads(body)] != ["rare.1"]:
        raise AssertionError(f"history {glob}: {status} {body[:200]!r}")
    return elapsed, started


def queries(server: Any, rounds: int) -> dict[str, Any]:
    port = server.port
    http, control = Http(port, QUERY_DEADLINE), Http(port)
    ticker = Ticker(port)
    found: dict[str, Any] = {}
    try:
        time.sleep(0.5)  # a quiet stretch of ticks first
        found["idle_gap_ms"] = ticker.gap(time.monotonic() - 0.4, time.monotonic())[0]
        for glob in (SELECTIVE, NO_PREFIX):
            sse, sse_gaps, hist, hist_gaps = [], [], [], []
            for _ in range(rounds):
                elapsed, start, done = first_event(port, glob, control)
                time.sleep(0.1)
                sse.append(elapsed * 1000)
                sse_gaps.append(ticker.gap(start, done)[0])
                elapsed, start = history(http, glob)
                time.sleep(0.1)
                hist.append(elapsed * 1000)
                hist_gaps.append(ticker.gap(start, start + elapsed)[0])
            found[glob] = {"sse_first_event_ms": sse, "sse_gap_ms": sse_gaps,
                           "history_ms": hist, "history_gap_ms": hist_gaps}
    finally:
        ticker.stop()
        http.close()
        control.close()
    return found


def frozen_readers(server: Any, readers: int, values: int, value_bytes: int) -> dict[str, Any]:
    """Readers that never read, sent ``values`` values of ``value_bytes`` each."""
    port = server.port
    frozen = []
    for n in range(readers):
        sock = raw_stream(port, f"{SSE}?scope=actor&scope_id=a{n}")
        read_until(sock, b": connected", time.monotonic() + 10)
        frozen.append(sock)
    done = raw_stream(port, f"{SSE}?patterns=done")
    read_until(done, b": connected", time.monotonic() + 10)
    http = Http(port)
    overflows_before = metric(http, 'memory_events_disconnects_total{reason="overflow"}')
    before = worker_rss_kb(server)
    peak = [before]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            peak[0] = max(peak[0], worker_rss_kb(server))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    value = "x" * value_bytes
    started = time.monotonic()
    try:
        for i in range(values):
            for n in range(readers):
                put(http, f"big.{i}", value, scope="actor", scope_id=f"a{n}")
        put(http, "done", None)
        read_until(done, b'"key":"done"', time.monotonic() + 60)  # every write was offered
        written = time.monotonic() - started
        after = worker_rss_kb(server)
    finally:
        sampling.set()
        sampler.join(5)
        done.close()
    peak[0] = max(peak[0], after)
    ended_with_overflow = sum(thaw(sock) for sock in frozen)
    # a stream counts as disconnected once its last frame is written, and the counters are
    # flushed twice a second: read them after the readers have drained
    deadline = time.monotonic() + 5
    while True:
        overflowed = metric(http, 'memory_events_disconnects_total{reason="overflow"}') - \
            overflows_before
        if overflowed >= ended_with_overflow or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    http.close()
    return {"rss_before_kb": before, "rss_after_kb": after, "rss_peak_kb": peak[0],
            "growth_mb": (after - before) / 1024, "peak_growth_mb": (peak[0] - before) / 1024,
            "overflowed_metric": int(overflowed), "ended_with_overflow": ended_with_overflow,
            "readers": readers, "writes": readers * values, "write_seconds": written}


def overflow_expected(args: argparse.Namespace) -> bool:
    """Whether each frozen reader is sent so much more than ``MEMORY_SUBSCRIBER_BYTES`` that
    no kernel socket buffer can hide it: then every one must be cut off with ``overflow``."""
    return args.values * args.value_bytes >= OVERFLOW_FACTOR * SUBSCRIBER_BYTES


def all_overflowed(frozen: dict[str, Any]) -> bool:
    """Every reader was cut off for overflow. Whether it could still read the final
    ``overflow`` frame depends on how long it stayed frozen: a stream blocked writing to a full
    socket for two heartbeats is let go without one, and resumes from the last id it read."""
    return frozen["overflowed_metric"] == frozen["readers"]


def thaw(sock: Any, timeout: float = 60.0) -> bool:
    """Read what the server kept for a frozen reader; whether it ended with ``overflow``."""
    deadline = time.monotonic() + timeout
    tail = b""
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            tail = (tail + chunk)[-4096:]
            if tail.endswith(b"0\r\n\r\n"):
                break
    except OSError:
        pass
    finally:
        sock.close()
    return b"event: overflow" in tail


def run_store(store: str, args: argparse.Namespace, dbs: Databases,
              stack: ExitStack) -> dict[str, Any]:
    url = dbs.url(store)
    half = args.events // 2
    fill_seconds = fill_log(url, half, 0)
    with ExitStack() as writer:
        server = start_server(writer, url, f"cost-{store}-rare")
        put(Http(server.port), "rare.1", {"rare": True})
        stop_server(server)
    fill_seconds += fill_log(url, args.events - half - 1, half)
    dbs.execute(url, "VACUUM ANALYZE events")
    print(f"  {store}: {args.events:,} events filled in {fill_seconds:.1f} s", flush=True)
    server = start_server(stack, url, f"cost-{store}")
    found = queries(server, args.rounds)
    print(f"  {store}: queries done", flush=True)
    found["frozen"] = frozen = frozen_readers(server, args.readers, args.values,
                                              args.value_bytes)
    print(f"  {store}: frozen readers done", flush=True)
    if overflow_expected(args) and not all_overflowed(frozen):
        print(f"  {store}: NOT MET: of {args.readers} frozen readers, "
              f"the metric counted {frozen['overflowed_metric']} cut off for overflow", flush=True)
    found["fill_seconds"] = fill_seconds
    stop_server(server)
    return found


def summarise(results: dict[str, Any], args: argparse.Namespace) -> str:
    stores = list(results)
    allowed_mb = (args.readers * SUBSCRIBER_BYTES + 50_000_000) / (1 << 20)  # MiB

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({max(values):.1f})"

    rows = []
    for glob, judged in ((SELECTIVE, True), (NO_PREFIX, False)):
        for name, field in (("first event of a resume from id 1", "sse_first_event_ms"),
                            ("worst /healthz gap during it", "sse_gap_ms"),
                            ("history limit=10", "history_ms"),
                            ("worst /healthz gap during it", "history_gap_ms")):
            measured = [results[s][glob][field] for s in stores]
            rows.append([f"`{glob}`: {name} (ms)"] + [cell(v) for v in measured]
                        + ([f"≤ {TARGET_MS:g}"] + [verdict(max(v), TARGET_MS) for v in measured]
                           if judged else ["–"] + ["no target"] * len(stores)))
    rows.append(["/healthz gap, idle (ms)"] + [f"{results[s]['idle_gap_ms']:.1f}" for s in stores]
                + ["–"] * (1 + len(stores)))
    frozen = [results[s]["frozen"] for s in stores]
    rows.append([f"{args.readers} frozen readers × {args.values} values of "
                 f"{args.value_bytes // 1000} KB: worker RSS growth, peak (MiB)"]
                + [f"{f['peak_growth_mb']:.1f}" for f in frozen] + [f"≤ {allowed_mb:.1f}"]
                + [verdict(f["peak_growth_mb"], allowed_mb) for f in frozen])
    rows.append(["… RSS growth at the end (MiB)"] + [f"{f['growth_mb']:.1f}" for f in frozen]
                + [f"≤ {allowed_mb:.1f}"] + [verdict(f["growth_mb"], allowed_mb) for f in frozen])
    rows.append(["… worker RSS before (MiB)"]
                + [f"{f['rss_before_kb'] / 1024:.1f}" for f in frozen]
                + ["–"] * (1 + len(stores)))
    judged = overflow_expected(args)
    rows.append(["… readers cut off for overflow (the disconnects metric)"]
                + [f"{f['overflowed_metric']}" for f in frozen]
                + ([f"{args.readers}"]
                   + [verdict(0 if all_overflowed(f) else 1, 0) for f in frozen]
                   if judged else ["–"] + ["no target"] * len(stores)))
    rows.append(["… of them, the final `overflow` frame read once they read again"]
                + [f"{f['ended_with_overflow']}" for f in frozen]
                + ["–"] * (1 + len(stores)))
    rows.append(["… writes/s while frozen readers held"]
                + [f"{f['writes'] / f['write_seconds']:.0f}" for f in frozen]
                + ["–"] * (1 + len(stores)))
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    headers = (["measure"] + [names[s] for s in stores] + ["target"]
               + [f"{names[s]}" for s in stores])
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each query")
    parser.add_argument("--readers", type=int, default=10, help="frozen readers")
    parser.add_argument("--values", type=int, default=900, help="values sent to each reader")
    parser.add_argument("--value-bytes", type=int, default=200_000)
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    title = header(f"bench.cost: {args.events:,} events, 1 gevent worker, default settings")
    print(title, flush=True)
    run_stores("cost", title,
               "Times: median of the rounds (worst in brackets); targets are judged on the worst.",
               stores, args, run_store, summarise)


if __name__ == "__main__":
    main()
