"""The one ingest path: analyse received instances, store the valid ones.

STOW-RS (every body shape), DIMSE C-STORE and the offline importer all end
here, so what is accepted and what is durable before an acknowledgement is
decided in one place. Analysis (pydicom, the fast header parser) runs in the
service's thread pool; the store makes each batch durable before its results
are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .dicom import analyze as az
from .dicom.stowresponse import StowResult
from .io.files import fsync_path
from .io.multipart import PartFile
from .mediatype import parse_media_type
from .store import Store, StoreItem
from .twistedtypes import IReactor

log = Logger()

#: Parts analysed per thread-pool call, and stored per store transaction.
ANALYZE_BATCH = 10
#: Parts analysed ahead (:class:`PartPreparer`) stored per store transaction:
#: with the analysis done, a larger batch only saves commits (each one an
#: fsync of the index log: 4 ms of the 6 ms a batch of 10 spent indexing here).
PREPARED_BATCH = 50
#: Store batches in flight while the next batch is analysed: enough to keep
#: the analysis and the store's fsyncs overlapping, and a bound on the part
#: files held open and the analysed metadata held in memory for a huge body.
MAX_STORING = 2


#: What analysing one part gives: the instance, or why it is refused.
Analysed = az.InstanceInfo | StowResult


@dataclass(frozen=True)
class Prepared:
    """What was done to a part file while the rest of its body arrived."""

    analysed: Analysed | None  # None: not analysed ahead (analysed with the rest)
    synced: bool  # the file's bytes are durable


@dataclass
class IngestItem:
    """One part to analyse and store: where its bytes are."""

    content_type: str | None
    source: IO[bytes] | None  # None: open ``path`` when analysed
    offset: int
    length: int
    path: str | None = None  # a part file of its own, which the store may move
    #: Work started on the part file while the body arrived (:class:`PartPreparer`).
    prepared: Deferred[Prepared] | None = None
    synced: bool = False  # ``path`` is durable already (StoreItem.synced)

    @classmethod
    def of_part(cls, part: PartFile, prepared: Deferred[Prepared] | None = None) -> IngestItem:
        """The item of a part file the body was split into."""
        return cls(part.content_type, None, 0, part.length, part.path, prepared)

    def open(self) -> None:
        """Open the part file, if that is where the bytes are (blocking)."""
        if self.source is None and self.path is not None:
            self.source = open(self.path, "rb")  # kept open for the store; ``close``

    def store_item(self, info: az.InstanceInfo) -> StoreItem:
        """What the store needs of this analysed item (its source is open:
        ``open`` or analysis opened it and only ``close`` releases it)."""
        assert self.source is not None
        return StoreItem(info, self.source, self.offset, self.length, self.path, self.synced)

    def close(self) -> None:
        if self.path is not None and self.source is not None:
            self.source.close()
            self.source = None


#: Parts of one body analysed while the rest of it still arrives: a bound on
#: the analysed metadata held until the body is complete (the parts after
#: these are analysed once it is, as any spooled part is). Their files are
#: all synced ahead: that holds nothing in memory.
PREPARE_AHEAD = 100
#: Pool calls preparing part files of one body at once, so one large upload
#: cannot queue its parts ahead of every other request's work.
PREPARING = 2


class PartPreparer:
    """Works on the part files of one ``multipart/related; type="application/dicom"``
    body while the rest of it arrives (the receiver's :class:`~dicomweb.io.multipart.PartSplitter`
    calls :meth:`part_done`): each complete part is analysed (the first
    ``PREPARE_AHEAD``) and fsynced in the thread pool. Once the last byte is
    in, STOW is left with the moves and the index transaction: on this
    machine, 20 parts of 0.5 MB spent 38 ms after their body arrived, most of
    it fsyncs and analysis, and 18 ms with this (PS3.18 10.5: the response is
    sent only after every instance is stored or refused, so that wait is the
    client's). Syncing ahead without analysing ahead gained nothing measurable.

    Nothing is stored or acknowledged here: a body that turns out malformed,
    too large or refused leaves only files that are removed with it, and a
    part whose preparation failed (its file already removed, an I/O error) is
    analysed and synced again by the usual path, which reports any error.
    """

    def __init__(self, reactor: IReactor, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool
        self._running = 0
        self._waiting: list[tuple[IngestItem, bool, Deferred[Prepared]]] = []
        self._started: dict[str, Deferred[Prepared]] = {}

    def part_done(self, part: PartFile) -> None:
        item = IngestItem.of_part(part)
        done: Deferred[Prepared] = Deferred()
        self._waiting.append((item, len(self._started) < PREPARE_AHEAD, done))
        self._started[part.path] = done
        self._run()

    def _run(self) -> None:
        """Start the parts waiting, in one pool call while fewer than
        ``PREPARING`` run: small parts that complete together (50 instances
        of 1 kB arrive in one read) cost one thread hop, not 50."""
        while self._waiting and self._running < PREPARING:
            batch, self._waiting = self._waiting, []
            self._running += 1
            d = deferToThreadPool(self._reactor, self._pool, _prepare_all, [(i, a) for i, a, _d in batch])
            d.addErrback(_none_prepared, len(batch))
            d.addCallback(self._finished, [done for _i, _a, done in batch])

    def _finished(self, results: list[Prepared], waiting: list[Deferred[Prepared]]) -> None:
        self._running -= 1
        for done, result in zip(waiting, results, strict=True):
            done.callback(result)
        self._run()

    def item(self, part: PartFile) -> IngestItem:
        """The ingest item of ``part``, with the work started on it."""
        return IngestItem.of_part(part, self._started.get(part.path))


def _prepare(item: IngestItem, analyse: bool) -> Prepared:
    """Analyse (when asked) and fsync one part file (blocking). An instance
    refused by analysis is not synced: it will not be stored."""
    analysed = None
    if analyse:
        try:
            analysed = _analyze_one(item)
        finally:
            item.close()
        if isinstance(analysed, StowResult):
            return Prepared(analysed, False)
    assert item.path is not None
    fsync_path(item.path)
    return Prepared(analysed, True)


def _none_prepared(failure: Failure, count: int) -> list[Prepared]:
    log.failure("preparing part files failed", failure)
    return [Prepared(None, False)] * count


def _prepare_all(work: list[tuple[IngestItem, bool]]) -> list[Prepared]:
    return [_prepare_or_not(item, analyse) for item, analyse in work]


def _prepare_or_not(item: IngestItem, analyse: bool) -> Prepared:
    try:
        return _prepare(item, analyse)
    except Exception:
        # The file is gone (the request ended) or could not be read or synced:
        # the usual path does that work again and says what is wrong, if anything.
        return Prepared(None, False)


def _analyze_parts(items: Sequence[IngestItem]) -> list[Analysed]:
    return [_analyze_one(item) for item in items]


def _open_all(items: Sequence[IngestItem]) -> None:
    for item in items:
        item.open()


def _for_target(result: Analysed, target_study: str | None) -> Analysed:
    """A STOW to /studies/{study} refuses instances of any other study (PS3.18 10.5.3)."""
    if isinstance(result, StowResult) or target_study is None or result.study_uid == target_study:
        return result
    log.info("instance refused: StudyInstanceUID differs from the target study")
    return StowResult(result.sop_class_uid, result.sop_uid, result.study_uid, result.series_uid,
                      failure=az.DATASET_DOES_NOT_MATCH, reason="StudyInstanceUID differs from the target study")


def _analyze_one(item: IngestItem) -> Analysed:
    ctype = item.content_type
    if ctype is not None:
        try:
            media = parse_media_type(ctype)
        except ValueError:
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND, reason="malformed part Content-Type")
        if media.type != "application/dicom":
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND, reason="the part is not application/dicom")
    item.open()
    assert item.source is not None
    try:
        info = az.analyze(item.source, item.offset, item.length)
    except az.InvalidInstance as exc:
        log.info("instance refused: {reason}", reason=exc.reason)
        return StowResult(exc.sop_class_uid, exc.sop_uid, failure=exc.failure, reason=exc.reason)
    except Exception as exc:  # one damaged part must not fail the request
        # The type and place only: a message may quote values (patient data).
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
        log.error("instance refused: analysis raised {kind} at {where}", kind=type(exc).__name__, where=where)
        return StowResult("", "", failure=az.PROCESSING_FAILURE, reason=f"analysis failed ({type(exc).__name__})")
    return info


async def ingest(store: Store, reactor: IReactor, pool: ThreadPool, items: list[IngestItem],
                       target_study: str | None) -> list[StowResult]:
    """Analyse ``items`` in the thread pool and store the valid ones; one
    result per item, in order. A failed item is answered with its DICOM
    failure reason and leaves nothing stored."""
    results: list[StowResult | None] = [None] * len(items)
    storing: list[Deferred[None]] = []
    try:
        start = 0
        while start < len(items):
            if len(storing) >= MAX_STORING:
                await _finished(storing[-MAX_STORING])
            chunk = items[start:start + (PREPARED_BATCH if items[start].prepared is not None else ANALYZE_BATCH)]
            try:
                analysed = [_for_target(r, target_study) for r in await _analyse(reactor, pool, chunk)]
            except BaseException:
                for item in chunk:
                    item.close()
                raise
            pending = []
            for i, result in enumerate(analysed, start):
                if isinstance(result, StowResult):
                    results[i] = result
                    items[i].close()
                else:
                    pending.append((i, result))
            if pending:
                # Store this batch while the next one is analysed: a spooled
                # body is read with pread, so both threads can read it at once.
                storing.append(Deferred.fromCoroutine(_store(store, reactor, pool, items, pending, results)))
            start += len(chunk)
    finally:
        if storing:
            try:
                await gatherResults(storing, consumeErrors=True)
            except FirstError as exc:
                # Raise the store's own error (e.g. StoreUnavailable -> 503).
                exc.subFailure.raiseException()
    return [r for r in results if r is not None]


def _finished(d: Deferred[None]) -> Deferred[None]:
    """Fires when ``d`` has a result, leaving that result (even a failure)
    in ``d`` for the final ``gatherResults``."""
    done: Deferred[None] = Deferred()

    def _pass(result: Any) -> Any:
        done.callback(None)
        return result

    d.addBoth(_pass)
    return done


async def _analyse(reactor: IReactor, pool: ThreadPool, chunk: list[IngestItem]) -> list[Analysed]:
    """The analysis of each item of ``chunk``: what its preparation found, or
    analysed now in the thread pool (one call for the chunk)."""
    found: list[Analysed | None] = []
    for item in chunk:
        prepared = await item.prepared if item.prepared is not None else None
        item.prepared = None
        item.synced = prepared is not None and prepared.synced
        found.append(prepared.analysed if prepared is not None else None)
    todo = [item for item, result in zip(chunk, found, strict=True) if result is None]
    fresh = iter(await deferToThreadPool(reactor, pool, _analyze_parts, todo) if todo else [])
    return [result if result is not None else next(fresh) for result in found]


async def _store(store: Store, reactor: IReactor, pool: ThreadPool, items: list[IngestItem],
                 pending: list[tuple[int, az.InstanceInfo]], results: list[StowResult | None]) -> None:
    try:
        if any(items[i].source is None for i, _info in pending):  # analysed ahead, then closed
            await deferToThreadPool(reactor, pool, _open_all, [items[i] for i, _info in pending])
        batch = [items[i].store_item(info) for i, info in pending]
        outcomes = await store.store_batch(batch)
    finally:
        for i, _info in pending:
            items[i].close()
    for (i, info), outcome in zip(pending, outcomes, strict=False):
        failure = outcome.failure if outcome.outcome == "failed" else 0
        reason = (outcome.reason or "the store refused the instance") if failure else ""
        results[i] = StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid, failure=failure,
                                reason=reason)


__all__ = ["ANALYZE_BATCH", "MAX_STORING", "IngestItem", "PartPreparer", "Prepared", "ingest"]
