"""Health, readiness, the description and Prometheus metrics; the metrics' sums over two worker
processes on a real server.

Which worker serves a connection is the kernel's choice, so the two-worker tests look it up
(``Server.worker_of``) and open connections until every worker holds some.
"""
from __future__ import annotations

import functools
import json
from http.client import HTTPConnection
from typing import Callable

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from app.store import StoreUnavailable
from app.web import openapi
from app.web.context import EXTENSION

from .api import MEMORY, SSE, history_ids, parse, put
from .conftest import Server, sample, wait_until

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
    assert (ready.json["error"], ready.json["code"]) == ("store_unavailable", 503)
    assert ready.json["message"] and ready.json["details"] == ready.json["message"]
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


def test_metrics_are_prometheus_text_that_follows_a_change(
        app_factory: Callable[..., Flask]) -> None:
    client = app_factory(MEMORY_HEARTBEAT_SECONDS="0.1").test_client()

    def metric(name: str, **labels: str) -> float:
        return sample(client.get("/metrics").text, name, **labels)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family.type
                for family in text_string_to_metric_families(response.text)}
    assert {name: families.get(name) for name in METRIC_TYPES} == METRIC_TYPES
    assert 'memory_events_subscribers{transport="sse"} 0.0' in response.text.splitlines()

    stream = client.get(SSE, buffered=False)
    try:
        frames = parse(stream.response)
        assert next(frames).comments == ("connected",)
        assert metric("memory_events_subscribers", transport="sse") == 1
        assert client.post(f"{MEMORY}/set", json={"key": "k", "data": 1}).status_code == 200
        assert metric("memory_events_published_total") == 1
        assert next(frame for frame in frames if frame.is_event).json["key"] == "k"
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

def connections_on_every_worker(server: Server, at_least: int) -> list[HTTPConnection]:
    """Fresh connections, kept open, until each worker has accepted ``at_least`` of them."""
    pids = server.worker_pids()
    held: dict[int, list[HTTPConnection]] = {pid: [] for pid in pids}
    while min(map(len, held.values())) < at_least:
        assert sum(map(len, held.values())) < MAX_CONNECTIONS, "one worker accepts everything"
        connection = HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.connect()
        port = connection.sock.getsockname()[1]
        held[wait_until(lambda: server.worker_of(port, pids),
                        message="a worker to accept the connection")].append(connection)
    return [connection for connections in held.values() for connection in connections]


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
    assert len(history_ids(server.url)) == len(connections)


def test_stream_metrics_sum_the_streams_of_both_workers(
        server_factory: Callable[..., Server]) -> None:
    """The subscriber gauge, the delivery counter and the latency histogram, each summed over
    the streams both workers hold."""
    server = server_factory(workers=2, env={"MEMORY_HEARTBEAT_SECONDS": "0.2"})
    connections = connections_on_every_worker(server, at_least=2)
    streams = []
    for connection in connections:
        connection.request("GET", SSE)
        response = connection.getresponse()
        assert response.status == 200
        stream = parse(iter(functools.partial(response.read1, 65536), b""))
        assert next(stream).comments == ("connected",)
        streams.append(stream)
    assert server.metric("memory_events_subscribers", transport="sse") == len(connections)
    put(server.url, "k", 1)
    for stream in streams:  # every stream gets the change, whichever worker wrote it
        assert next(frame for frame in stream if frame.is_event).json["key"] == "k"
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
