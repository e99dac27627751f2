"""Slow readers: a subscriber that falls behind is cut off with a resume point and loses nothing,
and it slows no one else."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import requests

from .api import history_ids, put
from .conftest import Server
from .sse import SSEClient

SSE = "/api/v1/memory/events/sse"
BIG = "x" * 65536  # large values fill socket buffers quickly


class FrozenReader:
    """A client that sends its request, reads the first bytes, then stops reading."""

    def __init__(self, server: Server, path: str = SSE) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port))
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


def _frames(raw: bytes) -> list[tuple[str, str]]:
    """(field, value) of every ``id:``/``event:``/``data:`` line of a chunked SSE body."""
    body = b"".join(dechunk(raw.split(b"\r\n\r\n", 1)[1])).decode()
    return [tuple(line.split(": ", 1)) for line in body.split("\n")  # type: ignore[misc]
            if line.startswith(("id:", "event:", "data:"))]


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
    frames = _frames(frozen.thaw())
    ids = [int(value) for name, value in frames if name == "id"]
    events = [json.loads(value) for name, value in frames if name == "data" and '"id"' in value]
    assert [int(event["id"]) for event in events] == ids  # every frame whole, in order
    assert ("event", "overflow") in frames
    overflow = frames[frames.index(("event", "overflow")) + 1]
    last_id = int(overflow[1].split('"')[3])
    assert ids == list(range(1, len(ids) + 1)) and ids[-1] == last_id < 300
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": str(last_id)}) as resumed:
        rest = [int(event["id"]) for event in resumed.events(300 - last_id)]
    assert ids + rest == history_ids(server.url)
    assert server.metric("memory_events_disconnects_total", reason="overflow") == 1


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
