"""Resume and snapshot: a client that reconnects with its last id gets every matching event
once, in order; one that asks for a snapshot gets the current records, then every change after
them; either way it ends up with the exact state."""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Callable, Iterator

import pytest

from app.client import MemoryClient
from app.core.records import Author
from app.store import open_store

from .api import SSE, SSEClient, history_ids, put
from .conftest import Server, every_store, wait_until
from .test_ws import QUICK, WSClient

#: SSE, and the WebSocket of a client that asked for control messages
TRANSPORTS = pytest.mark.parametrize("transport", ["sse", "ws"])
SHORT_RETENTION = {"MEMORY_RETENTION_HOURS": "0.0002", **QUICK}


def _storm(base_url: str, writers: int, writes: int) -> list[threading.Thread]:
    """Writers that alternate matching and non-matching keys, each on its own connection."""
    def write(n: int) -> None:
        with MemoryClient(base_url) as memory:
            for i in range(writes):
                memory.set(f"{'match' if i % 2 else 'other'}.{n}.{i}", {"n": n, "i": i})
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    return threads


def _ids(stream: SSEClient, until: int, timeout: float = 30) -> list[int]:
    """Event ids from ``stream`` up to and including ``until``."""
    ids: list[int] = []
    while not ids or ids[-1] < until:
        ids.append(int(stream.events(1, timeout=timeout)[0]["id"]))
    return ids


def trim_log(server: Server) -> None:
    """Wait for the retention (a short one) to empty the log."""
    wait_until(lambda: history_ids(server.url) == [], timeout=10, message="retention")


@every_store
def test_reconnect_during_writer_storm_loses_and_repeats_nothing(server):
    received: list[int] = []
    with SSEClient(server.url + SSE, params={"patterns": "match.*"}) as first:
        first.next()
        threads = _storm(server.url, writers=3, writes=200)
        received += [int(event["id"]) for event in first.events(40)]
    # The query id is stale on purpose: the Last-Event-ID header wins.
    with SSEClient(server.url + SSE, params={"patterns": "match.*", "last_event_id": "1"},
                   headers={"Last-Event-ID": str(received[-1])}) as second:
        for thread in threads:
            thread.join()
        expected = history_ids(server.url, patterns="match.*")
        received += _ids(second, until=expected[-1])
    assert len(expected) == 300
    assert received == expected


def test_resume_by_query_replays_then_continues_live(server):
    for i in range(5):
        put(server.url, f"k.{i}", i)
    with SSEClient(server.url + SSE, params={"last_event_id": "2"}) as stream:
        assert [e["data"] for e in stream.events(3)] == [2, 3, 4]
        put(server.url, "k.live", "live")
        assert stream.events(1)[0]["data"] == "live"


def test_resume_replays_only_what_passes_the_filter(server):
    put(server.url, "a.1", 1, scope="session", scope_id="s1")
    put(server.url, "a.2", 2, scope="session", scope_id="s2")
    put(server.url, "b.3", 3, scope="session", scope_id="s1")
    put(server.url, "a.4", 4, scope="session", scope_id="s1")
    with SSEClient(server.url + SSE, params={"last_event_id": "0", "scope": "session",
                                             "scope_id": "s1", "patterns": "a.*"}) as stream:
        assert [e["key"] for e in stream.events(2)] == ["a.1", "a.4"]


def test_trimmed_history_sends_reset_then_live(server_factory):
    server = server_factory(env=SHORT_RETENTION)
    for i in range(3):
        put(server.url, f"old.{i}", i)
    trim_log(server)
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": "1"}) as stream:
        reset = stream.next_event()
        assert reset.event == "reset"
        assert reset.json == {"reason": "history_trimmed", "oldest_id": "4"}
        put(server.url, "new", 1)
        assert stream.events(1)[0]["id"] == "4"


def test_unknown_future_id_sends_reset(server):
    put(server.url, "k", 1)
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": "999"}) as stream:
        reset = stream.next_event()
        assert reset.event == "reset" and reset.json["reason"] == "unknown_last_event_id"


def test_bad_last_event_id_is_refused(client):
    response = client.get(SSE, headers={"Last-Event-ID": "abc"}, buffered=False)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_last_event_id"


# -- snapshots -------------------------------------------------------------------------------

class SseItems:
    """An SSE stream's frames in the shape a protocol WebSocket client's messages have:
    ``("event", event)`` or ``("control", {"type": …, …})``."""

    def __init__(self, server: Server, params: dict, last_event_id: str | None) -> None:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        self.stream = SSEClient(server.url + SSE, params=params, headers=headers)

    def next(self) -> tuple[str, dict]:
        frame = self.stream.next_event()
        assert frame is not None, "the stream ended"
        if frame.event == "message":
            return "event", frame.json
        if frame.event == "snapshot":
            return "control", {"type": "snapshot", "record": frame.json}
        if frame.event == "snapshot_end":
            assert frame.json == {"last_id": frame.id}, "snapshot_end's id and last_id differ"
        return "control", {"type": frame.event, **frame.json}

    def __enter__(self) -> "SseItems":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def open_stream(server: Server, transport: str, params: dict,
                last_event_id: str | None = None) -> SseItems | WSClient:
    """A stream as an EventSource (the id in ``Last-Event-ID``) or a protocol WebSocket client
    (the id in the query) opens it."""
    if transport == "sse":
        return SseItems(server, params, last_event_id)
    resume = {"last_event_id": last_event_id} if last_event_id else {}
    return WSClient(server, {**params, **resume}, protocol=True)


def read_snapshot(stream: SseItems | WSClient) -> tuple[list[dict], int]:
    """The records of the snapshot a stream starts with, and the position they reflect."""
    records = []
    while (item := stream.next())[1]["type"] == "snapshot":
        records.append(item[1]["record"])
    assert item[0] == "control" and item[1]["type"] == "snapshot_end", \
        f"expected the snapshot to go on or end, got {item}"
    return records, int(item[1]["last_id"])


def listing(server: Server, scope: str, scope_id: str, prefix: str) -> list[dict]:
    with MemoryClient(server.url) as memory:
        return memory.list(scope, scope_id, prefix)


def seed(db_url: str, scope: str, scope_id: str, keys: list[str]) -> None:
    """Write records straight into the store before a server runs: thousands in a blink."""
    store = open_store(db_url)
    try:
        for key in keys:
            store.set(scope, scope_id, key, json.dumps("seeded"), Author())
    finally:
        store.close()


@contextlib.contextmanager
def busy_writer(server: Server, keys: list[str], **scope: str) -> Iterator[Callable[[], None]]:
    """Sets and deletes spread over ``keys`` in ``scope`` (and sets in another scope id) until
    the function it gives is called, or the block ends; the block starts once writes flow."""
    stopping, written = threading.Event(), []

    def write() -> None:
        with MemoryClient(server.url) as memory:
            while not stopping.is_set():
                n = len(written)
                key = keys[n * 7919 % len(keys)]
                if n % 10 == 9:
                    memory.delete(key, **scope)
                else:
                    memory.set(key, n, **(scope if n % 5 else {**scope, "scope_id": "elsewhere"}))
                written.append(key)

    def stop() -> None:
        stopping.set()
        writer.join()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 5, message="the writer to be busy")
        yield stop
    finally:
        stop()


@TRANSPORTS
def test_snapshot_sends_matching_records_then_only_the_changes_after_them(server_factory,
                                                                          db_url, transport):
    """Snapshots of several pages, taken while another server writes to the same database:
    each has the records as of a position N, the events that follow are exactly the matching
    ones after N, and together they give the exact state."""
    s1 = {"scope": "session", "scope_id": "s1"}
    keys = [f"s.{i:04}" for i in range(1200)]
    seed(db_url, "session", "s1", keys + ["t.other"])
    server, writer = server_factory(env=QUICK), server_factory(env=QUICK)
    for _ in range(3):
        with busy_writer(writer, keys, **s1) as stop_writing, \
                open_stream(server, transport,
                            {**s1, "patterns": "s.*", "snapshot": "1"}) as stream:
            records, position = read_snapshot(stream)
            stop_writing()
            after = [i for i in history_ids(server.url, patterns="s.*", **s1) if i > position]
            events = [stream.next() for _ in after]
        assert all(int(record["version"]) <= position for record in records)
        assert [(kind, int(event["id"])) for kind, event in events] == \
            [("event", i) for i in after]
        state = {record["key"]: record["data"] for record in records}
        for _, event in events:
            state.pop(event["key"], None)
            if event["action"] == "set":
                state[event["key"]] = event["data"]
        current = {record["key"]: record for record in listing(server, prefix="s.", **s1)}
        assert state == {key: record["data"] for key, record in current.items()}
        # a record no later event touched was sent exactly as a listing has it
        touched = {event["key"] for _, event in events}
        untouched = [record for record in records if record["key"] not in touched]
        assert untouched == [current[record["key"]] for record in untouched]


@TRANSPORTS
def test_snapshot_with_a_last_event_id_replays_instead(server, transport):
    versions = [put(server.url, f"k.{i}", i)["version"] for i in range(3)]
    with open_stream(server, transport, {"patterns": "k.*", "snapshot": "1"},
                     last_event_id=versions[0]) as stream:
        replayed = [stream.next() for _ in range(2)]
        assert [(kind, event.get("id")) for kind, event in replayed] == \
            [("event", version) for version in versions[1:]]
        put(server.url, "k.live", "live")
        kind, event = stream.next()
        assert (kind, event["key"]) == ("event", "k.live")


@TRANSPORTS
@pytest.mark.parametrize("why", ["history_trimmed", "unknown_last_event_id"])
def test_snapshot_replaces_the_reset_when_the_stream_cannot_resume(server_factory, transport,
                                                                   why):
    trimmed = why == "history_trimmed"
    server = server_factory(env=SHORT_RETENTION if trimmed else QUICK)
    records = [put(server.url, f"k.{i}", i) for i in range(3)]
    if trimmed:
        trim_log(server)
    last_event_id = "1" if trimmed else "999"
    with open_stream(server, transport, {"patterns": "k.*", "snapshot": "1"},
                     last_event_id=last_event_id) as stream:
        assert read_snapshot(stream) == (records, 3)
        put(server.url, "k.live", "live")
        kind, event = stream.next()
        assert (kind, event["id"], event["key"]) == ("event", "4", "k.live")
