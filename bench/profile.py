"""``python -m bench.profile``: where a worker of this service spends its time under load.

Starts the service, samples every worker with py-spy during a workload (fan-out to held
streams, or writes from 8 connections), and prints the functions that hold the most samples,
by their own time and with what they call. The collapsed stacks are kept for a flame graph tool.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .lineup import SERVERS
from .procs import ROOT, raise_file_limit, tree
from .workloads import Session, fanout, writes

RESULTS = ROOT / "bench" / "results"


def summarize(collapsed: Path, top: int) -> str:
    """Own and inclusive sample counts per function from py-spy's ``raw`` (collapsed) output."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, samples = stack.split(";"), int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples"]
    for title, counter in (("own time", own), ("including callees", inclusive)):
        lines.append(f"\n{title}:")
        lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--server", default="ours-1w", choices=[n for n in SERVERS if "ours" in n])
    p.add_argument("--workload", default="fanout", choices=("fanout", "writes"))
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    raise_file_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    collapsed = RESULTS / f"profile-{args.server}-{args.workload}.txt"
    running = SERVERS[args.server].start(RESULTS, None)
    session = Session(running)
    try:
        if args.workload == "fanout":
            session.hold(args.subscribers)
        master = running.processes[0].pid
        spies = [subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--rate", str(args.rate), "--format", "raw", "--nonblocking", "--function",
             "--output", f"{collapsed}.{pid}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in tree(master) if pid != master]
        time.sleep(1.0)  # py-spy attaches
        for _ in range(args.rounds):
            if args.workload == "fanout":
                result = fanout(session, args.subscribers, args.changes)
                print(f"deliveries/s {result['deliveries_per_s']:,.0f}  completion p99 "
                      f"{result['completion_ms']['p99']:.1f} ms  lost {result['lost']}",
                      file=sys.stderr)
            else:
                result = writes(session, 8, 2000)
                print(f"writes/s {result['writes_per_s']:,.0f}", file=sys.stderr)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        session.close()
        running.stop()
    parts = sorted(collapsed.parent.glob(collapsed.name + ".*"))
    collapsed.write_text("".join(part.read_text() for part in parts))
    for part in parts:
        part.unlink()
    print(summarize(collapsed, args.top))
    print(f"\ncollapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
