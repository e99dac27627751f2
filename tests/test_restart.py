"""Restarts and stream lifetime: a client that resumes from its last id misses nothing."""
from __future__ import annotations

import signal

from .api import SSE, SSEClient, history_ids, put
from .conftest import every_store, wait_until


def _drain_ids(stream: SSEClient) -> list[int]:
    """Event ids until the stream ends, whichever way it ends."""
    ids = []
    while (frame := stream.next_event(timeout=30)) is not None:
        if frame.event == "message":
            ids.append(int(frame.id))
    return ids


@every_store
def test_crash_then_restart_resumes_from_the_last_id(server_factory):
    server = server_factory()
    writer = server_factory()  # a second server on the same database keeps taking writes
    stream = SSEClient(server.url + SSE)
    stream.next()
    for i in range(5):
        put(writer.url, f"before.{i}", i)
    received = [int(e["id"]) for e in stream.events(5)]
    server.kill()
    assert stream.next_event(timeout=10) is None  # the connection died with the server
    for i in range(5):
        put(writer.url, f"down.{i}", i)
    server.start()
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": str(received[-1])}) as resumed:
        put(writer.url, "after", 1)
        received += [int(e["id"]) for e in resumed.events(6)]
    assert received == history_ids(writer.url)


def test_sighup_recycles_workers_and_clients_resume(server_factory):
    server = server_factory()
    [old] = server.children()
    with SSEClient(server.url + SSE) as stream:
        stream.next()
        put(server.url, "one", 1)
        received = [int(e["id"]) for e in stream.events(1)]
        server.send(signal.SIGHUP)
        received += _drain_ids(stream)  # the old worker ends its streams on its way out
    # Until it exits, the old worker may still accept a stream, which it would end at once.
    wait_until(lambda: old not in server.children(), message="the old worker to exit")
    put(server.url, "two", 2)
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": str(received[-1])}) as resumed:
        received += [int(e["id"]) for e in resumed.events(1)]
    assert received == history_ids(server.url)


def test_stream_ends_by_itself_after_its_lifetime_and_resumes(server_factory):
    server = server_factory(env={"MEMORY_STREAM_MAX_SECONDS": "1",
                                 "MEMORY_HEARTBEAT_SECONDS": "0.3"})
    with SSEClient(server.url + SSE) as stream:
        stream.next()
        put(server.url, "k", 1)
        assert stream.events(1)[0]["id"] == "1"
        end = stream.next_event(timeout=5)
        assert end.event == "lifetime" and end.json == {"last_id": "1"}
        assert stream.next(timeout=5) is None
        put(server.url, "after", 2)
    with SSEClient(server.url + SSE, headers={"Last-Event-ID": end.json["last_id"]}) as resumed:
        assert [event["key"] for event in resumed.events(1)] == ["after"]
    wait_until(lambda: server.metric("memory_events_disconnects_total", reason="lifetime") == 1,
               message="the lifetime disconnect to be counted")
