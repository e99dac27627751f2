"""The WebSocket stream against real gunicorn servers (gevent and gthread) and a real client.

Two kinds of client: a *plain* one (no subprotocol, as AgentField's SDKs connect) gets events
only and learns why its stream ended from the close frame; a *protocol* one
(``Sec-WebSocket-Protocol: memory-events.v1``) also gets control messages.

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
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import pytest
import websocket
from websocket import ABNF

from app.wire import WS_PROTOCOL

from .api import SSE, SSEClient, history_ids, put
from .api import WS as WS_PATH
from .conftest import Server, sample, wait_until

WORKERS = pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
#: plain clients under both workers; what protocol clients get differs only in its framing
CLIENTS = pytest.mark.parametrize(
    "worker_class, protocol", [("gevent", False), ("gthread", False), ("gevent", True)],
    ids=["plain-gevent", "plain-gthread", "protocol-gevent"])
#: a short heartbeat, so the server's pings and its noticing of gone clients are quick
QUICK = {"MEMORY_HEARTBEAT_SECONDS": "0.5"}
#: a heartbeat far above any bound a test checks: pings cannot be what notices a client left
SLOW_PINGS = {"MEMORY_HEARTBEAT_SECONDS": "30"}
#: how soon a client that closed its connection must be let go, timed from the close to the
#: subscriber gauge back at 0 (the service's bound is 100 ms; polling ``/metrics`` and a busy
#: machine take some of the rest)
AT_ONCE = 0.2
LOST = -1  # not an opcode: the connection broke without a close frame
NORMAL_CLOSURE, GOING_AWAY, POLICY_VIOLATION = 1000, 1001, 1008
TOO_BIG = struct.pack("!H", 1009)  # a close frame's status code, as sent
#: how a plain client's stream closes, by why it ended (the reason carries the resume id)
PLAIN_CLOSE = {"overflow": POLICY_VIOLATION, "shutdown": GOING_AWAY}
#: the close codes protocol clients get after the final message, where the code is fixed
PROTOCOL_CLOSE = {"shutdown": GOING_AWAY, "lifetime": NORMAL_CLOSURE}
#: as small a receive window as the kernel allows: writes to a client that does not read block
SMALL_WINDOW = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]


def ws_url(server: Server, params: dict | None = None) -> str:
    query = "?" + urlencode(params) if params else ""
    return "ws" + server.url.removeprefix("http") + WS_PATH + query


class WSClient:
    """A client that behaves like a browser: a thread reads every frame and answers pings.

    ``protocol`` asks for the service's subprotocol; ``reading=False`` leaves the socket unread
    (so unanswered pings too) until ``read`` is called.
    """

    def __init__(self, server: Server, params: dict | None = None, protocol: bool = False,
                 reading: bool = True, **options: object) -> None:
        if protocol:
            options["subprotocols"] = [WS_PROTOCOL]
        self.protocol = protocol
        self.conn = websocket.create_connection(ws_url(server, params), timeout=10,
                                                enable_multithread=True, **options)
        assert self.conn.getsubprotocol() == (WS_PROTOCOL if protocol else None)
        self.conn.settimeout(None)
        self.frames: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.ended = threading.Event()
        if reading:
            self.read()

    def read(self) -> None:
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

    def next(self, timeout: float = 10.0) -> tuple[str, object]:
        """The next frame as ``("event", event)``, ``("control", message)``,
        ``("close", (code, reason))``, or ``(opcode, data)`` for anything else."""
        opcode, data = self.frame(timeout)
        if opcode == ABNF.OPCODE_TEXT:
            message = json.loads(data)
            return ("event" if message.get("type") == "memory_change" else "control"), message
        if opcode == ABNF.OPCODE_CLOSE and len(data) >= 2:
            return "close", (struct.unpack("!H", data[:2])[0], data[2:].decode())
        return str(opcode), data

    def message(self, timeout: float = 10.0) -> dict:
        kind, message = self.next(timeout)
        assert kind in ("event", "control"), f"expected a text message, got {kind}: {message!r}"
        return message  # type: ignore[return-value]

    def keys(self, count: int, timeout: float = 10.0) -> list[str]:
        """The keys of the next ``count`` frames, which must all be events."""
        found = [self.next(timeout) for _ in range(count)]
        assert all(kind == "event" for kind, _ in found), found
        return [event["key"] for _, event in found]  # type: ignore[index]

    def close(self) -> None:
        """Close as a polite client does: a close frame, then the socket once it is answered."""
        self.conn.send_close()
        self.ended.wait(10)
        self.conn.shutdown()

    def drop(self) -> None:
        """Close the TCP connection without a close frame. (A bare ``close`` of the socket
        would wait for the reader thread's ``recv`` before the kernel sent anything.)"""
        self.conn.abort()
        self.conn.shutdown()

    def __enter__(self) -> "WSClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


def ws_subscribers(server: Server) -> float:
    return server.metric("memory_events_subscribers", transport="ws")


def disconnects(server: Server, reason: str) -> float:
    return server.metric("memory_events_disconnects_total", reason=reason)


def seconds_until(check: Callable[[], object], timeout: float = 10.0, message: str = "",
                  after: Callable[[], object] | None = None) -> float:
    """How long until ``check`` holds, timed from just before ``after`` runs (or from now)."""
    started = time.monotonic()
    if after is not None:
        after()
    wait_until(check, timeout=timeout, interval=0.01, message=message)
    return time.monotonic() - started


def subscribe(server: Server, params: dict | None = None, **options: object) -> WSClient:
    """Open a socket and wait until the server counts its subscription.

    Tests of other features wait for the gauge so they do not depend on when the subscription
    is made; the ported happy path checks that it exists as soon as the socket is open.
    """
    before = ws_subscribers(server)
    client = WSClient(server, params, **options)
    wait_until(lambda: ws_subscribers(server) > before, message="the socket's subscription")
    return client


def until_end(client: WSClient, why: str) -> tuple[list[dict], str]:
    """The events ``client`` gets until its stream ends for reason ``why``, and the id to resume
    after, from the final message (protocol clients) or the close reason (plain clients)."""
    events = []
    while (item := client.next())[0] == "event":
        events.append(item[1])
    if client.protocol:
        assert item[0] == "control", f"expected a final {why} message, got {item}"
        final, closing = item[1], client.next()
        assert closing[0] == "close", f"expected a close after the final message, got {closing}"
        code = closing[1][0]  # type: ignore[index]
        expected_code = PROTOCOL_CLOSE.get(why, code)
    else:
        assert item[0] == "close", f"a plain client got {item}"
        code, reason = item[1]  # type: ignore[misc]
        final, expected_code = json.loads(reason), PLAIN_CLOSE[why]
    assert (final, code) == ({"type": why, "last_id": final.get("last_id")}, expected_code)
    return events, final["last_id"]  # type: ignore[index,return-value]


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


def test_control_plane_upgrade_rejection(client):
    """A plain GET is refused before any socket: 400 with the JSON error body."""
    response = client.get(WS_PATH, query_string={"patterns": "a.*"})
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json
    assert (body["error"], body["code"]) == ("websocket_required", 400) and body["message"]
    assert sample(client.get("/metrics").text, "memory_events_subscribers", transport="ws") == 0


@CLIENTS
def test_event_is_one_text_frame_with_the_sse_event_json(server_factory, worker_class, protocol):
    server = server_factory(worker_class=worker_class, env=QUICK)
    params = {"patterns": "user.*"}
    with SSEClient(server.url + SSE, params=params) as sse, \
            subscribe(server, params, protocol=protocol) as ws:
        assert sse.next(timeout=5).comments == ("connected",)
        put(server.url, "user.1", {"name": "Ada", "tags": ["x", "ü"]}, scope="actor",
            scope_id="a1")
        put(server.url, "user.2", None)
        for key in ("user.1", "user.2"):
            frame = sse.next_event()
            opcode, data = ws.frame()
            assert (opcode, data.decode()) == (ABNF.OPCODE_TEXT, frame.data)
            assert json.loads(frame.data)["key"] == key


def test_filters_deliver_only_matching_changes(server):
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


def test_trimmed_resume_resets_protocol_clients_and_plain_ones_get_events_only(server_factory):
    """Resuming from an id whose successors the retention removed: a protocol client gets a
    reset naming the oldest id still to come, then live events; a plain client gets the live
    events only, and no snapshot either when it asks for one."""
    server = server_factory(env={**QUICK, "MEMORY_RETENTION_HOURS": "0.0001"})
    with subscribe(server, {"patterns": "k.*"}) as live:
        put(server.url, "k.1", 1)
        put(server.url, "k.2", 2)
        ids = [live.message()["id"] for _ in range(2)]
    wait_until(lambda: history_ids(server.url) == [], message="the retention to trim the log")
    wait_until(lambda: ws_subscribers(server) == 0, message="the first client to be let go")
    resume = {"patterns": "k.*", "last_event_id": ids[0]}
    with subscribe(server, resume, protocol=True) as protocol, \
            subscribe(server, resume) as plain, \
            subscribe(server, {"patterns": "k.*", "snapshot": "1"}) as plain_snapshot:
        assert protocol.message() == {"type": "reset", "reason": "history_trimmed",
                                      "oldest_id": str(int(ids[-1]) + 1)}
        put(server.url, "k.3", 3)
        for client in (protocol, plain, plain_snapshot):
            assert client.keys(1) == ["k.3"]


def tcp_send_buffer_max() -> int:
    """The most a server socket buffers for a client that does not read (Linux)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


def events_to_fill_buffers(value_size: int) -> int:
    """How many events of ``value_size`` fill every buffer between the server and a client
    that does not read, so the server's writes to it block."""
    return (tcp_send_buffer_max() + 1_000_000) // value_size + 1


@CLIENTS
def test_overflow_ends_the_socket_and_resuming_loses_nothing(server_factory, worker_class,
                                                             protocol):
    queue_size, value_size = 5, 200_000
    # The slow client answers no pings while it does not read: a long heartbeat keeps it.
    server = server_factory(worker_class=worker_class, env={
        "MEMORY_SUBSCRIBER_QUEUE": str(queue_size), "MEMORY_HEARTBEAT_SECONDS": "120"})
    params = {"patterns": "big.*"}
    burst = events_to_fill_buffers(value_size) + queue_size + 4
    keys = [f"big.{i:03}" for i in range(burst)]
    slow = WSClient(server, params, protocol=protocol, reading=False, sockopt=SMALL_WINDOW)
    try:
        with subscribe(server, params) as fast:
            wait_until(lambda: ws_subscribers(server) == 2, message="both subscriptions")
            # In lockstep with a client that reads, whose queue so never holds more than one.
            # Once it has the last event, the server has offered every event to the slow
            # client, whose queue overflowed long before.
            for key in keys:
                put(server.url, key, "x" * value_size)
                assert fast.keys(1) == [key]

            slow.read()
            received, last_id = until_end(slow, "overflow")
            assert 0 < len(received) < burst
            assert [event["key"] for event in received] == keys[:len(received)]
            assert last_id == received[-1]["id"]
            assert ws_subscribers(server) == 1
        wait_until(lambda: ws_subscribers(server) == 0, message="the fast client to be let go")

        with subscribe(server, {**params, "last_event_id": last_id}) as resumed:
            assert resumed.keys(burst - len(received), timeout=60) == keys[len(received):]
            put(server.url, "big.end", None)
            assert resumed.keys(1) == ["big.end"]
    finally:
        slow.drop()
    assert disconnects(server, "overflow") == 1


@WORKERS
def test_client_that_stops_reading_is_let_go(server_factory, worker_class):
    """With writes to it blocked, a client that answers no pings is dropped all the same."""
    server = server_factory(worker_class=worker_class, env=QUICK)
    value_size = 200_000
    slow = WSClient(server, {"patterns": "big.*"}, reading=False, sockopt=SMALL_WINDOW)
    try:
        wait_until(lambda: ws_subscribers(server) == 1, message="the subscription")
        for i in range(events_to_fill_buffers(value_size)):
            put(server.url, f"big.{i:03}", "x" * value_size)
        wait_until(lambda: ws_subscribers(server) == 0, timeout=20,
                   message="the stalled client's subscription to end")
        assert disconnects(server, "client") == 1
    finally:
        slow.drop()


def test_origin_is_checked_before_the_handshake(server_factory):
    server = server_factory(env={**QUICK, "MEMORY_CORS_ORIGINS": "https://app.example"})
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
            client.drop()


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
@pytest.mark.parametrize("how", ["close", "drop"], ids=["close_frame", "tcp_close"])
def test_a_client_that_closes_is_let_go_at_once(server_factory, worker_class, how):
    server = server_factory(worker_class=worker_class, env=SLOW_PINGS)
    client = subscribe(server)
    put(server.url, "k", 1)
    assert client.keys(1) == ["k"]
    seconds = seconds_until(lambda: ws_subscribers(server) == 0, after=getattr(client, how),
                            message="the subscription to end")
    assert seconds < AT_ONCE, f"let go {seconds:.3f}s after the close"
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


@CLIENTS
def test_shutdown_ends_the_socket_and_resuming_after_a_restart_loses_nothing(
        server_factory, worker_class, protocol):
    server = server_factory(worker_class=worker_class, env=QUICK)
    params = {"patterns": "k.*"}
    with subscribe(server, params, protocol=protocol) as client:
        put(server.url, "k.1", 1)
        [sent] = [client.message()]
        put(server.url, "other", 2)  # not for this client: it resumes after k.1
        server.send(signal.SIGTERM)
        assert until_end(client, "shutdown") == ([], sent["id"])
    assert server.process.wait(30) == 0

    server.start()
    put(server.url, "k.3", 3)
    with subscribe(server, {**params, "last_event_id": sent["id"]}, protocol=protocol) as resumed:
        put(server.url, "k.4", 4)
        assert resumed.keys(2) == ["k.3", "k.4"]


def test_lifetime_ends_protocol_streams_and_never_a_plain_one(server_factory):
    """Two protocol streams end by lifetime one after the other, the first opened after the
    plain stream: by the second's end the plain one is past any lifetime it could have had."""
    server = server_factory(env={**QUICK, "MEMORY_STREAM_MAX_SECONDS": "0.5"})
    put(server.url, "k.1", 1)
    head = event_id(server, "k.1")
    with subscribe(server) as plain:
        for _ in range(2):
            with WSClient(server, protocol=True) as timed:
                assert until_end(timed, "lifetime") == ([], head)
        put(server.url, "k.2", 2)
        assert plain.keys(1) == ["k.2"]  # its first frame: no control message, no close
        wait_until(lambda: ws_subscribers(server) == 1, message="only the plain stream open")
    assert disconnects(server, "lifetime") == 2
