"""Embedded schema 7: ``study_blocks`` (the studies' counts per year, month,
day and hour of the search order) stays equal to the studies under every
write, deep pages found through it are the pages plain OFFSET gives, a
version 6 index is upgraded to it, and blocks that ever disagree with the
studies never give a wrong page.

In-process on SQLite, with the store's own write functions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from dicomweb.dicom.order import study_sort_date
from dicomweb.dicom.query import parse_query
from dicomweb.store import sqlremove, sqlschema, sqlsearch
from tests.test_query_match import el
from tests.test_sqlsearch import _paged_corpus, assert_deep_pages_agree, info, paged_study, store_all


def blocks(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT width, prefix, num_studies, num_series, num_instances FROM study_blocks"
                        " ORDER BY width, prefix").fetchall()


def grouped(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """What ``study_blocks`` must hold: a GROUP BY over the studies per width."""
    return conn.execute(" UNION ALL ".join(
        f"SELECT {w}, substr(sort_date, 1, {w}) AS prefix, COUNT(*), SUM(num_series), SUM(num_instances)"
        " FROM studies GROUP BY 2" for w in sqlschema.BLOCK_WIDTHS) + " ORDER BY 1, 2").fetchall()


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    store_all(conn, _paged_corpus(60))
    yield conn
    conn.close()


def _write(conn: sqlite3.Connection, step: Any, *args: Any) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    result = step(conn, *args)
    conn.execute("COMMIT")
    return result


def _instance(study: dict[str, Any], series_uid: str, sop_uid: str) -> Any:
    series = {"0020000E": el("UI", series_uid), "00080060": el("CS", "MR"), "00200011": el("IS", 1)}
    return info(study, series, {"00080016": el("UI", "1.2.3"), "00080018": el("UI", sop_uid)})


def test_the_blocks_sum_the_studies_of_each_year_month_day_and_hour(conn: sqlite3.Connection) -> None:
    assert blocks(conn) == grouped(conn)
    by_prefix = {(w, p): n for w, p, n, _, _ in blocks(conn)}
    dated = conn.execute("SELECT COUNT(*) FROM studies WHERE sort_date LIKE '20240315%'").fetchone()[0]
    assert by_prefix[(8, "20240315")] == dated > 1
    assert by_prefix[(10, "20240315")] == conn.execute(  # a date without a time is its own hour block
        "SELECT COUNT(*) FROM studies WHERE sort_date = '20240315'").fetchone()[0] > 0
    assert by_prefix[(4, "")] == by_prefix[(10, "")] > 0  # no StudyDate: one block at every width


def test_the_blocks_follow_deletes_rejects_moves_restores_and_new_dates(
        conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[tuple[str, Any]] = [
        ("delete a study", lambda c: sqlremove.delete(c, sqlremove.Target("2.25.3"))),
        ("delete a series", lambda c: sqlremove.delete(c, sqlremove.Target("2.25.4", "2.25.4.0"))),
        ("delete an instance", lambda c: sqlremove.delete(c, sqlremove.Target("2.25.5", "2.25.5.0", "2.25.5.0.0"))),
        ("reject a study", lambda c: sqlremove.reject(c, sqlremove.Target("2.25.6"), "113001", "DCM")),
        ("reject a series", lambda c: sqlremove.reject(c, sqlremove.Target("2.25.7", "2.25.7.0"), "113001", "DCM")),
    ]
    for name, step in steps:
        _write(conn, step)
        assert blocks(conn) == grouped(conn), name
    moved = _paged_corpus(60)[-1]  # the last instance of study 60 moves into study 9, another date
    store_all(conn, [_instance(paged_study("2.25.9", 8), moved.series_uid, moved.sop_uid)])
    assert blocks(conn) == grouped(conn)
    restored = [i for i in _paged_corpus(60) if i.study_uid == "2.25.6"]  # stored again: no longer rejected
    store_all(conn, restored)
    assert blocks(conn) == grouped(conn)
    redated = {**paged_study("2.25.10", 9), "00080020": el("DA", "20110606"), "00080030": el("TM", "0606")}
    store_all(conn, [_instance(redated, "2.25.10.0", "2.25.10.0.0")])
    assert conn.execute("SELECT sort_date FROM studies WHERE study_uid='2.25.10'").fetchone()[0].startswith("20110606")
    assert blocks(conn) == grouped(conn)
    for level in ("series", "instance"):
        assert_deep_pages_agree(conn, level, monkeypatch, step=3, limits=(1, 7))


def test_an_empty_store_has_no_blocks() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    study = paged_study("2.25.1", 0)
    store_all(conn, [_instance(study, "2.25.1.1", "2.25.1.1.1")])
    assert len(blocks(conn)) == len(sqlschema.BLOCK_WIDTHS)
    _write(conn, sqlremove.delete, sqlremove.Target("2.25.1"))
    assert blocks(conn) == []  # blocks left without studies go
    assert sqlsearch.search(conn, parse_query("instance", [("offset", "5000")])) == []


# -- random dates, counts and writes ---------------------------------------------------

_DAYS = st.sampled_from([None, "19991231", "20200101", "20200131", "20201201", "20210101", "20210102"])
_TIMES = st.sampled_from([None, "00", "10", "1015", "101500", "235959.999", "23"])
_STUDY = st.tuples(_DAYS, _TIMES, st.integers(0, 4), st.integers(0, 30))


def _sort_date(day: str | None, moment: str | None) -> str:
    study = {}
    if day is not None:
        study["00080020"] = el("DA", day)
    if moment is not None:
        study["00080030"] = el("TM", moment)
    return study_sort_date(study)


def _expected_start(conn: sqlite3.Connection, weight: str, offset: int) -> tuple[str, str, int] | None:
    """The study holding row ``offset``, by Python's own sort of the studies."""
    rows = conn.execute(f"SELECT sort_date, study_uid, {weight} FROM studies").fetchall()
    rows.sort(key=lambda r: r[1])
    rows.sort(key=lambda r: r[0], reverse=True)  # stable: date descending, then UID
    for sort_date, uid, count in rows:
        if offset < count:
            return sort_date, uid, offset
        offset -= count
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(studies=st.lists(_STUDY, max_size=40),
       writes=st.lists(st.tuples(st.integers(0, 39), _STUDY | st.none()), max_size=15),
       offsets=st.lists(st.integers(0, 700), min_size=1, max_size=8))
def test_random_dates_and_writes_keep_the_blocks_exact_and_the_skip_right(
        studies: list[tuple[Any, ...]], writes: list[tuple[int, Any]], offsets: list[int]) -> None:
    """Studies of random dates and counts (a study with 0 instances is a
    moment inside a writer's transaction), then random changes of date and
    counts and deletes; the skip agrees with a plain sort of the studies at
    every offset, and never needs to add up every study when it is in range."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    for n, (day, moment, series, instances) in enumerate(studies):
        conn.execute("INSERT INTO studies (study_uid, attrs, updated_at, sort_date, num_series, num_instances)"
                     " VALUES (?, '{}', 0, ?, ?, ?)", (f"1.{n}", _sort_date(day, moment), series, instances))
    for n, change in writes:
        if change is None:
            conn.execute("DELETE FROM studies WHERE study_uid=?", (f"1.{n}",))
        else:
            day, moment, series, instances = change
            conn.execute("UPDATE studies SET sort_date=?, num_series=?, num_instances=? WHERE study_uid=?",
                         (_sort_date(day, moment), series, instances, f"1.{n}"))
    assert blocks(conn) == grouped(conn)
    levels: list[tuple[Any, str]] = [("series", "num_series"), ("instance", "num_instances")]
    for level, weight in levels:
        for offset in offsets:
            query = parse_query(level, [("offset", str(offset))])
            assert sqlsearch._study_skip(conn, query) == _expected_start(conn, weight, offset), (level, offset)
    conn.close()


# -- blocks that disagree with the studies ------------------------------------------------


def test_blocks_that_disagree_give_the_right_page_and_one_log_line(
        conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks that claim rows their studies do not hold where the page
    begins, or fewer rows than there are, are noticed (the block picked runs
    out, or the blocks end before the offset): the page comes from adding up
    every study, and one line is logged."""
    monkeypatch.setattr(sqlsearch, "_mismatch_logged", False)
    monkeypatch.setattr(sqlsearch, "SKIP_FROM", 1)
    total = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]

    def page(offset: int) -> list[dict[str, Any]]:
        return sqlsearch.search(conn, parse_query("instance", [("limit", "3"), ("offset", str(offset))]))

    right = {o: page(o) for o in (*range(0, total, 5), total - 1, total, total + 20)}
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)  # Twisted calls any callable observer
    globalLogPublisher.addObserver(observer)
    try:
        # The no-date blocks (last in the order) claim 50 instances they do not have.
        conn.execute("UPDATE study_blocks SET num_instances = num_instances + 50 WHERE prefix = ''")
        assert {o: page(o) for o in right} == right
        assert [e for e in events if "study_blocks" in e.get("log_format", "")]
        # Every year claims no instances at all.
        conn.execute("UPDATE study_blocks SET num_instances = 0 WHERE width = 4")
        assert {o: page(o) for o in right} == right
    finally:
        globalLogPublisher.removeObserver(observer)
    logged = [e for e in events if "study_blocks" in e.get("log_format", "")]
    assert len(logged) == 1 and logged[0]["weight"] == "num_instances"


# -- upgrade from version 6 -------------------------------------------------------------


def downgrade_to_6(conn: sqlite3.Connection) -> None:
    """Make a current database what a version 6 server wrote (no blocks)."""
    for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE study_blocks")
    conn.execute("UPDATE meta SET value='6' WHERE key='schema_version'")


def test_version_6_gets_its_blocks_seeded_and_kept(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = sqlite3.connect(str(tmp_path / "v6.sqlite3"), isolation_level=None)
    sqlschema.migrate(conn)
    store_all(conn, _paged_corpus(50))
    downgrade_to_6(conn)
    store_all(conn, _paged_corpus(70, seed=8)[-40:])  # written by version 6: no triggers
    events = conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
    sqlschema.migrate(conn)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("7",)
    assert blocks(conn) == grouped(conn) != []
    assert conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == events  # the feed is not seeded again
    _write(conn, sqlremove.delete, sqlremove.Target("2.25.2"))
    store_all(conn, _paged_corpus(90, seed=9)[-30:])
    assert blocks(conn) == grouped(conn)  # kept by the triggers from now on
    assert_deep_pages_agree(conn, "instance", monkeypatch, step=11, limits=(1, 9))
    sqlschema.migrate(conn)  # idempotent
    conn.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
    sqlschema.migrate(conn)  # a repeated step seeds from scratch, not on top
    assert blocks(conn) == grouped(conn)
    conn.close()
