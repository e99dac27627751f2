"""A subscriber's selection: scope, scope id and key globs, parsed from the query string."""
from __future__ import annotations

from typing import Mapping

from .errors import ApiError
from .events import Event
from .globs import InvalidPattern, KeyMatcher, split_patterns
from .scopes import check_scope, optional_text
from .settings import Settings
from .store import LogFilter


class EventFilter:
    """Decides whether an event reaches a subscriber; checked for every event it could see.

    Filters built from the same query are equal, so the broker checks each event once for all
    the subscribers that share one.
    """

    __slots__ = ("scope", "scope_id", "keys", "log", "_key")

    def __init__(self, scope: str | None = None, scope_id: str | None = None,
                 patterns: tuple[str, ...] = ()) -> None:
        self.scope = scope
        self.scope_id = scope_id
        self.keys = KeyMatcher(patterns) if patterns else None
        self.log = LogFilter(scope, scope_id)
        self._key = (scope, scope_id, patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventFilter) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __call__(self, event: Event) -> bool:
        return ((self.scope is None or event.scope == self.scope)
                and (self.scope_id is None or event.scope_id == self.scope_id)
                and (self.keys is None or self.keys(event.key)))


def from_query(args: Mapping[str, str], settings: Settings) -> EventFilter:
    """Parse ``scope``, ``scope_id`` and ``patterns``; a bad glob is a 400 before any stream."""
    try:
        patterns = split_patterns(args.get("patterns"))
    except InvalidPattern as exc:
        raise ApiError(400, "invalid_pattern", str(exc)) from None
    if len(patterns) > settings.max_patterns:
        raise ApiError(400, "too_many_patterns", f"At most {settings.max_patterns} patterns are "
                                                 f"allowed; got {len(patterns)}.")
    for pattern in patterns:
        if len(pattern) > settings.max_pattern_length:
            raise ApiError(400, "invalid_pattern", f"Pattern '{pattern[:40]}…' is longer than "
                           f"{settings.max_pattern_length} characters.")
    scope_id = optional_text(args.get("scope_id"), "scope_id")
    return EventFilter(check_scope(args.get("scope")), scope_id, patterns)
