"""The embedded store's change feed (README "Change feed"): a ``changes``
table written in the same SQLite transaction as the index change it records.

``seq`` is an ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite gives each new
row a larger number than any row ever had, and writers are serialised, so
sequences follow commit order, without gaps among committed rows (a rolled
back transaction takes its rows with it), and are never reused. A reader
therefore sees every event after the offset it asks for, once.

Plain functions over a ``sqlite3.Connection``; the writers are called by
:mod:`sqlindex` and :mod:`sqlremove` inside their transactions.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from .changes import CREATE, DELETE, Action, Change, state_of

# Version 5. ``changes_by_sop`` answers "is this the instance's latest event".
SCHEMA_V5 = """
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT NOT NULL, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    action TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX changes_by_sop ON changes(sop_uid, seq)
"""


def seed(conn: sqlite3.Connection) -> int:
    """The upgrade to version 5: one Create per visible instance, oldest
    stored first, so a consumer starting at 0 learns every instance there is."""
    cursor = conn.execute(
        "INSERT INTO changes (sop_uid, series_uid, study_uid, action, at) "
        "SELECT sop_uid, series_uid, study_uid, ?, stored_at FROM instances ORDER BY stored_at, sop_uid", (CREATE,))
    return cursor.rowcount


def record(conn: sqlite3.Connection, action: Action, rows: Iterable[tuple[str, str, str]]) -> None:
    """Events of ``action`` for (sop, series, study) rows, now, in order."""
    now = time.time()
    conn.executemany("INSERT INTO changes (sop_uid, series_uid, study_uid, action, at) VALUES (?,?,?,?,?)",
                     [(sop, series, study, action, now) for sop, series, study in rows])


def created(conn: sqlite3.Connection, sop: str, series: str, study: str) -> None:
    record(conn, CREATE, [(sop, series, study)])


def deleted(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str]]) -> None:
    record(conn, DELETE, rows)


_PAGE = (
    "SELECT c.seq, c.study_uid, c.series_uid, c.sop_uid, c.action, c.at,"
    " EXISTS(SELECT 1 FROM instances i WHERE i.sop_uid=c.sop_uid),"
    " NOT EXISTS(SELECT 1 FROM changes l WHERE l.sop_uid=c.sop_uid AND l.seq>c.seq),"
    " CASE WHEN ? THEN (SELECT json FROM metadata m WHERE m.sop_uid=c.sop_uid) END"
    " FROM changes c"
)


def page(conn: sqlite3.Connection, offset: int, limit: int, metadata: bool) -> list[Change]:
    """The events with ``seq > offset``, at most ``limit``, in order."""
    rows = conn.execute(_PAGE + " WHERE c.seq>? ORDER BY c.seq LIMIT ?", (metadata, offset, limit)).fetchall()
    return [_change(r) for r in rows]


def latest(conn: sqlite3.Connection, metadata: bool) -> Change | None:
    row = conn.execute(_PAGE + " ORDER BY c.seq DESC LIMIT 1", (metadata,)).fetchone()
    return None if row is None else _change(row)


def last_sequence(conn: sqlite3.Connection) -> int:
    (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
    return int(seq)


def _change(row: tuple[Any, ...]) -> Change:
    seq, study, series, sop, action, at, exists, is_latest, meta = row
    state = state_of(action, bool(exists), bool(is_latest))
    return Change(int(seq), str(study), str(series), str(sop), action, float(at),
                  state, bytes(meta) if meta is not None and state == "Current" else None)
