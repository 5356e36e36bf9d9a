"""How the embedded index opens SQLite: the settings durability and speed rest on."""

from __future__ import annotations

from pathlib import Path

from dicomweb.store.sqlindex import EmbeddedIndex


def _opened(tmp_path: Path) -> EmbeddedIndex:
    index = EmbeddedIndex(str(tmp_path / "data"))
    index.open()
    return index


def test_the_writer_commits_through_a_write_ahead_log_synced_at_every_commit(tmp_path: Path) -> None:
    index = _opened(tmp_path)
    conn = index.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    index.close()


def test_the_writer_keeps_its_per_instance_savepoint_journal_in_memory(tmp_path: Path) -> None:
    # 2 = MEMORY: no temporary file is created and written per stored batch.
    index = _opened(tmp_path)
    assert index.connection().execute("PRAGMA temp_store").fetchone()[0] == 2
    index.close()


def test_readers_cannot_write(tmp_path: Path) -> None:
    index = _opened(tmp_path)
    reader = index.read_only_connection()
    assert reader.execute("PRAGMA query_only").fetchone()[0] == 1
    index.close()
