"""The one paged reader of the event log: the follower, replay and history all read through it.

Reading must cost what the reader receives, not the size of the log, and no single query may
hold a worker (sqlite3 blocks gevent's loop while a statement runs). So:

* a short range of positions is read directly, in keyset pages;
* otherwise an index narrows the rows first: the globs' literal prefixes as key ranges, or the
  ``since`` time. An index offers at most ``CAP`` ids of the range, read without touching the
  rows, and reads no more of its entries than the range has positions, so a selective filter
  costs what it returns. An exact scope and scope id hold their ids in id order in their
  index, so those are read as they come, a page at a time, and cost what the reader takes;
* when no index is narrow enough the log is scanned in windows of ``WINDOW`` positions, each
  one query on the primary key, with a pause between them for everyone else.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Protocol

from ..core.events import Event
from ..core.filters import LogFilter
from ..core.paging import FIRST_PAGE, next_page
from ..core.pause import pause

#: log positions one scanning query covers
WINDOW = 4096
#: ids an index may offer before the reader scans windows instead
CAP = 20_000
PAGE = 500

#: the narrowings whose ids are collected, then sorted and read: their indexes do not hold
#: ids in id order (an exact scope's does, and is read as it goes: ``_scope_pages``)
NARROWING = ("keys", "since")


class LogSource(Protocol):
    """What a database answers, each in one short query."""

    def log_after(self, after_id: int, limit: int) -> list[Event]:
        """Every event after ``after_id``, oldest first (the follower's read)."""

    def log_window(self, where: LogFilter, low: int, high: int, newest_first: bool,
                   limit: int) -> list[Event]:
        """Events with ``low < id <= high`` passing ``where``, in order, at most ``limit``."""

    def log_ids(self, where: LogFilter, via: str, low: int, high: int,
                cap: int) -> list[int] | None:
        """Ids an index offers for ``where`` (a superset of the matches), or ``None`` when the
        index has no such narrowing or more than ``cap``."""

    def log_scope_ids(self, where: LogFilter, low: int, high: int, newest_first: bool,
                      limit: int) -> list[int]:
        """The first ``limit`` ids in ``(low, high]`` of ``where``'s exact scope and scope
        id, in order."""

    def log_by_ids(self, where: LogFilter, ids: list[int], newest_first: bool,
                   limit: int) -> list[Event]:
        """The first ``limit`` events with these ids that pass ``where``, in order."""


def read_log(source: LogSource, where: LogFilter, after_id: int, upto_id: int | None = None,
             newest_first: bool = False, page: int = PAGE) -> Iterator[list[Event]]:
    if upto_id is None:
        yield from _follow(source, after_id, page)
        return
    if upto_id - after_id > WINDOW:
        for via in NARROWING:
            ids = source.log_ids(where, via, after_id, upto_id, CAP)
            if ids is not None:
                ids.sort(reverse=newest_first)
                yield from _by_ids(source, where, [ids], newest_first, page)
                return
            pause()
        if where.scope is not None and where.scope_id is not None:
            yield from _by_ids(source, where,
                               _scope_pages(source, where, after_id, upto_id, newest_first),
                               newest_first, page)
            return
    yield from _windows(source, where, after_id, upto_id, newest_first, page)


def _fewer(events: list[Event], page: int) -> int:
    return next_page(len(events), sum(event.size for event in events), page)


def _follow(source: LogSource, after_id: int, page: int) -> Iterator[list[Event]]:
    limit = min(page, FIRST_PAGE)
    while True:
        events = source.log_after(after_id, limit)
        if events:
            yield events
        if len(events) < limit:
            return
        after_id = events[-1].id
        limit = _fewer(events, page)
        pause()


def _scope_pages(source: LogSource, where: LogFilter, low: int, high: int,
                 newest_first: bool) -> Iterator[list[int]]:
    """An exact scope's ids in reading order, a page at a time from its index: they come in
    id order, so rows are read as they come, and a reader that stops early reads no more."""
    while low < high:
        ids = source.log_scope_ids(where, low, high, newest_first, PAGE)
        if ids:
            yield ids
        if len(ids) < PAGE:
            return
        if newest_first:
            high = ids[-1] - 1
        else:
            low = ids[-1]


def _by_ids(source: LogSource, where: LogFilter, pages: Iterable[list[int]],
            newest_first: bool, page: int) -> Iterator[list[Event]]:
    """Rows by id, from pages of ids in reading order, ``PAGE`` ids per query however few
    rows the page wants: most ids may be of events the globs refuse, and asking for them one
    at a time would cost a query each."""
    limit = min(page, FIRST_PAGE)
    for wanted in pages:
        start = 0
        while start < len(wanted):
            batch = wanted[start:start + PAGE]
            events = source.log_by_ids(where, batch, newest_first, limit)
            start += batch.index(events[-1].id) + 1 if len(events) == limit else len(batch)
            if events:
                yield events
                limit = _fewer(events, page)
            pause()


def _windows(source: LogSource, where: LogFilter, after_id: int, upto_id: int,
             newest_first: bool, page: int) -> Iterator[list[Event]]:
    """Keyset pages within windows of positions: a page ends at ``page`` events or at the
    window's end, whichever comes first, so no query reads more than a window of rows."""
    low, high, limit = after_id, upto_id, min(page, FIRST_PAGE)
    while low < high:
        if newest_first:
            window = (max(low, high - WINDOW), high)
        else:
            window = (low, min(high, low + WINDOW))
        events = source.log_window(where, *window, newest_first, limit)
        full = len(events) == limit
        if events:
            yield events
            limit = _fewer(events, page)
        if newest_first:
            high = events[-1].id - 1 if full else window[0]
        else:
            low = events[-1].id if full else window[1]
        if low < high:
            pause()
