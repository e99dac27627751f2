"""Slow readers: a subscriber that falls behind (too many events or too many bytes waiting) is
cut off with a resume point and loses nothing, it slows no one else, and what the server holds
for it stays within the bounds."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import requests

from app.client.sse import SseFrame, SseParser

from .api import history_ids, put
from .conftest import Server
from .sse import SSEClient

SSE = "/api/v1/memory/events/sse"
BIG = "x" * 65536  # large values fill socket buffers quickly
#: as small a receive window as the kernel allows, so the server's writes block soon
SMALL_WINDOW = 4096


class FrozenReader:
    """A client that sends its request, reads the first bytes, then stops reading."""

    def __init__(self, server: Server, path: str = SSE) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.sock.settimeout(10)
        self.buffer = b""
        while b": connected" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        assert b" 200 " in self.buffer

    def thaw(self, timeout: float = 60) -> bytes:
        """Read everything until the server ends the response (keepalives don't count)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        chunks = [self.buffer]
        while not chunks[-1].endswith(b"0\r\n\r\n"):
            assert time.monotonic() < deadline, "the server never ended the stream"
            data = self.sock.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
        self.sock.close()
        return b"".join(chunks)


def dechunk(body: bytes) -> list[bytes]:
    parts = []
    while body:
        size_line, rest = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        parts.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n", "broken chunked framing"
        body = rest[size + 2:]
    return parts


def sse_frames(raw: bytes) -> list[SseFrame]:
    """The frames of a whole chunked SSE response, parsed by the client's parser."""
    return SseParser().feed(b"".join(dechunk(raw.split(b"\r\n\r\n", 1)[1])))


def overflowed(raw: bytes) -> tuple[list[int], int]:
    """The ids of the events a stream sent before it ended with ``overflow``, and the id that
    overflow says to resume after."""
    *events, final = [frame for frame in sse_frames(raw) if frame.is_event]
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
    assert server.process is not None
    pid = server.process.pid
    worker = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]
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
    frozen.sock.close()
