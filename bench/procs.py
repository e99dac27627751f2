"""Server processes: start on a chosen core, find the whole tree, read its memory and CPU time."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_file_limit() -> int:
    """The soft limit on open files up to the hard one (children inherit it); the new soft
    limit. The hard one is the ceiling: raising it takes ``CAP_SYS_RESOURCE`` (root), or a
    higher ``ulimit -Hn`` / ``LimitNOFILE`` where the bench is started."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # no hard limit: the kernel's ceiling, fs.nr_open
        with open("/proc/sys/fs/nr_open") as f:
            hard = int(f.read())
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(
                resource.RLIMIT_NOFILE)[1]))
        except (ValueError, OSError):
            return soft
    return hard


def pin(cpus: set[int] | None) -> None:
    """Keep this process (and what it starts later) on ``cpus``; ``None`` leaves it free."""
    if cpus:
        os.sched_setaffinity(0, cpus)


class Process:
    """A server process in its own session, so the whole tree stops together."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log: Path,
                 cpus: set[int] | None, cwd: Path = ROOT) -> None:
        self.args = list(args)
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args, cwd=cwd, env={**os.environ, **env}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: pin(cpus)) if cpus else None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM to the whole group, SIGKILL after ``timeout``: how a server shuts down is
        not what is measured, and waiting out a graceful timeout would only slow the run."""
        if not self.alive():
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)
        except ProcessLookupError:
            pass


def tree(root: int) -> list[int]:
    """``root`` and all its descendants, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _proc_sum(pids: Sequence[int], name: str, read: Callable[[str], int]) -> int:
    """``read`` applied to ``/proc/<pid>/<name>`` of each pid, summed; gone processes count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{name}") as f:
                total += read(f.read())
        except OSError:
            pass
    return total


def rss_kb(pids: Sequence[int]) -> int:
    """Resident memory of ``pids`` summed, in KiB."""
    return _proc_sum(pids, "statm", lambda text: int(text.split()[1]) * PAGE_KB)


def pss_kb(pids: Sequence[int]) -> int:
    """Proportional set size of ``pids`` summed, in KiB: pages shared between them (the
    interpreter a worker inherits from the master) counted once, not once per process."""
    def pss(text: str) -> int:
        for line in text.splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
        return 0
    return _proc_sum(pids, "smaps_rollup", pss)


def sockets(pid: int) -> int:
    """How many sockets ``pid`` has open (0 when it is gone)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def kernel_memory() -> dict[str, int]:
    """The kernel's slab (where socket structures live) in KiB, and ``/proc/net/sockstat``'s
    TCP line: sockets in use, in ``TIME_WAIT``, and pages of socket buffers."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            if name in ("Slab", "SUnreclaim", "MemAvailable"):
                out[name.lower() + "_kb"] = int(value.split()[0])
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    words = line.split()[1:]
                    fields = dict(zip(words[::2], (int(n) for n in words[1::2])))
                    out.update({"tcp_inuse": fields.get("inuse", 0), "tcp_tw": fields.get("tw", 0),
                                "tcp_mem_pages": fields.get("mem", 0)})
    except OSError:
        pass
    return out


def _cpu_ticks(stat: str) -> int:
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` summed."""
    return _proc_sum(pids, "stat", _cpu_ticks) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
