"""STOW-RS: read the parts of a spooled body, analyse them, store them.

The body is read in place from the file twisted.web spooled it into; each
part is analysed (pydicom) in the thread pool and copied once into the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..dicom import analyze as az
from ..dicom.multipart import MultipartError, Part, iter_parts
from ..dicom.stow import StowResult
from ..mediatype import parse_media_type
from ..store import Store, StoreItem
from .errors import bad_request, unsupported_media_type

log = Logger()

#: Parts analysed per thread-pool call, and stored per store transaction.
ANALYZE_BATCH = 10


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


def _list_parts(body: IO[bytes], boundary: str) -> list[Part]:
    return list(iter_parts(body, boundary))  # type: ignore[arg-type]


def _analyze_parts(body: IO[bytes], parts: Sequence[Part], target_study: str | None) -> list[az.InstanceInfo | StowResult]:
    out: list[az.InstanceInfo | StowResult] = []
    for part in parts:
        out.append(_analyze_one(body, part, target_study))
    return out


def _analyze_one(body: IO[bytes], part: Part, target_study: str | None) -> az.InstanceInfo | StowResult:
    ctype = part.content_type
    if ctype is not None:
        try:
            media = parse_media_type(ctype)
        except ValueError:
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND)
        if media.type != "application/dicom":
            return StowResult("", "", failure=az.CANNOT_UNDERSTAND)
    try:
        info = az.analyze(body, part.offset, part.length)  # type: ignore[arg-type]
    except az.InvalidInstance as exc:
        log.info("STOW part refused: {reason}", reason=exc.reason)
        return StowResult(exc.sop_class_uid, exc.sop_uid, failure=exc.failure)
    if target_study is not None and info.study_uid != target_study:
        log.info("STOW part refused: StudyInstanceUID differs from the target study")
        return StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid,
                          failure=az.DATASET_DOES_NOT_MATCH)
    return info


async def store_body(store: Store, reactor: Any, pool: Any, body: IO[bytes], boundary: str,
                     target_study: str | None) -> list[StowResult]:
    """Analyse and store every part of ``body``; one result per part."""
    body.seek(0)
    try:
        parts: list[Part] = await deferToThreadPool(reactor, pool, _list_parts, body, boundary)
    except MultipartError as exc:
        raise bad_request(f"malformed multipart body: {exc}") from None
    if not parts:
        raise bad_request("the multipart body has no parts")
    results: list[StowResult | None] = [None] * len(parts)
    storing: list[Deferred[None]] = []
    try:
        for start in range(0, len(parts), ANALYZE_BATCH):
            chunk = parts[start:start + ANALYZE_BATCH]
            analysed = await deferToThreadPool(reactor, pool, _analyze_parts, body, chunk, target_study)
            pending = []
            for i, item in enumerate(analysed, start):
                if isinstance(item, StowResult):
                    results[i] = item
                else:
                    pending.append((i, item))
            if pending:
                # Store this batch while the next one is analysed: the body is
                # read with pread, so both threads can read it at once.
                storing.append(Deferred.fromCoroutine(_store(store, body, parts, pending, results)))
    finally:
        if storing:
            try:
                await gatherResults(storing, consumeErrors=True)
            except FirstError as exc:
                # Raise the store's own error (e.g. StoreUnavailable -> 503).
                exc.subFailure.raiseException()
    return [r for r in results if r is not None]


async def _store(store: Store, body: IO[bytes], parts: list[Part],
                 pending: list[tuple[int, az.InstanceInfo]], results: list[StowResult | None]) -> None:
    items = [StoreItem(info, body, parts[i].offset, parts[i].length) for i, info in pending]  # type: ignore[arg-type]
    outcomes = await store.store_batch(items)
    for (i, info), outcome in zip(pending, outcomes, strict=False):
        failure = outcome.failure if outcome.outcome == "failed" else 0
        results[i] = StowResult(info.sop_class_uid, info.sop_uid, info.study_uid, info.series_uid, failure=failure)


__all__ = ["body_boundary", "store_body"]
