"""Fan-out across processes: every subscriber, in any worker or server, sees the same log."""
from __future__ import annotations

import itertools

from .api import SSE, SSEClient, history_ids, put


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
