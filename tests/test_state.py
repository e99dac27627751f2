"""Live state against real servers with two workers, on every store: compare-and-set under
contention, time to live, paged listing under writes, and snapshot-then-stream convergence."""
from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import requests

from app.client import MemoryClient, VersionConflict
from app.store import open_store

from .api import history_ids
from .conftest import Server, every_store, wait_until
from .sse import SSEClient, socket_of

MEMORY = "/api/v1/memory"


def increments(server: Server, clients: int, each: int, conditional: bool) -> int:
    """``clients`` threads each add 1 to ``counter`` ``each`` times, read-modify-write; with
    ``conditional`` every write names the version it read and retries on a conflict. Returns
    how many writes were refused."""
    refused = [0]
    lock = threading.Lock()

    def run(_: int) -> None:
        with MemoryClient(server.url) as memory:
            for _ in range(each):
                record = memory.record("counter")
                while True:
                    version = record["version"] if conditional else None
                    try:
                        memory.set("counter", record["data"] + 1, if_version=version)
                        break
                    except VersionConflict as conflict:  # it says what is there now
                        with lock:
                            refused[0] += 1
                        record = conflict.current

    with MemoryClient(server.url) as memory:
        memory.set("counter", 0)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return refused[0]


#: the issue's 16 × 200 runs in ``bench`` (CAS throughput); here 16 clients contend as hard,
#: for fewer rounds
CLIENTS, EACH = 16, 15


@every_store
def test_compare_and_set_loses_no_increment_across_workers(server_factory):
    server = server_factory(workers=2)
    refused = increments(server, CLIENTS, EACH, conditional=True)
    with MemoryClient(server.url) as memory:
        assert memory.get("counter") == CLIENTS * EACH
    # the first set, then one per increment: every refusal wrote nothing
    assert len(history_ids(server.url, patterns="counter")) == CLIENTS * EACH + 1
    assert refused > 0  # they did collide


def test_without_compare_and_set_increments_are_lost(server_factory):
    server = server_factory(workers=2)
    increments(server, CLIENTS, EACH, conditional=False)
    with MemoryClient(server.url) as memory:
        assert memory.get("counter") < CLIENTS * EACH


def subscribe_all(server: Server, count: int) -> list[SSEClient]:
    """``count`` streams of every change, opened on fresh connections so both workers hold
    some."""
    streams = []
    for _ in range(count):
        stream = SSEClient(server.url + MEMORY + "/events/sse",
                           headers={"Connection": "close"})
        assert stream.next().comments == ("connected",)
        streams.append(stream)
    return streams


@every_store
def test_expired_keys_vanish_and_each_is_logged_once_to_every_worker(server_factory):
    server = server_factory(workers=2)
    streams = subscribe_all(server, 4)
    try:
        with MemoryClient(server.url) as memory:
            for n in range(20):
                memory.set(f"lease.{n}", n, ttl_seconds=1)
            memory.set("kept", 1)
            expires = time.monotonic() + 1
            wait_until(lambda: time.monotonic() > expires, timeout=5)
            assert memory.get("lease.0") is None
            assert [r["key"] for r in memory.list("global")] == ["kept"]
        for stream in streams:
            changes = stream.events(41, timeout=2 + 5)  # 21 sets, 20 expiries within 2 s
            expiries = [e for e in changes if e["action"] == "delete"]
            assert sorted(e["key"] for e in expiries) == sorted(f"lease.{n}" for n in range(20))
            assert all(e["metadata"]["reason"] == "expired" for e in expiries)
        assert len(history_ids(server.url)) == 41
    finally:
        for stream in streams:
            stream.close()


def fill_scope(db_url: str, keys: int) -> None:
    """``keys`` records written through the store itself, to build a large scope quickly."""
    store = open_store(db_url)
    try:
        with store._write() as cur:  # type: ignore[attr-defined]
            cur.executemany(store._sql(  # type: ignore[attr-defined]
                "INSERT INTO memory (scope, scope_id, key, data, created_at, updated_at, "
                "version) VALUES ('global', 'global', ?, '0', 0, 0, 0)"),
                [(f"doc.{n:06d}",) for n in range(keys)])
    finally:
        store.close()


def walk(server: Server, limit: int) -> tuple[list[str], str]:
    """Every key under ``doc.``, in ``limit`` pages following ``Link``, and the first page's
    ``X-Last-Event-ID``: the position the walk resumes streaming from."""
    keys, url = [], f"{server.url}{MEMORY}/list?scope=global&prefix=doc.&limit={limit}"
    position = None
    with requests.Session() as session:
        while url:
            response = session.get(url, timeout=10)
            assert response.status_code == 200, response.text
            position = position or response.headers["X-Last-Event-ID"]
            keys += [record["key"] for record in response.json()]
            url = response.links.get("next", {}).get("url")
    assert position is not None
    return keys, position


def writing(server: Server, stop: threading.Event, key: Callable[[int], str]) -> threading.Thread:
    def run() -> None:
        n = 0
        with requests.Session() as session:
            while not stop.is_set():
                session.post(f"{server.url}{MEMORY}/set", json={"key": key(n), "data": n},
                             timeout=10).raise_for_status()
                n += 1
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@every_store
def test_a_paged_walk_under_writes_sees_every_lasting_key_once_and_converges(server_factory,
                                                                             db_url):
    fill_scope(db_url, 50_000)
    server = server_factory(workers=2)
    stop = threading.Event()
    writers = [writing(server, stop, lambda n, w=w: f"doc.new.{w}.{n % 50}") for w in range(2)]
    try:
        walked, position = walk(server, 100)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    lasting = [f"doc.{n:06d}" for n in range(50_000)]
    assert [key for key in walked if not key.startswith("doc.new.")] == lasting  # each once
    final, newest = walk(server, 1000)
    state = dict.fromkeys(walked)
    with SSEClient(f"{server.url}{MEMORY}/events/sse?patterns=doc.*",
                   headers={"Last-Event-ID": position}) as stream:
        while position != newest:
            event = stream.events(1)[0]
            position = event["id"]
            if event["action"] == "set":
                state[event["key"]] = event["data"]
            else:
                state.pop(event["key"], None)
    assert sorted(state) == final


@every_store
def test_snapshot_streams_joining_and_dropping_during_writes_converge(server_factory):
    server = server_factory(workers=2)
    stop, done = threading.Event(), threading.Event()
    writers = [writing(server, stop, lambda n, w=w: f"k.{(n * 7 + w) % 1000}") for w in range(8)]
    rng = random.Random(5)
    watches, followers = [], []

    def follow(watch, drop: bool) -> None:
        cut = time.monotonic() + rng.uniform(0.2, 1.0)
        for _ in watch:
            if done.is_set():
                break
            if drop and time.monotonic() > cut:  # the connection dies; the watch resumes
                drop = False
                socket_of(watch._stream.response).shutdown(socket.SHUT_RDWR)
        watch.close()

    def join(number: int) -> None:
        time.sleep(rng.uniform(0, 1.5))  # clients arrive while the writers run
        watch = MemoryClient(server.url).watch("k.*", scope="global")
        next(watch)
        watches.append(watch)
        follower = threading.Thread(target=follow, args=(watch, number % 5 == 0))
        followers.append(follower)
        follower.start()

    joiners = [threading.Thread(target=join, args=(n,)) for n in range(50)]
    for thread in joiners:
        thread.start()
    for thread in joiners:
        thread.join()
    time.sleep(0.5)  # the last to join, and those that dropped, see some writes too
    stop.set()
    for writer in writers:
        writer.join()
    listing = requests.get(f"{server.url}{MEMORY}/list", params={"scope": "global"}, timeout=10)
    final = {record["key"]: record["data"] for record in listing.json()}
    position = int(listing.headers["X-Last-Event-ID"])
    for watch in watches:
        wait_until(lambda: watch.state == final and int(watch.last_event_id) >= position,
                   timeout=30, message="a watch to converge to the listing")
    done.set()
    requests.post(f"{server.url}{MEMORY}/set", json={"key": "k.done", "data": 1}, timeout=10)
    for follower in followers:
        follower.join(timeout=10)
