"""Several hosts on one database: one global order, wake-ups across hosts, and outages survived.

Each "host" is a separate gunicorn with two workers, as behind a load balancer. The tests that
need a PostgreSQL server to stop or to drop connections run on PostgreSQL only; the rest run on
every store.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator

import psycopg
import pytest
import requests

from .api import MEMORY, SSE, SSEClient, history_ids, put
from .conftest import PostgresCluster, Server, every_store, wait_until
from .conftest import postgres_only as POSTGRES_ONLY

#: the listening connections' backends, as ``pg_stat_activity`` shows them
LISTENERS = "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN memory_events'"
#: backends of this database waiting for a row another transaction holds (the log's advisory
#: lock is left out: the follower's retention pass may wait for it too)
ROW_LOCK_WAITERS = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND wait_event <> 'advisory' AND datname = current_database()")


def start_hosts(server_factory, **env: str) -> list[Server]:
    """Two hosts of two workers each, as behind a load balancer."""
    return [server_factory(workers=2, env={"MEMORY_HEARTBEAT_SECONDS": "0.5", **env})
            for _ in range(2)]


@pytest.fixture
def subscribe(server_factory) -> Iterator[Callable[[list[Server]], list[SSEClient]]]:
    """Opens two streams on every host, each subscribed once ``: connected`` arrives, and closes
    them all before the servers stop."""
    opened: list[SSEClient] = []

    def open_streams(hosts: list[Server]) -> list[SSEClient]:
        streams = [SSEClient(host.url + SSE) for host in hosts
                   for _ in range(2)]
        opened.extend(streams)
        for stream in streams:
            assert stream.next(timeout=5).comments == ("connected",)
        return streams

    yield open_streams
    for stream in opened:
        stream.close()


def received_ids(stream: SSEClient, count: int, timeout: float = 30) -> list[int]:
    return [int(event["id"]) for event in stream.events(count, timeout=timeout)]


def answer(method: str, url: str, **kwargs: object) -> requests.Response:
    return requests.request(method, url, timeout=15, **kwargs)


def put_when_up(host: Server, key: str, data: object) -> None:
    """Retry a write until it commits; until then it must be refused with 503, nothing else."""
    def attempt() -> bool:
        response = answer("POST", host.url + MEMORY + "/set",
                          json={"key": key, "data": data})
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200
    wait_until(attempt, timeout=60, interval=0.2, message=f"the write of {key} to commit")


def test_every_host_delivers_every_change_in_one_order(server_factory, subscribe):
    hosts = start_hosts(server_factory)
    streams = subscribe(hosts)
    written = [put(hosts[n % 2].url, f"k{n}", n)["key"] for n in range(40)]

    log = history_ids(hosts[0].url)
    assert len(log) == len(written) and log == sorted(log)
    for stream in streams:
        events = stream.events(len(written), timeout=30)
        assert [int(e["id"]) for e in events] == log
        assert [e["key"] for e in events] == written


def test_concurrent_writers_never_make_a_follower_skip_an_id(server_factory, subscribe):
    hosts = start_hosts(server_factory)
    streams = subscribe(hosts)
    writers, each = 8, 25

    def write(writer: int) -> None:
        with requests.Session() as session:
            for n in range(each):
                put(hosts[(writer + n) % 2].url, f"w{writer}.{n}", n, session=session)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    log = history_ids(hosts[1].url)
    assert len(log) == writers * each
    for stream in streams:
        assert received_ids(stream, len(log)) == log


@every_store
def test_list_sorts_keys_by_code_point_on_every_store(app_factory, db_url):
    """In process: ordering is the store's, and PostgreSQL's collation here is a locale's."""
    client = app_factory(MEMORY_DB_URL=db_url).test_client()
    for key in ("a", "B", "_", "é"):
        assert client.post(MEMORY + "/set", json={"key": key, "data": 1}).status_code == 200
    response = client.get(MEMORY + "/list", query_string={"scope": "global"})
    assert [record["key"] for record in response.json] == ["B", "_", "a", "é"]


@POSTGRES_ONLY
def test_listening_connection_wakes_followers_and_comes_back(server_factory, subscribe,
                                                            postgres_cluster):
    """No poll to fall back on: only notifications, and the wake-up each listener gives after it
    reconnects, can carry a change to the other processes."""
    hosts = start_hosts(server_factory, MEMORY_POLL_SECONDS="3600")
    streams = subscribe(hosts)
    put(hosts[0].url, "notified", 1)
    for stream in streams:
        assert received_ids(stream, 1) == history_ids(hosts[0].url)

    database = hosts[0].db_url.rsplit("/", 1)[1]
    listening = f"{LISTENERS} AND datname = '{database}'"
    dropped = {pid for (pid,) in postgres_cluster.execute(listening)}
    assert dropped
    # Connections already open keep working; the listeners cannot come back until allowed.
    postgres_cluster.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    try:
        postgres_cluster.execute(f"SELECT pg_terminate_backend(pid) FROM ({listening}) AS l")
        wait_until(lambda: not postgres_cluster.execute(listening), timeout=30,
                   message="every listener to be cut off")
        put_when_up(hosts[1], "unnoticed", 2)
    finally:
        postgres_cluster.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    for stream in streams:
        assert received_ids(stream, 1) == history_ids(hosts[0].url)[1:]

    put(hosts[0].url, "notified.again", 3)
    for stream in streams:
        assert received_ids(stream, 1) == history_ids(hosts[0].url)[2:]


@POSTGRES_ONLY
def test_streams_survive_a_postgres_restart_and_lose_nothing(server_factory, subscribe,
                                                              postgres_cluster: PostgresCluster):
    hosts = start_hosts(server_factory)
    streams = subscribe(hosts)
    for n in range(4):
        put(hosts[n % 2].url, f"before.{n}", n)
    for stream in streams:
        assert received_ids(stream, 4) == history_ids(hosts[0].url)

    postgres_cluster.stop()
    try:
        for host in hosts:
            refused = answer("POST", host.url + MEMORY + "/set",
                             json={"key": "during", "data": 0})
            assert refused.status_code == 503
            assert refused.json()["error"] == "store_unavailable"
            assert refused.headers["Retry-After"]
            assert answer("GET", host.url + "/readyz").status_code == 503
        for stream in streams:
            assert stream.next(timeout=5).comments == ("keepalive",)
    finally:
        postgres_cluster.start()

    for n in range(6):
        put_when_up(hosts[n % 2], f"after.{n}", n)
    log = history_ids(hosts[0].url)
    assert len(log) == 10
    for stream in streams:
        assert received_ids(stream, 6, timeout=60) == log[4:]


@POSTGRES_ONLY
def test_a_query_waiting_in_postgres_leaves_its_worker_serving(server_factory, db_url):
    """psycopg waits through gevent: while one request waits inside PostgreSQL, the same single
    worker goes on answering others instead of stalling until that query returns."""
    server = server_factory()
    put(server.url, "queued", 0)
    writes: list[requests.Response] = []

    def write() -> None:
        writes.append(answer("POST", server.url + MEMORY + "/set",
                             json={"key": "queued", "data": 1}))

    def waiters() -> int:
        return watcher.execute(ROW_LOCK_WAITERS).fetchone()[0]

    with psycopg.connect(db_url, autocommit=True) as watcher, psycopg.connect(db_url) as holder:
        holder.execute("SELECT 1 FROM memory WHERE key = 'queued' FOR UPDATE")
        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: waiters() == 1, message="the write to wait for the row")
        assert answer("GET", server.url + "/healthz").status_code == 200
        assert not writes, f"the write was answered first: {writes[0].status_code}"
        assert waiters() == 1
        holder.rollback()
    writer.join()
    assert writes[0].status_code == 200
