"""Embedded schema v3 (the rejected table) and v4 (patients): created fresh,
upgraded from v2."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dicomweb.store import sqlschema
from tests.test_sqlsearch import downgrade_to_3


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_version_2_is_upgraded_in_place(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "index.sqlite3"), isolation_level=None)
    sqlschema.migrate(conn)
    assert "rejected" in _tables(conn)
    # Make it a version 2 database (what main wrote), with a row to keep.
    downgrade_to_3(conn)
    conn.execute("DROP TABLE rejected")
    conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    conn.execute("INSERT INTO metadata VALUES ('1.2.3', x'7b7d')")
    sqlschema.migrate(conn)
    assert {"rejected", "patients"} <= _tables(conn)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(sqlschema.SCHEMA_VERSION),)
    assert conn.execute("SELECT COUNT(*) FROM metadata").fetchone() == (1,)
    sqlschema.migrate(conn)  # idempotent
