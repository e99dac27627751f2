"""How the tests talk to a real server: calls through the Python client, and an SSE reader
that hands over the frames the client's own parser makes of a stream."""
from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from typing import Iterable, Iterator

import requests
import urllib3

from app.client import MemoryClient
from app.client.sse import SseFrame, SseParser, frames
from app.wire import API_PREFIX

MEMORY = API_PREFIX + "/memory"
SSE = MEMORY + "/events/sse"
WS = MEMORY + "/events/ws"
#: a history page as large as the server gives
HISTORY_PAGE = 1000


def put(base_url: str, key: str, data: object, session: requests.Session | None = None,
        **scope: object) -> dict:
    """``set`` through the client, which fails on anything but 200; returns the record.
    ``session`` reuses a connection across calls."""
    memory = MemoryClient(base_url)
    if session is None:
        with memory:
            return memory.set(key, data, **scope)  # type: ignore[arg-type]
    memory.session = session
    return memory.set(key, data, **scope)  # type: ignore[arg-type]


def history_events(base_url: str, **params: object) -> list[dict]:
    """Every event in the log that passes ``params``, oldest first, paging forward with
    ``after_id``."""
    events: list[dict] = []
    with MemoryClient(base_url, timeout=30) as memory:
        while True:
            page = memory.history(limit=HISTORY_PAGE, after_id=events[-1]["id"] if events else 0,
                                  **params)  # type: ignore[arg-type]
            events.extend(page)
            if len(page) < HISTORY_PAGE:
                return events


def history_ids(base_url: str, **params: object) -> list[int]:
    """The ids of ``history_events``."""
    return [int(event["id"]) for event in history_events(base_url, **params)]


def parse(chunks: Iterable[bytes]) -> Iterator[SseFrame]:
    """Frames from a body that is not a ``requests`` response (the Flask test client's streamed
    body, ``http.client``'s ``read1``), by the client's parser."""
    parser = SseParser()
    for chunk in chunks:
        yield from parser.feed(chunk)


def socket_of(response: requests.Response) -> socket.socket | None:
    """The socket a streamed response reads from. With ``Connection: close`` http.client
    hands the socket over to the response, so the connection no longer knows it."""
    connection = response.raw.connection
    if connection is not None and connection.sock is not None:
        return connection.sock
    reader = getattr(getattr(response.raw, "_fp", None), "fp", None)
    return getattr(getattr(reader, "raw", None), "_sock", None)


class SSEClient:
    """A stream opened with ``requests``, whose frames a thread parses as they arrive.

    ``arrived`` holds, for each frame with an id, the wall-clock time it was parsed.
    """

    def __init__(self, url: str, params: dict | None = None, headers: dict | None = None,
                 timeout: float = 10.0) -> None:
        started = time.monotonic()
        self.response = requests.get(url, params=params, headers=headers, stream=True,
                                     timeout=timeout)
        self.headers_seconds = time.monotonic() - started
        self.frames: queue.Queue[SseFrame | None] = queue.Queue()
        self.arrived: dict[str, float] = {}
        self.closed = threading.Event()
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for frame in frames(self.response):
                if frame.id is not None:
                    self.arrived[frame.id] = time.time()
                self.frames.put(frame)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError,
                AttributeError):  # AttributeError: the response was closed under us
            pass
        finally:
            self.closed.set()
            self.frames.put(None)

    def next(self, timeout: float = 10.0) -> SseFrame | None:
        """The next frame, or ``None`` once the stream has ended; fails after ``timeout``."""
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no SSE frame within {timeout}s") from None

    def next_event(self, timeout: float = 10.0) -> SseFrame | None:
        """The next frame that is an event (not only comments)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next(max(0.01, deadline - time.monotonic()))
            if frame is None or frame.is_event:
                return frame

    def events(self, count: int, timeout: float = 10.0) -> list[dict]:
        """``count`` memory_change events, failing on a control frame or an early end."""
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            frame = self.next_event(max(0.01, deadline - time.monotonic()))
            assert frame is not None, f"stream ended after {len(found)} of {count} events"
            assert frame.event == "message", f"unexpected {frame.event}: {frame.data}"
            found.append(frame.json)
        return found

    def close(self) -> None:
        """Shut the socket down first: closing a response while the reader thread waits in a
        read would wait for that read to time out."""
        sock = socket_of(self.response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.response.close()

    def __enter__(self) -> "SSEClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
