"""The embedded store's SQLite schema: creation, upgrades, writes, searches.

Plain functions over a ``sqlite3.Connection`` (called in worker threads).
Every value reaches SQL as a bound parameter, never by string formatting.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from ..dicom.analyze import InstanceInfo, dumps

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
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
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or upgrade it step by step to SCHEMA_VERSION."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"index schema {version} is newer than this server ({SCHEMA_VERSION})")
    if version == 0:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA_V1.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")


def _first(attrs: dict[str, Any], tag: str) -> Any:
    """The first value of an attribute in DICOM JSON (PN as its Alphabetic group)."""
    element = attrs.get(tag)
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        return value.get("Alphabetic")
    return value


def _int(attrs: dict[str, Any], tag: str) -> int | None:
    value = _first(attrs, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def upsert_instance(conn: sqlite3.Connection, info: InstanceInfo, path: str) -> None:
    """Insert or replace one instance and its study/series rows."""
    now = time.time()
    study, series, inst = info.study, info.series, info.instance
    conn.execute(
        "INSERT INTO studies (study_uid, patient_name, patient_id, patient_birth_date, patient_sex,"
        " study_date, study_time, accession_number, referring_physician_name, study_id,"
        " study_description, attrs, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(study_uid) DO UPDATE SET patient_name=excluded.patient_name,"
        " patient_id=excluded.patient_id, patient_birth_date=excluded.patient_birth_date,"
        " patient_sex=excluded.patient_sex, study_date=excluded.study_date,"
        " study_time=excluded.study_time, accession_number=excluded.accession_number,"
        " referring_physician_name=excluded.referring_physician_name, study_id=excluded.study_id,"
        " study_description=excluded.study_description, attrs=excluded.attrs,"
        " updated_at=excluded.updated_at",
        (info.study_uid, _first(study, "00100010"), _first(study, "00100020"),
         _first(study, "00100030"), _first(study, "00100040"), _first(study, "00080020"),
         _first(study, "00080030"), _first(study, "00080050"), _first(study, "00080090"),
         _first(study, "00200010"), _first(study, "00081030"), dumps(study).decode(), now),
    )
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, series_description,"
        " pps_start_date, pps_start_time, attrs, updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(series_uid) DO UPDATE SET study_uid=excluded.study_uid,"
        " modality=excluded.modality, series_number=excluded.series_number,"
        " series_description=excluded.series_description, pps_start_date=excluded.pps_start_date,"
        " pps_start_time=excluded.pps_start_time, attrs=excluded.attrs, updated_at=excluded.updated_at",
        (info.series_uid, info.study_uid, _first(series, "00080060"), _int(series, "00200011"),
         _first(series, "0008103E"), _first(series, "00400244"), _first(series, "00400245"),
         dumps(series).decode(), now),
    )
    old = conn.execute("SELECT study_uid, series_uid FROM instances WHERE sop_uid=?", (info.sop_uid,)).fetchone()
    conn.execute(
        "INSERT OR REPLACE INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,"
        " instance_number, rows, columns, bits_allocated, number_of_frames, transfer_syntax_uid,"
        " size, path, frames, bulk, attrs, stored_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (info.sop_uid, info.series_uid, info.study_uid, info.sop_class_uid,
         _int(inst, "00200013"), _int(inst, "00280010"), _int(inst, "00280011"),
         _int(inst, "00280100"), _int(inst, "00280008"), info.transfer_syntax_uid, info.size,
         path, None if info.frames is None else json.dumps(info.frames, separators=(",", ":")),
         json.dumps(info.bulk, separators=(",", ":")), dumps(inst).decode(), now),
    )
    conn.execute("INSERT OR REPLACE INTO metadata (sop_uid, json) VALUES (?, ?)",
                 (info.sop_uid, info.metadata_bytes()))
    if old is not None and (old[0], old[1]) != (info.study_uid, info.series_uid):
        # The instance moved: the aggregates of where it was must be redone too.
        refresh_aggregates(conn, {old[0]}, {old[1]})


def refresh_aggregates(conn: sqlite3.Connection, studies: Iterable[str], series: Iterable[str]) -> None:
    """Recompute counts and ModalitiesInStudy/SOPClassesInStudy exactly.

    Runs inside the writer's transaction, from indexed counts, so the numbers
    are exact even when an instance moved or was replaced. Rows left empty are
    removed.
    """
    for series_uid in series:
        (count,) = conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid=?", (series_uid,)).fetchone()
        if count:
            conn.execute("UPDATE series SET num_instances=? WHERE series_uid=?", (count, series_uid))
        else:
            conn.execute("DELETE FROM series WHERE series_uid=?", (series_uid,))
    for study_uid in studies:
        n_series, n_instances = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(num_instances), 0) FROM series WHERE study_uid=?", (study_uid,)
        ).fetchone()
        if not n_series:
            conn.execute("DELETE FROM studies WHERE study_uid=?", (study_uid,))
            continue
        modalities = sorted({m for (m,) in conn.execute(
            "SELECT DISTINCT modality FROM series WHERE study_uid=? AND modality IS NOT NULL", (study_uid,))})
        classes = sorted({c for (c,) in conn.execute(
            "SELECT DISTINCT sop_class_uid FROM instances WHERE study_uid=?", (study_uid,))})
        conn.execute(
            "UPDATE studies SET num_series=?, num_instances=?, modalities=?, sop_classes=? WHERE study_uid=?",
            (n_series, n_instances, _multi(modalities), _multi(classes), study_uid),
        )


def _multi(values: list[str]) -> str:
    """Multi-valued column: ``\\A\\B\\`` so a value is matched with LIKE '%\\A\\%'."""
    return "\\" + "\\".join(values) + "\\" if values else ""


def split_multi(text: str) -> list[str]:
    return [v for v in text.split("\\") if v]


def search(conn: sqlite3.Connection, query: Any) -> list[dict[str, Any]]:
    """Answer a QIDO query (see ``dicomweb.store.sqlsearch``)."""
    from . import sqlsearch

    return sqlsearch.search(conn, query)
