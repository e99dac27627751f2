"""An incremental ``text/event-stream`` parser: bytes in, complete frames out."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

import requests

READ_SIZE = 65536
_LINE_END = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True)
class SseFrame:
    """One block of lines up to a blank line. Only a block with ``data`` is an event; one of
    comments (``: keepalive``) or a ``retry:`` alone is not, and ``EventSource`` ignores it."""
    event: str = "message"
    data: str | None = None
    id: str | None = None
    comments: tuple[str, ...] = ()
    retry: int | None = None

    @property
    def is_event(self) -> bool:
        return self.data is not None

    @property
    def json(self) -> Any:
        return json.loads(self.data or "null")


class SseParser:
    """The format allows lines to end in CRLF, LF or CR, and the network may split a line (or a
    CRLF) anywhere, so only whole lines are parsed and a trailing CR waits for the next chunk."""

    def __init__(self) -> None:
        self._buffer = b""
        self._reset()

    def _reset(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._comments: list[str] = []
        self._retry: int | None = None
        self._fields = False

    def feed(self, chunk: bytes) -> list[SseFrame]:
        self._buffer += chunk
        complete = len(self._buffer) - self._buffer.endswith(b"\r")
        frames, start = [], 0
        for end in _LINE_END.finditer(self._buffer, 0, complete):
            frame = self._line(self._buffer[start:end.start()])
            if frame is not None:
                frames.append(frame)
            start = end.end()
        self._buffer = self._buffer[start:]
        return frames

    def _line(self, raw: bytes) -> SseFrame | None:
        if not raw:
            return self._dispatch()
        self._fields = True
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            self._comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SseFrame | None:
        frame = None
        if self._fields:
            frame = SseFrame(self._event or "message",
                             "\n".join(self._data) if self._data else None, self._id,
                             tuple(self._comments), self._retry)
        self._reset()
        return frame


def frames(response: requests.Response) -> Iterator[SseFrame]:
    """Frames as soon as their bytes arrive: ``read1`` returns what is there instead of waiting
    for a full buffer, whether or not the body is chunked."""
    parser = SseParser()
    while chunk := response.raw.read1(READ_SIZE, decode_content=True):
        yield from parser.feed(chunk)
