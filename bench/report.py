"""The table of medians and ratios, the service's targets, and the results file."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .procs import ROOT
from .stats import median

NEVER = "never"
OURS = "ours-1w"
PEERS = ("raw", "starlette")
#: what gunicorn's gevent worker costs by itself, and with Flask on top
CONTROLS = ("bare-wsgi", "bare-flask")


@dataclass(frozen=True)
class Row:
    label: str
    path: str          # dotted path into one server's results
    unit: str
    digits: int = 1


def rows(subscribers: tuple[int, ...], idle_streams: int, many: int,
         huge: Any = None) -> list[Row]:
    held = f"{idle_streams:,}"
    table = [
        Row("open, 0 held: headers p99", "open_0.headers_ms.p99", "ms", 2),
        Row("open, 0 held: first byte p50", "open_0.first_byte_ms.p50", "ms", 2),
        Row("open, 0 held: first byte p99", "open_0.first_byte_ms.p99", "ms", 2),
        Row(f"open, {held} held: first byte p50", f"open_{idle_streams}.first_byte_ms.p50",
            "ms", 2),
        Row(f"open, {held} held: first byte p99", f"open_{idle_streams}.first_byte_ms.p99",
            "ms", 2),
        Row("latency p50, 1 subscriber", "latency.latency_ms.p50", "ms", 2),
        Row("latency p99, 1 subscriber", "latency.latency_ms.p99", "ms", 2),
        Row("latency run: write answered in, p50", "latency.write_ms.p50", "ms", 2),
    ]
    for count in subscribers:
        name = f"fan-out {count:,}"
        table += [
            Row(f"{name}: deliveries/s", f"fanout_{count}.deliveries_per_s", "/s", 0),
            Row(f"{name}: completion p50", f"fanout_{count}.completion_ms.p50", "ms", 1),
            Row(f"{name}: completion p99", f"fanout_{count}.completion_ms.p99", "ms", 1),
            Row(f"{name}: lost", f"fanout_{count}.lost", "", 0),
            Row(f"{name}: server CPU (cores)", f"fanout_{count}.server_cpu", "", 2),
            Row(f"{name}: client CPU (cores)", f"fanout_{count}.client_cpu", "", 2),
        ]
    table += [
        Row(f"idle RSS per stream at {held}", "idle.kb_per_stream", "KB", 1),
        Row("writes/s, 1 writer", "writes_1.writes_per_s", "/s", 0),
        Row("write p99, 1 writer", "writes_1.write_ms.p99", "ms", 2),
        Row("writes/s, 8 writers", "writes_8.writes_per_s", "/s", 0),
        Row("write p99, 8 writers", "writes_8.write_ms.p99", "ms", 2),
        Row("delivery, same process: p50", "crossproc.same_process_ms.p50", "ms", 2),
        Row("delivery, same process: p99", "crossproc.same_process_ms.p99", "ms", 2),
        Row("delivery, other process: p50", "crossproc.other_process_ms.p50", "ms", 2),
        Row("delivery, other process: p99", "crossproc.other_process_ms.p99", "ms", 2),
        Row(f"{many:,} held: seconds to open them", "many.idle.hold.seconds", "s", 1),
        Row(f"{many:,} held: open p99 (first byte)", "many.open.first_byte_ms.p99", "ms", 2),
        Row(f"{many:,} held: RSS per stream", "many.idle.kb_per_stream", "KB", 1),
    ]
    if huge is not None:
        name = f"{huge.streams:,} held ({huge.workers} workers)"
        table += [
            Row(f"{name}: streams held", "huge.hold.held", "", 0),
            Row(f"{name}: failed to open", "huge.hold.failed", "", 0),
            Row(f"{name}: seconds to open them", "huge.hold.seconds", "s", 1),
            Row(f"{name}: open p50 (first byte)", "huge.open.first_byte_ms.p50", "ms", 2),
            Row(f"{name}: open p99 (first byte)", "huge.open.first_byte_ms.p99", "ms", 2),
            Row(f"{name}: keepalive within {HUGE_WINDOW_TEXT[0]}", "huge.keepalive_pct", "%", 2),
            Row(f"{name}: RSS, master + workers", "huge.rss_mb", "MiB", 0),
            Row(f"{name}: PSS, master + workers", "huge.pss_mb", "MiB", 0),
            Row(f"{name}: RSS per stream", "huge.kb_per_stream", "KB", 1),
            Row(f"{name}: busiest worker's sockets", "huge.busiest_worker", "", 0),
            Row(f"{name}: kernel slab growth", "huge.kernel_slab_mb", "MiB", 0),
            Row(f"{name}: closed by the clients, let go in", "huge.drain.seconds", "s", 1),
        ]
    return table


#: how the keepalive row names its window (set with the plan)
HUGE_WINDOW_TEXT = ["25 s"]
#: the 100,000-stream targets
HUGE_STREAMS = 100_000
HUGE_OPEN_P99_MS = 20.0
HUGE_RSS_MB = 2500 * 1000 ** 2 / 1024 ** 2   # 2.5 GB (decimal) in MiB: 2,384


def lookup(result: dict, path: str) -> Any:
    """The value at ``path``; ``NEVER`` where the workload saw no stream open at all."""
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        if node.get("never"):
            return NEVER
        node = node.get(part)
    return node


def medians(rounds: list[dict], path: str) -> Any:
    values = [lookup(r, path) for r in rounds]
    if NEVER in values:
        return NEVER
    return median(v for v in values if isinstance(v, (int, float)))


def table_values(rounds: dict[str, list[dict]], table: list[Row]) -> dict[str, dict[str, Any]]:
    return {row.label: {name: medians(r, row.path) for name, r in rounds.items()}
            for row in table}


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if value == NEVER:
        return NEVER
    return f"{value:,.{digits}f}"


def _ratio(ours: Any, peer: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(peer, (int, float)) or not peer:
        return "–"
    return f"{ours / peer:.2f}×"


def render_table(values: dict[str, dict[str, Any]], table: list[Row],
                 servers: list[str]) -> str:
    """A Markdown table: medians per server, then ours (1 worker) ÷ raw and ÷ sse-starlette."""
    ratios = [p for p in PEERS if p in servers and OURS in servers]
    header = ["metric", *servers, *(f"{OURS} ÷ {p}" for p in ratios)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table:
        cells = values[row.label]
        if all(cells.get(s) is None for s in servers):
            continue
        unit = f" ({row.unit})" if row.unit else ""
        line = [row.label + unit, *(_cell(cells.get(s), row.digits) for s in servers),
                *(_ratio(cells.get(OURS), cells.get(p)) for p in ratios)]
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One of the service's targets: a value of ``server`` at ``path``, at most (``higher``:
    at least) ``limit``, or ``factor`` times the same value of ``peer``, or both."""
    name: str
    path: str
    server: str = OURS
    limit: float | None = None
    unit: str = ""
    peer: str | None = None
    factor: float = 1.0
    higher: bool = False


def target_list(idle_streams: int, many: int, huge_streams: int = HUGE_STREAMS) -> list[Target]:
    fan, held = "fanout_1000", f"{idle_streams:,}"
    return [
        Target("latency p50, 1 subscriber, commit included", "latency.latency_ms.p50",
               unit="ms", peer="starlette"),
        Target("latency p99, 1 subscriber, commit included", "latency.latency_ms.p99",
               unit="ms", peer="starlette"),
        Target(f"open p99 with {held} held, first byte",
               f"open_{idle_streams}.first_byte_ms.p99", limit=1.5, unit="ms",
               peer="starlette"),
        Target("the write's own answer p50, paced at 100/s", "latency.write_ms.p50", limit=1.0,
               unit="ms"),
        Target("fan-out to 1,000: deliveries/s", f"{fan}.deliveries_per_s", peer="raw",
               factor=0.8, higher=True),
        Target("fan-out to 1,000: completion p99", f"{fan}.completion_ms.p99", unit="ms",
               peer="raw"),
        Target("fan-out to 1,000: lost", f"{fan}.lost", limit=0),
        Target(f"RSS per idle stream at {held}", "idle.kb_per_stream", limit=18.0, unit="KB"),
        Target("8 writers, 2 workers: writes/s", "writes_8.writes_per_s", server="ours-2w",
               limit=2000, higher=True),
        Target("8 writers, 2 workers: write p99", "writes_8.write_ms.p99", server="ours-2w",
               limit=10.0, unit="ms"),
        Target(f"open p99 with {many:,} held, 1 worker", "many.open.first_byte_ms.p99",
               limit=20.0, unit="ms"),
        Target("delivery to another process p99, SQLite", "crossproc.other_process_ms.p99",
               server="ours-pair", limit=5.0, unit="ms"),
        Target("delivery to another process p99, PostgreSQL", "crossproc.other_process_ms.p99",
               server="ours-pair-pg", limit=10.0, unit="ms"),
        Target("idle streams held by one server", "huge.hold.held", server="ours-100k",
               limit=huge_streams, higher=True),
        Target(f"open p99 with {huge_streams:,} held, first byte", "huge.open.first_byte_ms.p99",
               server="ours-100k", limit=HUGE_OPEN_P99_MS, unit="ms"),
        Target(f"keepalives: held streams with one within {HUGE_WINDOW_TEXT[0]}",
               "huge.keepalive_pct", server="ours-100k", limit=100.0, unit="%", higher=True),
        Target(f"RSS with {huge_streams:,} held, master + workers", "huge.rss_mb",
               server="ours-100k", limit=round(HUGE_RSS_MB), unit="MiB (2.5 GB)"),
    ]


def _within(value: float, bound: float, higher: bool) -> bool:
    return value >= bound if higher else value <= bound


def targets(rounds: dict[str, list[dict]], idle_streams: int, many: int,
            huge_streams: int = HUGE_STREAMS) -> list[dict]:
    """Each target whose server ran: its value (median over rounds), what it was held to, and
    whether it was met; with the controls' values beside it where they measured the same."""
    out = []
    for target in target_list(idle_streams, many, huge_streams):
        if not rounds.get(target.server):
            continue
        value = medians(rounds[target.server], target.path)
        number = isinstance(value, (int, float))
        bounds, met = [], number
        if target.limit is not None:
            bounds.append(f"{'≥' if target.higher else '≤'} {target.limit:g} {target.unit}".strip())
            met = met and _within(value, target.limit, target.higher)
        peer = medians(rounds[target.peer], target.path) if rounds.get(target.peer or "") else None
        if target.peer is not None:
            scale = f"{target.factor:g}× " if target.factor != 1 else ""
            bounds.append(f"{'≥' if target.higher else '≤'} {scale}{target.peer}")
            met = met and isinstance(peer, (int, float)) and _within(
                value, target.factor * peer, target.higher)
        controls = {name: medians(rounds[name], target.path) for name in CONTROLS
                    if rounds.get(name) and target.server == OURS}
        out.append({"target": target.name, "value": value, "limit": " and ".join(bounds),
                    "peer": target.peer, "peer_value": peer, "unit": target.unit,
                    "controls": {k: v for k, v in controls.items() if v is not None},
                    "met": bool(met)})
    return out


def huge_notes(results: list[dict]) -> str:
    """What the numbers of ``hold100k`` do not say: how it was laid out, what failed and why,
    whether the server stayed whole, and what the kernel spent."""
    lines = []
    for n, result in enumerate(results, 1):
        huge = result.get("huge")
        if not huge:
            continue
        size, hold = huge.get("layout", {}), huge.get("hold", {})
        keep, drain = huge.get("keepalive", {}), huge.get("drain", {})
        kernel, before = huge.get("kernel", {}), huge.get("kernel_before", {})
        lines.append(
            f"- round {n}: {size.get('streams', 0):,} streams over {size.get('workers')} workers "
            f"of {size.get('per_process', 0):,} connections, from {size.get('clients')} client "
            f"processes on {sum(len(s) for _, s in size.get('shares', []))} source addresses; "
            f"file limit {size.get('file_limit_hard', 0):,}, ports "
            f"{'–'.join(str(p) for p in size.get('port_range', []))}, somaxconn "
            f"{size.get('somaxconn')}" + (f"; LIMITED: {size['limited_by']}"
                                          if size.get("limited_by") else ""))
        if hold:
            lines.append(
                f"  opened {hold.get('held', 0):,} of {hold.get('asked', 0):,} in "
                f"{hold.get('seconds')} s ({hold.get('per_s')}/s; server {hold.get('server_cpu')}"
                f" cores, clients {hold.get('client_cpu')}); failed: "
                + (", ".join(f"{k} × {v}" for k, v in hold.get("errors", {}).items()) or "none"))
        if keep:
            lines.append(
                f"  keepalive window {keep.get('window_s')} s: {keep.get('with_frame', 0):,} of "
                f"{keep.get('held_at_mark', 0):,} streams got a frame; closed meanwhile: "
                + (", ".join(f"{k} × {v}" for k, v in keep.get("closed_since", {}).items())
                   or "none"))
        lines.append(
            f"  sockets per worker {huge.get('sockets_per_worker')}; workers replaced "
            f"{huge.get('workers_replaced')}; kernel: {kernel.get('tcp_inuse', 0):,} TCP sockets,"
            f" slab +{huge.get('kernel_slab_mb')} MiB, MemAvailable "
            f"{(before.get('memavailable_kb', 0) - kernel.get('memavailable_kb', 0)) / 1024:,.0f}"
            f" MiB less available (server, clients, kernel); after the clients closed, the workers let go in {drain.get('seconds')} s")
        if huge.get("problems"):
            lines.append("  problems: " + "; ".join(huge["problems"]))
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(
        value, int) else str(value)


def render_targets(checks: list[dict]) -> str:
    """A Markdown table of the targets: measured, the bound, the controls, met or not."""
    lines = ["| target | measured | bound | controls (bare WSGI / bare Flask) | |",
             "| --- | --- | --- | --- | --- |"]
    for check in checks:
        value = check["value"]
        if value is None:
            lines.append(f"| {check['target']} | not measured | {check['limit']} | | |")
            continue
        bound = check["limit"]
        if check["peer"] is not None and check["peer_value"] is not None:
            bound += f" ({check['peer']}: {_shown(check['peer_value'])})"
        controls = " / ".join(_shown(check["controls"].get(name, "–")) for name in CONTROLS)
        lines.append(f"| {check['target']} | {_shown(value)} {check['unit']} | {bound} | "
                     f"{controls if check['controls'] else ''} | "
                     f"{'met' if check['met'] else 'NOT met'} |")
    return "\n".join(lines)


def machine() -> dict:
    """What the numbers were measured on."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    versions = {}
    for name in ("gunicorn", "gevent", "Flask", "Flask-SSE", "redis", "sse-starlette",
                 "starlette", "uvicorn", "uvloop"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", "app", "gunicorn.conf.py",
                              "wsgi.py"], cwd=ROOT, capture_output=True, text=True).stdout
    if changed.strip():
        commit += " + uncommitted changes"
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "packages": versions, "redis_server": redis_version, "commit": commit}


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str))


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
