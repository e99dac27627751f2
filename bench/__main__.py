"""``python -m bench``: start every server, run the workloads, print the table, save JSON + plot."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import lineup
from .holders import layout
from .lineup import OURS_DIR, SERVERS
from .procs import ROOT, pin, raise_file_limit
from .report import (HUGE_WINDOW_TEXT, huge_notes, loadavg, machine, now_text, render_table,
                     render_targets, rows, table_values, targets, write_json)
from .suite import WORKLOADS, Plan, run_server
from .plot import plot

RESULTS = ROOT / "bench" / "results"


def _names(text: str, known: tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",") if n.strip())


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="comma list of: %(default)s")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of: %(default)s")
    p.add_argument("--subscribers", default="100,1000", help="fan-out sizes (%(default)s)")
    p.add_argument("--changes", type=int, default=200, help="changes per fan-out (%(default)s)")
    p.add_argument("--idle-streams", type=int, default=1000,
                   help="streams held for idle cost and the second open run (%(default)s)")
    p.add_argument("--many-streams", type=int, default=10_000,
                   help="streams held by one worker in the hold10k workload (%(default)s)")
    p.add_argument("--huge-streams", type=int, default=100_000,
                   help="streams held over the workers of ours-100k in the hold100k workload "
                        "(%(default)s)")
    p.add_argument("--huge-per-process", type=int, default=None,
                   help="connections per ours-100k worker and per client process (default: "
                        "17,000, or 85%% of the hard file limit if lower)")
    p.add_argument("--huge-workers", type=int, default=None,
                   help="workers of ours-100k (default: enough for the streams)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over all servers; the table shows medians (%(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes for trying changes: 10/100 subscribers, 100 idle, "
                        "50 changes, no hold10k")
    p.add_argument("--client-cpu", type=int, default=os.cpu_count() - 1,
                   help="core the client runs on (%(default)s)")
    p.add_argument("--server-cpus", default=None,
                   help="comma list of cores for the servers (default: every other core)")
    p.add_argument("--no-pin", action="store_true", help="let the scheduler place everything")
    p.add_argument("--ours", type=Path, default=ROOT,
                   help="the checkout of this service to measure, to compare a change (%(default)s)")
    p.add_argument("--json", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    return p.parse_args(argv)


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops the servers it started."""
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str]) -> int:
    args = parse(argv)
    _stop_on_sigterm()
    servers = _names(args.servers, list(SERVERS), "server")
    OURS_DIR[0] = args.ours.resolve()
    workloads = _names(args.workloads, WORKLOADS, "workload")
    cores = set(range(os.cpu_count() or 1))
    server_cpus = (set(_counts(args.server_cpus)) if args.server_cpus
                   else (cores - {args.client_cpu}) or cores)
    plan = Plan(workloads=workloads, subscribers=_counts(args.subscribers),
                changes=args.changes, idle_streams=args.idle_streams,
                many_streams=args.many_streams, huge_streams=args.huge_streams,
                server_cpus=None if args.no_pin else frozenset(server_cpus))
    if args.quick:
        plan = Plan(workloads=tuple(w for w in workloads if w not in ("hold10k", "hold100k")),
                    subscribers=(10, 100),
                    changes=50, idle_streams=100, opens=50, latency_changes=100,
                    writes=((1, 200), (8, 400)), server_cpus=plan.server_cpus)
    if not args.no_pin:
        pin({args.client_cpu})
    raise_file_limit()  # what the holders of the 100,000-stream workload inherit
    lineup.HUGE[0] = layout(args.huge_streams, plan.opens, args.huge_per_process,
                            args.huge_workers)
    if "hold100k" in plan.workloads and "ours-100k" in servers:
        size = lineup.HUGE[0]
        print(f"hold100k: {size.streams:,} streams over {size.workers} workers of "
              f"{size.per_process:,} connections, from {size.clients} client processes "
              f"({size.file_limit_hard:,} open files per process at most)"
              + (f"; limited: {size.limited_by}" if size.limited_by else ""), file=sys.stderr)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    load_before, started = loadavg(), now_text()
    print(f"bench {started}, load {load_before:.2f}; server logs in {logs}", file=sys.stderr)
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    for round_number in range(args.repeat):
        print(f"round {round_number + 1}/{args.repeat}", file=sys.stderr)
        for name in servers:
            rounds[name].append(run_server(SERVERS[name], plan, logs))
    load_after = loadavg()

    huge = lineup.HUGE[0] if "ours-100k" in rounds else None
    HUGE_WINDOW_TEXT[0] = f"{plan.keepalive_seconds:g} s"
    table = rows(plan.subscribers, plan.idle_streams, plan.many_streams, huge)
    values = table_values(rounds, table)
    checks = targets(rounds, plan.idle_streams, plan.many_streams, plan.huge_streams)
    meta = {"started": started, "load_before": load_before, "load_after": load_after,
            "client_cpu": None if args.no_pin else args.client_cpu,
            "server_cpus": sorted(plan.server_cpus) if plan.server_cpus else None,
            "ours": str(OURS_DIR[0]), "plan": plan.__dict__, "machine": machine(),
            "huge_layout": huge.summary() if huge else None}
    write_json(args.json, {"meta": meta, "table": values, "targets": checks, "rounds": rounds})
    labels = {name: SERVERS[name].label for name in servers}
    plotted = plot(rounds, labels, plan.subscribers, args.plot,
                   f"{started} · {meta['machine']['cpu']} · {meta['machine']['cores']} cores · loopback")

    print(f"\n{started} · {meta['machine']['cpu']}, {meta['machine']['cores']} cores · "
          f"load {load_before:.2f} → {load_after:.2f} · medians of {args.repeat} round(s)\n")
    print(render_table(values, table, list(servers)))
    if checks:
        print("\nTargets:")
        print(render_targets(checks))
    if rounds.get("ours-100k"):
        notes = huge_notes(rounds["ours-100k"])
        if notes:
            print("\nhold100k:\n" + notes)
    print(f"\nwrote {args.json}" + (f" and {args.plot}" if plotted else " (nothing to plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
