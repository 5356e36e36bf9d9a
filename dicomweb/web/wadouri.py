"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

The same request is answered on the server root, where OHIF's ``wadoUriRoot``
often points. ``contentType=application/dicom`` returns the object (as stored,
or transcoded per ``transferSyntax``); ``image/jpeg`` (the PS3.18 default),
``image/png`` and ``image/gif`` return one rendered frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.web.server import Request

from ..dicom import pixels, transcode
from ..dicom.uids import is_valid_uid
from ..mediatype import parse_accept
from . import negotiation
from .errors import bad_request, not_acceptable
from .validators import entity_tag, instance_token, not_modified
from .wado import InstancePixels, RenderOptions, Wado, make_window, positive_int

DICOM = "application/dicom"
#: Media types a WADO-URI request may name, in the order we prefer them.
CONTENT_TYPES = (DICOM, *negotiation.RENDERED_TYPES)
#: Parameters we cannot honour; answering without them would return something else than asked.
UNSUPPORTED = ("region", "presentationUID", "presentationSeriesUID")


@dataclass(frozen=True)
class WadoUriRequest:
    study: str
    series: str
    sop: str
    content_type: str
    transfer_syntax: str | None  # None: not given; "*": as stored
    frame: int
    options: RenderOptions


def _get(args: dict[bytes, list[bytes]], name: str) -> str | None:
    values = args.get(name.encode())
    return values[-1].decode("utf-8", "replace").strip() if values else None


def _uid(args: dict[bytes, list[bytes]], name: str) -> str:
    value = _get(args, name)
    if not value:
        raise bad_request(f"{name} is required")
    if not is_valid_uid(value):
        raise bad_request(f"{name} is not a valid UID")
    return value


def _content_type(text: str | None) -> str:
    """The first supported type of the ``contentType`` list (image/jpeg when absent)."""
    if not text:
        return "image/jpeg"
    try:
        ranges = parse_accept(text)
    except ValueError:
        raise bad_request("contentType is not a list of media types") from None
    for media in ranges:
        if media.type in CONTENT_TYPES:
            return media.type
        if media.type in ("*/*", "image/*"):
            return "image/jpeg"
    raise not_acceptable("contentType must be application/dicom, image/jpeg, image/png or image/gif")


def parse(args: dict[bytes, list[bytes]]) -> WadoUriRequest:
    """Validate the query parameters; 400 with the reason for what is missing or wrong."""
    request_type = _get(args, "requestType")
    if request_type is None:
        raise bad_request("requestType=WADO is required")
    if request_type != "WADO":
        raise bad_request("requestType must be WADO")
    study, series, sop = _uid(args, "studyUID"), _uid(args, "seriesUID"), _uid(args, "objectUID")
    for name in UNSUPPORTED:
        if _get(args, name):
            raise bad_request(f"{name} is not supported")
    if (_get(args, "anonymize") or "").lower() == "yes":
        raise bad_request("anonymize=yes is not supported: the object would be returned with its identity")
    content_type = _content_type(_get(args, "contentType"))
    syntax = _get(args, "transferSyntax") or None
    if syntax is not None and syntax != "*" and not is_valid_uid(syntax):
        raise bad_request("transferSyntax is not a valid UID")
    if syntax is not None and content_type != DICOM:
        raise bad_request("transferSyntax is only allowed with contentType=application/dicom")
    frame = positive_int(_get(args, "frameNumber") or "1", "frameNumber", 1_000_000_000)
    return WadoUriRequest(study, series, sop, content_type, syntax, frame, _render_options(args))


def _render_options(args: dict[bytes, list[bytes]]) -> RenderOptions:
    center, width = _get(args, "windowCenter"), _get(args, "windowWidth")
    if (center is None) != (width is None):
        raise bad_request("windowCenter and windowWidth go together")
    window = make_window(center, width) if center is not None and width is not None else None
    rows, columns = _get(args, "rows"), _get(args, "columns")
    viewport = None
    if rows or columns:
        viewport = (positive_int(columns, "columns", 16384) if columns else None,
                    positive_int(rows, "rows", 16384) if rows else None)
    quality_text = _get(args, "imageQuality")
    quality = positive_int(quality_text, "imageQuality", 100) if quality_text else None
    return RenderOptions(window, viewport, quality)


async def answer(wado: Wado, request: Request) -> bytes | None:
    """Serve one WADO-URI request."""
    query = parse(request.args)
    record = await wado.one(query.study, query.series, query.sop)
    source = InstancePixels(wado, record)
    if query.content_type != DICOM:
        await source.check_frames([query.frame])
        if wado.unchanged_image(request, record, query.content_type, query.options, query.frame, False):
            return b""
        image = await source.rendered(query.frame - 1, query.content_type, query.options, thumb=False)
        request.setHeader(b"content-type", query.content_type.encode())
        return image
    target = pixels.negotiate_instance_syntax(
        record.transfer_syntax_uid, [query.transfer_syntax], transcode.can_transcode)
    if not_modified(request, entity_tag("wado-uri", instance_token(record), target, query.transfer_syntax)):
        return b""
    if target != record.transfer_syntax_uid:
        # The default (no transferSyntax) is a preference: a damaged object is sent as stored.
        data: bytes | None = (await wado.transcoded_or_none(record, target) if query.transfer_syntax is None
                else await wado.cpu(transcode.transcode_instance, await source.whole(), target))
        if data is not None:
            request.setHeader(b"content-type", f"{DICOM}; transfer-syntax={target}".encode())
            return data
    request.setHeader(b"content-type", f"{DICOM}; transfer-syntax={record.transfer_syntax_uid}".encode())
    if request.method == b"HEAD":
        request.setHeader(b"content-length", str(record.size).encode())
    else:
        await wado.send(request, [wado.whole(record)], announce_length=True)
    return None
