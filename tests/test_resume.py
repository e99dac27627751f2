"""Resume: a client that reconnects with its last id gets every matching event once, in order."""
from __future__ import annotations

import threading

import requests

from .api import history_ids, put
from .conftest import wait_until
from .sse import SSEClient

SSE = "/api/v1/memory/events/sse"


def _storm(base_url: str, writers: int, writes: int) -> list[threading.Thread]:
    """Writers that alternate matching and non-matching keys, each on its own connection."""
    def write(n: int) -> None:
        with requests.Session() as session:
            for i in range(writes):
                put(base_url, f"{'match' if i % 2 else 'other'}.{n}.{i}", {"n": n, "i": i},
                    session=session)
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
    server = server_factory(env={"MEMORY_RETENTION_HOURS": "0.0002",
                                 "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    for i in range(3):
        put(server.url, f"old.{i}", i)
    with SSEClient(server.url + SSE) as watcher:  # starts the follower, which trims
        watcher.next()
        wait_until(lambda: history_ids(server.url) == [], timeout=10, message="retention")
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


def test_bad_last_event_id_is_refused(server):
    response = requests.get(server.url + SSE, headers={"Last-Event-ID": "abc"}, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_last_event_id"
