"""Deleting and rejecting instances in the embedded store's SQLite index.

Plain functions over a ``sqlite3.Connection``, called inside the writer's
transaction (see ``EmbeddedStore.delete``/``reject``). They only change the
index and return the file paths the caller may unlink *after* COMMIT: the
index never points to a file that is gone, whatever moment a crash picks.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from . import sqlchanges, sqlschema


@dataclass(frozen=True)
class Target:
    """Rows of one study, series or instance (``None`` = every one)."""

    study: str
    series: str | None = None
    sop: str | None = None

    def where(self, alias: str = "") -> tuple[str, list[str]]:
        prefix = alias + "." if alias else ""
        clauses, args = [f"{prefix}study_uid=?"], [self.study]
        if self.series is not None:
            clauses.append(f"{prefix}series_uid=?")
            args.append(self.series)
        if self.sop is not None:
            clauses.append(f"{prefix}sop_uid=?")
            args.append(self.sop)
        return " AND ".join(clauses), args


def _visible(conn: sqlite3.Connection, target: Target) -> list[tuple[str, str, str, str]]:
    where, args = target.where()
    rows = conn.execute(f"SELECT sop_uid, series_uid, study_uid, path FROM instances WHERE {where}", args)
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def _unindex(conn: sqlite3.Connection, rows: list[tuple[str, str, str, str]]) -> None:
    """Remove instances from every table a search or retrieval reads, then
    recompute the aggregates (which drops series and studies left empty)."""
    uids = [(r[0],) for r in rows]
    conn.executemany("DELETE FROM instances WHERE sop_uid=?", uids)
    conn.executemany("DELETE FROM metadata WHERE sop_uid=?", uids)
    conn.executemany("DELETE FROM qido_keys WHERE uid=? AND level=?", [(u, sqlschema.INSTANCE) for (u,) in uids])
    sqlschema.refresh_aggregates(conn, {r[2] for r in rows}, {r[1] for r in rows})


def delete(conn: sqlite3.Connection, target: Target) -> tuple[int, list[str]]:
    """Remove visible and rejected instances of ``target`` from the index.

    Returns (how many, stored paths of their files)."""
    rows = _visible(conn, target)
    _unindex(conn, rows)
    # One Delete per visible instance; a rejected one had its Delete when rejected.
    sqlchanges.deleted(conn, [r[:3] for r in rows])
    where, args = target.where()
    rejected = conn.execute(f"SELECT path FROM rejected WHERE {where}", args).fetchall()
    conn.execute(f"DELETE FROM rejected WHERE {where}", args)
    return len(rows) + len(rejected), [r[3] for r in rows] + [r[0] for r in rejected]


_INSTANCE_COLUMNS = ("sop_uid, series_uid, study_uid, sop_class_uid, instance_number, rows, columns,"
                     " bits_allocated, number_of_frames, transfer_syntax_uid, size, path, frames, bulk,"
                     " attrs, stored_at, sort_number")


def reject(conn: sqlite3.Connection, target: Target, code: str, scheme: str) -> int:
    """Move the visible instances of ``target`` to ``rejected`` (files stay)."""
    rows = _visible(conn, target)
    now = time.time()
    names = [c.strip() for c in _INSTANCE_COLUMNS.split(",")]
    where, args = target.where("i")
    for values in conn.execute(
            f"SELECT {', '.join('i.' + n for n in names)}, s.attrs, se.attrs,"
            " (SELECT json FROM metadata m WHERE m.sop_uid=i.sop_uid)"
            " FROM instances i JOIN studies s ON s.study_uid=i.study_uid"
            f" JOIN series se ON se.series_uid=i.series_uid WHERE {where}", args).fetchall():
        instance = dict(zip(names, values[:len(names)], strict=True))
        conn.execute(
            "INSERT OR REPLACE INTO rejected (sop_uid, series_uid, study_uid, path, code, scheme, rejected_at,"
            " instance, study_attrs, series_attrs, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (instance["sop_uid"], instance["series_uid"], instance["study_uid"], instance["path"], code, scheme,
             now, json.dumps(instance, separators=(",", ":")), values[-3], values[-2], values[-1]))
    _unindex(conn, rows)
    sqlchanges.deleted(conn, [r[:3] for r in rows])  # rejected: out of search and retrieval
    return len(rows)


def forget_rejected(conn: sqlite3.Connection, sop_uid: str) -> str | None:
    """A rejected instance stored again is restored: drop its rejected row
    and return its file's stored path (the new copy replaces it)."""
    row = conn.execute("DELETE FROM rejected WHERE sop_uid=? RETURNING path", (sop_uid,)).fetchone()
    return None if row is None else str(row[0])


def purge_rejected(conn: sqlite3.Connection, before: float) -> list[str]:
    """Drop rejected instances rejected before ``before``; their stored paths."""
    rows = conn.execute("DELETE FROM rejected WHERE rejected_at < ? RETURNING path", (before,)).fetchall()
    return [r[0] for r in rows]
