"""Which workloads run on which fresh start of a server, in what order."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import lineup
from .lineup import Server
from .procs import pin
from .workloads import (Session, crossproc, fanout, hold_huge, idle_cost, latency, open_streams,
                        writes)

WORKLOADS = ("open", "latency", "fanout", "idle", "writes", "hold10k", "crossproc", "hold100k")


@dataclass(frozen=True)
class Plan:
    workloads: tuple[str, ...] = WORKLOADS
    subscribers: tuple[int, ...] = (100, 1000)
    changes: int = 200
    idle_streams: int = 1000
    opens: int = 200
    latency_changes: int = 500
    latency_rate: float = 100.0
    writes: tuple[tuple[int, int], ...] = ((1, 1000), (8, 2000))
    many_streams: int = 10_000
    many_streams_servers: tuple[str, ...] = ("ours-1w",)
    huge_streams: int = 100_000
    #: the keepalive window: longer than the huge server's heartbeat
    keepalive_seconds: float = lineup.HUGE_HEARTBEAT_SECONDS + 5
    server_cpus: frozenset[int] | None = None


def _fresh(server: Server, plan: Plan, logs: Path, body: Callable[[Session], dict]) -> dict:
    """Start ``server`` anew, run ``body`` on it, stop it whatever happens. A server that is
    not pinned shares every core with the client, which is then not pinned either."""
    cpus = set(plan.server_cpus) if plan.server_cpus and server.pinned else None
    client_cpus = os.sched_getaffinity(0)
    if cpus is None:
        pin(set(range(os.cpu_count() or 1)))
    running = server.start(logs, cpus)
    session = Session(running)
    try:
        return body(session)
    finally:
        session.close()
        running.stop()
        pin(client_cpus)


def _with_held(plan: Plan, wanted: set[str]) -> Callable[[Session], dict]:
    """Idle cost, fan-out and opening, all with ``plan.idle_streams`` streams held."""
    def body(session: Session) -> dict:
        out: dict = {}
        idle = idle_cost(session, plan.idle_streams)
        if "idle" in wanted:
            out["idle"] = idle
        if "fanout" in wanted and plan.idle_streams in plan.subscribers:
            out[f"fanout_{plan.idle_streams}"] = fanout(session, plan.idle_streams, plan.changes)
        if "open" in wanted:
            out[f"open_{plan.idle_streams}"] = open_streams(session, plan.opens)
        return out
    return body


def _many_streams(plan: Plan) -> Callable[[Session], dict]:
    def body(session: Session) -> dict:
        return {"idle": idle_cost(session, plan.many_streams),
                "open": open_streams(session, plan.opens)}
    return body


def run_server(server: Server, plan: Plan, logs: Path) -> dict:
    """Every selected workload on ``server``; one fresh start per group of workloads."""
    wanted, results = set(plan.workloads), {}
    if server.workloads is not None:
        wanted &= set(server.workloads)

    def step(name: str, body: Callable[[Session], dict]) -> None:
        started = time.monotonic()
        results.update(_fresh(server, plan, logs, body))
        print(f"  {server.name}: {name} ({time.monotonic() - started:.1f} s)", file=sys.stderr,
              flush=True)

    if "open" in wanted:
        step("open, none held", lambda s: {"open_0": open_streams(s, plan.opens)})
    if "latency" in wanted:
        step("latency", lambda s: {"latency": latency(s, plan.latency_changes,
                                                      plan.latency_rate)})
    if "writes" in wanted:
        step("writes", lambda s: {f"writes_{n}": writes(s, n, count) for n, count in plan.writes})
    if "fanout" in wanted:
        for count in plan.subscribers:
            if count != plan.idle_streams:
                step(f"fan-out {count}",
                     lambda s, c=count: {f"fanout_{c}": fanout(s, c, plan.changes)})
    if wanted & {"idle", "open", "fanout"}:
        step(f"{plan.idle_streams} held: idle cost, fan-out, open", _with_held(plan, wanted))
    if "hold10k" in wanted and server.name in plan.many_streams_servers:
        step(f"{plan.many_streams} held", lambda s: {"many": _many_streams(plan)(s)})
    if "crossproc" in wanted and "crossproc" in (server.workloads or ()):
        step("delivery across processes", lambda s: {"crossproc": crossproc(
            s, plan.latency_changes * 2, plan.latency_rate)})
    if "hold100k" in wanted and "hold100k" in (server.workloads or ()):
        size = lineup.HUGE[0]
        step(f"{size.streams:,} held over {size.workers} workers from {size.clients} clients",
             lambda s: {"huge": hold_huge(s, size, plan.opens, plan.keepalive_seconds,
                                          logs / "holders.log")})
    return results
