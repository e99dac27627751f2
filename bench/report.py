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


@dataclass(frozen=True)
class Row:
    label: str
    path: str          # dotted path into one server's results
    unit: str
    digits: int = 1


def rows(subscribers: tuple[int, ...], idle_streams: int, many: int) -> list[Row]:
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
        Row("writes/s, 8 writers", "writes_8.writes_per_s", "/s", 0),
        Row(f"{many:,} held: seconds to open them", "many.idle.hold.seconds", "s", 1),
        Row(f"{many:,} held: open p99 (first byte)", "many.open.first_byte_ms.p99", "ms", 2),
        Row(f"{many:,} held: RSS per stream", "many.idle.kb_per_stream", "KB", 1),
    ]
    return table


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


def targets(rounds: dict[str, list[dict]], idle_streams: int, many: int) -> list[dict]:
    """The targets for this service with 1 worker: value, limit, met."""
    ours, raw = rounds.get(OURS), rounds.get("raw")
    if not ours:
        return []

    def value(path: str, of: list[dict] | None = None) -> Any:
        return medians(of if of is not None else ours, path)

    fan = "fanout_1000"
    checks = [
        (f"open p99, {idle_streams:,} held, first byte",
         value(f"open_{idle_streams}.first_byte_ms.p99"), 2.0, "ms"),
        ("latency p50", value("latency.latency_ms.p50"), 2.0, "ms"),
        ("latency p99", value("latency.latency_ms.p99"), 5.0, "ms"),
        ("fan-out 1,000: lost", value(f"{fan}.lost"), 0, ""),
        (f"RSS per idle stream at {idle_streams:,}", value("idle.kb_per_stream"), 25.0, "KB"),
        (f"open p99 with {many:,} held", value("many.open.first_byte_ms.p99"), 20.0, "ms"),
    ]
    out = [{"target": name, "value": v, "limit": f"≤ {limit:g} {unit}".strip(),
            "met": isinstance(v, (int, float)) and v <= limit} for name, v, limit, unit in checks]
    if raw:
        for name, path, factor, higher in (
                ("fan-out 1,000: deliveries/s", f"{fan}.deliveries_per_s", 0.5, True),
                ("fan-out 1,000: completion p99", f"{fan}.completion_ms.p99", 2.0, False)):
            v, r = value(path), value(path, raw)
            ok = isinstance(v, (int, float)) and isinstance(r, (int, float)) and r > 0
            ratio = v / r if ok else None
            out.append({"target": name, "value": v, "raw": r,
                        "limit": f"{'≥' if higher else '≤'} {factor:g}× raw",
                        "ratio": ratio,
                        "met": ok and (ratio >= factor if higher else ratio <= factor)})
    return out


def render_targets(checks: list[dict]) -> str:
    lines = []
    for check in checks:
        v = check["value"]
        if v is None:
            lines.append(f"- {check['target']}: not measured in this run")
            continue
        shown = f"{v:,.2f}" if isinstance(v, float) else v
        extra = f" (raw {check['raw']:,.1f}, {check['ratio']:.2f}×)" if check.get("ratio") else ""
        lines.append(f"- {check['target']}: {shown}{extra}, target {check['limit']}: "
                     f"{'met' if check['met'] else 'NOT met'}")
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
