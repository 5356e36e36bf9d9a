"""STOW-RS: read the parts of a received body and hand them to the ingest path.

Three body shapes (PS3.18 10.5.1.2) end in the same ingest call:

- ``multipart/related; type="application/dicom"``: one Part 10 object per
  part. Usually the body arrived split into one file per part
  (:class:`~dicomweb.io.multipart.PartSplitter`): each part file is analysed
  in the thread pool and the store moves it into place. Otherwise (a store
  without a part directory, or a body the splitter did not understand) the
  body is one spooled file, read in place by the multipart reader, and each
  part is copied once into the store.
- ``application/dicom``: the whole body is one Part 10 object.
- ``multipart/related; type="application/dicom+json"`` (or ``+xml``): DICOM
  JSON (or PS3.19 XML, converted by :mod:`~dicomweb.dicom.fromxml`) metadata
  parts and bulk data parts; :mod:`~dicomweb.dicom.fromjson` joins them into
  Part 10 objects first.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..dicom import analyze as az
from ..dicom import fromjson, fromxml
from ..dicom.stowresponse import StowResult
from ..ingest import IngestItem, PartPreparer, ingest
from ..io.files import read_at
from ..io.multipart import MAX_BOUNDARY, MultipartError, Part, PartSplitter, iter_parts
from ..mediatype import parse_media_type
from ..store import Store
from ..twistedtypes import IReactor
from .errors import bad_request, unsupported_media_type

log = Logger()

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
#: Root types of a multipart body whose parts are metadata + bulk data.
METADATA_TYPES = (DICOM_JSON, DICOM_XML)
_ACCEPTED = ('use multipart/related; type="application/dicom" (or "application/dicom+json" or '
             '"application/dicom+xml"), or application/dicom')


@dataclass(frozen=True)
class BodyShape:
    """How a STOW body is framed: ``part_type`` is "application/dicom" for a
    single Part 10 body (``boundary`` None) or the multipart root type."""

    part_type: str
    boundary: str | None = None


def _list_parts(body: IO[bytes], boundary: str) -> list[Part]:
    return list(iter_parts(body, boundary))


def body_shape(content_type: bytes | None) -> BodyShape:
    """The shape of a STOW request body, or a 400/415 error."""
    if not content_type:
        raise unsupported_media_type(f"Content-Type is missing: {_ACCEPTED}")
    try:
        media = parse_media_type(content_type.decode("latin-1"))
    except ValueError as exc:
        raise bad_request(f"malformed Content-Type: {exc}") from None
    if media.type == DICOM:
        return BodyShape(DICOM)
    if media.type != "multipart/related":
        raise unsupported_media_type(f"{media.type[:60]} is not supported: {_ACCEPTED}")
    part_type = (media.param("type") or DICOM).lower()
    if part_type not in (DICOM, *METADATA_TYPES):
        raise unsupported_media_type(f'multipart/related; type="{part_type[:40]}" is not supported: {_ACCEPTED}')
    boundary = media.param("boundary")
    if not boundary:
        raise bad_request("multipart/related Content-Type has no boundary")
    if len(boundary) > MAX_BOUNDARY:
        raise bad_request(f"multipart boundary longer than {MAX_BOUNDARY} characters")
    return BodyShape(part_type, boundary)



async def store_body(store: Store, reactor: IReactor, pool: ThreadPool, body: IO[bytes] | PartSplitter,
                     shape: BodyShape, target_study: str | None,
                     preparer: PartPreparer | None = None) -> list[StowResult]:
    """Analyse and store every instance of ``body``; one result per instance
    (and one failure per part that makes none). ``preparer``: the work
    already started on a split body's parts as they arrived."""
    if shape.boundary is None:
        return await _store_single(store, reactor, pool, body, target_study)
    if isinstance(body, PartSplitter):
        body.hold()  # the part files stay until the store is done with them
        try:
            if body.complete:
                if shape.part_type in METADATA_TYPES:
                    readers = [(p.headers, _file_reader(p.path)) for p in body.parts]
                    return await _store_json(store, reactor, pool, readers, target_study)
                items = [preparer.item(p) if preparer is not None else IngestItem.of_part(p) for p in body.parts]
                return await _ingest(store, reactor, pool, items, target_study)
            # The splitter gave up: the reader sees the exact body, and says
            # what is wrong with it (or reads what the splitter did not).
            directory = body.directory
            whole: IO[bytes] = await deferToThreadPool(
                reactor, pool, body.materialize, lambda: tempfile.TemporaryFile(dir=directory))
        finally:
            body.release()
        try:
            return await _store_spooled(store, reactor, pool, whole, shape, target_study)
        finally:
            whole.close()
    return await _store_spooled(store, reactor, pool, body, shape, target_study)


async def _store_single(store: Store, reactor: IReactor, pool: ThreadPool, body: Any,
                        target_study: str | None) -> list[StowResult]:
    """An ``application/dicom`` body: one instance, read in place."""
    if isinstance(body, PartSplitter):  # only multipart bodies are split
        raise bad_request("an application/dicom body cannot be multipart")
    body.seek(0, os.SEEK_END)
    size = body.tell()
    if size == 0:
        raise bad_request("the application/dicom body is empty")
    return await ingest(store, reactor, pool, [IngestItem(DICOM, body, 0, size)], target_study)


def _file_reader(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return read


async def _store_spooled(store: Store, reactor: IReactor, pool: ThreadPool, body: IO[bytes], shape: BodyShape,
                         target_study: str | None) -> list[StowResult]:
    body.seek(0)
    assert shape.boundary is not None
    try:
        parts: list[Part] = await deferToThreadPool(reactor, pool, _list_parts, body, shape.boundary)
    except MultipartError as exc:
        raise bad_request(f"malformed multipart body: {exc}") from None
    if shape.part_type in METADATA_TYPES:
        readers = [(p.headers, _span_reader(body, p)) for p in parts]
        return await _store_json(store, reactor, pool, readers, target_study)
    items = [IngestItem(p.content_type, body, p.offset, p.length) for p in parts]
    return await _ingest(store, reactor, pool, items, target_study)


def _span_reader(body: IO[bytes], part: Part) -> Callable[[], bytes]:
    def read() -> bytes:
        return read_at(body, part.offset, part.length)
    return read


PartReader = tuple[dict[str, str], Callable[[], bytes]]


async def _store_json(store: Store, reactor: IReactor, pool: ThreadPool, parts: list[PartReader],
                      target_study: str | None) -> list[StowResult]:
    """Metadata + bulk data parts: build each instance's Part 10 object, then
    ingest the built ones like received files."""
    if not parts:
        raise bad_request("the multipart body has no parts")
    built: list[IngestItem | StowResult] = await deferToThreadPool(reactor, pool, _build_instances, parts)
    items = [b for b in built if isinstance(b, IngestItem)]
    failures = [b for b in built if isinstance(b, StowResult)]
    stored = await ingest(store, reactor, pool, items, target_study) if items else []
    return failures + stored


def _build_instances(parts: list[PartReader]) -> list[IngestItem | StowResult]:
    metadata: list[dict[str, Any]] = []
    bulk: dict[str, fromjson.BulkPart] = {}
    out: list[IngestItem | StowResult] = []
    for headers, read in parts:
        ctype = headers.get("content-type") or "application/octet-stream"
        try:
            media = parse_media_type(ctype).type
        except ValueError:
            media = ""
        if media in METADATA_TYPES:
            parse = fromjson.parse_metadata if media == DICOM_JSON else fromxml.parse_metadata
            try:
                metadata.extend(parse(read()))
            except fromjson.Unusable as exc:
                out.append(_failure(exc.reason))
        elif media == DICOM:  # a whole instance among the metadata: accepted as is
            data = read()
            out.append(IngestItem(DICOM, io.BytesIO(data), 0, len(data)))
        else:
            location = headers.get("content-location")
            if not location:
                out.append(_failure("a bulk data part has no Content-Location"))
            else:
                bulk[location] = fromjson.BulkPart(location, ctype, read())
    for meta in metadata:
        try:
            data = fromjson.build(meta, bulk)
        except fromjson.Unusable as exc:
            out.append(_failure(exc.reason, exc.sop_class_uid, exc.sop_uid))
            continue
        out.append(IngestItem(DICOM, io.BytesIO(data), 0, len(data)))
    for part in bulk.values():
        if not part.used:
            out.append(_failure(f"no instance references the bulk data part at {part.location[:80]}"))
    return out


def _failure(reason: str, sop_class: str = "", sop_uid: str = "") -> StowResult:
    log.info("instance refused: {reason}", reason=reason)
    return StowResult(sop_class, sop_uid, failure=az.CANNOT_UNDERSTAND, reason=reason)


async def _ingest(store: Store, reactor: IReactor, pool: ThreadPool, items: list[IngestItem],
                  target_study: str | None) -> list[StowResult]:
    if not items:
        raise bad_request("the multipart body has no parts")
    return await ingest(store, reactor, pool, items, target_study)


__all__ = ["BodyShape", "body_shape", "store_body"]
