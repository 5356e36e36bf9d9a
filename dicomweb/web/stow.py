"""STOW-RS: read the parts of a received body and hand them to the ingest path.

Usually the body arrived split into one file per part
(:class:`~dicomweb.io.multipart.PartSplitter`): each part file is analysed
in the thread pool and the store moves it into place. Otherwise (a store
without a part directory, or a body the splitter did not understand) the
body is one spooled file, read in place by the multipart reader, and each
part is copied once into the store.
"""

from __future__ import annotations

import tempfile
from typing import IO

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..dicom.stowresponse import StowResult
from ..ingest import IngestItem, ingest
from ..io.multipart import MultipartError, Part, PartSplitter, iter_parts
from ..mediatype import parse_media_type
from ..store import Store
from ..twistedtypes import IReactor
from .errors import bad_request, unsupported_media_type


def _list_parts(body: IO[bytes], boundary: str) -> list[Part]:
    return list(iter_parts(body, boundary))  # type: ignore[arg-type]


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


async def store_body(store: Store, reactor: IReactor, pool: ThreadPool, body: IO[bytes] | PartSplitter, boundary: str,
                     target_study: str | None) -> list[StowResult]:
    """Analyse and store every part of ``body``; one result per part."""
    if isinstance(body, PartSplitter):
        body.hold()  # the part files stay until the store is done with them
        try:
            if body.complete:
                items = [IngestItem(p.content_type, None, 0, p.length, p.path) for p in body.parts]
                return await _ingest(store, reactor, pool, items, target_study)
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


async def _store_spooled(store: Store, reactor: IReactor, pool: ThreadPool, body: IO[bytes], boundary: str,
                         target_study: str | None) -> list[StowResult]:
    body.seek(0)
    try:
        parts: list[Part] = await deferToThreadPool(reactor, pool, _list_parts, body, boundary)
    except MultipartError as exc:
        raise bad_request(f"malformed multipart body: {exc}") from None
    items = [IngestItem(p.content_type, body, p.offset, p.length) for p in parts]  # type: ignore[arg-type]
    return await _ingest(store, reactor, pool, items, target_study)


async def _ingest(store: Store, reactor: IReactor, pool: ThreadPool, items: list[IngestItem],
                  target_study: str | None) -> list[StowResult]:
    if not items:
        raise bad_request("the multipart body has no parts")
    return await ingest(store, reactor, pool, items, target_study)


__all__ = ["body_boundary", "store_body"]
