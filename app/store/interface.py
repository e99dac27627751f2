"""What every store offers: memory records, the ordered event log, and vectors.

Everything above the store speaks ``Store``; ``SqlStore`` holds the SQL once and each database
says how to connect, how to open a write transaction and how to spell a few things.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, runtime_checkable

from ..core.errors import Unavailable
from ..core.events import Event
from ..core.filters import LogFilter
from ..core.records import Author, Record


class StoreUnavailable(Unavailable):
    """The database cannot be reached now; callers answer 503 and try again later."""

    def __init__(self, detail: str) -> None:
        super().__init__("store_unavailable", "The store is unavailable; retry shortly.")
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of ``list``: the records, the log position they reflect, and where the next
    page starts (``None``: this was the last)."""
    records: list[Record]
    head_id: int
    next_after: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class StoredVector:
    scope: str
    scope_id: str
    key: str
    embedding: bytes | None  # float32, little-endian; ``None`` for a deleted one
    metadata: str  # JSON text of an object
    created_at: float
    updated_at: float
    seq: int  # the store-wide order of vector changes


@runtime_checkable
class Store(Protocol):
    #: how often a follower should look for writes nobody told it of (other processes')
    poll_seconds: float
    #: the longest a writer waiting for the write lock sleeps between two tries (0: writers
    #: queue for it and are let in in turn)
    lock_retry_seconds: float

    # -- memory --------------------------------------------------------------------------
    def get(self, scope: str, scope_id: str, key: str) -> Record | None:
        """The live record (an expired one is gone)."""

    def list_page(self, scope: str, scope_id: str | None, prefix: str | None,
                  after: tuple[str, str] | None, limit: int | None) -> Listing:
        """Records ordered by scope id then key, after ``(scope_id, key)``, read in one
        database snapshot with the log position they reflect."""

    def records(self, where: LogFilter, after: tuple[str, str, str] | None,
                limit: int) -> list[Record]:
        """Live records passing ``where`` (globs are the caller's), after ``(key, scope,
        scope_id)`` in that order: one page of a snapshot."""

    def set(self, scope: str, scope_id: str, key: str, data: str, author: Author,
            if_version: int | None = None, ttl_seconds: float | None = None) -> Record:
        """Write the record and its event in one transaction; ``VersionConflict`` when
        ``if_version`` does not match."""

    def delete(self, scope: str, scope_id: str, key: str, author: Author,
               if_version: int | None = None) -> Record | None:
        """Remove the record and log its event; ``None`` (and no event) when there was none."""

    def expire(self, limit: int) -> int | None:
        """Remove up to ``limit`` records whose time ran out, each with its ``delete`` event,
        in one transaction; ``None`` when another process is removing them now."""

    def next_expiry(self) -> float | None:
        """When the next record's time runs out."""

    # -- the log -------------------------------------------------------------------------
    def head_id(self) -> int:
        """The newest id in the log (or the newest trimmed one when the log is empty)."""

    def oldest_id(self) -> int:
        """The first id a reader can still get: the oldest retained, else the next to come."""

    def trimmed_through(self) -> int:
        """Every id up to this one may have been removed by retention."""

    def read_log(self, where: LogFilter, after_id: int, upto_id: int | None = None,
                 newest_first: bool = False, page: int = 500) -> Iterator[list[Event]]:
        """Events with ``after_id < id <= upto_id`` passing ``where``, in pages, each from one
        short query; without ``upto_id``, every event after ``after_id`` (unfiltered)."""

    def trim(self, older_than: float) -> int:
        """Drop events older than ``older_than`` (epoch)."""

    # -- vectors -------------------------------------------------------------------------
    def vector_set(self, scope: str, scope_id: str, key: str, embedding: bytes,
                   metadata: str) -> StoredVector: ...

    def vector_get(self, scope: str, scope_id: str, key: str) -> StoredVector | None: ...

    def vector_delete(self, scope: str, scope_id: str, key: str) -> bool: ...

    def vector_delete_prefix(self, scope: str, scope_id: str, prefix: str) -> int: ...

    def vector_changes(self, scope: str, scope_id: str, after_seq: int,
                       limit: int) -> list[StoredVector]:
        """Vectors (deleted ones too) changed after ``after_seq``, in ``seq`` order: about
        ``limit``, more rather than splitting the rows that share the last ``seq``."""

    def vector_head(self, scope: str, scope_id: str) -> tuple[int, int]:
        """The newest ``seq`` of the scope, and the newest ``seq`` of a deletion in that scope
        that was forgotten (0: none)."""

    # -- operations ----------------------------------------------------------------------
    def ping(self) -> None: ...

    def watch(self, wake: Callable[[], None],
              committed: Callable[[list[Event]], None] | None = None) -> None:
        """Call ``wake`` when another process may have written, and ``committed`` right after
        each commit of this process that logged events, with them in id order."""

    def checkpoint(self) -> Callable[[], None] | None:
        """When it is due, the work of moving what writes left in a write-ahead log into the
        database: file work that may sync the disk, for the follower to run off the event
        loop."""

    def audible(self, on: bool) -> None:
        """Whether this process wants ``watch``'s ``wake`` for other processes' commits now
        (it has subscribers); the follower's poll finds them either way."""

    def close(self) -> None: ...
