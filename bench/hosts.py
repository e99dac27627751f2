"""Delivery latency across servers on one database: ``python -m bench.hosts``.

Two servers ("hosts", separate gunicorn masters) share one database, with subscribers on both.
Changes are written through the hosts in turn at a steady rate, and each subscriber notes when
each change reaches it. Latency is measured from just before the write is sent to the frame's
arrival, split by whether the subscriber is on the host that took the write or on the other one.
The second is what the cross-process wake-up buys: ``LISTEN``/``NOTIFY`` on PostgreSQL, the
doorbell datagram on SQLite (without either, a change waits for the other follower's poll).

``--store sqlite --workers 1`` compares same-process with cross-process delivery on the embedded
store. On PostgreSQL without ``--db-url`` it starts a private cluster (Debian: ``apt-get install
postgresql``); everything it starts binds to 127.0.0.1 and is stopped when it ends.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import requests

from tests.conftest import POSTGRES_BIN, PostgresCluster, Server
from tests.sse import SSEClient

HOSTS = 2
SUBSCRIBERS_PER_HOST = 2


def private_database(stack: ExitStack) -> str:
    if POSTGRES_BIN is None:
        raise SystemExit("no PostgreSQL server binaries found; install postgresql or pass --db-url")
    cluster = PostgresCluster(POSTGRES_BIN)
    stack.callback(cluster.destroy)
    cluster.start()
    cluster.execute("CREATE DATABASE bench")
    return cluster.url("bench")


class Subscriber:
    """One stream and the arrival time of every change it receives, keyed by memory key."""

    def __init__(self, host: int, url: str) -> None:
        self.host = host
        self.arrived: dict[str, float] = {}
        self.stream = SSEClient(url + "/api/v1/memory/events/sse")
        self.stream.next(timeout=10)  # ": connected": the subscription exists
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while (frame := self.stream.next(timeout=3600)) is not None:
            if frame.data:
                self.arrived[frame.json["key"]] = time.monotonic()


def write_all(hosts: list[Server], count: int, rate: float, prefix: str) -> dict[str, tuple]:
    """Write ``count`` changes at ``rate`` per second; returns key -> (host index, send time)."""
    sent: dict[str, tuple] = {}
    sessions = [requests.Session() for _ in hosts]
    start = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
        host = n % len(hosts)
        key = f"{prefix}.{n}"
        sent[key] = (host, time.monotonic())
        response = sessions[host].post(hosts[host].url + "/api/v1/memory/set",
                                       json={"key": key, "data": n}, timeout=10)
        response.raise_for_status()
    return sent


def summary(label: str, millis: list[float]) -> str:
    cuts = statistics.quantiles(millis, n=100, method="inclusive")
    return (f"{label:<11} {len(millis):>7} {cuts[49]:>8.2f} {cuts[89]:>8.2f} {cuts[98]:>8.2f} "
            f"{max(millis):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--db-url", help="an existing PostgreSQL database (default: a private "
                                         "cluster)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per host")
    parser.add_argument("--events", type=int, default=1000, help="changes to write")
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    args = parser.parse_args()

    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-hosts-")))
        if args.store == "sqlite":
            db_url = f"sqlite:///{logs}/bench.db"
        else:
            db_url = args.db_url or private_database(stack)
        hosts = []
        for n in range(HOSTS):
            server = Server(db_url, workers=args.workers, log_path=logs / f"host-{n}.log")
            stack.callback(server.kill)
            hosts.append(server.start())
        subscribers = [Subscriber(n, host.url) for n, host in enumerate(hosts)
                       for _ in range(SUBSCRIBERS_PER_HOST)]

        sent = write_all(hosts, args.events, args.rate, uuid.uuid4().hex[:8])
        deadline = time.monotonic() + 60
        while (any(len(s.arrived) < len(sent) for s in subscribers)
               and time.monotonic() < deadline):
            time.sleep(0.1)

        latency: dict[str, list[float]] = {"same host": [], "other host": []}
        missing = 0
        for subscriber in subscribers:
            for key, (host, at) in sent.items():
                if key not in subscriber.arrived:
                    missing += 1
                    continue
                side = "same host" if subscriber.host == host else "other host"
                latency[side].append((subscriber.arrived[key] - at) * 1000)

    print(f"{args.store}: {args.events} changes at {args.rate:g}/s through {HOSTS} hosts x "
          f"{args.workers} workers, "
          f"{len(subscribers)} subscribers; latency write sent -> frame received, ms")
    print(f"{'subscriber':<11} {'frames':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for label, millis in latency.items():
        print(summary(label, millis))
    if missing:
        raise SystemExit(f"{missing} frames never arrived")


if __name__ == "__main__":
    main()
