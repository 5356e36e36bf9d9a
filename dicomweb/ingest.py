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
from twisted.python.threadpool import ThreadPool

from .dicom import analyze as az
from .dicom.stowresponse import StowResult
from .mediatype import parse_media_type
from .store import Store, StoreItem
from .twistedtypes import IReactor

log = Logger()

#: Parts analysed per thread-pool call, and stored per store transaction.
ANALYZE_BATCH = 10
#: Store batches in flight while the next batch is analysed: enough to keep
#: the analysis and the store's fsyncs overlapping, and a bound on the part
#: files held open and the analysed metadata held in memory for a huge body.
MAX_STORING = 2


@dataclass
class IngestItem:
    """One part to analyse and store: where its bytes are."""

    content_type: str | None
    source: IO[bytes] | None  # None: open ``path`` when analysed
    offset: int
    length: int
    path: str | None = None  # a part file of its own, which the store may move

    def store_item(self, info: az.InstanceInfo) -> StoreItem:
        """What the store needs of this analysed item (its source is open:
        analysis opened it and only ``close`` releases it)."""
        assert self.source is not None
        return StoreItem(info, self.source, self.offset, self.length, self.path)

    def close(self) -> None:
        if self.path is not None and self.source is not None:
            self.source.close()
            self.source = None


def _analyze_parts(items: Sequence[IngestItem], target_study: str | None) -> list[az.InstanceInfo | StowResult]:
    out: list[az.InstanceInfo | StowResult] = []
    for item in items:
        out.append(_analyze_one(item, target_study))
    return out


def _analyze_one(item: IngestItem, target_study: str | None) -> az.InstanceInfo | StowResult:
    ctype = item.content_type
    if ctype is not None:
        try:
            media = parse_media_type(ctype)
        except ValueError:
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND, reason="malformed part Content-Type")
        if media.type != "application/dicom":
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND, reason="the part is not application/dicom")
    if item.source is None and item.path is not None:
        item.source = open(item.path, "rb")  # kept open for the store; IngestItem.close
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
    if target_study is not None and info.study_uid != target_study:
        log.info("instance refused: StudyInstanceUID differs from the target study")
        return StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid,
                          failure=az.DATASET_DOES_NOT_MATCH, reason="StudyInstanceUID differs from the target study")
    return info


async def ingest(store: Store, reactor: IReactor, pool: ThreadPool, items: list[IngestItem],
                       target_study: str | None) -> list[StowResult]:
    """Analyse ``items`` in the thread pool and store the valid ones; one
    result per item, in order. A failed item is answered with its DICOM
    failure reason and leaves nothing stored."""
    results: list[StowResult | None] = [None] * len(items)
    storing: list[Deferred[None]] = []
    try:
        for start in range(0, len(items), ANALYZE_BATCH):
            if len(storing) >= MAX_STORING:
                await _finished(storing[-MAX_STORING])
            chunk = items[start:start + ANALYZE_BATCH]
            try:
                analysed = await deferToThreadPool(reactor, pool, _analyze_parts, chunk, target_study)
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
                storing.append(Deferred.fromCoroutine(_store(store, items, pending, results)))
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


async def _store(store: Store, items: list[IngestItem], pending: list[tuple[int, az.InstanceInfo]],
                 results: list[StowResult | None]) -> None:
    batch = [items[i].store_item(info) for i, info in pending]
    try:
        outcomes = await store.store_batch(batch)
    finally:
        for i, _info in pending:
            items[i].close()
    for (i, info), outcome in zip(pending, outcomes, strict=False):
        failure = outcome.failure if outcome.outcome == "failed" else 0
        reason = (outcome.reason or "the store refused the instance") if failure else ""
        results[i] = StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid, failure=failure,
                                reason=reason)


__all__ = ["ANALYZE_BATCH", "MAX_STORING", "IngestItem", "ingest"]
