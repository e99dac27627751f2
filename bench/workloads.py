"""The workloads of the benchmark, each against one running server through one epoll loop.

Every wait is bounded by a deadline; a server that does not answer in time is reported as such
(``never``, ``lost``), never waited on forever.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

from .client import Loop, Stream, Writer, every, now
from .holders import Holders, Layout
from .lineup import Running
from .procs import cpu_seconds, kernel_memory, own_cpu_seconds, pss_kb, rss_kb, sockets, tree
from .stats import summary_ms

OPEN_TIMEOUT = 2.0
WAVE = 250


class Session:
    """A server and the client's streams on it, across the workloads of one start."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.loop = Loop()
        self.held: list[Stream] = []

    def close(self) -> None:
        self.loop.close()
        self.held.clear()

    def stream(self) -> Stream:
        return Stream(self.loop, self.running.port, self.running.stream_path)

    def subscribed(self, streams: list[Stream], total: int) -> Callable[[], bool]:
        """Whether every stream is subscribed: its first byte arrived, or (for a server that
        says nothing until the first event) the server counts ``total`` subscribers."""
        if self.running.opens_at_once:
            return lambda: all(s.first_byte_at is not None or s.closed for s in streams)
        count = self.running.subscribers
        assert count is not None
        return lambda: all(not s.outgoing or s.closed for s in streams) and count() >= total

    def hold(self, count: int, timeout: float = 120.0) -> dict:
        """Open ``count`` more streams, a wave at a time, and keep them."""
        started, deadline = now(), now() + timeout
        while count > 0 and now() < deadline:
            wave = [self.stream() for _ in range(min(WAVE, count))]
            self.held += wave
            count -= len(wave)
            self.loop.run(every(0.005, self.subscribed(wave, len(self.held))), deadline)
        failed = [s for s in self.held if s.closed]
        return {"held": len(self.held) - len(failed), "failed": len(failed),
                "errors": sorted({s.error or "" for s in failed})[:3],
                "seconds": round(now() - started, 3)}

    def release(self) -> None:
        for stream in self.held:
            stream.close()
        self.held.clear()


def open_streams(session: Session, count: int = 200) -> dict:
    """Streams opened one after another while ``session.held`` stay open; time to headers and
    to the first body byte. A server that sends no headers until an event exists gets ``never``."""
    to_headers, to_first = [], []
    opened: list[Stream] = []
    try:
        for _ in range(count):
            stream = session.stream()
            opened.append(stream)
            session.loop.run(lambda: stream.first_byte_at is not None or stream.closed,
                             now() + OPEN_TIMEOUT)
            if stream.headers_at is None or stream.first_byte_at is None:
                return {"never": True, "error": stream.error or
                        f"no headers and first byte within {OPEN_TIMEOUT:.0f} s",
                        "held": len(session.held)}
            to_headers.append(stream.headers_at - stream.started)
            to_first.append(stream.first_byte_at - stream.started)
    finally:
        for stream in opened:
            stream.close()
    return {"held": len(session.held), "headers_ms": summary_ms(to_headers),
            "first_byte_ms": summary_ms(to_first)}


def arrivals(stream: Stream, baseline: int, count: int) -> list[float | None]:
    """When each of the next ``count`` frames after ``baseline`` arrived (``None``: never)."""
    times: list[float | None] = [None] * count
    got = 0
    for at, frames in stream.marks or ():
        upto = min(frames - baseline, count)
        while got < upto:
            times[got] = at
            got += 1
    return times


def latency(session: Session, changes: int = 500, rate: float = 100.0) -> dict:
    """One subscriber, ``changes`` writes at ``rate`` per second: send-to-receive per change."""
    hold = session.hold(1)
    stream = session.held[-1]
    if hold["failed"]:
        return {"error": hold["errors"]}
    writer = Writer(session.loop, session.running.port, session.running.publish_path)
    baseline = stream.record()
    start = now()
    for number in range(changes):
        session.loop.run(lambda: not writer.busy, start + number / rate + 5)
        session.loop.wait(start + number / rate - now())
        writer.post(number)
    session.loop.run(lambda: stream.frames - baseline >= changes or stream.closed, now() + 10)
    arrived = arrivals(stream, baseline, changes)
    delays = [at - writer.sent_at[n] for n, at in enumerate(arrived) if at is not None]
    return {"changes": changes, "rate": rate, "latency_ms": summary_ms(delays),
            "write_ms": summary_ms(writer.round_trips),
            "lost": changes - len(delays), "write_failures": writer.failures,
            "last_marker_ok": stream.last_marker() == changes - 1}


def crossproc(session: Session, changes: int = 1000, rate: float = 100.0,
              per_server: int = 2) -> dict:
    """Two servers on one database, ``per_server`` subscribers on each, ``changes`` writes at
    ``rate`` per second through the servers in turn: send-to-receive per change and subscriber,
    split by whether the subscriber is in the process that took the write or in the other."""
    running = session.running
    assert running.other_port is not None
    ports = (running.port, running.other_port)
    streams = [(port, Stream(session.loop, port, running.stream_path))
               for port in ports for _ in range(per_server)]
    session.loop.run(lambda: all(s.first_byte_at is not None or s.closed for _, s in streams),
                     now() + OPEN_TIMEOUT * 5)
    writers = {port: Writer(session.loop, port, running.publish_path) for port in ports}
    baselines = [s.record() for _, s in streams]
    through: list[int] = []
    sent: list[float] = []
    start = now()
    for number in range(changes):
        port = ports[number % 2]
        writer = writers[port]
        session.loop.run(lambda: not writer.busy, start + number / rate + 5)
        session.loop.wait(start + number / rate - now())
        writer.post(number)
        through.append(port)
        sent.append(writer.sent_at[number])
    session.loop.run(lambda: all(s.frames - b >= changes or s.closed
                                 for (_, s), b in zip(streams, baselines)), now() + 10)
    same, other, lost = [], [], 0
    for (port, stream), baseline in zip(streams, baselines):
        for number, at in enumerate(arrivals(stream, baseline, changes)):
            if at is None:
                lost += 1
            else:
                (same if through[number] == port else other).append(at - sent[number])
    for _, stream in streams:
        stream.close()
    return {"changes": changes, "rate": rate, "subscribers": len(streams), "lost": lost,
            "same_process_ms": summary_ms(same), "other_process_ms": summary_ms(other),
            "write_ms": summary_ms([t for w in writers.values() for t in w.round_trips])}


def fanout(session: Session, subscribers: int, changes: int = 200) -> dict:
    """``changes`` writes back to back to ``subscribers`` streams (held ones are reused):
    deliveries per second and, per change, the time until the last subscriber had it."""
    if len(session.held) < subscribers:
        hold = session.hold(subscribers - len(session.held))
        if hold["failed"]:
            return {"subscribers": subscribers, "error": hold["errors"]}
    streams = session.held[:subscribers]
    baselines = [stream.record() for stream in streams]
    sent = [0]

    def next_change(writer: Writer) -> None:
        if sent[0] < changes:
            writer.post(sent[0])
            sent[0] += 1

    writer = Writer(session.loop, session.running.port, session.running.publish_path,
                    on_done=next_change)
    pids = session.running.pids()
    cpu_server, cpu_client, wall = cpu_seconds(pids), own_cpu_seconds(), now()
    next_change(writer)
    bound = 20.0 + subscribers * changes / 2000
    session.loop.run(every(0.02, lambda: all(
        s.frames - b >= changes or s.closed for s, b in zip(streams, baselines))),
        now() + bound)
    wall = now() - wall
    cpu_server, cpu_client = cpu_seconds(pids) - cpu_server, own_cpu_seconds() - cpu_client
    per_stream = [arrivals(s, b, changes) for s, b in zip(streams, baselines)]
    received = sum(1 for times in per_stream for at in times if at is not None)
    completion = []
    for number in range(changes):
        last = [times[number] for times in per_stream]
        if None not in last:
            completion.append(max(last) - writer.sent_at[number])
    finished = [at for times in per_stream for at in times if at is not None]
    span = max(finished) - writer.sent_at[0] if finished else None
    return {
        "subscribers": subscribers, "changes": changes, "delivered": received,
        "lost": subscribers * changes - received, "write_failures": writer.failures,
        "deliveries_per_s": received / span if span else None,
        "completion_ms": summary_ms(completion),
        "out_of_order": sum(1 for s in streams if s.last_marker() != changes - 1),
        "server_cpu": round(cpu_server / wall, 2), "client_cpu": round(cpu_client / wall, 2),
    }


def idle_cost(session: Session, streams: int = 1000) -> dict:
    """Resident memory the server tree gains per idle stream (Redis included where used)."""
    pids = session.running.pids()
    before = rss_kb(pids)
    hold = session.hold(streams - len(session.held))
    session.loop.wait(0.5)
    after = rss_kb(session.running.pids())
    return {"streams": len(session.held), "rss_before_kb": before, "rss_after_kb": after,
            "kb_per_stream": (after - before) / max(1, len(session.held)), "hold": hold}


def writes(session: Session, writers: int, count: int, timeout: float = 20.0) -> dict:
    """``count`` publishes from ``writers`` keep-alive connections, each as fast as answered,
    after as many again that warm the connections and the server up and are not counted."""
    pool = [Writer(session.loop, session.running.port, session.running.publish_path,
                   key=f"writer-{i}") for i in range(writers)]
    _write_all(session, pool, count, timeout)  # the warm-up
    for writer in pool:
        writer.completed = writer.failures = 0
        writer.round_trips.clear()
    elapsed = _write_all(session, pool, count, timeout)
    done = sum(w.completed for w in pool)
    for writer in pool:
        writer.close()
    return {"writers": writers, "completed": done, "failures": sum(w.failures for w in pool),
            "writes_per_s": done / elapsed, "seconds": round(elapsed, 3),
            "write_ms": summary_ms([t for w in pool for t in w.round_trips])}


def _write_all(session: Session, pool: list[Writer], count: int, timeout: float) -> float:
    """``count`` writes over ``pool``, each writer's next as soon as its last is answered;
    the seconds they took."""
    issued = [0]

    def next_write(writer: Writer) -> None:
        if issued[0] < count:
            writer.post(issued[0])
            issued[0] += 1

    for writer in pool:
        writer.on_done = next_write
    started = now()
    for writer in pool:
        next_write(writer)
    session.loop.run(lambda: issued[0] >= count and not any(w.busy for w in pool),
                     started + timeout)
    return now() - started


def hold_huge(session: Session, size: Layout, opens: int, keepalive_seconds: float,
              log: Path) -> dict:
    """``size.streams`` idle streams over the server's workers, held by ``size.clients``
    processes (``bench.holders``) from their own loopback addresses: how long opening them
    takes, what failed and why, the server tree's memory, opening p50/p99 of ``opens`` more
    (from this process, one after another) while they are held, and the share of held streams
    that got a frame (a keepalive: nothing is published) within ``keepalive_seconds``, a window
    longer than the heartbeat that starts once all are open."""
    running = session.running
    master = running.processes[0].pid
    workers_before = sorted(set(tree(master)) - {master})
    rss_before, pss_before = rss_kb(running.pids()), pss_kb(running.pids())
    kernel_before = kernel_memory()
    out: dict = {"layout": size.summary(), "rss_before_kb": rss_before,
                 "pss_before_kb": pss_before, "workers": len(workers_before)}
    open_timeout = 60 + size.streams / 200
    holders = Holders(running.port, running.stream_path, size.shares, log)
    try:
        ready = holders.gather("ready", 30)
        out["holder_file_limits"] = sorted({r["file_limit"] for r in ready if r})
        holders.send({"cmd": "open", "timeout": open_timeout, "wave": size.wave},
                     each=[{"count": count} for count, _ in size.shares])
        started = now()
        server_cpu, client_cpu = cpu_seconds(running.pids()), cpu_seconds(holders.pids())
        opened = holders.gather("opened", open_timeout + 30)
        seconds = now() - started
        server_cpu = cpu_seconds(running.pids()) - server_cpu
        client_cpu = cpu_seconds(holders.pids()) - client_cpu
        held = sum(o["held"] for o in opened if o)
        failed: Counter = Counter()
        for o, (count, _) in zip(opened, size.shares):
            failed.update(o["failed"] if o else {"holder gave no answer": count})
        out["hold"] = {"asked": size.streams, "held": held, "failed": sum(failed.values()),
                       "errors": dict(failed), "seconds": round(seconds, 3),
                       "per_s": round(held / seconds) if seconds else None,
                       "server_cpu": round(server_cpu / seconds, 2),
                       "client_cpu": round(client_cpu / seconds, 2),
                       "per_holder": [o and {k: o[k] for k in ("held", "seconds", "first_byte_ms")}
                                      for o in opened]}
        holders.send({"cmd": "mark"})
        holders.gather("marked", 30)
        window = now()
        time.sleep(1.0)  # the last opens' garbage settled
        pids = running.pids()
        rss, pss = rss_kb(pids), pss_kb(pids)
        kernel = kernel_memory()
        per_worker = [sockets(pid) for pid in sorted(set(pids) - {master})]
        out.update({
            "rss_kb": rss, "pss_kb": pss, "rss_mb": round(rss / 1024, 1),
            "pss_mb": round(pss / 1024, 1),
            "kb_per_stream": (rss - rss_before) / max(1, held),
            "pss_kb_per_stream": (pss - pss_before) / max(1, held),
            "sockets_per_worker": per_worker,
            "rss_mb_per_process": {pid: round(rss_kb([pid]) / 1024, 1) for pid in pids},
            "busiest_worker": max(per_worker, default=None),
            "kernel_before": kernel_before, "kernel": kernel,
            "kernel_slab_mb": round((kernel.get("slab_kb", 0)
                                     - kernel_before.get("slab_kb", 0)) / 1024, 1),
        })
        out["open"] = {**open_streams(session, opens), "held": held}
        time.sleep(max(0.0, window + keepalive_seconds - now()))
        checked = holders.gather_after({"cmd": "check"}, "checked", 30)
        at_mark = sum(c["held_at_mark"] for c in checked if c)
        with_frame = sum(c["with_frame"] for c in checked if c)
        closed: Counter = Counter()
        for c in checked:
            closed.update(c["closed_since"] if c else {})
        workers_after = sorted(set(tree(master)) - {master})
        rss_end = rss_kb(running.pids())
        out.update({
            "keepalive": {"window_s": round(now() - window, 1), "held_at_mark": at_mark,
                          "per_holder_pct": [round(100 * c["with_frame"] / c["held_at_mark"], 3)
                                             if c and c["held_at_mark"] else None
                                             for c in checked],
                          "with_frame": with_frame, "closed_since": dict(closed),
                          "still_open": sum(c["still_open"] for c in checked if c)},
            "keepalive_pct": 100 * with_frame / at_mark if at_mark else None,
            "rss_end_mb": round(rss_end / 1024, 1),
            "workers_replaced": len(set(workers_before) - set(workers_after)),
            "server_alive": all(p.alive() for p in running.processes),
        })
    finally:
        out["problems"] = holders.problems
        holders.close()
        out["drain"] = _drain(running, master)
    return out


def _drain(running: Running, master: int, timeout: float = 60.0) -> dict:
    """After the clients closed: until the workers have let their streams go (so the server
    is not stopped in the middle of 100,000 hang-ups), at most ``timeout``."""
    started = now()
    left = None
    while now() - started < timeout:
        left = sum(sockets(pid) for pid in set(running.pids()) - {master})
        if left <= 100:
            break
        time.sleep(0.5)
    return {"seconds": round(now() - started, 1), "sockets_left": left}
