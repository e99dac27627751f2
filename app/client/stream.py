"""A live stream that reconnects by itself: backoff, status reports, and the resume point."""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Callable, Generator, Iterator

import requests
import urllib3

from ..wire import Control, EndReason
from .errors import ApiError, ConnectionFailed, reason
from .sse import frames


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter and a cap.

    Full jitter (a uniform delay between zero and the exponential bound) spreads out the
    clients a server restart cut off all at once, so they do not come back in step.
    """
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap, self.base * 2.0 ** min(attempt, 32)))


@dataclass(frozen=True)
class StreamStatus:
    """What ``subscribe(on_status=…)`` reports about the connection behind the events.

    ``state`` is ``"disconnected"`` (``reason`` says why; the next attempt is ``retry_in``
    seconds away) or ``"reconnected"``. ``last_event_id`` is where the stream resumes.
    """
    state: str
    reason: str
    last_event_id: str
    retry_in: float = 0.0


DROPPED = (urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class _Ending:
    """How one connection ended: why, where to resume, and whether it went well.

    ``planned`` ends (``overflow``, ``shutdown``, ``lifetime``) carry the server's resume id.
    A connection went ``well`` when it delivered something or lived its whole lifetime; one
    that did neither (a stopping server that takes the connection and ends it at once) counts
    as a failed attempt, so reconnecting backs off instead of spinning.
    """
    reason: str
    well: bool
    resume_after: str | None = None

    @property
    def planned(self) -> bool:
        return self.resume_after is not None


def _json_object(text: str) -> dict:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


class Subscription(Iterator[dict]):
    """What ``MemoryClient.subscribe`` returns: the events of one subscription, across as many
    connections as it takes. ``last_event_id`` is where it would resume (persist it to
    resume after a restart of the caller).

    The connection state lives apart from this wrapper, so the generator holds no reference
    back to it: dropping the wrapper (leaving a ``for`` loop over ``subscribe()``) frees the
    generator at once, and its clean-up closes the HTTP response.
    """

    def __init__(self, stream: "_Stream") -> None:
        self._stream = stream
        self._events = stream.follow()

    @property
    def last_event_id(self) -> str | None:
        return self._stream.last_event_id

    def __next__(self) -> dict:
        return next(self._events)

    def close(self) -> None:
        """Close the HTTP response (also when iteration never started: a generator that never
        ran cannot clean up after itself)."""
        self._events.close()
        self._stream.response.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Stream:
    """One subscription's connection, and the reconnecting that keeps it going.

    ``last_event_id`` ``None`` opens without a resume point (a snapshot stream starts that
    way); ``from_empty_log`` says the log was empty when subscribing, so all it will ever hold
    is news.
    """

    def __init__(self, open_stream: Callable[[str | None], requests.Response],
                 last_event_id: str | None, backoff: Backoff,
                 on_status: Callable[[StreamStatus], None] | None,
                 from_empty_log: bool = False) -> None:
        self._from_empty_log = from_empty_log
        self.last_event_id = last_event_id
        self._open_stream = open_stream
        self._backoff = backoff
        self._on_status = on_status
        self._attempt = 0
        self.response = open_stream(self.last_event_id)
        self.connections = 1  # how many were opened: a watch starts its snapshot over on each

    def follow(self) -> Generator[dict, None, None]:
        try:
            while True:
                ending = yield from self._deliver()
                self.response.close()
                self.last_event_id = ending.resume_after or self.last_event_id
                self._attempt = 0 if ending.well else self._attempt + 1
                self._reconnect(ending)
        finally:
            self.response.close()

    def _deliver(self) -> Generator[dict, None, _Ending]:
        """Yield one connection's events (and snapshot records, resets); return how it
        ended."""
        seen = False
        try:
            for frame in frames(self.response):
                if not frame.is_event:
                    continue
                data = _json_object(frame.data or "{}")
                if frame.event == "message":
                    self.last_event_id = frame.id or str(data.get("id"))
                    seen, self._from_empty_log = True, False
                    yield data
                elif frame.event == Control.SNAPSHOT:
                    yield {"type": Control.SNAPSHOT.value, "record": data}
                elif frame.event == Control.SNAPSHOT_END:
                    self.last_event_id = str(data["last_id"])
                    seen = True
                    yield {"type": Control.SNAPSHOT_END.value, **data}
                elif frame.event == Control.RESET:
                    if self._from_empty_log and "oldest_id" in data:
                        # Only what came before the subscription was trimmed: everything kept
                        # came after it, so resume from the oldest kept and miss nothing.
                        self._from_empty_log = False
                        return _Ending(Control.RESET.value, True,
                                       str(int(data["oldest_id"]) - 1))
                    yield {"type": Control.RESET.value, **data}
                elif "last_id" in data:
                    return _Ending(frame.event, seen or frame.event == EndReason.LIFETIME,
                                   str(data["last_id"]))
        except DROPPED as exc:
            return _Ending(f"connection lost ({reason(exc)})", seen)
        return _Ending("the server closed the stream", seen)

    def _reconnect(self, ending: _Ending) -> None:
        """Open the stream again after ``last_event_id``: at once after a planned end of a
        good connection, else after a backoff that grows with each failed attempt."""
        why = ending.reason
        delay = 0.0 if ending.planned and self._attempt == 0 else self._backoff.delay(
            self._attempt)
        while True:
            self._report(StreamStatus("disconnected", why, self.last_event_id or "", delay))
            time.sleep(delay)
            try:
                self.response = self._open_stream(self.last_event_id)
            except ConnectionFailed as exc:
                why = str(exc)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                why = str(exc)
            else:
                self.connections += 1
                self._report(StreamStatus("reconnected", ending.reason,
                                          self.last_event_id or ""))
                return
            self._attempt += 1
            delay = self._backoff.delay(self._attempt)

    def _report(self, status: StreamStatus) -> None:
        if self._on_status is not None:
            self._on_status(status)
