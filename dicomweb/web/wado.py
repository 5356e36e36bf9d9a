"""WADO-RS: instances, metadata, frames, bulk data, rendered images.

The routes in ``app.py`` parse and validate the URL, then call :class:`Wado`.
Everything here reads what STOW recorded (frame and bulk byte ranges, DICOM
JSON) and never parses a stored object, except to transcode, decode or render
it, which runs in the service's thread pool. Large answers are streamed with
backpressure (``stream.stream``), so a client that goes away stops the work.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request

from ..dicom import pixels, render, transcode
from ..dicom.analyze import PIXEL_TAGS
from ..dicom.stowresponse import instance_path
from ..io.multipart import close_delimiter, delimiter, part_header
from ..store import InstanceRecord, Store
from ..twistedtypes import IReactor
from . import negotiation, ranges
from .compression import BodyCache, Coder, Made, compress_off_reactor, set_coded, worth_it
from .derived import DerivedCache
from .errors import bad_request, not_found
from .sendfile import FileSlice, Piece, body_length
from .sendfile import send as send_pieces
from .stream import stream
from .validators import (
    add_vary,
    boundary_of,
    coded,
    entity_tag,
    if_range_allows,
    instance_token,
    not_modified,
    validated,
)

log = Logger()
T = TypeVar("T")

EXPLICIT_LE = pixels.EXPLICIT_VR_LE
PIXEL_KEYS = frozenset(f"{tag:08X}" for tag in PIXEL_TAGS)
#: A bulk data path: a tag, then (item index, tag) pairs into sequences.
BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,16}")
_FRAME_NUMBER = re.compile(r"[0-9]{1,9}")
MAX_FRAMES_PER_REQUEST = 10_000
CHUNK = 1 << 20


def multipart_type(media: str, boundary: str) -> bytes:
    return f'multipart/related; type="{media}"; boundary={boundary}'.encode()


def parse_frame_list(text: str) -> list[int]:
    """1-based frame numbers of a ``frames/{list}`` path segment (order and repeats kept)."""
    items = text.split(",")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise bad_request(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    numbers = []
    for item in items:
        item = item.strip()
        if not _FRAME_NUMBER.fullmatch(item) or int(item) == 0:
            raise bad_request("frame numbers are positive integers separated by commas")
        numbers.append(int(item))
    return numbers


# -- rendering parameters ------------------------------------------------------

@dataclass(frozen=True)
class RenderOptions:
    window: render.Window | None = None
    viewport: render.Viewport | None = None
    quality: int | None = None


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"{name} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise bad_request(f"{name} must be a finite number")
    return value


def positive_int(text: str, name: str, maximum: int) -> int:
    if not _FRAME_NUMBER.fullmatch(text.strip()) or not 1 <= int(text) <= maximum:
        raise bad_request(f"{name} must be an integer from 1 to {maximum}")
    return int(text)


def make_window(center: str, width: str, function: str = "LINEAR") -> render.Window:
    function = function.strip().upper() or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise bad_request("the window function is LINEAR, LINEAR_EXACT or SIGMOID")
    c, w = _number(center, "window center"), _number(width, "window width")
    if w <= 0:
        raise bad_request("the window width must be positive")
    return c, w, function


def render_options(args: dict[bytes, list[bytes]]) -> RenderOptions:
    """``window``, ``viewport`` and ``quality`` query parameters (PS3.18 8.3.5)."""
    def last(name: bytes) -> str | None:
        values = args.get(name)
        return values[-1].decode("utf-8", "replace") if values else None

    window = viewport = quality = None
    if (text := last(b"window")) is not None:
        parts = text.split(",")
        if len(parts) not in (2, 3):
            raise bad_request("window is center,width[,function]")
        window = make_window(*parts)
    if (text := last(b"viewport")) is not None:
        parts = text.split(",")
        if len(parts) != 2:
            raise bad_request("viewport is width,height (source regions are not supported)")
        w, h = (positive_int(p, "viewport", 16384) if p.strip() else None for p in parts)
        viewport = (w, h)
    if (text := last(b"quality")) is not None:
        quality = positive_int(text, "quality", 100)
    return RenderOptions(window, viewport, quality)


def derived_family(target: str) -> str:
    """The cache key syntax of ``target``: HTJ2K lossless and lossless RPCL
    frames are the same codestream here (``htj2k`` writes RPCL always)."""
    return pixels.HTJ2K_RPCL if target == pixels.HTJ2K_LOSSLESS else target


def _producible(metadata: dict[str, Any] | None) -> Callable[[str, str], bool]:
    """Whether a stored syntax can be transcoded to a target, for this instance's pixel description."""
    return lambda stored, target: transcode.can_transcode(stored, target, metadata)


def _render_fragments(metadata: dict[str, Any], fragments: Sequence[bytes], tsuid: str, index: int,
                      media: str, options: RenderOptions, thumb: bool,
                      bulk: pixels.BulkResolver | None) -> bytes:
    """Decode one frame and render it (runs in the thread pool)."""
    frame = pixels.decode_frame_data(metadata, fragments, tsuid, index, bulk)
    return _render_source(frame, 0, media, options, thumb)


def _render_source(source: bytes | pixels.FrameData, index: int, media: str,
                   options: RenderOptions, thumb: bool) -> bytes:
    if thumb:
        return render.thumbnail(source, index, media, viewport=options.viewport, quality=options.quality)
    return render.render(source, index, media, window=options.window, viewport=options.viewport,
                         quality=options.quality)


# -- one instance's pixels -----------------------------------------------------

class InstancePixels:
    """Pixel access to one stored instance for one request.

    Metadata and the whole object are read lazily, at most once: most frame
    requests need neither (the stored fragments are sent as they are).
    """

    def __init__(self, wado: Wado, record: InstanceRecord) -> None:
        self.wado = wado
        self.record = record
        self._metadata: dict[str, Any] | None = None
        self._whole: bytes | None = None

    @property
    def stored(self) -> str:
        return self.record.transfer_syntax_uid

    def has_pixels(self) -> bool:
        return any(key in self.record.bulk for key in PIXEL_KEYS)

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            r = self.record
            texts = await self.wado.store.metadata(r.study_uid, r.series_uid, r.sop_uid)
            self._metadata = json.loads(texts[0])
        return self._metadata

    async def whole(self) -> bytes:
        """The whole Part 10 object (for what STOW could not address by frame)."""
        if self._whole is None:
            self._whole = await self.wado.store.read(self.record, 0, self.record.size)
        return self._whole

    async def frame_count(self) -> int:
        if self.record.frames is not None:
            return len(self.record.frames)
        metadata = await self.metadata()
        # Deflated objects have no pixel data range (it is compressed with the
        # rest of the data set): Rows tells that there is an image.
        if not self.has_pixels() and "00280010" not in metadata:
            return 0
        values = metadata.get("00280008", {}).get("Value") or [1]
        try:
            return max(1, int(values[0]))
        except (TypeError, ValueError):
            return 1

    async def check_frames(self, numbers: Sequence[int]) -> None:
        count = await self.frame_count()
        if count == 0:
            raise not_found("the instance has no pixel data")
        beyond = [n for n in numbers if n > count]
        if beyond:
            raise not_found(f"frame {beyond[0]} does not exist: the instance has {count} frame(s)")

    async def fragments(self, index: int) -> list[bytes]:
        """The stored fragments of frame ``index`` (0-based), in one read: they are contiguous."""
        frames = self.record.frames
        assert frames is not None  # asked only of a record with frame ranges (see frame)
        ranges = frames[index]
        if not ranges:
            return []
        start = ranges[0][0]
        end = ranges[-1][0] + ranges[-1][1]
        blob = await self.wado.store.read(self.record, start, end - start)
        return [blob[offset - start:offset - start + length] for offset, length in ranges]

    async def negotiate_frames(self, acceptable: Sequence[tuple[str, str | None]]) -> tuple[str, str]:
        """(media type, transfer syntax) of the frames; transcoding limits checked with the metadata."""
        first = pixels.negotiate_frame_syntax(self.stored, acceptable, transcode.can_transcode)
        if first[1] in (self.stored, EXPLICIT_LE):
            return first
        metadata = await self.metadata()
        return pixels.negotiate_frame_syntax(
            self.stored, acceptable, lambda s, t: transcode.can_transcode(s, t, metadata))

    def stored_frame(self, index: int, target: str) -> FileSlice | None:
        """Frame ``index`` as a slice of the stored object, when it is sent as
        stored and lies in one piece (native data, one fragment per frame)."""
        frames = self.record.frames
        if frames is None or len(frames[index]) != 1:
            return None
        if not (target == self.stored or (target == EXPLICIT_LE and self.stored == pixels.IMPLICIT_VR_LE)):
            return None
        offset, length = frames[index][0]
        return self.wado.part(self.record, offset, length)

    async def frame(self, index: int, target: str) -> bytes:
        """Frame ``index`` (0-based) in ``target``: the stored bytes when
        possible, else from the derived frame cache, else transcoded (and kept)."""
        stored = self.stored
        if self.record.frames is not None and (
                target == stored or (target == EXPLICIT_LE and stored == pixels.IMPLICIT_VR_LE)):
            fragments = await self.fragments(index)
            return fragments[0] if len(fragments) == 1 else b"".join(fragments)
        cache = self.wado.derived
        if cache is None or target in pixels.NATIVE:
            # Native frames are large and cheap to make again: not kept.
            return await self.derive(index, target)
        key = cache.key(self.record, derived_family(target), index)
        data = await self.wado.cpu(cache.get, key)
        self.wado.count_derived("hit" if data is not None else "miss")
        if data is None:
            data = await self.derive(index, target)
            await self.wado.cpu(cache.put, key, data)
        return data

    async def derive(self, index: int, target: str) -> bytes:
        """Frame ``index`` transcoded to ``target`` (in the thread pool)."""
        stored = self.stored
        if self.record.frames is None:
            return await self.wado.cpu(transcode.frame_from_instance, await self.whole(), index, target)
        fragments = await self.fragments(index)
        # Big endian native data is byte-swapped here (cheap, no decoding):
        # viewers read octet-stream frames as little endian.
        metadata = await self.metadata()
        return await self.wado.cpu(transcode.frame_bytes_to_target, fragments, metadata, stored, target,
                                   frame_index=index)

    async def rendered(self, index: int, media: str, options: RenderOptions, thumb: bool) -> bytes:
        if self.record.frames is None:
            return await self.wado.cpu(_render_source, await self.whole(), index, media, options, thumb)
        fragments = await self.fragments(index)
        metadata = await self.metadata()
        return await self.wado.cpu(_render_fragments, metadata, fragments, self.stored, index, media, options,
                                   thumb, self._bulk_resolver())

    def _bulk_resolver(self) -> pixels.BulkResolver:
        """Resolve BulkDataURIs (palettes, LUTs) from a pool thread through the reactor."""
        def resolve(uri: str) -> bytes:
            key = uri.rpartition("/bulk/")[2]
            where = self.record.bulk.get(key)
            if where is None:
                return b""
            def read() -> Deferred[bytes]:
                return Deferred.fromCoroutine(self.wado.store.read(self.record, *where))
            # ignore: mypy does not infer _R through the Callable[..., Deferred[_R]] arm of Twisted's union
            data: bytes = blockingCallFromThread(self.wado.reactor, read)  # type: ignore[arg-type]
            return data
        return resolve


# -- the service -----------------------------------------------------------------

class Wado:
    def __init__(self, store: Store, reactor: IReactor, pool: ThreadPool, coder: Coder | None = None,
                 cache: BodyCache | None = None, derived: DerivedCache | None = None,
                 on_derived: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.reactor = reactor
        self.pool = pool
        self.coder = coder if coder is not None else Coder(reactor, pool)
        self.cache = cache if cache is not None else BodyCache(0)
        self.derived = derived if derived is not None and derived.enabled else None
        self._on_derived = on_derived

    def count_derived(self, result: str) -> None:
        """Count a derived frame cache event (hit, miss, precomputed) in the metrics."""
        if self._on_derived is not None:
            self._on_derived(result)

    async def cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run decoding, transcoding or rendering in the thread pool, off the reactor."""
        result: T = await deferToThreadPool(self.reactor, self.pool, fn, *args, **kwargs)
        return result

    async def one(self, study: str, series: str, sop: str) -> InstanceRecord:
        return (await self.store.instances(study, series, sop))[0]

    # -- instances ---------------------------------------------------------

    async def retrieve(self, request: Request, base: str, study: str, series: str | None = None,
                       sop: str | None = None) -> None:
        kind, syntaxes = negotiation.choose_instance_retrieve(request.getHeader(b"accept"), allow_zip=sop is None)
        records = await self.store.instances(study, series, sop)
        add_vary(request, b"Accept")
        versions = [instance_token(r) for r in records]
        if kind == "zip":
            # Weak: the entries are dated when they are sent.
            if not_modified(request, entity_tag("zip", versions, weak=True)):
                return
            request.setHeader(b"content-type", b"application/zip")
            name = f"{study}{'_' + series if series else ''}.zip"
            request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
            if request.method != b"HEAD":
                await stream(request, self._zip(records))
            return
        targets = await self._instance_targets(records, syntaxes, study, series, sop)
        tag = entity_tag("instances", base, targets, versions)
        if not_modified(request, tag):
            return
        boundary = boundary_of(tag)
        request.setHeader(b"content-type", multipart_type(negotiation.DICOM, boundary))
        if request.method == b"HEAD":
            return
        if all(t == r.transfer_syntax_uid for r, t in zip(records, targets, strict=True)):
            # All as stored: every size is known, the kernel can send the files.
            await self.send(request, self._stored_parts(records, boundary, base))
        else:
            await stream(request, self._instance_parts(records, targets, boundary, base))

    def _stored_parts(self, records: list[InstanceRecord], boundary: str, base: str) -> list[Piece]:
        pieces: list[Piece] = []
        for i, record in enumerate(records):
            pieces.append(delimiter(boundary, first=(i == 0)) + self._stored_part_header(record, base))
            pieces.append(self.whole(record))
        pieces.append(close_delimiter(boundary))
        return pieces

    @staticmethod
    def _stored_part_header(record: InstanceRecord, base: str) -> bytes:
        location = f"{base}/{instance_path(record.study_uid, record.series_uid, record.sop_uid)}"
        return part_header(f"application/dicom; transfer-syntax={record.transfer_syntax_uid}",
                           {"Content-Location": location, "Content-Length": str(record.size)})

    # -- sending stored bytes ----------------------------------------------------

    def whole(self, record: InstanceRecord) -> FileSlice:
        """The whole stored object, as a piece of a response body."""
        return FileSlice(self.store.local_path(record), 0, record.size, record)

    def part(self, record: InstanceRecord, offset: int, length: int) -> FileSlice:
        return FileSlice(self.store.local_path(record), offset, length, record)

    async def send(self, request: Request, pieces: Sequence[Piece], announce_length: bool = False) -> None:
        """Send ``pieces`` as the body: zero-copy where possible (``sendfile``)."""
        await send_pieces(request, pieces, self._read_slice, announce_length=announce_length)

    def _read_slice(self, piece: FileSlice) -> AsyncIterator[bytes]:
        record: InstanceRecord = piece.record
        if piece.offset == 0 and piece.length == record.size:
            return self.store.chunks(record)
        return self._range(record, piece.offset, piece.length)

    async def _instance_targets(self, records: list[InstanceRecord], syntaxes: list[str | None], study: str,
                                series: str | None, sop: str | None) -> list[str]:
        """The transfer syntax each instance is sent in; 406 before anything is sent."""
        metadata: list[dict[str, Any] | None] = [None] * len(records)
        if any(s not in (None, "*", EXPLICIT_LE) for s in syntaxes):
            # Encoder limits (bit depth...) need the pixel description; the
            # store returns metadata in the same order as the records.
            metadata = [json.loads(t) for t in await self.store.metadata(study, series, sop)]
        return [pixels.negotiate_instance_syntax(record.transfer_syntax_uid, syntaxes, _producible(meta))
                for record, meta in zip(records, metadata, strict=True)]

    async def _instance_parts(self, records: list[InstanceRecord], targets: list[str], boundary: str,
                              base: str) -> AsyncIterator[bytes]:
        for i, (record, target) in enumerate(zip(records, targets, strict=True)):
            location = f"{base}/{instance_path(record.study_uid, record.series_uid, record.sop_uid)}"
            if target != record.transfer_syntax_uid:
                data = await self.transcoded_or_none(record, target)
                if data is not None:
                    yield delimiter(boundary, first=(i == 0)) + part_header(
                        f"application/dicom; transfer-syntax={target}",
                        {"Content-Location": location, "Content-Length": str(len(data))}) + data
                    continue
            yield delimiter(boundary, first=(i == 0)) + self._stored_part_header(record, base)
            async for chunk in self.store.chunks(record):
                yield chunk
        yield close_delimiter(boundary)

    async def transcoded_or_none(self, record: InstanceRecord, target: str) -> bytes | None:
        """The instance in ``target``, or None when its pixel data cannot be decoded.

        Then it is sent as stored: the part's Content-Type says which syntax it
        is in, and one damaged object must not cut a whole study short.
        """
        data = await self.store.read(record, 0, record.size)
        try:
            return await self.cpu(transcode.transcode_instance, data, target)
        except pixels.PixelError as exc:
            log.warn("sending an instance as stored: cannot transcode it ({reason})", reason=exc.reason)
            return None

    async def _zip(self, records: list[InstanceRecord]) -> AsyncIterator[bytes]:
        """A ZIP (stored, not deflated: DICOM pixel data rarely shrinks) written as it streams.

        ``zipfile`` writes to a non-seekable sink with data descriptors, so
        each entry's bytes go out as they are read; nothing is kept.
        """
        sink = _Sink()
        stamp = time.localtime()[:6]
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
            for record in records:
                info = zipfile.ZipInfo(f"{record.series_uid}/{record.sop_uid}.dcm", date_time=stamp)
                info.file_size = record.size  # lets zipfile choose ZIP64 for > 2 GB entries
                with archive.open(info, "w") as entry:
                    async for chunk in self.store.chunks(record):
                        entry.write(chunk)
                        yield sink.take()
                if header := sink.take():  # the entry's data descriptor
                    yield header
        yield sink.take()  # the central directory

    # -- metadata ----------------------------------------------------------

    async def metadata(self, request: Request, base: str, study: str, series: str | None = None,
                       sop: str | None = None) -> bytes:
        """DICOM JSON joined from the stored texts (no parsing), or multipart XML.

        Study and series answers are named by the store's ``version`` of
        the study or series (an indexed read, no metadata): a client that
        has this version gets 304, and a compressed answer made before for
        this version comes from the cache, so neither the metadata nor the
        compression is redone. Instance answers are small; they are named
        by their content.
        """
        kind = negotiation.choose_dataset_type(request.getHeader(b"accept"))
        coding = self.coder.choose(request)
        add_vary(request, b"Accept")
        texts: list[bytes] | None = None
        if sop is None:
            version = await self.store.version(study, series)
        else:
            texts = await self.store.metadata(study, series, sop)
            version = hashlib.blake2b(b"\0".join(texts), digest_size=16).hexdigest()
        tag = entity_tag("metadata", study, series, sop, version, kind, base)
        coded_tag = coded(tag, coding.name)
        if not_modified(request, coded_tag, tag):
            return b""
        boundary = boundary_of(tag)
        request.setHeader(b"content-type", b"application/dicom+json" if kind == negotiation.DICOM_JSON
                          else multipart_type(negotiation.DICOM_XML, boundary))

        async def make() -> Made:
            stored = texts if texts is not None else await self.store.metadata(study, series, sop)
            body = await self._metadata_body(stored, kind, base, boundary)
            if coding.name is None or not worth_it(coding, len(body)):
                return body, False
            return await compress_off_reactor(self.reactor, self.pool, body, coding.name), True

        cacheable = sop is None and coding.name is not None
        body, is_coded = await (self.cache.get_or_make(coded_tag, make) if cacheable else make())
        if not is_coded:
            validated(request, tag)  # sent as it is: the plain tag
            return set_coded(request, body, None)
        return set_coded(request, body, coding.name)

    async def _metadata_body(self, texts: list[bytes], kind: str, base: str, boundary: str) -> bytes:
        prefix = b'"BulkDataURI":"' + base.encode() + b"/"
        texts = [t.replace(b'"BulkDataURI":"', prefix) for t in texts]
        if kind == negotiation.DICOM_JSON:
            return b"[" + b",".join(texts) + b"]"
        from ..dicom.dicomxml import to_xml

        datasets = [json.loads(t) for t in texts]
        parts = await self.cpu(lambda: [to_xml(ds) for ds in datasets])
        return b"".join(delimiter(boundary, first=(i == 0)) + part_header(negotiation.DICOM_XML) + xml
                        for i, xml in enumerate(parts)) + close_delimiter(boundary)

    # -- frames --------------------------------------------------------------

    async def frames(self, request: Request, base: str, study: str, series: str, sop: str, frame_list: str) -> None:
        numbers = parse_frame_list(frame_list)
        source = InstancePixels(self, await self.one(study, series, sop))
        await source.check_frames(numbers)
        await self.send_frames(request, base, source, numbers)

    async def send_frames(self, request: Request, base: str, source: InstancePixels, numbers: list[int]) -> None:
        """The frames as one multipart answer, or one frame as a single part
        when Accept names bare media types only; a single ``Range`` is
        honoured whenever the body can be laid out before it is sent (frames
        as stored, or one computed frame), see ranges.py."""
        accept = _frame_accept(request)
        media, target = await source.negotiate_frames(negotiation.frame_ranges(accept))
        single = len(numbers) == 1 and negotiation.single_part(accept)
        add_vary(request, b"Accept")
        tag = entity_tag("frames", instance_token(source.record), numbers, media, target, single, base)
        if not_modified(request, tag):
            return
        frames: list[Piece | None] = [source.stored_frame(n - 1, target) for n in numbers]
        if not all(frames) and len(numbers) == 1 and (single or request.getHeader(b"range")):
            frames = [await source.frame(numbers[0] - 1, target)]
        r = source.record
        location = f"{base}/{instance_path(r.study_uid, r.series_uid, r.sop_uid)}/frames/"
        boundary = boundary_of(tag)
        if single and frames[0] is not None:
            request.setHeader(b"content-type", f"{media}; transfer-syntax={target}".encode())
            await self.send_rangeable(request, [frames[0]], tag, announce_length=True)
            return
        request.setHeader(b"content-type", multipart_type(media, boundary))
        if not all(frames):
            # Computed frame by frame: streamed as each is ready, whole (no ranges).
            await stream(request, self._frame_parts(source, numbers, media, target, boundary, location))
            return
        pieces: list[Piece] = []
        for i, (number, piece) in enumerate(zip(numbers, frames, strict=True)):
            assert piece is not None
            length = len(piece) if isinstance(piece, bytes) else piece.length
            pieces += [delimiter(boundary, first=(i == 0)) + self._frame_header(media, target, location, number, length),
                       piece]
        await self.send_rangeable(request, [*pieces, close_delimiter(boundary)], tag)

    async def send_rangeable(self, request: Request, pieces: list[Piece], tag: bytes,
                             announce_length: bool = False) -> None:
        """Send ``pieces`` whole, or the one range the request asks for (206)."""
        request.setHeader(b"accept-ranges", b"bytes")
        wanted = ranges.requested(request, body_length(pieces), tag)
        if wanted is not None:
            pieces, announce_length = ranges.slice_pieces(pieces, *wanted), True
        await self.send(request, pieces, announce_length=announce_length)

    @staticmethod
    def _frame_header(media: str, target: str, location: str, number: int, length: int) -> bytes:
        return part_header(f"{media}; transfer-syntax={target}",
                           {"Content-Location": f"{location}{number}", "Content-Length": str(length)})

    async def _frame_parts(self, source: InstancePixels, numbers: list[int], media: str, target: str,
                           boundary: str, location: str) -> AsyncIterator[bytes]:
        for i, number in enumerate(numbers):
            data = await source.frame(number - 1, target)
            yield delimiter(boundary, first=(i == 0)) + self._frame_header(media, target, location, number,
                                                                           len(data)) + data
        yield close_delimiter(boundary)

    # -- bulk data ---------------------------------------------------------------

    async def bulk(self, request: Request, base: str, study: str, series: str, sop: str, path: str) -> None:
        if not BULK_PATH.fullmatch(path):
            raise bad_request("a bulk data path is a tag, then item/tag pairs, e.g. 7FE00010 or 00540016/0/00181072")
        path = path.upper()
        source = InstancePixels(self, await self.one(study, series, sop))
        where = source.record.bulk.get(path)
        if where is None and source.stored == transcode.DEFLATED_LE:
            await self._send_inflated(request, source, path)
            return
        if where is None:
            raise not_found("the instance has no bulk data at this path")
        if path in PIXEL_KEYS and source.stored not in pixels.NATIVE:
            # Encapsulated Pixel Data: its BulkDataURI answers with the frames
            # (PS3.18 8.6.1.2), one part per frame, as the frames resource does.
            count = await source.frame_count()
            await self.send_frames(request, base, source, list(range(1, count + 1)))
            return
        form = negotiation.choose_bulk_form(request.getHeader(b"accept"))
        swap = path in PIXEL_KEYS and source.stored == pixels.EXPLICIT_VR_BE
        await self._send_bytes(request, source, where, form, swap, path in PIXEL_KEYS)

    async def _send_inflated(self, request: Request, source: InstancePixels, path: str) -> None:
        """Bulk data of a deflated object: its values have no range in the
        stored file, so the object is inflated and the value taken from it."""
        form = negotiation.choose_bulk_form(request.getHeader(b"accept"))
        tag = entity_tag("bulk", instance_token(source.record), path, form, "inflated")
        if not_modified(request, tag):
            return
        data = await self.cpu(transcode.element_value, await source.whole(), path)
        if data is None:
            raise not_found("the instance has no bulk data at this path")

        async def body(start: int, length: int) -> Piece:
            return data[start:start + length]
        await self._send_bulk(request, len(data), body, form, path in PIXEL_KEYS, tag)

    async def _send_bytes(self, request: Request, source: InstancePixels, where: tuple[int, int], form: str,
                          swap: bool, is_pixels: bool) -> None:
        offset, size = where
        tag = entity_tag("bulk", instance_token(source.record), offset, size, form, swap)
        if not_modified(request, tag):
            return

        async def body(start: int, length: int) -> Piece:
            if swap:
                return await self._swapped(source, where, start, length)
            return self.part(source.record, offset + start, length)
        await self._send_bulk(request, size, body, form, is_pixels, tag)

    async def _send_bulk(self, request: Request, size: int, body_of: Callable[[int, int], Awaitable[Piece]],
                         form: str, is_pixels: bool, tag: bytes) -> None:
        """One bulk data value as a single part (a ``Range`` of the whole
        answer honoured) or a one-part multipart answer (a range is of the
        value and goes in the part, with its Content-Range: what
        dicomweb_client's retrieve_bulkdata with byte_range reads)."""
        add_vary(request, b"Accept")
        media = negotiation.OCTET_STREAM + (f"; transfer-syntax={EXPLICIT_LE}" if is_pixels else "")
        if form == "single":
            request.setHeader(b"content-type", media.encode())
            await self.send_rangeable(request, [await body_of(0, size)], tag, announce_length=True)
            return
        request.setHeader(b"accept-ranges", b"bytes")
        wanted = ranges.parse_range(request.getHeader(b"range"), size) if if_range_allows(request, tag) else None
        start, length = wanted or (0, size)
        if wanted is not None:
            request.setResponseCode(206)
        body = await body_of(start, length)
        boundary = boundary_of(tag)
        request.setHeader(b"content-type", multipart_type(negotiation.OCTET_STREAM, boundary))
        headers = {"Content-Length": str(length)}
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
        await self.send(request, [delimiter(boundary, first=True) + part_header(media, headers), body,
                                  close_delimiter(boundary)])

    async def _range(self, record: InstanceRecord, offset: int, length: int) -> AsyncIterator[bytes]:
        end = offset + length
        while offset < end:
            data = await self.store.read(record, offset, min(CHUNK, end - offset))
            if not data:
                return
            offset += len(data)
            yield data

    async def _swapped(self, source: InstancePixels, where: tuple[int, int], start: int, length: int) -> bytes:
        """Big endian native pixel data as little endian (whole value: swapping needs word alignment)."""
        data = await source.wado.store.read(source.record, *where)
        metadata = await source.metadata()
        swapped = await self.cpu(transcode.frame_bytes_to_target, [data], metadata, pixels.EXPLICIT_VR_BE, EXPLICIT_LE)
        return bytes(swapped[start:start + length])

    # -- rendered and thumbnails -------------------------------------------------

    async def rendered(self, request: Request, study: str, series: str, sop: str, frame_list: str | None,
                       thumb: bool) -> bytes:
        media = negotiation.choose_rendered(request.getHeader(b"accept"), _arg(request, b"accept"))
        options = render_options(request.args)
        number = 1
        if frame_list is not None:
            numbers = parse_frame_list(frame_list)
            if len(numbers) != 1:
                raise bad_request("rendered frames are served one frame per request")
            number = numbers[0]
        source = InstancePixels(self, await self.one(study, series, sop))
        await source.check_frames([number])
        if self.unchanged_image(request, source.record, media, options, number, thumb):
            return b""
        data = await source.rendered(number - 1, media, options, thumb)
        request.setHeader(b"content-type", media.encode())
        return data

    @staticmethod
    def unchanged_image(request: Request, record: InstanceRecord, *representation: object) -> bool:
        """Set the tag of a rendered image; True when the client has it (304):
        then nothing is decoded or rendered."""
        add_vary(request, b"Accept")
        return not_modified(request, entity_tag("rendered", instance_token(record), representation))

    async def group_thumbnail(self, request: Request, study: str, series: str | None) -> bytes:
        """A study or series thumbnail: the middle image instance's first frame."""
        media = negotiation.choose_rendered(request.getHeader(b"accept"), _arg(request, b"accept"))
        options = render_options(request.args)
        records = await self.store.instances(study, series)
        images = [r for r in records if any(key in r.bulk for key in PIXEL_KEYS)]
        if not images:
            raise not_found("no instance with pixel data to make a thumbnail of")
        source = InstancePixels(self, images[len(images) // 2])
        if self.unchanged_image(request, source.record, media, options, 1, True):
            return b""
        data = await source.rendered(0, media, options, thumb=True)
        request.setHeader(b"content-type", media.encode())
        return data


class _Sink:
    """A write-only, non-seekable file for ``zipfile``: keeps bytes until taken."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _frame_accept(request: Request) -> bytes | None:
    """The Accept of a frames request: the ``accept`` query parameter wins
    over the header (PS3.18 8.3.3.1), so a viewer that cannot set the header
    can still ask for, e.g., ``multipart/related; type="image/jphc"``."""
    query = _arg(request, b"accept")
    return query.encode("latin-1", "replace") if query else request.getHeader(b"accept")


def _arg(request: Request, name: bytes) -> str | None:
    values = request.args.get(name)
    return values[-1].decode("utf-8", "replace") if values else None
