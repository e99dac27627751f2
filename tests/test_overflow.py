"""Slow readers: a subscriber that falls behind (too many events or too many bytes waiting) is
cut off with a resume point and loses nothing, it slows no one else, and what the server holds
for it stays within the bounds."""
from __future__ import annotations

import functools
import socket
import threading
from http.client import HTTPConnection
from pathlib import Path

import requests

from app.client.sse import SseFrame

from .api import SSE, SSEClient, history_ids, parse, put
from .conftest import Server

BIG = "x" * 65536  # large values fill socket buffers quickly
#: as small a receive window as the kernel allows, so the server's writes block soon
SMALL_WINDOW = 4096


class FrozenReader:
    """A client that opens a stream, reads its first frame, then stops reading; on a socket
    whose receive window is as small as it gets, so what the server writes soon blocks."""

    def __init__(self, server: Server, path: str = SSE) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        self.connection = HTTPConnection("127.0.0.1", server.port)
        self.connection.sock = sock
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        self.frames = parse(iter(functools.partial(self.response.read1, SMALL_WINDOW), b""))
        assert next(self.frames).comments == ("connected",)

    def thaw(self, timeout: float = 60) -> list[SseFrame]:
        """Every frame until the server ends the response (with HTTP's final chunk)."""
        assert self.connection.sock is not None
        self.connection.sock.settimeout(timeout)
        try:
            return list(self.frames)
        finally:
            self.close()

    def close(self) -> None:
        self.connection.close()


def overflowed(frames: list[SseFrame]) -> tuple[list[int], int]:
    """The ids of the events a stream sent before it ended with ``overflow``, and the id that
    overflow says to resume after."""
    *events, final = [frame for frame in frames if frame.is_event]
    assert final.event == "overflow", f"the stream ended with {final.event}: {final.data}"
    assert [frame.event for frame in events] == ["message"] * len(events)
    assert [frame.json["id"] for frame in events] == [frame.id for frame in events]
    ids = [int(frame.id) for frame in events]
    last_id = int(final.json["last_id"])
    assert ids == sorted(ids) and last_id == (ids[-1] if ids else last_id)
    return ids, last_id


def resumed_ids(server: Server, last_id: int, count: int) -> list[int]:
    """The ids of the first ``count`` events a stream resuming after ``last_id`` gets."""
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": str(last_id)}) as resumed:
        return [int(event["id"]) for event in resumed.events(count)]


def tcp_send_buffer_max() -> int:
    """The most a server socket buffers for a client that does not read (Linux)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


def events_past_the_bound(value_size: int, max_bytes: int) -> int:
    """How many events of ``value_size`` fill the kernel's buffers, the write the stream is
    blocked in and a mailbox of ``max_bytes``, with room to spare."""
    return (tcp_send_buffer_max() + (1 << 20) + 2 * max_bytes) // value_size + 1


def _worker_rss_kib(server: Server) -> int:
    [worker] = server.worker_pids()
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_frozen_reader_gets_overflow_and_resumes_without_loss(server_factory):
    server = server_factory(env={"MEMORY_SUBSCRIBER_QUEUE": "10"})
    frozen = FrozenReader(server)
    with requests.Session() as session:
        for i in range(300):
            put(server.url, f"big.{i}", {"i": i, "pad": BIG}, session=session)
    ids, last_id = overflowed(frozen.thaw())
    assert last_id < 300
    assert ids + resumed_ids(server, last_id, 300 - last_id) == history_ids(server.url)
    assert server.metric("memory_events_disconnects_total", reason="overflow") == 1


def test_byte_bound_overflows_a_frozen_reader_though_few_events_wait(server_factory):
    """Far fewer events than the queue allows, but more bytes than the byte bound."""
    max_bytes, max_events = 300_000, 100_000
    server = server_factory(env={"MEMORY_SUBSCRIBER_BYTES": str(max_bytes),
                                 "MEMORY_SUBSCRIBER_QUEUE": str(max_events)})
    frozen = FrozenReader(server)
    total = events_past_the_bound(len(BIG), max_bytes)
    assert total < max_events // 100
    with requests.Session() as session:
        for i in range(total):
            put(server.url, f"big.{i}", BIG, session=session)
    ids, last_id = overflowed(frozen.thaw())
    assert last_id < total
    assert ids + resumed_ids(server, last_id, total - last_id) == list(range(1, total + 1))


def test_frozen_readers_hold_bounded_memory(server_factory):
    """Ten frozen readers, each sent many times the byte bound: the worker holds at most the
    bound for each (plus slack for the rest of the process), and each one is overflowed."""
    max_bytes, readers, writes_per_reader = 1 << 20, 10, 60
    server = server_factory(env={"MEMORY_SUBSCRIBER_BYTES": str(max_bytes),
                                 "MEMORY_SUBSCRIBER_QUEUE": "100000"})
    scopes = [f"a{n}" for n in range(readers)]
    frozen = [FrozenReader(server, f"{SSE}?scope=actor&scope_id={scope}") for scope in scopes]
    value = "x" * 200_000
    with SSEClient(server.url + SSE, params={"patterns": "done"}) as done, \
            requests.Session() as session:
        assert done.next().comments == ("connected",)
        before = _worker_rss_kib(server)
        for i in range(writes_per_reader):
            for scope in scopes:
                put(server.url, f"big.{i}", value, session=session, scope="actor",
                    scope_id=scope)
        put(server.url, "done", None, session=session)
        done.events(1)  # every write before it has been offered to every reader
        after = _worker_rss_kib(server)
    allowed = (readers * max_bytes + (50 << 20)) >> 10
    assert after - before < allowed, f"worker RSS grew {after - before} KiB"
    for reader in frozen:
        ids, _ = overflowed(reader.thaw())
        assert len(ids) < writes_per_reader


def test_frozen_reader_slows_no_one_and_holds_bounded_memory(server_factory):
    server = server_factory(env={"MEMORY_SUBSCRIBER_QUEUE": "20"})
    frozen = FrozenReader(server)
    with SSEClient(server.url + SSE) as live:
        live.next()
        received: list[int] = []
        reader = threading.Thread(
            target=lambda: received.extend(int(e["id"]) for e in live.events(600, timeout=60)))
        reader.start()
        with requests.Session() as session:
            for i in range(200):  # warm up caches and buffers, and overflow the frozen reader
                put(server.url, f"warm.{i}", {"pad": BIG}, session=session)
            before = _worker_rss_kib(server)
            for i in range(400):  # 25 MiB more: buffering it for the frozen reader would show
                put(server.url, f"more.{i}", {"pad": BIG}, session=session)
            after = _worker_rss_kib(server)
        reader.join()
    assert received == list(range(1, 601))
    assert after - before < 12 * 1024, f"worker RSS grew {after - before} KiB"
    frozen.close()
