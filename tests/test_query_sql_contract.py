"""The Filter contract is enough to write an SQL translation.

A deliberately small SQLite translation, written only from the documented
contract (index_entries at store time; one EXISTS per filter at query time,
with bound parameters only), must find exactly what the reference matcher
finds on the table of study queries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from dicomweb.dicom.query import Filter, index_entries, matches, parse_query
from tests.test_query_match import CASES, SERIES, STUDIES


def _condition(flt: Filter) -> tuple[str, list[Any]]:
    """SQL for one filter over keys(doc, path, key); values only as parameters."""
    exists = "EXISTS (SELECT 1 FROM keys k WHERE k.doc = d.id AND k.path = ? AND "
    if flt.kind == "single":
        return exists + "k.key = ?)", [flt.tag, flt.values[0]]
    if flt.kind == "list":
        marks = ",".join("?" * len(flt.values))
        return exists + f"k.key IN ({marks}))", [flt.tag, *flt.values]
    if flt.kind == "wildcard":
        return exists + "k.key GLOB ?)", [flt.tag, flt.glob_pattern()]
    if flt.kind == "range":
        low, high = flt.values
        return exists + "k.key >= coalesce(?, k.key) AND k.key <= coalesce(?, k.key))", [flt.tag, low, high]
    assert flt.kind == "fuzzy"
    parts, params = [], []
    for word in flt.values:
        parts.append(exists + "k.key >= ? AND k.key < ?)")
        params += [flt.tag + "/fuzzy", word, f"{word}\U0010ffff"]
    return " AND ".join(parts), params


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.executescript("""
        CREATE TABLE docs (id TEXT PRIMARY KEY);
        CREATE TABLE keys (doc TEXT, path TEXT, key TEXT);
        CREATE INDEX keys_path_key ON keys (path, key);
    """)
    for doc_id, doc in STUDIES.items():
        conn.execute("INSERT INTO docs VALUES (?)", (doc_id,))
        for path, keys in index_entries("study", doc).items():
            conn.executemany("INSERT INTO keys VALUES (?, ?, ?)", [(doc_id, path, k) for k in keys])
    yield conn
    conn.close()


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_sql_translation_agrees_with_reference(db: sqlite3.Connection, params: list[tuple[str, str]],
                                               expected: set[str]) -> None:
    query = parse_query("study", params)
    conditions = [_condition(f) for f in query.filters_at("study")]
    where = " AND ".join(c for c, _ in conditions) or "1"
    args = [a for _, p in conditions for a in p]
    found = {row[0] for row in db.execute(f"SELECT d.id FROM docs d WHERE {where}", args)}
    assert found == expected == {k for k, doc in STUDIES.items() if matches(query, doc)}


def test_sequence_paths_are_indexed_by_path() -> None:
    entries = index_entries("series", SERIES["a"])
    flt = parse_query("series", [("00400275.00401001", "RP*")]).filters[0]
    assert flt.tag in entries and all(k.startswith(flt.literal_prefix()) for k in entries[flt.tag])
