"""The embedded store's QIDO SQL: agrees with the reference matcher, uses
indexes (EXPLAIN QUERY PLAN), and schema version 1 databases are upgraded.

In-process on SQLite; the HTTP behaviour is in test_qido_conformance.py.
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomweb.dicom import levels
from dicomweb.dicom.analyze import InstanceInfo
from dicomweb.dicom.query import MODALITIES_IN_STUDY, matches, parse_query
from dicomweb.store import sqlschema, sqlsearch
from tests.test_query_match import CASES, INSTANCES, SERIES, STUDIES, el

# The version 1 schema exactly as released, to build old databases from.
SCHEMA_V1 = """
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    patient_name TEXT, patient_id TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_date TEXT, study_time TEXT, accession_number TEXT,
    referring_physician_name TEXT, study_id TEXT, study_description TEXT,
    modalities TEXT NOT NULL DEFAULT '', sop_classes TEXT NOT NULL DEFAULT '',
    num_series INTEGER NOT NULL DEFAULT 0, num_instances INTEGER NOT NULL DEFAULT 0,
    attrs TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT, series_number INTEGER, series_description TEXT,
    pps_start_date TEXT, pps_start_time TEXT,
    num_instances INTEGER NOT NULL DEFAULT 0,
    attrs TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX series_by_study ON series(study_uid);
CREATE TABLE instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER, rows INTEGER, columns INTEGER,
    bits_allocated INTEGER, number_of_frames INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    path TEXT NOT NULL,
    frames TEXT, bulk TEXT NOT NULL,
    attrs TEXT NOT NULL, stored_at REAL NOT NULL
);
CREATE INDEX instances_by_series ON instances(series_uid, instance_number);
CREATE INDEX instances_by_study ON instances(study_uid);
CREATE TABLE metadata (
    sop_uid TEXT PRIMARY KEY,
    json BLOB NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def info(study: dict[str, Any], series: dict[str, Any], instance: dict[str, Any]) -> InstanceInfo:
    study = {k: v for k, v in study.items() if k != MODALITIES_IN_STUDY}  # an aggregate, not stored
    uids = (study["0020000D"]["Value"][0], series["0020000E"]["Value"][0], instance["00080018"]["Value"][0])
    metadata = {**study, **series, **instance, "00180050": el("DS", 2.5)}
    return InstanceInfo(study_uid=uids[0], series_uid=uids[1], sop_uid=uids[2],
                        sop_class_uid=instance["00080016"]["Value"][0], transfer_syntax_uid="1.2.840.10008.1.2.1",
                        size=1, metadata=metadata, study=study, series=series, instance=instance, frames=None)


def corpus() -> list[InstanceInfo]:
    """Every study of the matcher tables, one series per ModalitiesInStudy value
    (so the aggregate comes out as the table says), study s1 with the SERIES and
    INSTANCES tables."""
    out = []
    for sid, study in STUDIES.items():
        uid = study["0020000D"]["Value"][0]
        if sid == "s1":
            for series in SERIES.values():
                for iid, instance in INSTANCES.items():
                    inst = copy.deepcopy(instance)
                    inst["00080018"] = el("UI", f"{series['0020000E']['Value'][0]}.{iid[1:]}")
                    out.append(info(study, series, inst))
            continue
        for n, modality in enumerate(study[MODALITIES_IN_STUDY]["Value"], start=1):
            series = {"0020000E": el("UI", f"{uid}.{n}"), "00080060": el("CS", modality), "00200011": el("IS", n)}
            instance = {"00080016": el("UI", "1.2.3"), "00080018": el("UI", f"{uid}.{n}.1")}
            out.append(info(study, series, instance))
    # s1's aggregate must be CT and SR: SERIES has exactly those modalities.
    return out


def store_all(conn: sqlite3.Connection, infos: list[InstanceInfo]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for item in infos:
        sqlschema.upsert_instance(conn, item, "x.dcm")
    sqlschema.refresh_aggregates(conn, {i.study_uid for i in infos}, {i.series_uid for i in infos})
    conn.execute("COMMIT")


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    store_all(conn, corpus())
    yield conn
    conn.close()


def _uids(conn: sqlite3.Connection, level: Any, params: list[tuple[str, str]], scope: dict[str, str] | None = None) -> set[str]:
    tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
    return {r[tag]["Value"][0] for r in sqlsearch.search(conn, parse_query(level, params, scope))}


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_study_search_agrees_with_the_reference_matcher(db: sqlite3.Connection, params: list[tuple[str, str]],
                                                        expected: set[str]) -> None:
    assert _uids(db, "study", params) == {STUDIES[s]["0020000D"]["Value"][0] for s in expected}


@pytest.mark.parametrize("params", [
    [("Modality", "CT")], [("SeriesNumber", "2\\10")], [("00400275.00401001", "RP2")],
    [("SeriesDescription", "*5mm")], [("ModalitiesInStudy", "SR")], [("PatientName", "müller*"), ("Modality", "SR")],
])
def test_series_search_agrees_with_the_reference_matcher(db: sqlite3.Connection, params: list[tuple[str, str]]) -> None:
    scope = {"0020000D": "1.2.1"}  # the other studies' series are not in the tables
    query = parse_query("series", params, scope)
    expected = {doc["0020000E"]["Value"][0] for doc in SERIES.values() if matches(query, STUDIES["s1"], doc)}
    assert _uids(db, "series", params, scope) == expected


@pytest.mark.parametrize("params", [
    [("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")], [("ImageType", "*ARY")], [("ImageType", "AXIAL")],
    [("Rows", "512")], [("PatientName", "Müller*"), ("Modality", "CT"), ("Rows", "256")],
])
def test_instance_search_agrees_with_the_reference_matcher(db: sqlite3.Connection, params: list[tuple[str, str]]) -> None:
    scope = {"0020000D": "1.2.1"}
    query = parse_query("instance", params, scope)
    expected = {f"{se['0020000E']['Value'][0]}.{iid[1:]}" for se in SERIES.values()
                for iid, doc in INSTANCES.items() if matches(query, STUDIES["s1"], se, doc)}
    assert _uids(db, "instance", params, scope) == expected


def test_aggregates_and_counts(db: sqlite3.Connection) -> None:
    [s1] = sqlsearch.search(db, parse_query("study", [("StudyInstanceUID", "1.2.1")]))
    assert s1["00080061"]["Value"] == ["CT", "SR"]
    assert s1["00201206"]["Value"] == [2] and s1["00201208"]["Value"] == [4]
    assert s1["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"]


def test_replacing_and_moving_an_instance_keeps_keys_exact() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    infos = corpus()
    store_all(conn, infos)
    moved = copy.deepcopy(infos[-1])  # s5's only instance: a CT series
    series = {"0020000E": el("UI", "9.9.9"), "00080060": el("CS", "MR")}
    study = {**moved.study, "00100010": el("PN", {"Alphabetic": "Renamed^Person"})}
    store_all(conn, [info(study, series, moved.instance)])
    assert _uids(conn, "series", [("SeriesInstanceUID", "1.2.5.1")]) == set()
    assert _uids(conn, "study", [("ModalitiesInStudy", "MR"), ("PatientName", "renamed*")]) == {"1.2.5"}
    assert _uids(conn, "study", [("PatientName", "brown*")]) == set()
    orphans = conn.execute("SELECT COUNT(*) FROM qido_keys WHERE uid = '1.2.5.1'").fetchone()[0]
    assert orphans == 0


def test_includefield_of_a_metadata_only_attribute(db: sqlite3.Connection) -> None:
    query = parse_query("instance", [("InstanceNumber", "1"), ("includefield", "SliceThickness")])
    results = sqlsearch.search(db, query)
    assert results and all(r["00180050"]["Value"] == [2.5] for r in results)
    plain = sqlsearch.search(db, parse_query("instance", [("InstanceNumber", "1")]))
    assert all("00180050" not in r for r in plain)


# -- plans -----------------------------------------------------------------------


def _plan(conn: sqlite3.Connection, level: Any, params: list[tuple[str, str]], scope: dict[str, str] | None = None) -> str:
    plan = sqlsearch.build_sql(parse_query(level, params, scope))
    return "\n".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + plan.sql, plan.args))


@pytest.mark.parametrize(("level", "params"), [
    ("study", [("PatientName", "mül*"), ("StudyDate", "20200101-20211231")]),
    ("study", [("PatientName", "hans"), ("fuzzymatching", "true")]),
    ("study", [("ModalitiesInStudy", "CT")]),
    ("study", [("StudyInstanceUID", "1.2.1,1.2.2")]),
    ("series", [("Modality", "CT"), ("PatientID", "P1")]),
    ("instance", [("SOPClassUID", "1.2.3"), ("StudyDate", "20200101-")]),
    ("instance", [("SeriesInstanceUID", "1.2.1.1")]),
    ("instance", [("SOPInstanceUID", "1.2.1.1.1")]),
])
def test_filtered_searches_never_scan_a_table(db: sqlite3.Connection, level: Any, params: list[tuple[str, str]]) -> None:
    plan = _plan(db, level, params)
    assert "SCAN" not in plan, plan  # every table is reached by SEARCH (an index lookup)


@pytest.mark.parametrize(("level", "scope"), [
    ("study", None), ("series", None), ("instance", None),
    ("series", {"0020000D": "1.2.1"}), ("instance", {"0020000D": "1.2.1"}),
    ("instance", {"0020000D": "1.2.1", "0020000E": "1.2.1.1"}),
])
def test_unfiltered_pages_walk_the_order_indexes(db: sqlite3.Connection, level: Any, scope: dict[str, str] | None) -> None:
    plan = _plan(db, level, [("limit", "1000"), ("offset", "10")], scope)
    assert "TEMP B-TREE" not in plan, plan  # no sort: rows come in order and stop at the limit
    for line in plan.splitlines():
        assert "SEARCH" in line or line.startswith("SCAN st USING INDEX studies_order"), plan


# -- the patient level --------------------------------------------------------------


def _patients(conn: sqlite3.Connection, params: list[tuple[str, str]]) -> list[str]:
    return [r["00100020"]["Value"][0] for r in sqlsearch.search(conn, parse_query("patient", params))]


@pytest.mark.parametrize("params", [
    [], [("PatientName", "mül*")], [("PatientName", "hans"), ("fuzzymatching", "true")], [("PatientID", "P_4%")],
    [("PatientID", "P?")], [("PatientBirthDate", "19700101-")], [("PatientSex", "F")], [("PatientName", "*^J*")],
])
def test_patient_search_agrees_with_the_reference_matcher(db: sqlite3.Connection, params: list[tuple[str, str]]) -> None:
    query = parse_query("patient", params)
    expected = sorted(doc["00100020"]["Value"][0] for doc in STUDIES.values()
                      if matches(query, None, patient=levels.patient_attrs(doc)))
    assert _patients(db, params) == expected  # in PatientID order


@pytest.mark.parametrize("params", [
    [("PatientName", "mül*")], [("PatientName", "hans"), ("fuzzymatching", "true")], [("PatientID", "P1")],
    [("PatientBirthDate", "19700101-"), ("PatientSex", "F")],
])
def test_patient_searches_never_scan_a_table(db: sqlite3.Connection, params: list[tuple[str, str]]) -> None:
    assert "SCAN" not in _plan(db, "patient", params)


def test_unfiltered_patient_pages_walk_the_order_index(db: sqlite3.Connection) -> None:
    plan = _plan(db, "patient", [("limit", "2"), ("offset", "1")])
    assert plan == "SCAN p USING INDEX patients_order", plan
    assert _patients(db, [("limit", "2"), ("offset", "1")]) == _patients(db, [])[1:3]


def test_patient_counts_and_the_latest_studys_attributes() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    infos = corpus()
    store_all(conn, infos)
    first = next(i for i in infos if i.study_uid == "1.2.5")  # P5, one series of one instance
    renamed = {**first.study, "0020000D": el("UI", "1.2.99"), "00100010": el("PN", {"Alphabetic": "Brown^Jon"})}
    series = {"0020000E": el("UI", "1.2.99.1"), "00080060": el("CS", "MR")}
    store_all(conn, [info(renamed, series, {"00080016": el("UI", "1.2.3"), "00080018": el("UI", f"1.2.99.1.{n}")})
                     for n in (1, 2)])
    [p5] = sqlsearch.search(conn, parse_query("patient", [("PatientID", "P5")]))
    assert [p5[t]["Value"][0] for t in levels.PATIENT_COUNT_TAGS] == [2, 2, 3]
    assert p5["00100010"]["Value"][0]["Alphabetic"] == "Brown^Jon"  # the study stored last
    assert _patients(conn, [("PatientName", "brown^john")]) == []
    # The instances of the newer study leave: the older study's name is back.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM instances WHERE study_uid='1.2.99'")
    sqlschema.refresh_aggregates(conn, {"1.2.99"}, {"1.2.99.1"})
    conn.execute("COMMIT")
    [p5] = sqlsearch.search(conn, parse_query("patient", [("PatientName", "brown^john")]))
    assert [p5[t]["Value"][0] for t in levels.PATIENT_COUNT_TAGS] == [1, 1, 1]
    assert conn.execute("SELECT COUNT(*) FROM qido_keys WHERE level=3").fetchone()[0] > 0
    assert conn.execute("SELECT COUNT(*) FROM patients").fetchone() == (len(STUDIES),)


def downgrade_to_4(conn: sqlite3.Connection) -> None:
    """Make a current database what a version 4 server wrote (no change feed)."""
    conn.execute("DROP TABLE changes")
    conn.execute("UPDATE meta SET value='4' WHERE key='schema_version'")


def downgrade_to_3(conn: sqlite3.Connection) -> None:
    """Make a current database what a version 3 server wrote."""
    downgrade_to_4(conn)
    conn.execute("DROP INDEX studies_by_patient")
    conn.execute("ALTER TABLE studies DROP COLUMN patient_key")
    conn.execute("DROP TABLE patients")
    conn.execute("DELETE FROM qido_keys WHERE level=3")
    conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")


def test_a_version_3_database_gets_its_patients(tmp_path: Any) -> None:
    conn = sqlite3.connect(str(tmp_path / "v3.sqlite3"), isolation_level=None)
    sqlschema.migrate(conn)
    store_all(conn, corpus())
    before = sqlsearch.search(conn, parse_query("patient", [("includefield", "all")]))
    keys = conn.execute("SELECT COUNT(*) FROM qido_keys").fetchone()
    downgrade_to_3(conn)
    assert sqlsearch.search(conn, parse_query("study", [("limit", "1")]))  # a version 3 database
    sqlschema.migrate(conn)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(sqlschema.SCHEMA_VERSION),)
    assert sqlsearch.search(conn, parse_query("patient", [("includefield", "all")])) == before
    assert conn.execute("SELECT COUNT(*) FROM qido_keys").fetchone() == keys
    sqlschema.migrate(conn)  # idempotent
    conn.close()


# -- upgrade from version 1 ---------------------------------------------------------


def test_a_version_1_database_is_upgraded_and_searchable(db: sqlite3.Connection, tmp_path: Any) -> None:
    old = sqlite3.connect(str(tmp_path / "v1.sqlite3"), isolation_level=None)
    old.executescript(SCHEMA_V1)
    for table in ("studies", "series", "instances", "metadata"):
        columns = [r[1] for r in old.execute(f"PRAGMA table_info({table})")]
        rows = db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        old.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(columns))})", rows)
    sqlschema.migrate(old)
    assert old.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(sqlschema.SCHEMA_VERSION),)
    assert old.execute("SELECT COUNT(*) FROM qido_keys").fetchone() == db.execute("SELECT COUNT(*) FROM qido_keys").fetchone()
    for params, _ in CASES:
        query = parse_query("study", params)
        assert sqlsearch.search(old, query) == sqlsearch.search(db, query)
    query = parse_query("instance", [("limit", "3"), ("offset", "2")])
    assert sqlsearch.search(old, query) == sqlsearch.search(db, query)
    query = parse_query("patient", [("includefield", "all")])
    assert sqlsearch.search(old, query) == sqlsearch.search(db, query)
    assert "TEMP B-TREE" not in _plan(old, "instance", [("limit", "10")])
    sqlschema.migrate(old)  # idempotent
    old.close()


def test_a_newer_schema_is_refused(tmp_path: Any) -> None:
    conn = sqlite3.connect(str(tmp_path / "new.sqlite3"), isolation_level=None)
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "INSERT INTO meta VALUES ('schema_version', '99');")
    with pytest.raises(RuntimeError, match="newer"):
        sqlschema.migrate(conn)


#: (StudyDate, StudyTime) of the paged studies, in turn: years, months, days
#: and hours apart, several studies at one moment, no StudyDate (sorted last),
#: no StudyTime on a day that also has timed studies, times of 2 and 4 digits.
PAGED_DATES: list[tuple[str | None, str | None]] = [
    ("20240315", "101500"), ("20240315", "101500"), ("20240315", None), ("20240315", "23"),
    ("20240315", "1015"), ("20240316", "080000"), ("20231231", "235959.5"), ("20230101", None),
    (None, None), (None, "101500"), ("19991231", "000000"), ("20240401", "101500"), ("20240315", "101500"),
    ("20200101", "120000"), ("20200102", None), ("20240315", None),
]


def paged_study(uid: str, n: int) -> dict[str, Any]:
    """Study ``n`` of the paged corpus, dated by :data:`PAGED_DATES`."""
    day, moment = PAGED_DATES[n % len(PAGED_DATES)]
    study = {"0020000D": el("UI", uid), "00100010": el("PN", {"Alphabetic": f"P{n}"})}
    if day is not None:
        study["00080020"] = el("DA", day)
    if moment is not None:
        study["00080030"] = el("TM", moment)
    return study


def _paged_corpus(studies: int, seed: int = 7) -> list[InstanceInfo]:
    """Studies of 1 to 6 series of 1 to 4 instances, dated by :data:`PAGED_DATES` (ties in the order)."""
    import random

    rng = random.Random(seed)
    out = []
    for s in range(studies):
        uid = f"2.25.{s + 1}"
        study = paged_study(uid, s)
        for n in range(rng.randint(1, 6)):
            series = {"0020000E": el("UI", f"{uid}.{n}"), "00080060": el("CS", "CT"), "00200011": el("IS", n)}
            for k in range(rng.randint(1, 4)):
                instance = {"00080016": el("UI", "1.2.3"), "00080018": el("UI", f"{uid}.{n}.{k}"),
                            "00200013": el("IS", k)}
                out.append(info(study, series, instance))
    return out


def page_uids(conn: sqlite3.Connection, level: Any, offset: int, limit: int) -> list[str]:
    """The UIDs of an unfiltered page of ``level`` (series or instance)."""
    tag = {"series": "0020000E", "instance": "00080018"}[level]
    query = parse_query(level, [("limit", str(limit)), ("offset", str(offset))])
    return [r[tag]["Value"][0] for r in sqlsearch.search(conn, query)]


def assert_deep_pages_agree(conn: sqlite3.Connection, level: Any, monkeypatch: pytest.MonkeyPatch,
                            step: int = 7, limits: tuple[int, ...] = (1, 5, 40)) -> None:
    """Pages that skip whole studies give the rows plain OFFSET pages give, at
    every ``step``-th offset, the last row and past the end; only past the end
    do the studies' counts get added up one by one."""
    total = conn.execute(f"SELECT COUNT(*) FROM {'series' if level == 'series' else 'instances'}").fetchone()[0]
    offsets = (*range(0, total + 3, step), total - 1, total)
    monkeypatch.setattr(sqlsearch, "SKIP_FROM", 1 << 40)
    stepped = {(o, n): page_uids(conn, level, o, n) for o in offsets for n in limits}
    monkeypatch.setattr(sqlsearch, "SKIP_FROM", 1)
    scanned: list[int] = []
    scan = sqlsearch._scan_skip

    def counted(conn: sqlite3.Connection, weight: str, offset: int, mismatch: bool) -> Any:
        scanned.append(offset)
        return scan(conn, weight, offset, mismatch)

    monkeypatch.setattr(sqlsearch, "_scan_skip", counted)
    skipped = {(o, n): page_uids(conn, level, o, n) for o, n in stepped}
    monkeypatch.setattr(sqlsearch, "_scan_skip", scan)
    assert skipped == stepped
    assert all(o >= total for o in scanned), scanned
    assert stepped[(total, limits[-1])] == [] and len(stepped[(total - 1, limits[-1])]) == 1


@pytest.mark.parametrize("level", ["series", "instance"])
def test_deep_pages_skip_whole_studies_and_give_the_same_rows(level: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unfiltered page far into the order starts from the study its first
    row is in (found by the blocks' and studies' counts): the same rows as
    stepping over every row before it, at every offset, the last page and past
    the end, over studies years, months, days and hours apart, at the same
    moment, without a date or without a time."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    store_all(conn, _paged_corpus(120))
    assert_deep_pages_agree(conn, level, monkeypatch)


def test_version_5_gets_the_counted_order_index_and_keeps_its_feed(tmp_path: Any) -> None:
    conn = sqlite3.connect(str(tmp_path / "v5.db"), isolation_level=None)
    sqlschema.migrate(conn)
    store_all(conn, corpus())
    events = conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
    conn.execute("DROP INDEX studies_order_counts")
    conn.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    sqlschema.migrate(conn)
    assert conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == events  # not seeded again
    plan = " ".join(str(r[-1]) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT sort_date, study_uid, num_instances FROM studies ORDER BY sort_date DESC, study_uid"))
    assert "COVERING INDEX studies_order_counts" in plan, plan


# -- repeated study and series rows in one batch ----------------------------------

_STUDY_UIDS, _SERIES_UIDS, _SOP_UIDS = ("1.7.1", "1.7.2"), ("1.7.1.1", "1.7.1.2", "1.7.2.1"), ("1.7.9.1", "1.7.9.2", "1.7.9.3")


@st.composite
def _batch(draw: st.DrawFn) -> list[InstanceInfo]:
    """Instances of a few studies and series, some stored twice, series that
    move between studies and instances between series, study attributes that
    change from one instance to the next."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        study_uid = draw(st.sampled_from(_STUDY_UIDS))
        name = draw(st.sampled_from(["Brown^A", "Brown^B"]))
        study = {"0020000D": el("UI", study_uid), "00100010": el("PN", {"Alphabetic": name}),
                 "00100020": el("LO", draw(st.sampled_from(["P1", "P2"]))), "00080020": el("DA", "20240101")}
        series = {"0020000E": el("UI", draw(st.sampled_from(_SERIES_UIDS))),
                  "00080060": el("CS", draw(st.sampled_from(["CT", "MR"])))}
        instance = {"00080016": el("UI", "1.2.3"), "00080018": el("UI", draw(st.sampled_from(_SOP_UIDS)))}
        out.append(info(study, series, instance))
    return out


def _rows(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's content but the times of writing."""
    times = {"updated_at", "stored_at", "at"}
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    out = {}
    for table in tables:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in times]
        out[table] = sorted(conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall(), key=repr)
    return out


def _store_batches(batches: list[list[InstanceInfo]], remember: bool) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlschema.migrate(conn)
    for batch in batches:
        written = sqlschema.Written() if remember else None
        conn.execute("BEGIN IMMEDIATE")
        for item in batch:
            sqlschema.upsert_instance(conn, item, "x.dcm", written)
            if written is not None:
                written.remember(item)
        sqlschema.refresh_aggregates(conn, {i.study_uid for i in batch}, {i.series_uid for i in batch})
        conn.execute("COMMIT")
    return _rows(conn)


@settings(max_examples=150, deadline=None)
@given(st.lists(_batch(), min_size=1, max_size=3))
def test_a_batch_that_skips_repeated_study_and_series_rows_leaves_the_same_index(
        batches: list[list[InstanceInfo]]) -> None:
    assert _store_batches(batches, remember=True) == _store_batches(batches, remember=False)
