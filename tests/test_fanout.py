"""Fan-out across processes: every subscriber, in any worker or server, sees the same log."""
from __future__ import annotations

import itertools
import statistics
import time

from .api import SSE, SSEClient, history_ids, put
from .conftest import every_store


def test_two_servers_on_one_database_see_each_others_writes_in_log_order(server_factory):
    first = server_factory()
    second = server_factory()
    with SSEClient(first.url + SSE) as on_first, SSEClient(second.url + SSE) as on_second:
        on_first.next(), on_second.next()
        for i, server in zip(range(40), itertools.cycle([first, second])):
            put(server.url, f"k.{i}", i)
        expected = history_ids(first.url)
        assert [int(e["id"]) for e in on_first.events(40)] == expected
        assert [int(e["id"]) for e in on_second.events(40)] == expected


def test_every_subscriber_of_a_two_worker_server_gets_every_change(server_factory):
    server = server_factory(workers=2)
    streams = [SSEClient(server.url + SSE) for _ in range(8)]
    try:
        for stream in streams:
            stream.next()
        for i in range(30):
            put(server.url, f"k.{i}", i)  # a new connection each time: both workers take writes
        expected = history_ids(server.url)
        for stream in streams:
            assert [int(e["id"]) for e in stream.events(30)] == expected
        assert server.metric("memory_events_subscribers", transport="sse") == 8
    finally:
        for stream in streams:
            stream.close()


@every_store
def test_a_change_reaches_another_process_at_once_not_at_its_next_look(server_factory):
    """Without its wake-up (the doorbell's datagram, or ``NOTIFY``) the other process finds a
    change only when it next looks, up to half a second later. It is woken only while it has
    subscribers, so its first stream is what makes it heard."""
    quiet = {"MEMORY_POLL_SECONDS": "3600"}
    writing, other = server_factory(env=quiet), server_factory(env=quiet)
    put(writing.url, "nobody.listens", 0)
    with SSEClient(other.url + SSE) as stream:
        stream.next()
        delays = []
        for n in range(10):
            sent = time.time()
            event = put(writing.url, f"k.{n}", n)
            stream.events(1)
            delays.append(stream.arrived[event["version"]] - sent)
    assert statistics.median(delays) < 0.1, delays
