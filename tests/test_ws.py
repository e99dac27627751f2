"""The WebSocket stream against real gunicorn servers (gevent and gthread) and a real client.

Includes the AgentField control plane's WebSocket cases, ported: the happy path and the
rejection of a request that is not an upgrade.
"""
from __future__ import annotations

import json
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
import websocket
from websocket import ABNF

from .api import history_ids, put
from .conftest import Server, wait_until
from .sse import SSEClient

WS_PATH = "/api/v1/memory/events/ws"
WORKERS = pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
#: a short heartbeat, so the server's pings and its noticing of gone clients are quick
QUICK = {"MEMORY_HEARTBEAT_SECONDS": "0.5"}
LOST = -1  # not an opcode: the connection broke without a close frame
NORMAL_CLOSURE, GOING_AWAY = 1000, 1001
TOO_BIG = struct.pack("!H", 1009)  # a close frame's status code, as sent


def ws_url(server: Server, params: dict | None = None) -> str:
    query = "?" + urlencode(params) if params else ""
    return "ws" + server.url.removeprefix("http") + WS_PATH + query


class WSClient:
    """A client that behaves like a browser: a thread reads every frame and answers pings."""

    def __init__(self, server: Server, params: dict | None = None, **options: object) -> None:
        self.conn = websocket.create_connection(ws_url(server, params), timeout=10,
                                                enable_multithread=True, **options)
        self.conn.settimeout(None)
        self.frames: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                opcode, frame = self.conn.recv_data_frame(control_frame=True)
                if opcode != ABNF.OPCODE_PING:  # already answered by the library
                    self.frames.put((opcode, frame.data))
                if opcode == ABNF.OPCODE_CLOSE:
                    return
        except (websocket.WebSocketException, OSError):
            self.frames.put((LOST, b""))
        finally:
            self.ended.set()

    def frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no WebSocket frame within {timeout}s") from None

    def text(self, timeout: float = 10.0) -> str:
        opcode, data = self.frame(timeout)
        assert opcode == ABNF.OPCODE_TEXT, f"expected a text message, got {opcode}: {data!r}"
        return data.decode()

    def message(self, timeout: float = 10.0) -> dict:
        return json.loads(self.text(timeout))

    def keys(self, count: int, timeout: float = 10.0) -> list[str]:
        """The keys of the next ``count`` events; a control message fails the test."""
        found = [self.message(timeout) for _ in range(count)]
        assert all(event["type"] == "memory_change" for event in found), found
        return [event["key"] for event in found]

    def close_code(self, timeout: float = 10.0) -> int:
        opcode, data = self.frame(timeout)
        assert opcode == ABNF.OPCODE_CLOSE, f"expected the server's close, got {opcode}: {data!r}"
        return struct.unpack("!H", data[:2])[0]

    def close(self) -> None:
        """Close as a polite client does: a close frame, then the socket once it is answered."""
        self.conn.send_close()
        self.ended.wait(10)
        self.conn.shutdown()

    def __enter__(self) -> "WSClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.shutdown()


def ws_subscribers(server: Server) -> float:
    return server.metric("memory_events_subscribers", transport="ws")


def disconnects(server: Server, reason: str) -> float:
    return server.metric("memory_events_disconnects_total", reason=reason)


def subscribe(server: Server, params: dict | None = None, **options: object) -> WSClient:
    """Open a socket and wait until the server counts its subscription.

    Tests of other features wait for the gauge so they do not depend on when the subscription
    is made; the ported happy path checks that it exists as soon as the socket is open.
    """
    before = ws_subscribers(server)
    client = WSClient(server, params, **options)
    wait_until(lambda: ws_subscribers(server) > before, message="the socket's subscription")
    return client


def event_id(server: Server, key: str) -> str:
    """The id of the newest event of ``key``, from the history."""
    return str(history_ids(server.url, patterns=key)[-1])


@WORKERS
def test_control_plane_websocket_happy_path(server_factory, worker_class):
    """Dial, change a key at once, read it: repeated, since a late subscription loses it only
    sometimes."""
    server = server_factory(worker_class=worker_class, env=QUICK)
    for round_ in range(30):
        with WSClient(server) as client:
            put(server.url, "ws.key", round_)
            event = client.message()
            assert (event["key"], event["data"]) == ("ws.key", round_)


def test_control_plane_upgrade_rejection(server):
    """A plain GET is refused before any socket: 400 with the JSON error body."""
    response = requests.get(server.url + WS_PATH, params={"patterns": "a.*"}, timeout=5)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert (body["error"], body["code"]) == ("websocket_required", 400) and body["message"]
    assert ws_subscribers(server) == 0


@WORKERS
def test_event_is_one_text_frame_with_the_sse_event_json(server_factory, worker_class):
    server = server_factory(worker_class=worker_class, env=QUICK)
    params = {"patterns": "user.*"}
    with SSEClient(server.url + "/api/v1/memory/events/sse", params=params) as sse, \
            subscribe(server, params) as ws:
        assert sse.next(timeout=5).comments == ("connected",)
        put(server.url, "user.1", {"name": "Ada", "tags": ["x", "ü"]}, scope="actor",
            scope_id="a1")
        put(server.url, "user.2", None)
        for key in ("user.1", "user.2"):
            frame = sse.next_event()
            assert ws.text() == frame.data
            assert json.loads(frame.data)["key"] == key


@WORKERS
def test_filters_deliver_only_matching_changes(server_factory, worker_class):
    server = server_factory(worker_class=worker_class, env=QUICK)
    with subscribe(server, {"scope": "session", "scope_id": "s1"}) as by_scope, \
            subscribe(server, {"patterns": " user.* , ,cfg.?"}) as by_key:
        put(server.url, "user.1", 1, scope="session", scope_id="s1")
        put(server.url, "user.2", 2, scope="session", scope_id="s2")
        put(server.url, "other", 3, scope="session", scope_id="s1")
        put(server.url, "other", 4, scope="workflow", scope_id="s1")
        put(server.url, "cfg.a", 5)
        put(server.url, "cfg.ab", 6)
        put(server.url, "user.x/y", 7)
        put(server.url, "user.end", 8, scope="session", scope_id="s1")
        assert by_scope.keys(3) == ["user.1", "other", "user.end"]
        assert by_key.keys(4) == ["user.1", "user.2", "cfg.a", "user.end"]


@WORKERS
def test_resume_replays_in_order_then_goes_live_without_duplicates(server_factory, worker_class):
    """Resume while a writer is busy: the replay and the live events meet with no gap."""
    server = server_factory(worker_class=worker_class, env=QUICK)
    total = 40
    written: list[str] = []

    def write() -> None:
        for i in range(total):
            put(server.url, f"noise.{i:03}", i)
            put(server.url, f"busy.{i:03}", i)
            written.append(f"busy.{i:03}")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 10, message="the first writes")
        after = event_id(server, "busy.002")
        with WSClient(server, {"patterns": "busy.*", "last_event_id": after}) as client:
            events = [client.message() for _ in range(total - 3)]
            assert [event["key"] for event in events] == [f"busy.{i:03}" for i in range(3, total)]
            ids = [int(event["id"]) for event in events]
            assert ids == sorted(ids) and ids[0] > int(after)
            writer.join()
            put(server.url, "busy.end", None)
            assert client.keys(1) == ["busy.end"]
    finally:
        writer.join()


@WORKERS
def test_resume_from_trimmed_history_resets(server_factory, worker_class):
    """Resuming from an id whose successors the retention removed: a reset naming the oldest
    id still to come, then live events."""
    server = server_factory(worker_class=worker_class,
                            env={**QUICK, "MEMORY_RETENTION_HOURS": "0.0001"})
    with subscribe(server, {"patterns": "k.*"}) as live:
        put(server.url, "k.1", 1)
        put(server.url, "k.2", 2)
        ids = [live.message()["id"] for _ in range(2)]
    wait_until(lambda: history_ids(server.url) == [], message="the retention to trim the log")
    with WSClient(server, {"patterns": "k.*", "last_event_id": ids[0]}) as client:
        assert client.message() == {"type": "reset", "reason": "history_trimmed",
                                    "oldest_id": str(int(ids[-1]) + 1)}
        put(server.url, "k.3", 3)
        assert client.keys(1) == ["k.3"]


def tcp_send_buffer_max() -> int:
    """The most a server socket buffers for a client that does not read (Linux)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


def not_reading(server: Server, params: dict) -> websocket.WebSocket:
    """A socket whose owner reads nothing until told to, with as small a window as it can."""
    return websocket.create_connection(ws_url(server, params), timeout=10,
                                       sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])


def events_to_fill_buffers(value_size: int) -> int:
    """How many events of ``value_size`` fill every buffer between the server and a client
    that does not read, so the server's writes to it block."""
    return (tcp_send_buffer_max() + 1_000_000) // value_size + 1


@WORKERS
def test_overflow_ends_the_socket_and_resuming_loses_nothing(server_factory, worker_class):
    queue_size, value_size = 5, 200_000
    # The slow client answers no pings while it does not read: a long heartbeat keeps it.
    server = server_factory(worker_class=worker_class, env={
        "MEMORY_SUBSCRIBER_QUEUE": str(queue_size), "MEMORY_HEARTBEAT_SECONDS": "120"})
    params = {"patterns": "big.*"}
    burst = events_to_fill_buffers(value_size) + queue_size + 4
    keys = [f"big.{i:03}" for i in range(burst)]
    slow = not_reading(server, params)
    try:
        with subscribe(server, params) as fast:
            wait_until(lambda: ws_subscribers(server) == 2, message="both subscriptions")
            # In lockstep with a client that reads, whose queue so never holds more than one.
            # Once it has the last event, the server has offered every event to the slow
            # client, whose queue overflowed long before.
            for key in keys:
                put(server.url, key, "x" * value_size)
                assert fast.keys(1) == [key]

            received: list[dict] = []
            while (message := json.loads(slow.recv()))["type"] == "memory_change":
                received.append(message)
            assert 0 < len(received) < burst
            assert [event["key"] for event in received] == keys[:len(received)]
            assert message == {"type": "overflow", "last_id": received[-1]["id"]}
            opcode, frame = slow.recv_data_frame()
            assert opcode == ABNF.OPCODE_CLOSE
            assert disconnects(server, "overflow") == 1
            assert ws_subscribers(server) == 1

        with subscribe(server, {**params, "last_event_id": message["last_id"]}) as resumed:
            assert resumed.keys(burst - len(received), timeout=60) == keys[len(received):]
            put(server.url, "big.end", None)
            assert resumed.keys(1) == ["big.end"]
    finally:
        slow.shutdown()


@WORKERS
def test_client_that_stops_reading_is_let_go(server_factory, worker_class):
    """With writes to it blocked, a client that answers no pings is dropped all the same."""
    server = server_factory(worker_class=worker_class, env=QUICK)
    value_size = 200_000
    slow = not_reading(server, {"patterns": "big.*"})
    try:
        wait_until(lambda: ws_subscribers(server) == 1, message="the subscription")
        for i in range(events_to_fill_buffers(value_size)):
            put(server.url, f"big.{i:03}", "x" * value_size)
        wait_until(lambda: ws_subscribers(server) == 0, timeout=20,
                   message="the stalled client's subscription to end")
        assert disconnects(server, "client") == 1
    finally:
        slow.shutdown()


@WORKERS
def test_origin_is_checked_before_the_handshake(server_factory, worker_class):
    server = server_factory(worker_class=worker_class,
                            env={**QUICK, "MEMORY_CORS_ORIGINS": "https://app.example"})
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        WSClient(server, origin="https://evil.example")
    assert refused.value.status_code == 403
    body = json.loads(refused.value.resp_body)
    assert (body["error"], body["code"]) == ("origin_not_allowed", 403)
    assert ws_subscribers(server) == 0

    # An allowed origin, the service's own (the library's default) and none at all
    accepted = [subscribe(server, origin="https://app.example"), subscribe(server),
                subscribe(server, suppress_origin=True)]
    try:
        put(server.url, "k", 1)
        for client in accepted:
            assert client.keys(1) == ["k"]
    finally:
        for client in accepted:
            client.conn.shutdown()


def until_pong(client: WSClient) -> bytes:
    opcode, data = client.frame()
    assert opcode == ABNF.OPCODE_PONG, f"expected a pong, got {opcode}: {data!r}"
    return data


@WORKERS
def test_client_messages_are_read_and_ignored(server_factory, worker_class):
    server = server_factory(worker_class=worker_class, env=QUICK)
    with subscribe(server, {"patterns": "chat.*"}) as client:
        for i in range(500):
            client.conn.send(f"message {i}")
        client.conn.send_binary(b"\x00" * 1000)
        client.conn.ping(b"still there?")
        assert until_pong(client) == b"still there?"
        put(server.url, "chat.1", 1)
        assert client.keys(1) == ["chat.1"]

        # A message beyond the size limit ends the socket (simple-websocket sends 1009 and
        # closes at once, so the client may see a reset first), and cleanup runs as on any end.
        client.conn.send("x" * 70_000)
        opcode, data = client.frame()
        assert opcode == LOST or (opcode, data[:2]) == (ABNF.OPCODE_CLOSE, TOO_BIG), data
    wait_until(lambda: ws_subscribers(server) == 0, message="the subscription to end")
    assert disconnects(server, "client") == 1


@WORKERS
def test_client_close_cleans_up(server_factory, worker_class):
    server = server_factory(worker_class=worker_class, env=QUICK)
    client = subscribe(server)
    put(server.url, "k", 1)
    assert client.keys(1) == ["k"]
    client.close()
    wait_until(lambda: ws_subscribers(server) == 0, message="the subscription to end")
    assert disconnects(server, "client") == 1


HOLDER = """
import sys, websocket
conn = websocket.create_connection(sys.argv[1], timeout=10)
conn.settimeout(None)
print("open", flush=True)
while True:
    conn.recv()
"""


@WORKERS
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_vanished_client_is_unsubscribed(server_factory, worker_class, sig):
    """A killed client's socket is closed by its kernel; a frozen one only stops answering
    pings. Either way the subscription ends within a few heartbeats."""
    server = server_factory(worker_class=worker_class, env={"MEMORY_HEARTBEAT_SECONDS": "0.3"})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ws_url(server)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        wait_until(lambda: ws_subscribers(server) == 1, message="the holder's subscription")
        holder.send_signal(sig)
        wait_until(lambda: ws_subscribers(server) == 0, timeout=10,
                   message="the vanished client's subscription to end")
        assert disconnects(server, "client") == 1
    finally:
        holder.kill()
        holder.wait(10)


@WORKERS
def test_server_shutdown_sends_a_final_message(server_factory, worker_class):
    server = server_factory(worker_class=worker_class, env=QUICK)
    with subscribe(server) as client:
        put(server.url, "k", 1)
        event = client.message()
        server.send(signal.SIGTERM)
        assert client.message() == {"type": "shutdown", "last_id": event["id"]}
        assert client.close_code() == GOING_AWAY
    assert server.process.wait(30) == 0


@WORKERS
def test_stream_lifetime_ends_the_socket(server_factory, worker_class):
    server = server_factory(worker_class=worker_class,
                            env={**QUICK, "MEMORY_STREAM_MAX_SECONDS": "1"})
    put(server.url, "k", 1)
    head = event_id(server, "k")
    with WSClient(server) as client:
        assert client.message(timeout=10) == {"type": "lifetime", "last_id": head}
        assert client.close_code() == NORMAL_CLOSURE
    assert disconnects(server, "lifetime") == 1
    assert ws_subscribers(server) == 0
