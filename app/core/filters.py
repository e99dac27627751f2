"""What a subscriber or a history query selects: scope, scope id and key globs.

The same selection is checked in memory for every live event, and handed to the store as a
``LogFilter`` whose key ranges an index can serve, so reading the log costs what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from .errors import Invalid
from .globs import InvalidPattern, KeyMatcher, literal_prefix, split_patterns
from .scopes import check_scope, optional_text

#: the last code point, and the surrogates no stored text can hold
_MAX_CHAR = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Keys ``low <= key < high`` in code point order; ``high`` ``None``: no upper bound."""
    low: str
    high: str | None

    @property
    def exact(self) -> bool:
        """The range holds one key only (see ``key_ranges``)."""
        return self.high == self.low + "\x01"


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The part of a selection a database can apply; globs are checked again by the caller.

    ``keys`` ``None`` means any key; otherwise a key must fall in one of the ranges, which an
    index can serve. ``patterns`` are the globs, which a database may apply loosely (a
    superset of their matches) to send back fewer rows.
    """
    scope: str | None = None
    scope_id: str | None = None
    keys: tuple[KeyRange, ...] | None = None
    since: float | None = None
    patterns: tuple[str, ...] = ()


def implied_scope_id(scope: str | None, scope_id: str | None) -> str | None:
    """The scope id a selection names: ``global`` has only one, so naming the scope names it
    too, and an index on (scope, scope id, …) serves the pair."""
    return "global" if scope == "global" and scope_id is None else scope_id


def successor(prefix: str) -> str | None:
    """The first text after every text that starts with ``prefix`` (``None``: there is none)."""
    while prefix:
        last = ord(prefix[-1]) + 1
        if last in _SURROGATES:
            last = _SURROGATES.stop
        if last <= _MAX_CHAR:
            return prefix[:-1] + chr(last)
        prefix = prefix[:-1]
    return None


def key_ranges(patterns: tuple[str, ...]) -> tuple[KeyRange, ...] | None:
    """Ranges holding every key the globs can match, or ``None`` when one glob starts with a
    wildcard (any key may match). An exact glob is the range of that one key: no stored key
    holds a NUL, so nothing lies between it and itself followed by U+0001."""
    ranges: list[KeyRange] = []
    for pattern in patterns:
        prefix, exact = literal_prefix(pattern)
        if not prefix:
            return None
        ranges.append(KeyRange(prefix, prefix + "\x01" if exact else successor(prefix)))
    merged: list[KeyRange] = []
    for span in sorted(ranges, key=lambda r: r.low):  # overlapping ranges would read rows twice
        last = merged[-1] if merged else None
        if last is not None and (last.high is None or span.low < last.high):
            high = None if None in (last.high, span.high) else max(last.high, span.high)
            merged[-1] = KeyRange(last.low, high)
        else:
            merged.append(span)
    return tuple(merged) or None


class Keyed(Protocol):
    scope: str
    scope_id: str
    key: str


class EventFilter:
    """Decides whether an event (or a record) reaches a subscriber.

    Filters built from the same query are equal, so the broker checks each event once for all
    the subscribers that share one.
    """

    __slots__ = ("scope", "scope_id", "patterns", "keys", "log", "_key")

    def __init__(self, scope: str | None = None, scope_id: str | None = None,
                 patterns: tuple[str, ...] = ()) -> None:
        self.scope = scope
        self.scope_id = scope_id
        self.patterns = patterns
        self.keys = KeyMatcher(patterns) if patterns else None
        self.log = LogFilter(scope, implied_scope_id(scope, scope_id),
                             key_ranges(patterns) if patterns else None, patterns=patterns)
        self._key = (scope, scope_id, patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventFilter) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __call__(self, item: Keyed) -> bool:
        return ((self.scope is None or item.scope == self.scope)
                and (self.scope_id is None or item.scope_id == self.scope_id)
                and (self.keys is None or self.keys(item.key)))


def from_query(args: Mapping[str, str], max_patterns: int, max_pattern_length: int
               ) -> EventFilter:
    """Parse ``scope``, ``scope_id`` and ``patterns``; a bad glob is refused before a stream
    starts."""
    raw = args.get("patterns")
    if raw is not None and "\x00" in raw:
        raise Invalid("invalid_pattern", "Patterns must not contain NUL characters.")
    try:
        patterns = split_patterns(raw)
    except InvalidPattern as exc:
        raise Invalid("invalid_pattern", str(exc)) from None
    if len(patterns) > max_patterns:
        raise Invalid("too_many_patterns", f"At most {max_patterns} patterns are allowed; "
                                           f"got {len(patterns)}.")
    for pattern in patterns:
        if len(pattern) > max_pattern_length:
            raise Invalid("invalid_pattern", f"Pattern '{pattern[:40]}…' is longer than "
                                             f"{max_pattern_length} characters.")
    scope_id = optional_text(args.get("scope_id"), "scope_id")
    return EventFilter(check_scope(args.get("scope")), scope_id, patterns)
