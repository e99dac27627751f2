"""Live state: ``python -m bench.state``.

On SQLite and on PostgreSQL, 2 gevent workers, default settings:

* **snapshot**: 10,000 records; ``GET /memory/events/sse?snapshot=1`` from the request to
  ``event: snapshot_end``, ``--rounds`` times (every record must arrive);
* **compare-and-set**: 16 clients × 200 read-modify-write increments of one counter (``get``,
  then ``set`` with ``if_version``; on 409 the body's ``current`` is the next try's read):
  increments/s, attempts, and that the counter ends at 3,200 with one ``set`` event each;
* **list pages**: every ``prefix`` + ``limit=100`` page of a walk through a scope of 50,000
  keys (following ``Link: rel="next"``), against the one page of a scope of 100 keys asked as
  many times: p50/p99 (the large scope also holds 5,000 keys outside the prefix);
* **TTL**: a steady writer (200 writes/s on one keep-alive connection); its latency before,
  then while 10,000 keys written in one transaction with the same ``ttl_seconds`` expire, and
  that each expiry logged exactly one ``delete`` event with ``reason`` ``expired``.

Records are written straight through the store in one transaction per batch (each with its
``set`` event, so versions are real), as ``tests/test_store.py`` fills the log; the counter
and the steady writer go through the API.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.parse
from contextlib import ExitStack
from typing import Any

from app.store import open_store

from .cost import wait_streams_gone
from .servers_ours import (
    STORES,
    Databases,
    Http,
    header,
    p,
    put,
    raw_stream,
    run_stores,
    start_server,
    stop_server,
    table,
    verdict,
)

SSE = "/api/v1/memory/events/sse"
LIST = "/api/v1/memory/list"
PAGE_TARGET_MS = 20.0
TTL_FACTOR = 2.0
FILL_BATCH = 5000


def fill_records(store: Any, scope: str, scope_id: str, keys: list[str], data: str,
                 ttl_seconds: float | None = None, per_transaction: int = FILL_BATCH) -> float:
    """Write each key's record and its ``set`` event, ``per_transaction`` at a time; returns
    the moment written into the last batch (``time.time()``)."""
    sql = store._sql
    moment = 0.0
    for low in range(0, len(keys), per_transaction):
        batch = keys[low:low + per_transaction]
        with store._write() as cur:  # holds the log's write lock: no other id comes between
            moment = round(time.time(), 6)
            expires = round(moment + ttl_seconds, 6) if ttl_seconds else None
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM events")
            before = cur.fetchone()[0]
            cur.executemany(sql(
                "INSERT INTO events (epoch, scope, scope_id, key, action, data, "
                "previous_data, agent_id, actor_id, workflow_id, reason) "
                "VALUES (?, ?, ?, ?, 'set', ?, NULL, '', '', '', NULL)"),
                [(moment, scope, scope_id, key, data) for key in batch])
            cur.execute(sql("SELECT key, id FROM events WHERE id > ?"), (before,))
            version = dict(cur.fetchall())
            cur.executemany(sql(
                "INSERT INTO memory (scope, scope_id, key, data, created_at, updated_at, "
                "version, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                [(scope, scope_id, key, data, moment, moment, version[key], expires)
                 for key in batch])
    return moment


def count(store: Any, sql: str) -> int:
    with store._read() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


# -- snapshot ------------------------------------------------------------------------------

def snapshot(port: int, records: int, rounds: int) -> dict[str, Any]:
    control = Http(port)
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        sock = raw_stream(port, f"{SSE}?snapshot=1")
        seen, tail = 0, b""
        try:
            deadline = started + 60
            while b"event: snapshot_end" not in tail:
                if time.monotonic() > deadline:
                    raise TimeoutError("no snapshot_end within 60 s")
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("the stream ended before snapshot_end")
                joined = tail + chunk
                seen += joined.count(b"event: snapshot\n") - tail.count(b"event: snapshot\n")
                tail = joined[-64:]
            times.append(time.monotonic() - started)
        finally:
            sock.close()
        if seen != records:
            raise AssertionError(f"the snapshot held {seen} records, not {records}")
        wait_streams_gone(control)
    control.close()
    return {"ms": [t * 1000 for t in times], "records": records}


# -- compare-and-set -----------------------------------------------------------------------

def cas(port: int, clients: int, increments: int, store: Any) -> dict[str, Any]:
    key = "counter"
    http = Http(port)
    created = put(http, key, 0, if_version="0")
    http.close()
    attempts, conflicts, errors = [0], [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        http = Http(port)
        mine_attempts = mine_conflicts = 0
        try:
            barrier.wait(30)
            for _ in range(increments):
                status, _, body, _ = http.post_json("/api/v1/memory/get", {"key": key})
                if status != 200:
                    raise AssertionError(f"get: {status} {body[:200]!r}")
                record = json.loads(body)
                while True:
                    mine_attempts += 1
                    status, _, body, _ = http.post_json("/api/v1/memory/set", {
                        "key": key, "data": record["data"] + 1,
                        "if_version": record["version"]})
                    if status == 200:
                        break
                    if status != 409:
                        raise AssertionError(f"set: {status} {body[:200]!r}")
                    mine_conflicts += 1
                    record = json.loads(body)["current"]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            http.close()
            with lock:
                attempts[0] += mine_attempts
                conflicts[0] += mine_conflicts

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    started = time.monotonic()
    for thread in threads:
        thread.join(600)
    seconds = time.monotonic() - started
    if errors:
        raise AssertionError(f"compare-and-set: {errors[0]}")
    http = Http(port)
    status, _, body, _ = http.post_json("/api/v1/memory/get", {"key": key})
    final = json.loads(body)["data"]
    http.close()
    sets = count(store, f"SELECT COUNT(*) FROM events WHERE key = '{key}' AND action = 'set' "
                      f"AND id > {int(created['version'])}")
    return {"increments": clients * increments, "seconds": seconds, "attempts": attempts[0],
            "conflicts": conflicts[0], "final": final, "set_events": sets}


# -- list pages ----------------------------------------------------------------------------

def list_pages(port: int, big: int, small: int, prefix: str) -> dict[str, Any]:
    http = Http(port)

    def page(path: str) -> tuple[list, str | None, float]:
        status, headers, body, elapsed = http.request("GET", path)
        if status != 200:
            raise AssertionError(f"list: {status} {body[:200]!r}")
        link = headers.get("link")
        after = None
        if link:
            target = urllib.parse.urlsplit(link.split(";")[0].strip("<> "))
            after = f"{target.path}?{target.query}"
        return json.loads(body), after, elapsed

    query = urllib.parse.urlencode({"scope": "actor", "scope_id": "big", "prefix": prefix,
                                    "limit": 100})
    path: str | None = f"{LIST}?{query}"
    big_times, keys = [], 0
    while path is not None:
        records, path, elapsed = page(path)
        big_times.append(elapsed)
        keys += len(records)
    if keys != big:
        raise AssertionError(f"the walk saw {keys} keys, not {big}")
    query = urllib.parse.urlencode({"scope": "actor", "scope_id": "small", "prefix": prefix,
                                    "limit": 100})
    small_times = []
    for _ in range(len(big_times)):
        records, after, elapsed = page(f"{LIST}?{query}")
        if len(records) != small or after is not None:
            raise AssertionError("the small scope's page is wrong")
        small_times.append(elapsed)
    http.close()
    return {"big_pages": len(big_times), "big_p50_ms": p(big_times, 50) * 1000,
            "big_p99_ms": p(big_times, 99) * 1000, "small_p50_ms": p(small_times, 50) * 1000,
            "small_p99_ms": p(small_times, 99) * 1000}


# -- TTL -----------------------------------------------------------------------------------

class SteadyWriter:
    """``set`` at a steady rate on one keep-alive connection, each write's latency noted with
    the moment it was sent."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.interval = 1 / rate
        self.samples: list[tuple[float, float]] = []  # (sent, seconds)
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        http = Http(self.port)
        body = json.dumps({"key": "w", "data": {"pad": "x" * 100}})
        start, n = time.monotonic(), 0
        try:
            while not self.stopping.is_set():
                n += 1
                wait = start + n * self.interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -self.interval:  # late: go on from now, no burst to catch up
                    start, n = time.monotonic(), 0
                sent = time.monotonic()
                status, _, answer, elapsed = http.request(
                    "POST", "/api/v1/memory/set",
                    body.replace('"w"', f'"w.{len(self.samples) % 100}"').encode())
                if status != 200:
                    raise AssertionError(f"set: {status} {answer[:200]!r}")
                self.samples.append((sent, elapsed))
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(repr(exc))
        finally:
            http.close()

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for sent, seconds in list(self.samples) if start <= sent < end]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        if self.errors:
            raise AssertionError(f"steady writer: {self.errors[0]}")


def ttl(port: int, store: Any, keys: int, ttl_seconds: float, rate: float,
        baseline_seconds: float) -> dict[str, Any]:
    remaining = ("SELECT COUNT(*) FROM memory WHERE expires_at IS NOT NULL "
                 "AND key LIKE 'ttl.%'")
    writer = SteadyWriter(port, rate)
    try:
        time.sleep(1.0)  # settle
        base_start = time.monotonic()
        time.sleep(baseline_seconds)
        base_end = time.monotonic()
        fill_start = time.monotonic()
        moment = fill_records(store, "global", "global", [f"ttl.{n:05d}" for n in range(keys)],
                              '{"lease":true}', ttl_seconds, per_transaction=keys)
        fill_end = time.monotonic()
        expire_at = time.monotonic() + (moment + ttl_seconds - time.time())  # monotonic
        time.sleep(max(0.0, expire_at - 1.0 - time.monotonic()))
        quiet = writer.between(fill_end + 0.5, expire_at - 0.2)
        deadline = expire_at + 60
        while time.monotonic() < expire_at or count(store, remaining) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the keys never all expired")
            time.sleep(0.05)
        gone = time.monotonic()
        time.sleep(1.0)
    finally:
        writer.stop()
    during = writer.between(expire_at, gone + 0.1)
    base = writer.between(base_start, base_end)
    fill = writer.between(fill_start, fill_end)
    expired = count(store, "SELECT COUNT(*) FROM events WHERE action = 'delete' "
                         "AND reason = 'expired' AND key LIKE 'ttl.%'")
    distinct = count(store, "SELECT COUNT(DISTINCT key) FROM events WHERE action = 'delete' "
                          "AND reason = 'expired' AND key LIKE 'ttl.%'")
    return {"baseline": {"n": len(base), "p50_ms": p(base, 50) * 1000,
                         "p99_ms": p(base, 99) * 1000},
            "before_expiry": {"n": len(quiet), "p50_ms": (p(quiet, 50) or 0) * 1000,
                              "p99_ms": (p(quiet, 99) or 0) * 1000},
            "during": {"n": len(during), "p50_ms": p(during, 50) * 1000,
                       "p99_ms": p(during, 99) * 1000, "max_ms": max(during) * 1000},
            "fill": {"n": len(fill), "seconds": fill_end - fill_start,
                     "p99_ms": (p(fill, 99) or 0) * 1000},
            "expiry_seconds": gone - expire_at, "expired_events": expired,
            "expired_keys": distinct, "keys": keys}


# -- the run -------------------------------------------------------------------------------

def run_store(store: str, args: argparse.Namespace, dbs: Databases,
              stack: ExitStack) -> dict[str, Any]:
    url = dbs.url(store)
    db = open_store(url)  # the bench's own connections, opened once: opening takes the lock
    stack.callback(db.close)
    fill_records(db, "session", "snap", [f"snap.{n:05d}" for n in range(args.records)],
                 json.dumps({"text": "y" * 80}))
    server = start_server(stack, url, f"state-{store}", workers=args.workers)
    found: dict[str, Any] = {}
    found["snapshot"] = snapshot(server.port, args.records, args.rounds)
    print(f"  {store}: snapshot done", flush=True)
    found["cas"] = cas(server.port, args.clients, args.increments, db)
    print(f"  {store}: compare-and-set done", flush=True)
    fill_records(db, "actor", "big", [f"k.{n:05d}" for n in range(args.big)], '"v"')
    fill_records(db, "actor", "big", [f"other.{n:05d}" for n in range(args.big // 10)], '"v"')
    fill_records(db, "actor", "small", [f"k.{n:05d}" for n in range(args.small)], '"v"')
    dbs.execute(url, "VACUUM ANALYZE")
    found["list"] = list_pages(server.port, args.big, args.small, "k.")
    print(f"  {store}: list done", flush=True)
    found["ttl"] = ttl(server.port, db, args.ttl_keys, args.ttl_seconds, args.rate,
                       args.baseline_seconds)
    print(f"  {store}: TTL done", flush=True)
    stop_server(server)
    db.close()
    return found


def summarise(results: dict[str, Any], args: argparse.Namespace) -> str:
    stores = list(results)
    blank = ["–"] * (1 + len(stores))
    rows = []
    snaps = [results[s]["snapshot"] for s in stores]
    rows.append([f"snapshot of {args.records:,} records, to `snapshot_end`: median (worst) (ms)"]
                + [f"{sorted(x['ms'])[len(x['ms']) // 2]:.0f} ({max(x['ms']):.0f})"
                   for x in snaps] + blank)
    rows.append(["… records per second"]
                + [f"{args.records / (sorted(x['ms'])[len(x['ms']) // 2] / 1000):,.0f}"
                   for x in snaps] + blank)
    cas_ = [results[s]["cas"] for s in stores]
    total = args.clients * args.increments
    rows.append([f"compare-and-set, {args.clients} clients × {args.increments}: increments/s"]
                + [f"{x['increments'] / x['seconds']:.0f}" for x in cas_] + blank)
    rows.append(["… set attempts (409s)"] + [f"{x['attempts']:,} ({x['conflicts']:,})"
                                              for x in cas_] + blank)
    rows.append(["… counter at the end / `set` events logged"]
                + [f"{x['final']:,} / {x['set_events']:,}" for x in cas_]
                + [f"{total:,} / {total:,}"]
                + [verdict(0 if x["final"] == total == x["set_events"] else 1, 0) for x in cas_])
    lists = [results[s]["list"] for s in stores]
    rows.append([f"list `prefix` + `limit=100`, scope of {args.big:,} keys: page p50 (ms)"]
                + [f"{x['big_p50_ms']:.2f}" for x in lists] + blank)
    rows.append([f"… page p99, {lists[0]['big_pages']} pages (ms)"]
                + [f"{x['big_p99_ms']:.2f}" for x in lists] + [f"≤ {PAGE_TARGET_MS:g}"]
                + [verdict(x["big_p99_ms"], PAGE_TARGET_MS) for x in lists])
    rows.append([f"… scope of {args.small} keys: page p50 / p99 (ms)"]
                + [f"{x['small_p50_ms']:.2f} / {x['small_p99_ms']:.2f}" for x in lists]
                + [f"≤ {PAGE_TARGET_MS:g}"] + [verdict(x["small_p99_ms"], PAGE_TARGET_MS)
                                               for x in lists])
    ttls = [results[s]["ttl"] for s in stores]
    rows.append([f"TTL: writer at {args.rate:g}/s alone: p50 / p99 (ms)"]
                + [f"{x['baseline']['p50_ms']:.2f} / {x['baseline']['p99_ms']:.2f}"
                   for x in ttls] + blank)
    rows.append([f"… while {args.ttl_keys:,} keys expire: p50 / p99 (ms)"]
                + [f"{x['during']['p50_ms']:.2f} / {x['during']['p99_ms']:.2f}" for x in ttls]
                + ["p99 ≤ 2× alone"]
                + [verdict(x["during"]["p99_ms"], TTL_FACTOR * x["baseline"]["p99_ms"])
                   for x in ttls])
    rows.append(["… p99 ratio, writes during expiry (max)"]
                + [f"{x['during']['p99_ms'] / x['baseline']['p99_ms']:.2f}× "
                   f"({x['during']['n']} writes, max {x['during']['max_ms']:.1f} ms)"
                   for x in ttls] + blank)
    rows.append(["… all expired within (s) after their time"]
                + [f"{x['expiry_seconds']:.2f}" for x in ttls] + blank)
    rows.append(["… `delete` events with reason `expired` / keys"]
                + [f"{x['expired_events']:,} / {x['expired_keys']:,}" for x in ttls]
                + [f"{args.ttl_keys:,} / {args.ttl_keys:,}"]
                + [verdict(0 if x["expired_events"] == x["expired_keys"] == args.ttl_keys else 1,
                           0) for x in ttls])
    rows.append(["… writer p99 while the keys were written, in one transaction (ms)"]
                + [f"{x['fill']['p99_ms']:.2f} ({x['fill']['seconds']:.2f} s)" for x in ttls]
                + blank)
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    headers = ["measure"] + [names[s] for s in stores] + ["target"] + [names[s] for s in stores]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--records", type=int, default=10_000, help="records in the snapshot")
    parser.add_argument("--rounds", type=int, default=5, help="snapshots taken")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--increments", type=int, default=200, help="per client")
    parser.add_argument("--big", type=int, default=50_000, help="keys in the large scope")
    parser.add_argument("--small", type=int, default=100, help="keys in the small scope")
    parser.add_argument("--ttl-keys", type=int, default=10_000)
    parser.add_argument("--ttl-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0, help="steady writes per second")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    title = header(f"bench.state: {args.workers} gevent workers, default settings")
    print(title, flush=True)
    run_stores("state", title,
               "Client-side times (request written → answer read) on keep-alive connections.",
               stores, args, run_store, summarise)


if __name__ == "__main__":
    main()
