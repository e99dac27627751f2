"""Which scope a request means: explicit ``scope``/``scope_id``, else the ``X-*-ID`` headers."""
from __future__ import annotations

from typing import Mapping

from ..wire import AGENT_ID_HEADER, SCOPE_ID_HEADERS, SCOPES
from .errors import Invalid
from .records import Author


def text(value: object, field: str) -> str:
    """A string every store can hold: valid Unicode (no lone surrogate) and no NUL."""
    if not isinstance(value, str):
        raise Invalid(f"invalid_{field}", f"'{field}' must be a string.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"invalid_{field}", f"'{field}' must be valid Unicode text.") from None
    if "\x00" in value:
        raise Invalid(f"invalid_{field}", f"'{field}' must not contain NUL characters.")
    return value


def optional_text(value: object, field: str) -> str | None:
    """An optional string field: ``None``, empty and blank all mean "not given"."""
    if value is None:
        return None
    return text(value, field).strip() or None


def check_scope(scope: object) -> str | None:
    """Validate an optional scope name; ``None`` means "not given"."""
    name = optional_text(scope, "scope")
    if name is not None and name not in SCOPES:
        raise Invalid("invalid_scope",
                       f"Unknown scope '{name}'; use one of: {', '.join(SCOPES)}.")
    return name


def header_id(scope: str, headers: Mapping[str, str]) -> str | None:
    """The scope id a request's ``X-*-ID`` header gives (``global`` needs none)."""
    if scope == "global":
        return "global"
    return optional_text(headers.get(SCOPE_ID_HEADERS[scope]), "scope_id")


def _explicit(scope: str, scope_id: object, headers: Mapping[str, str]) -> tuple[str, str]:
    """A named scope with its id from the body/query, else from that scope's header."""
    sid = optional_text(scope_id, "scope_id")
    if scope == "global":
        return "global", "global"
    sid = sid or header_id(scope, headers)
    if sid is None:
        raise Invalid("missing_scope_id",
                      f"Scope '{scope}' needs 'scope_id' or the {SCOPE_ID_HEADERS[scope]} "
                      "header.")
    return scope, sid


def candidates(scope: object, scope_id: object, headers: Mapping[str, str],
               reading: bool = False) -> list[tuple[str, str]]:
    """Scopes to look in, most specific first.

    With an explicit scope that is the only one; otherwise every scope whose header is present,
    in the order workflow, session, actor, then global. A write uses the first, a read the first
    that holds the key. A read of an explicit scope without an id finds nothing (no list), as
    the control plane answers it: AgentField's TypeScript client walks the scopes that way.
    """
    name = check_scope(scope)
    if name is not None:
        if reading and name != "global" and (optional_text(scope_id, "scope_id")
                                              or header_id(name, headers)) is None:
            return []
        return [_explicit(name, scope_id, headers)]
    if optional_text(scope_id, "scope_id") is not None:
        raise Invalid("missing_scope", "'scope_id' was given without 'scope'.")
    return [(s, sid) for s in SCOPES if (sid := header_id(s, headers)) is not None]


def author(headers: Mapping[str, str]) -> Author:
    """The event metadata a change carries, from the headers the control plane reads."""
    return Author(agent_id=headers.get(AGENT_ID_HEADER, "").strip(),
                  actor_id=headers.get(SCOPE_ID_HEADERS["actor"], "").strip(),
                  workflow_id=headers.get(SCOPE_ID_HEADERS["workflow"], "").strip())
