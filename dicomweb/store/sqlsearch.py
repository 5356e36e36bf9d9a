"""QIDO searches on the embedded store's SQLite index.

A :class:`~dicomweb.dicom.query.Query` becomes one SELECT over the level
tables (``studies st``, ``series se``, ``instances i``), with, per filter:

* the StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID of a level: a
  condition on that table's primary key (``st.study_uid IN (?, ?)``);
* any other attribute: ``<level uid> IN (SELECT uid FROM qido_keys WHERE
  path = ? AND key ...)``, where the key condition is ``= ?``, ``IN (...)``,
  a range ``>= ? / <= ?``, or for wildcards a range on the literal prefix
  plus ``GLOB ?`` — every one an index range scan of the ``qido_keys``
  primary key (path, key, uid, level).

Values only ever travel as bound parameters; the SQL text is built from
fixed fragments, column names and the number of values.

The patient level is one SELECT over ``patients p`` alone, its filters
``p.patient_key IN (SELECT uid FROM qido_keys ...)`` on the ``patient/``
paths, in the order of its unique index (PatientID, IssuerOfPatientID).

Order is the search order of :mod:`dicomweb.dicom.order`, kept in the
``sort_date`` and ``sort_number`` columns: total, so limit/offset pages never
overlap or skip. With no
filter but study UIDs the three level tables are joined with ``CROSS JOIN``
in that order, which walks the three order indexes and stops after
``limit`` rows; with filters the matching rows are found through the
indexes first and then sorted (the ``+`` on the first ORDER BY term keeps
SQLite from preferring an ordered scan of everything).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from twisted.logger import Logger

from ..dicom.levels import patient_json
from ..dicom.order import AVAILABLE
from ..dicom.query import LEVELS, PATIENT, RETRIEVE_URL, Filter, Query, project
from .sqlschema import BLOCK_WIDTHS, split_multi

log = Logger()

#: Matching on a level's own UID uses the primary key of its table.
_UID_COLUMNS = {"0020000D": "st.study_uid", "0020000E": "se.series_uid", "00080018": "i.sop_uid"}
_LEVEL_UID = {"study": "st.study_uid", "series": "se.series_uid", "instance": "i.sop_uid",
              "patient": "p.patient_key"}
_COLUMNS = {
    "study": "st.study_uid, st.attrs, st.num_series, st.num_instances, st.modalities, st.sop_classes",
    "series": "se.series_uid, se.attrs, se.num_instances",
    "instance": "i.sop_uid, i.attrs",
}
_ORDER = {
    "study": ("st.sort_date DESC", "st.study_uid"),
    "series": ("se.sort_number", "se.series_uid"),
    "instance": ("i.sort_number", "i.sop_uid"),
}
#: Highest code point: ``prefix + _TOP`` sorts after every key starting with prefix.
_TOP = "\U0010ffff"
_CHUNK = 500


@dataclass(frozen=True)
class SqlQuery:
    sql: str
    args: list[Any]


#: From this offset on, an unfiltered series or instance page first skips
#: whole studies by their counts (see :func:`_study_skip`).
SKIP_FROM = 1000
#: Rows a study contributes to an unfiltered page of each level.
_WEIGHT = {"series": "num_series", "instance": "num_instances"}


def build_sql(query: Query, start: tuple[str, str, int] | None = None) -> SqlQuery:
    """The SELECT for ``query`` (see the module docstring).

    ``start``: (sort_date, study_uid, offset) of an unfiltered page that
    begins in that study, at that offset within it (:func:`_study_skip`)."""
    if query.level == PATIENT:
        return _patient_sql(query)
    depth = LEVELS.index(query.level) + 1
    used = LEVELS[:depth]
    where: list[str] = []
    args: list[Any] = []
    for flt in query.filters:
        if flt.kind == "universal":
            continue
        sql, values = condition(flt)
        where.append(sql)
        args.extend(values)
    walk = all(f.kind == "universal" or f.tag == "0020000D" for f in query.filters)
    join = " CROSS JOIN " if walk else " JOIN "
    tables = "studies st"
    if depth > 1:
        tables += join + "series se ON se.study_uid = st.study_uid"
    if depth > 2:
        tables += join + "instances i ON i.series_uid = se.series_uid"
    order = [term for level in used for term in _ORDER[level]]
    if not walk:
        order[0] = "+" + order[0]
    columns = ", ".join(_COLUMNS[level] for level in used)
    sql = f"SELECT {columns} FROM {tables}"
    offset = query.offset
    if start is not None:
        # The studies from ``start`` on, in the search order (date descending, then UID).
        where.append("(st.sort_date < ? OR (st.sort_date = ? AND st.study_uid >= ?))")
        args.extend([start[0], start[0], start[1]])
        offset = start[2]
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
    return SqlQuery(sql, [*args, query.limit, offset])


def _patient_sql(query: Query) -> SqlQuery:
    where: list[str] = []
    args: list[Any] = []
    for flt in query.filters:
        if flt.kind != "universal":
            sql, values = condition(flt)
            where.append(sql)
            args.extend(values)
    sql = "SELECT p.patient_key, p.attrs, p.num_studies, p.num_series, p.num_instances FROM patients p"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # "+": with filters, find the rows through the keys, then sort them.
    order = "+p.patient_id, p.issuer" if where else "p.patient_id, p.issuer"
    sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
    return SqlQuery(sql, [*args, query.limit, query.offset])


def condition(flt: Filter) -> tuple[str, list[Any]]:
    """SQL for one filter, with its parameters."""
    column = _UID_COLUMNS.get(flt.tag)
    if column is not None:
        return f"{column} IN ({_marks(flt.values)})", list(flt.values)
    owner = _LEVEL_UID[flt.level]
    if flt.kind == "fuzzy":
        # Every word must be the prefix of some fuzzy word of the name.
        parts = [_key_subquery(owner, flt.key_path + "/fuzzy", "key >= ? AND key < ?", [w, f"{w}{_TOP}"])
                 for w in flt.values]
        return " AND ".join(p[0] for p in parts), [a for p in parts for a in p[1]]
    key_sql, key_args = _key_condition(flt)
    return _key_subquery(owner, flt.key_path, key_sql, key_args)


def _key_subquery(owner: str, path: str, key_sql: str, key_args: list[Any]) -> tuple[str, list[Any]]:
    return f"{owner} IN (SELECT uid FROM qido_keys WHERE path = ? AND {key_sql})", [path, *key_args]


def _key_condition(flt: Filter) -> tuple[str, list[Any]]:
    if flt.kind == "single":
        return "key = ?", [flt.values[0]]
    if flt.kind == "list":
        return f"key IN ({_marks(flt.values)})", list(flt.values)
    if flt.kind == "wildcard":
        prefix = flt.literal_prefix()
        if not prefix:
            return "key GLOB ?", [flt.glob_pattern()]
        # The explicit prefix range makes the index scan independent of
        # SQLite's own LIKE/GLOB optimisation rules.
        return "key >= ? AND key < ? AND key GLOB ?", [prefix, prefix + _TOP, flt.glob_pattern()]
    if flt.kind == "range":
        low, high = flt.values
        parts, args = [], []
        if low is not None:
            parts.append("key >= ?")
            args.append(low)
        if high is not None:
            parts.append("key <= ?")
            args.append(high)
        return " AND ".join(parts), args
    raise ValueError(f"no SQL for a {flt.kind} filter")


def _marks(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)


# -- results -----------------------------------------------------------------


def search(conn: sqlite3.Connection, query: Query) -> list[dict[str, Any]]:
    """DICOM JSON answers for ``query`` (RetrieveURLs relative to the service root)."""
    return answers(conn, query, fetch(conn, query))


def fetch(conn: sqlite3.Connection, query: Query) -> list[tuple[Any, ...]]:
    """The result rows of ``query`` (the SQL part of :func:`search`)."""
    if not _skips(query):
        plan = build_sql(query)
        return conn.execute(plan.sql, plan.args).fetchall()
    # Both statements read one snapshot, so the counts match the rows.
    outer = not conn.in_transaction
    if outer:
        conn.execute("BEGIN")
    try:
        start = _study_skip(conn, query)
        if start is None:
            return []
        plan = build_sql(query, start)
        return conn.execute(plan.sql, plan.args).fetchall()
    finally:
        if outer and conn.in_transaction:  # an interrupted read may have ended it already
            conn.execute("COMMIT")


def _skips(query: Query) -> bool:
    return (query.level in _WEIGHT and query.offset >= SKIP_FROM
            and all(f.kind == "universal" for f in query.filters))


def _study_skip(conn: sqlite3.Connection, query: Query) -> tuple[str, str, int] | None:
    """Where an unfiltered page deep in the order begins: the study holding
    its first row and the offset within that study. None: past the end.

    Found from the exact counts of the search order's blocks (schema 7,
    ``study_blocks``): the years in order, whole ones stepped over until the
    one holding the row, then its months, days and hours the same way, then
    the studies of that hour (covering index ``studies_order_counts``). For
    20,000 studies of 50 instances and offset 500,000 that reads ~100 rows
    instead of the 10,000 studies before the page.

    Triggers keep the blocks exact (sqlschema, schema 7). Should they still
    disagree with the studies where it shows (the block picked runs out
    before the row, or the blocks end before the offset, which also makes a
    page past the end cost the full count), every study's count is added up
    instead (:func:`_scan_skip`). A block before the page that claims too
    much cannot show without reading every study: the cost avoided here."""
    weight = _WEIGHT[query.level]
    left = query.offset
    block: tuple[int, str] | None = None  # (width, prefix) holding the row so far
    for width in BLOCK_WIDTHS:
        if block is not None and len(block[1]) < block[0]:
            break  # an exact sort_date: its blocks at the wider widths are the same studies
        found = _pick_block(conn, weight, width, block, left)
        if found is None:
            # Past the end (the years hold fewer rows), or blocks that do not add up.
            return _scan_skip(conn, weight, query.offset, block is not None)
        block, left = (width, found[0]), found[1]
    assert block is not None
    start = _pick_study(conn, weight, block, left)
    return start if start is not None else _scan_skip(conn, weight, query.offset, True)


def _pick_block(conn: sqlite3.Connection, weight: str, width: int, parent: tuple[int, str] | None,
                left: int) -> tuple[str, int] | None:
    """The block of ``width`` within ``parent`` (all of them at the top)
    holding the row ``left`` rows on, and the rows still to skip in it."""
    sql = f"SELECT prefix, {weight} FROM study_blocks WHERE width = ?"
    args: list[Any] = [width]
    if parent is not None:
        sql += " AND prefix >= ? AND prefix < ?"
        args += [parent[1], parent[1] + _TOP]
    found = _landing(conn.execute(sql + " ORDER BY prefix DESC", args), left)
    return None if found is None else (found[0][0], found[1])


def _pick_study(conn: sqlite3.Connection, weight: str, block: tuple[int, str],
                left: int) -> tuple[str, str, int] | None:
    """The study of ``block`` holding the row ``left`` rows on, in search order."""
    width, prefix = block
    if len(prefix) < width:
        where, args = "sort_date = ?", [prefix]
    else:
        where, args = "sort_date >= ? AND sort_date < ?", [prefix, prefix + _TOP]
    return _study_at(conn.execute(f"SELECT sort_date, study_uid, {weight} FROM studies WHERE {where}"
                                  " ORDER BY sort_date DESC, study_uid", args), left)


def _study_at(rows: Iterable[tuple[str, str, int]], left: int) -> tuple[str, str, int] | None:
    """(sort_date, study_uid, offset within it) of the study of ``rows`` holding the row ``left`` rows on."""
    found = _landing(rows, left)
    return None if found is None else (found[0][0], found[0][1], found[1])


def _landing(rows: Iterable[tuple[Any, ...]], left: int) -> tuple[tuple[Any, ...], int] | None:
    """The first of ``rows`` (in order, each ending with its row count) that
    holds the row ``left`` rows on, and how many of its rows come before it;
    None when they hold fewer."""
    for row in rows:
        if left < row[-1]:
            return row, left
        left -= row[-1]
    return None


_mismatch_logged = False


def _scan_skip(conn: sqlite3.Connection, weight: str, offset: int, mismatch: bool) -> tuple[str, str, int] | None:
    """The study skip without blocks: every study's count in search order
    (one covering index scan of ``studies_order_counts``). ``mismatch``: the
    blocks already disagreed with the studies; they also do when they put
    the offset past the end and the studies do not. Logged once, with
    nothing but the level's count column."""
    global _mismatch_logged
    start = _study_at(conn.execute(f"SELECT sort_date, study_uid, {weight} FROM studies"
                                   " ORDER BY sort_date DESC, study_uid"), offset)
    if (mismatch or start is not None) and not _mismatch_logged:
        _mismatch_logged = True
        log.error("study_blocks disagree with the studies' {weight}: deep pages add up every study instead",
                  weight=weight)
    return start


def answers(conn: sqlite3.Connection, query: Query, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The DICOM JSON answers made of :func:`fetch`'s ``rows`` (the Python part of :func:`search`)."""
    if query.level == PATIENT:
        items = [patient_json(orjson.loads(attrs), *counts) for _, attrs, *counts in rows]
        if query.include_all:
            return [project(query, item) for item in items]
        wanted = query.return_tags()
        return [{tag: item[tag] for tag in wanted if tag in item} for item in items]
    builder = _ResultBuilder(query)
    combined = [builder.combine(row) for row in rows]
    extra = set(query.includefields) - AVAILABLE
    if extra and query.level == "instance":
        _merge_metadata(conn, combined, extra)
    if query.include_all:
        return [project(query, item) for item in combined]
    tags = query.return_tags()  # once, not per answer as project() would
    return [{tag: item[tag] for tag in tags if tag in item} for item in combined]


class _ResultBuilder:
    """Turns result rows into combined level JSON; parents parsed once per search."""

    def __init__(self, query: Query) -> None:
        self.level = query.level
        self._studies: dict[str, dict[str, Any]] = {}
        self._series: dict[str, dict[str, Any]] = {}

    def combine(self, row: tuple[Any, ...]) -> dict[str, Any]:
        study_uid = row[0]
        study = self._studies.get(study_uid)
        if study is None:
            study = self._studies[study_uid] = study_json(*row[:6])
        out = dict(study)
        if self.level == "study":
            return out
        series_uid = row[6]
        series = self._series.get(series_uid)
        if series is None:
            series = self._series[series_uid] = series_json(study_uid, *row[6:9])
        out.update(series)
        if self.level == "series":
            return out
        sop_uid = row[9]
        out.update(orjson.loads(row[10]))
        out["00080018"] = {"vr": "UI", "Value": [sop_uid]}
        out[RETRIEVE_URL] = _url(f"{series[RETRIEVE_URL]['Value'][0]}/instances/{sop_uid}")
        return out


def _url(path: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [path]}


def study_json(uid: str, attrs: str, n_series: int, n_instances: int, modalities: str, classes: str) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(attrs)
    out["0020000D"] = {"vr": "UI", "Value": [uid]}
    out["00201206"] = {"vr": "IS", "Value": [n_series]}
    out["00201208"] = {"vr": "IS", "Value": [n_instances]}
    mods = split_multi(modalities)
    out["00080061"] = {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}
    sops = split_multi(classes)
    out["00080062"] = {"vr": "UI", "Value": sops} if sops else {"vr": "UI"}
    out[RETRIEVE_URL] = _url(f"studies/{uid}")
    return out


def series_json(study_uid: str, uid: str, attrs: str, n_instances: int) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(attrs)
    out["0020000E"] = {"vr": "UI", "Value": [uid]}
    out["00201209"] = {"vr": "IS", "Value": [n_instances]}
    out[RETRIEVE_URL] = _url(f"studies/{study_uid}/series/{uid}")
    return out


def _merge_metadata(conn: sqlite3.Connection, results: list[dict[str, Any]], tags: set[str]) -> None:
    """Add instance attributes kept only in the full metadata (asked for by
    includefield): read the stored metadata of just these instances."""
    by_uid = {item["00080018"]["Value"][0]: item for item in results}
    uids = list(by_uid)
    for start in range(0, len(uids), _CHUNK):
        chunk = uids[start:start + _CHUNK]
        sql = f"SELECT sop_uid, json FROM metadata WHERE sop_uid IN ({_marks(chunk)})"
        for sop_uid, text in conn.execute(sql, chunk):
            metadata = orjson.loads(text)
            by_uid[sop_uid].update({tag: metadata[tag] for tag in tags if tag in metadata})
