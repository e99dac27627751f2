"""Many idle streams from several client processes: the ``hold100k`` workload's client side.

One process can hold only as many sockets as its file limit allows (20,000 on the machine this
was written on, and it cannot be raised there), and one loopback source address has only the
ephemeral port range (about 28,000) for connections to one server port. So the streams are
split into shares of at most ``per_process`` (17,000 by default), each held by a process of its
own, ``python -m bench.holders``, connecting from its own loopback address(es), 127.0.0.2 and up
(Linux answers on all of 127.0.0.0/8 with no setup).

A holder is driven by JSON lines on its stdin and answers with JSON lines on stdout:

* ``{"cmd": "open", "count": N, "wave": W, "timeout": T}``: open N streams, W at a time, each
  wave until every stream in it has its first body byte (or failed), all within T seconds;
  answers ``opened`` with the counts, the failures by reason and the time to first byte;
* ``{"cmd": "mark"}``: note each held stream's frame count; answers ``marked``;
* ``{"cmd": "check"}``: how many of the streams held at the mark got a frame since, and how many
  closed since, by reason; answers ``checked``;
* ``{"cmd": "quit"}``, or stdin closing: close everything and exit.

It serves its sockets (reads keepalives) the whole time, between commands too, and exits by
itself after ``--lifetime`` seconds whatever happens. :class:`Holders` is the parent's side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import select
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .client import Loop, Stream, every, now
from .procs import ROOT, raise_file_limit
from .stats import summary_ms

PER_PROCESS = 17_000      # streams per server worker and per client process, at most
FILE_MARGIN = 0.15        # of the file limit kept free in every process, at least
MAX_PROCESSES = 32        # workers and client processes each, at most
PORT_USE = 0.25           # of the ephemeral port range used per source address, at most
IN_FLIGHT = 600           # streams being opened at once, over all holders
WAVE = 100                # streams a holder opens at once (when not told)
WAVE_SECONDS = 30.0       # a wave whose streams have not all answered by then is left behind
FIRST_SOURCE = 2          # 127.0.0.2: 127.0.0.1's ports stay for everything else


def file_limits() -> tuple[int, int]:
    """This process's soft and hard limits on open files (no hard limit: ``fs.nr_open``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open") as f:
            hard = int(f.read())
    return soft, hard


def port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
        return low, high
    except OSError:
        return 32768, 60999


def somaxconn() -> int | None:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except OSError:
        return None


@dataclass(frozen=True)
class Layout:
    """How ``streams`` (plus ``extra`` timed opens on top) are spread over server workers and
    client processes, and what bounded it."""
    wanted: int
    streams: int                 # what is held: ``wanted``, or as many as the limits allow
    extra: int
    per_process: int
    workers: int
    clients: int
    shares: tuple[tuple[int, tuple[str, ...]], ...]   # (streams, source addresses) per client
    file_limit_soft: int
    file_limit_hard: int
    port_range: tuple[int, int]
    somaxconn: int | None
    wave: int = WAVE              # streams each holder opens at once
    limited_by: str | None = None

    def summary(self) -> dict:
        return asdict(self)


def layout(wanted: int, extra: int = 200, per_process: int | None = None,
           workers: int | None = None) -> Layout:
    """Workers of at most ``per_process`` connections for ``wanted + extra`` streams, and as
    many client processes, each from enough source addresses for its share."""
    soft, hard = file_limits()
    low, high = port_range()
    room = int(hard * (1 - FILE_MARGIN))  # what a process may hold under its file limit
    limited = None
    if per_process is None:
        per_process = min(PER_PROCESS, room)
    elif per_process > room:
        limited = f"{per_process:,} per process asked, {room:,} fit under the file limit {hard:,}"
        per_process = room
    per_process = max(1, per_process)
    fits = MAX_PROCESSES * per_process
    if workers is not None:
        fits = min(fits, workers * per_process - extra)
    streams = wanted
    if wanted > fits:
        streams = max(0, fits)
        limited = (f"{limited}; " if limited else "") + (f"{wanted:,} streams do not fit in {MAX_PROCESSES if workers is None else workers}"
                   f" processes of {per_process:,} (file limit {hard:,})")
    if workers is None:
        workers = max(1, math.ceil((streams + extra) / per_process))
    clients = max(1, math.ceil(streams / per_process))
    per_source = max(1, int((high - low + 1) * PORT_USE))
    shares, address = [], FIRST_SOURCE
    for n in range(clients):
        share = streams // clients + (n < streams % clients)
        count = max(1, math.ceil(share / per_source))
        sources = []
        for _ in range(count):
            sources.append(f"127.{address // 65536 % 256}.{address // 256 % 256}.{address % 256}")
            address += 1
        shares.append((share, tuple(sources)))
    return Layout(wanted, streams, extra, per_process, workers, clients, tuple(shares),
                  soft, hard, (low, high), somaxconn(), max(10, IN_FLIGHT // clients), limited)


# ---------------------------------------------------------------------------------------------
# the holder process

class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class _Control:
    """stdin in the holder's epoll loop: complete lines become commands."""

    urgent = False

    def __init__(self, loop: Loop) -> None:
        self.sock = _Fd(sys.stdin.fileno())
        os.set_blocking(self.sock.fd, False)
        self.buffer = b""
        self.commands: list[dict] = []
        self.eof = False
        loop.watch(self, select.EPOLLIN)  # type: ignore[arg-type]
        self.loop = loop

    def ready(self, events: int) -> None:
        try:
            data = os.read(self.sock.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            self.loop.forget(self)  # type: ignore[arg-type]
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.commands += [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        self.loop.forget(self)  # type: ignore[arg-type]


def _stage(stream: Stream) -> str:
    if stream.headers_at is None:
        return "before headers" if stream.up else "before connecting"
    return "before first byte" if stream.first_byte_at is None else "after first byte"


class Holder:
    def __init__(self, port: int, path: str, sources: tuple[str, ...]) -> None:
        self.port, self.path = port, path
        self.loop = Loop(sources)
        self.control = _Control(self.loop)
        self.streams: list[Stream] = []
        self.baseline: list[int] = []
        self.marked: list[bool] = []

    def reply(self, event: str, **fields: object) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    def open(self, count: int, wave: int, timeout: float) -> None:
        started = now()
        deadline = started + timeout
        while len(self.streams) < count and now() < deadline:
            batch = [Stream(self.loop, self.port, self.path)
                     for _ in range(min(wave, count - len(self.streams)))]
            self.streams += batch
            self.loop.run(every(0.005, lambda: all(
                s.first_byte_at is not None or s.closed for s in batch)),
                min(deadline, now() + WAVE_SECONDS))
        # what is still on its way gets the rest of the time
        self.loop.run(every(0.05, lambda: all(
            s.first_byte_at is not None or s.closed for s in self.streams)), deadline)
        seconds = now() - started
        held = [s for s in self.streams if not s.closed and s.first_byte_at is not None]
        failed = Counter(f"{s.error or 'closed'} ({_stage(s)})" for s in self.streams if s.closed)
        pending = sum(1 for s in self.streams if not s.closed and s.first_byte_at is None)
        if pending:
            failed[f"no first byte within {timeout:.0f} s"] = pending
        never = count - len(self.streams)
        if never:
            failed[f"not opened: {timeout:.0f} s were up"] = never
        self.reply("opened", asked=count, held=len(held), failed=dict(failed),
                   seconds=round(seconds, 3),
                   first_byte_ms=summary_ms([s.first_byte_at - s.started for s in held]))

    def mark(self) -> None:
        self.baseline = [s.frames for s in self.streams]
        self.marked = [not s.closed and s.first_byte_at is not None for s in self.streams]
        self.marked_at = now()
        self.reply("marked", held=sum(self.marked))

    def check(self) -> None:
        pairs = [(s, b) for s, b, m in zip(self.streams, self.baseline, self.marked) if m]
        closed = Counter(s.error or "closed" for s, _ in pairs if s.closed)
        self.reply("checked", held_at_mark=len(pairs),
                   with_frame=sum(1 for s, b in pairs if s.frames > b),
                   still_open=sum(1 for s, _ in pairs if not s.closed),
                   closed_since=dict(closed), seconds=round(now() - self.marked_at, 3))

    def serve(self, lifetime: float) -> None:
        end = now() + lifetime
        control = self.control
        while not control.eof and now() < end:
            self.loop.run(lambda: bool(control.commands) or control.eof, min(end, now() + 1))
            while control.commands:
                command = control.commands.pop(0)
                name = command.get("cmd")
                if name == "open":
                    self.open(int(command["count"]), int(command.get("wave", WAVE)),
                              float(command.get("timeout", 300)))
                elif name == "mark":
                    self.mark()
                elif name == "check":
                    self.check()
                elif name == "quit":
                    return
                else:
                    self.reply("error", message=f"unknown command {name!r}")

    def close(self) -> None:
        self.loop.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.holders", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--sources", required=True, help="comma list of local addresses")
    p.add_argument("--lifetime", type=float, default=1800.0)
    args = p.parse_args(argv)
    limit = raise_file_limit()
    holder = Holder(args.port, args.path, tuple(args.sources.split(",")))
    holder.reply("ready", pid=os.getpid(), file_limit=limit)
    try:
        holder.serve(args.lifetime)
    finally:
        holder.close()
    return 0


# ---------------------------------------------------------------------------------------------
# the parent's side

class Holders:
    """The holder processes of one workload: start, command all at once, gather answers, stop.
    Every wait has a deadline; a holder that dies or does not answer in time is reported."""

    def __init__(self, port: int, path: str, shares: tuple[tuple[int, tuple[str, ...]], ...],
                 log: Path, lifetime: float = 1800.0) -> None:
        self.shares = [count for count, _ in shares]
        self.log = open(log, "ab")
        self.processes: list[subprocess.Popen] = []
        self._buffers: dict[int, bytes] = {}
        for _count, sources in shares:
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "bench.holders", "--port", str(port), "--path", path,
                 "--sources", ",".join(sources), "--lifetime", str(lifetime)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log))
        self.problems: list[str] = []

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def send(self, command: dict, each: list[dict] | None = None) -> None:
        """``command`` to every holder (with ``each[i]`` merged in for holder ``i``)."""
        for i, process in enumerate(self.processes):
            if process.poll() is not None or process.stdin is None:
                continue
            line = json.dumps({**command, **(each[i] if each else {})}) + "\n"
            try:
                process.stdin.write(line.encode())
                process.stdin.flush()
            except (BrokenPipeError, OSError):
                self.problems.append(f"holder {i}: stdin closed")

    def gather(self, event: str, timeout: float) -> list[dict | None]:
        """One ``event`` answer per holder, ``None`` for one that died or did not answer."""
        answers: list[dict | None] = [None] * len(self.processes)
        deadline = time.monotonic() + timeout
        waiting = {p.stdout.fileno(): i for i, p in enumerate(self.processes)
                   if p.stdout is not None and p.poll() is None}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                self.problems.append(f"no {event!r} from holders {sorted(waiting.values())} "
                                     f"within {timeout:.0f} s")
                break
            readable, _, _ = select.select(list(waiting), [], [], min(left, 1.0))
            for fd in readable:
                i = waiting[fd]
                data = os.read(fd, 65536)
                if not data:
                    code = self.processes[i].poll()
                    self.problems.append(f"holder {i} exited ({code}) before {event!r}")
                    del waiting[fd]
                    continue
                buffered = self._buffers.get(fd, b"") + data
                *lines, self._buffers[fd] = buffered.split(b"\n")
                for line in lines:
                    answer = json.loads(line)
                    if answer.get("event") == event:
                        answers[i] = answer
                        waiting.pop(fd, None)
                    elif answer.get("event") == "error":
                        self.problems.append(f"holder {i}: {answer.get('message')}")
        return answers

    def gather_after(self, command: dict, event: str, timeout: float) -> list[dict | None]:
        self.send(command)
        return self.gather(event, timeout)

    def close(self, timeout: float = 15.0) -> None:
        """Ask every holder to quit (its sockets close as it exits), kill what is left."""
        self.send({"cmd": "quit"})
        for process in self.processes:
            if process.stdin is not None:
                try:
                    process.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for process in self.processes:
            if process.stdout is not None:
                process.stdout.close()
        self.log.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
