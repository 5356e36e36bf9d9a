"""The embedded store: SQLite for the index, plain files for the bytes.

The index, the files and their durability rules are
:class:`~dicomweb.store.sqlindex.EmbeddedIndex` (synchronous); this class
puts it behind the asynchronous :class:`~dicomweb.store.base.Store`
interface.

Concurrency: SQLite work runs in the service's thread pool, one connection
per thread; WAL lets readers run while one writer (serialised by a lock)
commits. Small reads (QIDO, one instance's record or metadata) are first
tried on the reactor thread, on a read-only connection that never waits for
a lock and is interrupted after a fraction of a millisecond: a thread-pool
round trip costs more than such a read, and a read that turns out to be big
is run again in the pool (see :meth:`EmbeddedStore._read`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..dicom.query import Query
from ..twistedtypes import IReactor
from . import sqlchanges, sqlindex, sqlsearch
from .base import InstanceRecord, Spool, StoreItem, StoreOutcome
from .changes import Change, ChangeSignal
from .sqlindex import EmbeddedIndex
from .sqlremove import Target

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
    """SQLite index + files (:class:`EmbeddedIndex`), asynchronous."""

    name = "embedded"

    def __init__(self, data_dir: str, reactor: IReactor, pool: ThreadPool) -> None:
        self.index = EmbeddedIndex(data_dir)
        self._reactor = reactor
        self._pool = pool
        self._reactor_conn: sqlite3.Connection | None = None  # used by _read on the reactor thread only
        self._slow_shapes: dict[Hashable, int] = {}  # read shape -> reads left to send to the pool
        # Request bodies are received in the store's spool directory (same
        # file system), and the part files of a split multipart body there
        # too, so ``store_batch`` renames them into place.
        self._spool = Spool(self.index.spool_dir, parts_dir=self.index.spool_dir)
        # Change-feed waiters, woken after each write this process commits
        # (and every second, for writers in other processes: dicomweb-admin).
        self._changed = ChangeSignal(reactor)

    @property
    def spool(self) -> Spool:
        return self._spool

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
        return await self._in_pool(fn, *args)

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in the pool, on that thread's connection."""
        result: T = await self._run(lambda: fn(self.index.connection(), *args))
        return result

    def _inline_conn(self) -> sqlite3.Connection | None:
        """The reactor thread's read-only connection (None if it cannot be opened now)."""
        if self._reactor_conn is None:
            try:
                # A lock is never waited for on the reactor (the pool waits instead).
                self._reactor_conn = self.index.read_only_connection()
            except sqlite3.Error:
                return None
        return self._reactor_conn

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open_sync)
        log.info("embedded store ready at {path}", path=self.index.data_dir)

    def _open_sync(self) -> None:
        self.index.open()
        self.index.clear_spool()

    async def close(self) -> None:
        self.index.close()
        self._reactor_conn = None

    async def ready(self) -> bool:
        ready: bool = await self._run(self.index.ready)
        return ready

    # -- store, delete, reject ----------------------------------------------

    async def store_batch(self, items: Sequence[StoreItem]) -> list[StoreOutcome]:
        try:
            result: list[StoreOutcome] = await self._run(self.index.store_batch, list(items))
        finally:
            self._changed.notify()
        return result

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Remove the instances (visible or rejected) and reclaim their files."""
        try:
            count: int = await self._run(self.index.delete, Target(study, series, sop))
        finally:
            self._changed.notify()
        return count

    async def reject(self, study: str, series: str | None, sop: str | None, code: str, scheme: str) -> int:
        """Move the visible instances to the rejected area (files kept)."""
        try:
            count: int = await self._run(self.index.reject, Target(study, series, sop), code, scheme)
        finally:
            self._changed.notify()
        return count

    async def purge_rejected(self, older_than: float) -> int:
        count: int = await self._run(self.index.purge_rejected, older_than)
        return count

    # -- change feed (sqlchanges) ----------------------------------------------

    async def changes(self, offset: int, limit: int, metadata: bool) -> list[Change]:
        return await self._read(sqlchanges.page, offset, limit, metadata, shape=metadata)

    async def latest_change(self, metadata: bool) -> Change | None:
        return await self._read(sqlchanges.latest, metadata)

    async def wait_changes(self, offset: int, timeout: float) -> bool:
        return await self._changed.wait(offset, timeout, lambda: self._read(sqlchanges.last_sequence))

    # -- retrieve -----------------------------------------------------------

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None) -> list[InstanceRecord]:
        rows = await self._select_rows(sqlindex.RECORD_COLUMNS, study, series, sop)
        return [sqlindex.record(r) for r in rows]

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None) -> list[bytes]:
        rows = await self._select_rows(sqlindex.METADATA_COLUMN, study, series, sop)
        return [bytes(r[3]) for r in rows]

    async def version(self, study: str, series: str | None = None) -> str:
        # A primary-key lookup: on the reactor thread (see _read).
        token: str = await self._read(sqlindex.version, study, series)
        return token

    async def _select_rows(self, columns: str, study: str, series: str | None,
                           sop: str | None) -> list[tuple[Any, ...]]:
        # One instance is a primary-key lookup: cheaper on the reactor thread
        # than a pool round trip. A series or study may be thousands of rows.
        if sop is not None:
            return await self._read(sqlindex.select, columns, study, series, sop)
        return await self._in_pool(sqlindex.select, columns, study, series, sop)

    async def read(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        data: bytes = await self._run(self.index.read, record.location, offset, length)
        return data

    def local_path(self, record: InstanceRecord) -> str | None:
        return self.index.path_of(record.location)

    async def chunks(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        # Read on the reactor thread, as twisted.web.static.File does: a chunk
        # of a stored file is a page-cache copy (tens of microseconds), and a
        # thread hop per chunk cost a quarter of retrieve throughput (measured
        # with bench/run.py). The chunk size bounds how long a cold read can
        # hold the reactor; the producer's backpressure bounds memory.
        path = self.index.path_of(record.location)
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
        return await self._in_pool(sqlsearch.answers, query, rows)


#: SQLite errors after which a read tried on the reactor thread is run in the pool.
_RETRY_IN_POOL = frozenset({sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _read_chunk(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fp:
        return os.pread(fp.fileno(), size, offset)
