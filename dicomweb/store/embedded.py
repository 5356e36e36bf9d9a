"""The embedded store: SQLite for the index, plain files for the bytes.

Layout under ``data_dir``::

    index.sqlite3           WAL mode, schema versioned in table ``meta``
    files/YYYYMMDD/HH/<uuid>.dcm  the Part 10 bytes exactly as received
    spool/                  request bodies being received (same file system)

Durability (the fsync policy): for each STOW batch, every new file is written
and ``fsync``-ed, then its directory is ``fsync``-ed, and only then is the
index committed in one transaction with ``synchronous=FULL``. The STOW
response is sent after that commit, so an acknowledged instance survives a
crash or power loss. A crash before the commit leaves at most an orphan file
that no index row points to: invisible, and listed by ``orphan_files`` (``dicomweb-admin orphans``).

Concurrency: SQLite work runs in the service's thread pool, one connection
per thread; WAL lets readers run while one writer (serialised by a lock)
commits. Small reads (QIDO, one instance's record or metadata) are first
tried on the reactor thread, on a read-only connection that never waits for
a lock and is interrupted after a fraction of a millisecond: a thread-pool
round trip costs more than such a read, and a read that turns out to be big
is run again in the pool (see :meth:`EmbeddedStore._read`).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..dicom.analyze import OUT_OF_RESOURCES, PROCESSING_FAILURE, InstanceInfo
from ..dicom.query import Query
from ..io.files import SpoolDir, copy_range, read_at, start_writeback
from . import sqlremove, sqlschema, sqlsearch
from .base import InstanceRecord, NotFound, StoreItem, StoreOutcome

T = TypeVar("T")
log = Logger()

#: How long (seconds) a read may hold the reactor thread before SQLite
#: interrupts it and it is run again in the thread pool. An indexed QIDO or
#: instance lookup takes tens of microseconds; a pool round trip about 150.
INLINE_BUDGET = 0.0005
#: SQLite calls the budget check every this many virtual machine steps
#: (a few microseconds of work each time).
_PROGRESS_STEPS = 2000
#: Answers built on the reactor thread at most: building one answer (JSON
#: decoding) costs some microseconds, so more go to the pool.
INLINE_ROWS = 50
#: After a read of some shape ran over the budget, this many reads of that
#: shape go straight to the pool before one is tried on the reactor again.
POOL_AFTER_SLOW = 64
_MAX_SHAPES = 1024


class EmbeddedStore:
    """SQLite index + files. See the module docstring for guarantees."""

    name = "embedded"

    def __init__(self, data_dir: str, reactor: Any, pool: ThreadPool) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.files_dir = os.path.join(self.data_dir, "files")
        self.spool_dir = os.path.join(self.data_dir, "spool")
        self.db_path = os.path.join(self.data_dir, "index.sqlite3")
        self._reactor = reactor
        self._pool = pool
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()
        self._reactor_conn: sqlite3.Connection | None = None  # used by _read on the reactor thread only
        self._slow_shapes: dict[Hashable, int] = {}  # read shape -> reads left to send to the pool

    # -- plumbing ---------------------------------------------------------

    def _run(self, fn: Callable[..., T], *args: Any) -> Any:
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any, shape: Hashable = None) -> T:
        """``fn(conn, *args)``, a read, on the reactor thread if it is quick, else in the pool.

        On the reactor thread ``conn`` is a query-only connection that does
        not wait for locks, and SQLite interrupts ``fn`` once it has run for
        :data:`INLINE_BUDGET`; an interrupted (or lock-blocked) read is run
        again in the pool, so the reactor is never held for longer.  ``fn``
        must only read, and do little Python work per row it reads.

        ``shape`` names the kind of read (e.g. which filters a search has):
        after a read of a shape was interrupted, the next
        :data:`POOL_AFTER_SLOW` reads of that shape go straight to the pool
        (a big index, e.g., would otherwise cost the budget on every request),
        then one is tried on the reactor again.
        """
        key = (fn, shape)
        conn = self._inline_conn()
        pool_turns = self._slow_shapes.get(key, 0)
        if pool_turns:
            self._slow_shapes[key] = pool_turns - 1
        elif conn is not None:
            deadline = time.perf_counter() + INLINE_BUDGET
            conn.set_progress_handler(lambda: time.perf_counter() > deadline, _PROGRESS_STEPS)
            try:
                return fn(conn, *args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _RETRY_IN_POOL:
                    raise
                if exc.sqlite_errorcode == sqlite3.SQLITE_INTERRUPT:
                    if len(self._slow_shapes) >= _MAX_SHAPES:
                        self._slow_shapes.clear()  # bounded, whatever shapes clients invent
                    self._slow_shapes[key] = POOL_AFTER_SLOW
            finally:
                conn.set_progress_handler(None, 0)
        result: T = await self._run(lambda: fn(self._conn(), *args))
        return result

    def _inline_conn(self) -> sqlite3.Connection | None:
        """The reactor thread's read-only connection (None if it cannot be opened now)."""
        conn = self._reactor_conn
        if conn is None:
            try:
                # timeout=0: a lock is never waited for on the reactor (the pool waits instead).
                conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=0)
                conn.execute("PRAGMA query_only=ON")
                conn.execute("PRAGMA cache_size=-65536")
            except sqlite3.Error:
                return None
            self._reactor_conn = conn
            with self._conn_lock:
                self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-65536")
            self._local.conn = conn
            with self._conn_lock:
                self._connections.append(conn)
        return conn

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        for path in (self.data_dir, self.files_dir, self.spool_dir):
            os.makedirs(path, exist_ok=True)
        await self._run(self._open_sync)
        log.info("embedded store ready at {path}", path=self.data_dir)

    def _open_sync(self) -> None:
        conn = self._conn()
        with self._write_lock:
            sqlschema.migrate(conn)
        # Bodies and part files left in the spool by a crash were never
        # acknowledged (a stored part was renamed out of it first).
        for name in os.listdir(self.spool_dir):
            try:
                os.unlink(os.path.join(self.spool_dir, name))
            except OSError:
                pass

    async def close(self) -> None:
        with self._conn_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
            self._reactor_conn = None

    async def ready(self) -> bool:
        try:
            await self._run(lambda: self._conn().execute("SELECT 1").fetchone())
        except sqlite3.Error:
            return False
        return True

    @property
    def spool_file(self) -> SpoolDir:
        """Request bodies are received in the store's spool directory (same
        file system): called, an anonymous file for a whole body; its
        ``parts_dir`` takes the part files of a split multipart body, which
        ``store_batch`` renames into place."""
        return SpoolDir(self.spool_dir)

    # -- store --------------------------------------------------------------

    async def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]:
        result: list[StoreOutcome] = await self._run(self._store_batch_sync, list(items))
        return result

    def _store_batch_sync(self, items: list[StoreItem]) -> list[StoreOutcome]:
        outcomes: list[StoreOutcome | None] = [None] * len(items)
        written: dict[int, str] = {}
        dirs: set[str] = set()
        conn = self._conn()
        bucket = time.strftime("%Y%m%d/%H")  # one batch, one directory to fsync
        for i, item in enumerate(items):
            try:
                if self._is_identical(conn, item):
                    outcomes[i] = StoreOutcome("unchanged")
                    continue
                path = self._write_file(item, bucket, dirs)
            except OSError as exc:
                outcomes[i] = _io_failure(exc)
                continue
            written[i] = path
        try:
            # fsync after all writes: the file system commits the batch's data
            # together, so the later fsyncs are cheap.
            for path in written.values():
                _fsync_path(path)
            for directory in dirs:
                _fsync_dir(directory)
        except OSError as exc:
            return self._abandon(items, outcomes, written, _io_failure(exc))
        replaced_paths: list[str] = []
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for i, path in written.items():
                    outcomes[i] = self._index_one(conn, items[i].info, path, replaced_paths)
                    if outcomes[i] and outcomes[i].outcome == "failed":  # type: ignore[union-attr]
                        _unlink(path)
                sqlschema.refresh_aggregates(conn, {items[i].info.study_uid for i in written},
                                             {items[i].info.series_uid for i in written})
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK") if conn.in_transaction else None
                log.error("index commit failed: {error}", error=str(exc))
                return self._abandon(items, outcomes, written, StoreOutcome("failed", "index write failed", PROCESSING_FAILURE))
        for path in replaced_paths:
            _unlink(path)
        return [o or StoreOutcome("failed", "not processed", PROCESSING_FAILURE) for o in outcomes]

    def _abandon(self, items: list[StoreItem], outcomes: list[StoreOutcome | None],
                 written: dict[int, str], failure: StoreOutcome) -> list[StoreOutcome]:
        for i, path in written.items():
            _unlink(path)
            outcomes[i] = failure
        return [o or failure for o in outcomes]

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

    def _write_file(self, item: StoreItem, bucket: str, dirs: set[str]) -> str:
        """Write one instance's bytes to a new file under ``files/<bucket>``;
        ``dirs`` collects the directories whose entries changed (to fsync)."""
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
            # it was received; the batch's fsyncs below make it durable.
            try:
                os.rename(item.path, path)
                return path
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
        return path

    def _index_one(self, conn: sqlite3.Connection, info: InstanceInfo, path: str,
                   replaced_paths: list[str]) -> StoreOutcome:
        # Files linked in place (offline import) keep their absolute path.
        rel = os.path.relpath(path, self.files_dir) if self._owned(path) else path
        conn.execute("SAVEPOINT one")
        try:
            old = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (info.sop_uid,)).fetchone()
            sqlschema.upsert_instance(conn, info, rel)
            was_rejected = sqlremove.forget_rejected(conn, info.sop_uid)  # storing again restores it
            conn.execute("RELEASE one")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            log.error("indexing one instance failed: {error}", error=str(exc))
            return StoreOutcome("failed", "index write failed", PROCESSING_FAILURE)
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

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Remove the instances (visible or rejected) and reclaim their files."""
        count: int = await self._run(self._delete_sync, sqlremove.Target(study, series, sop))
        return count

    def _delete_sync(self, target: sqlremove.Target) -> int:
        count, paths = self._write(lambda conn: sqlremove.delete(conn, target))
        if not count:
            raise NotFound("no such " + _level_name(target))
        for stored in paths:
            self._unlink_owned(stored)
        return count

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        """Move the visible instances to the rejected area (files kept)."""
        count: int = await self._run(self._reject_sync, sqlremove.Target(study, series, sop), code, scheme)
        return count

    def _reject_sync(self, target: sqlremove.Target, code: str, scheme: str) -> int:
        count: int = self._write(lambda conn: sqlremove.reject(conn, target, code, scheme))
        if not count:
            raise NotFound("no such " + _level_name(target))
        return count

    def purge_rejected_sync(self, older_than: float) -> int:
        """Delete instances rejected more than ``older_than`` seconds ago."""
        paths: list[str] = self._write(lambda conn: sqlremove.purge_rejected(conn, time.time() - older_than))
        for stored in paths:
            self._unlink_owned(stored)
        return len(paths)

    def _write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``change`` in one serialised write transaction."""
        conn = self._conn()
        with self._write_lock:
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
        conn = self._conn()
        known = {r[0] for r in conn.execute("SELECT path FROM instances UNION ALL SELECT path FROM rejected")}
        cutoff = time.time() - 60
        out = []
        for folder, _dirs, names in os.walk(self.files_dir):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.relpath(path, self.files_dir) not in known and os.path.getmtime(path) < cutoff:
                    out.append(path)
        return out

    # -- offline import -----------------------------------------------------

    def open_sync(self) -> None:
        """Open without a reactor (command-line tools)."""
        for path in (self.data_dir, self.files_dir, self.spool_dir):
            os.makedirs(path, exist_ok=True)
        with self._write_lock:
            sqlschema.migrate(self._conn())

    def link_sync(self, infos: Sequence[InstanceInfo], paths: Sequence[str]) -> list[StoreOutcome]:
        """Index files in place, without copying them (the seed's "linkFolder").

        The store never deletes or rewrites a linked file; deleting such an
        instance only removes it from the index.
        """
        conn = self._conn()
        outcomes: list[StoreOutcome] = []
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                replaced: list[str] = []
                for info, path in zip(infos, paths, strict=True):
                    row = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (info.sop_uid,)).fetchone()
                    if row is not None and row[0] == os.path.abspath(path):
                        outcomes.append(StoreOutcome("unchanged"))
                        continue
                    outcomes.append(self._index_one(conn, info, os.path.abspath(path), replaced))
                sqlschema.refresh_aggregates(conn, {i.study_uid for i in infos}, {i.series_uid for i in infos})
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        for path in replaced:
            _unlink(path)
        return outcomes

    # -- retrieve -----------------------------------------------------------

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None) -> list[InstanceRecord]:
        rows = await self._select_rows("path, size, frames, bulk, sop_class_uid, transfer_syntax_uid",
                                       study, series, sop)
        return [
            InstanceRecord(
                study_uid=r[0], series_uid=r[1], sop_uid=r[2],
                location=r[3], size=r[4], frames=_frames(r[5]), bulk={k: tuple(v) for k, v in json.loads(r[6]).items()},  # type: ignore[misc]
                sop_class_uid=r[7], transfer_syntax_uid=r[8],
            )
            for r in rows
        ]

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None) -> list[bytes]:
        rows = await self._select_rows("(SELECT json FROM metadata m WHERE m.sop_uid=i.sop_uid)", study, series, sop)
        return [bytes(r[3]) for r in rows]

    async def _select_rows(self, columns: str, study: str, series: str | None,
                           sop: str | None) -> list[tuple[Any, ...]]:
        # One instance is a primary-key lookup: cheaper on the reactor thread
        # than a pool round trip. A series or study may be thousands of rows.
        if sop is not None:
            return await self._read(self._select, columns, study, series, sop)
        rows: list[tuple[Any, ...]] = await self._run(lambda: self._select(self._conn(), columns, study, series, sop))
        return rows

    def _select(self, conn: sqlite3.Connection, columns: str, study: str, series: str | None,
                sop: str | None) -> list[tuple[Any, ...]]:
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
            raise NotFound("no such " + ("instance" if sop else "series" if series else "study"))
        return rows

    async def read(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        data: bytes = await self._run(self._read_sync, record.location, offset, length)
        return data

    def _read_sync(self, location: str, offset: int, length: int) -> bytes:
        with open(os.path.join(self.files_dir, location), "rb") as fp:
            fp.seek(offset)
            return fp.read(length)

    def local_path(self, record: InstanceRecord) -> str | None:
        return os.path.join(self.files_dir, record.location)

    async def chunks(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        # Read on the reactor thread, as twisted.web.static.File does: a chunk
        # of a stored file is a page-cache copy (tens of microseconds), and a
        # thread hop per chunk cost a quarter of retrieve throughput (measured
        # with bench/run.py). The chunk size bounds how long a cold read can
        # hold the reactor; the producer's backpressure bounds memory.
        path = os.path.join(self.files_dir, record.location)
        offset = 0
        while True:
            data: bytes = _read_chunk(path, offset, chunk_size)
            if data:
                yield data
            if len(data) < chunk_size:
                return
            offset += len(data)

    # -- search -------------------------------------------------------------

    async def search(self, query: Query) -> list[dict[str, Any]]:
        # Searches with the same filters on the same attributes cost alike.
        shape = (query.level, tuple((f.tag, f.kind) for f in query.filters), bool(query.includefields))
        rows = await self._read(sqlsearch.fetch, query, shape=shape)
        if len(rows) <= INLINE_ROWS:
            return await self._read(sqlsearch.answers, query, rows, shape=shape)
        # Many answers: building them (JSON decoding) is work for the pool.
        result: list[dict[str, Any]] = await self._run(lambda: sqlsearch.answers(self._conn(), query, rows))
        return result


#: SQLite errors after which a read tried on the reactor thread is run in the pool.
_RETRY_IN_POOL = frozenset({sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _level_name(target: sqlremove.Target) -> str:
    return "instance" if target.sop else "series" if target.series else "study"


def _read_chunk(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fp:
        return os.pread(fp.fileno(), size, offset)


def _frames(text: str | None) -> list[list[tuple[int, int]]] | None:
    if text is None:
        return None
    return [[(int(o), int(n)) for o, n in frame] for frame in json.loads(text)]


def _io_failure(exc: OSError) -> StoreOutcome:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreOutcome("failed", "out of storage space", OUT_OF_RESOURCES)
    log.error("writing an instance failed: {error}", error=exc.strerror or str(exc))
    return StoreOutcome("failed", "storage write failed", PROCESSING_FAILURE)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

