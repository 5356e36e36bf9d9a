"""Hypothesis properties of the QIDO parser, the escaping and range semantics."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import date, time, timedelta

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from dicomweb.dicom.personname import fuzzy_match, fuzzy_words, pn_key, query_words
from dicomweb.dicom.query import (
    MATCHABLE,
    Level,
    Query,
    QueryError,
    build_filter,
    matches,
    parse_query,
    wildcard_to_glob,
    wildcard_to_like,
    wildcard_to_regex,
)


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("PRAGMA case_sensitive_like = ON")
    yield conn
    conn.close()


NAMES = st.sampled_from([
    *(m.keyword for m in MATCHABLE.values()), *MATCHABLE, "includefield", "limit", "offset",
    "fuzzymatching", "PatientComments", "00091010", "0010001x", "accept",
])
ANY_TEXT = st.text(max_size=80)
VALUE_TEXT = st.one_of(ANY_TEXT, st.text(alphabet="0123456789-.,:\\*?^= +", max_size=40))


@settings(max_examples=600)
@given(st.sampled_from(["study", "series", "instance"]),
       st.lists(st.tuples(st.one_of(NAMES, ANY_TEXT), VALUE_TEXT), max_size=6))
def test_parser_raises_only_query_error(level: Level, params: list[tuple[str, str]]) -> None:
    try:
        query = parse_query(level, params)
    except QueryError as exc:
        assert exc.reason and len(exc.reason) < 200
        return
    query.return_tags()
    for flt in query.filters:
        if flt.kind == "wildcard":
            re.compile(flt.regex_pattern())


# Text without the query wildcards: what a literal chunk of a pattern may hold.
# (NUL is left out: SQLite ends text at NUL, and queries refuse control characters.)
LITERAL = st.text(st.characters(exclude_characters="*?\x00", exclude_categories=["Cs"]), max_size=20)


@settings(max_examples=300)
@given(LITERAL, LITERAL)
@example("a%_\\[]^$.b", "a%_\\[]^$.b")
@example("100%", "100x")
@example("a_c", "abc")
@example("[ab]", "a")
def test_escaped_patterns_match_exactly_the_literal(db: sqlite3.Connection, s: str, t: str) -> None:
    like, glob, regex = wildcard_to_like(s), wildcard_to_glob(s), wildcard_to_regex(s)
    for candidate in (s, t):
        expected = candidate == s
        assert bool(re.fullmatch(regex, candidate)) is expected
        (got_like, got_glob), = db.execute("SELECT ? LIKE ? ESCAPE '\\', ? GLOB ?",
                                           (candidate, like, candidate, glob))
        assert bool(got_like) is expected
        assert bool(got_glob) is expected


@settings(max_examples=300)
@given(st.lists(LITERAL, min_size=1, max_size=4), st.lists(LITERAL, min_size=4, max_size=4))
def test_star_matches_any_filler(db: sqlite3.Connection, chunks: list[str], fillers: list[str]) -> None:
    pattern = "*".join(chunks)
    value = "".join(chunks[i] + (fillers[i] if i < len(chunks) - 1 else "") for i in range(len(chunks)))
    assert re.fullmatch(wildcard_to_regex(pattern), value)
    (got_like, got_glob), = db.execute("SELECT ? LIKE ? ESCAPE '\\', ? GLOB ?",
                                       (value, wildcard_to_like(pattern), value, wildcard_to_glob(pattern)))
    assert got_like and got_glob


@given(LITERAL.filter(lambda s: s.strip() == s and 0 < len(s) <= 64 and "\\" not in s))
def test_wildcard_free_lo_query_is_single_on_itself(s: str) -> None:
    assume(not re.search(r"[\x00-\x1f\x7f]", s))
    flt = build_filter("00081030", "LO", "study", s)
    assert (flt.kind, flt.values) == ("single", (s,))
    pattern = build_filter("00081030", "LO", "study", s + "*")
    assert re.fullmatch(pattern.regex_pattern(), s)
    assert pattern.literal_prefix() == s


DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


def _study(d: date | None = None, t: str | None = None) -> dict[str, dict[str, object]]:
    doc: dict[str, dict[str, object]] = {}
    if d is not None:
        doc["00080020"] = {"vr": "DA", "Value": [_da(d)]}
    if t is not None:
        doc["00080030"] = {"vr": "TM", "Value": [t]}
    return doc


@settings(max_examples=300)
@given(DATES, DATES, DATES, st.sampled_from(["both", "low", "high"]))
def test_date_ranges_are_intervals(a: date, b: date, d: date, shape: str) -> None:
    low, high = min(a, b), max(a, b)
    value = {"both": f"{_da(low)}-{_da(high)}", "low": f"{_da(low)}-", "high": f"-{_da(high)}"}[shape]
    query = parse_query("study", [("StudyDate", value)])
    inside = (shape == "high" or low <= d) and (shape == "low" or d <= high)
    assert matches(query, _study(d)) is inside


TIMES = st.times()


def _tm(t: time, precision: int) -> str:
    text = t.strftime("%H%M%S.%f")
    return text[: (2, 4, 6, 13)[precision]]


@settings(max_examples=300)
@given(TIMES, TIMES, TIMES, st.integers(0, 3), st.integers(0, 3))
def test_time_ranges_are_intervals_at_query_precision(a: time, b: time, t: time, pa: int, pb: int) -> None:
    low, high = min(a, b), max(a, b)
    query = parse_query("study", [("StudyTime", f"{_tm(low, pa)}-{_tm(high, pb)}")])
    # The query's precision widens its ends: "10" ends at 10:59:59.999999.
    start = time.fromisoformat(_iso(_tm(low, pa), low=True))
    end = time.fromisoformat(_iso(_tm(high, pb), low=False))
    assert matches(query, _study(t=t.strftime("%H%M%S.%f"))) is (start <= t <= end)


def _iso(tm: str, low: bool) -> str:
    hh, mm, ss = tm[0:2], tm[2:4] or ("00" if low else "59"), tm[4:6] or ("00" if low else "59")
    frac = tm[7:13] or ("000000" if low else "999999")
    return f"{hh}:{mm}:{ss}.{frac}"


@given(DATES, st.integers(0, 2000))
def test_date_range_order(d: date, days: int) -> None:
    later = d + timedelta(days=days)
    assume(later.year <= 9999)
    if days:
        with pytest.raises(QueryError):
            parse_query("study", [("StudyDate", f"{_da(later)}-{_da(d)}")])


NAME_PART = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


@given(st.lists(NAME_PART, min_size=1, max_size=5))
def test_pn_key_is_idempotent(parts: list[str]) -> None:
    key = pn_key("^".join(parts))
    assert pn_key(key) == key


LATIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéèàçñøåß ÄÖÜÉ-'", min_size=1, max_size=20)


@given(st.lists(LATIN, min_size=1, max_size=5))
def test_pn_key_ignores_case_and_accents(parts: list[str]) -> None:
    name = "^".join(parts)
    assert pn_key(name.lower()) == pn_key(name.upper()) == pn_key(name)
    assert pn_key(name).isascii()


@given(st.lists(st.text(alphabet="abcdefghijklmnopüéåøçñ", min_size=1, max_size=8), min_size=1, max_size=4),
       st.data())
def test_fuzzy_prefixes_of_words_match(words: list[str], data: st.DataObject) -> None:
    stored = fuzzy_words(["^".join(words)])
    picked = data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=3))
    prefixes = [w[: data.draw(st.integers(1, len(w)))] for w in picked]
    assert fuzzy_match(query_words(" ".join(prefixes)), stored)
    query = parse_query("study", [("PatientName", " ".join(prefixes).upper()), ("fuzzymatching", "true")])
    doc = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "^".join(words)}]}}
    assert matches(query, doc)


def test_query_type_is_frozen() -> None:
    query = parse_query("study", [])
    with pytest.raises(AttributeError):
        query.limit = 5  # type: ignore[misc]  # the point: the frozen query refuses it
    assert isinstance(query, Query)
