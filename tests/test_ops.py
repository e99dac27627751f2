"""Health, readiness, the description and Prometheus metrics; the metrics' sums over two worker
processes on a real server.

Which worker serves a connection is the kernel's choice, so the two-worker tests look it up: the
worker holding the server end of a loopback connection is the one whose descriptors include the
socket inode ``/proc/net/tcp`` lists for it (Linux).
"""
from __future__ import annotations

import json
import os
from http.client import HTTPConnection
from pathlib import Path
from typing import Callable, Iterator

import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from app.store import StoreUnavailable
from app.web import openapi
from app.web.context import EXTENSION

from .conftest import Server, wait_until

MEMORY = "/api/v1/memory"
METRIC_TYPES = {
    "memory_events_subscribers": "gauge",
    "memory_events_published": "counter",
    "memory_events_delivered": "counter",
    "memory_events_disconnects": "counter",
    "memory_events_delivery_seconds": "histogram",
}
MAX_CONNECTIONS = 200


def test_healthz_and_readyz_answer_ok(client: FlaskClient) -> None:
    health = client.get("/healthz")
    assert (health.status_code, health.json) == (200, {"status": "ok"})
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json) == (200, {"status": "ok"})


def test_readyz_answers_503_while_the_store_is_down_and_healthz_stays_ok(
        app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    client = app.test_client()

    def unavailable() -> None:
        raise StoreUnavailable("the store is down")

    app.extensions[EXTENSION].store.ping = unavailable
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["status"] == "unavailable"
    assert (ready.json["error"], ready.json["code"]) == ("store_unavailable", 503)
    assert ready.json["details"] == ready.json["message"]
    assert client.get("/healthz").status_code == 200


def test_operations_routes_stay_open_with_a_key_and_refuse_foreign_origins(
        app_factory: Callable[..., Flask]) -> None:
    client = app_factory(MEMORY_API_KEY="k").test_client()
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
        refused = client.get(path, headers={"Origin": "http://elsewhere.example"})
        assert (refused.status_code, refused.json["error"]) == (403, "origin_not_allowed")
        assert client.get(path, headers={"Origin": "http://localhost"}).status_code == 200


def test_openapi_json_is_the_description_of_the_running_settings(
        app_factory: Callable[..., Flask]) -> None:
    config = {"MEMORY_DB_URL": "sqlite:///:memory:", "MEMORY_MAX_KEY_LENGTH": "40",
              "MEMORY_API_KEY": "k"}
    response = app_factory(**config).test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.json["openapi"] == "3.1.0"
    assert response.json == json.loads(json.dumps(openapi.build(Settings.load(config))))


def _frames(response) -> Iterator[bytes]:  # noqa: ANN001 - a streamed test response
    return iter(response.response)


def test_metrics_are_prometheus_text_that_follows_a_change(
        app_factory: Callable[..., Flask]) -> None:
    client = app_factory(MEMORY_HEARTBEAT_SECONDS="0.1").test_client()

    def metric(name: str, **labels: str) -> float:
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                         if labels else "")
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family.type
                for family in text_string_to_metric_families(response.text)}
    assert {name: families.get(name) for name in METRIC_TYPES} == METRIC_TYPES
    assert 'memory_events_subscribers{transport="sse"} 0.0' in response.text.splitlines()

    stream = client.get(f"{MEMORY}/events/sse", buffered=False)
    try:
        frames = _frames(stream)
        assert next(frames).startswith(b": connected")
        assert metric("memory_events_subscribers", transport="sse") == 1
        assert client.post(f"{MEMORY}/set", json={"key": "k", "data": 1}).status_code == 200
        assert metric("memory_events_published_total") == 1
        frame = next(frames)
        while frame == b": keepalive\n\n":
            frame = next(frames)
        assert json.loads(frame.split(b"data: ", 1)[1])["key"] == "k"
        next(frames)  # the stream goes on past its write: the delivery is counted
        assert metric("memory_events_delivered_total", transport="sse") == 1
    finally:
        stream.close()
    assert metric("memory_events_subscribers", transport="sse") == 0
    assert metric("memory_events_disconnects_total", reason="client") == 1
    assert metric("memory_events_delivery_seconds_count") == 1
    assert metric("memory_events_delivery_seconds_bucket", le="+Inf") == 1
    # A delete of nothing publishes nothing.
    assert client.post(f"{MEMORY}/delete", json={"key": "missing"}).status_code == 204
    assert metric("memory_events_published_total") == 1


# -- sums over two worker processes, on a real server -----------------------------------------

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


def history_count(server: Server) -> int:
    response = requests.get(server.url + f"{MEMORY}/events/history", params={"limit": 1000},
                            timeout=10)
    assert response.status_code == 200, response.text
    return len(response.json())


def test_published_counter_sums_the_writes_of_both_workers(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory(workers=2)
    connections = connections_on_every_worker(server, at_least=3)
    for n, connection in enumerate(connections):
        for op, body, status in (("set", {"key": f"k{n}", "data": n}, 200),
                                 ("delete", {"key": "missing"}, 204)):  # publishes nothing
            connection.request("POST", f"{MEMORY}/{op}", body=json.dumps(body),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == status
        connection.close()
    assert server.metric("memory_events_published_total") == len(connections)
    assert history_count(server) == len(connections)


def test_stream_metrics_sum_the_streams_of_both_workers(
        server_factory: Callable[..., Server]) -> None:
    """The subscriber gauge, the delivery counter and the latency histogram, each summed over
    the streams both workers hold."""
    server = server_factory(workers=2, env={"MEMORY_HEARTBEAT_SECONDS": "0.2"})
    connections = connections_on_every_worker(server, at_least=2)
    responses = []
    for connection in connections:
        connection.request("GET", f"{MEMORY}/events/sse")
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline() == b": connected\n"
        responses.append(response)
    assert server.metric("memory_events_subscribers", transport="sse") == len(connections)
    assert requests.post(server.url + f"{MEMORY}/set", json={"key": "k", "data": 1},
                         timeout=10).status_code == 200
    for response in responses:  # every stream gets the change, whichever worker wrote it
        line = response.readline()
        while not line.startswith(b"data: "):
            line = response.readline()
        assert json.loads(line[len(b"data: "):])["key"] == "k"
    wait_until(lambda: server.metric("memory_events_delivered_total", transport="sse")
               == len(connections), message="every delivery to be counted")
    assert server.metric("memory_events_delivery_seconds_count") == len(connections)
    assert server.metric("memory_events_delivery_seconds_bucket", le="+Inf") == len(connections)
    for connection in connections:
        connection.close()
    wait_until(lambda: server.metric("memory_events_subscribers", transport="sse") == 0,
               message="the subscriber gauge to drop to zero")
    wait_until(lambda: server.metric("memory_events_disconnects_total", reason="client")
               == len(connections), message="every disconnect to be counted")
