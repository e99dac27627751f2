"""The README's picture: latency and deliveries/s against subscriber count, one line per server."""
from __future__ import annotations

from pathlib import Path

from .report import medians

STYLE = {"ours-1w": ("tab:blue", "o"), "ours-2w": ("tab:cyan", "s"), "raw": ("black", "^"),
         "starlette": ("tab:orange", "D"), "flask-sse": ("tab:red", "v"),
         "bare-wsgi": ("tab:gray", "x"), "bare-flask": ("tab:olive", "P")}


def _measured(wanted: list[tuple[int, str]], results: list[dict]) -> list[tuple[int, float]]:
    """``(subscribers, value)`` for the points that have a number."""
    points = [(x, medians(results, path)) for x, path in wanted]
    return [(x, y) for x, y in points if isinstance(y, (int, float))]


def plot(rounds: dict[str, list[dict]], labels: dict[str, str], subscribers: tuple[int, ...],
         path: Path, title: str) -> bool:
    """Left: time until every subscriber has a change (1 subscriber: the latency workload),
    p50 solid and p99 dashed. Right: deliveries per second in the fan-out workload. Nothing
    to draw (a run of ``hold100k`` alone): no file written, ``False``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    handles = {}
    for name, results in rounds.items():
        color, marker = STYLE.get(name, (None, "o"))
        for q, dash in (("p50", "-"), ("p99", "--")):
            points = _measured([(1, f"latency.latency_ms.{q}")] + [
                (n, f"fanout_{n}.completion_ms.{q}") for n in subscribers], results)
            if points:
                line, = left.plot(*zip(*points), dash, color=color, marker=marker)
                handles.setdefault(name, line)
        rate = _measured([(n, f"fanout_{n}.deliveries_per_s") for n in subscribers], results)
        if rate:
            line, = right.plot(*zip(*rate), "-", color=color, marker=marker)
            handles[name] = line
    if not handles:
        plt.close(fig)
        return False
    left.set(xscale="log", yscale="log", xlabel="subscribers",
             ylabel="ms until every subscriber has the change",
             title="latency (1) and fan-out completion: p50 solid, p99 dashed")
    right.set(xscale="log", yscale="log", xlabel="subscribers", ylabel="deliveries per second",
              title="fan-out throughput")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
    fig.legend(list(handles.values()), [labels[name] for name in handles], loc="lower center",
               ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 * (1 + (len(handles) - 1) // 4) + 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
