"""No acknowledged write is lost when every server process is SIGKILLed at any moment.

Writers keep writing while the whole server (master and workers) is killed and started again on
the same SQLite file, several times. Afterwards, what the writers were told (each 200) is
compared with what the store and the event log hold.
"""
from __future__ import annotations

import itertools
import threading

import pytest
import requests

from app.client import MemoryClient

from .api import MEMORY, history_events
from .conftest import Server, wait_until

WRITERS = 6
KILLS = 3
WRITES_PER_LIFE = 50


class WriterStorm:
    """Threads that each write unique keys one after another and remember every 200.

    A request cut off by the kill may or may not have committed; it is neither counted as
    acknowledged nor retried, so the store may hold it or not, but always with its event.
    """

    def __init__(self, server: Server, writers: int) -> None:
        self.server = server
        self.acknowledged: dict[str, dict] = {}
        self.unexpected: list[str] = []
        self.serving = threading.Event()
        self.serving.set()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, args=(n,), daemon=True)
                         for n in range(writers)]
        for thread in self._threads:
            thread.start()

    def reached(self, count: int) -> bool:
        """Whether ``count`` writes were acknowledged; fails at once on an answer that is
        neither a success nor a retryable refusal."""
        with self._lock:
            assert not self.unexpected, self.unexpected[:3]
            return len(self.acknowledged) >= count

    def _write(self, writer: int) -> None:
        with requests.Session() as session:
            for seq in itertools.count():
                self.serving.wait()
                if self._stopping.is_set():
                    return
                key, data = f"w{writer}.{seq}", {"writer": writer, "seq": seq}
                try:
                    response = session.post(self.server.url + MEMORY + "/set",
                                            json={"key": key, "data": data}, timeout=30)
                except requests.RequestException:
                    continue
                with self._lock:
                    if response.status_code == 200:
                        self.acknowledged[key] = data
                    elif response.status_code != 503:  # store busy: a refusal, not a loss
                        self.unexpected.append(f"{response.status_code} {response.text}")

    def stop(self) -> None:
        self._stopping.set()
        self.serving.set()
        for thread in self._threads:
            thread.join(30)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_acknowledged_write_is_lost_to_sigkill(server_factory):
    server = server_factory(workers=2)
    storm = WriterStorm(server, WRITERS)
    for life in range(KILLS + 1):
        target = len(storm.acknowledged) + WRITES_PER_LIFE
        wait_until(lambda: storm.reached(target), timeout=120,
                   message=f"{WRITES_PER_LIFE} acknowledged writes in life {life}")
        if life < KILLS:
            storm.serving.clear()
            server.kill()
            server.start()
            storm.serving.set()
    storm.stop()
    assert not storm.unexpected

    with MemoryClient(server.url, timeout=30) as memory:
        for key, data in storm.acknowledged.items():
            assert memory.record(key)["data"] == data, key
        rows = {row["key"]: row["data"] for row in memory.list("global")}
    events = history_events(server.url)
    ids = [int(event["id"]) for event in events]
    assert ids == list(range(1, len(ids) + 1)), "the log has a hole"
    logged = {event["key"]: event["data"] for event in events}
    assert len(logged) == len(events), "a key written once has one event"
    assert logged == rows, "every row has its event and every event its row"
    assert all(logged.get(key) == data for key, data in storm.acknowledged.items())
