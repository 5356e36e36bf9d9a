"""The embedded store's SQLite schema: creation, upgrades, writes, searches.

Plain functions over a ``sqlite3.Connection`` (called in worker threads).
Every value reaches SQL as a bound parameter, never by string formatting.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..dicom import levels
from ..dicom.analyze import InstanceInfo
from ..dicom.dicomjson import dumps, first_text, int_value
from ..dicom.order import LEVEL_UIDS, NO_NUMBER, sort_number, study_sort_date
from ..dicom.query import MODALITIES_IN_STUDY, Level, index_entries
from . import sqlchanges

SOP_CLASSES_IN_STUDY = "00080062"

SCHEMA_VERSION = 7

#: Level numbers stored in ``qido_keys.level``.
STUDY, SERIES, INSTANCE, PATIENT = 0, 1, 2, 3

# Version 2. Every column used by an ORDER BY is NOT NULL and each order index
# is UNIQUE: only then can SQLite prove that a nested loop over the three order
# indexes yields rows already in order, so an unfiltered page walks indexes and
# stops after ``limit`` rows instead of sorting every instance.
_TABLES: dict[str, str] = {
    "studies": """
    study_uid TEXT NOT NULL PRIMARY KEY,
    patient_name TEXT, patient_id TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_date TEXT, study_time TEXT, accession_number TEXT,
    referring_physician_name TEXT, study_id TEXT, study_description TEXT,
    modalities TEXT NOT NULL DEFAULT '', sop_classes TEXT NOT NULL DEFAULT '',
    num_series INTEGER NOT NULL DEFAULT 0, num_instances INTEGER NOT NULL DEFAULT 0,
    attrs TEXT NOT NULL, updated_at REAL NOT NULL,
    sort_date TEXT NOT NULL DEFAULT ''""",
    "series": f"""
    series_uid TEXT NOT NULL PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT, series_number INTEGER, series_description TEXT,
    pps_start_date TEXT, pps_start_time TEXT,
    num_instances INTEGER NOT NULL DEFAULT 0,
    attrs TEXT NOT NULL, updated_at REAL NOT NULL,
    sort_number INTEGER NOT NULL DEFAULT {NO_NUMBER}""",
    "instances": f"""
    sop_uid TEXT NOT NULL PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER, rows INTEGER, columns INTEGER,
    bits_allocated INTEGER, number_of_frames INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    path TEXT NOT NULL,
    frames TEXT, bulk TEXT NOT NULL,
    attrs TEXT NOT NULL, stored_at REAL NOT NULL,
    sort_number INTEGER NOT NULL DEFAULT {NO_NUMBER}""",
}

#: Version 6: the studies in search order with their counts, so a deep
#: unfiltered page finds its first study from the index alone (sqlsearch's
#: study skip: 20,000 studies in 8 ms instead of 18 ms through the table).
_INDEX_V6 = """
CREATE INDEX IF NOT EXISTS studies_order_counts ON studies(sort_date DESC, study_uid, num_instances, num_series);
"""

#: Version 7: the studies' counts summed per block of the search order, so a
#: deep unfiltered page finds its first study by reading a few hundred block
#: rows instead of every study before it (sqlsearch's study skip: 20,000
#: studies of 50 instances a few days apart, offset 500,000: 6.3-7.2 ms with
#: schema 6's index, 0.07-0.14 ms through ~100 block rows and one study;
#: ``python bench/study_skip.py``, 5 runs each). A study's count update costs
#: a writer ~12 us more (8 -> 20 us in memory, same bench): a STOW batch
#: makes one per study it touched.
#: A block of width w (4, 6, 8, 10: the year, month, day, hour of the
#: fixed-width ``sort_date``) holds the studies whose ``sort_date`` starts with
#: its prefix; a ``sort_date`` shorter than w ('' for no date, a date without
#: a time at width 10) is its own block. Each block is one contiguous run of
#: the search order, and truncating is monotone, so the blocks of a width in
#: ``prefix DESC`` order are in search order too.
#:
#: Triggers on ``studies`` keep the sums exact inside every writer's
#: transaction, whichever code wrote the row (STOW, DIMSE, delete, reject,
#: restore, an upgrade's recomputation): a new study enters its four blocks, a
#: deleted one leaves them, one whose ``sort_date`` changed leaves the old ones
#: and enters the new, one whose counts changed adds the differences; a block
#: left without studies (``num_studies``) goes.
BLOCK_WIDTHS = (4, 6, 8, 10)
_WIDTH_ROWS = "(VALUES " + ", ".join(f"({w})" for w in BLOCK_WIDTHS) + ")"


def _block_add(row: str, sign: str) -> str:
    """One statement adding (``+``) or subtracting (``-``) trigger row
    ``row`` (``new`` or ``old``) to or from its blocks."""
    return (f"INSERT INTO study_blocks (width, prefix, num_studies, num_series, num_instances)"
            f" SELECT column1, substr({row}.sort_date, 1, column1), {sign}1, {sign}{row}.num_series,"
            f" {sign}{row}.num_instances FROM {_WIDTH_ROWS} WHERE true"
            " ON CONFLICT (width, prefix) DO UPDATE SET num_studies = num_studies + excluded.num_studies,"
            " num_series = num_series + excluded.num_series, num_instances = num_instances + excluded.num_instances;")


#: Blocks the old row left without studies go (one primary key lookup each).
_BLOCK_PRUNE = "\n    ".join(f"DELETE FROM study_blocks WHERE width = {w} AND prefix = substr(old.sort_date, 1, {w})"
                        " AND num_studies = 0;" for w in BLOCK_WIDTHS)

_BLOCK_RECOUNT = "\n    ".join(
    "UPDATE study_blocks SET num_series = num_series + new.num_series - old.num_series,"
    " num_instances = num_instances + new.num_instances - old.num_instances"
    f" WHERE width = {w} AND prefix = substr(new.sort_date, 1, {w});" for w in BLOCK_WIDTHS)

#: Statements, not a script: a trigger body holds semicolons.
_BLOCKS_V7 = (
    """CREATE TABLE IF NOT EXISTS study_blocks (
    width INTEGER NOT NULL, prefix TEXT NOT NULL,
    num_studies INTEGER NOT NULL, num_series INTEGER NOT NULL, num_instances INTEGER NOT NULL,
    PRIMARY KEY (width, prefix)
) WITHOUT ROWID""",
    f"""CREATE TRIGGER IF NOT EXISTS study_blocks_insert AFTER INSERT ON studies BEGIN
    {_block_add("new", "+")}
END""",
    f"""CREATE TRIGGER IF NOT EXISTS study_blocks_delete AFTER DELETE ON studies BEGIN
    {_block_add("old", "-")}
    {_BLOCK_PRUNE}
END""",
    # A study moved in the order: out of its old blocks, into its new ones.
    f"""CREATE TRIGGER IF NOT EXISTS study_blocks_move AFTER UPDATE OF sort_date ON studies
WHEN old.sort_date IS NOT new.sort_date BEGIN
    {_block_add("new", "+")}
    {_block_add("old", "-")}
    {_BLOCK_PRUNE}
END""",
    # Counts changed in place (what every STOW batch does): the differences,
    # one primary key update per block (8 -> 20 us a study in memory, against
    # 29-35 us moving it out of its blocks and back in).
    f"""CREATE TRIGGER IF NOT EXISTS study_blocks_recount AFTER UPDATE OF num_series, num_instances ON studies
WHEN old.sort_date IS new.sort_date
     AND (old.num_series IS NOT new.num_series OR old.num_instances IS NOT new.num_instances) BEGIN
    {_BLOCK_RECOUNT}
END""",
)

_INDEXES_V2 = """
CREATE UNIQUE INDEX studies_order ON studies(sort_date DESC, study_uid);
CREATE UNIQUE INDEX series_order ON series(study_uid, sort_number, series_uid);
CREATE UNIQUE INDEX instances_order ON instances(series_uid, sort_number, sop_uid);
CREATE INDEX instances_by_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS metadata (
    sop_uid TEXT PRIMARY KEY,
    json BLOB NOT NULL
);
-- QIDO match keys (dicom.query.index_entries): one row per normalised key.
-- The primary key is the search index: path = ? AND key <op> ? yields uids.
CREATE TABLE qido_keys (
    path TEXT NOT NULL, key TEXT NOT NULL, uid TEXT NOT NULL, level INTEGER NOT NULL,
    PRIMARY KEY (path, key, uid, level)
) WITHOUT ROWID;
CREATE INDEX qido_keys_owner ON qido_keys(uid, level);
"""

# Version 3: rejected instances (README "Delete and reject"), out of every
# table a search or a retrieval reads, so QIDO and WADO stay unchanged. The
# row keeps what a restore or an audit needs; the file stays in place until
# the instance is deleted or purged.
_REJECTED_V3 = """
CREATE TABLE rejected (
    sop_uid TEXT NOT NULL PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    code TEXT NOT NULL, scheme TEXT NOT NULL,
    rejected_at REAL NOT NULL,
    instance TEXT NOT NULL,
    study_attrs TEXT NOT NULL, series_attrs TEXT NOT NULL,
    metadata BLOB
);
CREATE INDEX rejected_by_study ON rejected(study_uid);
CREATE INDEX rejected_by_series ON rejected(series_uid);
CREATE INDEX rejected_by_age ON rejected(rejected_at)
"""


# Version 4: the patient level (README "Patients"). A patient row per
# (PatientID, IssuerOfPatientID) of the visible studies, keyed by
# :func:`patient_key`, with the attributes of the study that most recently
# received an instance and exact counts; its match keys are ``qido_keys`` rows
# of level PATIENT (paths ``patient/...``). ``studies.patient_key`` says
# which patient a study counts for, so the rows are recomputed from an index.
_PATIENTS_V4 = """
CREATE TABLE patients (
    patient_key TEXT NOT NULL PRIMARY KEY,
    patient_id TEXT NOT NULL, issuer TEXT NOT NULL,
    attrs TEXT NOT NULL,
    num_studies INTEGER NOT NULL, num_series INTEGER NOT NULL, num_instances INTEGER NOT NULL
);
CREATE UNIQUE INDEX patients_order ON patients(patient_id, issuer);
ALTER TABLE studies ADD COLUMN patient_key TEXT;
CREATE INDEX studies_by_patient ON studies(patient_key, updated_at)
"""


def _script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction; run statement by statement.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _create_tables(conn: sqlite3.Connection, suffix: str = "") -> None:
    for name, body in _TABLES.items():
        conn.execute(f"CREATE TABLE {name}{suffix} ({body})")


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or upgrade it step by step to SCHEMA_VERSION.

    Every step runs in one transaction: a crash during an upgrade leaves the
    previous version intact, and the next start upgrades again.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"index schema {version} is newer than this server ({SCHEMA_VERSION})")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 0:
            _create_tables(conn)
            _script(conn, _INDEXES_V2)
        elif version == 1:
            _upgrade_1_to_2(conn)
        if version < 3:
            _script(conn, _REJECTED_V3)  # 0, 1 and 2 all lack it
        if version < 4:
            _upgrade_to_4(conn)
        if version < 5:
            # Version 5: the change feed (sqlchanges). A store upgraded from an
            # older version starts its feed with one Create per instance it holds.
            _script(conn, sqlchanges.SCHEMA_V5)
            sqlchanges.seed(conn)
        _script(conn, _INDEX_V6)
        _upgrade_to_7(conn)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _upgrade_1_to_2(conn: sqlite3.Connection) -> None:
    """Rebuild the level tables with NOT NULL keys and sort columns (SQLite
    cannot add NOT NULL to a column in place), then fill sort columns and
    ``qido_keys`` from the level JSON each row already stores."""
    _create_tables(conn, "_v2")
    for name in _TABLES:
        columns = ", ".join(r[1] for r in conn.execute(f"PRAGMA table_info({name})"))
        conn.execute(f"INSERT INTO {name}_v2 ({columns}) SELECT {columns} FROM {name}")
        conn.execute(f"DROP TABLE {name}")  # drops its v1 indexes too
        conn.execute(f"ALTER TABLE {name}_v2 RENAME TO {name}")
    _script(conn, _INDEXES_V2)
    for uid, attrs in conn.execute("SELECT series_uid, attrs FROM series").fetchall():
        conn.execute("UPDATE series SET sort_number=? WHERE series_uid=?", (sort_number(json.loads(attrs), "00200011"), uid))
        index_keys(conn, SERIES, uid, json.loads(attrs))
    for uid, attrs in conn.execute("SELECT sop_uid, attrs FROM instances").fetchall():
        conn.execute("UPDATE instances SET sort_number=? WHERE sop_uid=?", (sort_number(json.loads(attrs), "00200013"), uid))
        index_keys(conn, INSTANCE, uid, json.loads(attrs))
    for (uid,) in conn.execute("SELECT study_uid FROM studies").fetchall():
        _refresh_study_keys(conn, uid)


def _upgrade_to_7(conn: sqlite3.Connection) -> None:
    """The block table and its triggers, the sums seeded from the studies
    (again from scratch when a step is repeated)."""
    for statement in _BLOCKS_V7:
        conn.execute(statement)
    conn.execute("DELETE FROM study_blocks")
    for width in BLOCK_WIDTHS:
        conn.execute("INSERT INTO study_blocks (width, prefix, num_studies, num_series, num_instances)"
                     " SELECT ?, substr(sort_date, 1, ?), COUNT(*), SUM(num_series), SUM(num_instances)"
                     " FROM studies GROUP BY 2", (width, width))


def _upgrade_to_4(conn: sqlite3.Connection) -> None:
    """The patients table, filled from the studies already stored."""
    _script(conn, _PATIENTS_V4)
    keys = set()
    for uid, attrs in conn.execute("SELECT study_uid, attrs FROM studies").fetchall():
        key = patient_key(*levels.patient_identity(json.loads(attrs)))
        conn.execute("UPDATE studies SET patient_key=? WHERE study_uid=?", (key, uid))
        keys.add(key)
    refresh_patients(conn, keys)


_LEVEL_NAMES: dict[int, Level] = {STUDY: "study", SERIES: "series", INSTANCE: "instance", PATIENT: "patient"}


def index_keys(conn: sqlite3.Connection, level: int, uid: str, doc: dict[str, Any]) -> None:
    """Replace the QIDO match keys of one study, series or instance (not
    its UIDs: those are matched on the tables' own columns)."""
    conn.execute("DELETE FROM qido_keys WHERE uid=? AND level=?", (uid, level))
    rows = [(path, key, uid, level)
            for path, keys in index_entries(_LEVEL_NAMES[level], doc).items() if path not in LEVEL_UIDS
            for key in keys]
    conn.executemany("INSERT OR IGNORE INTO qido_keys (path, key, uid, level) VALUES (?,?,?,?)", rows)


def _refresh_study_keys(conn: sqlite3.Connection, uid: str) -> None:
    """Sort key and match keys of a study, aggregates (ModalitiesInStudy,
    SOPClassesInStudy) included, from what the studies row holds now."""
    row = conn.execute("SELECT attrs, modalities, sop_classes FROM studies WHERE study_uid=?", (uid,)).fetchone()
    if row is None:
        return
    doc = json.loads(row[0])
    modalities, classes = split_multi(row[1]), split_multi(row[2])
    doc[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
    conn.execute("UPDATE studies SET sort_date=? WHERE study_uid=?", (study_sort_date(doc), uid))
    index_keys(conn, STUDY, uid, doc)
    # Not matchable in the query model (yet) but cheap, and kept exact with the rest.
    conn.executemany("INSERT OR IGNORE INTO qido_keys (path, key, uid, level) VALUES (?,?,?,?)",
                     [(SOP_CLASSES_IN_STUDY, c, uid, STUDY) for c in classes])


@dataclass
class Written:
    """The study and series rows the instance indexed just before wrote, in
    this transaction. An instance of the same study and series with the same
    attributes (most of a batch: a series sent together) leaves those rows as
    they are: the upserts would rewrite identical values, two statements and
    two JSON encodings per instance. Only consecutive repeats are skipped, so
    ``updated_at`` still orders studies by when they last received an instance."""

    study: tuple[str, dict[str, Any]] | None = None
    series: tuple[str, str, dict[str, Any]] | None = None

    def remember(self, info: InstanceInfo | None) -> None:
        """``info`` was indexed (None: the last instance was rolled back)."""
        self.study = None if info is None else (info.study_uid, info.study)
        self.series = None if info is None else (info.series_uid, info.study_uid, info.series)


def upsert_instance(conn: sqlite3.Connection, info: InstanceInfo, path: str, written: Written | None = None) -> None:
    """Insert or replace one instance and its study/series rows."""
    written = written or Written()
    now = time.time()
    old = conn.execute("SELECT study_uid, series_uid FROM instances WHERE sop_uid=?", (info.sop_uid,)).fetchone()
    if written.study != (info.study_uid, info.study):
        _upsert_study(conn, info, now)
    series_was = None
    if written.series != (info.series_uid, info.study_uid, info.series):
        series_was = _upsert_series(conn, info, now)
    _upsert_instance_row(conn, info, path, now)
    if old is not None and tuple(old) != (info.study_uid, info.series_uid):
        # The instance moved: the aggregates of where it was must be redone too.
        refresh_aggregates(conn, {old[0]}, {old[1]})
    if series_was is not None and series_was != info.study_uid:
        # The series now belongs to another study: its old study lost it.
        refresh_aggregates(conn, {series_was}, set())


def _upsert_study(conn: sqlite3.Connection, info: InstanceInfo, now: float) -> None:
    study = info.study
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
        (info.study_uid, first_text(study, "00100010"), first_text(study, "00100020"),
         first_text(study, "00100030"), first_text(study, "00100040"), first_text(study, "00080020"),
         first_text(study, "00080030"), first_text(study, "00080050"), first_text(study, "00080090"),
         first_text(study, "00200010"), first_text(study, "00081030"), dumps(study).decode(), now),
    )


def _upsert_series(conn: sqlite3.Connection, info: InstanceInfo, now: float) -> str | None:
    """Returns the study the series belonged to before, if it existed."""
    series = info.series
    was = conn.execute("SELECT study_uid FROM series WHERE series_uid=?", (info.series_uid,)).fetchone()
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, series_description,"
        " pps_start_date, pps_start_time, attrs, updated_at, sort_number) VALUES (?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(series_uid) DO UPDATE SET study_uid=excluded.study_uid,"
        " modality=excluded.modality, series_number=excluded.series_number,"
        " series_description=excluded.series_description, pps_start_date=excluded.pps_start_date,"
        " pps_start_time=excluded.pps_start_time, attrs=excluded.attrs, updated_at=excluded.updated_at,"
        " sort_number=excluded.sort_number",
        (info.series_uid, info.study_uid, first_text(series, "00080060"), int_value(series, "00200011"),
         first_text(series, "0008103E"), first_text(series, "00400244"), first_text(series, "00400245"),
         dumps(series).decode(), now, sort_number(series, "00200011")),
    )
    return None if was is None else str(was[0])


def _upsert_instance_row(conn: sqlite3.Connection, info: InstanceInfo, path: str, now: float) -> None:
    inst = info.instance
    conn.execute(
        "INSERT OR REPLACE INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,"
        " instance_number, rows, columns, bits_allocated, number_of_frames, transfer_syntax_uid,"
        " size, path, frames, bulk, attrs, stored_at, sort_number) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (info.sop_uid, info.series_uid, info.study_uid, info.sop_class_uid,
         int_value(inst, "00200013"), int_value(inst, "00280010"), int_value(inst, "00280011"),
         int_value(inst, "00280100"), int_value(inst, "00280008"), info.transfer_syntax_uid, info.size,
         path, None if info.frames is None else json.dumps(info.frames, separators=(",", ":")),
         json.dumps(info.bulk, separators=(",", ":")), dumps(inst).decode(), now,
         sort_number(inst, "00200013")),
    )
    # Study and series keys are rebuilt once per batch in refresh_aggregates.
    index_keys(conn, INSTANCE, info.sop_uid, inst)
    conn.execute("INSERT OR REPLACE INTO metadata (sop_uid, json) VALUES (?, ?)",
                 (info.sop_uid, info.metadata_bytes()))


def refresh_aggregates(conn: sqlite3.Connection, studies: Iterable[str], series: Iterable[str]) -> None:
    """Recompute counts and ModalitiesInStudy/SOPClassesInStudy exactly.

    Runs inside the writer's transaction, from indexed counts, so the numbers
    are exact even when an instance moved or was replaced. Rows left empty are
    removed. The QIDO keys of each study and series are rebuilt here too, once
    per batch rather than once per instance; then the patients the studies
    belonged to and belong to now (:func:`refresh_patients`).
    """
    patients: set[str] = set()
    for series_uid in series:
        (count,) = conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid=?", (series_uid,)).fetchone()
        if count:
            conn.execute("UPDATE series SET num_instances=? WHERE series_uid=?", (count, series_uid))
            (attrs,) = conn.execute("SELECT attrs FROM series WHERE series_uid=?", (series_uid,)).fetchone()
            index_keys(conn, SERIES, series_uid, json.loads(attrs))
        else:
            conn.execute("DELETE FROM series WHERE series_uid=?", (series_uid,))
            conn.execute("DELETE FROM qido_keys WHERE uid=? AND level=?", (series_uid, SERIES))
    for study_uid in studies:
        was = conn.execute("SELECT patient_key FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        if was is not None and was[0] is not None:
            patients.add(was[0])
        n_series, n_instances = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(num_instances), 0) FROM series WHERE study_uid=?", (study_uid,)
        ).fetchone()
        if not n_series:
            conn.execute("DELETE FROM studies WHERE study_uid=?", (study_uid,))
            conn.execute("DELETE FROM qido_keys WHERE uid=? AND level=?", (study_uid, STUDY))
            continue
        modalities = sorted({m for (m,) in conn.execute(
            "SELECT DISTINCT modality FROM series WHERE study_uid=? AND modality IS NOT NULL", (study_uid,))})
        classes = sorted({c for (c,) in conn.execute(
            "SELECT DISTINCT sop_class_uid FROM instances WHERE study_uid=?", (study_uid,))})
        conn.execute(
            "UPDATE studies SET num_series=?, num_instances=?, modalities=?, sop_classes=? WHERE study_uid=?",
            (n_series, n_instances, _multi(modalities), _multi(classes), study_uid),
        )
        _refresh_study_keys(conn, study_uid)
        patients.add(_set_patient_key(conn, study_uid))
    refresh_patients(conn, patients)


def patient_key(patient_id: str, issuer: str) -> str:
    """The ``patients`` primary key of a patient identity (a backslash
    cannot occur in an LO value, PS3.5 6.2)."""
    return patient_id + "\\" + issuer


def _set_patient_key(conn: sqlite3.Connection, study_uid: str) -> str:
    (attrs,) = conn.execute("SELECT attrs FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
    key = patient_key(*levels.patient_identity(json.loads(attrs)))
    conn.execute("UPDATE studies SET patient_key=? WHERE study_uid=?", (key, study_uid))
    return key


def refresh_patients(conn: sqlite3.Connection, keys: Iterable[str]) -> None:
    """Recompute patient rows exactly from their studies (index
    ``studies_by_patient``): counts summed, attributes and match keys from
    the study that most recently received an instance (``updated_at``, then
    the greatest StudyInstanceUID); a patient left without studies goes."""
    for key in sorted(keys):
        n_studies, n_series, n_instances = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(num_series), 0), COALESCE(SUM(num_instances), 0)"
            " FROM studies WHERE patient_key=?", (key,)).fetchone()
        if not n_studies:
            conn.execute("DELETE FROM patients WHERE patient_key=?", (key,))
            conn.execute("DELETE FROM qido_keys WHERE uid=? AND level=?", (key, PATIENT))
            continue
        (attrs,) = conn.execute(
            "SELECT attrs FROM studies WHERE patient_key=? ORDER BY updated_at DESC, study_uid DESC LIMIT 1",
            (key,)).fetchone()
        study = json.loads(attrs)
        patient = levels.patient_attrs(study)
        patient_id, issuer = levels.patient_identity(study)
        conn.execute(
            "INSERT INTO patients (patient_key, patient_id, issuer, attrs, num_studies, num_series, num_instances)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT(patient_key) DO UPDATE SET attrs=excluded.attrs,"
            " num_studies=excluded.num_studies, num_series=excluded.num_series,"
            " num_instances=excluded.num_instances",
            (key, patient_id, issuer, dumps(patient).decode(), n_studies, n_series, n_instances))
        index_keys(conn, PATIENT, key, patient)


def _multi(values: list[str]) -> str:
    """Multi-valued column: ``\\A\\B\\`` so a value is matched with LIKE '%\\A\\%'."""
    return "\\" + "\\".join(values) + "\\" if values else ""


def split_multi(text: str) -> list[str]:
    return [v for v in text.split("\\") if v]

