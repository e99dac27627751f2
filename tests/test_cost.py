"""What reading the log costs, on a real server: over a large log, a resume and a history query
with a selective filter answer as fast as over a small one, and the worker serving them keeps
answering everything else meanwhile.

The log is filled straight through the store (a few seconds for ``EVENTS`` rows); the one
matching event is written through the API, as a client would.
"""
from __future__ import annotations

import threading
import time

import requests

from app.client import MemoryClient
from app.store import open_store

from .api import SSE, SSEClient, put
from .conftest import Server, every_store, wait_until
from .test_store import fill_log

EVENTS = 200_000
#: how often the ticker asks ``/healthz``
TICK = 0.02
#: the most a selective read may take, and the longest the worker may leave ``/healthz``
#: unanswered meanwhile: far above what these reads cost when they read only what they
#: return, far below what reading the whole log costs (650 ms to the first event, 410 ms
#: frozen, on this machine at this size)
BOUND = 0.25
#: the filters tried; the scope alone selects the whole log, so the key must narrow the read
FILTERS = {"patterns": {"patterns": "rare.*"},
           "scope and patterns": {"scope": "global", "patterns": "rare.*"}}


class Ticker:
    """Calls ``/healthz`` every ``TICK`` on one kept-alive connection, in a thread, while the
    block runs; ``worst_gap`` is the longest time between two answers."""

    def __init__(self, server: Server) -> None:
        self.url = server.url + "/healthz"
        self.answered: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                response = session.get(self.url, timeout=10)
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                self.answered.append(time.monotonic())
                self._stop.wait(TICK)

    @property
    def worst_gap(self) -> float:
        return max(later - earlier for earlier, later in zip(self.answered, self.answered[1:]))

    def __enter__(self) -> "Ticker":
        self._thread.start()
        wait_until(lambda: len(self.answered) >= 3, message="the ticker to tick")
        return self

    def __exit__(self, *exc: object) -> None:
        ended = len(self.answered)
        wait_until(lambda: len(self.answered) > ended, message="one more tick after the read")
        self._stop.set()
        self._thread.join(10)
        assert not self.failures, self.failures


def first_event_seconds(server: Server, params: dict[str, str]) -> float:
    """Resume from the log's first id: how long until the one matching event arrives."""
    started = time.monotonic()
    with SSEClient(server.url + SSE, params=params, headers={"Last-Event-ID": "1"}) as stream:
        [event] = stream.events(1)
        seconds = time.monotonic() - started
    assert (event["key"], event["id"]) == ("rare.1", str(EVENTS + 1))
    return seconds


def history_seconds(server: Server, params: dict[str, str]) -> float:
    """The newest ten matching events: how long the answer takes."""
    with MemoryClient(server.url) as memory:
        started = time.monotonic()
        events = memory.history(limit=10, **params)  # type: ignore[arg-type]
        seconds = time.monotonic() - started
    assert [(event["key"], event["id"]) for event in events] == [("rare.1", str(EVENTS + 1))]
    return seconds


@every_store
def test_selective_reads_of_a_large_log_answer_at_once_and_stall_no_one(server_factory, db_url):
    store = open_store(db_url)
    try:
        fill_log(store, EVENTS)
    finally:
        store.close()
    server = server_factory()
    put(server.url, "rare.1", 1)
    measured = {}
    for name, params in FILTERS.items():
        for read, seconds_of in (("resume", first_event_seconds), ("history", history_seconds)):
            with Ticker(server) as ticker:
                seconds = seconds_of(server, params)
            measured[f"{read} by {name}"] = (round(seconds, 3), round(ticker.worst_gap, 3))
    slow = {read: (seconds, gap) for read, (seconds, gap) in measured.items()
            if max(seconds, gap) > BOUND}
    assert not slow, f"(seconds to answer, worst /healthz gap) over {BOUND}s: {slow}"
