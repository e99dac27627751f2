"""``app.client.MemoryClient`` against real servers: calls, typed errors, and a stream that
resumes across drops, server-side ends and restarts without losing or repeating an event."""
from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from app.client import (
    ApiError,
    Backoff,
    BadRequest,
    ConnectionFailed,
    MemoryClient,
    NotFound,
    SseFrame,
    SseParser,
    StreamStatus,
    Unauthorized,
    VersionConflict,
)

from .api import put
from .conftest import Server, free_port, wait_until

FAST = Backoff(base=0.05, cap=0.5)


class Consumer:
    """Iterates a subscription in a thread, so a test never blocks on a stream that stalls.
    An exception that ends the iteration is queued like an item."""

    def __init__(self, stream: Iterator[dict], count: int) -> None:
        self.items: queue.Queue[dict | Exception] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(stream, count), daemon=True)
        self.thread.start()

    def _run(self, stream: Iterator[dict], count: int) -> None:
        try:
            for received, item in enumerate(stream, 1):
                self.items.put(item)
                if received == count:
                    break
        except Exception as exc:
            self.items.put(exc)

    def take(self, count: int, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        found = []
        while len(found) < count:
            try:
                found.append(self.items.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                summary = [item if isinstance(item, Exception) else
                           (item.get("id"), item.get("key") or item.get("type")) for item in found]
                raise AssertionError(f"got {len(found)} of {count} items: {summary}") from None
        return found


RECEIVE_BUFFER = 65536


class SmallWindow(HTTPAdapter):
    """Connections with a fixed, small receive buffer: a reader on a slow link."""

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["socket_options"] = HTTPConnection.default_socket_options + [
            (socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)]
        super().init_poolmanager(*args, **kwargs)


def in_flight_limit() -> int:
    """Bytes the kernel may buffer between the server and a ``SmallWindow`` reader: the
    largest send buffer it grows to, plus the receive buffer (which it doubles)."""
    send_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return send_max + 2 * RECEIVE_BUFFER


def assert_exactly_once_in_order(events: list[dict], keys: list[str]) -> None:
    assert [event["key"] for event in events] == keys
    ids = [int(event["id"]) for event in events]
    assert ids == sorted(set(ids))


def test_memory_calls_round_trip(server: Server) -> None:
    client = MemoryClient(server.url)
    record = client.set("user.1", {"name": "Ada"})
    assert record["key"] == "user.1" and record["scope"] == "global"
    assert record["data"] == {"name": "Ada"}
    assert client.get("user.1") == {"name": "Ada"}
    assert client.set("empty", None)["data"] is None
    assert client.get("empty", default="fallback") is None
    assert client.get("absent") is None
    assert client.get("absent", default=7) == 7
    assert sorted(r["key"] for r in client.list("global")) == ["empty", "user.1"]

    client.delete("user.1")
    assert client.get("user.1", default="gone") == "gone"
    client.delete("user.1")  # nothing there: no error, and nothing logged
    assert [e["action"] for e in client.history("user.1")] == ["set", "delete"]
    with pytest.raises(NotFound) as missing:
        client.record("user.1")
    assert missing.value.status == 404 and missing.value.error == "not_found"
    assert "user.1" in missing.value.message


def test_conditional_writes_raise_a_typed_conflict_with_the_current_record(server: Server) -> None:
    client = MemoryClient(server.url)
    first = client.set("lock", "mine", if_version="0")
    with pytest.raises(VersionConflict) as taken:
        client.set("lock", "theirs", if_version=0)
    assert taken.value.status == 409 and taken.value.current == first
    second = client.set("lock", "still mine", if_version=first["version"])
    with pytest.raises(VersionConflict):
        client.delete("lock", if_version=first["version"])
    client.delete("lock", if_version=second["version"])
    assert client.get("lock") is None
    lease = client.set("lease", 1, ttl_seconds=3600)
    assert lease["expires_at"] is not None
    assert client.set("lease", 2)["expires_at"] is None


def without_expiry(record: dict) -> dict:
    return {name: value for name, value in record.items() if name != "expires_at"}


def test_watch_records_hold_only_what_the_stream_tells(server: Server) -> None:
    """A ``set`` event does not say whether the record has a time to live, so no record of a
    watch claims to know it: before the change (from the snapshot) or after it."""
    client = MemoryClient(server.url)
    leased = client.set("lease", 1, ttl_seconds=3600)
    with client.watch("lease", scope="global") as watch:
        states = Consumer(watch, 2)
        assert states.take(1) == [{"lease": 1}]
        assert watch.records == {"lease": without_expiry(leased)}
        renewed = client.set("lease", 2)  # no time to live any more: the event cannot say so
        states.take(1)
        assert watch.state == {"lease": 2}
        assert watch.records == {"lease": without_expiry(renewed)}
        assert renewed["created_at"] == leased["created_at"]


def test_list_fetches_every_page_and_keeps_to_the_prefix(server: Server) -> None:
    client = MemoryClient(server.url)
    with requests.Session() as session:
        for n in range(25):
            put(server.url, f"doc.{n:02d}", n, session=session)
        put(server.url, "other", 0, session=session)
    assert [r["key"] for r in client.list("global", prefix="doc.")] == [
        f"doc.{n:02d}" for n in range(25)]
    pages = list(client.pages("global", prefix="doc.", limit=10))
    assert [len(page) for page in pages] == [10, 10, 5]
    assert len(client.list("global")) == 26


def test_scope_headers_and_explicit_scopes(server: Server) -> None:
    agent = MemoryClient(server.url, workflow_id="wf-1", actor_id="agent-7", agent_id="node-3")
    record = agent.set("plan", "draft")
    assert (record["scope"], record["scope_id"]) == ("workflow", "wf-1")
    agent.set("note", 1, scope="actor", scope_id="agent-7")
    assert MemoryClient(server.url).get("plan") is None
    assert MemoryClient(server.url).get("plan", scope="workflow", scope_id="wf-1") == "draft"
    assert agent.record("note")["scope"] == "actor"
    event = agent.history(patterns="plan")[-1]
    assert event["metadata"] == {"agent_id": "node-3", "actor_id": "agent-7",
                                 "workflow_id": "wf-1"}


def test_history_filters_and_paging(server: Server) -> None:
    client = MemoryClient(server.url)
    for n in range(5):
        client.set(f"a.{n}", n)
        client.set(f"b.{n}", n)
    client.set("c.0", 0, scope="session", scope_id="s1")
    assert [e["key"] for e in client.history(["a.*", "c.*"], limit=3)] == ["a.3", "a.4", "c.0"]
    assert [e["key"] for e in client.history("b.*, c.*", scope="session")] == ["c.0"]
    first = client.history("a.*", limit=2, after_id=0)
    assert [e["key"] for e in first] == ["a.0", "a.1"]
    after = client.history("a.*", limit=2, after_id=first[-1]["id"])
    assert [e["key"] for e in after] == ["a.2", "a.3"]
    assert len(client.history(since=datetime.now(timezone.utc) - timedelta(minutes=5))) == 11
    assert client.history(since=datetime.now() + timedelta(minutes=5)) == []


def test_errors_are_typed_and_carry_the_servers_words(server_factory) -> None:
    server = server_factory(env={"MEMORY_API_KEY": "sesame"})
    with pytest.raises(Unauthorized) as denied:
        MemoryClient(server.url).set("k", 1)
    assert (denied.value.status, denied.value.error) == (401, "unauthorized")
    client = MemoryClient(server.url, api_key="sesame")
    assert client.set("k", 1)["data"] == 1
    with pytest.raises(BadRequest) as bad_pattern:
        client.subscribe("[invalid")
    assert bad_pattern.value.error == "invalid_pattern"
    assert "[invalid" in bad_pattern.value.message
    with pytest.raises(BadRequest) as bad_limit:
        client.history(limit=0)
    assert bad_limit.value.error == "invalid_limit"
    with pytest.raises(ApiError) as bad_scope:
        client.list("galaxy")
    assert (bad_scope.value.status, bad_scope.value.error) == (400, "invalid_scope")

    with pytest.raises(ConnectionFailed, match="refused"):
        MemoryClient(f"http://127.0.0.1:{free_port()}").get("k")
    with pytest.raises(ValueError):
        MemoryClient("localhost:8080")


def test_an_error_retrying_cannot_fix_ends_the_iteration(server_factory) -> None:
    server = server_factory(env={"MEMORY_API_KEY": "old", "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    consumer = Consumer(MemoryClient(server.url, api_key="old").subscribe(backoff=FAST), 1)
    server.stop()
    server.env["MEMORY_API_KEY"] = "new"
    server.start()
    [error] = consumer.take(1)
    assert isinstance(error, Unauthorized) and error.error == "unauthorized"


def test_stream_opens_on_subscribe_and_yields_later_changes(server: Server) -> None:
    client = MemoryClient(server.url)
    client.set("user.before", 0)
    stream = client.subscribe(["user.*", "team.*"], scope="global")
    client.set("other.1", 1)
    client.set("user.1", {"n": 1})
    client.set("team.1", [1, 2])
    client.delete("user.1")
    events = Consumer(stream, 3).take(3)
    assert [(e["key"], e["action"]) for e in events] == [
        ("user.1", "set"), ("team.1", "set"), ("user.1", "delete")]
    assert events[0]["type"] == "memory_change" and events[0]["data"] == {"n": 1}
    assert events[2]["previous_data"] == {"n": 1}


def test_last_event_id_replays_what_came_after(server: Server) -> None:
    client = MemoryClient(server.url)
    client.set("k.0", 0)
    mark = client.history(limit=1)[-1]["id"]
    client.set("k.1", 1)
    client.set("k.2", 2)
    events = Consumer(client.subscribe("k.*", last_event_id=mark), 2).take(2)
    assert_exactly_once_in_order(events, ["k.1", "k.2"])


def open_streams(server: Server) -> float:
    return server.metric("memory_events_subscribers", transport="sse")


def test_leaving_the_loop_closes_the_stream(server: Server) -> None:
    client = MemoryClient(server.url)
    client.set("k", 1)
    for event in client.subscribe("k", last_event_id=0):
        assert event["key"] == "k"
        assert open_streams(server) == 1
        break
    wait_until(lambda: open_streams(server) == 0, message="the server to see the stream closed")


def test_closing_a_subscription_never_iterated_closes_its_stream(server: Server) -> None:
    stream = MemoryClient(server.url).subscribe()
    wait_until(lambda: open_streams(server) == 1, message="the stream to be counted")
    stream.close()
    wait_until(lambda: open_streams(server) == 0, message="the server to see the stream closed")


def test_streams_that_end_by_lifetime_resume_without_loss(server_factory) -> None:
    server = server_factory(env={"MEMORY_STREAM_MAX_SECONDS": "0.5",
                                 "MEMORY_HEARTBEAT_SECONDS": "0.2"})
    client = MemoryClient(server.url)
    statuses: list[StreamStatus] = []
    consumer = Consumer(client.subscribe("k.*", backoff=FAST, on_status=statuses.append), 12)
    keys: list[str] = []
    for n in range(12):
        wait_until(lambda: sum(s.state == "disconnected" for s in statuses) > n // 4,
                   message="another stream lifetime to end")
        keys.append(f"k.{n}")
        client.set(keys[-1], n)
    assert_exactly_once_in_order(consumer.take(12), keys)
    ends = [s for s in statuses if s.state == "disconnected"]
    assert ends and all(s.reason == "lifetime" and s.retry_in == 0 for s in ends)


def test_subscribe_resumes_across_a_server_restart(server_factory) -> None:
    server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    client = MemoryClient(server.url)
    statuses: list[StreamStatus] = []
    refused = threading.Event()

    def on_status(status: StreamStatus) -> None:
        statuses.append(status)
        if "refused" in status.reason:
            refused.set()

    consumer = Consumer(client.subscribe("k.*", backoff=FAST, on_status=on_status), 9)
    for n in range(3):
        client.set(f"k.{n}", n)
    before = consumer.take(3)

    server.stop()
    assert refused.wait(30), f"no refused reconnect reported: {statuses}"
    other = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    for n in range(3, 6):
        MemoryClient(other.url).set(f"k.{n}", n)
    other.stop()
    server.start()
    for n in range(6, 9):
        client.set(f"k.{n}", n)

    assert_exactly_once_in_order(before + consumer.take(6), [f"k.{n}" for n in range(9)])
    assert statuses[0].state == "disconnected" and statuses[0].reason == "shutdown"
    resumed = [s for s in statuses if s.state == "reconnected"]
    assert resumed and all(s.last_event_id == before[-1]["id"] for s in resumed)


def test_a_drop_before_any_event_resumes_from_the_moment_of_subscribing(server_factory) -> None:
    server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    client = MemoryClient(server.url)
    client.set("k.old", 0)
    statuses: list[StreamStatus] = []
    consumer = Consumer(client.subscribe("k.*", backoff=FAST, on_status=statuses.append), 3)
    server.kill()
    wait_until(lambda: any("refused" in s.reason for s in statuses),
               message="a refused reconnect to be reported")
    other = server_factory()
    for n in range(2):
        MemoryClient(other.url).set(f"k.{n}", n)
    other.stop()
    server.start()
    client.set("k.2", 2)
    assert_exactly_once_in_order(consumer.take(3), ["k.0", "k.1", "k.2"])
    assert statuses[0].reason.startswith("connection lost")


def test_a_silent_connection_is_given_up_and_reopened(server_factory) -> None:
    server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    client = MemoryClient(server.url)
    statuses: list[StreamStatus] = []
    consumer = Consumer(client.subscribe("k.*", idle_timeout=2, backoff=FAST,
                                         on_status=statuses.append), 1)
    os.killpg(server.process.pid, signal.SIGSTOP)  # frozen: the socket stays open, silent
    try:
        wait_until(lambda: any("timed out" in s.reason for s in statuses), timeout=30,
                   message="the silence to be noticed")
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
    client.set("k.1", 1)
    assert consumer.take(1)[0]["key"] == "k.1", statuses


def test_a_slow_consumer_that_overflows_still_gets_every_event_once(server_factory) -> None:
    server = server_factory(env={"MEMORY_SUBSCRIBER_QUEUE": "5",
                                 "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    client = MemoryClient(server.url)
    client.session.mount("http://", SmallWindow())
    statuses: list[StreamStatus] = []
    stream = client.subscribe("big.*", backoff=FAST, on_status=statuses.append)
    value = "x" * 200_000
    # Nobody reads yet. Past what the kernel can hold in flight, the server's writes block and
    # its queue for this subscriber overflows.
    keys = [f"big.{n}" for n in range(2 * in_flight_limit() // len(value) + 10)]
    for key in keys:
        client.set(key, value)
    events = Consumer(stream, len(keys)).take(len(keys), timeout=120)
    assert_exactly_once_in_order(events, keys)
    assert all(event["data"] == value for event in events)
    assert any(s.state == "disconnected" and s.reason == "overflow" for s in statuses)


def test_trimmed_history_is_reported_as_a_reset(server_factory) -> None:
    # Events are kept for five seconds: long enough to reach every subscriber below.
    server = server_factory(env={"MEMORY_RETENTION_HOURS": str(5 / 3600)})
    client = MemoryClient(server.url)
    client.set("k.0", 0)
    cursor = client.history(limit=1)[-1]["id"]
    client.set("k.1", 1)
    wait_until(lambda: client.history() == [], timeout=60, message="the log to be trimmed")
    resumed = Consumer(client.subscribe("k.*", last_event_id=cursor), 2)
    fresh = Consumer(client.subscribe("k.*"), 1)
    client.set("k.2", 2)
    reset, live = resumed.take(2)
    assert reset["type"] == "reset" and reset["reason"] == "history_trimmed"
    assert int(reset["oldest_id"]) > int(cursor)
    assert live["key"] == "k.2"
    # A subscriber that had seen nothing missed nothing: no reset for it.
    assert [event["key"] for event in fresh.take(1)] == ["k.2"]


def test_sse_parser_handles_any_line_ending_and_any_split() -> None:
    raw = (b": connected\r\nretry: 1000\r\n\r\nid: 1\ndata: {\"a\":\ndata: 1}\n\n"
           b"event: overflow\rdata: {\"last_id\": \"1\"}\r\r: keepalive\n\n")
    expected = [SseFrame(comments=("connected",), retry=1000),
                SseFrame("message", '{"a":\n1}', "1"),
                SseFrame("overflow", '{"last_id": "1"}', None),
                SseFrame(comments=("keepalive",))]
    for split in range(len(raw) + 1):
        parser = SseParser()
        assert parser.feed(raw[:split]) + parser.feed(raw[split:]) == expected, split
