"""A small SSE reader for tests: frames arrive on a queue from a background thread."""
from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import requests
import urllib3


@dataclass
class Frame:
    event: str = "message"
    data: str = ""
    id: str | None = None
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def json(self) -> dict:
        return json.loads(self.data)


class SSEClient:
    """Opens a stream with ``requests`` and parses frames as they arrive."""

    def __init__(self, url: str, params: dict | None = None, headers: dict | None = None,
                 timeout: float = 10.0) -> None:
        started = time.monotonic()
        self.response = requests.get(url, params=params, headers=headers, stream=True,
                                     timeout=timeout)
        self.headers_seconds = time.monotonic() - started
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.closed = threading.Event()
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _lines(self) -> Iterator[str]:
        """Lines as soon as they arrive: ``read1`` returns whatever bytes are there."""
        pending = b""
        while True:
            chunk = self.response.raw.read1(1 << 16)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode()

    def _read(self) -> None:
        frame = Frame()
        try:
            for line in self._lines():
                if line == "":
                    self.frames.put(frame)
                    frame = Frame()
                elif line.startswith(":"):
                    frame.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        frame.data = value if not frame.data else frame.data + "\n" + value
                    elif name == "event":
                        frame.event = value
                    elif name == "id":
                        frame.id = value
                    elif name == "retry":
                        frame.retry = int(value)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError,
                AttributeError):  # AttributeError: the response was closed under us
            pass
        finally:
            self.closed.set()
            self.frames.put(None)

    def next(self, timeout: float = 10.0) -> Frame | None:
        """The next frame, or ``None`` once the stream has ended; fails after ``timeout``."""
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no SSE frame within {timeout}s") from None

    def next_event(self, timeout: float = 10.0) -> Frame | None:
        """The next frame that is not only a comment."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next(max(0.01, deadline - time.monotonic()))
            if frame is None or frame.data or frame.event != "message":
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
        connection = self.response.raw.connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        self.response.close()

    def __enter__(self) -> "SSEClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
