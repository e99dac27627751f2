"""Health, readiness and Prometheus metrics, including their sums over two worker processes.

Which worker serves a connection is the kernel's choice, so the two-worker tests look it up: the
worker holding the server end of a loopback connection is the one whose descriptors include the
socket inode ``/proc/net/tcp`` lists for it (Linux).
"""
from __future__ import annotations

import json
import os
from http.client import HTTPConnection
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Server, wait_until
from .sse import SSEClient
from .test_memory_api import MEMORY, history, stored

METRIC_TYPES = {
    "memory_events_subscribers": "gauge",
    "memory_events_published": "counter",
    "memory_events_delivered": "counter",
    "memory_events_disconnects": "counter",
    "memory_events_delivery_seconds": "histogram",
}
MAX_CONNECTIONS = 200


def test_healthz_and_readyz_answer_ok(server):
    health = requests.get(server.url + "/healthz", timeout=10)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200


def test_metrics_are_prometheus_text_that_follows_a_change(server):
    response = requests.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family.type
                for family in text_string_to_metric_families(response.text)}
    assert {name: families.get(name) for name in METRIC_TYPES} == METRIC_TYPES
    assert 'memory_events_subscribers{transport="sse"} 0.0' in response.text.splitlines()

    with SSEClient(server.url + f"{MEMORY}/events/sse") as stream:
        assert stream.next().comments == ("connected",)
        assert server.metric("memory_events_subscribers", transport="sse") == 1
        stored(server, "k", 1)
        assert stream.events(1)[0]["key"] == "k"
        wait_until(lambda: server.metric("memory_events_delivered_total", transport="sse") == 1,
                   message="the delivery to be counted")
    assert server.metric("memory_events_published_total") == 1
    assert server.metric("memory_events_delivery_seconds_count") == 1
    assert server.metric("memory_events_delivery_seconds_bucket", le="+Inf") == 1


def worker_pids(server: Server) -> list[int]:
    """gunicorn's worker processes: the children of its master."""
    assert server.process is not None
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")

    def all_started() -> list[int] | None:
        pids = [int(child) for child in children.read_text().split()]
        return pids if len(pids) == server.workers else None

    return wait_until(all_started, message="every worker to start")


def holder(server: Server, pids: list[int], connection: HTTPConnection) -> int | None:
    """The worker that accepted ``connection``; ``None`` while no worker has yet."""
    local = f"0100007F:{server.port:04X}"
    remote = f"0100007F:{connection.sock.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == (local, remote):
            target = f"socket:[{fields[9]}]"
            break
    else:
        return None
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(descriptor) == target:
                    return pid
            except OSError:  # closed since it was listed
                continue
    return None


def connections_on_every_worker(server: Server, at_least: int) -> list[HTTPConnection]:
    """Fresh connections, kept open, until each worker has accepted ``at_least`` of them."""
    pids = worker_pids(server)
    held: dict[int, list[HTTPConnection]] = {pid: [] for pid in pids}
    while min(map(len, held.values())) < at_least:
        assert sum(map(len, held.values())) < MAX_CONNECTIONS, "one worker accepts everything"
        connection = HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.connect()
        held[wait_until(lambda: holder(server, pids, connection),
                        message="a worker to accept the connection")].append(connection)
    return [connection for connections in held.values() for connection in connections]


def test_published_counter_sums_the_writes_of_both_workers(server_factory):
    server = server_factory(workers=2)
    connections = connections_on_every_worker(server, at_least=3)
    for n, connection in enumerate(connections):
        for op, body, status in (("set", {"key": f"k{n}", "data": n}, 200),
                                 ("delete", {"key": "missing"}, 404)):
            connection.request("POST", f"{MEMORY}/{op}", body=json.dumps(body),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == status
        connection.close()
    assert server.metric("memory_events_published_total") == len(connections)
    assert len(history(server, limit=1000)) == len(connections)


def test_subscriber_gauge_counts_the_streams_of_both_workers(server_factory):
    server = server_factory(workers=2, env={"MEMORY_HEARTBEAT_SECONDS": "0.2"})
    connections = connections_on_every_worker(server, at_least=2)
    for connection in connections:
        connection.request("GET", f"{MEMORY}/events/sse")
        assert connection.getresponse().status == 200
    assert server.metric("memory_events_subscribers", transport="sse") == len(connections)
    for connection in connections:
        connection.close()
    wait_until(lambda: server.metric("memory_events_subscribers", transport="sse") == 0,
               message="the subscriber gauge to drop to zero")
