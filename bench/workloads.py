"""The workloads of the benchmark, each against one running server through one epoll loop.

Every wait is bounded by a deadline; a server that does not answer in time is reported as such
(``never``, ``lost``), never waited on forever.
"""
from __future__ import annotations

from typing import Callable

from .client import Loop, Stream, Writer, now
from .lineup import Running
from .procs import cpu_seconds, own_cpu_seconds, rss_kb
from .stats import summary_ms

OPEN_TIMEOUT = 2.0
WAVE = 250


def every(seconds: float, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check`` run at most once per ``seconds``: scanning 10,000 streams per event costs."""
    due = [0.0]

    def throttled() -> bool:
        t = now()
        if t < due[0]:
            return False
        due[0] = t + seconds
        return check()
    return throttled


class Session:
    """A server and the client's streams on it, across the workloads of one start."""

    def __init__(self, running: Running, sources: tuple[str, ...] = ()) -> None:
        self.running = running
        self.loop = Loop(sources)
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
    """``count`` publishes from ``writers`` keep-alive connections, each as fast as answered."""
    issued = [0]

    def next_write(writer: Writer) -> None:
        if issued[0] < count:
            writer.post(issued[0])
            issued[0] += 1

    pool = [Writer(session.loop, session.running.port, session.running.publish_path,
                   key=f"writer-{i}", on_done=next_write) for i in range(writers)]
    started = now()
    for writer in pool:
        next_write(writer)
    session.loop.run(lambda: issued[0] >= count and not any(w.busy for w in pool),
                     started + timeout)
    elapsed = now() - started
    done = sum(w.completed for w in pool)
    for writer in pool:
        writer.close()
    return {"writers": writers, "completed": done, "failures": sum(w.failures for w in pool),
            "writes_per_s": done / elapsed, "seconds": round(elapsed, 3),
            "write_ms": summary_ms([t for w in pool for t in w.round_trips])}


def hold_huge(session: Session, count: int, opens: int, keepalive_seconds: float) -> dict:
    """``count`` idle streams over the server's workers: how long opening them takes, the
    server tree's RSS, opening p99 while they are held, and whether keepalives flow to them
    (the share of held streams that got a frame within ``keepalive_seconds``)."""
    before = rss_kb(session.running.pids())
    hold = session.hold(count, timeout=900)
    held = [s for s in session.held if not s.closed]
    rss = rss_kb(session.running.pids())
    timed = open_streams(session, opens)
    frames = [s.frames for s in held]
    session.loop.wait(keepalive_seconds)
    alive = [s for s in held if not s.closed]
    got = sum(1 for s, f in zip(held, frames) if not s.closed and s.frames > f)
    return {"hold": hold, "rss_before_kb": before, "rss_kb": rss,
            "kb_per_stream": (rss - before) / max(1, len(held)), "open": timed,
            "still_open": len(alive), "keepalive_share": got / max(1, len(held))}
