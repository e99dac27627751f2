"""Key filters with the semantics of Go's ``path/filepath.Match`` on Unix.

The service contract defines key filters by Go's Match, so a key must pass or fail here exactly
as it would there: ``*`` is any run of characters other than ``/``, ``?`` is one character other
than ``/``, ``[...]`` is a class (ranges, ``^`` negation) that *can* match ``/``, and ``\\``
escapes the next character, inside classes too.  Characters are code points (Go steps over bytes
after a star and can land inside a multi-byte character; we deliberately do not).

Two matchers live here, one per job:

* :func:`match` is a direct port of Go's algorithm.  It is the reference for the semantics and for
  what counts as malformed, and it is what :func:`validate` runs.
* :class:`KeyMatcher` translates validated globs into one compiled ``re`` pattern, because it runs
  for every event on the fan-out path.  The test suite cross-checks it against :func:`match`.
"""

from __future__ import annotations

import re
from typing import Callable

_SEP = "/"
_CACHE_LIMIT = 4096


class InvalidPattern(ValueError):
    """A glob Go's Match would reject with ErrBadPattern.

    It keeps the offending glob in ``.pattern`` so the HTTP layer can name it in the 400 body.
    """

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid glob pattern {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason


# --- parsing shared by both matchers -------------------------------------------------------


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    """Split off ``(star, chunk, rest)``: leading stars collapsed, then everything up to the next
    star outside a class.  A chunk holds only one-character terms, which keeps matching simple."""
    star = False
    while pattern.startswith("*"):
        pattern = pattern[1:]
        star = True
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):  # a trailing backslash is reported by the chunk parser
                i += 1
        elif c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "*" and not in_class:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _class_char(pattern: str, chunk: str, i: int, is_hi: bool) -> tuple[str, int]:
    """Read one possibly escaped class character at ``chunk[i]``; return it and the next index.

    Like Go, an unescaped ``-`` or ``]`` is never a class member, and the class must still be
    followed by something (its closing ``]``)."""
    if i >= len(chunk):
        raise InvalidPattern(pattern, "unclosed character class")
    c = chunk[i]
    if c == "-":
        raise InvalidPattern(pattern, "unescaped '-' in character class")
    if c == "]":
        reason = "character range has no upper bound" if is_hi else "empty character class"
        raise InvalidPattern(pattern, reason)
    if c == "\\":
        i += 1
        if i >= len(chunk):
            raise InvalidPattern(pattern, "trailing backslash")
        c = chunk[i]
    i += 1
    if i >= len(chunk):
        raise InvalidPattern(pattern, "unclosed character class")
    return c, i


def _parse_class(pattern: str, chunk: str, i: int) -> tuple[bool, list[tuple[str, str]], int]:
    """Parse the class whose ``[`` is at ``chunk[i - 1]``: ``(negated, ranges, next index)``.

    Ranges with lo > hi are kept; Go accepts them and they simply match nothing."""
    negated = i < len(chunk) and chunk[i] == "^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    while not (ranges and i < len(chunk) and chunk[i] == "]"):
        lo, i = _class_char(pattern, chunk, i, is_hi=False)
        hi = lo
        if chunk[i] == "-":
            hi, i = _class_char(pattern, chunk, i + 1, is_hi=True)
        ranges.append((lo, hi))
    return negated, ranges, i + 1


# --- the reference matcher: Go's algorithm ---------------------------------------------------


def _match_chunk(pattern: str, chunk: str, name: str, pos: int) -> int:
    """Match ``chunk`` at ``name[pos:]``; return the position after it, or -1 on mismatch.

    After a mismatch it keeps parsing the chunk, so a malformed chunk is reported whatever the
    name is, as current Go does."""
    failed = False
    i = 0
    while i < len(chunk):
        failed = failed or pos >= len(name)
        c = chunk[i]
        if c == "[":
            negated, ranges, i = _parse_class(pattern, chunk, i + 1)
            if not failed:
                ch = name[pos]
                pos += 1
                failed = any(lo <= ch <= hi for lo, hi in ranges) == negated
        elif c == "?":
            if not failed:
                failed = name[pos] == _SEP
                pos += 1
            i += 1
        else:
            if c == "\\":
                i += 1
                if i >= len(chunk):
                    raise InvalidPattern(pattern, "trailing backslash")
            if not failed:
                failed = chunk[i] != name[pos]
                pos += 1
            i += 1
    return -1 if failed else pos


def _check_chunks(pattern: str, rest: str) -> None:
    """Parse every remaining chunk, so a bad tail is reported even after an early mismatch."""
    while rest:
        _, chunk, rest = _scan_chunk(rest)
        _match_chunk(pattern, chunk, "", 0)


def _match_after_star(pattern: str, chunk: str, name: str, pos: int, must_end: bool) -> int:
    """Let the star swallow 1, 2, ... non-separator characters and return where ``chunk`` ends
    at the first place it fits (-1 if none); the last chunk must also use up the name."""
    for skip in range(pos, len(name)):
        if name[skip] == _SEP:
            break
        end = _match_chunk(pattern, chunk, name, skip + 1)
        if end >= 0 and (end == len(name) or not must_end):
            return end
    return -1


def _go_match(pattern: str, name: str) -> bool:
    """Go's Match: each star chunk is committed at the *earliest* place it fits (no backtracking
    into earlier stars); only the last chunk is tried at every place until the name is used up."""
    rest = pattern
    pos = 0
    while rest:
        star, chunk, rest = _scan_chunk(rest)
        if star and not chunk:
            return name.find(_SEP, pos) < 0
        end = _match_chunk(pattern, chunk, name, pos)
        if end >= 0 and (end == len(name) or rest):
            pos = end
            continue
        if star:
            end = _match_after_star(pattern, chunk, name, pos, must_end=not rest)
            if end >= 0:
                pos = end
                continue
        _check_chunks(pattern, rest)
        return False
    return pos == len(name)


# --- the fast matcher: globs compiled to `re` ------------------------------------------------


def _chunk_regex(pattern: str, chunk: str) -> str:
    """Translate one chunk of a validated glob into a regex matching exactly one char per term."""
    out: list[str] = []
    i = 0
    while i < len(chunk):
        c = chunk[i]
        if c == "[":
            negated, ranges, i = _parse_class(pattern, chunk, i + 1)
            items = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in ranges
                if lo <= hi  # `re` rejects reversed ranges; Go lets them match nothing
            )
            if items:
                out.append(f"[{'^' if negated else ''}{items}]")
            else:
                out.append(r"[\s\S]" if negated else "(?!)")
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            if c == "\\":
                i += 1
            out.append(re.escape(chunk[i]))
            i += 1
    return "".join(out)


def _glob_regex(pattern: str) -> str:
    """Translate a validated glob into a regex for ``fullmatch`` that agrees with Go's Match.

    A star before a middle chunk becomes an atomic lazy group: the chunk is committed at the
    earliest place it fits, exactly as Go does.  This differs from plain backtracking when a class
    can match ``/`` (Go: ``*[^x]*y`` does not match ``a/y``)."""
    parts: list[str] = []
    rest = pattern
    while rest:
        star, chunk, rest = _scan_chunk(rest)
        body = _chunk_regex(pattern, chunk)
        if not star:
            parts.append(body)
        elif rest:
            parts.append(f"(?>[^/]*?{body})")
        else:
            parts.append(f"[^/]*{body}")
    return "".join(parts)


# --- public API ------------------------------------------------------------------------------


def validate(pattern: str) -> None:
    """Raise :class:`InvalidPattern` if Go's Match would reject ``pattern``.

    Called before a stream starts so a bad filter is a clean 400, not an error mid-stream."""
    _check_chunks(pattern, pattern)


def match(pattern: str, name: str) -> bool:
    """Report whether ``name`` matches ``pattern`` as Go's ``filepath.Match`` would.

    Raises :class:`InvalidPattern` for a malformed pattern, whatever the name."""
    return _go_match(pattern, name)


def literal_prefix(pattern: str) -> tuple[str, bool]:
    """The text every matching name starts with, and whether only that text itself matches.

    It is what a database index can serve: ``user.*`` gives ``("user.", False)``, ``a\\*b``
    gives ``("a*b", True)`` and ``*x`` gives ``("", False)``. ``pattern`` must be valid.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c in "*?[":
            return "".join(out), False
        if c == "\\":
            i += 1
        out.append(pattern[i])
        i += 1
    return "".join(out), True


def shape(pattern: str, star: str, one: str, literal: Callable[[str], str]) -> str:
    """``pattern`` in a looser pattern language (SQL's ``LIKE``, SQLite's ``GLOB``) that
    matches at least every name it matches: ``*`` becomes ``star``, ``?`` and each class
    become ``one``, and each literal character goes through ``literal``. ``pattern`` must be
    valid."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if not out or out[-1] != star:
                out.append(star)
            i += 1
        elif c == "?":
            out.append(one)
            i += 1
        elif c == "[":
            _, _, i = _parse_class(pattern, pattern, i + 1)
            out.append(one)
        else:
            if c == "\\":
                i += 1
            out.append(literal(pattern[i]))
            i += 1
    return "".join(out)


def split_patterns(text: str | None) -> tuple[str, ...]:
    """Parse the ``patterns`` query value: comma-separated, trimmed, blanks dropped, each valid.

    Validating here means a request is rejected, naming the first bad glob, before it subscribes."""
    if not text:
        return ()
    patterns = tuple(p for p in (part.strip() for part in text.split(",")) if p)
    for pattern in patterns:
        validate(pattern)
    return patterns


class KeyMatcher:
    """Matches a key against any of several globs; with no globs every key passes.

    Built once per subscriber and called for every event on the fan-out path, so the globs are
    compiled once into a single regex and answers are cached per key (subscribers tend to see the
    same keys again and again).  The cache is bounded and simply cleared when full."""

    patterns: tuple[str, ...]

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            validate(pattern)
        either = "|".join(f"(?:{_glob_regex(p)})" for p in self.patterns)
        self._fullmatch = re.compile(either, re.DOTALL).fullmatch if self.patterns else None
        self._cache: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        if self._fullmatch is None:
            return True
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[key] = self._fullmatch(key) is not None
        return hit
