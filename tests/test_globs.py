"""Tests for app.core.globs: Go's filepath.Match table, Unicode, malformed globs, pattern lists,
and a randomized cross-check of the compiled KeyMatcher against the direct port behind match()."""

from __future__ import annotations

import random
import sqlite3

import pytest

from app.core.filters import KeyRange, key_ranges, successor
from app.core.globs import (InvalidPattern, KeyMatcher, literal_prefix, match, split_patterns,
                            validate)
from app.store.sql import SqlStore

BAD = "bad"  # expected outcome: Go returns ErrBadPattern

# Go's matchTests table from src/path/filepath/match_test.go, as (pattern, name, expected).
GO_MATCH_TESTS = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[]a]", "]", BAD),
    ("[-]", "-", BAD),
    ("[x-]", "x", BAD),
    ("[x-]", "-", BAD),
    ("[x-]", "z", BAD),
    ("[-x]", "x", BAD),
    ("[-x]", "-", BAD),
    ("[-x]", "a", BAD),
    ("\\", "a", BAD),
    ("[a-b-c]", "a", BAD),
    ("[", "a", BAD),
    ("[^", "a", BAD),
    ("[^bc", "a", BAD),
    ("a[", "a", BAD),
    ("a[", "ab", BAD),
    ("a[", "x", BAD),
    ("a/b[", "x", BAD),
    ("*x", "xxx", True),
]

# Further cases: Go semantics worth pinning down, and code points beyond the BMP.
EXTRA_MATCH_TESTS = [
    ("", "", True),
    ("", "a", False),
    ("**", "abc", True),
    ("**/b", "a/b", True),
    ("*", "", True),
    ("*", "a/b", False),
    ("a/*", "a/", True),
    ("?", "", False),
    ("\\a", "a", True),
    ("a\\/b", "a/b", True),
    ("[/]", "/", True),  # classes may match the separator: only * and ? exclude it
    ("a[^x]b", "a/b", True),
    ("a[!-0]b", "a/b", True),
    ("[z-a]", "m", False),  # a reversed range is accepted and matches nothing
    ("[z-a]", "z", False),
    ("[^z-a]", "/", True),
    ("[z-ab]", "b", True),
    ("[\\^]", "^", True),
    ("[^^]", "^", False),
    ("[a^]", "^", True),
    ("[*]", "*", True),
    ("[*]x", "ax", False),
    ("a*[*]", "ab*", True),
    ("[[]", "[", True),
    ("]", "]", True),
    ("a]b", "a]b", True),
    ("x-y", "x-y", True),
    ("^a", "^a", True),
    ("a.b", "axb", False),  # regex metacharacters are literals
    ("a+", "aa", False),
    ("(a|b)", "(a|b)", True),
    ("$", "$", True),
    ("a\nb", "a\nb", True),
    ("?", "\n", True),
    ("*", "a\nb", True),
    ("a*", "a\n", True),
    # Go commits each middle chunk at the earliest place it fits. Here `[^x]` takes "a", the next
    # star then cannot skip "/", and Go reports no match although "a" + "/" + "" + "y" would fit.
    ("*[^x]*y", "a/y", False),
    ("*[^x]*y", "ay", True),
    ("*[^x]*y", "aby", True),
    ("*[^x]y", "a/y", True),  # the last chunk is tried at every place
    # Unicode: characters are code points.
    ("?", "é", True),
    ("??", "é", False),
    ("?", "😀", True),
    ("a?c", "a😀c", True),
    ("[😀]", "😀", True),
    ("[😀-😂]", "😁", True),
    ("[^😀]", "😁", True),
    ("[^😀]", "😀", False),
    # Go skips bytes after a star, so it reaches the middle of "é" and (on the stray byte) says
    # True here; the contract makes characters code points, so we say False.
    ("*[^é]", "é", False),
    ("[α-ω]*", "λόγος", True),
    ("[α-ω]*", "Λόγος", False),
    ("\\é", "é", True),
    ("*é", "café", True),
    ("caf?", "café", True),
    ("cafe", "café", False),
    ("café", "cafe\u0301", False),  # no normalization: different code points
    ("日本/*", "日本/語", True),
    ("日本*", "日本/語", False),
]

MALFORMED = [
    "[invalid",
    "[]a]",
    "[]",
    "[^]",
    "[^]a]",
    "a[",
    "[a-]",
    "[-]",
    "\\",
    "a\\",
    "*\\",
    "[x-",
    "[a\\",
    "[a\\]",
    "[a-\\",
    "[a-b-c]",
    "[a--]",
    "[a-]]",
    "[é",
    "[é-",
    "abc*[",
    "x*[]",
    "[a]*[",
    "a*b*\\",
    "[*",
    "[a*]b*[",
]

NAMES = ["", "a", "x", "]", "abc", "zzz", "a/b", "é", "[", "\\"]


def _matcher_result(pattern: str, name: str) -> bool:
    return KeyMatcher((pattern,))(name)


@pytest.mark.parametrize("pattern,name,expected", GO_MATCH_TESTS + EXTRA_MATCH_TESTS)
def test_match_table(pattern: str, name: str, expected: bool | str) -> None:
    if expected == BAD:
        with pytest.raises(InvalidPattern) as info:
            match(pattern, name)
        assert info.value.pattern == pattern
        with pytest.raises(InvalidPattern):
            validate(pattern)
        with pytest.raises(InvalidPattern):
            KeyMatcher((pattern,))
    else:
        validate(pattern)
        assert match(pattern, name) is expected
        assert _matcher_result(pattern, name) is expected


@pytest.mark.parametrize("pattern", MALFORMED)
def test_malformed_is_rejected_whatever_the_name(pattern: str) -> None:
    with pytest.raises(InvalidPattern) as info:
        validate(pattern)
    assert info.value.pattern == pattern
    assert str(info.value).startswith(f"invalid glob pattern {pattern!r}: ")
    for name in NAMES:
        with pytest.raises(InvalidPattern):
            match(pattern, name)


def test_invalid_pattern_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(ValueError) as info:
        validate("[invalid")
    assert str(info.value) == "invalid glob pattern '[invalid': unclosed character class"
    assert info.value.pattern == "[invalid"


@pytest.mark.parametrize(
    "pattern,reason",
    [
        ("[]a]", "empty character class"),
        ("[^]", "empty character class"),
        ("[-x]", "unescaped '-' in character class"),
        ("[a-b-c]", "unescaped '-' in character class"),
        ("[a-]", "character range has no upper bound"),
        ("a\\", "trailing backslash"),
        ("[x-", "unclosed character class"),
        ("a*[", "unclosed character class"),
    ],
)
def test_reasons(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidPattern) as info:
        validate(pattern)
    assert info.value.reason == reason


def test_first_bad_chunk_is_reported_even_after_a_mismatch() -> None:
    # "b" fails to match "x" first; the malformed tail must still be reported.
    with pytest.raises(InvalidPattern) as info:
        match("b*[a-", "x")
    assert info.value.reason == "unclosed character class"


def test_split_patterns() -> None:
    assert split_patterns(None) == ()
    assert split_patterns("") == ()
    assert split_patterns(" , ,\t") == ()
    assert split_patterns("user/*") == ("user/*",)
    assert split_patterns(" a/* , ,b?,  [x-z]c ") == ("a/*", "b?", "[x-z]c")
    assert split_patterns("é*,😀") == ("é*", "😀")


def test_split_patterns_names_the_first_bad_glob() -> None:
    with pytest.raises(InvalidPattern) as info:
        split_patterns("ok/*, [invalid ,[]a]")
    assert info.value.pattern == "[invalid"
    assert "'[invalid'" in str(info.value)


def test_key_matcher_without_patterns_passes_everything() -> None:
    matcher = KeyMatcher(())
    assert matcher.patterns == ()
    assert matcher("anything/at/all")
    assert matcher("")


def test_key_matcher_matches_any_pattern() -> None:
    matcher = KeyMatcher(("user/*", "session/[0-9]?", "exact"))
    assert matcher.patterns == ("user/*", "session/[0-9]?", "exact")
    assert matcher("user/alice")
    assert not matcher("user/alice/prefs")
    assert matcher("session/1a")
    assert not matcher("session/a1")
    assert matcher("exact")
    assert not matcher("exactly")
    assert not matcher("other")
    assert matcher("user/alice")  # from the cache this time


def test_key_matcher_cache_stays_bounded() -> None:
    matcher = KeyMatcher(("k*7",))
    results = [matcher(f"k{i}") for i in range(10_000)]
    assert results == [str(i).endswith("7") for i in range(10_000)]
    assert 0 < len(matcher._cache) <= 4096
    assert matcher("k17") and not matcher("k18")


def _random_pattern(rng: random.Random) -> str:
    """Mostly well-formed globs built from terms, plus raw noise to exercise malformed ones."""
    chars = "ab/é-]^*?[\\"
    if rng.random() < 0.25:
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, 7)))
    terms = []
    for _ in range(rng.randint(0, 5)):
        kind = rng.random()
        if kind < 0.3:
            terms.append(rng.choice("ab/é"))
        elif kind < 0.45:
            terms.append("*")
        elif kind < 0.6:
            terms.append("?")
        elif kind < 0.7:
            terms.append("\\" + rng.choice("ab/é*?[]-^\\"))
        else:
            items = []
            for _ in range(rng.randint(1, 3)):
                lo = rng.choice(["a", "b", "/", "é", "\\-", "\\]", "^", "\\\\", "*", "?", "["])
                if rng.random() < 0.3:
                    lo += "-" + rng.choice(["a", "b", "/", "é", "\\-", "\\]", "z", "."])
                items.append(lo)
            terms.append("[" + ("^" if rng.random() < 0.3 else "") + "".join(items) + "]")
    return "".join(terms)


def test_compiled_matcher_agrees_with_go_port_on_random_globs() -> None:
    """KeyMatcher compiles globs to regexes; match() runs the direct port of Go's algorithm.
    They must agree on validity and on every answer."""
    rng = random.Random(20240601)
    names_alphabet = "ab/é-]^*?[\\.z"
    valid = checked = 0
    for _ in range(4000):
        pattern = _random_pattern(rng)
        try:
            validate(pattern)
        except InvalidPattern:
            with pytest.raises(InvalidPattern):
                KeyMatcher((pattern,))
            with pytest.raises(InvalidPattern):
                match(pattern, "".join(rng.choice(names_alphabet) for _ in range(3)))
            continue
        valid += 1
        matcher = KeyMatcher((pattern,))
        for _ in range(25):
            name = "".join(rng.choice(names_alphabet) for _ in range(rng.randint(0, 6)))
            assert matcher(name) == match(pattern, name), (pattern, name)
            checked += 1
    assert valid > 2500 and checked > 60_000


def test_combined_matcher_agrees_with_any_of_its_patterns() -> None:
    rng = random.Random(7)
    names_alphabet = "ab/é-]"
    for _ in range(500):
        patterns = []
        while len(patterns) < rng.randint(1, 3):
            pattern = _random_pattern(rng)
            try:
                validate(pattern)
            except InvalidPattern:
                continue
            patterns.append(pattern)
        matcher = KeyMatcher(tuple(patterns))
        for _ in range(20):
            name = "".join(rng.choice(names_alphabet) for _ in range(rng.randint(0, 5)))
            assert matcher(name) == any(match(p, name) for p in patterns), (patterns, name)


def test_a_globs_sql_shape_and_key_ranges_hold_every_name_it_matches() -> None:
    """What the store asks the database for must never lose a match: SQLite's GLOB of the
    shape, and the key ranges of the literal prefix, hold every name the glob matches."""
    rng = random.Random(11)
    names_alphabet = "ab/é-]^*?[\\.z"
    db = sqlite3.connect(":memory:")
    checked = 0
    for _ in range(1500):
        pattern = _random_pattern(rng)
        try:
            validate(pattern)
        except InvalidPattern:
            continue
        loose = SqlStore._like(pattern)
        [span] = key_ranges((pattern,)) or [KeyRange("", None)]
        for _ in range(20):
            name = "".join(rng.choice(names_alphabet) for _ in range(rng.randint(0, 6)))
            if match(pattern, name):
                assert db.execute("SELECT ? GLOB ?", (name, loose)).fetchone()[0], (pattern, name)
                assert span.low <= name and (span.high is None or name < span.high)
                checked += 1
    assert checked > 1000


def test_literal_prefixes_and_their_successors() -> None:
    assert literal_prefix("user.*") == ("user.", False)
    assert literal_prefix("a\\*b") == ("a*b", True)
    assert literal_prefix("*x") == ("", False)
    assert successor("ab") == "ac" and successor("a\U0010ffff") == "b"
    assert successor("\ud7ff") == "\ue000" and successor("\U0010ffff") is None
    assert key_ranges(("user.*", "user.1", "x")) == (KeyRange("user.", "user/"),
                                                    KeyRange("x", "x\x01"))
    assert key_ranges(("user.*", "*")) is None
