"""The embedded store's synchronous core: the SQLite index and the files.

Layout under ``data_dir``::

    index.sqlite3           WAL mode, schema versioned in table ``meta``
    write.lock              held (flock) by the one writer of the moment
    files/YYYYMMDD/HH/<uuid>.dcm  the Part 10 bytes exactly as received
    spool/                  request bodies being received (same file system)

Durability (the fsync policy): for each STOW batch, every new file is written
and ``fsync``-ed, then its directory is ``fsync``-ed, and only then is the
index committed in one transaction with ``synchronous=FULL``. The STOW
response is sent after that commit, so an acknowledged instance survives a
crash or power loss. A crash before the commit leaves at most an orphan file
that no index row points to: invisible, and listed by :meth:`EmbeddedIndex.orphan_files`
(``dicomweb-admin orphans``).

Every method blocks (file and SQLite I/O) and may be called from any thread:
each thread has its own connection. Writers are serialised by a thread lock
within a process and by ``flock`` on ``write.lock`` across the processes of
one server (``--workers``) and the command-line tools: SQLite would serialise
them too, but its busy handler polls with sleeps of up to 100 ms, where a
waiter on ``flock`` is woken the moment the lock is released. The server reaches
this class through :class:`~dicomweb.store.embedded.EmbeddedStore`, which
runs it in a thread pool; the command-line tools (``dicomweb-admin``,
``dicomweb-import --offline``) call it directly, with no reactor.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.logger import Logger

from ..dicom.analyze import OUT_OF_RESOURCES, PROCESSING_FAILURE, InstanceInfo
from ..io.files import copy_range, fsync_dir, fsync_path, read_at, start_writeback
from . import sqlchanges, sqlremove, sqlschema
from .base import InstanceRecord, StoreItem, StoreOutcome, not_found

T = TypeVar("T")
log = Logger()

#: Columns of an :class:`InstanceRecord`, after the three UIDs (see :func:`select`).
RECORD_COLUMNS = "path, size, frames, bulk, sop_class_uid, transfer_syntax_uid"
#: The stored DICOM JSON of an instance, after the three UIDs.
METADATA_COLUMN = "(SELECT json FROM metadata m WHERE m.sop_uid=i.sop_uid)"


#: Written when the store closes cleanly, removed when it opens: its absence
#: at open means the last run ended in a crash, so the index is checked.
CLEAN_MARK = "index.closed-cleanly"


class DamagedIndex(RuntimeError):
    """The SQLite index cannot be trusted: the store refuses to start on it
    rather than serve wrong answers."""


class EmbeddedIndex:
    """SQLite index + files, synchronous. See the module docstring for guarantees."""

    def __init__(self, data_dir: str, *, marks_clean: bool = True) -> None:
        """``marks_clean``: this process checks the index after a crash and
        marks it closed cleanly (see :data:`CLEAN_MARK`); False in the worker
        processes of ``--workers``, whose supervisor does it."""
        self.data_dir = os.path.abspath(data_dir)
        self._marks_clean = marks_clean
        self.files_dir = os.path.join(self.data_dir, "files")
        self.spool_dir = os.path.join(self.data_dir, "spool")
        self.db_path = os.path.join(self.data_dir, "index.sqlite3")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None  # write.lock, opened on the first write
        self._connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()

    # -- connections ----------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's read-write connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-65536")
            # Each instance is indexed under a SAVEPOINT (one bad instance
            # fails alone), so SQLite journals every page it changes; past
            # 64 KiB that journal spills to a new file in /var/tmp, created
            # and deleted per batch: ~40 page writes per instance. In memory
            # it cost 6.3 instead of 7.9 ms per batch of 20 (0.5 MB CTs). The
            # journal lives only until the savepoint is released.
            conn.execute("PRAGMA temp_store=MEMORY")
            self._local.conn = conn
            self._keep(conn)
        return conn

    def read_only_connection(self) -> sqlite3.Connection:
        """A new query-only connection that never waits for a lock
        (``timeout=0``: a busy database raises at once); closed by :meth:`close`."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA cache_size=-65536")
        self._keep(conn)
        return conn

    def _keep(self, conn: sqlite3.Connection) -> None:
        with self._conn_lock:
            self._connections.append(conn)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The right to write: this process's thread lock, then the data
        directory's ``write.lock`` (module docstring). A ``flock`` belongs to
        the open file, which every thread here shares, hence the thread lock
        first."""
        with self._write_lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(os.path.join(self.data_dir, "write.lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> None:
        """Create the directories and create or upgrade the schema; after a
        crash, check the index first (``PRAGMA quick_check``: every page and
        index entry, without cross-checking every row against its index)."""
        for path in (self.data_dir, self.files_dir, self.spool_dir):
            os.makedirs(path, exist_ok=True)
        # One process keeps the clean mark of a server with several
        # (``marks_clean``): the supervisor of ``--workers``, open first and
        # closed last; its workers neither check nor mark.
        mark = os.path.join(self.data_dir, CLEAN_MARK)
        crashed = self._marks_clean and os.path.exists(self.db_path) and not os.path.exists(mark)
        if self._marks_clean:
            try:
                os.unlink(mark)
            except FileNotFoundError:
                pass
        try:
            conn = self.connection()
            if crashed:
                self._check(conn)
            with self._writing():
                sqlschema.migrate(conn)
        except sqlite3.DatabaseError as exc:
            self._close_connections()  # not marked clean: the next start checks again
            raise self._damaged(str(exc)) from None

    def _check(self, conn: sqlite3.Connection) -> None:
        started = time.monotonic()
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
        log.info("index checked after an unclean stop in {seconds:.1f} s", seconds=time.monotonic() - started)
        if problems != ["ok"]:
            raise self._damaged("; ".join(problems)[:300])

    def _damaged(self, detail: str) -> DamagedIndex:
        return DamagedIndex(
            f"the index {self.db_path} is damaged ({detail}): restore it from a backup, or move it aside and "
            f"index the stored files again (dicomweb-import --offline); nothing was served from it")


    def clear_spool(self, directory: str | None = None) -> None:
        """Remove bodies and part files left in the spool (or in ``directory``,
        one worker's part of it) by a crash: they were never acknowledged (a
        stored part was renamed out of it first). Only where nobody may be
        receiving: the whole spool when the server starts, a worker's own
        directory when that worker starts."""
        directory = directory or self.spool_dir
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except OSError:
                pass

    def close(self) -> None:
        """Close every connection opened so far (from any thread), and mark
        the index as closed cleanly if it was open."""
        if self._close_connections() and self._marks_clean and os.path.exists(self.db_path):
            try:
                with open(os.path.join(self.data_dir, CLEAN_MARK), "w") as mark:
                    mark.write("the last run closed the index cleanly\n")
            except OSError:
                pass  # the next start checks the index: slower, not wrong

    def _close_connections(self) -> bool:
        """Close every connection; whether any was open."""
        with self._conn_lock:
            was_open = bool(self._connections)
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()
        with self._write_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        return was_open

    def ready(self) -> bool:
        try:
            self.connection().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # -- store ----------------------------------------------------------------

    def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]:
        """Write, fsync, then index ``items`` in one transaction (module docstring)."""
        outcomes: list[StoreOutcome | None] = [None] * len(items)
        written: dict[int, str] = {}
        to_sync: list[str] = []
        dirs: set[str] = set()
        conn = self.connection()
        bucket = time.strftime("%Y%m%d/%H")  # one batch, one directory to fsync
        for i, item in enumerate(items):
            try:
                if self._is_identical(conn, item):
                    outcomes[i] = StoreOutcome("unchanged")
                    continue
                path, moved = self._write_file(item, bucket, dirs)
            except OSError as exc:
                outcomes[i] = _io_failure(exc)
                continue
            written[i] = path
            if not (moved and item.synced):  # a synced part keeps its inode and data when renamed
                to_sync.append(path)
        try:
            # fsync after all writes: the file system commits the batch's data
            # together, so the later fsyncs are cheap.
            for path in to_sync:
                fsync_path(path)
            for directory in dirs:
                fsync_dir(directory)
        except OSError as exc:
            return _abandon(outcomes, written, _io_failure(exc))
        replaced_paths: list[str] = []
        rows = sqlschema.Written()
        with self._writing():
            try:
                conn.execute("BEGIN IMMEDIATE")
                for i, path in written.items():
                    outcome = outcomes[i] = self._index_one(conn, items[i].info, path, replaced_paths, rows)
                    if outcome.outcome == "failed":
                        _unlink(path)
                sqlschema.refresh_aggregates(conn, {items[i].info.study_uid for i in written},
                                             {items[i].info.series_uid for i in written})
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK") if conn.in_transaction else None
                log.error("index commit failed: {error}", error=str(exc))
                return _abandon(outcomes, written, _index_failure(exc))
        for path in replaced_paths:
            _unlink(path)
        return [o or StoreOutcome("failed", "not processed", PROCESSING_FAILURE) for o in outcomes]

    def link(self, infos: Sequence[InstanceInfo], paths: Sequence[str]) -> list[StoreOutcome]:
        """Index files in place, without copying them (offline import).

        The store never deletes or rewrites a linked file; deleting such an
        instance only removes it from the index.
        """
        replaced: list[str] = []

        def change(conn: sqlite3.Connection) -> list[StoreOutcome]:
            outcomes: list[StoreOutcome] = []
            rows = sqlschema.Written()
            for info, path in zip(infos, paths, strict=True):
                row = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (info.sop_uid,)).fetchone()
                if row is not None and row[0] == os.path.abspath(path):
                    outcomes.append(StoreOutcome("unchanged"))
                    continue
                outcomes.append(self._index_one(conn, info, os.path.abspath(path), replaced, rows))
            sqlschema.refresh_aggregates(conn, {i.study_uid for i in infos}, {i.series_uid for i in infos})
            return outcomes

        outcomes = self._write(change)
        for path in replaced:
            _unlink(path)
        return outcomes

    def _is_identical(self, conn: sqlite3.Connection, item: StoreItem) -> bool:
        row = conn.execute("SELECT path, size FROM instances WHERE sop_uid=?", (item.info.sop_uid,)).fetchone()
        if row is None or row[1] != item.length:
            return False
        try:
            with open(os.path.join(self.files_dir, row[0]), "rb") as stored:
                done = 0
                while done < item.length:
                    size = min(1 << 20, item.length - done)
                    if stored.read(size) != read_at(item.source, item.offset + done, size):
                        return False
                    done += size
        except FileNotFoundError:
            return False
        return True

    def _write_file(self, item: StoreItem, bucket: str, dirs: set[str]) -> tuple[str, bool]:
        """Write one instance's bytes to a new file under ``files/<bucket>``;
        ``dirs`` collects the directories whose entries changed (to fsync).
        Returns the new path and whether the item's own file was moved there
        (else its bytes were copied into a new file)."""
        day, hour = bucket.split("/")
        parent = os.path.join(self.files_dir, day)
        directory = os.path.join(parent, hour)
        if not os.path.isdir(directory):
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                dirs.add(self.files_dir)
            os.makedirs(directory, exist_ok=True)
            dirs.add(parent)
        dirs.add(directory)
        path = os.path.join(directory, uuid.uuid4().hex + ".dcm")
        if item.path is not None:
            # A part file received into the spool directory (same file
            # system): moved into place, no copy. Its writeback started when
            # it was received; the batch's fsyncs make it durable.
            try:
                os.rename(item.path, path)
                return path, True
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        try:
            with open(path, "wb") as out:
                copy_range(item.source, item.offset, item.length, out)
                out.flush()
                start_writeback(out.fileno())  # the batch's fsyncs then wait less
        except BaseException:
            _unlink(path)
            raise
        return path, False

    def _index_one(self, conn: sqlite3.Connection, info: InstanceInfo, path: str,
                   replaced_paths: list[str], rows: sqlschema.Written) -> StoreOutcome:
        # Files linked in place (offline import) keep their absolute path.
        rel = os.path.relpath(path, self.files_dir) if self._owned(path) else path
        conn.execute("SAVEPOINT one")
        try:
            old = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (info.sop_uid,)).fetchone()
            sqlschema.upsert_instance(conn, info, rel, rows)
            was_rejected = sqlremove.forget_rejected(conn, info.sop_uid)  # storing again restores it
            sqlchanges.created(conn, info.sop_uid, info.series_uid, info.study_uid)
            conn.execute("RELEASE one")
            rows.remember(info)
        except sqlite3.Error as exc:
            rows.remember(None)  # its rows were rolled back with the rest of it
            try:
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
            except sqlite3.Error:
                # SQLite rolled the whole transaction back (it does on
                # SQLITE_FULL, among others): the batch fails with this cause.
                raise exc from None
            log.error("indexing one instance failed: {error}", error=str(exc))
            return _index_failure(exc)
        if was_rejected is not None and self._owned(os.path.join(self.files_dir, was_rejected)):
            replaced_paths.append(os.path.join(self.files_dir, was_rejected))
        if old is not None:
            old_path = os.path.join(self.files_dir, old[0])
            if self._owned(old_path) and old_path != path:
                replaced_paths.append(old_path)  # never delete a file linked in place
            return StoreOutcome("replaced")
        return StoreOutcome("stored")

    def _owned(self, path: str) -> bool:
        """Whether ``path`` is one of the store's own files (not linked in place)."""
        return os.path.commonpath([self.files_dir, os.path.abspath(path)]) == self.files_dir

    # -- delete and reject ----------------------------------------------------
    #
    # Order, for crash safety: the index change is committed first (one
    # transaction, synchronous=FULL), files are unlinked after. A crash in
    # between leaves only orphan files that no row points to (harmless: never
    # served, and reclaimed by ``orphan_files``); never a row without its file.

    def delete(self, target: sqlremove.Target) -> int:
        """Remove the instances (visible or rejected) and reclaim their files."""
        count, paths = self._write(lambda conn: sqlremove.delete(conn, target))
        if not count:
            raise not_found(target.series, target.sop)
        for stored in paths:
            self._unlink_owned(stored)
        return count

    def reject(self, target: sqlremove.Target, code: str, scheme: str) -> int:
        """Move the visible instances to the rejected area (files kept)."""
        count: int = self._write(lambda conn: sqlremove.reject(conn, target, code, scheme))
        if not count:
            raise not_found(target.series, target.sop)
        return count

    def purge_rejected(self, older_than: float) -> int:
        """Delete instances rejected more than ``older_than`` seconds ago."""
        paths: list[str] = self._write(lambda conn: sqlremove.purge_rejected(conn, time.time() - older_than))
        for stored in paths:
            self._unlink_owned(stored)
        return len(paths)

    def _write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``change`` in one serialised write transaction."""
        conn = self.connection()
        with self._writing():
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = change(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return result

    def _unlink_owned(self, stored: str) -> None:
        """Unlink a file by its index path, unless it was linked in place."""
        path = os.path.join(self.files_dir, stored)
        if self._owned(path):
            _unlink(path)

    def orphan_files(self) -> list[str]:
        """Files under ``files/`` that no row (visible or rejected) points to:
        left by a crash between an index commit and the unlinks after it.

        Only files older than a minute count: a STOW writes its files before
        it commits the rows that point to them."""
        conn = self.connection()
        known = {r[0] for r in conn.execute("SELECT path FROM instances UNION ALL SELECT path FROM rejected")}
        cutoff = time.time() - 60
        out = []
        for folder, _dirs, names in os.walk(self.files_dir):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.relpath(path, self.files_dir) not in known and os.path.getmtime(path) < cutoff:
                    out.append(path)
        return out

    # -- retrieve -------------------------------------------------------------

    def path_of(self, location: str) -> str:
        """The file of an instance's ``InstanceRecord.location``."""
        return os.path.join(self.files_dir, location)

    def read(self, location: str, offset: int, length: int) -> bytes:
        with open(self.path_of(location), "rb") as fp:
            fp.seek(offset)
            return fp.read(length)


def select(conn: sqlite3.Connection, columns: str, study: str, series: str | None,
           sop: str | None) -> list[tuple[Any, ...]]:
    """Rows (study, series, sop, ``columns``...) of a study/series/instance, in
    the retrieval order of :mod:`dicomweb.dicom.order` (``retrieval_key`` as
    SQL); raises NotFound when there are none."""
    where, args = ["i.study_uid=?"], [study]
    if series is not None:
        where.append("i.series_uid=?")
        args.append(series)
    if sop is not None:
        where.append("i.sop_uid=?")
        args.append(sop)
    sql = (
        f"SELECT i.study_uid, i.series_uid, i.sop_uid, {columns} FROM instances i "
        "JOIN series s ON s.series_uid=i.series_uid "
        f"WHERE {' AND '.join(where)} "
        "ORDER BY s.series_number IS NULL, s.series_number, i.series_uid, "
        "i.instance_number IS NULL, i.instance_number, i.sop_uid"
    )
    rows = conn.execute(sql, args).fetchall()
    if not rows:
        raise not_found(series, sop)
    return rows


def version(conn: sqlite3.Connection, study: str, series: str | None) -> str:
    """The :meth:`~dicomweb.store.base.Store.version` token of a study or
    series: its ``updated_at`` and instance count. Every store or replace in
    it sets ``updated_at`` to a new time (``upsert_instance``); a reject or
    delete lowers the count and leaves the time; so no state comes back
    with a token an earlier state had. The index commits both with the
    instances they describe, in one transaction."""
    if series is None:
        row = conn.execute("SELECT updated_at, num_instances FROM studies WHERE study_uid=?", (study,)).fetchone()
    else:
        row = conn.execute("SELECT updated_at, num_instances FROM series WHERE series_uid=? AND study_uid=?",
                           (series, study)).fetchone()
    if row is None:
        raise not_found(series)
    return f"{row[0]!r}/{row[1]}"


def record(row: tuple[Any, ...]) -> InstanceRecord:
    """The :class:`InstanceRecord` of a :func:`select` row of :data:`RECORD_COLUMNS`."""
    return InstanceRecord(
        study_uid=row[0], series_uid=row[1], sop_uid=row[2],
        location=row[3], size=row[4], frames=_frames(row[5]),
        bulk={k: (int(v[0]), int(v[1])) for k, v in json.loads(row[6]).items()},
        sop_class_uid=row[7], transfer_syntax_uid=row[8],
    )


def _frames(text: str | None) -> list[list[tuple[int, int]]] | None:
    if text is None:
        return None
    return [[(int(o), int(n)) for o, n in frame] for frame in json.loads(text)]


def _abandon(outcomes: list[StoreOutcome | None], written: dict[int, str],
             failure: StoreOutcome) -> list[StoreOutcome]:
    for i, path in written.items():
        _unlink(path)
        outcomes[i] = failure
    return [o or failure for o in outcomes]


def _index_failure(exc: sqlite3.Error) -> StoreOutcome:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        return StoreOutcome("failed", "out of storage space", OUT_OF_RESOURCES)
    return StoreOutcome("failed", "index write failed", PROCESSING_FAILURE)


def _io_failure(exc: OSError) -> StoreOutcome:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreOutcome("failed", "out of storage space", OUT_OF_RESOURCES)
    log.error("writing an instance failed: {error}", error=exc.strerror or str(exc))
    return StoreOutcome("failed", "storage write failed", PROCESSING_FAILURE)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
