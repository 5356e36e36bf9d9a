"""STOW-RS: read the parts of a received body, analyse them, store them.

Usually the body arrived split into one file per part
(:class:`~dicomweb.dicom.multipart.PartSplitter`): each part file is analysed
in the thread pool and the store moves it into place. Otherwise (a store
without a part directory, or a body the splitter did not understand) the
body is one spooled file, read in place by the multipart reader, and each
part is copied once into the store.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..dicom import analyze as az
from ..dicom.multipart import MultipartError, Part, PartSplitter, iter_parts
from ..dicom.stow import StowResult
from ..mediatype import parse_media_type
from ..store import Store, StoreItem
from .errors import bad_request, unsupported_media_type

log = Logger()

#: Parts analysed per thread-pool call, and stored per store transaction.
ANALYZE_BATCH = 10
#: Store batches in flight while the next batch is analysed: enough to keep
#: the analysis and the store's fsyncs overlapping, and a bound on the part
#: files held open and the analysed metadata held in memory for a huge body.
MAX_STORING = 2


def body_boundary(content_type: bytes | None) -> str:
    """The multipart boundary of a STOW request, or a 400/415 error."""
    if not content_type:
        raise unsupported_media_type('Content-Type must be multipart/related; type="application/dicom"')
    try:
        media = parse_media_type(content_type.decode("latin-1"))
    except ValueError as exc:
        raise bad_request(f"malformed Content-Type: {exc}") from None
    if media.type != "multipart/related":
        raise unsupported_media_type('Content-Type must be multipart/related; type="application/dicom"')
    part_type = media.param("type")
    if part_type is not None and part_type.lower() != "application/dicom":
        raise unsupported_media_type(
            f'multipart/related; type="{part_type[:40]}" is not supported; use type="application/dicom"')
    boundary = media.param("boundary")
    if not boundary:
        raise bad_request("multipart/related Content-Type has no boundary")
    return boundary


@dataclass
class _Item:
    """One part to analyse and store: where its bytes are."""

    content_type: str | None
    source: BinaryIO | None  # None: open ``path`` when analysed
    offset: int
    length: int
    path: str | None = None  # a part file of its own, which the store may move

    def close(self) -> None:
        if self.path is not None and self.source is not None:
            self.source.close()
            self.source = None


def _list_parts(body: IO[bytes], boundary: str) -> list[Part]:
    return list(iter_parts(body, boundary))  # type: ignore[arg-type]


def _analyze_parts(items: Sequence[_Item], target_study: str | None) -> list[az.InstanceInfo | StowResult]:
    out: list[az.InstanceInfo | StowResult] = []
    for item in items:
        out.append(_analyze_one(item, target_study))
    return out


def _analyze_one(item: _Item, target_study: str | None) -> az.InstanceInfo | StowResult:
    ctype = item.content_type
    if ctype is not None:
        try:
            media = parse_media_type(ctype)
        except ValueError:
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND)
        if media.type != "application/dicom":
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND)
    if item.source is None and item.path is not None:
        item.source = open(item.path, "rb")  # kept open for the store; _Item.close
    assert item.source is not None
    try:
        info = az.analyze(item.source, item.offset, item.length)
    except az.InvalidInstance as exc:
        log.info("STOW part refused: {reason}", reason=exc.reason)
        return StowResult(exc.sop_class_uid, exc.sop_uid, failure=exc.failure)
    if target_study is not None and info.study_uid != target_study:
        log.info("STOW part refused: StudyInstanceUID differs from the target study")
        return StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid,
                          failure=az.DATASET_DOES_NOT_MATCH)
    return info


async def store_body(store: Store, reactor: Any, pool: Any, body: IO[bytes] | PartSplitter, boundary: str,
                     target_study: str | None) -> list[StowResult]:
    """Analyse and store every part of ``body``; one result per part."""
    if isinstance(body, PartSplitter):
        body.hold()  # the part files stay until the store is done with them
        try:
            if body.complete:
                items = [_Item(p.content_type, None, 0, p.length, p.path) for p in body.parts]
                return await _store_items(store, reactor, pool, items, target_study)
            # The splitter gave up: the reader sees the exact body, and says
            # what is wrong with it (or reads what the splitter did not).
            directory = body.directory
            whole: IO[bytes] = await deferToThreadPool(
                reactor, pool, body.materialize, lambda: tempfile.TemporaryFile(dir=directory))
        finally:
            body.release()
        try:
            return await _store_spooled(store, reactor, pool, whole, boundary, target_study)
        finally:
            whole.close()
    return await _store_spooled(store, reactor, pool, body, boundary, target_study)


async def _store_spooled(store: Store, reactor: Any, pool: Any, body: IO[bytes], boundary: str,
                         target_study: str | None) -> list[StowResult]:
    body.seek(0)
    try:
        parts: list[Part] = await deferToThreadPool(reactor, pool, _list_parts, body, boundary)
    except MultipartError as exc:
        raise bad_request(f"malformed multipart body: {exc}") from None
    items = [_Item(p.content_type, body, p.offset, p.length) for p in parts]  # type: ignore[arg-type]
    return await _store_items(store, reactor, pool, items, target_study)


async def _store_items(store: Store, reactor: Any, pool: Any, items: list[_Item],
                       target_study: str | None) -> list[StowResult]:
    if not items:
        raise bad_request("the multipart body has no parts")
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


async def _store(store: Store, items: list[_Item], pending: list[tuple[int, az.InstanceInfo]],
                 results: list[StowResult | None]) -> None:
    batch = [StoreItem(info, items[i].source, items[i].offset, items[i].length, items[i].path)  # type: ignore[arg-type]
             for i, info in pending]
    try:
        outcomes = await store.store_batch(batch)
    finally:
        for i, _info in pending:
            items[i].close()
    for (i, info), outcome in zip(pending, outcomes, strict=False):
        failure = outcome.failure if outcome.outcome == "failed" else 0
        results[i] = StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid, failure=failure)


__all__ = ["body_boundary", "store_body"]
